// The gateway dashboard: polls the admin API and draws what it reads.
//
// No framework and no build step: the gateway serves this file as it is, and the page's
// Content-Security-Policy allows only this origin's scripts (nothing inline). The admin
// API authenticates every request: the browser sends the credentials it was given for
// this origin (its own sign-in prompt), or those typed into the page's sign-in form, which
// are kept in memory only. Query parameters: ?interval=SECONDS (0.5 to 60, default 1.5)
// and ?confirm=off (no confirmation dialogs before Purge, Move back, Kick, Pause, Resume).
"use strict";

(() => {
  const API = "/api/v1/admin";
  const params = new URLSearchParams(window.location.search);
  const INTERVAL_MS = Math.min(60, Math.max(0.5, Number(params.get("interval")) || 1.5)) * 1000;
  const HISTORY = 60; // points kept for the charts
  const TOP_QUEUES = 5;
  const MAX_BRIDGE_SERIES = 6;
  const MAX_BACKOFF_MS = 15000;

  const state = {
    running: true,
    blocked: null, // "auth" after a 401 or 403: polling waits for the user
    authorization: null, // "Basic ..." from the sign-in form (memory only)
    timer: null,
    inFlight: false,
    again: false,
    failures: 0,
    polls: 0, // successful polls
    previous: null, // {t, messagesIn, messagesOut}
    history: [], // {t, rateIn, rateOut, connections, byProtocol, queues, bridges}
    data: null, // the last answers: {overview, connections, queues, bridges}
    errors: [], // the last few error texts shown in the banner
  };

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(method, path, status, code, message, retryAfter) {
      super(`${method} ${path}: ${status}${code ? " " + code : ""}${message ? ": " + message : ""}`);
      this.status = status;
      this.code = code;
      this.detail = message;
      this.retryAfter = retryAfter;
    }
  }

  // -- the API ---------------------------------------------------------------------------

  async function request(method, path) {
    // Marked as a script's request: the API then offers no Basic challenge, so the
    // browser's own password prompt never covers the sign-in form.
    const headers = { Accept: "application/json", "X-Requested-With": "XMLHttpRequest" };
    if (state.authorization) headers.Authorization = state.authorization;
    const response = await fetch(API + path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
    });
    let body = null;
    const text = await response.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    if (!response.ok) {
      const retry = Number(response.headers.get("Retry-After"));
      throw new ApiError(
        method,
        API + path,
        response.status,
        body && body.error,
        body && body.message,
        Number.isFinite(retry) && retry > 0 ? retry : null,
      );
    }
    return body || {};
  }

  // -- polling ---------------------------------------------------------------------------

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.running && !state.blocked) state.timer = setTimeout(poll, delay);
  }

  // Poll now (after an action): at once, or as soon as the poll under way ends.
  function refreshNow() {
    if (state.inFlight) state.again = true;
    else poll();
  }

  async function poll() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.inFlight) return;
    state.inFlight = true;
    let delay = INTERVAL_MS;
    try {
      const [overview, connections, queues, bridges] = await Promise.all([
        request("GET", "/overview"),
        request("GET", "/connections"),
        request("GET", "/queues"),
        request("GET", "/bridges"),
      ]);
      state.data = {
        overview,
        connections: connections.connections || [],
        queues: queues.queues || [],
        bridges: bridges.bridges || [],
      };
      state.failures = 0;
      state.polls += 1;
      remember(state.data);
      render(state.data);
      hideBanner();
      setStatus(state.running ? "live" : "paused");
    } catch (error) {
      delay = failed(error);
    } finally {
      state.inFlight = false;
    }
    if (state.again) {
      state.again = false;
      delay = 0;
    }
    schedule(delay);
  }

  // Show what went wrong; the delay before the next poll.
  function failed(error) {
    state.failures += 1;
    $("main").classList.add("stale");
    const backoff = Math.min(MAX_BACKOFF_MS, INTERVAL_MS * 2 ** Math.min(state.failures - 1, 4));
    if (!(error instanceof ApiError)) {
      setStatus("error");
      showBanner(
        "error",
        `Cannot reach the gateway (${error.message || error}). Retrying every ${seconds(backoff)}.`,
      );
      return backoff;
    }
    if (error.status === 401 || error.status === 403) {
      state.blocked = "auth";
      setStatus("auth");
      const why =
        error.status === 401
          ? "The admin API needs an admin user: sign in (your browser may ask too)."
          : `Signed in, but not as an admin (${error.detail || "forbidden"}): sign in as a member of the admin group.`;
      showBanner("auth", why, { login: true, retry: true });
      return backoff;
    }
    setStatus("error");
    if (error.status === 429) {
      const wait = (error.retryAfter || 1) * 1000;
      showBanner("error", `Too many requests: waiting ${seconds(wait)} (${error.message}).`);
      return Math.max(wait, INTERVAL_MS);
    }
    if (error.status === 404 && error.code !== "unknown_queue") {
      showBanner("error", `This gateway has no admin API here (${error.message}). Retrying.`, {
        retry: true,
      });
      return backoff;
    }
    showBanner("error", `${error.message}. Retrying every ${seconds(backoff)}.`, { retry: true });
    return backoff;
  }

  function setStatus(name) {
    const status = $("status");
    status.dataset.state = name;
    status.textContent =
      { live: "live", paused: "paused", error: "error", auth: "sign-in needed" }[name] || name;
    if (name === "live") $("main").classList.remove("stale");
  }

  function showBanner(kind, text, options = {}) {
    const banner = $("banner");
    banner.dataset.kind = kind;
    $("banner-text").textContent = text;
    $("login").hidden = !options.login;
    $("retry").hidden = !options.retry;
    banner.hidden = false;
    state.errors.push(text);
    if (state.errors.length > 20) state.errors.shift();
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  // -- history and rates -------------------------------------------------------------------

  function timeOf(value) {
    if (typeof value === "number") return value > 1e12 ? value / 1000 : value;
    if (typeof value === "string") {
      const parsed = Date.parse(value);
      if (!Number.isNaN(parsed)) return parsed / 1000;
      const number = Number(value);
      if (Number.isFinite(number)) return timeOf(number);
    }
    return null;
  }

  function rate(current, before, dt) {
    if (before == null || current == null || !(dt > 0) || current < before) return null;
    return (current - before) / dt;
  }

  function remember(data) {
    const o = data.overview;
    const t = timeOf(o.time) ?? performance.now() / 1000;
    const sample = { t, messagesIn: o.messages_in, messagesOut: o.messages_out };
    const previous = state.previous;
    const dt = previous ? t - previous.t : 0;
    const connections = o.connections || {};
    const point = {
      t,
      rateIn: previous ? rate(sample.messagesIn, previous.messagesIn, dt) : null,
      rateOut: previous ? rate(sample.messagesOut, previous.messagesOut, dt) : null,
      connections: connections.total ?? data.connections.length,
      byProtocol: { ...(connections.by_protocol || {}) },
      queues: Object.fromEntries(data.queues.map((q) => [q.name, q.depth])),
      bridges: Object.fromEntries(data.bridges.map((b) => [b.name, b.outbox_depth])),
    };
    if (previous && dt <= 0) return; // the same instant again: nothing new to draw
    state.previous = sample;
    state.history.push(point);
    if (state.history.length > HISTORY) state.history.shift();
  }

  // -- formatting --------------------------------------------------------------------------

  const NUMBER = new Intl.NumberFormat(undefined);
  const DECIMAL = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const FRACTION = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

  function count(value) {
    return typeof value === "number" ? NUMBER.format(value) : "–";
  }

  function perSecond(value) {
    if (value == null) return "–";
    return value < 10 ? DECIMAL.format(value) : NUMBER.format(Math.round(value));
  }

  function bytes(value) {
    if (typeof value !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = value;
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) {
      n /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${n} B` : `${DECIMAL.format(n)} ${units[unit]}`;
  }

  function duration(total) {
    if (typeof total !== "number" || !Number.isFinite(total)) return "–";
    let s = Math.max(0, Math.floor(total));
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  function seconds(ms) {
    return `${DECIMAL.format(ms / 1000)} s`;
  }

  function compact(value) {
    const abs = Math.abs(value);
    if (abs >= 1e9) return `${DECIMAL.format(value / 1e9)}G`;
    if (abs >= 1e6) return `${DECIMAL.format(value / 1e6)}M`;
    if (abs >= 1e4) return `${DECIMAL.format(value / 1e3)}k`;
    return abs < 10 && !Number.isInteger(value) ? FRACTION.format(value) : NUMBER.format(value);
  }

  function clock(t) {
    if (t == null) return "–";
    return new Date(t * 1000).toLocaleTimeString(undefined, { hour12: false });
  }

  // A number in a cell: the text formatted, the raw value in data-value.
  function setNumber(element, value, format = count) {
    const text = format(value);
    if (element.textContent !== text) element.textContent = text;
    element.dataset.value = typeof value === "number" ? String(value) : "";
    element.classList.toggle("zero", value === 0);
  }

  function setText(element, text) {
    const value = text == null || text === "" ? "–" : String(text);
    if (element.textContent !== value) element.textContent = value;
  }

  // -- rendering ---------------------------------------------------------------------------

  function render(data) {
    const o = data.overview;
    setText($("version"), o.version ? `v${o.version}` : "–");
    setText($("uptime"), duration(o.uptime));
    setText($("server-time"), clock(timeOf(o.time)));
    setText($("updated"), clock(Date.now() / 1000));

    const connections = o.connections || {};
    setNumber($("connections-total"), connections.total ?? data.connections.length);
    const protocols = Object.entries(connections.by_protocol || {}).filter(([, n]) => n > 0);
    setText(
      $("connections-by-protocol"),
      protocols.length ? protocols.map(([p, n]) => `${p} ${NUMBER.format(n)}`).join(" · ") : "none",
    );
    const last = state.history[state.history.length - 1] || {};
    setNumber($("messages-in-total"), o.messages_in);
    setNumber($("messages-out-total"), o.messages_out);
    setNumber($("messages-in-rate"), last.rateIn ?? null, perSecond);
    setNumber($("messages-out-rate"), last.rateOut ?? null, perSecond);
    setNumber(
      $("queued-total"),
      data.queues.reduce((sum, q) => sum + (q.depth || 0), 0),
    );
    setNumber($("queues-count"), data.queues.length);
    setNumber($("sessions-total"), sessionCount(o.sessions));
    setNumber($("bridges-total"), data.bridges.length);
    const states = {};
    for (const b of data.bridges) states[b.state] = (states[b.state] || 0) + 1;
    setText(
      $("bridges-summary"),
      data.bridges.length
        ? Object.entries(states)
            .map(([s, n]) => `${n} ${s}`)
            .join(" · ")
        : "none configured",
    );

    renderQueues(data.queues);
    renderConnections(data.connections);
    renderBridges(data.bridges);
    drawCharts();
  }

  function sessionCount(sessions) {
    if (typeof sessions === "number") return sessions;
    if (Array.isArray(sessions)) return sessions.length;
    if (sessions && typeof sessions === "object") {
      if (typeof sessions.total === "number") return sessions.total;
      return Object.values(sessions).reduce((s, v) => s + (typeof v === "number" ? v : 0), 0);
    }
    return null;
  }

  function cell(row, className, { numeric = false } = {}) {
    const td = document.createElement("td");
    td.className = className + (numeric ? " num" : "");
    row.appendChild(td);
    return td;
  }

  function button(parent, className, label, action, title) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = label;
    b.dataset.action = action;
    if (title) b.title = title;
    parent.appendChild(b);
    return b;
  }

  // Keep one row per key, in the order of ``items``; rows of vanished keys go.
  function syncRows(table, items, keyOf, attribute, build, update) {
    const tbody = table.tBodies[0];
    const existing = new Map();
    for (const row of Array.from(tbody.rows)) existing.set(row.dataset[attribute], row);
    let previous = null;
    const seen = new Set();
    for (const item of items) {
      const key = String(keyOf(item));
      let row = existing.get(key);
      if (!row) {
        row = document.createElement("tr");
        row.dataset[attribute] = key;
        build(row, item);
      }
      update(row, item);
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (row !== wanted) tbody.insertBefore(row, wanted);
      previous = row;
      seen.add(key);
    }
    for (const [key, row] of existing) if (!seen.has(key)) row.remove();
  }

  const QUEUE_NUMBERS = [
    ["depth", "depth"],
    ["bytes", "bytes", bytes],
    ["consumers", "consumers"],
    ["in-flight", "in_flight"],
    ["enqueued", "enqueued"],
    ["delivered", "delivered"],
    ["acked", "acked"],
    ["redelivered", "redelivered"],
    ["expired", "expired"],
    ["dead-lettered", "dead_lettered"],
  ];

  function isDeadLetterQueue(queue, queues) {
    return queue.name.endsWith(".dlq") || queues.some((q) => q.dead_letter === queue.name);
  }

  function renderQueues(queues) {
    const sorted = [...queues].sort((a, b) => a.name.localeCompare(b.name));
    syncRows(
      $("queues"),
      sorted,
      (q) => q.name,
      "queue",
      (row, q) => {
        const name = cell(row, "name");
        name.title = q.name;
        for (const [cls] of QUEUE_NUMBERS) cell(row, cls, { numeric: true });
        cell(row, "dropped", { numeric: true });
        const actions = cell(row, "actions");
        button(actions, "move", "Move back", "move", "Move every message back to the queue it was dead-lettered from");
        button(actions, "purge danger", "Purge", "purge", "Delete every message waiting in this queue");
      },
      (row, q) => {
        const dlq = isDeadLetterQueue(q, queues);
        const name = row.querySelector(".name");
        const tags = [dlq ? "dlq" : "", q.durable ? "durable" : "", q.dead_letter ? `→ ${q.dead_letter}` : ""];
        const signature = tags.join("|");
        if (name.dataset.signature !== signature) {
          name.dataset.signature = signature;
          name.textContent = q.name;
          if (dlq) tag(name, "DLQ", "dlq", "A dead-letter queue");
          if (q.durable) tag(name, "durable", "", "Kept in the store across restarts");
          if (q.dead_letter) tag(name, `→ ${q.dead_letter}`, "", `Dead-letters to ${q.dead_letter}`);
        }
        for (const [cls, field, format] of QUEUE_NUMBERS) {
          setNumber(row.querySelector("." + cls), q[field], format);
        }
        const dropped = (q.dropped || 0) + (q.refused || 0);
        const td = row.querySelector(".dropped");
        setNumber(td, dropped);
        td.title = `${count(q.dropped)} dropped, ${count(q.refused)} refused`;
        row.querySelector("button.move").hidden = !dlq;
      },
    );
    setText($("queues-table-count"), queues.length);
    $("queues-empty").hidden = queues.length > 0;
  }

  function tag(parent, text, className, title) {
    const span = document.createElement("span");
    span.className = "tag" + (className ? " " + className : "");
    span.textContent = text;
    span.title = title;
    parent.appendChild(span);
  }

  function renderConnections(connections) {
    const sorted = [...connections].sort((a, b) =>
      String(a.id).localeCompare(String(b.id), undefined, { numeric: true }),
    );
    const now = Date.now() / 1000;
    syncRows(
      $("connections"),
      sorted,
      (c) => c.id,
      "connection",
      (row) => {
        cell(row, "id muted", { numeric: true });
        cell(row, "protocol");
        cell(row, "listener");
        cell(row, "peer mono");
        cell(row, "client-id mono");
        cell(row, "user");
        cell(row, "connected-at", { numeric: true });
        cell(row, "bytes-in", { numeric: true });
        cell(row, "bytes-out", { numeric: true });
        cell(row, "messages-in", { numeric: true });
        cell(row, "messages-out", { numeric: true });
        button(cell(row, "actions"), "kick danger", "Kick", "kick", "Close this connection");
      },
      (row, c) => {
        setText(row.querySelector(".id"), c.id);
        const protocol = row.querySelector(".protocol");
        const signature = `${c.protocol}|${c.tls ? 1 : 0}`;
        if (protocol.dataset.signature !== signature) {
          protocol.dataset.signature = signature;
          protocol.textContent = c.protocol || "–";
          if (c.tls) tag(protocol, "TLS", "tls", "Encrypted with TLS");
        }
        setText(row.querySelector(".listener"), c.listener);
        setText(row.querySelector(".peer"), c.peer);
        setText(row.querySelector(".client-id"), c.client_id);
        setText(row.querySelector(".user"), c.user);
        const since = timeOf(c.connected_at);
        const connected = row.querySelector(".connected-at");
        setText(connected, since == null ? null : duration(now - since));
        connected.title = since == null ? "" : new Date(since * 1000).toLocaleString();
        setNumber(row.querySelector(".bytes-in"), c.bytes_in, bytes);
        setNumber(row.querySelector(".bytes-out"), c.bytes_out, bytes);
        setNumber(row.querySelector(".messages-in"), c.messages_in);
        setNumber(row.querySelector(".messages-out"), c.messages_out);
      },
    );
    setText($("connections-table-count"), connections.length);
    $("connections-empty").hidden = connections.length > 0;
  }

  function renderBridges(bridges) {
    const sorted = [...bridges].sort((a, b) => a.name.localeCompare(b.name));
    syncRows(
      $("bridges"),
      sorted,
      (b) => b.name,
      "bridge",
      (row, b) => {
        cell(row, "name");
        cell(row, "kind");
        const stateCell = cell(row, "state-cell");
        const badge = document.createElement("span");
        badge.className = "state";
        stateCell.appendChild(badge);
        for (const cls of ["outbox", "in-flight", "confirmed", "refused"]) {
          cell(row, cls, { numeric: true });
        }
        const actions = cell(row, "actions");
        button(actions, "pause", "Pause", "pause", "Stop taking messages from the outbox");
        button(actions, "resume", "Resume", "resume", "Take messages from the outbox again");
      },
      (row, b) => {
        setText(row.querySelector(".name"), b.name);
        setText(row.querySelector(".kind"), b.kind);
        const badge = row.querySelector(".state");
        setText(badge, b.state);
        badge.dataset.state = String(b.state || "").toLowerCase();
        setNumber(row.querySelector(".outbox"), b.outbox_depth);
        setNumber(row.querySelector(".in-flight"), b.in_flight);
        setNumber(row.querySelector(".confirmed"), b.confirmed);
        setNumber(row.querySelector(".refused"), b.refused);
        const paused = String(b.state || "").toLowerCase() === "paused" || b.paused === true;
        row.querySelector("button.pause").hidden = paused;
        row.querySelector("button.resume").hidden = !paused;
      },
    );
    setText($("bridges-table-count"), bridges.length);
    $("bridges-empty").hidden = bridges.length > 0;
  }

  // -- actions -----------------------------------------------------------------------------

  const ACTIONS = {
    purge: (row) => ({
      path: `/queues/${encodeURIComponent(row.dataset.queue)}/purge`,
      question: `Delete every message waiting in queue ${row.dataset.queue}?`,
      done: (r) => `Purged ${count(r.purged)} message${r.purged === 1 ? "" : "s"} from ${row.dataset.queue}`,
    }),
    move: (row) => ({
      path: `/queues/${encodeURIComponent(row.dataset.queue)}/move`,
      question: `Move the messages of ${row.dataset.queue} back to the queues they came from?`,
      done: (r) =>
        `Moved ${count(r.moved)} message${r.moved === 1 ? "" : "s"} back from ${row.dataset.queue}` +
        (r.kept ? ` (${count(r.kept)} kept: nowhere to go back to)` : ""),
    }),
    kick: (row) => ({
      path: `/connections/${encodeURIComponent(row.dataset.connection)}/kick`,
      question: `Close connection ${row.dataset.connection}?`,
      done: () => `Closed connection ${row.dataset.connection}`,
    }),
    pause: (row) => ({
      path: `/bridges/${encodeURIComponent(row.dataset.bridge)}/pause`,
      question: `Pause bridge ${row.dataset.bridge}?`,
      done: () => `Paused bridge ${row.dataset.bridge}`,
    }),
    resume: (row) => ({
      path: `/bridges/${encodeURIComponent(row.dataset.bridge)}/resume`,
      question: `Resume bridge ${row.dataset.bridge}?`,
      done: () => `Resumed bridge ${row.dataset.bridge}`,
    }),
  };

  function confirming() {
    return params.get("confirm") !== "off" && document.body.dataset.confirm !== "off";
  }

  async function act(target) {
    const row = target.closest("tr");
    const make = ACTIONS[target.dataset.action];
    if (!row || !make) return;
    const action = make(row);
    if (confirming() && !window.confirm(action.question)) return;
    target.disabled = true;
    try {
      const result = await request("POST", action.path);
      toast(action.done(result));
    } catch (error) {
      toast(error.message, "error");
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        failed(error);
      }
    } finally {
      target.disabled = false;
    }
    refreshNow();
  }

  let toastTimer = null;
  function toast(text, kind = "info") {
    const element = $("toast");
    element.textContent = text;
    element.dataset.kind = kind;
    element.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      element.hidden = true;
    }, 4000);
  }

  // -- charts ------------------------------------------------------------------------------

  function palette() {
    const style = getComputedStyle(document.documentElement);
    const read = (name) => style.getPropertyValue(name).trim();
    return {
      ink: read("--ink"),
      muted: read("--muted"),
      grid: read("--grid"),
      line: read("--line"),
      series: [1, 2, 3, 4, 5, 6].map((i) => read(`--series-${i}`)),
    };
  }

  // A scale from 0 with round steps: {top, step}.
  function niceScale(max, ticks, integer) {
    if (!(max > 0)) return { top: ticks, step: 1 };
    const raw = max / ticks;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / magnitude;
    let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
    if (integer) step = Math.max(1, Math.ceil(step));
    return { top: step * Math.ceil(max / step - 1e-9), step };
  }

  // Draw ``series`` ([{name, values}], values aligned with ``times``) on ``canvas``.
  function drawChart(canvas, times, series, { integer = false, empty = "No data yet" } = {}) {
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const colors = palette();
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
    ctx.textBaseline = "middle";

    if (!series.length || !times.length) {
      ctx.strokeStyle = colors.line;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(8, height - 20.5);
      ctx.lineTo(width - 10, height - 20.5);
      ctx.stroke();
      ctx.fillStyle = colors.muted;
      ctx.textAlign = "center";
      ctx.font = "13px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
      ctx.fillText(series.length ? "Waiting for data…" : empty, width / 2, height / 2);
      return;
    }

    let max = 0;
    for (const s of series) for (const v of s.values) if (v != null && v > max) max = v;
    const { top, step } = niceScale(max, 4, integer);
    const labels = [];
    for (let v = 0; v <= top + step / 2; v += step) labels.push(v);
    const labelWidth = Math.max(...labels.map((v) => ctx.measureText(compact(v)).width));

    const legendHeight = 22;
    const plot = { left: labelWidth + 12, right: width - 10, top: legendHeight + 6, bottom: height - 20 };
    const plotWidth = plot.right - plot.left;
    const plotHeight = plot.bottom - plot.top;
    const y = (v) => plot.bottom - (v / top) * plotHeight;

    // Grid and y labels.
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    for (const v of labels) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = v === 0 ? colors.line : colors.grid;
      ctx.beginPath();
      ctx.moveTo(plot.left, yy);
      ctx.lineTo(plot.right, yy);
      ctx.stroke();
      ctx.fillStyle = colors.muted;
      ctx.fillText(compact(v), plot.left - 6, yy);
    }

    // Time axis: the last HISTORY polls, newest on the right.
    const span = ((HISTORY - 1) * INTERVAL_MS) / 1000;
    const newest = times.length ? times[times.length - 1] : 0;
    const x = (t) => plot.right - ((newest - t) / span) * plotWidth;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const tick = span > 120 ? 60 : span > 60 ? 30 : 15;
    for (let ago = 0; ago <= span + 1e-6; ago += tick) {
      const xx = Math.round(plot.right - (ago / span) * plotWidth) + 0.5;
      ctx.strokeStyle = colors.grid;
      ctx.beginPath();
      ctx.moveTo(xx, plot.top);
      ctx.lineTo(xx, plot.bottom);
      ctx.stroke();
      ctx.fillStyle = colors.muted;
      const text = ago === 0 ? "now" : `-${Math.round(ago)}s`;
      ctx.textAlign = ago === 0 ? "right" : xx - plot.left < 20 ? "left" : "center";
      ctx.fillText(text, ago === 0 ? plot.right : xx, plot.bottom + 5);
    }

    // The series, clipped to the plot.
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.left, plot.top - 2, plotWidth + 2, plotHeight + 4);
    ctx.clip();
    series.forEach((s, i) => {
      const color = colors.series[i % colors.series.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.lineCap = "round";
      ctx.beginPath();
      let drawing = false;
      let first = null;
      let lastX = null;
      s.values.forEach((v, j) => {
        if (v == null) {
          drawing = false;
          return;
        }
        const px = x(times[j]);
        const py = y(v);
        if (drawing) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        if (first == null) first = px;
        lastX = px;
        drawing = true;
      });
      ctx.stroke();
      if (i === 0 && first != null) {
        // A light fill under the first series.
        ctx.lineTo(lastX, plot.bottom);
        ctx.lineTo(first, plot.bottom);
        ctx.closePath();
        ctx.globalAlpha = 0.08;
        ctx.fillStyle = color;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    });
    ctx.restore();

    // Legend: a swatch, the name and the latest value of each series.
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let lx = plot.left;
    series.forEach((s, i) => {
      const latest = s.values[s.values.length - 1];
      const label = `${s.name} ${latest == null ? "–" : compact(integer ? latest : Math.round(latest * 10) / 10)}`;
      const w = ctx.measureText(label).width;
      if (lx + w + 16 > plot.right) return;
      ctx.fillStyle = colors.series[i % colors.series.length];
      ctx.fillRect(lx, legendHeight / 2 - 4, 10, 8);
      ctx.fillStyle = colors.ink;
      ctx.fillText(label, lx + 14, legendHeight / 2);
      lx += w + 30;
    });
  }

  function drawCharts() {
    const history = state.history;
    const times = history.map((p) => p.t);
    const column = (pick) => history.map(pick);

    drawChart($("chart-rates"), times, [
      { name: "in", values: column((p) => p.rateIn) },
      { name: "out", values: column((p) => p.rateOut) },
    ]);

    const protocols = new Set();
    for (const p of history) for (const name of Object.keys(p.byProtocol)) protocols.add(name);
    drawChart(
      $("chart-connections"),
      times,
      [
        { name: "total", values: column((p) => p.connections) },
        ...[...protocols].sort().map((name) => ({
          name,
          values: column((p) => p.byProtocol[name] ?? 0),
        })),
      ].slice(0, 6),
      { integer: true },
    );

    const latest = history[history.length - 1];
    const deepest = latest
      ? Object.keys(latest.queues)
          .map((name) => [name, latest.queues[name], Math.max(...history.map((p) => p.queues[name] ?? 0))])
          .sort((a, b) => b[1] - a[1] || b[2] - a[2] || a[0].localeCompare(b[0]))
          .slice(0, TOP_QUEUES)
      : [];
    drawChart(
      $("chart-queues"),
      times,
      deepest.map(([name]) => ({ name, values: column((p) => p.queues[name] ?? null) })),
      { integer: true, empty: "No queues yet" },
    );

    const bridgeNames = latest ? Object.keys(latest.bridges).sort().slice(0, MAX_BRIDGE_SERIES) : [];
    drawChart(
      $("chart-bridges"),
      times,
      bridgeNames.map((name) => ({ name, values: column((p) => p.bridges[name] ?? null) })),
      { integer: true, empty: "No bridges configured" },
    );
  }

  // -- wiring ------------------------------------------------------------------------------

  function basic(user, password) {
    const utf8 = new TextEncoder().encode(`${user}:${password}`);
    let binary = "";
    for (const byte of utf8) binary += String.fromCharCode(byte);
    return "Basic " + btoa(binary);
  }

  function start() {
    $("interval").textContent = seconds(INTERVAL_MS);
    document.addEventListener("click", (event) => {
      const target = event.target.closest("button[data-action]");
      if (target && !target.disabled) act(target);
    });
    $("toggle").addEventListener("click", () => {
      state.running = !state.running;
      $("toggle").textContent = state.running ? "Pause updates" : "Resume updates";
      if (state.running) poll();
      else {
        schedule(0);
        setStatus("paused");
      }
    });
    $("retry").addEventListener("click", () => {
      state.blocked = null;
      poll();
    });
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      state.authorization = basic($("login-user").value, $("login-password").value);
      $("login-password").value = "";
      state.blocked = null;
      poll();
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(drawCharts, 100);
    });
    drawCharts();
    poll();
  }

  // For tests and the curious: the state, and a way to poll now.
  window.dashboard = { state, refresh: refreshNow };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
