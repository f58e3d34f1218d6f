"""The NATS bridge (docs/bridge-nats.md): core NATS subjects and JetStream streams,
over a small client of our own (``nats_protocol`` is its sans-I/O codec, and
holds the source syntax and the header mapping).

Targets are subjects (``separator`` is ``.``: the framework has already turned the
core's ``/`` into dots). Inbound ``from``: ``SUBJECT`` (a core subscription, at most
once) or ``jetstream:STREAM/DURABLE[/FILTER.SUBJECT]`` (a durable pull consumer,
acknowledged once the core has the message).

Confirmations: with ``jetstream = true`` each publish carries a reply subject on
the connection's inbox and is confirmed by JetStream's publish ack (the message is
stored in a stream), refused when JetStream answers an error or when no stream
captures the subject (no responders). With ``jetstream = false`` a batch is
confirmed by the PONG to a PING sent after it: the server has read it, and core
NATS keeps nothing (a subject without subscribers drops it).
"""

from __future__ import annotations

import json
import math
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any, Literal, assert_never

import msgspec
import structlog
import trio

from .. import __version__
from . import nats_protocol as wire
from .base import (
    ORIGIN_HEADER,
    Endpoint,
    InboundRule,
    Link,
    Outbound,
    Output,
    Settle,
    Upstream,
    UpstreamError,
    connect_tcp,
    no_settle,
    start_tls,
)
from .config import BridgeConfig
from .nats_protocol import parse_source as parse_source  # the configuration check's

log = structlog.get_logger(__name__)
DEFAULT_PORTS = {"nats": 4222, "tls": 4222, "nats+tls": 4222}
TLS_SCHEMES = frozenset({"tls", "nats+tls"})
_STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists (other config)
_UNAVAILABLE = 10008  # JetStream: "JetStream system temporarily unavailable"
_NS = 1_000_000_000
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError)


class StreamDecl(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A stream to create when missing (an existing one is left as it is)."""

    name: str
    subjects: tuple[str, ...]
    storage: Literal["file", "memory"] = "file"

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ".*> \t\r\n"):
            raise ValueError(f"stream name {self.name!r}: no '.', '*', '>' or blanks")
        for subject in self.subjects:
            if not wire.valid_subject(subject, wildcards=True):
                raise ValueError(f"stream {self.name}: invalid subject {subject!r}")


class Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[bridges.nats]``."""

    # Publish through JetStream and wait for its ack; False: core NATS (confirmed by
    # the server's PONG: read, not kept).
    jetstream: bool = True
    streams: tuple[StreamDecl, ...] = ()
    # The durable consumers' ack wait (seconds) and most unacknowledged deliveries.
    ack_wait: float = 30.0
    max_ack_pending: int = 1000
    # The client name in CONNECT (what the server's monitoring shows).
    name: str = ""

    def __post_init__(self) -> None:
        if not self.ack_wait > 0:
            raise ValueError("ack_wait must be more than 0 seconds")
        if self.max_ack_pending < 1:
            raise ValueError("max_ack_pending must be at least 1")


def _json(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _api_error(reply: dict[str, Any]) -> tuple[str, int | None] | None:
    error = reply.get("error")
    if not isinstance(error, dict):
        return None
    code = error.get("err_code", error.get("code"))
    return str(error.get("description", "error")), code if isinstance(code, int) else None


@dataclass
class _Pull:
    """A JetStream rule's durable pull consumer: one pull request at a time."""

    rule: int
    source: wire.JetStreamSource
    sid: str
    inbox: str
    unsettled: int = 0
    remaining: int = 0  # what the outstanding pull may still deliver; 0: none out
    deadline: float = math.inf  # when the outstanding pull must have ended
    silent: int = 0  # pulls in a row that ended with no answer at all


class NatsUpstream(Upstream):
    """One connection to a NATS server (docs/bridge-nats.md)."""

    separator = "."
    # Seconds without a byte from the server before a PING; two unanswered: dead.
    ping_interval: float = 30.0
    # A pull request's expiry, and how long after it its end (408) may still come.
    pull_expires: float = 30.0
    pull_grace: float = 2.0
    # The longest a write may take (writes are shielded from cancellation).
    write_timeout: float = 5.0

    def __init__(
        self, config: BridgeConfig, options: object, link: Link, inbound: Sequence[InboundRule]
    ) -> None:
        super().__init__(config, options, link, inbound)
        assert isinstance(options, Options)
        self.options = options
        self.log = log.bind(bridge=config.name, kind="nats")
        self._stream: trio.abc.Stream | None = None
        self._conn = wire.NatsConnection()
        self._info: dict[str, Any] = {}
        self._output = Output(self._send)
        self._inbox = f"_INBOX.{secrets.token_urlsafe(16)}"
        self._tokens = count(1)
        self._replies: dict[str, wire.Msg | wire.HMsg | None] = {}  # open()'s requests
        self._acks: dict[str, tuple[int, str]] = {}  # inbox token -> (tag, subject)
        self._pongs: deque[list[int] | None] = deque()
        self._core: dict[str, int] = {}  # sid -> rule index
        self._pulls: dict[str, _Pull] = {}  # sid -> pull consumer
        self._received = 0  # reads so far (the keep-alive's sign of life)
        self._closed = False
        self._torn = False  # a write failed: the stream may hold half a frame

    # ------------------------------------------------------------------ open

    async def open(self) -> None:
        try:
            await self._open()
        except BaseException:
            self._torn = True  # close() sends nothing more
            if self._stream is not None:
                await trio.aclose_forcefully(self._stream)
            raise

    async def _open(self) -> None:
        try:
            endpoint = Endpoint.parse(self.config.url, DEFAULT_PORTS, TLS_SCHEMES)
            sources = [(rule, wire.parse_source(rule.source)) for rule in self.inbound]
        except ValueError as exc:
            raise UpstreamError(f"nats: {exc}", retry=False) from None
        self._stream = await connect_tcp(endpoint)
        event = await self._next_event()
        if not isinstance(event, wire.Info):
            raise UpstreamError(f"nats: expected INFO, got {type(event).__name__}")
        self._on_info(event)
        tls = endpoint.tls or self.config.tls is not None or bool(self._info.get("tls_required"))
        if tls:
            await self._start_tls(endpoint)
        self._send_op(wire.Connect(options=self._connect_options(endpoint, tls)))
        self._send_op(wire.Ping())
        self._pongs.append(None)
        self._send_op(wire.Sub(subject=f"{self._inbox}.*", sid="1"))
        await self._output.flush()
        while self._pongs:  # the CONNECT's PONG (an -ERR raises)
            self._dispatch(await self._next_event())
            await self._output.flush()
        for stream in self.options.streams:
            await self._create_stream(stream.name, list(stream.subjects), stream.storage)
        for _, source in sources:
            if isinstance(source, wire.JetStreamSource):
                await self._create_consumer(source)
        # Subscribe only once every request is answered: open() delivers nothing.
        for sid, (rule, source) in enumerate(sources, start=2):
            if isinstance(source, str):
                self._core[str(sid)] = rule.index
                self._send_op(wire.Sub(subject=source, sid=str(sid)))
            else:
                inbox = f"{self._inbox}.pull.{rule.index}"
                self._pulls[str(sid)] = _Pull(rule.index, source, str(sid), inbox)
                self._send_op(wire.Sub(subject=inbox, sid=str(sid)))
        for pull in self._pulls.values():
            self._pull(pull)
        await self._output.flush()
        self.log.info(
            "bridge.nats.connected",
            host=endpoint.host,
            server=self._info.get("version"),
            tls=tls,
            jetstream=self.options.jetstream,
            subscriptions=len(self._core),
            consumers=len(self._pulls),
        )

    async def _start_tls(self, endpoint: Endpoint) -> None:
        if not (self._info.get("tls_required") or self._info.get("tls_available")):
            raise UpstreamError(
                f"nats: {endpoint.host}:{endpoint.port} does not offer TLS", retry=False
            )
        assert self._stream is not None
        self._stream = await start_tls(self.config, endpoint, self._stream)

    def _connect_options(self, endpoint: Endpoint, tls: bool) -> dict[str, Any]:
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls,
            "headers": True,
            "no_responders": True,
            "name": self.options.name,
            "lang": "python-gateway",
            "version": __version__,
            "protocol": 1,
        }
        if endpoint.username is not None and endpoint.password is not None:
            options["user"] = endpoint.username
            options["pass"] = endpoint.password
        elif endpoint.username:
            options["auth_token"] = endpoint.username
        return options

    async def _request(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JetStream API request's JSON reply, read during ``open``."""
        token = str(next(self._tokens))
        self._replies[token] = None
        payload = json.dumps(body, separators=(",", ":")).encode()
        reply = f"{self._inbox}.{token}"
        self._send_op(wire.Pub(subject=subject, payload=payload, reply=reply))
        await self._output.flush()
        while (msg := self._replies[token]) is None:
            self._dispatch(await self._next_event())
            await self._output.flush()
        del self._replies[token]
        if isinstance(msg, wire.HMsg) and msg.status == 503:
            raise UpstreamError("nats: JetStream is not enabled on the server", retry=False)
        return _json(msg.payload)

    async def _create_stream(self, name: str, subjects: list[str], storage: str) -> None:
        config = {"name": name, "subjects": subjects, "storage": storage}
        error = _api_error(await self._request(f"$JS.API.STREAM.CREATE.{name}", config))
        if error is not None and error[1] != _STREAM_NAME_IN_USE:
            raise UpstreamError(f"jetstream: stream {name}: {error[0]}", code=error[1], retry=False)
        if error is not None:
            self.log.info("bridge.nats.stream_exists", stream=name, detail=error[0])

    async def _create_consumer(self, source: wire.JetStreamSource) -> None:
        config: dict[str, Any] = {
            "durable_name": source.durable,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(self.options.ack_wait * _NS),
            "max_ack_pending": self.options.max_ack_pending,
        }
        if source.filter is not None:
            config["filter_subject"] = source.filter
        version = tuple(int(p) for p in str(self._info.get("version", "0.0")).split(".")[:2])
        api = "CREATE" if version >= (2, 9) else "DURABLE.CREATE"
        subject = f"$JS.API.CONSUMER.{api}.{source.stream}.{source.durable}"
        body = {"stream_name": source.stream, "config": config}
        if (error := _api_error(await self._request(subject, body))) is None:
            return
        where = f"{source.stream}/{source.durable}"
        # An existing pull consumer of another configuration is reused as it is.
        info_subject = f"$JS.API.CONSUMER.INFO.{source.stream}.{source.durable}"
        existing = (await self._request(info_subject, {})).get("config")
        if isinstance(existing, dict) and not existing.get("deliver_subject"):
            self.log.info("bridge.nats.consumer_reused", consumer=where, detail=error[0])
            return
        raise UpstreamError(f"jetstream: consumer {where}: {error[0]}", code=error[1], retry=False)

    # ------------------------------------------------------------------ publish

    async def publish(self, batch: Sequence[Outbound]) -> None:
        limit = int(self._info.get("max_payload", 1024 * 1024))
        parts: list[bytes] = []
        tags: list[int] = []
        for out in batch:
            if not wire.valid_subject(out.target):
                self.link.refused(out.tag, f"nats: invalid subject {out.target!r}")
                continue
            headers = wire.outbound_headers(out.message, (ORIGIN_HEADER, self.config.name))
            token = str(next(self._tokens)) if self.options.jetstream else ""
            reply = f"{self._inbox}.{token}" if token else None
            hpub = wire.HPub(
                subject=out.target, headers=headers, payload=out.message.payload, reply=reply
            )
            data = wire.encode(hpub)
            if len(data) - data.index(b"\r\n") - 4 > limit:  # headers and payload
                self.link.refused(out.tag, f"nats: message larger than max_payload {limit}")
                continue
            if token:
                self._acks[token] = (out.tag, out.target)
            parts.append(data)
            tags.append(out.tag)
        if not parts:
            return
        async with self._output.lock:
            if not self.options.jetstream:
                parts.append(wire.encode(wire.Ping()))
                self._pongs.append(tags)
            await self._send(self._output.take() + b"".join(parts))

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        failures: list[UpstreamError] = []

        async def guard(task: Callable[[], Awaitable[None]]) -> None:
            try:
                await task()
            except UpstreamError as exc:  # raised bare, not in an exception group
                failures.append(exc)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for task in (self._reader, self._output.writer, self._keepalive, self._pull_timer):
                nursery.start_soon(guard, task)
        if failures:
            raise failures[0]

    async def _reader(self) -> None:
        while True:
            self._dispatch(await self._next_event())

    async def _keepalive(self) -> None:
        unanswered = 0
        seen = self._received
        while True:
            await trio.sleep(self.ping_interval)
            if self._received != seen:
                seen, unanswered = self._received, 0
                continue
            if unanswered >= 2:
                raise UpstreamError("nats: no PONG to two PINGs, connection lost")
            unanswered += 1
            self._pongs.append(None)
            self._send_op(wire.Ping())

    async def _pull_timer(self) -> None:
        """Pulls whose end never came. The server drops a pull that expires as a
        message arrives without a 408, and a pull from a consumer that is gone
        without any answer: ask again, and reconnect (which creates the consumer
        again) after two silent pulls in a row. Also asks again after a 409."""
        if not self._pulls:
            return
        while True:
            waiting = [pull.deadline for pull in self._pulls.values() if pull.remaining]
            await trio.sleep_until(min(waiting, default=trio.current_time() + self.pull_expires))
            now = trio.current_time()
            for pull in self._pulls.values():
                if pull.remaining and now >= pull.deadline:
                    pull.silent += 1
                    if pull.silent >= 2:
                        where = f"{pull.source.stream}/{pull.source.durable}"
                        raise UpstreamError(f"jetstream: no answer to two pulls from {where}")
                    pull.remaining = 0
                self._pull(pull)

    # ------------------------------------------------------------------ events

    def _dispatch(self, event: wire.Event) -> None:
        match event:
            case wire.Msg() | wire.HMsg():
                self._on_message(event)
            case wire.Ping():
                self._send_op(wire.Pong())
            case wire.Pong():
                if self._pongs and (tags := self._pongs.popleft()) is not None:
                    for tag in tags:
                        self.link.confirmed(tag)
            case wire.Info():
                self._on_info(event)
            case wire.Err(message=text):
                denied = "authorization violation" in text.lower() or "permissions" in text.lower()
                raise UpstreamError(f"nats: {text}", code=text, retry=not denied)
            case wire.Ok():
                pass
            case _:
                assert_never(event)

    def _on_info(self, event: wire.Info) -> None:
        if event.data.get("ldm") and not self._info.get("ldm"):
            self.log.warning("bridge.nats.lame_duck")  # the server will close us soon
        self._info.update(event.data)
        if isinstance(limit := self._info.get("max_payload"), int):
            self._conn.max_payload = limit + 64 * 1024  # the server's own headers

    def _on_message(self, msg: wire.Msg | wire.HMsg) -> None:
        if msg.sid == "1":
            self._on_reply(msg)
        elif (pull := self._pulls.get(msg.sid)) is not None:
            self._on_pulled(pull, msg)
        elif (rule := self._core.get(msg.sid)) is not None:
            headers = msg.headers if isinstance(msg, wire.HMsg) else ()
            message = wire.inbound_message(headers, msg.payload, 0)
            # Core NATS is at most once: nothing to acknowledge.
            self.link.received(rule, msg.subject, message, no_settle)

    def _on_reply(self, msg: wire.Msg | wire.HMsg) -> None:
        token = msg.subject.rpartition(".")[2]
        if token in self._replies:
            self._replies[token] = msg
            return
        if (pending := self._acks.pop(token, None)) is None:
            return
        tag, subject = pending
        if isinstance(msg, wire.HMsg) and msg.status is not None:
            if msg.status == 503:
                self.link.refused(tag, f"jetstream: no stream captures subject {subject}")
            else:
                self.link.refused(tag, f"jetstream: {msg.status} {msg.description}".rstrip())
            return
        reply = _json(msg.payload)
        error = _api_error(reply)
        if error is not None and error[1] == _UNAVAILABLE:  # no meta leader yet: try again
            raise UpstreamError(f"jetstream: {error[0]}", code=error[1])
        if error is not None:
            self.link.refused(tag, f"jetstream: {error[0]} ({error[1]})")
        elif "stream" in reply:
            self.link.confirmed(tag)
        else:
            self.link.refused(tag, "jetstream: unexpected publish ack")

    def _on_pulled(self, pull: _Pull, msg: wire.Msg | wire.HMsg) -> None:
        pull.silent = 0
        if isinstance(msg, wire.HMsg) and msg.status is not None:
            if msg.status == 100:  # idle heartbeat / flow control: not asked for
                return
            if msg.status in (404, 408, 409) and "deleted" not in msg.description.lower():
                pull.remaining = 0
                if msg.status != 409:  # 409: too many pending or waiting; ask again later
                    self._pull(pull)
                return
            where = f"{pull.source.stream}/{pull.source.durable}"
            raise UpstreamError(f"jetstream: pull from {where}: {msg.status} {msg.description}")
        pull.remaining = max(0, pull.remaining - 1)
        pull.unsettled += 1
        headers = msg.headers if isinstance(msg, wire.HMsg) else ()
        message = wire.inbound_message(headers, msg.payload, 1)
        settle = self._settler(pull, msg.reply)
        self.link.received(pull.rule, msg.subject, message, settle)
        self._pull(pull)

    def _settler(self, pull: _Pull, reply: str | None) -> Settle:
        settled = False

        def settle(ok: bool) -> None:
            nonlocal settled
            if settled or self._closed:
                return
            settled = True
            pull.unsettled -= 1
            if reply:
                self._send_op(wire.Pub(subject=reply, payload=b"+ACK" if ok else b"-NAK"))
            self._pull(pull)

        return settle

    def _pull(self, pull: _Pull) -> None:
        """Ask for as many messages as the rule has room for, unless a pull is out."""
        room = min(self.options.max_ack_pending, self.config.max_in_flight) - pull.unsettled
        if pull.remaining or room <= 0:
            return
        body = {"batch": room, "expires": int(self.pull_expires * _NS)}
        payload = json.dumps(body, separators=(",", ":")).encode()
        source = pull.source
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{source.stream}.{source.durable}"
        self._send_op(wire.Pub(subject=subject, payload=payload, reply=pull.inbox))
        pull.remaining = room
        pull.deadline = trio.current_time() + self.pull_expires + self.pull_grace

    # ------------------------------------------------------------------ I/O

    def _send_op(self, op: wire.Operation) -> None:
        self._output.write(wire.encode(op))

    async def _send(self, data: bytes) -> None:
        """Write ``data`` whole: a write is never cut by cancellation (that would
        leave half a frame, or drop acks), only by ``write_timeout``."""
        assert self._stream is not None
        if self._torn:
            raise UpstreamError("nats: an earlier write did not finish")
        deadline = trio.current_time() + self.write_timeout
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                await self._stream.send_all(data)
            except _IO_ERRORS as exc:
                self._torn = True
                raise UpstreamError(f"nats: connection lost: {exc}") from exc
        if scope.cancelled_caught:
            self._torn = True
            raise UpstreamError(f"nats: a write took more than {self.write_timeout} s")

    async def _next_event(self) -> wire.Event:
        assert self._stream is not None
        while True:
            try:
                event = self._conn.next_event()
            except wire.NatsProtocolError as exc:
                raise UpstreamError(f"nats: protocol error: {exc}") from exc
            if event is wire.CLOSED:
                raise UpstreamError("nats: the server closed the connection")
            if event is not wire.NEED_DATA:
                assert not isinstance(event, type(wire.CLOSED))
                return event
            try:
                data = await self._stream.receive_some(65536)
            except _IO_ERRORS as exc:
                raise UpstreamError(f"nats: connection lost: {exc}") from exc
            self._received += 1
            self._conn.receive_data(data)

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        if self._stream is None:
            return
        for sid in [*self._pulls, *self._core]:
            self._send_op(wire.Unsub(sid=sid))
        self._closed = True
        try:
            if not self._torn:
                await self._output.flush()
        except UpstreamError:
            pass
        finally:
            await trio.aclose_forcefully(self._stream)
            self.log.info("bridge.nats.closed")
