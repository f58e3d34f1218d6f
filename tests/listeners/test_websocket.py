"""MQTT and STOMP over WebSocket, byte by byte: framing, close codes, bad upgrades.

A raw client (a trio socket with wsproto in the client role, or hand-written frames for
what wsproto refuses to produce) against a gateway with one ``http`` listener, checked
against docs/http.md (the WebSocket section): packets split across messages or sharing
one, pings, the close codes 1000/1001/1002/1003/1007/1009 and their reasons, and every
refused upgrade answered with the documented status and logged, without disturbing an
established MQTT-over-WebSocket subscriber.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.codecs import mqtt
from tests.conftest import NET_TIMEOUT
from tests.rawmqtt import RawClient

# The http listener's max_packet_size (the smallest the configuration allows): a larger
# WebSocket message is refused with 1009.
SMALL_LIMIT = 4096
ORIGIN = "https://app.example"


def ws_config(tmp_path: os.PathLike[str], **http: object) -> config_mod.Config:
    """An http listener (``http`` keys added) plus mqtt and stomp listeners, all on
    ephemeral loopback ports."""
    text = f"""
[gateway]
data_dir = "{os.fspath(tmp_path)}/data"
drain_timeout = 2.0

[[listeners]]
protocol = "http"
bind = "127.0.0.1:0"
""" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in http.items())
    text += """
[[listeners]]
protocol = "mqtt"
bind = "127.0.0.1:0"

[[listeners]]
protocol = "stomp"
bind = "127.0.0.1:0"
"""
    return config_mod.loads(text, "test.toml")


async def _start(nursery: trio.Nursery, tmp_path: os.PathLike[str], **http: object) -> Gateway:
    gw = Gateway(ws_config(tmp_path, **http))
    with trio.fail_after(NET_TIMEOUT):
        await nursery.start(gw.run)
    return gw


async def _stop(gw: Gateway) -> None:
    gw.stop()
    with trio.fail_after(NET_TIMEOUT):
        await gw.stopped.wait()


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Gateway]:
    """The gateway: http (max_packet_size SMALL_LIMIT, allowed origin ORIGIN), mqtt, stomp."""
    gateway = await _start(nursery, tmp_path, max_packet_size=SMALL_LIMIT, allowed_origins=[ORIGIN])
    yield gateway
    await _stop(gateway)


# -- the raw WebSocket client ----------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One hand-written WebSocket frame (RFC 6455 5.2), masked as a client's must be."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WSClient:
    """A WebSocket client on a trio socket: wsproto for well-formed traffic, raw bytes for
    the rest. ``events`` yields what the server sent, one event at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.subprotocol: str | None = None
        self._pending: list[Event] = []
        self.eof = False

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        subprotocols: Sequence[str] = (),
        *,
        headers: Sequence[tuple[str, str]] = (),
        then: bytes = b"",
    ) -> WSClient:
        """Connect and complete the handshake; ``then`` is written in the same segment as
        the upgrade request (frames that arrive before the 101 is answered)."""
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        request = client.ws.send(
            Request(
                host=f"127.0.0.1:{port}",
                target=path,
                subprotocols=list(subprotocols),
                extra_headers=[(k.encode(), v.encode()) for k, v in headers],
            )
        )
        await client.stream.send_all(request + then)
        event = await client.event()
        if not isinstance(event, AcceptConnection):
            raise AssertionError(f"upgrade refused: {event!r}")
        client.subprotocol = event.subprotocol
        return client

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def event(self) -> Event | None:
        """The next event from the server; None at EOF."""
        while not self._pending:
            self._pending.extend(self.ws.events())
            if self._pending:
                break
            if self.eof:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.eof = True
                self.ws.receive_data(None)
            else:
                self.ws.receive_data(data)
        return self._pending.pop(0)

    async def message(self) -> bytes | str:
        """The next whole data message (bytes for binary, str for text)."""
        parts: list[Any] = []
        while True:
            event = await self.event()
            if not isinstance(event, Message):
                raise AssertionError(f"expected a data message, got {event!r}")
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)

    async def close_frame(self) -> tuple[int, str]:
        """Skip data until the server's close frame; answer it; (code, reason)."""
        while True:
            event = await self.event()
            if event is None:
                raise AssertionError("the server closed the TCP connection without a close frame")
            if isinstance(event, CloseConnection):
                if self.ws.state.name == "REMOTE_CLOSING":
                    await self.stream.send_all(self.ws.send(event.response()))
                return event.code, event.reason or ""

    async def closed(self) -> bool:
        """True once the server has closed the TCP connection."""
        while await self.event() is not None:
            pass
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


class WSMQTT:
    """An MQTT client (the gateway's own codec) over a WSClient, for exact packets."""

    def __init__(self, client: WSClient) -> None:
        self.ws = client
        self.codec = mqtt.MQTTConnection(mqtt.Role.CLIENT)
        self.close: tuple[int, str] | None = None

    @classmethod
    async def open(
        cls, port: int, path: str = "/mqtt", subprotocols: Sequence[str] = ("mqtt",)
    ) -> WSMQTT:
        return cls(await WSClient.open(port, path, subprotocols))

    def encode(self, *packets: mqtt.Packet) -> bytes:
        return b"".join(self.codec.send(packet) for packet in packets)

    async def send(self, *packets: mqtt.Packet) -> None:
        """All ``packets`` in one binary message."""
        await self.ws.send(BytesMessage(data=self.encode(*packets)))

    async def connect(self, client_id: str, **fields: Any) -> mqtt.ConnAck:
        await self.send(mqtt.Connect(client_id=client_id, **fields))
        ack = await self.receive()
        assert isinstance(ack, mqtt.ConnAck), ack
        return ack

    async def receive(self) -> mqtt.Packet | None:
        """The next packet; None once the server closed (``close`` then holds the code)."""
        while True:
            event = self.codec.next_event()
            if event is not mqtt.NEED_DATA and event is not mqtt.CLOSED:
                assert not isinstance(event, mqtt.connection._Sentinel)
                return event
            got = await self.ws.event()
            if got is None:
                return None
            if isinstance(got, CloseConnection):
                self.close = (got.code, got.reason or "")
                if self.ws.ws.state.name == "REMOTE_CLOSING":
                    await self.ws.stream.send_all(self.ws.ws.send(got.response()))
                return None
            if isinstance(got, TextMessage):
                raise AssertionError(f"MQTT in a text message: {got!r}")
            if isinstance(got, BytesMessage):
                self.codec.receive_data(got.data)

    async def receive_until_closed(self) -> list[mqtt.Packet]:
        packets = []
        while (packet := await self.receive()) is not None:
            packets.append(packet)
        return packets


def stomp_frame(command: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    head = command + "\n" + "".join(f"{k}:{v}\n" for k, v in headers) + "\n"
    return head.encode() + body + b"\x00"


def parse_stomp(data: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Every frame in ``data`` (no escaping, no content-length: test bodies have no NUL)."""
    frames = []
    for chunk in data.split(b"\x00"):
        chunk = chunk.lstrip(b"\r\n")
        if not chunk:
            continue
        head, _, body = chunk.partition(b"\n\n")
        lines = head.decode().split("\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers.setdefault(key, value)
        frames.append((lines[0], headers, body))
    return frames


async def stomp_open(port: int, path: str = "/stomp", subprotocols: Sequence[str] = ()) -> WSClient:
    """A STOMP 1.2 session over WebSocket, CONNECTED."""
    client = await WSClient.open(port, path, subprotocols)
    await client.send(
        TextMessage(data=stomp_frame("CONNECT", [("accept-version", "1.2")]).decode())
    )
    reply = await client.message()
    assert isinstance(reply, str)
    [(command, _, _)] = parse_stomp(reply.encode())
    assert command == "CONNECTED"
    return client


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- MQTT: framing --------------------------------------------------------------------------


async def test_mqtt_packets_split_across_messages_and_fragments_are_reassembled(
    gw: Gateway,
) -> None:
    """MQTT-6.0.0-2: packets need not align with WebSocket messages or frames."""
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        assert client.ws.subprotocol == "mqtt"
        connect = client.encode(mqtt.Connect(client_id="split", protocol_level=5))
        # The CONNECT in three messages: its first byte, the middle, the rest.
        for piece in (connect[:1], connect[1:5], connect[5:]):
            await client.ws.send(BytesMessage(data=piece))
        ack = await client.receive()
        assert isinstance(ack, mqtt.ConnAck)
        assert ack.return_code == 0
        # A SUBSCRIBE and a QoS 1 PUBLISH to itself in one message...
        await client.send(
            mqtt.Subscribe(packet_id=1, subscriptions=(("split/#", 1),)),
            mqtt.Publish(topic="split/one", payload=b"one", qos=1, packet_id=2),
        )
        got = [await client.receive() for _ in range(3)]
        assert any(isinstance(p, mqtt.SubAck) and p.return_codes == (1,) for p in got), got
        assert any(isinstance(p, mqtt.PubAck) and p.packet_id == 2 for p in got), got
        [delivered] = [p for p in got if isinstance(p, mqtt.Publish)]
        assert (delivered.topic, delivered.payload) == ("split/one", b"one")
        await client.send(mqtt.PubAck(packet_id=delivered.packet_id or 0))
        # ...and a PUBLISH in one message of three fragments, then the tail of a packet and
        # a whole PINGREQ sharing a message.
        publish = client.encode(mqtt.Publish(topic="split/two", payload=b"x" * 300))
        await client.ws.send(BytesMessage(data=publish[:2], message_finished=False))
        await client.ws.send(BytesMessage(data=publish[2:100], message_finished=False))
        await client.ws.send(BytesMessage(data=publish[100:-10], message_finished=True))
        await client.ws.send(BytesMessage(data=publish[-10:] + client.encode(mqtt.PingReq())))
        got2 = [await client.receive(), await client.receive()]
        [delivered] = [p for p in got2 if isinstance(p, mqtt.Publish)]
        assert (delivered.topic, delivered.payload) == ("split/two", b"x" * 300)
        assert any(isinstance(p, mqtt.PingResp) for p in got2), got2
        await client.send(mqtt.Disconnect())
        assert await client.receive_until_closed() == []
        assert client.close == (1000, "")
        await client.ws.aclose()


async def test_frames_sent_with_the_upgrade_request_are_not_lost(gw: Gateway) -> None:
    """A client may write its CONNECT right behind the handshake, before the 101."""
    with trio.fail_after(NET_TIMEOUT):
        codec = mqtt.MQTTConnection(mqtt.Role.CLIENT)
        connect = codec.send(mqtt.Connect(client_id="eager"))
        ws = await WSClient.open(gw.port("http"), "/mqtt", ["mqtt"], then=ws_frame(0x2, connect))
        client = WSMQTT(ws)
        client.codec = codec
        ack = await client.receive()
        assert isinstance(ack, mqtt.ConnAck), ack
        await ws.aclose()


async def test_ping_gets_a_pong_with_the_same_payload(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("pinger")
        await client.ws.send(Ping(payload=b"are you there"))
        pong = await client.ws.event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"are you there"
        # A ping between the fragments of a message is answered too (control frames may
        # be interleaved), and the message still arrives whole.
        publish = client.encode(
            mqtt.Subscribe(packet_id=1, subscriptions=(("p", 0),)),
            mqtt.Publish(topic="p", payload=b"after ping"),
        )
        await client.ws.send(BytesMessage(data=publish[:7], message_finished=False))
        await client.ws.send(Ping(payload=b"mid"))
        await client.ws.send(BytesMessage(data=publish[7:], message_finished=True))
        pong = await client.ws.event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"mid"
        assert isinstance(await client.receive(), mqtt.SubAck)
        delivered = await client.receive()
        assert isinstance(delivered, mqtt.Publish)
        assert delivered.payload == b"after ping"
        await client.ws.aclose()


@pytest.mark.parametrize(
    ("path", "offer", "answered"),
    [
        ("/mqtt", [], None),
        ("/mqtt", ["v12.stomp", "mqttv3.1", "mqtt"], "mqttv3.1"),
        ("/ws", ["wamp", "mqtt"], "mqtt"),
        ("/ws", ["MQTT"], "MQTT"),
    ],
)
async def test_mqtt_subprotocol_negotiation(
    gw: Gateway, path: str, offer: list[str], answered: str | None
) -> None:
    """MQTT-6.0.0-4: the first offered subprotocol the path speaks is answered as spelled;
    no offer at all on /mqtt gets none."""
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"), path, offer)
        assert client.ws.subprotocol == answered
        assert (await client.connect("negotiated")).return_code == 0
        await client.ws.aclose()


# -- MQTT: close codes ----------------------------------------------------------------------


async def test_text_frame_on_mqtt_closes_with_1003(gw: Gateway) -> None:
    """MQTT-6.0.0-1: MQTT travels in binary messages; a text message closes with 1003."""
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("texter")
        await client.ws.send(TextMessage(data="\x30\x05\x00\x01ahi"))
        assert await client.receive_until_closed() == []
        assert client.close is not None
        assert client.close[0] == 1003
        assert "binary" in client.close[1]
        assert await client.ws.closed()
        await client.ws.aclose()
    [refused] = events_named(logs, "ws.refused")
    assert refused["code"] == 1003


async def test_packets_before_a_bad_frame_in_the_same_read_are_handled(gw: Gateway) -> None:
    """What arrived before the frame that broke the rules is still handled: a QoS 1
    PUBLISH followed, in the same TCP segment, by a text frame is acknowledged, delivered,
    and only then is the connection closed with 1003."""
    with trio.fail_after(NET_TIMEOUT):
        sub = await RawClient.open(gw.port("mqtt"))
        await sub.connect("watcher")
        await sub.send(mqtt.Subscribe(packet_id=1, subscriptions=(("last/#", 0),)))
        assert isinstance(await sub.receive(), mqtt.SubAck)
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("last-words")
        publish = client.encode(mqtt.Publish(topic="last/word", payload=b"ok", qos=1, packet_id=9))
        await client.ws.send_raw(ws_frame(0x2, publish) + ws_frame(0x1, b"text"))
        assert await client.receive_until_closed() == [mqtt.PubAck(packet_id=9)]
        assert client.close is not None
        assert client.close[0] == 1003
        got = await sub.receive()
        assert isinstance(got, mqtt.Publish)
        assert got.payload == b"ok"
        await client.ws.aclose()
        await sub.aclose()


async def test_message_over_max_packet_size_closes_with_1009(gw: Gateway) -> None:
    """A 1 MB message of PINGREQs: every packet in it is well-formed, the message is not.

    The close frame reaches the client although the server stopped reading in the middle
    of the message: it reads on (and drops) until the client answers the close, so closing
    the socket does not reset the connection under the close frame."""
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("big")
        pings = client.encode(mqtt.PingReq()) * (512 * 1024)
        await client.ws.send(BytesMessage(data=pings))
        answered = await client.receive_until_closed()
        assert len(answered) <= SMALL_LIMIT // 2
        assert all(isinstance(packet, mqtt.PingResp) for packet in answered)
        assert client.close is not None
        assert client.close[0] == 1009
        assert str(SMALL_LIMIT) in client.close[1]
        await client.ws.aclose()
    [refused] = events_named(logs, "ws.refused")
    assert refused["code"] == 1009


async def test_mqtt_packet_announcing_more_than_the_limit_is_refused_by_mqtt(
    gw: Gateway,
) -> None:
    """A PUBLISH whose header says it is over the limit, arriving in small fragments, is
    refused by the MQTT codec before the message grows past the limit: DISCONNECT 0x95
    (MQTT 5), then 1002."""
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("announcer", protocol_level=5)
        big = client.encode(mqtt.Publish(topic="big", payload=b"x" * (2 * SMALL_LIMIT)))
        await client.ws.send(BytesMessage(data=big[:100], message_finished=False))
        [goodbye] = await client.receive_until_closed()
        assert isinstance(goodbye, mqtt.Disconnect)
        assert goodbye.reason_code == mqtt.ReasonCode.PACKET_TOO_LARGE
        assert client.close is not None
        assert client.close[0] == 1002
        await client.ws.aclose()


async def test_fragments_adding_up_over_max_packet_size_close_with_1009(gw: Gateway) -> None:
    """The limit is on the message, not on each frame: fragments of small whole packets
    add up (the packets before the limit are handled)."""
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("drip")
        await client.send(mqtt.Subscribe(packet_id=1, subscriptions=(("drip", 0),)))
        assert isinstance(await client.receive(), mqtt.SubAck)
        packet = client.encode(mqtt.Publish(topic="drip", payload=b"d" * 900))
        await client.ws.send_raw(ws_frame(0x2, packet, fin=False))
        for _ in range(SMALL_LIMIT // len(packet)):
            await client.ws.send_raw(ws_frame(0x0, packet, fin=False))
        delivered = await client.receive_until_closed()
        assert 0 < len(delivered) <= SMALL_LIMIT // len(packet)
        assert client.close is not None
        assert client.close[0] == 1009
        await client.ws.aclose()


async def test_messages_up_to_the_limit_pass(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("fits", protocol_level=5)
        await client.send(mqtt.Subscribe(packet_id=1, subscriptions=(("fits", 0),)))
        assert isinstance(await client.receive(), mqtt.SubAck)
        packet = client.encode(mqtt.Publish(topic="fits", payload=b""))
        payload = b"y" * (SMALL_LIMIT - len(packet) - 1)  # the length takes 2 bytes now
        data = client.encode(mqtt.Publish(topic="fits", payload=payload))
        assert len(data) == SMALL_LIMIT
        await client.ws.send(BytesMessage(data=data))
        got = await client.receive()
        assert isinstance(got, mqtt.Publish)
        assert got.payload == payload
        await client.ws.aclose()


async def test_second_connect_gets_disconnect_then_1002_with_the_reason(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("twice", protocol_level=5)
        again = mqtt.encode_packet(mqtt.Connect(client_id="twice", protocol_level=5), 5)
        await client.ws.send(BytesMessage(data=again))
        [goodbye] = await client.receive_until_closed()
        assert isinstance(goodbye, mqtt.Disconnect)
        assert goodbye.reason_code == mqtt.ReasonCode.PROTOCOL_ERROR
        assert client.close is not None
        code, reason = client.close
        assert code == 1002
        assert "CONNECT" in reason
        await client.ws.aclose()
    [error] = events_named(logs, "mqtt.protocol_error")
    assert error["transport"] == "websocket"


async def test_malformed_mqtt311_packet_closes_with_1002(gw: Gateway) -> None:
    """MQTT 3.1.1 has no server DISCONNECT: the close frame alone says why."""
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("vandal")
        # A PUBLISH whose topic length runs past the packet's end.
        await client.ws.send(BytesMessage(data=b"\x30\x05\x00\x09abc"))
        assert await client.receive_until_closed() == []
        assert client.close is not None
        code, reason = client.close
        assert code == 1002
        assert reason
        await client.ws.aclose()


async def test_refused_mqtt_connect_closes_with_1002(gw: Gateway) -> None:
    """A CONNECT the server refuses gets its CONNACK, then 1002 with the reason."""
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.send(mqtt.Connect(client_id="$reserved", protocol_level=5))
        [ack] = await client.receive_until_closed()
        assert isinstance(ack, mqtt.ConnAck)
        assert ack.return_code == mqtt.ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
        assert client.close is not None
        assert client.close[0] == 1002
        await client.ws.aclose()


async def test_normal_disconnect_closes_with_1000(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("polite", protocol_level=5)
        await client.send(mqtt.Disconnect())
        assert await client.receive_until_closed() == []
        assert client.close == (1000, "")
        assert await client.ws.closed()
        await client.ws.aclose()


async def test_session_takeover_closes_the_old_connection_with_1000(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        old = await WSMQTT.open(gw.port("http"))
        await old.connect("same", protocol_level=5)
        new = await WSMQTT.open(gw.port("http"), "/ws", ["mqtt"])
        await new.connect("same", protocol_level=5)
        [goodbye] = await old.receive_until_closed()
        assert isinstance(goodbye, mqtt.Disconnect)
        assert goodbye.reason_code == mqtt.ReasonCode.SESSION_TAKEN_OVER
        assert old.close == (1000, "")
        await new.send(mqtt.PingReq())
        assert isinstance(await new.receive(), mqtt.PingResp)
        for client in (old, new):
            await client.ws.aclose()


async def test_timeouts_close_with_1000_and_the_reason(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    """The inner protocol's timers: no CONNECT within connect_timeout, an MQTT 5 client
    silent past its keep-alive (DISCONNECT 0x8D first), a STOMP peer silent past its
    heart-beat (an ERROR frame first)."""
    gw = await _start(nursery, tmp_path, connect_timeout=0.3, heartbeat=0.2)
    with trio.fail_after(NET_TIMEOUT):
        silent = await WSMQTT.open(gw.port("http"))
        assert await silent.receive_until_closed() == []
        assert silent.close == (1000, "timeout")
        await silent.ws.aclose()

        sleeper = await WSMQTT.open(gw.port("http"))
        await sleeper.connect("sleeper", protocol_level=5, keep_alive=1)
        [goodbye] = await sleeper.receive_until_closed()
        assert isinstance(goodbye, mqtt.Disconnect)
        assert goodbye.reason_code == mqtt.ReasonCode.KEEP_ALIVE_TIMEOUT
        assert sleeper.close == (1000, "timeout")
        await sleeper.ws.aclose()

        stomp = await WSClient.open(gw.port("http"), "/stomp")
        connect = stomp_frame("CONNECT", [("accept-version", "1.2"), ("heart-beat", "200,0")])
        await stomp.send(TextMessage(data=connect.decode()))
        connected = await stomp.message()
        assert isinstance(connected, str)
        assert connected.startswith("CONNECTED\n")
        error = await stomp.message()
        assert isinstance(error, str)
        assert error.startswith("ERROR\n")
        assert await stomp.close_frame() == (1000, "timeout")
        await stomp.aclose()
    await _stop(gw)


async def test_client_close_is_answered_and_the_will_published(gw: Gateway) -> None:
    """A close frame from the client (no DISCONNECT) ends the session as a dropped
    connection: the close is echoed and the Will is published."""
    with trio.fail_after(NET_TIMEOUT):
        sub = await RawClient.open(gw.port("mqtt"))
        await sub.connect("heir")
        await sub.send(mqtt.Subscribe(packet_id=1, subscriptions=(("wills/#", 0),)))
        assert isinstance(await sub.receive(), mqtt.SubAck)
        client = await WSMQTT.open(gw.port("http"))
        await client.connect("mortal", will=mqtt.Will(topic="wills/mortal", payload=b"gone"))
        await client.ws.send(CloseConnection(code=1001, reason="tab closed"))
        echo = await client.ws.event()
        assert isinstance(echo, CloseConnection)
        assert echo.code == 1001
        assert await client.ws.closed()
        will = await sub.receive()
        assert isinstance(will, mqtt.Publish)
        assert (will.topic, will.payload) == ("wills/mortal", b"gone")
        await client.ws.aclose()
        await sub.aclose()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (ws_frame(0x2, b"\x10", mask=False), 1002),  # clients must mask
        (ws_frame(0x3, b"\x10"), 1002),  # a reserved opcode
        (ws_frame(0x9, b"p" * 126), 1002),  # a control frame over 125 bytes
        (ws_frame(0x9, b"p", fin=False), 1002),  # a fragmented control frame
        (ws_frame(0x0, b"\x10"), 1002),  # a continuation with nothing to continue
        (bytes([0xC2, 0x81]) + b"\x00\x00\x00\x00\x10", 1002),  # RSV1 without an extension
    ],
)
async def test_malformed_frames_close_with_1002(gw: Gateway, frame: bytes, code: int) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await WSMQTT.open(gw.port("http"))
        await client.ws.send_raw(frame)
        assert await client.receive_until_closed() == []
        assert client.close is not None
        assert client.close[0] == code
        await client.ws.aclose()


# -- STOMP ------------------------------------------------------------------------------------


async def test_invalid_utf8_in_a_stomp_text_frame_closes_with_1007(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await stomp_open(gw.port("http"))
        bad = stomp_frame("SEND", [("destination", "/topic/t")], b"caf\xe9")
        await client.send_raw(ws_frame(0x1, bad))
        code, reason = await client.close_frame()
        assert code == 1007
        assert "utf-8" in reason.lower()
        await client.aclose()
    [refused] = events_named(logs, "ws.refused")
    assert refused["code"] == 1007


async def test_stomp_protocol_error_sends_error_then_1002(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await stomp_open(gw.port("http"), "/ws", ["v12.stomp"])
        assert client.subprotocol == "v12.stomp"
        await client.send(TextMessage(data=stomp_frame("SEND", [("x", "no destination")]).decode()))
        error = await client.message()
        assert isinstance(error, str)
        [(command, headers, _)] = parse_stomp(error.encode())
        assert command == "ERROR"
        code, reason = await client.close_frame()
        assert code == 1002
        assert reason == headers["message"]
        assert await client.closed()
        await client.aclose()


async def test_stomp_version_mismatch_sends_error_then_1002(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await WSClient.open(gw.port("http"), "/stomp")
        await client.send(
            TextMessage(data=stomp_frame("CONNECT", [("accept-version", "2.0")]).decode())
        )
        error = await client.message()
        assert isinstance(error, str)
        assert error.startswith("ERROR\n")
        code, _ = await client.close_frame()
        assert code == 1002
        await client.aclose()


async def test_stomp_frames_split_and_combined_text_and_binary(gw: Gateway) -> None:
    """STOMP frames may be split across messages or share one, in text or binary messages;
    a UTF-8 frame comes back as a text message, a binary body as a binary message."""
    with trio.fail_after(NET_TIMEOUT):
        client = await stomp_open(gw.port("http"), "/stomp", ["v11.stomp", "v12.stomp"])
        assert client.subprotocol == "v11.stomp"
        subscribe = stomp_frame("SUBSCRIBE", [("destination", "/topic/s"), ("id", "1")])
        send = stomp_frame("SEND", [("destination", "/topic/s"), ("receipt", "r1")], b"hello")
        data = subscribe + send
        await client.send(TextMessage(data=data[:10].decode()))
        await client.send(BytesMessage(data=data[10:60]))
        await client.send(TextMessage(data=data[60:].decode()))
        frames: list[tuple[str, dict[str, str], bytes]] = []
        while len(frames) < 2:
            message = await client.message()
            assert isinstance(message, str)
            frames += parse_stomp(message.encode())
        commands = sorted(command for command, _, _ in frames)
        assert commands == ["MESSAGE", "RECEIPT"]
        [body] = [body for command, _, body in frames if command == "MESSAGE"]
        assert body == b"hello"
        binary = stomp_frame(
            "SEND",
            [("destination", "/topic/s"), ("content-length", "3")],
            b"\xff\x00\xfe",
        )
        await client.send(BytesMessage(data=binary))
        message = await client.message()
        assert isinstance(message, bytes)
        assert message.endswith(b"\n\n\xff\x00\xfe\x00")
        await client.send(
            TextMessage(data=stomp_frame("DISCONNECT", [("receipt", "bye")]).decode())
        )
        receipt = await client.message()
        assert isinstance(receipt, str)
        assert receipt.startswith("RECEIPT\nreceipt-id:bye\n")
        assert await client.close_frame() == (1000, "")
        await client.aclose()


# -- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_closes_with_1001_after_mqtt5_disconnect_0x8b(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    gw = await _start(nursery, tmp_path)
    with trio.fail_after(NET_TIMEOUT):
        v5 = await WSMQTT.open(gw.port("http"))
        await v5.connect("five", protocol_level=5)
        v4 = await WSMQTT.open(gw.port("http"), "/ws", ["mqtt"])
        await v4.connect("four")
        stomp = await stomp_open(gw.port("http"))
        gw.stop()
        [goodbye] = await v5.receive_until_closed()
        assert isinstance(goodbye, mqtt.Disconnect)
        assert goodbye.reason_code == mqtt.ReasonCode.SERVER_SHUTTING_DOWN
        assert v5.close is not None
        assert v5.close[0] == 1001
        assert await v4.receive_until_closed() == []
        assert v4.close is not None
        assert v4.close[0] == 1001
        assert (await stomp.close_frame())[0] == 1001
        await gw.stopped.wait()
        for client in (v5.ws, v4.ws, stomp):
            await client.aclose()


# -- bad upgrades -----------------------------------------------------------------------------


def _handshake(path: str, *, method: str = "GET", drop: Sequence[str] = (), **extra: str) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    headers.update({key.replace("_", "-"): value for key, value in extra.items()})
    for name in drop:
        headers.pop(name)
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    if method == "POST":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` and read the answer until the server closes: (status, headers, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


# (request, status, error code, a header the answer must carry)
BAD_UPGRADES: list[tuple[str, bytes, int, str, tuple[str, str] | None]] = [
    (
        "plain GET",
        b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        426,
        "upgrade_required",
        ("upgrade", "websocket"),
    ),
    ("no key", _handshake("/mqtt", drop=["Sec-WebSocket-Key"]), 400, "bad_upgrade", None),
    ("no Connection", _handshake("/mqtt", drop=["Connection"]), 400, "bad_upgrade", None),
    (
        "version 8",
        _handshake("/mqtt", Sec_WebSocket_Version="8"),
        426,
        "bad_upgrade",
        ("sec-websocket-version", "13"),
    ),
    ("POST", _handshake("/mqtt", method="POST"), 405, "method_not_allowed", ("allow", "GET")),
    (
        "STOMP subprotocol on /mqtt",
        _handshake("/mqtt", Sec_WebSocket_Protocol="v12.stomp"),
        400,
        "unsupported_subprotocol",
        None,
    ),
    (
        "MQTT subprotocol on /stomp",
        _handshake("/stomp", Sec_WebSocket_Protocol="mqtt"),
        400,
        "unsupported_subprotocol",
        None,
    ),
    ("/ws without a subprotocol", _handshake("/ws"), 400, "unsupported_subprotocol", None),
    (
        "foreign origin",
        _handshake("/mqtt", Origin="https://evil.example"),
        403,
        "origin_not_allowed",
        None,
    ),
    (
        "a Host that is not a host name",
        _handshake("/mqtt", Host="\xff\xfe"),
        400,
        "bad_upgrade",
        None,
    ),
    (
        "HTTP/1.0 without Host",
        _handshake("/mqtt", drop=["Host"]).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        400,
        "bad_upgrade",
        None,
    ),
]


async def test_bad_upgrades_are_refused_logged_and_harmless(gw: Gateway) -> None:
    port = gw.port("http")
    with trio.fail_after(NET_TIMEOUT):
        sub = await WSMQTT.open(port)
        await sub.connect("steadfast", protocol_level=5)
        await sub.send(mqtt.Subscribe(packet_id=1, subscriptions=(("still/#", 0),)))
        assert isinstance(await sub.receive(), mqtt.SubAck)
        pub = await RawClient.open(gw.port("mqtt"))
        await pub.connect("pub")
        for name, request, status, code, header in BAD_UPGRADES:
            with capture_logs() as logs:
                got_status, headers, body = await raw_http(port, request)
            assert got_status == status, name
            assert json.loads(body)["error"] == code, name
            if header is not None:
                assert headers.get(header[0]) == header[1], (name, headers)
            [refusal] = events_named(logs, "ws.upgrade_refused")
            assert (refusal["status"], refusal["error"]) == (status, code), name
            assert refusal["path"] == request.split()[1].decode(), name
            assert not events_named(logs, "conn.crashed"), name
            await pub.send(mqtt.Publish(topic=f"still/{name}", payload=b"x"))
            got = await sub.receive()
            assert isinstance(got, mqtt.Publish), name
            assert got.topic == f"still/{name}"
        # The allowed origin and requests without an Origin are let in.
        allowed = await WSClient.open(port, "/mqtt", headers=[("Origin", ORIGIN)])
        await allowed.aclose()
        await sub.ws.aclose()
        await pub.aclose()


async def test_upgrade_with_rejected_wsproto_client_sees_json(gw: Gateway) -> None:
    """wsproto's client role sees a refusal as RejectConnection with the JSON body."""
    with trio.fail_after(NET_TIMEOUT):
        client = WSClient(await trio.open_tcp_stream("127.0.0.1", gw.port("http")))
        await client.stream.send_all(
            client.ws.send(Request(host="x", target="/mqtt", subprotocols=["v12.stomp"]))
        )
        event = await client.event()
        assert isinstance(event, RejectConnection)
        assert event.status_code == 400
        body = b""
        while True:
            more = await client.event()
            if not isinstance(more, RejectData):
                break
            body += more.data
            if more.body_finished:
                break
        assert json.loads(body)["error"] == "unsupported_subprotocol"
        await client.aclose()
