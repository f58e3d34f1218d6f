"""NatsUpstream against the real NATS server (with JetStream) at 127.0.0.1:4222, read
back and fed with nats-py (asyncio, run in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pathlib
import re
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import nats
import pytest
import trio
import trustme
from nats.aio.client import Client as NatsClient

from gateway.bridges.base import ORIGIN_HEADER, InboundRule, Outbound, UpstreamError
from gateway.bridges.config import BridgeConfig, BridgeTLSConfig
from gateway.bridges.nats import NatsUpstream, Options
from gateway.core.message import Message
from tests.bridges.conftest import RecordingLink
from tests.bridges.conftest import running as running_upstream
from tests.conftest import upstream_reachable

pytestmark = pytest.mark.upstream

URL = "nats://127.0.0.1:4222"
T = TypeVar("T")


def nats_run(fn: Callable[[NatsClient], Awaitable[T]]) -> Awaitable[T]:
    """Run ``fn(client)`` with a nats-py client, in a thread of its own."""

    async def main() -> T:
        client = await nats.connect(URL)
        try:
            return await fn(client)
        finally:
            await client.close()

    return trio.to_thread.run_sync(asyncio.run, main())


def upstream(link: RecordingLink, sources: tuple[str, ...] = (), **options: Any) -> NatsUpstream:
    config = BridgeConfig(name="t", kind="nats", url=URL, nats=options)
    opts = config.options()
    assert isinstance(opts, Options)
    rules = [InboundRule(i, source) for i, source in enumerate(sources)]
    return NatsUpstream(config, opts, link, rules)


# Opening may create JetStream streams and consumers: give it longer.
running = functools.partial(running_upstream, open_within=10)


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    """A unique (stream, subject prefix); the stream is deleted afterwards."""
    upstream_reachable("127.0.0.1", 4222)
    suffix = uuid.uuid4().hex[:12]
    stream, prefix = f"T{suffix}", f"t{suffix}"
    yield stream, prefix

    async def delete(client: NatsClient) -> None:
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(stream)

    asyncio.run(nats_run_sync(delete))


async def nats_run_sync(fn: Callable[[NatsClient], Awaitable[None]]) -> None:
    client = await nats.connect(URL)
    try:
        await fn(client)
    finally:
        await client.close()


async def add_stream(stream: str, prefix: str) -> None:
    async def add(client: NatsClient) -> None:
        await client.jetstream().add_stream(name=stream, subjects=[f"{prefix}.>"], storage="memory")

    await nats_run(add)


async def js_publish(subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
    async def publish(client: NatsClient) -> None:
        await client.jetstream().publish(subject, payload, headers=headers)

    await nats_run(publish)


async def consumer_info(stream: str, durable: str) -> Any:
    async def info(client: NatsClient) -> Any:
        return await client.jetstream().consumer_info(stream, durable)

    return await nats_run(info)


def outbound(tag: int, target: str, payload: bytes = b"hello", **fields: Any) -> Outbound:
    return Outbound(tag, Message(destination="x/y", payload=payload, **fields), target)


async def test_jetstream_publish_is_confirmed_and_keeps_headers(names: tuple[str, str]) -> None:
    stream, prefix = names
    link = RecordingLink()
    streams = [{"name": stream, "subjects": [f"{prefix}.>"], "storage": "memory"}]
    expiry = time.time() + 600
    message = outbound(
        1,
        f"{prefix}.a",
        headers={"x-one": "1", "Priority": "lost"},
        content_type="text/plain",
        correlation_id=b"corr",
        reply_to="replies/here",
        priority=7,
        expiry=expiry,
    )
    async with running(upstream(link, streams=streams)) as up:
        await up.publish([message])
        await link.wait_for(lambda: link.confirms == [1])
        # The same message again (a redelivery): JetStream drops the duplicate, and acks.
        await up.publish([Outbound(2, message.message, message.target, redelivered=True)])
        await link.wait_for(lambda: link.confirms == [1, 2])

    async def read(client: NatsClient) -> Any:
        js = client.jetstream()
        info = await js.stream_info(stream)
        sub = await js.pull_subscribe(f"{prefix}.>", stream=stream)
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
        return info, msg

    info, msg = await nats_run(read)
    assert info.state.messages == 1
    assert info.config.storage == "memory"
    assert msg.subject == f"{prefix}.a"
    assert msg.data == b"hello"
    assert msg.headers == {
        "x-one": "1",
        ORIGIN_HEADER: "t",
        "Nats-Msg-Id": str(message.message.message_id),
        "content-type": "text/plain",
        "correlation-id": "corr",
        "reply-to": "replies/here",
        "priority": "7",
        "expires": str(int(expiry * 1000)),
    }
    assert link.refusals == []


async def test_jetstream_publish_no_stream_is_refused(names: tuple[str, str]) -> None:
    _, prefix = names
    link = RecordingLink()
    async with running(upstream(link)) as up:
        await up.publish([outbound(1, f"{prefix}.nowhere"), outbound(2, "bad subject")])
        await link.wait_for(lambda: len(link.refusals) == 2)
    assert sorted(link.refusals) == [
        (1, f"jetstream: no stream captures subject {prefix}.nowhere"),
        (2, "nats: invalid subject 'bad subject'"),
    ]
    assert link.confirms == []


async def test_jetstream_error_reply_is_refused(names: tuple[str, str]) -> None:
    stream, prefix = names

    async def add(client: NatsClient) -> None:
        js = client.jetstream()
        await js.add_stream(
            name=stream, subjects=[f"{prefix}.>"], storage="memory", max_msgs=1, discard="new"
        )

    await nats_run(add)
    link = RecordingLink()
    async with running(upstream(link)) as up:
        await up.publish([outbound(1, f"{prefix}.a"), outbound(2, f"{prefix}.b")])
        await link.wait_for(lambda: link.confirms and link.refusals)
    assert link.confirms == [1]
    [(tag, reason)] = link.refusals
    assert tag == 2
    assert reason.startswith("jetstream: maximum messages exceeded")


async def test_core_publish_is_confirmed_by_pong_and_delivered(names: tuple[str, str]) -> None:
    _, prefix = names
    ready = threading.Event()

    async def receive(client: NatsClient) -> list[Any]:
        sub = await client.subscribe(f"{prefix}.>")
        await client.flush()
        ready.set()
        return [await sub.next_msg(timeout=5) for _ in range(2)]

    link = RecordingLink()
    async with running(upstream(link, jetstream=False)) as up, trio.open_nursery() as nursery:
        got: list[Any] = []

        async def subscriber() -> None:
            got.extend(await nats_run(receive))

        nursery.start_soon(subscriber)
        assert await trio.to_thread.run_sync(ready.wait, 5)
        await up.publish([outbound(7, f"{prefix}.a", b"one"), outbound(8, f"{prefix}.b", b"two")])
        await link.wait_for(lambda: link.confirms == [7, 8])
    assert [(m.subject, m.data) for m in got] == [(f"{prefix}.a", b"one"), (f"{prefix}.b", b"two")]
    assert got[0].headers[ORIGIN_HEADER] == "t"


async def test_core_subscription_receives(names: tuple[str, str]) -> None:
    _, prefix = names
    link = RecordingLink()

    async def send(client: NatsClient) -> None:
        headers = {"content-type": "text/plain", "x-a": "b", "correlation-id": "c", "priority": "2"}
        await client.publish(f"{prefix}.in.one", b"payload", headers=headers)
        await client.publish(f"{prefix}.in.two", b"plain")
        await client.flush()

    async with running(upstream(link, (f"{prefix}.in.>",))):
        await nats_run(send)
        await link.wait_for(lambda: len(link.inbound) == 2)
    first, second = link.inbound
    assert (first.rule, first.subject) == (0, f"{prefix}.in.one")
    message = first.message
    assert (message.payload, message.qos, message.priority) == (b"payload", 0, 2)
    assert (message.content_type, message.text, message.correlation_id) == (
        "text/plain",
        True,
        b"c",
    )
    assert message.headers == {"x-a": "b"}
    assert (second.subject, second.message.payload, second.message.headers) == (
        f"{prefix}.in.two",
        b"plain",
        {},
    )
    first.settle(True)  # a no-op for core NATS


async def test_jetstream_consumer_ack_and_nak(names: tuple[str, str]) -> None:
    stream, prefix = names
    await add_stream(stream, prefix)
    link = RecordingLink()
    source = f"jetstream:{stream}/D/{prefix}.in.>"
    async with running(upstream(link, (f"{prefix}.other", source))):
        await js_publish(f"{prefix}.in.a", b"one", {"x-h": "v"})
        await js_publish(f"{prefix}.skipped", b"not for the filter")
        await link.wait_for(lambda: len(link.inbound) == 1)
        first = link.inbound[0]
        assert (first.rule, first.subject, first.message.payload) == (1, f"{prefix}.in.a", b"one")
        assert (first.message.qos, first.message.headers) == (1, {"x-h": "v"})
        first.settle(False)  # back to JetStream: delivered again at once
        await link.wait_for(lambda: len(link.inbound) == 2)
        again = link.inbound[1]
        assert (again.subject, again.message.payload) == (f"{prefix}.in.a", b"one")
        again.settle(True)
        again.settle(False)  # a second settle is ignored
        for _ in range(100):  # the ack is on its way: poll until JetStream has it
            info = await consumer_info(stream, "D")
            if not info.num_ack_pending:
                break
            await trio.sleep(0.05)
    assert info.config.ack_wait == 30.0
    assert info.config.max_ack_pending == 1000
    assert info.config.filter_subject == f"{prefix}.in.>"
    assert info.num_pending == 0
    assert info.num_redelivered == 0


async def test_durable_consumer_keeps_what_came_while_closed(names: tuple[str, str]) -> None:
    stream, prefix = names
    link = RecordingLink(auto_settle=True)
    source = (f"jetstream:{stream}/keep",)
    options = {"streams": [{"name": stream, "subjects": [f"{prefix}.>"]}], "ack_wait": 5.0}
    async with running(upstream(link, source, **options)):
        await js_publish(f"{prefix}.a", b"first")
        await link.wait_for(lambda: len(link.inbound) == 1)
    await js_publish(f"{prefix}.a", b"while closed")
    # A second open: the stream and consumer exist (a stream of another config is fine).
    options["streams"] = [{"name": stream, "subjects": [f"{prefix}.>"], "storage": "memory"}]
    async with running(upstream(link, source, **options)):
        await link.wait_for(lambda: len(link.inbound) == 2)
    assert [r.message.payload for r in link.inbound] == [b"first", b"while closed"]
    info = await consumer_info(stream, "keep")
    assert (info.num_ack_pending, info.num_pending, info.config.ack_wait) == (0, 0, 5.0)


async def test_pull_expiry_is_renewed(names: tuple[str, str]) -> None:
    stream, prefix = names
    await add_stream(stream, prefix)
    link = RecordingLink(auto_settle=True)
    up = upstream(link, (f"jetstream:{stream}/renew",))
    up.pull_expires, up.pull_grace = 0.2, 0.3
    async with running(up):
        await trio.sleep(0.6)  # a few pulls expire (408) and are issued again
        await js_publish(f"{prefix}.late", b"late")
        await link.wait_for(lambda: len(link.inbound) == 1, 3)


async def test_unknown_stream_consumer_fails_open(names: tuple[str, str]) -> None:
    stream, _ = names
    up = upstream(RecordingLink(), (f"jetstream:{stream}/D",))
    with pytest.raises(UpstreamError, match="jetstream: consumer") as caught, trio.fail_after(5):
        await up.open()
    await up.close()
    assert caught.value.retry is False


async def test_bad_source_fails_open() -> None:
    upstream_reachable("127.0.0.1", 4222)
    up = upstream(RecordingLink(), ("jetstream:only-a-stream",))
    with pytest.raises(UpstreamError, match="expected jetstream:STREAM/DURABLE") as caught:
        await up.open()
    assert caught.value.retry is False


# ------------------------------------------------------------------ a fake server


async def fake_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


def fake_upstream(port: int, url: str = "nats://u:p@127.0.0.1") -> NatsUpstream:
    config = BridgeConfig(name="t", kind="nats", url=f"{url}:{port}", nats={})
    opts = config.options()
    assert isinstance(opts, Options)
    return NatsUpstream(config, opts, RecordingLink(), [])


INFO = b'INFO {"server_id":"fake","version":"2.10.0","headers":true,"max_payload":1048576}\r\n'


async def test_authorization_violation_is_not_retried(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(INFO)
        seen.append(await stream.receive_some())
        await stream.send_all(b"-ERR 'Authorization Violation'\r\n")
        await stream.aclose()

    up = fake_upstream(await fake_server(nursery, handler))
    with (
        pytest.raises(UpstreamError, match="Authorization Violation") as caught,
        trio.fail_after(5),
    ):
        await up.open()
    await up.close()
    assert caught.value.retry is False
    assert b'"user":"u","pass":"p"' in seen[0]
    assert b'"headers":true,"no_responders":true' in seen[0]


async def test_unanswered_pings_end_the_connection(nursery: trio.Nursery) -> None:
    pings: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(INFO)
        await stream.receive_some()
        await stream.send_all(b"PONG\r\n")
        while data := await stream.receive_some():
            pings.append(data.count(b"PING\r\n"))

    up = fake_upstream(await fake_server(nursery, handler))
    up.ping_interval = 0.05
    with trio.fail_after(5):
        await up.open()
        with pytest.raises(UpstreamError, match="no PONG to two PINGs"):
            await up.run()
    await up.close()
    assert sum(pings) == 2


async def test_tls_url_against_a_server_without_tls(nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(INFO)
        await stream.receive_some()

    up = fake_upstream(await fake_server(nursery, handler), "tls://127.0.0.1")
    with pytest.raises(UpstreamError, match="does not offer TLS"), trio.fail_after(5):
        await up.open()
    await up.close()


async def test_tls_upgrade_when_the_server_requires_it(
    nursery: trio.Nursery, tmp_path: pathlib.Path
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(INFO.replace(b"{", b'{"tls_required":true,', 1))
            tls = trio.SSLStream(stream, server_context, server_side=True)
            seen.append(bytes(await tls.receive_some()))
            await tls.send_all(b"PONG\r\n")
            await tls.receive_some()

    port = await fake_server(nursery, handler)
    # A nats:// URL: the server's INFO asks for TLS, and gets it.
    tls = BridgeTLSConfig(ca=str(tmp_path / "ca.pem"))
    config = BridgeConfig(name="t", kind="nats", url=f"nats://127.0.0.1:{port}", tls=tls)
    opts = config.options()
    assert isinstance(opts, Options)
    up = NatsUpstream(config, opts, RecordingLink(), [])
    with trio.fail_after(5):
        await up.open()
        await up.close()
    assert seen[0].startswith(b"CONNECT {")
    assert b'"tls_required":true' in seen[0]


async def test_silent_pulls_are_asked_again_then_end_the_connection(
    nursery: trio.Nursery,
) -> None:
    """A server that never answers a pull (it drops one that expires as a message
    arrives; a consumer that is gone answers nothing): pull again, then give up."""
    pulls: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(INFO)
        buffer = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some():
                buffer += data
                if b"PING\r\n" in buffer:
                    buffer = buffer.replace(b"PING\r\n", b"", 1)
                    await stream.send_all(b"PONG\r\n")
                for match in re.finditer(rb"PUB (\S+) (\S+) \d+\r\n", buffer):
                    subject, reply = match.groups()
                    if subject.startswith(b"$JS.API.CONSUMER.CREATE."):
                        await stream.send_all(b"MSG " + reply + b" 1 2\r\n{}\r\n")
                    elif subject.startswith(b"$JS.API.CONSUMER.MSG.NEXT."):
                        pulls.append(subject)
                buffer = buffer[buffer.rfind(b"\r\n") + 2 :] if b"PUB" in buffer else buffer

    port = await fake_server(nursery, handler)
    config = BridgeConfig(name="t", kind="nats", url=f"nats://127.0.0.1:{port}")
    opts = config.options()
    assert isinstance(opts, Options)
    up = NatsUpstream(config, opts, RecordingLink(), [InboundRule(0, "jetstream:S/D")])
    up.pull_expires, up.pull_grace = 0.05, 0.05
    with trio.fail_after(5):
        await up.open()
        with pytest.raises(UpstreamError, match="no answer to two pulls from S/D"):
            await up.run()
    await up.close()
    assert pulls == [b"$JS.API.CONSUMER.MSG.NEXT.S.D"] * 2
