"""The HTTP listener on the wire: malformed input, limits, keep-alive, rate limiting, health.

Also the helpers every HTTP test shares (the other tests/listeners/test_http_*.py files,
tests/listeners/test_openapi.py and tests/e2e/test_http_api.py import them from here):

- ``curl``: one request with the real curl (as users meet the API), parsed into a ``Reply``;
- ``RawHTTP``: a trio-socket client that writes exactly the bytes it is given (malformed
  input, keep-alive, pipelining) and reads responses, whole or as a chunked stream (SSE);
- ``record``: every status a test observes for a route is recorded in ``OBSERVED`` and
  checked, there and then, against the statuses the OpenAPI document declares for that
  route; ``curl`` and ``RawHTTP.exchange`` record by themselves.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho_mqtt
import pytest
import structlog
import trio

from gateway.app import Gateway
from gateway.listeners import http_api
from gateway.listeners._serve import Connection
from gateway.listeners.http import MAX_HEAD, Request, path_params
from gateway.listeners.openapi import openapi_document
from tests.conftest import NET_TIMEOUT, make_http_config, running_gateway
from tests.paho import Paho

# -- the OpenAPI registry ---------------------------------------------------------------------

# (method, route pattern) -> every status a test saw that route answer.
OBSERVED: dict[tuple[str, str], set[int]] = {}
# Answers before any route is chosen: no such endpoint, wrong method, rate limited.
UNROUTED = frozenset({404, 405, 429})


def openapi_path(pattern: str) -> str:
    """The OpenAPI path of a route pattern: ``{x...}`` is written ``{x}``."""
    return re.sub(r"\{(\w+)\.\.\.\}", r"{\1}", pattern)


def route_of(method: str, path: str) -> http_api.Route | None:
    """The route the gateway answers ``method path`` with (the first that matches)."""
    for route in http_api.ROUTES:
        if route.method == method and path_params(route.pattern, path) is not None:
            return route
    return None


def declared_statuses(method: str, pattern: str) -> set[int]:
    operation = openapi_document()["paths"][openapi_path(pattern)][method.lower()]
    return {int(status) for status in operation["responses"]}


def record(method: str, target: str, status: int) -> None:
    """Note that ``method target`` answered ``status``; fail if the document does not say so."""
    route = route_of(method, target.partition("?")[0])
    if route is None:
        assert status in UNROUTED, f"{method} {target}: {status} without a route"
        return
    OBSERVED.setdefault((method, route.pattern), set()).add(status)
    declared = declared_statuses(method, route.pattern)
    assert status in declared, (
        f"{method} {openapi_path(route.pattern)} answered {status}, which "
        f"/api/v1/openapi.json does not declare (it declares {sorted(declared)})"
    )


# -- replies ----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def error(self) -> str:
        """The error code of a JSON error body (and a check that it has the promised shape)."""
        body = self.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
        assert isinstance(body.get("message"), str), body
        assert body["message"], body
        return str(body["error"])


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return status, headers


Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


async def curl(
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Headers | None = None,
    *options: str,
    max_time: float = NET_TIMEOUT,
    check_recorded: bool = True,
) -> Reply:
    """One request with curl (HTTP/1.1); ``options`` are more curl arguments."""
    args = ["curl", "-sS", "-i", "-g", "--http1.1", "-X", method, "--max-time", str(max_time)]
    for name, value in _pairs(headers):
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        args += ["--data-binary", "@-"]
    args += [*options, f"http://127.0.0.1:{port}{target}"]
    with trio.fail_after(max_time + 5):
        done = await trio.run_process(
            args, stdin=body or b"", capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, f"curl {method} {target}: {done.stderr.decode()}"
    rest = done.stdout
    while True:
        head, _, rest = rest.partition(b"\r\n\r\n")
        status, parsed = _parse_head(head)
        if status >= 200:
            break  # skip "100 Continue"
    reply = Reply(status, parsed, rest)
    if check_recorded:
        record(method, target, status)
    return reply


# -- the raw client ---------------------------------------------------------------------------


class RawHTTP:
    """Bytes over a trio socket: ``send`` writes exactly what it is given."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> RawHTTP:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Headers | None = None,
    ) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in _pairs(headers)]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def exchange(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: Headers | None = None,
    ) -> Reply:
        """One request and its (whole) response on this connection, recorded."""
        await self.request(method, target, body, headers)
        reply = await self.response()
        record(method, target, reply.status)
        return reply

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""  # a reset counts as the end
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError("the server closed the connection")
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer[:] = rest
        return line

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError("the server closed the connection")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def head(self) -> tuple[int, dict[str, str]]:
        """The next response's status line and headers."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(f"the server closed the connection: {bytes(self.buffer)!r}")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer[:] = rest
        return _parse_head(head)

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body; b"" for the last one."""
        size = int((await self._line()).split(b";")[0], 16)
        data = await self._exactly(size)
        await self._exactly(2)
        return data

    async def response(self) -> Reply:
        status, headers = await self.head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while chunk := await self.chunk():
                body += chunk
            return Reply(status, headers, bytes(body))
        return Reply(status, headers, await self._exactly(int(headers.get("content-length", 0))))

    async def closed(self) -> bool:
        """True once the server has closed the connection (reading whatever comes first)."""
        while await self._fill():
            pass
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawHTTP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def wait_until(condition: Callable[[], object], step: float = 0.01) -> None:
    """Poll ``condition`` until it is true (under the caller's fail_after)."""
    for _ in itertools.count():
        if condition():
            return
        await trio.sleep(step)


@contextlib.asynccontextmanager
async def mqtt5_client(port: int, client_id: str) -> AsyncIterator[Paho]:
    """A connected MQTT 5 paho client, closed on exit."""
    client = Paho(port, client_id, protocol=paho_mqtt.MQTTv5)
    try:
        with trio.fail_after(NET_TIMEOUT):
            await client.connect()
        yield client
    finally:
        with trio.fail_after(NET_TIMEOUT):
            await client.close()


# -- tests ------------------------------------------------------------------------------------


async def _answers_bad(port: int, data: bytes, status: int = 400) -> Reply:
    """Send ``data``; the answer is ``status`` with a JSON error, then the connection closes."""
    async with await RawHTTP.open(port) as raw:
        with contextlib.suppress(trio.BrokenResourceError):
            await raw.send(data)  # the server may answer and close before it has all of it
        reply = await raw.response()
        assert reply.status == status, reply
        assert reply.header("connection") == "close"
        assert await raw.closed()
        return reply


MALFORMED = {
    "request line": b"GARBAGE\r\n\r\n",
    "header line": b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "no Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "bad Content-Length": b"POST /api/v1/topics/a HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: ab\r\n\r\n",
    "two lengths": b"POST /api/v1/topics/a HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad chunk size": b"POST /api/v1/topics/a HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_is_400_logged_and_closed(http_gateway: Gateway, case: str) -> None:
    with trio.fail_after(NET_TIMEOUT), structlog.testing.capture_logs() as logs:
        reply = await _answers_bad(http_gateway.port("http"), MALFORMED[case])
        assert reply.error == "bad_request"
        assert reply.header("content-type") == "application/json"
    refused = [entry for entry in logs if entry["event"] == "http.refused"]
    assert len(refused) == 1, logs
    assert refused[0]["status"] == 400
    assert refused[0]["error"] == "bad_request"


async def test_each_refusal_is_logged_once_with_its_code(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT), structlog.testing.capture_logs() as logs:
        await curl(port, "POST", "/api/v1/topics/%24SYS/x", b"x")
        await curl(port, "GET", "/api/v1/queues/q/messages?max=0")
        await _answers_bad(port, b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505)
        assert (await curl(port, "GET", "/healthz")).status == 200
    refused = [
        (entry["method"], entry["path"], entry["status"], entry["error"])
        for entry in logs
        if entry["event"] == "http.refused"
    ]
    assert refused == [
        ("POST", "/api/v1/topics/%24SYS/x", 403, "reserved_topic"),
        ("GET", "/api/v1/queues/q/messages", 400, "bad_parameter"),
        ("GET", "/x", 505, "http_version_not_supported"),
    ]


async def test_oversized_request_head_is_431(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with await RawHTTP.open(http_gateway.port("http")) as raw:
            # Sent in pieces, as a slow client would: the limit holds however bytes arrive.
            with contextlib.suppress(trio.BrokenResourceError):
                await raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                for _ in range(MAX_HEAD // 1000 + 2):
                    await raw.send(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                    await trio.sleep(0.001)
                await raw.send(b"\r\n")
            reply = await raw.response()
            assert reply.status == 431
            assert reply.error == "bad_request"


async def test_oversized_request_head_in_one_piece_is_431(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n"
        reply = await _answers_bad(http_gateway.port("http"), head, 431)
        assert reply.error == "bad_request"


async def test_http2_preface_is_505(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await _answers_bad(
            http_gateway.port("http"), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505
        )
        assert reply.error == "http_version_not_supported"


async def test_malformed_input_does_not_disturb_other_connections(
    http_gateway: Gateway,
) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        async with (
            mqtt5_client(http_gateway.port("mqtt"), "watcher") as subscriber,
            await RawHTTP.open(port) as keep,
        ):
            await subscriber.subscribe("calm/#", qos=1)
            assert (await keep.exchange("GET", "/healthz")).status == 200
            for data in MALFORMED.values():
                await _answers_bad(port, data)
            # A client that hangs up in the middle of a body.
            async with await RawHTTP.open(port) as half:
                await half.send(b"POST /api/v1/topics/calm/x HTTP/1.1\r\nHost: x\r\n")
                await half.send(b"Content-Length: 100\r\n\r\nonly part")
            # The keep-alive connection and the MQTT subscriber carry on.
            reply = await keep.exchange("POST", "/api/v1/topics/calm/ok", b"still here")
            assert reply.status == 202, reply
            message = await subscriber.get()
            assert (message.topic, message.payload) == ("calm/ok", b"still here")
            assert subscriber.messages.empty()  # the half-sent body was never published
            assert (await keep.exchange("GET", "/healthz")).status == 200


async def test_keep_alive_and_pipelining(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with await RawHTTP.open(http_gateway.port("http")) as raw:
            for _ in range(3):
                assert (await raw.exchange("GET", "/healthz")).json() == {"status": "ok"}
            # Three requests in one write: three answers, in order.
            await raw.send(
                b"".join(
                    b"POST /api/v1/queues/pipe HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 1\r\n\r\n%d" % i
                    for i in range(3)
                )
            )
            for _ in range(3):
                assert (await raw.response()).status == 202
            pulled = await raw.exchange("GET", "/api/v1/queues/pipe/messages?max=10")
            assert [m["payload"] for m in pulled.json()["messages"]] == ["0", "1", "2"]
            # An error answer whose request was read in full keeps the connection open.
            assert (await raw.exchange("GET", "/nowhere")).status == 404
            assert (await raw.exchange("GET", "/healthz")).status == 200


async def test_expect_100_continue_is_answered(http_gateway: Gateway) -> None:
    """curl asks "Expect: 100-continue" before a large body and waits a second for the
    answer; the listener answers at once (and a too-large body gets its 413 instead)."""
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        async with await RawHTTP.open(port) as raw:
            await raw.send(
                b"POST /api/v1/topics/cont HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            assert (await raw.head())[0] == 100
            await raw.send(b"hello")
            reply = await raw.response()
            assert reply.status == 202
            record("POST", "/api/v1/topics/cont", reply.status)
        started = trio.current_time()
        reply = await curl(port, "POST", "/api/v1/queues/cont", b"x" * 2_000_000)
        assert reply.status == 202
        assert trio.current_time() - started < 0.9


async def test_chunked_request_body_is_reassembled(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        async with await RawHTTP.open(port) as raw:
            await raw.send(
                b"POST /api/v1/queues/chunks HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            )
            assert (await raw.response()).status == 202
            reply = await raw.exchange("GET", "/api/v1/queues/chunks/messages")
            assert reply.json()["messages"][0]["payload"] == "abcde"


async def test_unknown_endpoint_is_404_and_wrong_method_405(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        for target in ("/nowhere", "/api/v2/topics/a", "/api/v1/queues/a/b/c/d"):
            reply = await curl(port, "GET", target)
            assert (reply.status, reply.error) == (404, "not_found"), target
        for method, target, allow in (
            ("DELETE", "/api/v1/topics/a/b", "POST"),
            ("GET", "/api/v1/queues/jobs", "POST"),
            ("PUT", "/api/v1/queues/jobs/messages", "GET"),
            ("POST", "/healthz", "GET"),
            ("GET", "/api/v1/messages", "POST"),
        ):
            reply = await curl(port, method, target)
            assert (reply.status, reply.error) == (405, "method_not_allowed"), target
            assert reply.header("allow") == allow


async def test_body_over_max_packet_size_is_413_and_closed(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = make_http_config(tmp_path, max_packet_size=1000)
    async with (
        running_gateway(nursery, config) as gw,
        mqtt5_client(gw.port("mqtt"), "big") as subscriber,
    ):
        port = gw.port("http")
        with trio.fail_after(NET_TIMEOUT):
            await subscriber.subscribe("big/#")
            # Exactly the limit is fine.
            assert (await curl(port, "POST", "/api/v1/topics/big/ok", b"x" * 1000)).status == 202
            # Declared too large: refused on the Content-Length, before the body is read.
            async with await RawHTTP.open(port) as raw:
                await raw.send(
                    b"POST /api/v1/topics/big/no HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 5000000\r\n\r\n"
                )
                reply = await raw.response()
                assert (reply.status, reply.error) == (413, "too_large")
                assert reply.header("connection") == "close"
                assert await raw.closed()
            record("POST", "/api/v1/topics/big/no", reply.status)
            # curl sending a large body (it waits for "100 Continue" and gets the 413).
            reply = await curl(port, "POST", "/api/v1/queues/jobs", b"x" * 3_000_000)
            assert (reply.status, reply.error) == (413, "too_large")
            reply = await curl(port, "POST", "/api/v1/request/big/rpc", b"x" * 3_000_000)
            assert (reply.status, reply.error) == (413, "too_large")
            # Chunked: counted as it arrives.
            reply = await curl(
                port,
                "POST",
                "/api/v1/topics/big/chunked",
                b"y" * 200_000,
                {"Transfer-Encoding": "chunked"},
            )
            assert (reply.status, reply.error) == (413, "too_large")
            async with await RawHTTP.open(port) as raw:
                await raw.send(
                    b"POST /api/v1/messages HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                with contextlib.suppress(trio.BrokenResourceError):
                    for _ in range(3):
                        await raw.send(b"200\r\n" + b"z" * 0x200 + b"\r\n")
                reply = await raw.response()
                assert (reply.status, reply.error) == (413, "too_large")
                assert await raw.closed()
            record("POST", "/api/v1/messages", reply.status)
            # Nothing but the first message was published; the listener still serves.
            assert (await subscriber.get()).topic == "big/ok"
            assert (await curl(port, "POST", "/api/v1/topics/big/after", b"z")).status == 202
            assert (await subscriber.get()).topic == "big/after"
            assert "jobs" not in gw.broker.queues or gw.broker.queues["jobs"].depth == 0


def sample_target(pattern: str) -> str:
    """A path that ``pattern`` matches."""
    return re.sub(r"\{\w+(\.\.\.)?\}", "a", pattern)


async def test_rate_limit_is_429_with_retry_after(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = make_http_config(tmp_path, rate_limit=1, rate_burst=1)
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            async with await RawHTTP.open(gw.port("http")) as raw:
                assert (await raw.exchange("POST", "/api/v1/topics/r", b"1")).status == 202
                # Every API endpoint is limited, and an unknown one too.
                targets = [
                    (route.method, sample_target(route.pattern))
                    for route in http_api.ROUTES
                    if route.pattern.startswith("/api/")
                ]
                for method, target in [*targets, ("GET", "/api/v1/nowhere")]:
                    reply = await raw.exchange(method, target, b"2" if method == "POST" else b"")
                    assert (reply.status, reply.error) == (429, "rate_limited"), target
                    assert reply.header("retry-after") == "1"
                # Health checks are not rate limited; the connection stays open.
                assert (await raw.exchange("GET", "/healthz")).status == 200
                assert (await raw.exchange("GET", "/readyz")).status == 200
                # A token comes back after a second.
                await trio.sleep(1.05)
                assert (await raw.exchange("POST", "/api/v1/topics/r", b"3")).status == 202


async def test_health_and_readiness(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(port, "GET", "/healthz")
        assert (reply.status, reply.json()) == (200, {"status": "ok"})
        reply = await curl(port, "GET", "/readyz")
        assert reply.status == 200
        body = reply.json()
        assert body["ready"] is True
        assert body["stopping"] is False
        assert {item["name"] for item in body["listeners"]} == {"mqtt", "stomp", "http"}
        assert body["store"]


async def test_readyz_is_503_until_serving(tmp_path: os.PathLike[str]) -> None:
    gw = Gateway(make_http_config(tmp_path))
    listener = next(item for item in gw.config.listeners if item.protocol == "http")
    request = Request("GET", "/readyz", {}, {}, [], b"", Connection(0, "test", "http", "http"))
    response = await gw.http.route(listener, request)
    assert response.status == 503
    body = json.loads(response.body)
    assert body["ready"] is False
    record("GET", "/readyz", response.status)
