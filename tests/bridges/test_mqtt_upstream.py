"""The mqtt bridge kind against the real Mosquitto at 127.0.0.1:1883 (paho on the
other side), plus a few protocol tests of the client against a small local fake
broker speaking through the gateway's own codec (refusals, receive maximum,
keep-alive), which Mosquitto cannot be made to provoke."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho_client
import pytest
import trio

from gateway.bridges.base import ORIGIN_HEADER, InboundRule, Outbound, UpstreamError
from gateway.bridges.config import BridgeConfig
from gateway.bridges.mqtt import MqttUpstream, Options
from gateway.codecs import mqtt
from gateway.codecs.mqtt import NEED_DATA, MQTTConnection, Role
from gateway.core.message import Message
from tests.conftest import upstream_reachable
from tests.paho import Paho, properties_dict

from .conftest import RecordingLink, running

pytestmark = pytest.mark.upstream

HOST, PORT = "127.0.0.1", 1883
URL = f"mqtt://{HOST}:{PORT}"
VERSIONS = pytest.mark.parametrize("version", [4, 5])


def make(
    link: RecordingLink,
    *,
    url: str = URL,
    inbound: Sequence[tuple[str, int]] = (),
    **options: Any,
) -> MqttUpstream:
    config = BridgeConfig(name="t", kind="mqtt", url=url, mqtt=options)
    rules = [InboundRule(i, source, qos) for i, (source, qos) in enumerate(inbound)]
    return MqttUpstream(config, config.options(), link, rules)


async def forget_session(client_id: str, version: int) -> None:
    """End a persistent session left at Mosquitto by a test."""
    upstream = make(
        RecordingLink(), client_id=client_id, version=version, clean_start=True, session_expiry=0
    )
    with trio.fail_after(5):
        await upstream.open()
        await upstream.close()


@asynccontextmanager
async def subscriber(topic: str) -> AsyncIterator[Paho]:
    client = Paho(PORT, f"sub-{uuid.uuid4().hex[:8]}", protocol=paho_client.MQTTv5)
    await client.connect()
    await client.subscribe(topic, 2)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def publisher(version: int) -> AsyncIterator[Paho]:
    protocol = paho_client.MQTTv5 if version == 5 else paho_client.MQTTv311
    client = Paho(PORT, f"pub-{uuid.uuid4().hex[:8]}", protocol=protocol)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


def prefix() -> str:
    return f"bridge-test/{uuid.uuid4().hex[:12]}"


def full_message(n: int) -> Message:
    return Message(
        destination="ignored",
        payload=f"m{n}".encode(),
        headers={"trace": f"t{n}"},
        content_type="text/plain",
        text=True,
        correlation_id=f"c{n}".encode(),
        reply_to="replies/x",
        expiry=time.time() + 600,
        qos=1,
    )


# -- publishing --------------------------------------------------------------------


@VERSIONS
@pytest.mark.parametrize("qos", [1, 2])
async def test_publish_batch_is_confirmed_and_carries_the_fields(version: int, qos: int) -> None:
    upstream_reachable(HOST, PORT)
    base = prefix()
    link = RecordingLink()
    upstream = make(link, version=version, qos=qos, clean_start=True, session_expiry=0)
    async with subscriber(f"{base}/#") as sub, running(upstream):
        batch = [
            Outbound(tag=10 + n, message=full_message(n), target=f"{base}/o/{n}") for n in range(3)
        ]
        with trio.fail_after(5):
            await upstream.publish(batch)
            await link.wait_for(lambda: len(link.confirms) == 3)
        assert link.confirms == [10, 11, 12]
        assert link.refusals == []
        got = [await sub.get(5) for _ in range(3)]
    assert [m.topic for m in got] == [f"{base}/o/{n}" for n in range(3)]
    assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
    assert all(m.qos == qos for m in got)
    props = properties_dict(got[1].properties)
    if version == 4:
        assert "UserProperty" not in props
        return
    assert props["UserProperty"] == [("trace", "t1"), (ORIGIN_HEADER, "t")]
    assert props["ContentType"] == "text/plain"
    assert props["PayloadFormatIndicator"] == 1
    assert props["CorrelationData"] == b"c1"
    assert props["ResponseTopic"] == "replies/x"
    assert 590 <= props["MessageExpiryInterval"] <= 600


async def test_qos0_is_confirmed_once_written_and_a_bad_topic_is_refused() -> None:
    upstream_reachable(HOST, PORT)
    base = prefix()
    link = RecordingLink()
    upstream = make(link, qos=0, clean_start=True, session_expiry=0)
    async with subscriber(f"{base}/#") as sub, running(upstream):
        message = Message(destination="x", payload=b"zero", retain=True)
        batch = [
            Outbound(tag=1, message=message, target=f"{base}/a"),
            Outbound(tag=2, message=message, target=f"{base}/+"),
        ]
        with trio.fail_after(5):
            await upstream.publish(batch)
        assert link.confirms == [1]
        assert link.refusals[0][0] == 2
        got = await sub.get(5)
    assert (got.topic, got.payload, got.retain) == (f"{base}/a", b"zero", False)


# -- inbound -----------------------------------------------------------------------


async def pending_then(
    marker: str, version: int, client_id: str, rules: Sequence[tuple[str, int]]
) -> list[bytes]:
    """Resume the persistent session, publish a marker to ``marker`` and return the
    payloads received before it: what the session still had for the bridge."""
    link = RecordingLink(auto_settle=True)
    async with running(make(link, version=version, client_id=client_id, inbound=rules)):
        async with publisher(version) as pub:
            await pub.publish(marker, b"marker", 1)
        await link.wait_for(lambda: any(r.subject == marker for r in link.inbound), 5)
    payloads = [r.message.payload for r in link.inbound]
    return payloads[: payloads.index(b"marker")]


@VERSIONS
async def test_inbound_message_is_received_and_acked_once_settled(version: int) -> None:
    upstream_reachable(HOST, PORT)
    base = prefix()
    client_id = f"bridge-{uuid.uuid4().hex[:10]}"
    rules = [(f"{base}/a/#", 1), (f"{base}/b/#", 1)]
    link = RecordingLink()
    async with running(make(link, version=version, client_id=client_id, inbound=rules)):
        async with publisher(version) as pub:
            props = {"UserProperty": [("k", "v")], "ContentType": "app/x"} if version == 5 else None
            await pub.publish(f"{base}/b/1", b"hello", 1, properties=props)
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
        got = link.inbound[0]
        assert (got.rule, got.subject) == (1, f"{base}/b/1")
        assert got.message.payload == b"hello"
        assert got.message.qos == 1
        if version == 5:
            assert dict(got.message.headers) == {"k": "v"}
            assert got.message.content_type == "app/x"
        got.settle(True)
        got.settle(True)  # a second settle is ignored
    # Acknowledged: the persistent session has nothing to send again.
    assert await pending_then(f"{base}/a/marker", version, client_id, rules) == []
    await forget_session(client_id, version)


@VERSIONS
async def test_a_refused_inbound_message_comes_again_on_the_next_connection(version: int) -> None:
    upstream_reachable(HOST, PORT)
    base = prefix()
    client_id = f"bridge-{uuid.uuid4().hex[:10]}"
    rules = [(f"{base}/#", 1)]
    link = RecordingLink(auto_settle=False)
    async with running(make(link, version=version, client_id=client_id, inbound=rules)):
        async with publisher(version) as pub:
            await pub.publish(f"{base}/x", b"again", 1)
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
    link = RecordingLink(auto_settle=True)
    async with running(make(link, version=version, client_id=client_id, inbound=rules)):
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
        assert (link.inbound[0].subject, link.inbound[0].message.payload) == (f"{base}/x", b"again")
    # Accepted this time: gone for good.
    assert await pending_then(f"{base}/marker", version, client_id, rules) == []
    await forget_session(client_id, version)


async def test_inbound_qos2_is_delivered_once_and_completed() -> None:
    upstream_reachable(HOST, PORT)
    base = prefix()
    link = RecordingLink(auto_settle=True)
    upstream = make(link, inbound=[(f"{base}/#", 2)], clean_start=True, session_expiry=0)
    async with running(upstream), publisher(5) as pub:
        await pub.publish(f"{base}/q2", b"two", 2)
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
        assert link.inbound[0].message.qos == 2
        await trio.sleep(0.2)
        assert upstream._qos2_in == {}  # PUBREL came and was answered with PUBCOMP
    assert len(link.inbound) == 1


async def test_no_local_keeps_the_bridges_own_publishes_from_coming_back() -> None:
    upstream_reachable(HOST, PORT)
    base = prefix()
    link = RecordingLink(auto_settle=True)
    upstream = make(link, inbound=[(f"{base}/#", 1)], clean_start=True, session_expiry=0)
    async with subscriber(f"{base}/#") as sub, running(upstream):
        message = Message(destination="x", payload=b"mine")
        await upstream.publish([Outbound(tag=1, message=message, target=f"{base}/out")])
        await link.wait_for(lambda: link.confirms == [1], 5)
        assert (await sub.get(5)).payload == b"mine"  # it did reach the broker
        async with publisher(5) as pub:
            await pub.publish(f"{base}/marker", b"marker", 1)
        await link.wait_for(lambda: len(link.inbound) > 0, 5)
    assert [r.message.payload for r in link.inbound] == [b"marker"]


# -- protocol tests against a fake broker ---------------------------------------------


class FakeBroker:
    """One connection accepted on an ephemeral port, spoken through the server codec."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.port: int = listener.socket.getsockname()[1]
        self.codec = MQTTConnection(Role.SERVER)
        self.stream: trio.abc.Stream | None = None
        self.packets: list[mqtt.Packet] = []

    async def accept(self) -> None:
        self.stream = await self.listener.accept()

    async def expect(self, kind: type[Any]) -> Any:
        """The next packet from the client, which must be a ``kind``."""
        assert self.stream is not None
        while True:
            event = self.codec.next_event()
            if event is NEED_DATA:
                self.codec.receive_data(await self.stream.receive_some(65536))
                continue
            assert isinstance(event, kind), event
            return event

    async def send(self, *packets: mqtt.Packet) -> None:
        assert self.stream is not None
        await self.stream.send_all(b"".join(self.codec.send(p) for p in packets))


@asynccontextmanager
async def fake_broker() -> AsyncIterator[FakeBroker]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    broker = FakeBroker(listeners[0])
    try:
        yield broker
    finally:
        if broker.stream is not None:
            await broker.stream.aclose()
        await broker.listener.aclose()


async def connect_to(
    broker: FakeBroker, upstream: MqttUpstream, connack: mqtt.ConnAck, suback: int = 1
) -> tuple[mqtt.Connect, list[mqtt.Subscribe], BaseException | None]:
    """Run ``upstream.open()`` against ``broker`` answering ``connack``, and each
    SUBSCRIBE with ``suback``: what the upstream sent, and how its open ended."""
    failure: BaseException | None = None
    subscribes: list[mqtt.Subscribe] = []

    async def opener() -> None:
        nonlocal failure
        try:
            await upstream.open()
        except UpstreamError as exc:
            failure = exc

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(opener)
            await broker.accept()
            connect = await broker.expect(mqtt.Connect)
            await broker.send(connack)
            for _ in upstream.inbound if not connack.return_code else ():
                sub = await broker.expect(mqtt.Subscribe)
                subscribes.append(sub)
                await broker.send(mqtt.SubAck(packet_id=sub.packet_id, return_codes=(suback,)))
    return connect, subscribes, failure


@pytest.mark.parametrize(
    ("version", "code", "retry"),
    [(5, 0x86, False), (5, 0x87, False), (5, 0x89, True), (4, 4, False), (4, 3, True)],
)
async def test_a_refused_connack_is_an_upstream_error(version: int, code: int, retry: bool) -> None:
    async with fake_broker() as broker:
        upstream = make(
            RecordingLink(), url=f"mqtt://u:p%40ss@127.0.0.1:{broker.port}", version=version
        )
        connect, _, failure = await connect_to(broker, upstream, mqtt.ConnAck(return_code=code))
        await upstream.close()
    assert (connect.username, connect.password) == ("u", b"p@ss")
    assert connect.client_id == "gateway-bridge-t"
    assert connect.protocol_level == version
    assert not connect.clean_start
    if version == 5:
        assert connect.properties.session_expiry_interval == 3600
        assert connect.properties.receive_maximum == 100
    assert isinstance(failure, UpstreamError)
    assert (failure.code, failure.retry) == (code, retry)


async def test_a_refused_subscription_is_an_upstream_error() -> None:
    async with fake_broker() as broker:
        upstream = make(
            RecordingLink(), url=f"mqtt://127.0.0.1:{broker.port}", inbound=[("a/#", 1)]
        )
        _, [sub], failure = await connect_to(broker, upstream, mqtt.ConnAck(), suback=0x87)
        await upstream.close()
    assert sub.subscriptions == (("a/#", 1 | 0x04),)  # QoS 1, no local
    assert sub.properties.subscription_identifiers == (1,)
    assert isinstance(failure, UpstreamError)
    assert (failure.code, failure.retry) == (0x87, False)


async def test_the_servers_receive_maximum_holds_publishes_back() -> None:
    async with fake_broker() as broker:
        link = RecordingLink()
        upstream = make(link, url=f"mqtt://127.0.0.1:{broker.port}", qos=1)
        connack = mqtt.ConnAck(properties=mqtt.Properties(receive_maximum=2))
        await connect_to(broker, upstream, connack)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream.run)
                batch = [
                    Outbound(tag=n, message=Message(destination="x", payload=b"%d" % n), target="t")
                    for n in range(5)
                ]
                await upstream.publish(batch)
                first = [await broker.expect(mqtt.Publish) for _ in range(2)]
                await trio.sleep(0.1)
                assert broker.codec.next_event() is NEED_DATA  # nothing more sent yet
                assert len(upstream._held) == 3
                await broker.send(mqtt.PubAck(packet_id=first[0].packet_id))
                third = await broker.expect(mqtt.Publish)
                assert third.payload == b"2"
                assert third.packet_id not in {first[1].packet_id}
                # A refusal frees a slot as well.
                await broker.send(mqtt.PubAck(packet_id=first[1].packet_id, reason_code=0x97))
                fourth = await broker.expect(mqtt.Publish)
                await broker.send(
                    mqtt.PubAck(packet_id=third.packet_id), mqtt.PubAck(packet_id=fourth.packet_id)
                )
                fifth = await broker.expect(mqtt.Publish)
                await broker.send(mqtt.PubAck(packet_id=fifth.packet_id))
                await link.wait_for(lambda: len(link.confirms) == 4)
                nursery.cancel_scope.cancel()
        await upstream.close()
        await broker.expect(mqtt.Disconnect)
    assert link.confirms == [0, 2, 3, 4]
    assert link.refusals == [(1, "PUBACK 0x97 from the upstream broker")]
    assert [p.payload for p in (*first, third, fourth, fifth)] == [b"0", b"1", b"2", b"3", b"4"]
    assert first[0].properties.user_properties == ((ORIGIN_HEADER, "t"),)


async def test_qos2_outbound_and_inbound_flows() -> None:
    async with fake_broker() as broker:
        link = RecordingLink()
        upstream = make(link, url=f"mqtt://127.0.0.1:{broker.port}", qos=2, inbound=[("in/#", 2)])
        failure: list[BaseException] = []

        async def opener() -> None:
            await upstream.open()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(opener)
                await broker.accept()
                await broker.expect(mqtt.Connect)
                await broker.send(mqtt.ConnAck(session_present=True))
                sub = await broker.expect(mqtt.Subscribe)
                # A persistent session may deliver before the SUBACK.
                inbound = mqtt.Publish(
                    topic="in/a",
                    payload=b"early",
                    qos=2,
                    packet_id=7,
                    properties=mqtt.Properties(subscription_identifiers=(1,)),
                )
                await broker.send(inbound, mqtt.SubAck(packet_id=sub.packet_id, return_codes=(2,)))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream.run)
                assert len(link.inbound) == 1
                await broker.send(inbound)  # the same QoS 2 message again: not delivered twice
                await trio.sleep(0.1)
                assert len(link.inbound) == 1
                link.inbound[0].settle(True)
                assert (await broker.expect(mqtt.PubRec)).packet_id == 7
                await broker.send(mqtt.PubRel(packet_id=7))
                assert (await broker.expect(mqtt.PubComp)).packet_id == 7
                out = Outbound(tag=5, message=Message(destination="x", payload=b"o"), target="out")
                await upstream.publish([out])
                publish = await broker.expect(mqtt.Publish)
                assert publish.qos == 2
                await broker.send(mqtt.PubRec(packet_id=publish.packet_id))
                assert (await broker.expect(mqtt.PubRel)).packet_id == publish.packet_id
                assert link.confirms == []
                await broker.send(mqtt.PubComp(packet_id=publish.packet_id))
                await link.wait_for(lambda: link.confirms == [5])
                # PUBREC with an error code refuses it.
                await upstream.publish([Outbound(tag=6, message=out.message, target="out")])
                publish = await broker.expect(mqtt.Publish)
                await broker.send(mqtt.PubRec(packet_id=publish.packet_id, reason_code=0x87))
                await link.wait_for(lambda: link.refusals != [])
                nursery.cancel_scope.cancel()
        await upstream.close()
    assert failure == []
    assert link.inbound[0].rule == 0
    assert link.refusals == [(6, "PUBREC 0x87 from the upstream broker")]


async def test_unmatched_and_invalid_inbound_messages_are_acked_and_dropped() -> None:
    async with fake_broker() as broker:
        link = RecordingLink(auto_settle=True)
        upstream = make(link, url=f"mqtt://127.0.0.1:{broker.port}", inbound=[("in/#", 1)])
        await connect_to(broker, upstream, mqtt.ConnAck())
        text = mqtt.Properties(payload_format_indicator=1)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream.run)
                await broker.send(
                    # A subscription an earlier configuration left in the session.
                    mqtt.Publish(topic="old/x", payload=b"", qos=1, packet_id=1),
                    mqtt.Publish(
                        topic="in/x", payload=b"\xff", qos=1, packet_id=2, properties=text
                    ),
                    mqtt.Publish(topic="in/x", payload=b"ok", qos=1, packet_id=3, properties=text),
                )
                acks = [await broker.expect(mqtt.PubAck) for _ in range(3)]
                nursery.cancel_scope.cancel()
        await upstream.close()
    assert [(a.packet_id, a.reason_code) for a in acks] == [(1, 0), (2, 0x99), (3, 0)]
    assert [(r.rule, r.message.payload, r.message.text) for r in link.inbound] == [(0, b"ok", True)]


async def run_until_error(upstream: MqttUpstream, seconds: float) -> UpstreamError:
    with trio.fail_after(seconds):
        try:
            await upstream.run()
        except UpstreamError as exc:
            return exc
    raise AssertionError("run() returned")


async def test_a_server_disconnect_ends_run_with_its_reason_code() -> None:
    async with fake_broker() as broker:
        upstream = make(RecordingLink(), url=f"mqtt://127.0.0.1:{broker.port}")
        await connect_to(broker, upstream, mqtt.ConnAck())
        await broker.send(mqtt.Disconnect(reason_code=0x8E))
        error = await run_until_error(upstream, 5)
        await upstream.close()
    assert error.code == 0x8E


async def test_no_pingresp_within_the_keep_alive_ends_run() -> None:
    async with fake_broker() as broker:
        upstream = make(RecordingLink(), url=f"mqtt://127.0.0.1:{broker.port}", keep_alive=1)
        await connect_to(broker, upstream, mqtt.ConnAck())
        async with trio.open_nursery() as nursery:

            async def server() -> None:
                await broker.expect(mqtt.PingReq)
                await broker.send(mqtt.PingResp())  # the first is answered
                await broker.expect(mqtt.PingReq)  # the second is not

            nursery.start_soon(server)
            error = await run_until_error(upstream, 6)
        await upstream.close()
    assert "PINGRESP" in str(error)


async def test_withheld_messages_filling_the_window_end_the_connection() -> None:
    async with fake_broker() as broker:
        link = RecordingLink(auto_settle=False)
        upstream = make(
            link, url=f"mqtt://127.0.0.1:{broker.port}", receive_maximum=2, inbound=[("in/#", 1)]
        )
        await connect_to(broker, upstream, mqtt.ConnAck())
        await broker.send(
            *(mqtt.Publish(topic="in/x", payload=b"", qos=1, packet_id=n) for n in (1, 2))
        )
        error = await run_until_error(upstream, 5)
        await upstream.close()
    assert "refused by the core" in str(error)


def test_options_are_checked() -> None:
    config = BridgeConfig(name="t", kind="mqtt", url=URL, mqtt={"receive_maximum": 0})
    with pytest.raises(ValueError, match="receive_maximum"):
        config.options()
    with pytest.raises(ValueError, match="qos"):
        BridgeConfig(name="t", kind="mqtt", url=URL, mqtt={"qos": 3}).options()
    assert BridgeConfig(name="t", kind="mqtt", url=URL).options() == Options()
