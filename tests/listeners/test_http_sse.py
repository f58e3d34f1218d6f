"""Server-Sent Events: GET /api/v1/topics/{filter}/events, read as a stream (raw trio socket
and curl -N), with wildcard filters, keep-alive comments and clean-up on disconnect."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, make_http_config, running_gateway
from tests.listeners.test_http_wire import (
    RawHTTP,
    curl,
    mqtt5_client,
    record,
    wait_until,
)


@dataclass
class Event:
    comment: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        return json.loads(self.fields["data"])


class SSEStream:
    """An open event stream over a raw socket; ``next`` returns one event (or comment)."""

    def __init__(self, raw: RawHTTP) -> None:
        self.raw = raw
        self.text = ""

    @classmethod
    async def open(cls, port: int, path_filter: str) -> tuple[SSEStream, int, dict[str, str]]:
        raw = await RawHTTP.open(port)
        target = f"/api/v1/topics/{path_filter}/events"
        await raw.request("GET", target, headers={"Accept": "text/event-stream"})
        status, headers = await raw.head()
        record("GET", target, status)
        return cls(raw), status, headers

    async def next(self) -> Event:
        while "\n\n" not in self.text:
            chunk = await self.raw.chunk()
            assert chunk, "the stream ended"
            self.text += chunk.decode()
        block, _, self.text = self.text.partition("\n\n")
        event = Event()
        for line in block.split("\n"):
            if line.startswith(":"):
                event.comment = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                event.fields[name] = value
        return event

    async def message(self) -> Event:
        """The next event that is not a comment."""
        while True:
            event = await self.next()
            if event.comment is None:
                return event

    async def aclose(self) -> None:
        await self.raw.aclose()


def sse_sessions(gw: Gateway) -> list[str]:
    return [client_id for client_id in gw.broker.sessions if client_id.startswith("$http/sse/")]


async def publish(port: int, topic: str, body: bytes, **headers: str) -> None:
    reply = await curl(port, "POST", f"/api/v1/topics/{topic}", body, headers)
    assert reply.status == 202, reply


async def test_sse_with_wildcards_streams_matching_messages(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        plus, status, headers = await SSEStream.open(port, "sensors/+/temp")
        assert status == 200
        assert headers["content-type"] == "text/event-stream"
        assert headers["cache-control"] == "no-cache"
        hash_, status, _ = await SSEStream.open(port, "sensors/%23")
        assert status == 200
        assert (await plus.next()).comment == "subscribed to sensors/+/temp"
        assert (await hash_.next()).comment == "subscribed to sensors/#"
        await publish(
            port,
            "sensors/room1/temp",
            b"21.5",
            **{"Content-Type": "text/plain", "X-Msg-Site": "lyon", "X-Msg-Priority": "6"},
        )
        await publish(port, "sensors/room1/humidity", b"40")
        await publish(port, "elsewhere/room1/temp", b"nope")
        await publish(port, "sensors/room2/temp", b"\xff\xfe")  # not UTF-8
        event = await plus.message()
        assert event.fields["event"] == "message"
        data = event.data
        assert event.fields["id"] == data["message_id"]
        assert data["destination"] == "sensors/room1/temp"
        assert data["payload"] == "21.5"
        assert data["content_type"] == "text/plain"
        assert data["headers"] == {"site": "lyon"}
        assert data["priority"] == 6
        assert data["persistent"] is True
        binary = (await plus.message()).data
        assert binary["destination"] == "sensors/room2/temp"
        assert binary["encoding"] == "base64"
        assert base64.b64decode(binary["payload"]) == b"\xff\xfe"
        got = [(await hash_.message()).data["destination"] for _ in range(3)]
        assert got == ["sensors/room1/temp", "sensors/room1/humidity", "sensors/room2/temp"]
        assert len(sse_sessions(http_gateway)) == 2
        await plus.aclose()
        await hash_.aclose()


async def test_sse_does_not_replay_retained_messages(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        await publish(port, "kept/a", b"old", **{"X-Msg-Retain": "true"})
        stream, _, _ = await SSEStream.open(port, "kept/%23")
        await stream.next()
        await publish(port, "kept/a", b"new")
        data = (await stream.message()).data
        assert (data["payload"], data.get("retain")) == ("new", None)
        await stream.aclose()


async def test_sse_session_is_removed_when_the_client_disconnects(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        stream, _, _ = await SSEStream.open(port, "gone/%23")
        await stream.next()
        assert len(sse_sessions(http_gateway)) == 1
        await stream.aclose()
        await wait_until(lambda: not sse_sessions(http_gateway))
        # Its subscription went with it: publishing reaches no one.
        reply = await curl(port, "POST", "/api/v1/topics/gone/x", b"1")
        assert reply.json()["routed"] == 0


async def test_sse_keep_alive_comments(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> None:
    config = make_http_config(tmp_path, sse_keepalive=0.2)
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            stream, _, _ = await SSEStream.open(gw.port("http"), "quiet")
            assert (await stream.next()).comment == "subscribed to quiet"
            started = trio.current_time()
            assert (await stream.next()).comment == "keep-alive"
            assert (await stream.next()).comment == "keep-alive"
            assert trio.current_time() - started >= 0.3
            await publish(gw.port("http"), "quiet", b"now")
            assert (await stream.message()).data["payload"] == "now"
            await stream.aclose()


async def test_sse_with_curl(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> None:
    """curl -N, as a user would run it: it prints the events until --max-time."""
    config = make_http_config(tmp_path, sse_keepalive=0.2)
    async with running_gateway(nursery, config) as gw:
        port = gw.port("http")
        with trio.fail_after(NET_TIMEOUT):
            async with trio.open_nursery() as inner:
                got: list[bytes] = []

                async def listen() -> None:
                    done = await trio.run_process(
                        [
                            *("curl", "-sS", "-N", "--max-time", "1.5"),
                            f"http://127.0.0.1:{port}/api/v1/topics/c/%23/events",
                        ],
                        capture_stdout=True,
                        check=False,
                    )
                    assert done.returncode == 28  # stopped by --max-time
                    got.append(done.stdout)

                inner.start_soon(listen)
                await wait_until(lambda: sse_sessions(gw))
                await publish(port, "c/d", b"hello")
            text = got[0].decode()
            assert text.startswith(": subscribed to c/#\n\n")
            assert ": keep-alive\n\n" in text
            data_lines = [line for line in text.split("\n") if line.startswith("data: ")]
            assert [json.loads(line[6:])["payload"] for line in data_lines] == ["hello"]
            await wait_until(lambda: not sse_sessions(gw))


@pytest.mark.parametrize(
    "bad",
    ["a/%23/b", "a%23", "a/b%2B", "%00", "x/%2B%2B/events/extra/"],
)
async def test_sse_bad_filter_is_400(http_gateway: Gateway, bad: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(http_gateway.port("http"), "GET", f"/api/v1/topics/{bad}/events")
        assert (reply.status, reply.error) == (400, "bad_filter"), bad
        assert not sse_sessions(http_gateway)


async def test_sse_slow_reader_loses_events_not_the_gateway(http_gateway: Gateway) -> None:
    """A reader that stops reading is QoS 0: past the high-water mark its events are
    dropped (and counted), and publishing is never held up."""
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        stream, _, _ = await SSEStream.open(port, "flood")
        await stream.next()
        (session_id,) = sse_sessions(http_gateway)
        queue = http_gateway.broker.sessions[session_id].queue
        async with mqtt5_client(http_gateway.port("mqtt"), "flooder") as publisher:
            chunk = b"x" * 65536
            sent = 0
            while not queue.stats.dropped:
                await publisher.publish("flood", chunk, qos=1)
                sent += 1
                assert sent < 1000, "nothing was ever dropped"
        # Others are not held up; the stream is still readable.
        assert (await curl(port, "POST", "/api/v1/topics/other", b"1")).status == 202
        assert (await stream.message()).data["destination"] == "flood"
        await stream.aclose()


async def test_shutdown_ends_an_open_stream_at_once(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    """An event stream never ends by itself: stopping the gateway ends it without waiting
    for the drain deadline (drain_timeout = 2 s in make_http_config)."""
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        with trio.fail_after(NET_TIMEOUT):
            stream, _, _ = await SSEStream.open(gw.port("http"), "%23")
            await stream.next()
            started = trio.current_time()
            gw.stop()
            await gw.stopped.wait()
            assert trio.current_time() - started < 1.0
            assert await stream.raw.closed()
            assert not sse_sessions(gw)
            await stream.aclose()
