"""paho-mqtt, the reference Python client, driven from Trio tests through threads."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

WAIT = 10.0

# Properties are given and returned as plain dicts keyed by paho's property names without
# spaces ("UserProperty", "SessionExpiryInterval", ...); "UserProperty" is a list of pairs.
PropertyDict = Mapping[str, Any]


def make_properties(packet_type: int, values: PropertyDict | None) -> Properties | None:
    if not values:
        return None
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def properties_dict(props: Properties | None) -> dict[str, Any]:
    """Every property present, by name; user properties as a list of (key, value) tuples."""
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for spaced in props.names:
        name = spaced.replace(" ", "")
        if hasattr(props, name):
            value = getattr(props, name)
            if name == "UserProperty":
                value = [tuple(pair) for pair in value]
            out[name] = value
    return out


class PubrecClient(paho.Client):
    """paho ignores the reason code of a PUBREC; remember it per packet id."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pubrec_reasons: dict[int, int] = {}

    def _handle_pubrec(self) -> paho.MQTTErrorCode:
        body = self._in_packet["packet"]
        if len(body) >= 2:
            self.pubrec_reasons[int.from_bytes(body[:2], "big")] = body[2] if len(body) > 2 else 0
        return super()._handle_pubrec()


class Paho:
    """One paho-mqtt client with its network loop in a thread; every call is awaitable."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        protocol: int = paho.MQTTv311,
        clean_session: bool = True,
        keepalive: int = 60,
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.keepalive = keepalive
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = PubrecClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_session if protocol != paho.MQTTv5 else None,
            reconnect_on_failure=False,
        )
        self.connack: Any = None
        # Filled in by the CONNACK: the session present flag and (MQTT 5) its properties.
        self.session_present: bool | None = None
        self.connack_properties: dict[str, Any] = {}
        # The reason code of a server DISCONNECT (MQTT 5) or of the lost connection.
        self.disconnect_reason: Any = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self._granted: dict[int, list[Any]] = {}
        self._puback: dict[int, Any] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self.session_present = bool(flags.session_present)
        self.connack_properties = properties_dict(props)
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        # Tests never want paho's automatic reconnect: it would hide what the server did.
        self.disconnect_reason = reason
        self.client.disconnect()
        self.disconnected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        self._puback[mid] = reason

    def _ack(self, mid: int) -> threading.Event:
        return self._acks.setdefault(mid, threading.Event())

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        self._granted[mid] = codes
        self._ack(mid).set()

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        self._granted[mid] = list(codes or [])
        self._ack(mid).set()

    def will_set(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: PropertyDict | None = None,
    ) -> None:
        """The Will to put in the CONNECT; call before connect()."""
        props = make_properties(PacketTypes.WILLMESSAGE, properties)
        self.client.will_set(topic, payload, qos=qos, retain=retain, properties=props)

    def _connect(self, clean_start: Any, properties: PropertyDict | None) -> None:
        kwargs: dict[str, Any] = {}
        if self.protocol == paho.MQTTv5:
            kwargs["properties"] = make_properties(PacketTypes.CONNECT, properties)
            if clean_start is not None:
                kwargs["clean_start"] = clean_start
        elif clean_start is not None or properties:
            raise ValueError("clean_start and properties are MQTT 5 only")
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive, **kwargs)
        self.client.loop_start()
        if not self._connected.wait(WAIT):
            raise TimeoutError("no CONNACK")

    async def connect(
        self, *, clean_start: bool | None = None, properties: PropertyDict | None = None
    ) -> Any:
        """CONNECT and wait for the CONNACK; returns its reason code.

        MQTT 5 only: clean_start (paho's default: clean on the first connect) and CONNECT
        properties such as {"SessionExpiryInterval": 300}.
        """
        await trio.to_thread.run_sync(self._connect, clean_start, properties)
        return self.connack

    def _subscribe(self, topic: str, qos: int, options: dict[str, Any], props: Any) -> list[Any]:
        if self.protocol == paho.MQTTv5:
            spec: Any = paho.SubscribeOptions(qos=qos, **options)
            _, mid = self.client.subscribe(topic, options=spec, properties=props)
        elif any(options.values()) or props is not None:
            raise ValueError("subscription options and properties are MQTT 5 only")
        else:
            _, mid = self.client.subscribe(topic, qos)
        if not self._ack(mid).wait(WAIT):
            raise TimeoutError("no SUBACK")
        return self._granted[mid]

    async def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        properties: PropertyDict | None = None,
    ) -> list[Any]:
        """SUBSCRIBE and wait for the SUBACK; returns its reason codes (granted QoS).

        MQTT 5 only: the subscription options and properties such as
        {"SubscriptionIdentifier": 7}.
        """
        options = {
            "noLocal": no_local,
            "retainAsPublished": retain_as_published,
            "retainHandling": retain_handling,
        }
        props = make_properties(PacketTypes.SUBSCRIBE, properties)
        return await trio.to_thread.run_sync(self._subscribe, topic, qos, options, props)

    def _unsubscribe(self, topic: str) -> list[Any]:
        _, mid = self.client.unsubscribe(topic)
        if not self._ack(mid).wait(WAIT):
            raise TimeoutError("no UNSUBACK")
        return self._granted[mid]

    async def unsubscribe(self, topic: str) -> list[Any]:
        """UNSUBSCRIBE and wait for the UNSUBACK; returns its reason codes (MQTT 5)."""
        return await trio.to_thread.run_sync(self._unsubscribe, topic)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, props: Any) -> int:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        if not info.is_published():
            raise TimeoutError(f"QoS {qos} publish to {topic!r} not completed")
        reason = self._puback.pop(info.mid, None)
        if qos == 2:
            return self.client.pubrec_reasons.pop(info.mid, 0)
        return 0 if reason is None else int(reason.value)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        properties: PropertyDict | None = None,
    ) -> int:
        """PUBLISH and wait until it is complete.

        Returns the reason code of the PUBACK (QoS 1) or PUBREC (QoS 2); 0 for QoS 0 and
        for MQTT 3.1.1. MQTT 5 only: properties such as {"ContentType": "text/plain"}.
        """
        props = make_properties(PacketTypes.PUBLISH, properties)
        return await trio.to_thread.run_sync(self._publish, topic, payload, qos, retain, props)

    async def get(self, within: float = WAIT) -> paho.MQTTMessage:
        """The next message; queue.Empty if none arrives within that many seconds."""
        return await trio.to_thread.run_sync(lambda: self.messages.get(timeout=within))

    async def topics_until(self, marker: str) -> list[str]:
        """The topics of the messages received up to and including the topic ``marker``."""
        topics: list[str] = []
        while not topics or topics[-1] != marker:
            topics.append((await self.get()).topic)
        return topics

    def _close(self, reason_code: int | None) -> None:
        reason = None
        if reason_code is not None:
            reason = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
        self.client.disconnect(reasoncode=reason)
        self.client.loop_stop()
        # paho leaves its wake-up socket pair open after loop_stop; close it.
        self.client._reset_sockets()

    async def close(self, reason_code: int | None = None) -> None:
        """DISCONNECT (MQTT 5: with reason_code, e.g. 0x04 to have the Will sent) and stop."""
        await trio.to_thread.run_sync(self._close, reason_code)

    def _abort(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            # Shut the TCP connection down under paho's feet: no DISCONNECT is ever sent.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.disconnected.wait(WAIT)
        self.client.loop_stop()
        self.client._reset_sockets()

    async def abort(self) -> None:
        """Close the network connection without a DISCONNECT, as a crashed client would."""
        await trio.to_thread.run_sync(self._abort)
