"""RedisUpstream against the real Redis at 127.0.0.1:6379, read back with redis-py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import msgspec
import pytest
import redis
import trio

from gateway.bridges import redis as redis_bridge
from gateway.bridges.base import ORIGIN_HEADER, InboundRule, Outbound, UpstreamError
from gateway.bridges.config import BridgeConfig
from gateway.bridges.redis import RedisUpstream
from gateway.bridges.resp import NEED_DATA, RespParser
from gateway.core.message import Message
from tests.bridges.conftest import RecordingLink, running
from tests.conftest import NET_TIMEOUT, upstream_reachable

pytestmark = pytest.mark.upstream

HOST, PORT = "127.0.0.1", 6379
URL = f"redis://{HOST}:{PORT}"


def make_upstream(
    link: RecordingLink,
    inbound: tuple[str, ...] = (),
    *,
    url: str = URL,
    qos: int = 1,
    name: str = "t",
    **options: Any,
) -> RedisUpstream:
    config = BridgeConfig(name=name, kind="redis", url=url, redis=options)
    rules = [InboundRule(index=i, source=key, qos=qos) for i, key in enumerate(inbound)]
    return RedisUpstream(config, config.options(), link, rules)


async def in_thread(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: call(*args, **kwargs))


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    upstream_reachable(HOST, PORT)
    client = redis.Redis(host=HOST, port=PORT)
    yield client
    client.close()


@pytest.fixture
def new_key(server: redis.Redis) -> Iterator[Callable[[], str]]:
    """Makes unique stream keys; deletes them (in databases 0 and 1) afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"gateway-test/{uuid.uuid4().hex}")
        return made[-1]

    yield make
    if made:
        server.delete(*made)
        with redis.Redis(host=HOST, port=PORT, db=1) as other:
            other.delete(*made)


def out(tag: int, target: str, payload: bytes = b"x", **fields: Any) -> Outbound:
    return Outbound(
        tag=tag, message=Message(destination="a/b", payload=payload, **fields), target=target
    )


async def pending_count(server: redis.Redis, key: str, group: str = "gateway") -> int:
    info = await in_thread(server.xpending, key, group)
    return int(info["pending"])


async def nothing_pending(server: redis.Redis, key: str) -> None:
    """Wait (up to 5 s) until the group has no pending entry: every XACK has landed."""
    for _ in range(250):
        if not await pending_count(server, key):
            return
        await trio.sleep(0.02)
    pytest.fail(f"entries of {key} still pending")


# -- publishing ------------------------------------------------------------------------


async def test_a_batch_is_confirmed_and_every_field_is_in_the_entry(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    link = RecordingLink()
    full = Message(
        destination="a/b",
        payload=b"\x00\xffbody",
        headers={"colour": "blue", ORIGIN_HEADER: "elsewhere"},
        priority=7,
        expiry=2_000_000_000.5,
        content_type="text/plain",
        correlation_id=b"c-1",
        reply_to="replies",
    )
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link)) as upstream:
            await upstream.publish([Outbound(tag=1, message=full, target=key), out(2, key)])
            await upstream.publish([out(3, key, b"third")])
            await link.wait_for(lambda: len(link.confirms) == 3)
    assert link.confirms == [1, 2, 3]
    assert link.refusals == []
    entries = await in_thread(server.xrange, key)
    assert [fields[b"payload"] for _, fields in entries] == [b"\x00\xffbody", b"x", b"third"]
    fields = entries[0][1]
    assert fields == {
        b"payload": b"\x00\xffbody",
        b"h:colour": b"blue",
        b"h:x-gateway-bridge": b"t",
        b"content-type": b"text/plain",
        b"correlation-id": b"c-1",
        b"reply-to": b"replies",
        b"priority": b"7",
        b"expires": b"2000000000500",
        b"message-id": str(full.message_id).encode(),
        b"timestamp": str(round(full.timestamp * 1000)).encode(),
    }
    # A default message carries no priority, expiry or optional fields.
    assert set(entries[1][1]) == {
        b"payload",
        b"h:x-gateway-bridge",
        b"message-id",
        b"timestamp",
    }


async def test_xadd_to_a_key_that_is_not_a_stream_is_refused(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    text, stream = new_key(), new_key()
    await in_thread(server.set, text, "not a stream")
    link = RecordingLink()
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link)) as upstream:
            await upstream.publish([out(1, stream), out(2, text), out(3, stream)])
            await link.wait_for(lambda: len(link.confirms) + len(link.refusals) == 3)
    assert link.confirms == [1, 3]
    [(tag, reason)] = link.refusals
    assert tag == 2
    assert reason.startswith("redis: WRONGTYPE")


async def test_maxlen_trims_the_stream(server: redis.Redis, new_key: Callable[[], str]) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    link = RecordingLink()
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link, maxlen=10)) as upstream:
            await upstream.publish([out(tag, key) for tag in range(1, 401)])
            await link.wait_for(lambda: len(link.confirms) == 400)
    # "~": Redis trims whole nodes (100 entries each by default), keeping at least 10.
    assert 10 <= await in_thread(server.xlen, key) < 200


async def test_the_url_path_selects_the_database(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    link = RecordingLink()
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link, url=URL + "/1", db=0)) as upstream:
            await upstream.publish([out(1, key)])
            await link.wait_for(lambda: link.confirms == [1])
    assert await in_thread(server.exists, key) == 0
    with redis.Redis(host=HOST, port=PORT, db=1) as other:
        assert await in_thread(other.xlen, key) == 1


# -- receiving -------------------------------------------------------------------------


async def test_an_entry_is_received_with_its_fields_mapped_and_acked_when_settled(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key, other = new_key(), new_key()
    link = RecordingLink()
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link, (other, key), block=0.2)):
            fields = {
                "payload": b"hello",
                "h:colour": "blue",
                "content-type": "text/plain",
                "correlation-id": b"c-9",
                "reply-to": "replies",
                "priority": "2",
                "expires": "2000000000000",
                "message-id": "77",
                "unknown": "ignored",
            }
            await in_thread(server.xadd, key, fields)
            await in_thread(server.xadd, key, {"temperature": "21.5", "room": "b"})
            await link.wait_for(lambda: len(link.inbound) == 2)
            first, second = link.inbound
            assert (first.rule, first.subject) == (1, key)
            message = first.message
            assert message.payload == b"hello"
            assert message.headers == {"colour": "blue"}
            assert message.content_type == "text/plain"
            assert message.text
            assert message.correlation_id == b"c-9"
            assert message.reply_to == "replies"
            assert message.priority == 2
            assert message.expiry == 2_000_000_000
            assert message.qos == 1
            assert message.message_id != 77
            # An entry without a payload field arrives as a JSON object of its fields.
            assert msgspec.json.decode(second.message.payload) == {
                "temperature": "21.5",
                "room": "b",
            }
            assert second.message.content_type == "application/json"
            assert await pending_count(server, key) == 2
            first.settle(True)
            second.settle(True)
            await nothing_pending(server, key)


async def test_an_entry_refused_by_the_core_is_delivered_again_after_a_restart(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    link = RecordingLink(auto_settle=False)
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link, (key,), block=0.2)):
            await in_thread(server.xadd, key, {"payload": b"again"})
            await link.wait_for(lambda: len(link.inbound) == 1)
        assert await pending_count(server, key) == 1
        # A new upstream, as after a gateway restart: it reads its own pending entries first.
        second = RecordingLink(auto_settle=True)
        async with running(make_upstream(second, (key,), block=0.2)):
            await second.wait_for(lambda: len(second.inbound) == 1)
            assert second.inbound[0].message.payload == b"again"
            await nothing_pending(server, key)


async def test_a_dead_consumers_pending_entry_is_claimed(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    await in_thread(server.xgroup_create, key, "gateway", id="0", mkstream=True)
    entry_id = await in_thread(server.xadd, key, {"payload": b"orphan"})
    taken = await in_thread(server.xreadgroup, "gateway", "dead", {key: ">"})
    assert taken[0][1][0][0] == entry_id
    link = RecordingLink()
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link, (key,), block=0.05, claim_idle=0.05)):
            await link.wait_for(lambda: len(link.inbound) == 1)
            assert link.inbound[0].message.payload == b"orphan"
            [pending] = await in_thread(server.xpending_range, key, "gateway", "-", "+", 10)
            assert pending["consumer"] == b"t"
            link.inbound[0].settle(True)
            await nothing_pending(server, key)
    assert len(link.inbound) == 1


async def test_qos_0_entries_are_acked_as_they_are_taken(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    link = RecordingLink()
    with trio.fail_after(NET_TIMEOUT):
        async with running(make_upstream(link, (key,), qos=0, block=0.2)):
            await in_thread(server.xadd, key, {"payload": b"once"})
            await link.wait_for(lambda: len(link.inbound) == 1)
            assert link.inbound[0].message.qos == 0
            await nothing_pending(server, key)


# -- failures --------------------------------------------------------------------------


async def test_a_wrong_password_is_final() -> None:
    upstream_reachable(HOST, PORT)
    upstream = make_upstream(RecordingLink(), url=f"redis://nouser:wrong@{HOST}:{PORT}")
    with trio.fail_after(NET_TIMEOUT), pytest.raises(UpstreamError) as caught:
        await upstream.open()
    await upstream.close()
    assert caught.value.retry is False
    assert caught.value.code == "WRONGPASS"


async def test_a_killed_connection_ends_run_with_an_upstream_error(
    server: redis.Redis, new_key: Callable[[], str]
) -> None:
    upstream_reachable(HOST, PORT)
    key = new_key()
    name = f"kill-{uuid.uuid4().hex[:8]}"
    upstream = make_upstream(RecordingLink(), (key,), name=name, block=0.2)
    with trio.fail_after(NET_TIMEOUT):
        await upstream.open()
        try:
            clients = await in_thread(server.client_list)
            [ours] = [c["id"] for c in clients if c["name"] == f"gateway.{name}.read"]
            await in_thread(server.client_kill_filter, _id=ours)
            with pytest.raises(UpstreamError, match="redis"):
                await upstream.run()
        finally:
            await upstream.close()


async def silent_redis(stream: trio.SocketStream) -> None:
    """A fake Redis that answers the handshake, then never replies again."""
    parser = RespParser()
    while data := await stream.receive_some(4096):
        parser.receive_data(data)
        while (request := parser.next_event()) is not NEED_DATA:
            assert isinstance(request, list)
            if request[0] in (b"CLIENT", b"PING"):
                await stream.send_all(b"+PONG\r\n" if request[0] == b"PING" else b"+OK\r\n")


async def test_a_connection_that_stops_replying_is_dead(
    monkeypatch: pytest.MonkeyPatch, nursery: trio.Nursery
) -> None:
    upstream_reachable(HOST, PORT)
    monkeypatch.setattr(redis_bridge, "REPLY_TIMEOUT", 0.2)
    [listener] = await nursery.start(partial(trio.serve_tcp, silent_redis, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    upstream = make_upstream(RecordingLink(), url=f"redis://127.0.0.1:{port}")
    with trio.fail_after(NET_TIMEOUT):
        await upstream.open()
        try:
            await upstream.publish([out(1, "s")])
            with pytest.raises(UpstreamError, match="no reply"):
                await upstream.run()
        finally:
            await upstream.close()


def test_options_are_checked() -> None:
    config = BridgeConfig(name="t", kind="redis", url=URL, redis={"batch": 0})
    with pytest.raises(ValueError, match="batch"):
        config.options()
    config = BridgeConfig(name="t", kind="redis", url=URL, redis={"colour": "blue"})
    with pytest.raises(ValueError, match="colour"):
        config.options()
