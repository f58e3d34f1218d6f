"""Drive MQTTSession over in-memory bytes: a client codec on one side, the server's on the other."""

from __future__ import annotations

from typing import Any

from gateway import config as config_mod
from gateway.codecs import mqtt
from gateway.core import Broker
from gateway.listeners.mqtt_session import MQTTSession
from tests.core.fakes import Clock


def listener_config(**fields: Any) -> config_mod.ListenerConfig:
    return config_mod.ListenerConfig(protocol="mqtt", bind="127.0.0.1:0", **fields)


class Client:
    """One connection: packets in through the server codec, replies decoded by a client codec."""

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

    def send(self, *packets: mqtt.Packet) -> None:
        for packet in packets:
            self.server.receive_data(self.client.send(packet))
            while (event := self.server.next_event()) is not mqtt.NEED_DATA:
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
