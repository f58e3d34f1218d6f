"""The Redis Streams bridge kind, over a RESP2 client of our own (docs/bridge-redis.md).

Targets (outbound ``to``) and sources (inbound ``from``) are stream keys, taken
as they are. An outbound message becomes one ``XADD`` entry; an inbound rule
reads its stream through the consumer group ``group`` as consumer ``consumer``
and acknowledges (``XACK``) each entry once the core has it.

Two connections, because ``XREADGROUP ... BLOCK`` holds its connection while it
waits: the *publisher* carries every ``XADD`` and ``XACK`` (pipelined; a deque
says what each reply in turn answers), the *reader* (opened only when there are
inbound rules) carries ``XREADGROUP`` and ``XAUTOCLAIM``. Nothing is lost across
a restart: the reader first reads the entries this consumer was given but never
acknowledged (``XREADGROUP ... 0``), and now and then claims those another
consumer left pending longer than ``claim_idle`` (``XAUTOCLAIM``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec
import structlog
import trio

from ..core.message import EMPTY_HEADERS, Message, is_utf8
from .base import (
    ORIGIN_HEADER,
    Endpoint,
    InboundRule,
    Link,
    Outbound,
    Settle,
    Upstream,
    UpstreamError,
    no_settle,
    open_stream,
    upstream_error_in,
)
from .config import BridgeConfig
from .resp import CLOSED, NEED_DATA, Arg, ErrorReply, Reply, RespParser, RespProtocolError
from .resp import encode_command as command

log = structlog.get_logger(__name__)

DEFAULT_PORTS = {"redis": 6379, "rediss": 6380}
TLS_SCHEMES = frozenset({"rediss"})
# How long past its BLOCK time the reader waits for a reply before giving up.
REPLY_TIMEOUT = 30.0
READ_SIZE = 65536
# The field names of a stream entry (docs/bridge-redis.md, "Stream fields").
PAYLOAD = b"payload"
HEADER_PREFIX = b"h:"
_ORIGIN_FIELD = HEADER_PREFIX + ORIGIN_HEADER.encode()


class Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[bridges.redis]``."""

    group: Annotated[str, msgspec.Meta(min_length=1)] = "gateway"
    start: Literal["$", "0"] = "$"
    consumer: str = ""  # "" = the bridge's name
    maxlen: Annotated[int, msgspec.Meta(ge=1)] | None = None
    batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    block: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    claim_idle: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    db: Annotated[int, msgspec.Meta(ge=0)] = 0


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (``BLOCK 0`` would wait for ever)."""
    return max(1, round(seconds * 1000))


def database(endpoint: Endpoint, default: int) -> int:
    """The database number: the URL's path (``/2``) when it has one, else ``default``."""
    path = endpoint.path.strip("/")
    if not path:
        return default
    if not path.isdigit():
        raise UpstreamError(f"the URL path {endpoint.path!r} is not a database number", retry=False)
    return int(path)


class _Connection:
    """One RESP2 connection: bytes out, replies in, every failure an UpstreamError."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = RespParser()

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError(f"redis connection lost: {exc}") from exc

    async def reply(self) -> Reply:
        while True:
            try:
                event = self.parser.next_event()
            except RespProtocolError as exc:
                raise UpstreamError(f"redis protocol error: {exc}") from exc
            if event is CLOSED:
                raise UpstreamError("redis closed the connection")
            if event is not NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamError(f"redis connection lost: {exc}") from exc
            self.parser.receive_data(data)

    async def call(self, *args: Arg) -> Reply:
        await self.send(command(*args))
        return await self.reply()

    async def aclose(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()


def _entries(value: Reply) -> list[tuple[bytes, list[Reply] | None]]:
    """``[[id, [field, value, ...]], ...]`` as (id, fields); fields None for an
    entry deleted from the stream while pending."""
    if not isinstance(value, list):
        raise UpstreamError(f"redis: expected a list of entries, got {type(value).__name__}")
    entries = []
    for entry in value:
        if entry is None:
            continue  # Redis 6.2 XAUTOCLAIM: a deleted entry without its id
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], bytes)
            or not (entry[1] is None or isinstance(entry[1], list))
        ):
            raise UpstreamError("redis: a stream entry is not [id, fields]")
        entries.append((entry[0], entry[1]))
    return entries


def _streams(value: Reply) -> list[tuple[bytes, list[tuple[bytes, list[Reply] | None]]]]:
    """An XREADGROUP reply, ``[[key, entries], ...]`` (None: nothing within BLOCK)."""
    if value is None:
        return []
    if isinstance(value, ErrorReply):
        raise UpstreamError(f"redis XREADGROUP: {value.message}", code=value.code)
    if not isinstance(value, list):
        raise UpstreamError("redis: an XREADGROUP reply is not a list")
    streams = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes):
            raise UpstreamError("redis: an XREADGROUP stream is not [key, entries]")
        streams.append((item[0], _entries(item[1])))
    return streams


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def entry_message(fields: Sequence[Reply], qos: int) -> Message:
    """The core message for a stream entry's ``[field, value, ...]``: see
    docs/bridge-redis.md, "Stream fields"."""
    pairs = [
        (name, value)
        for name, value in zip(fields[::2], fields[1::2], strict=False)
        if isinstance(name, bytes) and isinstance(value, bytes)
    ]
    if not any(name == PAYLOAD for name, _ in pairs):
        document = {_text(name): _text(value) for name, value in pairs}
        return Message(
            destination="",
            payload=msgspec.json.encode(document),
            qos=qos,
            content_type="application/json",
            text=True,
        )
    payload = b""
    headers: dict[str, str] = {}
    content_type = reply_to = None
    correlation_id = None
    priority = 4
    expiry = None
    for name, value in pairs:
        if name == PAYLOAD:
            payload = value
        elif name.startswith(HEADER_PREFIX):
            headers[_text(name[2:])] = _text(value)
        elif name == b"content-type":
            content_type = _text(value)
        elif name == b"correlation-id":
            correlation_id = value
        elif name == b"reply-to":
            reply_to = _text(value)
        elif name == b"priority":
            if value.isdigit() and int(value) <= 9:
                priority = int(value)
        elif name == b"expires" and value.isdigit() and int(value) > 0:
            expiry = int(value) / 1000
        # message-id and timestamp are the sender's: the gateway assigns its own.
    text = (
        content_type is not None
        and (content_type.startswith("text/") or content_type.startswith("application/json"))
        and is_utf8(payload)
    )
    return Message(
        destination="",
        payload=payload,
        headers=headers or EMPTY_HEADERS,
        qos=qos,
        priority=priority,
        expiry=expiry,
        content_type=content_type,
        text=text,
        correlation_id=correlation_id,
        reply_to=reply_to,
    )


class _Unsettled:
    """An inbound entry handed to one or more rules, acked once every rule settled it."""

    __slots__ = ("left", "ok")

    def __init__(self, left: int) -> None:
        self.left = left
        self.ok = True


class RedisUpstream(Upstream):
    separator = "/"

    def __init__(
        self, config: BridgeConfig, options: object, link: Link, inbound: Sequence[InboundRule]
    ) -> None:
        super().__init__(config, options, link, inbound)
        assert isinstance(options, Options)
        self.options = options
        self._group = options.group.encode()
        self._consumer = (options.consumer or config.name).encode()
        # Stream key -> the inbound rules reading it (a key is read once).
        self._rules: dict[bytes, list[InboundRule]] = {}
        for rule in inbound:
            self._rules.setdefault(rule.source.encode(), []).append(rule)
        self._publisher: _Connection | None = None
        self._reader: _Connection | None = None
        # What each publisher reply answers, in order: an XADD's tag, or None for an XACK.
        self._replies: deque[int | None] = deque()
        self._last_reply = 0.0  # trio.current_time() of the last reply, or when one was owed
        self._write_lock = trio.Lock()
        self._acks: dict[bytes, list[bytes]] = {}
        self._acks_queued = trio.Event()
        # Entries handed to the link and not yet settled, bounded by 2 * batch.
        self._unsettled: dict[tuple[bytes, bytes], _Unsettled] = {}
        self._room = trio.Event()
        self._max_unsettled = 2 * options.batch

    # -- connecting --------------------------------------------------------------------

    async def open(self) -> None:
        try:
            endpoint = Endpoint.parse(self.config.url, DEFAULT_PORTS, TLS_SCHEMES)
        except ValueError as exc:
            raise UpstreamError(f"bad redis URL: {exc}", retry=False) from None
        db = database(endpoint, self.options.db)
        self._publisher = await self._connect(endpoint, db, "publish")
        if not self._rules:
            return
        self._reader = await self._connect(endpoint, db, "read")
        await self._reader.send(
            b"".join(
                command("XGROUP", "CREATE", key, self._group, self.options.start, "MKSTREAM")
                for key in self._rules
            )
        )
        for key in self._rules:
            reply = await self._reader.reply()
            if isinstance(reply, ErrorReply) and reply.code != "BUSYGROUP":
                raise UpstreamError(
                    f"redis XGROUP CREATE {_text(key)}: {reply.message}",
                    code=reply.code,
                    retry=False,
                )

    async def _connect(self, endpoint: Endpoint, db: int, role: str) -> _Connection:
        conn = _Connection(await open_stream(self.config, endpoint))
        try:
            await self._hello(conn, endpoint, db, f"gateway.{self.config.name}.{role}")
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        return conn

    @staticmethod
    async def _hello(conn: _Connection, endpoint: Endpoint, db: int, name: str) -> None:
        """AUTH (when the URL has a password), SELECT, CLIENT SETNAME (what CLIENT
        LIST shows), PING: one write, then a reply to each."""
        steps: list[tuple[str, bytes]] = []
        if endpoint.password is not None:
            auth: tuple[Arg, ...] = (endpoint.password,)
            if endpoint.username:
                auth = (endpoint.username, endpoint.password)
            steps.append(("AUTH", command("AUTH", *auth)))
        if db:
            steps.append(("SELECT", command("SELECT", db)))
        steps.append(("CLIENT SETNAME", command("CLIENT", "SETNAME", name)))
        steps.append(("PING", command("PING")))
        await conn.send(b"".join(data for _, data in steps))
        for step, _ in steps:
            reply = await conn.reply()
            if isinstance(reply, ErrorReply) and step != "CLIENT SETNAME":  # a name is optional
                # AUTH refused, NOAUTH, a database out of range: all are settings.
                raise UpstreamError(f"redis {step}: {reply.message}", code=reply.code, retry=False)

    # -- publishing --------------------------------------------------------------------

    def _xadd(self, out: Outbound) -> bytes:
        message = out.message
        args: list[Arg] = ["XADD", out.target]
        if self.options.maxlen is not None:
            args += ["MAXLEN", "~", self.options.maxlen]
        args += ["*", PAYLOAD, message.payload]
        for name, value in message.headers.items():
            if name != ORIGIN_HEADER:
                args += [HEADER_PREFIX + name.encode(), value]
        args += [_ORIGIN_FIELD, self.config.name]
        if message.content_type is not None:
            args += ["content-type", message.content_type]
        if message.correlation_id is not None:
            args += ["correlation-id", message.correlation_id]
        if message.reply_to is not None:
            args += ["reply-to", message.reply_to]
        if message.priority != 4:
            args += ["priority", message.priority]
        if message.expiry is not None:
            args += ["expires", round(message.expiry * 1000)]
        args += ["message-id", message.message_id, "timestamp", round(message.timestamp * 1000)]
        return command(*args)

    async def publish(self, batch: Sequence[Outbound]) -> None:
        conn = self._opened()
        data = b"".join(self._xadd(out) for out in batch)
        async with self._write_lock:
            self._owe_replies()
            self._replies.extend(out.tag for out in batch)
            await conn.send(data)

    def _opened(self) -> _Connection:
        if self._publisher is None:
            raise RuntimeError("the upstream is not open")
        return self._publisher

    async def _read_replies(self, conn: _Connection) -> None:
        """Match each publisher reply to what it answers: an XADD's id confirms its
        tag, an error refuses it; an XACK's count (or error) needs nothing."""
        while True:
            reply = await conn.reply()
            if not self._replies:
                raise UpstreamError("redis sent a reply nothing asked for")
            self._last_reply = trio.current_time()
            tag = self._replies.popleft()
            if tag is None:
                if isinstance(reply, ErrorReply):
                    log.warning("redis.xack.failed", bridge=self.config.name, error=reply.message)
            elif isinstance(reply, ErrorReply):
                self.link.refused(tag, f"redis: {reply.message}")
            elif isinstance(reply, bytes):
                self.link.confirmed(tag)
            else:
                raise UpstreamError(f"redis: unexpected XADD reply {reply!r}")

    def _owe_replies(self) -> None:
        """Start the reply clock when replies start being owed."""
        if not self._replies:
            self._last_reply = trio.current_time()

    async def _watch_replies(self) -> None:
        """A connection that owes replies and sends none for REPLY_TIMEOUT is dead."""
        while True:
            await trio.sleep(REPLY_TIMEOUT / 4)
            if self._replies and trio.current_time() - self._last_reply > REPLY_TIMEOUT:
                raise UpstreamError(f"redis sent no reply for {REPLY_TIMEOUT} s")

    async def _write_acks(self, conn: _Connection) -> None:
        """Send the XACKs that settles queued: one per stream key, as they come."""
        while True:
            await self._acks_queued.wait()
            self._acks_queued = trio.Event()
            acks, self._acks = self._acks, {}
            if not acks:
                continue
            data = b"".join(command("XACK", key, self._group, *ids) for key, ids in acks.items())
            async with self._write_lock:
                self._owe_replies()
                self._replies.extend([None] * len(acks))
                await conn.send(data)

    # -- receiving ---------------------------------------------------------------------

    def _ack(self, key: bytes, entry_id: bytes) -> None:
        self._acks.setdefault(key, []).append(entry_id)
        self._acks_queued.set()

    def _settler(self, key: bytes, entry_id: bytes, unsettled: _Unsettled) -> Settle:
        done = False

        def settle(ok: bool) -> None:
            nonlocal done
            if done:
                return
            done = True
            unsettled.left -= 1
            unsettled.ok = unsettled.ok and ok
            if unsettled.left:
                return
            del self._unsettled[key, entry_id]
            self._room.set()
            if unsettled.ok:
                self._ack(key, entry_id)
            # else the entry stays pending: XAUTOCLAIM takes it again after claim_idle.

        return settle

    def _deliver(self, key: bytes, entries: Iterable[tuple[bytes, list[Reply] | None]]) -> None:
        rules = self._rules.get(key)
        if rules is None:
            raise UpstreamError(f"redis: entries from a stream not asked for: {_text(key)}")
        for entry_id, fields in entries:
            if fields is None:
                self._ack(key, entry_id)  # deleted from the stream while pending: forget it
                continue
            if (key, entry_id) in self._unsettled:
                continue  # claimed again while still with the core
            acked = sum(1 for rule in rules if rule.qos > 0)
            unsettled = _Unsettled(acked)
            if acked:
                self._unsettled[key, entry_id] = unsettled
            else:
                self._ack(key, entry_id)  # at most once: acked as it is taken
            for rule in rules:
                message = entry_message(fields, rule.qos)
                settle = self._settler(key, entry_id, unsettled) if rule.qos > 0 else no_settle
                self.link.received(rule.index, rule.source, message, settle)

    async def _wait_for_room(self) -> int:
        """Wait until fewer than 2 * batch entries are unsettled; how many more may come."""
        while len(self._unsettled) >= self._max_unsettled:
            self._room = trio.Event()
            await self._room.wait()
        return min(self.options.batch, self._max_unsettled - len(self._unsettled))

    async def _call(self, conn: _Connection, block: float, *args: Arg) -> Reply:
        with trio.move_on_after(block + REPLY_TIMEOUT):
            return await conn.call(*args)
        raise UpstreamError(f"redis did not answer {args[0]!r} within {block + REPLY_TIMEOUT} s")

    async def _read_own_pending(self, conn: _Connection) -> None:
        """Entries given to this consumer before and never acked (a restart)."""
        after = dict.fromkeys(self._rules, b"0")
        while after:
            count = await self._wait_for_room()
            args: list[Arg] = ["XREADGROUP", "GROUP", self._group, self._consumer]
            args += ["COUNT", count, "STREAMS", *after, *after.values()]
            reply = await self._call(conn, 0, *args)
            done = set(after)
            for key, entries in _streams(reply):
                if entries:
                    self._deliver(key, entries)
                    after[key] = entries[-1][0]
                    done.discard(key)
            for key in done:
                del after[key]

    async def _claim(self, conn: _Connection, cursors: dict[bytes, bytes]) -> None:
        """Take over entries pending longer than claim_idle (a dead consumer's, or
        ours refused by the core), one COUNT per key per round."""
        for key in self._rules:
            count = await self._wait_for_room()
            args: list[Arg] = ["XAUTOCLAIM", key, self._group, self._consumer]
            args += [_ms(self.options.claim_idle), cursors[key], "COUNT", count]
            reply = await self._call(conn, 0, *args)
            if isinstance(reply, ErrorReply):
                raise UpstreamError(f"redis XAUTOCLAIM: {reply.message}", code=reply.code)
            if not isinstance(reply, list) or len(reply) < 2 or not isinstance(reply[0], bytes):
                raise UpstreamError("redis: an XAUTOCLAIM reply is not [cursor, entries, ...]")
            cursors[key] = reply[0]
            self._deliver(key, _entries(reply[1]))

    async def _read_inbound(self, conn: _Connection) -> None:
        await self._read_own_pending(conn)
        options = self.options
        keys = list(self._rules)
        cursors = dict.fromkeys(keys, b"0-0")
        next_claim = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_claim:
                await self._claim(conn, cursors)
                now = trio.current_time()
                next_claim = now + options.claim_idle / 2
            block = min(options.block, next_claim - now)
            count = await self._wait_for_room()
            args: list[Arg] = ["XREADGROUP", "GROUP", self._group, self._consumer]
            args += ["COUNT", count, "BLOCK", _ms(block), "STREAMS", *keys, *[">"] * len(keys)]
            reply = await self._call(conn, block, *args)
            for key, entries in _streams(reply):
                self._deliver(key, entries)

    # -- running -----------------------------------------------------------------------

    async def run(self) -> None:
        publisher = self._opened()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_replies, publisher)
                nursery.start_soon(self._write_acks, publisher)
                nursery.start_soon(self._watch_replies)
                if self._reader is not None:
                    nursery.start_soon(self._read_inbound, self._reader)
        except BaseExceptionGroup as group:
            error = upstream_error_in(group)
            if error is None:
                raise
            raise error from None

    async def close(self) -> None:
        for conn in (self._reader, self._publisher):
            if conn is not None:
                await conn.aclose()
