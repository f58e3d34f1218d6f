"""Drive MQTTSession over in-memory bytes: a client codec on one side, the server's on the other.

With ``Client.plain_fast_path`` (the ``plain_fast_path`` fixture runs a test module both
ways) the server codec hands plain QoS 0 PUBLISHes to ``MQTTSession.publish_plain`` as the
listener has it do, instead of returning them as events; every PUBLISH's topic is made
known to the codec first, so that even the first one to a topic takes that path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import config as config_mod
from gateway.codecs import mqtt
from gateway.codecs.mqtt import MQTTProtocolError
from gateway.codecs.mqtt.serialize import decode_publish
from gateway.core import Broker
from gateway.listeners.mqtt_session import MQTTSession
from tests.core.fakes import Clock


@pytest.fixture(params=[False, True], ids=["events", "plain-fast-path"])
def plain_fast_path(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run a test with the QoS 0 fast path off, then on (use with ``pytestmark``)."""
    Client.plain_fast_path = request.param
    try:
        yield request.param
    finally:
        Client.plain_fast_path = False


def learn_topic(topic: str) -> None:
    """Let the codec know ``topic`` as if a PUBLISH had brought it already (if it is valid)."""
    raw = topic.encode()
    if raw and len(raw) <= 0xFFFF:
        with contextlib.suppress(MQTTProtocolError):
            decode_publish(0, len(raw).to_bytes(2, "big") + raw, 4)


def listener_config(**fields: Any) -> config_mod.ListenerConfig:
    return config_mod.ListenerConfig(protocol="mqtt", bind="127.0.0.1:0", **fields)


class Client:
    """One connection: packets in through the server codec, replies decoded by a client codec."""

    plain_fast_path = False

    def __init__(self, broker: Broker, clock: Clock, **config: Any) -> None:
        self.server = mqtt.MQTTConnection(mqtt.Role.SERVER)
        self.client = mqtt.MQTTConnection(mqtt.Role.CLIENT)
        self.stopped: list[object] = []
        self.writable = True
        self.session = MQTTSession(
            broker,
            self.server,
            self.client.receive_data,
            self.stopped.append,
            config=listener_config(**config),
            writable=lambda: self.writable,
            clock=clock,
        )
        self.plain_publishes = 0  # PUBLISHes that took the fast path
        self.plain_fast_path = type(self).plain_fast_path  # as it was when connected
        if self.plain_fast_path:
            self.server.on_plain_publish = self._publish_plain

    def _publish_plain(self, topic: str, payload: bytes, packet: bytes, retain: bool) -> bool:
        self.plain_publishes += 1
        return self.session.publish_plain(topic, payload, packet, retain)

    def send(self, *packets: mqtt.Packet) -> None:
        for packet in packets:
            if self.plain_fast_path and isinstance(packet, mqtt.Publish):
                learn_topic(packet.topic)
            self.server.receive_data(self.client.send(packet))
            self.handle_all()

    def handle_all(self) -> None:
        """Hand the session every packet the server codec has (as the listener does,
        which would stop reading a while at PAUSED)."""
        while (event := self.server.next_event()) is not mqtt.NEED_DATA:
            if event is mqtt.PAUSED:
                continue
            assert isinstance(event, mqtt.Packet.__args__)  # type: ignore[attr-defined]
            self.session.handle(event)

    def received(self) -> list[mqtt.Packet]:
        out = []
        while (event := self.client.next_event()) is not mqtt.NEED_DATA:
            assert event is not mqtt.CLOSED
            out.append(event)
        return out  # type: ignore[return-value]

    def connect(self, client_id: str, version: int = 5, **fields: Any) -> mqtt.ConnAck:
        self.send(mqtt.Connect(client_id=client_id, protocol_level=version, **fields))
        first, *rest = self.received()
        assert isinstance(first, mqtt.ConnAck), first
        self.after_connack = rest
        return first

    def drop(self) -> None:
        """The network connection is gone (no DISCONNECT)."""
        self.session.connection_ended()
