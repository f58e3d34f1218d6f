"""STOMP 1.0/1.1/1.2 end to end against the gateway: stomp.py clients (tests/stomp_client.py),
and a raw socket client for malformed input.

Synchronisation is by receipts and barrier messages: a frame's RECEIPT means the gateway has
processed it, and a barrier message sent after the messages under test proves, when it
arrives, that nothing sent before it is still on its way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import FAST_HEARTBEAT, NET_TIMEOUT, listener_port
from tests.stomp_client import VERSIONS, RawStomp, Received, Stomp, StompFailure

V11_UP = ("1.1", "1.2")
MakeClient = Callable[..., Awaitable[Stomp]]


@pytest.fixture
async def stomp(stomp_gateway: Gateway) -> AsyncIterator[MakeClient]:
    """``await stomp(version, **options)``: a connected stomp.py client, closed at teardown.

    ``listener="stomp-fast"`` connects to the listener with the short heart-beat period;
    ``connect=False`` returns it unconnected.
    """
    made: list[Stomp] = []

    async def make(
        version: str = "1.2",
        *,
        listener: str = "stomp",
        connect: bool = True,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> Stomp:
        client = Stomp(listener_port(stomp_gateway, listener), version, **options)
        made.append(client)
        if connect:
            await client.connect(headers=headers)
        return client

    yield make
    with trio.fail_after(NET_TIMEOUT):
        for client in made:
            await client.close()


def bodies(messages: list[Received]) -> list[str]:
    return [m.text for m in messages]


def ack_mode(version: str) -> str:
    """The per-message ack mode of ``version`` (1.0 has only the cumulative one)."""
    return "client" if version == "1.0" else "client-individual"


async def collect(clients: list[Stomp], total: int) -> list[list[Received]]:
    """What each client received, once ``total`` messages have arrived between them."""
    got: list[list[Received]] = [[] for _ in clients]
    while sum(len(g) for g in got) < total:
        for mine, client in zip(got, clients, strict=True):
            mine.extend(client.pending())
        await trio.sleep(0.01)
    return got


# -- connecting -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_connected_headers(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        beats = (0, 0) if version == "1.0" else (1000, 2000)
        first = await stomp(version, heartbeats=beats)
        second = await stomp(version)
        for client in (first, second):
            frame = client.connected_frame
            assert frame is not None
            assert frame.command == "CONNECTED"
            assert frame.get("version") == version
            server = frame.get("server", "")
            assert server.startswith("gateway/"), server
            assert frame.get("session")
        assert first.connected_headers.get("session") != second.connected_headers.get("session")
        if version == "1.0":
            # STOMP 1.0 has no heart-beating: no header, or one that turns it off.
            assert first.connected_headers.get("heart-beat", "0,0") == "0,0"
        else:
            # The listener's period is 10 s: the larger of it and the client's figures.
            assert first.connected_headers.get("heart-beat") == "10000,10000"
            assert second.connected_headers.get("heart-beat") == "0,0"


@pytest.mark.parametrize("version", V11_UP)
async def test_heart_beat_negotiation_on_a_fast_listener(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        # The client can send every 100 ms and wants beats every 300 ms; the listener's
        # period is 200 ms. Server sends max(200, 300); it wants max(200, 100).
        client = await stomp(version, listener="stomp-fast", heartbeats=(100, 300))
        assert client.connected_headers.get("heart-beat") == "300,200"


async def test_unsupported_version_is_refused(stomp_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        raw = await RawStomp.open(stomp_gateway.port("stomp"))
        try:
            answer = await raw.connect("2.0")
            assert answer.command == "ERROR"
            assert answer.get("version") == "1.0,1.1,1.2"
            assert answer.get("message")
            assert await raw.closed()
        finally:
            await raw.aclose()


# -- queues ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_competing_consumers_share_a_queue(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        consumers = [await stomp(version), await stomp(version)]
        for consumer in consumers:
            await consumer.subscribe("/queue/x", id="work")
        producer = await stomp(version)
        sent = [f"job-{i}" for i in range(20)]
        for body in sent:
            await producer.send("/queue/x", body)
        first, second = await collect(consumers, len(sent))
        assert set(bodies(first)).isdisjoint(bodies(second))
        assert sorted(bodies(first) + bodies(second)) == sorted(sent)
        assert first, "the second consumer got every message"
        assert second, "the first consumer got every message"
        # Each consumer sees its share in the order it was sent.
        for mine in (first, second):
            assert bodies(mine) == [b for b in sent if b in bodies(mine)]


@pytest.mark.parametrize("version", VERSIONS)
async def test_messages_waiting_in_a_queue_reach_a_later_subscriber(
    stomp: MakeClient, version: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        producer = await stomp(version)
        await producer.send("/queue/backlog", "waiting-1")
        await producer.send("/queue/backlog", "waiting-2")
        consumer = await stomp(version)
        await consumer.subscribe("/queue/backlog", id="late")
        await producer.send("/queue/backlog", "barrier")
        assert bodies(await consumer.get_many(3)) == ["waiting-1", "waiting-2", "barrier"]


@pytest.mark.parametrize("version", V11_UP)
async def test_nack_redelivers_then_dead_letters(stomp: MakeClient, version: str) -> None:
    # Queue "x" is configured with max_deliveries = 3, dead_letter = "x.dlq".
    with trio.fail_after(NET_TIMEOUT):
        consumer = await stomp(version)
        await consumer.subscribe("/queue/x", id="x", ack="client-individual")
        dead = await stomp(version)
        await dead.subscribe("/queue/x.dlq", id="dlq")
        producer = await stomp(version)
        await producer.send("/queue/x", "poison", {"x-trace": "t-1"})
        seen = []
        for _ in range(3):
            message = await consumer.get()
            seen.append((message.text, message.get("redelivered"), message.get("x-delivery-count")))
            await consumer.nack(message)
        assert seen == [
            ("poison", "false", "1"),
            ("poison", "true", "2"),
            ("poison", "true", "3"),
        ]
        letter = await dead.get()
        assert letter.text == "poison"
        assert letter.get("destination") == "/queue/x.dlq"
        assert letter.get("x-death-reason") == "max-deliveries"
        assert letter.get("x-death-queue") == "x"
        assert letter.get("x-trace") == "t-1"
        # Nothing more comes from x: the next message there is the barrier.
        await producer.send("/queue/x", "barrier")
        barrier = await consumer.get()
        assert (barrier.text, barrier.get("redelivered")) == ("barrier", "false")


async def _ack_then_leave(stomp: MakeClient, version: str, mode: str) -> list[tuple[str, str]]:
    """Three messages to a ``mode`` subscriber that acks only the second and leaves; what a
    second consumer, already waiting, then receives (body, redelivered), up to a barrier."""
    first = await stomp(version)
    await first.subscribe("/queue/acks", id="acks", ack=mode)
    producer = await stomp(version)
    for body in ("m1", "m2", "m3"):
        await producer.send("/queue/acks", body)
    got = await first.get_many(3)
    assert bodies(got) == ["m1", "m2", "m3"]
    # Attached while the queue is empty: every message is in flight with the first consumer.
    second = await stomp(version)
    await second.subscribe("/queue/acks", id="acks")
    await first.ack(got[1])
    await first.disconnect()
    await producer.send("/queue/acks", "barrier")
    out = []
    while not out or out[-1][0] != "barrier":
        message = await second.get()
        out.append((message.text, message.get("redelivered", "")))
    return out


@pytest.mark.parametrize("version", VERSIONS)
async def test_client_ack_is_cumulative(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        # Acking m2 in client mode acknowledges m1 too; only m3 comes back.
        assert await _ack_then_leave(stomp, version, "client") == [
            ("m3", "true"),
            ("barrier", "false"),
        ]


@pytest.mark.parametrize("version", V11_UP)
async def test_client_individual_ack_is_one_message(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        assert await _ack_then_leave(stomp, version, "client-individual") == [
            ("m1", "true"),
            ("m3", "true"),
            ("barrier", "false"),
        ]


@pytest.mark.parametrize("version", V11_UP)
async def test_prefetch_count_window(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        consumer = await stomp(version)
        await consumer.subscribe(
            "/queue/pf", id="pf", ack="client-individual", headers={"prefetch-count": "1"}
        )
        await consumer.subscribe("/queue/pf-barrier", id="barrier")
        producer = await stomp(version)
        await producer.send("/queue/pf", "one")
        await producer.send("/queue/pf", "two")
        await producer.send("/queue/pf-barrier", "barrier")
        first = await consumer.get()
        assert first.text == "one"
        assert (await consumer.get()).text == "barrier"
        assert consumer.pending() == [], "a second message came before the first was acked"
        await consumer.ack(first)
        second = await consumer.get()
        assert second.text == "two"
        await consumer.ack(second)


async def test_selector_filters_messages(stomp: MakeClient) -> None:
    with trio.fail_after(NET_TIMEOUT):
        consumer = await stomp()
        await consumer.subscribe("/queue/sel", id="sel", headers={"selector": "colour = 'red'"})
        producer = await stomp()
        await producer.send("/queue/sel", "red-1", {"colour": "red"})
        await producer.send("/queue/sel", "blue-1", {"colour": "blue"})
        await producer.send("/queue/sel", "red-2", {"colour": "red"})
        assert bodies(await consumer.get_many(2)) == ["red-1", "red-2"]


# -- transactions -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_transaction_sends_arrive_at_commit_and_abort_discards(
    stomp: MakeClient, version: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        consumer = await stomp(version)
        await consumer.subscribe("/queue/tx", id="tx")
        producer = await stomp(version)
        await producer.begin("t1")
        await producer.send("/queue/tx", "in-t1-a", transaction="t1")
        await producer.send("/queue/tx", "in-t1-b", transaction="t1")
        await producer.send("/queue/tx", "outside")
        # The message sent outside the transaction overtakes the ones inside it.
        assert (await consumer.get()).text == "outside"
        assert consumer.pending() == []
        await producer.commit("t1")
        assert bodies(await consumer.get_many(2)) == ["in-t1-a", "in-t1-b"]
        await producer.begin("t2")
        await producer.send("/queue/tx", "in-t2", transaction="t2")
        await producer.abort("t2")
        await producer.send("/queue/tx", "barrier")
        assert (await consumer.get()).text == "barrier"
        assert consumer.pending() == []


@pytest.mark.parametrize("version", VERSIONS)
async def test_ack_in_a_transaction_applies_at_commit(stomp: MakeClient, version: str) -> None:
    mode = ack_mode(version)
    with trio.fail_after(NET_TIMEOUT):
        producer = await stomp(version)
        first = await stomp(version)
        await first.subscribe("/queue/txack", id="q", ack=mode)
        await producer.send("/queue/txack", "m1")
        message = await first.get()
        # An ACK in an aborted transaction never happened: m1 is redelivered when first leaves.
        await first.begin("t1")
        await first.ack(message, transaction="t1")
        await first.abort("t1")
        second = await stomp(version)
        await second.subscribe("/queue/txack", id="q", ack=mode)
        await first.disconnect()
        again = await second.get()
        assert (again.text, again.get("redelivered")) == ("m1", "true")
        # An ACK in a committed transaction holds: m1 does not come back when second leaves.
        await second.begin("t2")
        await second.ack(again, transaction="t2")
        await second.commit("t2")
        third = await stomp(version)
        await third.subscribe("/queue/txack", id="q")
        await second.disconnect()
        await producer.send("/queue/txack", "barrier")
        assert (await third.get()).text == "barrier"
        assert third.pending() == []


# -- receipts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_receipts_for_send_subscribe_and_disconnect(
    stomp: MakeClient, stomp_gateway: Gateway, version: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await stomp(version)
        receipt = await client.subscribe("/queue/rcpt", id="r")
        assert receipt is not None
        assert receipt.command == "RECEIPT"
        receipt = await client.send("/queue/rcpt", "hello")
        assert receipt is not None
        assert receipt.command == "RECEIPT"
        assert (await client.get()).text == "hello"
        receipt = await client.disconnect()
        assert receipt is not None
        assert receipt.command == "RECEIPT"
        # On the wire: the RECEIPT for DISCONNECT carries its id, then the server closes.
        raw = await RawStomp.open(stomp_gateway.port("stomp"))
        try:
            assert (await raw.connect(version)).command == "CONNECTED"
            await raw.send(b"DISCONNECT\nreceipt:bye-77\n\n\x00")
            frame = await raw.frame()
            assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", "bye-77")
            assert await raw.closed()
        finally:
            await raw.aclose()


# -- heart-beats ------------------------------------------------------------------------------


async def test_silent_client_is_closed_after_heart_beat_timeout(stomp_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        raw = await RawStomp.open(listener_port(stomp_gateway, "stomp-fast"))
        try:
            # The client promises a beat every 100 ms; the listener wants one every 200 ms.
            answer = await raw.connect("1.2", heart_beat="100,0")
            assert answer.command == "CONNECTED"
            assert answer.get("heart-beat") == "0,200"
            started = time.monotonic()
            error = await raw.frame()
            assert error.command == "ERROR"
            assert error.get("message")
            assert "heart-beat" in (error.get("message", "") + error.body.decode())
            assert await raw.closed()
            elapsed = time.monotonic() - started
            assert FAST_HEARTBEAT <= elapsed < 10 * FAST_HEARTBEAT, elapsed
        finally:
            await raw.aclose()


@pytest.mark.parametrize("version", V11_UP)
async def test_heart_beating_client_stays_connected(stomp: MakeClient, version: str) -> None:
    # stomp.py allows the server 1.5 periods of silence (its default heart_beat_receive_scale)
    # before it calls the connection dead; the spec allows none ("at least every n ms").
    with trio.fail_after(NET_TIMEOUT):
        period = int(FAST_HEARTBEAT * 1000)
        client = await stomp(version, listener="stomp-fast", heartbeats=(period, period))
        assert client.connected_headers.get("heart-beat") == f"{period},{period}"
        await client.subscribe("/queue/hb", id="hb")
        # Traffic both ways between heart-beats, over five periods and more.
        try:
            for i in range(5):
                await client.wait_heartbeats(client.heartbeats_received + 1)
                await client.send("/queue/hb", f"between-beats-{i}")
                assert (await client.get()).text == f"between-beats-{i}"
        except StompFailure:
            pytest.fail(
                f"connection lost after {client.heartbeats_received} server heart-beats; "
                f"stomp.py heart-beat timeouts: {client.heartbeat_timeouts} (it allows 1.5 "
                f"periods of silence, {1.5 * FAST_HEARTBEAT:.2f} s)"
            )
        assert client.is_connected()
        assert client.heartbeat_timeouts == 0
        assert client.errors.empty()


# -- temporary queues ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_temp_queue_request_reply(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        responder = await stomp(version)
        await responder.subscribe("/queue/service", id="svc")
        requester = await stomp(version)
        await requester.subscribe("/temp-queue/r", id="replies")
        await requester.send(
            "/queue/service", "ping", {"reply-to": "/temp-queue/r", "correlation-id": "c-1"}
        )
        request = await responder.get()
        reply_to = request.get("reply-to")
        assert reply_to is not None
        assert reply_to != "/temp-queue/r", "the reply-to must name a queue others can reach"
        await responder.send(reply_to, "pong", {"correlation-id": request.get("correlation-id")})
        reply = await requester.get()
        assert (reply.text, reply.get("correlation-id")) == ("pong", "c-1")
        assert reply.get("subscription") == "replies"


@pytest.mark.parametrize("version", VERSIONS)
async def test_temp_queue_reply_reaches_requester_without_subscribe(
    stomp: MakeClient, version: str
) -> None:
    # RabbitMQ's temp-queue semantics: a SEND with reply-to:/temp-queue/NAME subscribes the
    # sender to that temporary queue; replies come with subscription:/temp-queue/NAME.
    with trio.fail_after(NET_TIMEOUT):
        responder = await stomp(version)
        await responder.subscribe("/queue/service", id="svc")
        requester = await stomp(version)
        await requester.send("/queue/service", "ping", {"reply-to": "/temp-queue/r"})
        request = await responder.get()
        await responder.send(request.get("reply-to", ""), "pong")
        reply = await requester.get(within=3)
        assert reply.text == "pong"
        assert reply.get("subscription") == "/temp-queue/r"


# -- topics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_topic_wildcards(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        star = await stomp(version)
        await star.subscribe("/topic/a.*", id="star")
        hash_ = await stomp(version)
        await hash_.subscribe("/topic/a.#", id="hash")
        producer = await stomp(version)
        for topic in ("a.b", "a.b.c", "a", "b.c", "a.end"):
            await producer.send(f"/topic/{topic}", topic)
        got_star = await star.get_many(2)
        assert bodies(got_star) == ["a.b", "a.end"]
        assert got_star[0].get("destination") == "/topic/a.b"
        got_hash = await hash_.get_many(4)
        assert bodies(got_hash) == ["a.b", "a.b.c", "a", "a.end"]
        assert got_hash[1].get("destination") == "/topic/a.b.c"
        assert star.pending() == []
        assert hash_.pending() == []


async def _durable_round(
    stomp: MakeClient,
    version: str,
    subscribe_headers: dict[str, str],
    connect_headers: dict[str, str],
) -> list[str]:
    topic = "/topic/news.sport"
    producer = await stomp(version)
    subscriber = await stomp(version, headers=connect_headers)
    await subscriber.subscribe(topic, id="news", headers=subscribe_headers)
    await producer.send(topic, "while-connected")
    assert (await subscriber.get()).text == "while-connected"
    await subscriber.disconnect()
    await producer.send(topic, "while-away-1")
    await producer.send(topic, "while-away-2")
    back = await stomp(version, headers=connect_headers)
    await back.subscribe(topic, id="news", headers=subscribe_headers)
    await producer.send(topic, "barrier")
    got = []
    while not got or got[-1] != "barrier":
        got.append((await back.get()).text)
    return got


@pytest.mark.parametrize("version", VERSIONS)
async def test_durable_subscription_rabbitmq_headers(stomp: MakeClient, version: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        got = await _durable_round(stomp, version, {"durable": "true", "auto-delete": "false"}, {})
        assert got == ["while-away-1", "while-away-2", "barrier"]


@pytest.mark.parametrize("client_id_on", ["CONNECT", "SUBSCRIBE"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_durable_subscription_activemq_headers(
    stomp: MakeClient, version: str, client_id_on: str
) -> None:
    # ActiveMQ 5 documents client-id on the CONNECT frame; Artemis also takes it on SUBSCRIBE.
    # The subscription name is activemq.subscriptionName on the SUBSCRIBE.
    subscribe = {"activemq.subscriptionName": "sport"}
    connect = {}
    (connect if client_id_on == "CONNECT" else subscribe)["client-id"] = "reader-1"
    with trio.fail_after(NET_TIMEOUT):
        got = await _durable_round(stomp, version, subscribe, connect)
        assert got == ["while-away-1", "while-away-2", "barrier"]


# -- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_jms_headers_end_to_end(stomp: MakeClient, version: str) -> None:
    expires = str(int(time.time() * 1000) + 600_000)
    custom = {"x-tenant": "acme", "x-number": "42", "x-colon": "a:b"}
    if version != "1.0":
        # Escaped on the wire from 1.1 on.
        custom |= {"x-backslash": "c\\d", "x-newline": "line1\nline2"}
    with trio.fail_after(NET_TIMEOUT):
        consumer = await stomp(version)
        await consumer.subscribe("/queue/jms", id="jms")
        producer = await stomp(version)
        await producer.send(
            "/queue/jms",
            "hello",
            {
                "persistent": "true",
                "priority": "7",
                "expires": expires,
                "correlation-id": "corr-42",
                "reply-to": "/queue/replies",
                "content-type": "text/plain;charset=utf-8",
                **custom,
            },
        )
        message = await consumer.get()
        assert message.text == "hello"
        assert message.get("destination") == "/queue/jms"
        assert message.get("persistent") == "true"
        assert message.get("priority") == "7"
        assert message.get("expires") == expires
        assert message.get("correlation-id") == "corr-42"
        assert message.get("reply-to") == "/queue/replies"
        assert message.get("content-type") == "text/plain;charset=utf-8"
        assert message.get("content-length") == "5"
        for name, value in custom.items():
            assert message.get(name) == value, name


async def test_unknown_destination_prefix_gets_an_error(stomp: MakeClient) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await stomp()
        with pytest.raises(StompFailure) as failure:
            await client.send("/exchange/amq.topic/x", "hi")
        error = failure.value.error
        assert error is not None
        assert error.get("message")
        text = error.get("message", "") + error.text
        for prefix in ("/queue/", "/topic/", "/temp-queue/"):
            assert prefix in text, text
        assert await client.wait_disconnected()


# -- malformed input ------------------------------------------------------------------------------


MALFORMED = {
    "bad-escape-1.2": b"SEND\ndestination:/queue/bad\nx-header:bad\\qescape\n\nbody\x00",
    "oversized-header-line": b"SEND\ndestination:/queue/bad\nx-big:" + b"a" * 20_000 + b"\n\n\x00",
    "content-length-without-nul": b"SEND\ndestination:/queue/bad\ncontent-length:3\n\nabcdef\x00",
    "unknown-command": b"FROBNICATE\ndestination:/queue/bad\n\n\x00",
}


@pytest.fixture
async def bystander(stomp: MakeClient) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """``await bystander(tag)``: a stomp.py client on the same gateway sends itself a message
    and receives it."""
    client = await stomp()
    await client.subscribe("/queue/bystander", id="b")

    async def round_trip(tag: str) -> None:
        await client.send("/queue/bystander", tag)
        assert (await client.get()).text == tag

    yield round_trip
    assert client.errors.empty()


async def _refused(raw: RawStomp) -> None:
    """The next frame is an ERROR with a message header, and then the server closes."""
    error = await raw.frame()
    assert error.command == "ERROR", error
    assert error.get("message"), error
    assert await raw.closed()


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_frame_is_refused(
    stomp_gateway: Gateway, bystander: Callable[[str], Awaitable[None]], name: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await bystander("before")
        raw = await RawStomp.open(stomp_gateway.port("stomp"))
        try:
            assert (await raw.connect("1.2")).command == "CONNECTED"
            await raw.send(MALFORMED[name])
            await _refused(raw)
        finally:
            await raw.aclose()
        await bystander("after")


async def test_frame_before_connect_is_refused(
    stomp_gateway: Gateway, bystander: Callable[[str], Awaitable[None]]
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await bystander("before")
        raw = await RawStomp.open(stomp_gateway.port("stomp"))
        try:
            await raw.send(b"SEND\ndestination:/queue/bystander\n\nsneaky\x00")
            await _refused(raw)
        finally:
            await raw.aclose()
        # "after" is the bystander's next message: the sneaky SEND was not routed.
        await bystander("after")
