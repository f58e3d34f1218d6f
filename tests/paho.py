"""paho-mqtt, the reference Python client, driven from Trio tests through threads."""

from __future__ import annotations

import queue
import threading
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 10.0


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
        self.keepalive = keepalive
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_session if protocol != paho.MQTTv5 else None,
        )
        self.connack: Any = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self._granted: dict[int, list[Any]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_disconnect(self, *_: Any) -> None:
        # Tests never want paho's automatic reconnect: it would hide what the server did.
        self.client.disconnect()
        self.disconnected.set()

    def _ack(self, mid: int) -> threading.Event:
        return self._acks.setdefault(mid, threading.Event())

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        self._granted[mid] = codes
        self._ack(mid).set()

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        self._ack(mid).set()

    def _connect(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if not self._connected.wait(WAIT):
            raise TimeoutError("no CONNACK")

    async def connect(self) -> Any:
        await trio.to_thread.run_sync(self._connect)
        return self.connack

    def _subscribe(self, topic: str, qos: int) -> list[Any]:
        _, mid = self.client.subscribe(topic, qos)
        if not self._ack(mid).wait(WAIT):
            raise TimeoutError("no SUBACK")
        return self._granted[mid]

    async def subscribe(self, topic: str, qos: int = 0) -> list[Any]:
        return await trio.to_thread.run_sync(self._subscribe, topic, qos)

    def _unsubscribe(self, topic: str) -> None:
        _, mid = self.client.unsubscribe(topic)
        if not self._ack(mid).wait(WAIT):
            raise TimeoutError("no UNSUBACK")

    async def unsubscribe(self, topic: str) -> None:
        await trio.to_thread.run_sync(self._unsubscribe, topic)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        await trio.to_thread.run_sync(self._publish, topic, payload, qos, retain)

    async def get(self) -> paho.MQTTMessage:
        return await trio.to_thread.run_sync(lambda: self.messages.get(timeout=WAIT))

    def _close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._close)
