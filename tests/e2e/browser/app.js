// The page's side of tests/e2e/test_browser.py: one MQTT.js (MQTT 5) and one stomp.js client,
// driven from Python through window.gw; every step returns a promise, and what arrives is kept
// in plain JSON-able objects (and shown on the page for the screenshot).
"use strict";

(function () {
  const decoder = new TextDecoder();
  const state = {
    mqtt: null,
    stomp: null,
    mqttMessages: [],
    stompMessages: [],
    events: [], // connection events and errors, for the test's failure messages
  };

  function show(side, text) {
    const item = document.createElement("li");
    item.textContent = text;
    document.getElementById(side + "-log").appendChild(item);
  }

  function setState(side, text, cls) {
    const el = document.getElementById(side + "-state");
    el.textContent = text;
    el.className = "state " + (cls || "");
  }

  function note(side, text) {
    state.events.push(side + ": " + text);
    show(side, "· " + text);
  }

  function bytesText(value) {
    if (value === undefined || value === null) return null;
    if (typeof value === "string") return value;
    return decoder.decode(value);
  }

  // MQTT.js gives a repeated user property as an array of values; keep [name, value] pairs.
  function userPairs(props) {
    const pairs = [];
    for (const [name, value] of Object.entries((props && props.userProperties) || {})) {
      for (const one of Array.isArray(value) ? value : [value]) pairs.push([name, String(one)]);
    }
    return pairs;
  }

  function withTimeout(promise, ms, what) {
    return Promise.race([
      promise,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error(what + ": no answer in " + ms + " ms")), ms),
      ),
    ]);
  }

  const gw = {
    state,
    loaded() {
      return {
        mqtt: typeof window.mqtt === "object" && typeof window.mqtt.connect === "function",
        stomp: typeof window.StompJs === "object" && typeof window.StompJs.Client === "function",
      };
    },

    connectMqtt(url, clientId, timeoutMs) {
      document.getElementById("gateway").textContent = "gateway: " + url.replace(/\/mqtt$/, "");
      document.getElementById("mqtt-version").textContent = "(MQTT 5)";
      setState("mqtt", "connecting");
      const client = window.mqtt.connect(url, {
        protocolVersion: 5,
        clientId,
        clean: true,
        reconnectPeriod: 0, // a failure shows up as a failure, not as a retry loop
        connectTimeout: timeoutMs,
      });
      state.mqtt = client;
      client.on("message", (topic, payload, packet) => {
        const props = packet.properties || {};
        const message = {
          topic,
          payload: decoder.decode(payload),
          qos: packet.qos,
          userProperties: userPairs(props),
          contentType: props.contentType === undefined ? null : props.contentType,
          payloadFormatIndicator:
            props.payloadFormatIndicator === undefined ? null : props.payloadFormatIndicator,
          correlationData: bytesText(props.correlationData),
        };
        state.mqttMessages.push(message);
        const { topic: _, payload: text, ...rest } = message;
        show("mqtt", "← " + topic + " " + text + " " + JSON.stringify(rest));
      });
      client.on("error", (err) => note("mqtt", "error: " + err.message));
      client.on("close", () => {
        setState("mqtt", "closed", "error");
        note("mqtt", "close");
      });
      return withTimeout(
        new Promise((resolve, reject) => {
          client.once("connect", (connack) => {
            setState("mqtt", "connected", "connected");
            note("mqtt", "CONNACK reason " + connack.reasonCode + " " + url);
            resolve({ reasonCode: connack.reasonCode, properties: connack.properties || {} });
          });
          client.once("error", reject);
          client.once("close", () => reject(new Error("closed before CONNACK")));
        }),
        timeoutMs,
        "MQTT.js connect",
      );
    },

    async mqttSubscribe(topic, qos) {
      const granted = await state.mqtt.subscribeAsync(topic, { qos });
      note("mqtt", "SUBACK " + topic + " " + JSON.stringify(granted));
      return granted.map((g) => g.qos);
    },

    async mqttPublish(topic, payload, qos, userProperties, contentType, correlationData) {
      const properties = { userProperties, contentType };
      if (correlationData !== null) properties.correlationData = correlationData;
      await state.mqtt.publishAsync(topic, payload, { qos, properties });
      show("mqtt", "→ " + topic + " " + payload + " " + JSON.stringify(properties));
    },

    connectStomp(url, timeoutMs) {
      document.getElementById("stomp-version").textContent = "";
      setState("stomp", "connecting");
      return withTimeout(
        new Promise((resolve, reject) => {
          const client = new window.StompJs.Client({
            brokerURL: url,
            reconnectDelay: 0,
            heartbeatIncoming: 0,
            heartbeatOutgoing: 0,
            connectionTimeout: timeoutMs,
            debug: () => {},
          });
          state.stomp = client;
          client.onConnect = (frame) => {
            setState("stomp", "connected", "connected");
            document.getElementById("stomp-version").textContent =
              "(STOMP " + frame.headers.version + ")";
            note("stomp", "CONNECTED " + JSON.stringify(frame.headers) + " " + url);
            resolve(frame.headers);
          };
          client.onStompError = (frame) => {
            note("stomp", "ERROR " + JSON.stringify(frame.headers) + " " + frame.body);
            reject(new Error("STOMP ERROR " + frame.headers.message));
          };
          client.onWebSocketError = () => note("stomp", "websocket error");
          client.onWebSocketClose = (event) => {
            setState("stomp", "closed", "error");
            note("stomp", "websocket close " + event.code + " " + event.reason);
            reject(new Error("websocket closed: " + event.code + " " + event.reason));
          };
          client.activate();
        }),
        timeoutMs,
        "stomp.js connect",
      );
    },

    // Subscribes with a receipt, so the subscription is in place when this resolves.
    stompSubscribe(destination, id, timeoutMs) {
      const client = state.stomp;
      const receipt = "sub-" + id;
      const done = new Promise((resolve) => client.watchForReceipt(receipt, resolve));
      client.subscribe(
        destination,
        (frame) => {
          state.stompMessages.push({ headers: frame.headers, body: frame.body });
          show("stomp", "← " + JSON.stringify(frame.headers) + " " + frame.body);
        },
        { id, receipt },
      );
      return withTimeout(
        done.then(() => note("stomp", "RECEIPT " + receipt + " (SUBSCRIBE " + destination + ")")),
        timeoutMs,
        "stomp.js SUBSCRIBE receipt",
      );
    },

    stompSend(destination, body, headers) {
      state.stomp.publish({ destination, body, headers });
      show("stomp", "→ " + destination + " " + body + " " + JSON.stringify(headers));
    },

    async close() {
      if (state.mqtt) await state.mqtt.endAsync();
      if (state.stomp) await state.stomp.deactivate();
    },
  };
  window.gw = gw;
})();
