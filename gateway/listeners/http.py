"""The HTTP listener: h11 requests, WebSocket upgrades, JSON errors.

One task per connection reads requests one after another (HTTP/1.1 keep-alive)
and answers each from the route table in ``http_api``. A request on one of the
WebSocket paths is handed to ``websocket``, which runs the very same MQTT or
STOMP handler as the TCP listeners over the upgraded stream. Every error is a
JSON body ``{"error": CODE, "message": TEXT}`` with the status that tells the
truth, and is logged once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11
import msgspec
import trio

from ..auth import Identity
from ..config import ListenerConfig
from ..core.stats import Traffic
from ._serve import Connection, Handler

READ_SIZE = 65536
# The largest request head (request line and headers) accepted.
MAX_HEAD = 16 * 1024
# How long a response may take to be written before the peer is given up on.
SEND_TIMEOUT = 30.0

_json_encode = msgspec.json.Encoder().encode


class HTTPError(Exception):
    """An error answer: status, stable code, human message (and extra headers)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        # The request's method and path, when the error came after its head was read.
        self.request: tuple[str, str] | None = None


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    conn: Connection
    params: dict[str, str] = field(default_factory=dict)
    # Who sent it, once authenticated (HTTPService.authenticate; None: not yet).
    identity: Identity | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


# A streaming body: called with a function that writes one chunk and a trio
# Event set when the peer went away; returns when the response is complete.
StreamBody = Callable[["ChunkWriter"], Awaitable[None]]


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: StreamBody | None = None
    error: str = ""  # the body's stable error code, for the refusal's log line


def json_response(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, _json_encode(obj), headers=headers or [])


def error_response(exc: HTTPError) -> Response:
    response = json_response(
        exc.status, {"error": exc.code, "message": exc.message}, list(exc.headers)
    )
    response.error = exc.code
    return response


class ChunkWriter:
    """Writes a streaming body's chunks; ``gone`` is set once the peer hung up."""

    def __init__(
        self, stream: trio.abc.Stream, h11conn: h11.Connection, traffic: Traffic | None = None
    ) -> None:
        self._stream = stream
        self._h11 = h11conn
        self.gone = trio.Event()
        # Counts the bytes written (the Connection; None: a throwaway).
        self.traffic = Traffic() if traffic is None else traffic

    async def write(self, data: bytes) -> None:
        if data:
            chunk = self._h11.send(h11.Data(data=data)) or b""
            await self._stream.send_all(chunk)
            self.traffic.bytes_out += len(chunk)

    async def watch(self) -> None:
        """Read until the peer closes (it sends nothing more during a streaming body)."""
        try:
            while await self._stream.receive_some(READ_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.gone.set()


Router = Callable[[Request], Awaitable[Response]]
Upgrader = Callable[[trio.abc.Stream, Connection, Request, bytes], Awaitable[None]]


class RateLimiter:
    """Token buckets per client address: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst or max(1, int(rate)))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> float:
        """0 if a request may go now, else the seconds until one may."""
        if not self.rate:
            return 0.0
        now = self.clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        if len(self._buckets) > 100_000:
            self._buckets.clear()  # bounded memory; a burst of addresses resets the buckets
        self._buckets[key] = (tokens - 1, now)
        return 0.0


def http_handler(
    config: ListenerConfig,
    route: Router,
    upgrade: Upgrader,
    is_upgrade_path: Callable[[str], bool],
    check_upgrade: Callable[[Request], None],
) -> Handler:
    limiter = RateLimiter(config.rate_limit, config.rate_burst)

    async def handle(stream: trio.abc.Stream, conn: Connection) -> None:
        h11conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                with conn.reading() as timer:
                    timer.deadline = trio.current_time() + config.connect_timeout
                    request = await _read_request(stream, h11conn, conn, config)
            except HTTPError as exc:
                method, path = exc.request or (None, None)
                conn.log.info(
                    "http.refused",
                    method=method,
                    path=path,
                    status=exc.status,
                    error=exc.code,
                    message=exc.message,
                )
                await _send_response(stream, h11conn, error_response(exc), conn)
                return
            if request is None:
                return  # the peer closed, went silent, or we are shutting down
            if is_upgrade_path(request.path):
                try:
                    check_upgrade(request)
                    trailing, _closed = h11conn.trailing_data
                    # Raises HTTPError only before the handshake is answered.
                    await upgrade(stream, conn, request, trailing)
                except HTTPError as exc:
                    conn.log.info(
                        "ws.upgrade_refused",
                        method=request.method,
                        path=request.path,
                        status=exc.status,
                        error=exc.code,
                        message=exc.message,
                    )
                    await _send_response(stream, h11conn, error_response(exc), conn)
                return
            wait = limiter.allow(conn.ip) if request.path.startswith("/api/") else 0
            if wait:
                response = error_response(
                    HTTPError(
                        429,
                        "rate_limited",
                        f"more than {config.rate_limit:g} requests a second; retry later",
                        (("Retry-After", str(max(1, round(wait)))),),
                    )
                )
            else:
                try:
                    response = await route(request)
                except HTTPError as exc:
                    response = error_response(exc)
            if response.status >= 400:
                conn.log.info(
                    "http.refused",
                    method=request.method,
                    path=request.path,
                    status=response.status,
                    error=response.error,
                )
            else:
                conn.log.debug(
                    "http.request", method=request.method, path=request.path, status=response.status
                )
            if not await _send_response(stream, h11conn, response, conn):
                return
            if h11conn.our_state is h11.MUST_CLOSE or conn.stop_reason is not None:
                return
            try:
                h11conn.start_next_cycle()
            except h11.ProtocolError:
                return

    return handle


async def _read_request(
    stream: trio.abc.Stream, h11conn: h11.Connection, conn: Connection, config: ListenerConfig
) -> Request | None:
    """The next whole request, None if the peer is gone; HTTPError for bad requests."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = h11conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HTTPError(exc.error_status_hint, "bad_request", str(exc)) from None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            conn.bytes_in += len(data)
            try:
                h11conn.receive_data(bytes(data))
            except h11.RemoteProtocolError as exc:
                raise HTTPError(exc.error_status_hint, "bad_request", str(exc)) from None
            if not data and head is None:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
            _check_head(event)
            declared = _content_length(event)
            if declared is not None and declared > config.max_packet_size:
                raise _about(
                    event,
                    HTTPError(
                        413,
                        "too_large",
                        f"the body is {declared} bytes; the limit is {config.max_packet_size}",
                    ),
                )
            if h11conn.they_are_waiting_for_100_continue:
                # curl asks before sending a large body, and waits a second for the answer.
                try:
                    await stream.send_all(
                        h11conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > config.max_packet_size:
                assert head is not None
                raise _about(
                    head,
                    HTTPError(
                        413, "too_large", f"the body is over the limit of {config.max_packet_size}"
                    ),
                )
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            assert head is not None
            return _request(head, bytes(body), conn)
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _about(head: h11.Request, exc: HTTPError) -> HTTPError:
    exc.request = (head.method.decode("ascii", "replace"), head.target.decode("latin-1"))
    return exc


def _check_head(head: h11.Request) -> None:
    """HTTP/1.x only, and a head within MAX_HEAD however it arrived (h11 checks only the
    heads that arrive in pieces)."""
    if head.http_version not in (b"1.0", b"1.1"):
        raise _about(
            head,
            HTTPError(
                505,
                "http_version_not_supported",
                f"HTTP/{head.http_version.decode('ascii', 'replace')} is not spoken here; "
                "use HTTP/1.1",
            ),
        )
    size = len(head.method) + len(head.target) + 12
    size += sum(len(name) + len(value) + 4 for name, value in head.headers)
    if size > MAX_HEAD:
        raise _about(
            head, HTTPError(431, "bad_request", f"the request head is over {MAX_HEAD} bytes")
        )


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _request(head: h11.Request, body: bytes, conn: Connection) -> Request:
    target = head.target.decode("latin-1")
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key = name.decode("latin-1")
        text = _header_text(value)
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        method=head.method.decode("ascii"),
        path=path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        headers=headers,
        raw_headers=list(head.headers),
        body=body,
        conn=conn,
    )


def _header_text(value: bytes) -> str:
    """A header value as text: UTF-8 (what curl and browsers send), else ISO-8859-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


async def _send_response(
    stream: trio.abc.Stream, h11conn: h11.Connection, response: Response, conn: Connection
) -> bool:
    """Write ``response``; False if the connection cannot go on."""
    if h11conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return False
    headers = [("server", "gateway"), *response.headers]
    if response.content_type is not None:
        headers.append(("content-type", response.content_type))
    if response.stream is None:
        headers.append(("content-length", str(len(response.body))))
    if response.status >= 400 and h11conn.their_state is not h11.DONE:
        # The request body was not read: the connection cannot be reused.
        headers.append(("connection", "close"))
    try:
        with trio.fail_after(SEND_TIMEOUT):
            data = h11conn.send(
                h11.Response(
                    status_code=response.status, headers=headers, reason=_reason(response.status)
                )
            )
            if response.stream is None:
                data = (data or b"") + (h11conn.send(h11.Data(data=response.body)) or b"")
                data += h11conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(data)
                conn.bytes_out += len(data)
                return True
            await stream.send_all(data or b"")
            conn.bytes_out += len(data or b"")
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return False
    except h11.LocalProtocolError as exc:
        conn.log.warning("http.response_failed", error=str(exc))
        return False
    writer = ChunkWriter(stream, h11conn, conn)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.watch)
            # A shutdown (Connection.stop) ends an endless stream such as SSE at once
            # instead of at the drain deadline; the connection is then closed.
            with conn.reading() as stopping:
                await response.stream(writer)
            nursery.cancel_scope.cancel()
        if stopping.cancelled_caught:
            return False
        await stream.send_all(h11conn.send(h11.EndOfMessage()) or b"")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return not writer.gone.is_set()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def path_params(pattern: str, path: str) -> dict[str, str] | None:
    """Match ``path`` against ``/a/{x}/b/{rest...}``; the values are percent-decoded."""
    parts = pattern.strip("/").split("/")
    given = path.strip("/").split("/")
    params: dict[str, str] = {}
    for i, part in enumerate(parts):
        if part.startswith("{") and part.endswith("...}"):
            tail = parts[i + 1 :]
            if len(given) - i < len(tail) + 1:
                return None
            end = len(given) - len(tail)
            if tail and given[end:] != tail:
                return None
            params[part[1:-4]] = unquote("/".join(given[i:end]))
            return params
        if i >= len(given):
            return None
        if part.startswith("{") and part.endswith("}"):
            if not given[i]:
                return None
            params[part[1:-1]] = unquote(given[i])
        elif part != given[i]:
            return None
    return params if len(given) == len(parts) else None
