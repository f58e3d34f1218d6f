"""A bare MQTT client over a Trio socket, built on the gateway's own codec.

For tests that must see exactly what the server sends (or that it closed the
connection), with no client library retrying or hiding anything.
"""

from __future__ import annotations

import trio

from gateway.codecs import mqtt


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.codec = mqtt.MQTTConnection(mqtt.Role.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *packets: mqtt.Packet) -> None:
        await self.stream.send_all(b"".join(self.codec.send(p) for p in packets))

    async def connect(self, client_id: str, **fields: object) -> mqtt.ConnAck:
        await self.send(mqtt.Connect(client_id=client_id, **fields))  # type: ignore[arg-type]
        ack = await self.receive()
        assert isinstance(ack, mqtt.ConnAck), ack
        return ack

    async def receive(self) -> mqtt.Packet | None:
        """The next packet, or None once the server has closed the connection."""
        while True:
            event = self.codec.next_event()
            if event is mqtt.CLOSED:
                return None
            if event is not mqtt.NEED_DATA:
                assert not isinstance(event, mqtt.connection._Sentinel)
                return event
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.codec.receive_data(data)

    async def receive_until_closed(self) -> list[mqtt.Packet]:
        packets = []
        while (packet := await self.receive()) is not None:
            packets.append(packet)
        return packets

    async def aclose(self) -> None:
        await self.stream.aclose()
