"""The AMQP bridge's upstream against a real RabbitMQ (127.0.0.1:5672, guest/guest);
pika reads back and publishes from the other side."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import pika
import pytest
import trio
import trustme
from pamqp import commands
from pika.adapters.blocking_connection import BlockingChannel

from gateway.bridges import amqp_protocol as wire
from gateway.bridges.amqp import AmqpUpstream
from gateway.bridges.amqp_protocol import parse_source, parse_target
from gateway.bridges.base import ORIGIN_HEADER, InboundRule, Outbound, UpstreamError
from gateway.bridges.config import BridgeConfig, BridgeTLSConfig
from gateway.core.message import Message
from tests.bridges.conftest import RecordingLink
from tests.bridges.conftest import running as running_upstream
from tests.bridges.proxy import proxy_to
from tests.conftest import upstream_reachable

pytestmark = pytest.mark.upstream

HOST, PORT = "127.0.0.1", 5672
URL = f"amqp://guest:guest@{HOST}:{PORT}/"
T = TypeVar("T")


class Rabbit:
    """The other side: pika in a thread, and the names a test made, deleted after."""

    def __init__(self) -> None:
        self.uid = uuid.uuid4().hex[:10]
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, label: str = "q") -> str:
        name = f"test.{label}.{self.uid}"
        self.queues.append(name)
        return name

    def exchange(self, label: str = "x") -> str:
        name = f"test.{label}.{self.uid}"
        self.exchanges.append(name)
        return name

    def bridge(self) -> str:
        """A bridge name; its exchange-bound inbound queues are deleted after."""
        name = f"t{self.uid}"
        self.queues.extend(f"gateway.{name}.{i}" for i in range(3))
        return name

    async def call(self, work: Callable[[BlockingChannel], T]) -> T:
        def run() -> T:
            connection = pika.BlockingConnection(
                pika.ConnectionParameters(
                    HOST, PORT, credentials=pika.PlainCredentials("guest", "guest")
                )
            )
            try:
                return work(connection.channel())
            finally:
                connection.close()

        return await trio.to_thread.run_sync(run)

    async def declare_queue(self, name: str) -> None:
        await self.call(lambda ch: ch.queue_declare(name, durable=True))

    async def count(self, queue: str) -> int:
        result = await self.call(lambda ch: ch.queue_declare(queue, passive=True))
        count: int = result.method.message_count
        return count

    async def get_all(self, queue: str, expect: int) -> list[tuple[Any, bytes]]:
        """(properties, body) of ``expect`` messages taken from ``queue``."""

        def work(ch: BlockingChannel) -> list[tuple[Any, bytes]]:
            got: list[tuple[Any, bytes]] = []
            deadline = time.monotonic() + 3
            while len(got) < expect and time.monotonic() < deadline:
                method, properties, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    time.sleep(0.02)
                else:
                    got.append((properties, body))
            return got

        return await self.call(work)

    async def publish(
        self, exchange: str, key: str, body: bytes, properties: pika.BasicProperties | None = None
    ) -> None:
        await self.call(lambda ch: ch.basic_publish(exchange, key, body, properties=properties))

    async def cleanup(self) -> None:
        def work(ch: BlockingChannel) -> None:
            for queue in self.queues:
                ch.queue_delete(queue)
            for exchange in self.exchanges:
                ch.exchange_delete(exchange)

        if self.queues or self.exchanges:
            await self.call(work)


@pytest.fixture
async def rabbit() -> AsyncIterator[Rabbit]:
    rabbit = Rabbit()
    yield rabbit
    with trio.fail_after(5):
        await rabbit.cleanup()


def bridge(name: str = "t", url: str = URL, **amqp: Any) -> BridgeConfig:
    return BridgeConfig(name=name, kind="amqp", url=url, amqp=amqp)


def running(
    config: BridgeConfig, link: RecordingLink, inbound: Sequence[InboundRule] = ()
) -> AbstractAsyncContextManager[AmqpUpstream]:
    """An opened upstream with its run task; closed on the way out."""
    upstream = AmqpUpstream(config, config.options(), link, inbound)
    return running_upstream(upstream)


def test_targets_and_sources_parse() -> None:
    assert parse_target("exchange:ex/a.b") == ("ex", "a.b")
    assert parse_target("exchange:ex/") == ("ex", "")
    assert parse_target("exchange:ex") == ("ex", "")
    assert parse_target("queue:jobs") == ("", "jobs")
    assert parse_target("a.b") == ("amq.topic", "a.b")
    assert parse_source("queue:jobs") == (None, "jobs")
    assert parse_source("exchange:amq.topic/a.#") == ("amq.topic", "a.#")
    assert parse_source("exchange:ex") == ("ex", "#")
    with pytest.raises(ValueError, match="queue name"):
        parse_target("queue:")


async def test_publish_batch_is_confirmed_with_every_property_mapped(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    queue, key = rabbit.queue(), f"pub.{rabbit.uid}"
    config = bridge(
        queues=[{"name": queue, "arguments": {"x-max-length": 1000}}],
        bindings=[{"queue": queue, "exchange": "amq.topic", "routing_key": f"{key}.#"}],
    )
    now = time.time()
    full = Message(
        destination="a/b",
        payload=b"\x00full\xff",
        headers={"trace": "abc", "n": "1"},
        qos=1,
        priority=7,
        expiry=now + 60,
        content_type="application/octet-stream",
        correlation_id=b"corr-1",
        reply_to="$queue/replies",
        timestamp=now,
    )
    plain = Message(destination="a/c", payload=b"plain", reply_to="r/a")
    batch = [
        Outbound(10, full, f"queue:{queue}"),
        Outbound(11, plain, f"exchange:amq.topic/{key}.x"),
        Outbound(12, plain, f"{key}.bare"),
    ]
    link = RecordingLink()
    async with running(config, link) as upstream:
        await upstream.publish(batch)
        await link.wait_for(lambda: len(link.confirms) == 3, 5)
    # Confirms may come out of order (a persistent message waits for the disk).
    assert sorted(link.confirms) == [10, 11, 12]
    assert link.refusals == []

    got = await rabbit.get_all(queue, 3)
    assert [body for _, body in got] == [b"\x00full\xff", b"plain", b"plain"]
    first, second = got[0][0], got[1][0]
    assert first.headers == {"trace": "abc", "n": "1", ORIGIN_HEADER: "t"}
    assert first.content_type == "application/octet-stream"
    assert first.correlation_id == "corr-1"
    assert first.reply_to == "replies"
    assert 58_000 <= int(first.expiration) <= 60_000
    assert first.priority == 7
    assert first.delivery_mode == 2
    assert first.message_id == str(full.message_id)
    assert first.timestamp == int(now)
    assert second.headers == {ORIGIN_HEADER: "t"}
    assert second.reply_to == "r.a"
    assert second.delivery_mode == 1
    assert second.priority == 4
    assert second.expiration is None
    assert second.content_type is None


async def test_unroutable_mandatory_publish_is_refused_not_confirmed(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    queue = rabbit.queue()
    link = RecordingLink()
    async with running(bridge(queues=[{"name": queue}]), link) as upstream:
        message = Message(destination="x", payload=b"m")
        await upstream.publish(
            [
                Outbound(1, message, f"exchange:amq.topic/nobody.{rabbit.uid}"),
                Outbound(2, message, f"queue:{queue}"),
                Outbound(3, message, f"queue:missing.{rabbit.uid}"),
            ]
        )
        await link.wait_for(lambda: len(link.confirms) + len(link.refusals) == 3, 5)
    assert link.confirms == [2]
    assert [tag for tag, _ in link.refusals] == [1, 3]
    assert all(reason.startswith("unroutable: 312 NO_ROUTE") for _, reason in link.refusals)


async def test_publish_to_a_missing_exchange_is_refused_and_ends_the_connection(
    rabbit: Rabbit,
) -> None:
    upstream_reachable(HOST, PORT)
    link = RecordingLink()
    message = Message(destination="x", payload=b"m")
    with pytest.raises(UpstreamError) as caught:  # noqa: PT012 - the run task raises it
        async with running(bridge(), link) as upstream:
            await upstream.publish([Outbound(1, message, f"exchange:nowhere.{rabbit.uid}/k")])
            await trio.sleep(5)
    assert caught.value.code == 404
    assert [tag for tag, _ in link.refusals] == [1]
    assert "NOT_FOUND" in link.refusals[0][1]
    assert link.confirms == []


async def test_declarations_from_options(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    exchange, queue = rabbit.exchange(), rabbit.queue()
    config = bridge(
        exchanges=[{"name": exchange, "type": "direct", "durable": False, "auto_delete": False}],
        queues=[{"name": queue, "arguments": {"x-max-length": 5, "x-queue-mode": "default"}}],
        bindings=[{"queue": queue, "exchange": exchange, "routing_key": "k"}],
    )
    async with running(config, RecordingLink()):
        pass
    await rabbit.publish(exchange, "k", b"through the binding")
    assert [body for _, body in await rabbit.get_all(queue, 1)] == [b"through the binding"]


async def test_inbound_from_a_queue_maps_properties_and_acks(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    queue = rabbit.queue()
    await rabbit.declare_queue(queue)
    before = time.time()
    await rabbit.publish(
        "",
        queue,
        b"hello",
        pika.BasicProperties(
            headers={"trace": "abc", "n": 5},
            content_type="text/plain",
            correlation_id="c-9",
            reply_to="answers",
            expiration="30000",
            priority=12,
            delivery_mode=2,
            timestamp=1_700_000_000,
        ),
    )
    link = RecordingLink()
    async with running(bridge(), link, [InboundRule(0, f"queue:{queue}")]):
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
        received = link.inbound[0]
        received.settle(True)
        received.settle(True)  # a second settle is ignored, not a double ack
        await trio.sleep(0.2)
    assert received.rule == 0
    assert received.subject == queue
    message = received.message
    assert message.payload == b"hello"
    assert dict(message.headers) == {"trace": "abc", "n": "5"}
    assert message.content_type == "text/plain"
    assert message.correlation_id == b"c-9"
    assert message.reply_to == "answers"
    assert message.expiry is not None
    assert before + 25 < message.expiry < time.time() + 30.5
    assert message.priority == 9
    assert message.qos == 1
    assert message.timestamp == 1_700_000_000
    assert await rabbit.count(queue) == 0


async def test_inbound_from_an_exchange_binding_and_nack_requeues(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    name = rabbit.bridge()
    key = f"a{rabbit.uid}"
    link = RecordingLink()
    rules = [InboundRule(0, f"exchange:amq.topic/{key}.#")]
    async with running(bridge(name), link, rules):
        await rabbit.publish("amq.topic", f"{key}.b.c", b"first")
        await rabbit.publish("amq.topic", f"other{key}.b", b"not bound")
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
        first = link.inbound[0]
        assert (first.rule, first.subject, first.message.payload) == (0, f"{key}.b.c", b"first")
        assert first.message.qos == 0
        assert first.message.priority == 4
        first.settle(False)
        await link.wait_for(lambda: len(link.inbound) == 2, 5)
        assert link.inbound[1].message.payload == b"first"
    # Not acked: it waits in the durable queue for the next connection.
    assert await rabbit.count(f"gateway.{name}.0") == 1


async def test_wrong_password_is_final(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    config = bridge(url=f"amqp://guest:wrong-{rabbit.uid}@{HOST}:{PORT}/")
    upstream = AmqpUpstream(config, config.options(), RecordingLink(), ())
    with trio.fail_after(5), pytest.raises(UpstreamError) as caught:
        await upstream.open()
    await upstream.close()
    assert caught.value.retry is False
    assert caught.value.code == 403
    assert "ACCESS_REFUSED" in str(caught.value) or "password" in str(caught.value)


async def test_missing_vhost_is_reported(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    config = bridge(vhost=f"nowhere-{rabbit.uid}")
    upstream = AmqpUpstream(config, config.options(), RecordingLink(), ())
    with trio.fail_after(5), pytest.raises(UpstreamError) as caught:
        await upstream.open()
    await upstream.close()
    assert caught.value.retry is False
    assert caught.value.code == 530


async def test_a_body_over_frame_max_both_ways(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    queue, inbound_queue = rabbit.queue("out"), rabbit.queue("in")
    big = bytes(range(256)) * 1200  # 300 kB, more than two 128 kB frames
    link = RecordingLink(auto_settle=True)
    config = bridge(queues=[{"name": queue}, {"name": inbound_queue}])
    async with running(config, link, [InboundRule(0, f"queue:{inbound_queue}")]) as upstream:
        assert len(big) > upstream.frame_max
        await upstream.publish(
            [Outbound(1, Message(destination="x", payload=big), f"queue:{queue}")]
        )
        await rabbit.publish("", inbound_queue, big)
        await link.wait_for(lambda: link.confirms == [1] and len(link.inbound) == 1, 5)
    assert link.inbound[0].message.payload == big
    assert [body for _, body in await rabbit.get_all(queue, 1)] == [big]


async def test_heartbeat_is_negotiated_and_keeps_an_idle_connection(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    queue = rabbit.queue()
    async with running(bridge(heartbeat=600), RecordingLink()) as upstream:
        # The server proposes its own (RabbitMQ: 60 s); the smaller one wins.
        assert 0 < upstream.heartbeat < 600
    link = RecordingLink()
    async with running(bridge(heartbeat=1, queues=[{"name": queue}]), link) as upstream:
        assert upstream.heartbeat == 1
        # Longer than two heartbeat intervals: without heartbeats either side hangs up.
        await trio.sleep(2.5)
        await upstream.publish(
            [Outbound(1, Message(destination="x", payload=b"alive"), f"queue:{queue}")]
        )
        await link.wait_for(lambda: link.confirms == [1], 3)


async def test_a_message_with_undecodable_properties_is_rejected_not_fatal(
    rabbit: Rabbit,
) -> None:
    upstream_reachable(HOST, PORT)
    queue = rabbit.queue()
    await rabbit.declare_queue(queue)
    # A correlation id that is not UTF-8: pamqp cannot decode the content header.
    await rabbit.publish("", queue, b"bad", pika.BasicProperties(correlation_id=b"\xff\xfe"))
    await rabbit.publish("", queue, b"good")
    link = RecordingLink(auto_settle=True)
    async with running(bridge(), link, [InboundRule(0, f"queue:{queue}")]):
        await link.wait_for(lambda: len(link.inbound) == 1, 5)
        await trio.sleep(0.1)
    assert [r.message.payload for r in link.inbound] == [b"good"]
    assert await rabbit.count(queue) == 0


async def test_a_consumed_queue_deleted_upstream_ends_the_connection(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    queue = rabbit.queue()
    await rabbit.declare_queue(queue)
    with pytest.raises(UpstreamError, match="cancelled consumer"):  # noqa: PT012
        async with running(bridge(), RecordingLink(), [InboundRule(0, f"queue:{queue}")]):
            await rabbit.call(lambda ch: ch.queue_delete(queue))
            await trio.sleep(5)


async def test_consuming_a_missing_queue_is_reported(rabbit: Rabbit) -> None:
    upstream_reachable(HOST, PORT)
    config = bridge()
    rules = [InboundRule(0, f"queue:missing.{rabbit.uid}")]
    upstream = AmqpUpstream(config, config.options(), RecordingLink(), rules)
    with trio.fail_after(5), pytest.raises(UpstreamError) as caught:
        await upstream.open()
    await upstream.close()
    assert caught.value.code == 404
    assert caught.value.retry is True


def test_decoder_joins_content_frames_fed_byte_at_a_time() -> None:
    properties = commands.Basic.Properties(content_type="text/plain", headers={"a": "b"})
    deliver = commands.Basic.Deliver(
        consumer_tag="c", delivery_tag=7, exchange="amq.topic", routing_key="a.b"
    )
    payload = bytes(range(256)) * 4
    data = (
        wire.method(1, commands.Basic.Ack(delivery_tag=3, multiple=True))
        + wire.content(1, deliver, properties, payload, frame_max=100)
        + wire.heartbeat_frame()
    )
    whole = wire.Decoder()
    whole.receive_data(data)
    expected = []
    while not isinstance(event := whole.next_event(), type(wire.NEED_DATA)):
        expected.append(event)
    single = wire.Decoder()
    got = []
    for i in range(len(data)):
        single.receive_data(data[i : i + 1])
        while not isinstance(event := single.next_event(), type(wire.NEED_DATA)):
            got.append(event)
    assert [type(e) for e in expected] == [wire.MethodFrame, wire.Content, wire.Heartbeat]
    assert [type(e) for e in got] == [type(e) for e in expected]
    content = got[1]
    assert isinstance(content, wire.Content)
    assert content.body == payload
    assert content.properties.content_type == "text/plain"
    assert content.method.routing_key == "a.b"
    single.receive_data(b"")
    assert isinstance(single.next_event(), wire.Eof)


def test_decoder_refuses_a_frame_over_frame_max() -> None:
    deliver = commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, routing_key="k")
    decoder = wire.Decoder(frame_max=4096)
    decoder.receive_data(wire.content(1, deliver, commands.Basic.Properties(), b"x" * 9000, 10_000))
    with pytest.raises(wire.AmqpProtocolError, match="frame_max"):
        decoder.next_event()


def test_confirms_settle_in_any_order_and_returns_refuse_the_right_publish() -> None:
    confirms = wire.Confirms()
    for tag, key in ((10, "a"), (11, "b"), (12, "a"), (13, "a")):
        confirms.sent(tag, "amq.topic", key, mandatory=True)
    # Two returns for key "a" (publishes 1 and 3), then acks out of order.
    assert confirms.returned("amq.topic", "a", "312 NO_ROUTE")
    assert confirms.returned("amq.topic", "a", "312 NO_ROUTE")
    assert confirms.acked(2, multiple=False) == [(11, None)]
    assert confirms.acked(3, multiple=True) == [
        (10, "unroutable: 312 NO_ROUTE"),
        (12, "unroutable: 312 NO_ROUTE"),
    ]
    assert confirms.nacked(4, multiple=False) == [(13, "nacked by the upstream")]
    assert len(confirms) == 0
    assert not confirms.returned("amq.topic", "a", "312 NO_ROUTE")
    confirms.sent(14, "gone", "k", mandatory=False)
    assert confirms.missing_exchange("NOT_FOUND - no exchange 'gone' in vhost '/'") == [
        (14, "404 NOT_FOUND - no exchange 'gone' in vhost '/'")
    ]


async def test_a_bad_url_is_reported_by_open() -> None:
    config = bridge(url="http://127.0.0.1/")
    upstream = AmqpUpstream(config, config.options(), RecordingLink(), ())
    with pytest.raises(UpstreamError, match="bad AMQP URL") as caught:
        await upstream.open()
    assert caught.value.retry is False
    await upstream.close()


async def test_a_silent_server_is_detected_and_heartbeats_are_sent() -> None:
    """A fake server that completes the handshake (heartbeat 1 s), then never speaks."""
    heard: list[str] = []

    async def silent_server(stream: trio.SocketStream) -> None:
        decoder = wire.Decoder()
        header = b""
        while len(header) < 8:
            header += await stream.receive_some(8 - len(header))
        replies: dict[type, bytes] = {
            commands.Connection.StartOk: wire.method(0, commands.Connection.Tune(2047, 131072, 1)),
            commands.Connection.Open: wire.method(0, commands.Connection.OpenOk()),
            commands.Channel.Open: wire.method(1, commands.Channel.OpenOk()),
            commands.Confirm.Select: wire.method(1, commands.Confirm.SelectOk()),
        }
        await stream.send_all(wire.method(0, commands.Connection.Start(mechanisms="PLAIN")))
        while data := await stream.receive_some(65536):
            decoder.receive_data(data)
            while not isinstance(event := decoder.next_event(), type(wire.NEED_DATA)):
                if isinstance(event, wire.Heartbeat):
                    heard.append("heartbeat")
                elif isinstance(event, wire.MethodFrame) and type(event.method) in replies:
                    await stream.send_all(replies[type(event.method)])

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, silent_server, listeners)
        config = bridge(url=f"amqp://guest:guest@127.0.0.1:{port}/", heartbeat=5)
        upstream = AmqpUpstream(config, config.options(), RecordingLink(), ())
        with trio.fail_after(5):
            await upstream.open()
            assert upstream.heartbeat == 1  # the server's 1 s is smaller than our 5 s
            started = trio.current_time()
            with pytest.raises(UpstreamError, match="nothing heard"):
                await upstream.run()
        assert 1.9 < trio.current_time() - started < 3
        assert len(heard) >= 3  # one every half interval while we had nothing to say
        with trio.move_on_after(0.1):
            await upstream.close()
        nursery.cancel_scope.cancel()


async def test_amqps_through_a_tls_terminating_proxy(
    rabbit: Rabbit, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """amqps:// with the bridge's own CA (tls.ca), against the real RabbitMQ behind a TLS
    proxy of the tests' own (RabbitMQ has no TLS listener here); a server whose
    certificate the bridge's CA did not sign is refused."""
    upstream_reachable(HOST, PORT)
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    queue = rabbit.queue("tls")
    async with proxy_to(nursery, PORT, tls=server) as proxy:
        url = f"amqps://guest:guest@127.0.0.1:{proxy.port}/"
        config = BridgeConfig(
            name="t",
            kind="amqp",
            url=url,
            tls=BridgeTLSConfig(ca=str(ca_file)),
            amqp={"queues": [{"name": queue}]},
        )
        link = RecordingLink()
        async with running(config, link) as upstream:
            await upstream.publish(
                [Outbound(1, Message(destination="a", payload=b"over TLS"), f"queue:{queue}")]
            )
            await link.wait_for(lambda: link.confirms == [1], 5)
        # The system's CAs do not know this one: the handshake fails, clearly.
        stranger = AmqpUpstream(bridge(url=url), bridge().options(), RecordingLink(), ())
        with pytest.raises(UpstreamError, match="TLS handshake"):
            await stranger.open()
    assert [body for _, body in await rabbit.get_all(queue, 1)] == [b"over TLS"]
