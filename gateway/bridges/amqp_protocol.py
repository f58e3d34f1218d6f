"""AMQP 0-9-1 without I/O: bytes to pamqp frames and back, and the field mapping.

pamqp encodes and decodes single frames; this module adds what a connection needs
around it: a decoder that buffers partial input and joins a content method
(basic.deliver, basic.return) with its header and body frames into one event, an
encoder that splits a body at the negotiated frame size, the mapping between the
core ``Message`` and ``basic`` properties (docs/bridge-amqp.md), the bridge's
target and source syntax, and the bookkeeping of publisher confirms. Nothing here
reads a clock or touches a socket: the bridge passes ``now`` in.
"""

from __future__ import annotations

import datetime
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pamqp import body as pamqp_body
from pamqp import commands, constants, exceptions, frame, header, heartbeat
from pamqp.base import Frame

from ..core.message import Message

# RabbitMQ's default frame_max; also our cap when a server says 0 ("no limit").
DEFAULT_FRAME_MAX: Final = 131_072
# A content body frame's own overhead: type, channel, size (7) and the end octet.
FRAME_OVERHEAD: Final = 8
SHORTSTR_MAX: Final = 255

# AMQP reply codes (spec section 1.2) the bridge reports.
FRAME_ERROR: Final = 501
SYNTAX_ERROR: Final = 502
UNEXPECTED_FRAME: Final = 505


class AmqpProtocolError(Exception):
    """The peer broke the framing rules; ``reply_code`` is what a connection.close
    would carry back."""

    def __init__(self, message: str, reply_code: int = FRAME_ERROR) -> None:
        super().__init__(message)
        self.reply_code = reply_code


# --- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodFrame:
    """A method that carries no content (everything but deliver, return, get-ok)."""

    channel: int
    method: Frame


@dataclass(frozen=True, slots=True, kw_only=True)
class Content:
    """A content method with its properties and whole body."""

    channel: int
    method: commands.Basic.Deliver | commands.Basic.Return | commands.Basic.GetOk
    properties: commands.Basic.Properties
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Undecodable:
    """A content method whose properties could not be decoded (its body was
    skipped): the receiver rejects it rather than lose the connection."""

    channel: int
    method: commands.Basic.Deliver | commands.Basic.Return | commands.Basic.GetOk
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionMismatch:
    """The server answered our protocol header with its own: it speaks another
    AMQP version and is about to close the socket."""

    version: tuple[int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Eof:
    """The peer closed the stream (after every complete frame was returned)."""


Event = MethodFrame | Content | Undecodable | Heartbeat | VersionMismatch | Eof


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

_CONTENT_METHODS = (commands.Basic.Deliver, commands.Basic.Return, commands.Basic.GetOk)
_FRAME_HEAD = struct.Struct(">BHI")


@dataclass(frozen=True, slots=True, kw_only=True)
class _BadHeader:
    body_size: int
    reason: str


@dataclass(slots=True)
class _Partial:
    method: commands.Basic.Deliver | commands.Basic.Return | commands.Basic.GetOk
    properties: commands.Basic.Properties | None = None
    error: str | None = None
    size: int = -1
    parts: list[bytes] | None = None
    received: int = 0


class Decoder:
    """Bytes in, events out: ``receive_data(bytes)`` (empty = EOF), then
    ``next_event()`` until it returns NEED_DATA. ``frame_max`` bounds one frame
    (raise it after connection.tune); ``body_max`` bounds one message body."""

    def __init__(
        self, *, frame_max: int = DEFAULT_FRAME_MAX, body_max: int = 256 * 1024 * 1024
    ) -> None:
        self.frame_max = frame_max
        self.body_max = body_max
        self._buffer = bytearray()
        self._offset = 0
        self._eof = False
        self._started = False
        self._partial: dict[int, _Partial] = {}

    def receive_data(self, data: bytes | bytearray) -> None:
        if not data:
            self._eof = True
            return
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_event(self) -> Event | _NeedData:
        while True:
            raw = self._next_frame()
            if raw is None:
                if self._eof:
                    return Eof()
                return NEED_DATA
            channel, value = raw
            event = self._assemble(channel, value)
            if event is not None:
                return event

    def _next_frame(self) -> tuple[int, frame.FrameTypes | _BadHeader] | None:
        available = len(self._buffer) - self._offset
        start = self._offset
        if not self._started:
            # The only place a protocol header can come from a server: instead of
            # connection.start, when it refuses our version.
            if available < 1:
                return None
            if self._buffer[start] == ord("A"):
                if available < 8:
                    return None
                if bytes(self._buffer[start : start + 5]) != b"AMQP\x00":
                    raise AmqpProtocolError("the server sent a malformed protocol header")
                self._offset += 8
                major, minor, revision = self._buffer[start + 5 : start + 8]
                return 0, header.ProtocolHeader(major, minor, revision)
        if available < 7:
            return None
        frame_type, channel, size = _FRAME_HEAD.unpack_from(self._buffer, start)
        if size + FRAME_OVERHEAD > self.frame_max:
            raise AmqpProtocolError(f"a frame of {size} bytes is over frame_max {self.frame_max}")
        end = start + 7 + size + 1
        if len(self._buffer) < end:
            return None
        self._started = True
        if frame_type not in (
            constants.FRAME_METHOD,
            constants.FRAME_HEADER,
            constants.FRAME_BODY,
            constants.FRAME_HEARTBEAT,
        ):
            raise AmqpProtocolError(f"unknown frame type {frame_type}")
        try:
            consumed, _, value = frame.unmarshal(bytes(self._buffer[start:end]))
        except exceptions.UnmarshalingException as exc:
            if frame_type != constants.FRAME_HEADER or size < 12:
                raise AmqpProtocolError(f"undecodable frame: {exc}", SYNTAX_ERROR) from None
            # One message's properties pamqp cannot read (a short string that is not
            # UTF-8): the framing is intact, so only that message is lost, not the
            # connection (which would receive it again, and fail again, forever).
            self._offset = end
            body_size = struct.unpack_from(">Q", self._buffer, start + 7 + 4)[0]
            return channel, _BadHeader(body_size=body_size, reason=str(exc))
        self._offset += consumed
        return channel, value

    def _assemble(self, channel: int, value: frame.FrameTypes | _BadHeader) -> Event | None:
        partial = self._partial.get(channel)
        if isinstance(value, heartbeat.Heartbeat):
            return Heartbeat()
        if isinstance(value, header.ProtocolHeader):
            return VersionMismatch(
                version=(value.major_version, value.minor_version, value.revision)
            )
        if isinstance(value, header.ContentHeader | _BadHeader):
            if partial is None or partial.parts is not None:
                raise AmqpProtocolError("a content header without its method", UNEXPECTED_FRAME)
            if value.body_size > self.body_max:
                raise AmqpProtocolError(f"a body of {value.body_size} bytes is over the limit")
            if isinstance(value, _BadHeader):
                partial.error = value.reason
            else:
                partial.properties = value.properties
            partial.size = value.body_size
            partial.parts = []
            return self._complete(channel, partial)
        if isinstance(value, pamqp_body.ContentBody):
            if partial is None or partial.parts is None:
                raise AmqpProtocolError("a content body without its header", UNEXPECTED_FRAME)
            partial.parts.append(value.value)
            partial.received += len(value.value)
            if partial.received > partial.size:
                raise AmqpProtocolError("content body frames longer than the header said")
            return self._complete(channel, partial)
        if partial is not None:
            raise AmqpProtocolError("a method inside a message's content", UNEXPECTED_FRAME)
        if isinstance(value, _CONTENT_METHODS):
            self._partial[channel] = _Partial(value)
            return None
        return MethodFrame(channel=channel, method=value)

    def _complete(self, channel: int, partial: _Partial) -> Content | Undecodable | None:
        if partial.received < partial.size:
            return None
        del self._partial[channel]
        if partial.error is not None:
            return Undecodable(channel=channel, method=partial.method, reason=partial.error)
        assert partial.properties is not None
        assert partial.parts is not None
        return Content(
            channel=channel,
            method=partial.method,
            properties=partial.properties,
            body=b"".join(partial.parts),
        )


# --- encoding -------------------------------------------------------------------


def protocol_header() -> bytes:
    return header.ProtocolHeader().marshal()


def heartbeat_frame() -> bytes:
    return heartbeat.Heartbeat().marshal()


def method(channel: int, value: Frame) -> bytes:
    return frame.marshal(value, channel)


def content(
    channel: int,
    value: Frame,
    properties: commands.Basic.Properties,
    payload: bytes,
    frame_max: int,
) -> bytes:
    """A content method, its header and the body split into frames of at most
    ``frame_max`` bytes (a zero frame_max means our default)."""
    chunk = (frame_max or DEFAULT_FRAME_MAX) - FRAME_OVERHEAD
    parts = [
        frame.marshal(value, channel),
        frame.marshal(header.ContentHeader(0, len(payload), properties), channel),
    ]
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        parts.append(
            frame.marshal(pamqp_body.ContentBody(bytes(view[start : start + chunk])), channel)
        )
    return b"".join(parts)


# A publish's method frame depends only on where it goes: encoded once per target.
_PUBLISH_FRAMES: dict[tuple[int, str, str, bool], bytes] = {}
_PUBLISH_FRAMES_MAX = 4096
_FRAME_END = b"\xce"
_BASIC_CLASS = 60
# Basic property flags, in the order AMQP lists the properties (0-9-1, 4.2.6.1).
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _PRIORITY = 0x8000, 0x2000, 0x1000, 0x0800
_CORRELATION_ID, _REPLY_TO, _EXPIRATION, _MESSAGE_ID, _TIMESTAMP = (
    0x0400,
    0x0200,
    0x0100,
    0x0080,
    0x0040,
)


def _shortstr(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > SHORTSTR_MAX:
        raise MappingError(
            f"{value[:40]!r}... is longer than AMQP's {SHORTSTR_MAX}-byte short string"
        )
    return bytes((len(data),)) + data


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + _FRAME_END


def publish_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The Basic.Publish method frame (the same bytes pamqp writes), cached per target."""
    key = (channel, exchange, routing_key, mandatory)
    cached = _PUBLISH_FRAMES.get(key)
    if cached is None:
        payload = (
            struct.pack(">HHH", _BASIC_CLASS, 40, 0)
            + _shortstr(exchange)
            + _shortstr(routing_key)
            + bytes((1 if mandatory else 0,))
        )
        cached = _frame(1, channel, payload)
        if len(_PUBLISH_FRAMES) >= _PUBLISH_FRAMES_MAX:
            _PUBLISH_FRAMES.clear()
        _PUBLISH_FRAMES[key] = cached
    return cached


def publish_content(
    channel: int,
    message: Message,
    extra_headers: Mapping[str, str],
    now: float,
    frame_max: int,
) -> bytes:
    """The content header and body frames of ``message`` (after its publish frame): the
    properties of ``properties_for``, encoded directly rather than through pamqp's
    generic property encoder (a fifth of the bridge's CPU per message; the bytes are
    the same, tests/bridges/test_amqp_encoding.py). Raises MappingError."""
    flags = _HEADERS | _DELIVERY_MODE | _PRIORITY | _MESSAGE_ID | _TIMESTAMP
    fields = []
    # As pamqp: an empty short string is no property at all.
    if message.content_type:
        flags |= _CONTENT_TYPE
        fields.append(_shortstr(message.content_type))
    table = []
    # As pamqp: names sorted, and cut to AMQP's 128-byte field names.
    for name, value in sorted({**message.headers, **extra_headers}.items()):
        key = name.encode("utf-8")[:128]
        data = value.encode("utf-8")
        table.append(bytes((len(key),)) + key + b"S" + struct.pack(">I", len(data)) + data)
    body = b"".join(table)
    fields.append(struct.pack(">I", len(body)) + body)
    fields.append(bytes((2 if message.qos > 0 else 1, message.priority)))
    correlation = message.correlation_id
    if correlation:
        flags |= _CORRELATION_ID
        fields.append(_shortstr(correlation.decode("utf-8", errors="replace")))
    reply_to = reply_to_amqp(message.reply_to) if message.reply_to is not None else ""
    if reply_to:
        flags |= _REPLY_TO
        fields.append(_shortstr(reply_to))
    if message.expiry is not None:
        flags |= _EXPIRATION
        # 0 would mean "deliver now or drop": an expired message gets the shortest life.
        fields.append(_shortstr(str(max(1, math.ceil((message.expiry - now) * 1000)))))
    fields.append(_shortstr(str(message.message_id)))
    fields.append(struct.pack(">Q", int(message.timestamp)))
    payload = message.payload
    header = struct.pack(">HHQH", _BASIC_CLASS, 0, len(payload), flags) + b"".join(fields)
    parts = [_frame(2, channel, header)]
    chunk = (frame_max or DEFAULT_FRAME_MAX) - FRAME_OVERHEAD
    for start in range(0, len(payload), chunk):
        parts.append(_frame(3, channel, payload[start : start + chunk]))
    return b"".join(parts)


# --- the field mapping (docs/mapping.md, AMQP column) --------------------------


class MappingError(ValueError):
    """A message field AMQP cannot carry (a short string over 255 bytes)."""


def reply_to_amqp(reply_to: str) -> str:
    """The core's neutral reply-to as an AMQP one: a queue's name, or a topic's
    name with levels joined by ``.`` (a routing key on the topic exchange)."""
    if reply_to.startswith("$queue/"):
        return reply_to[len("$queue/") :]
    return reply_to.replace("/", ".")


def _short(field: str, value: str) -> str:
    if len(value.encode("utf-8")) > SHORTSTR_MAX:
        raise MappingError(f"{field} is longer than AMQP's {SHORTSTR_MAX}-byte short string")
    return value


def properties_for(
    message: Message, extra_headers: Mapping[str, str], now: float
) -> commands.Basic.Properties:
    """The basic properties of ``message``, its headers joined by ``extra_headers``
    (the bridge's origin mark). Raises MappingError."""
    headers: dict[str, object] = {**message.headers, **extra_headers}
    expiration = None
    if message.expiry is not None:
        # An AMQP expiration of 0 means "deliver now or drop": an already expired
        # message gets the shortest real lifetime instead.
        expiration = str(max(1, math.ceil((message.expiry - now) * 1000)))
    return commands.Basic.Properties(
        content_type=_short("content_type", message.content_type)
        if message.content_type is not None
        else None,
        headers=headers,  # type: ignore[arg-type]
        delivery_mode=2 if message.qos > 0 else 1,
        priority=message.priority,
        correlation_id=_short(
            "correlation_id", message.correlation_id.decode("utf-8", errors="replace")
        )
        if message.correlation_id is not None
        else None,
        reply_to=_short("reply_to", reply_to_amqp(message.reply_to))
        if message.reply_to is not None
        else None,
        expiration=expiration,
        message_id=str(message.message_id),
        timestamp=datetime.datetime.fromtimestamp(int(message.timestamp), tz=datetime.UTC),
    )


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def message_from(properties: commands.Basic.Properties, payload: bytes, now: float) -> Message:
    """The core message of a delivery (its destination is left empty: the inbound
    rule's ``to`` decides it)."""
    headers = {str(k): _text(v) for k, v in (properties.headers or {}).items()}
    expiry = None
    if properties.expiration:
        try:
            expiry = now + max(0, int(properties.expiration)) / 1000
        except ValueError:
            expiry = None
    priority = properties.priority
    timestamp = properties.timestamp
    return Message(
        destination="",
        payload=payload,
        headers=headers,
        qos=1 if properties.delivery_mode == 2 else 0,
        priority=4 if priority is None else min(9, max(0, priority)),
        expiry=expiry,
        content_type=properties.content_type or None,
        correlation_id=properties.correlation_id.encode("utf-8")
        if properties.correlation_id
        else None,
        reply_to=properties.reply_to or None,
        timestamp=timestamp.timestamp() if isinstance(timestamp, datetime.datetime) else now,
    )


# --- addresses ------------------------------------------------------------------

DEFAULT_TOPIC_EXCHANGE: Final = "amq.topic"


def parse_target(target: str) -> tuple[str, str]:
    """(exchange, routing key) of an outbound target. Raises ValueError."""
    if target.startswith("exchange:"):
        exchange, _, key = target[len("exchange:") :].partition("/")
        if not exchange:
            raise ValueError(f"no exchange name in {target!r}")
        return exchange, key
    if target.startswith(("queue:", "$queue/")):
        name = target.partition(":")[2] if target.startswith("queue:") else target[7:]
        if not name:
            raise ValueError(f"no queue name in {target!r}")
        return "", name
    return DEFAULT_TOPIC_EXCHANGE, target


def parse_source(source: str) -> tuple[str | None, str]:
    """(exchange, binding key) of an inbound source, or (None, queue name) for a
    queue. Raises ValueError."""
    if source.startswith("queue:"):
        if not source[len("queue:") :]:
            raise ValueError(f"no queue name in {source!r}")
        return None, source[len("queue:") :]
    if source.startswith("exchange:"):
        exchange, slash, key = source[len("exchange:") :].partition("/")
        if not exchange:
            raise ValueError(f"no exchange name in {source!r}")
        return exchange, key if slash else "#"
    return DEFAULT_TOPIC_EXCHANGE, source


# --- publisher confirms ---------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    tag: int
    exchange: str
    routing_key: str
    mandatory: bool
    returned: str | None = None


# What a confirm settles: (tag, None) confirmed, (tag, reason) refused.
Outcomes = list[tuple[int, str | None]]


class Confirms:
    """The publishes of a confirm-mode channel awaiting basic.ack or basic.nack:
    sequence numbers start at 1 after confirm.select and count every publish."""

    def __init__(self) -> None:
        self._next = 1
        self._lowest = 1  # no publish below this one is pending
        self._return_cursor = 1
        self._pending: dict[int, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def sent(self, tag: int, exchange: str, routing_key: str, *, mandatory: bool) -> None:
        self._pending[self._next] = _Pending(tag, exchange, routing_key, mandatory)
        self._next += 1

    def acked(self, delivery_tag: int, *, multiple: bool) -> Outcomes:
        return self._settle(delivery_tag, multiple, None)

    def nacked(self, delivery_tag: int, *, multiple: bool) -> Outcomes:
        return self._settle(delivery_tag, multiple, "nacked by the upstream")

    def _settle(self, delivery_tag: int, multiple: bool, refusal: str | None) -> Outcomes:
        first = self._lowest if multiple else delivery_tag
        outcomes: Outcomes = []
        for seq in range(first, delivery_tag + 1):
            pending = self._pending.pop(seq, None)
            if pending is not None:
                outcomes.append((pending.tag, refusal or pending.returned))
        while self._lowest < self._next and self._lowest not in self._pending:
            self._lowest += 1
        return outcomes

    def returned(self, exchange: str, routing_key: str, reply: str) -> bool:
        """Mark the publish a basic.return names as refused ("unroutable: REPLY")
        when its ack comes. RabbitMQ sends the return before the ack of the same
        publish, and returns in publish order: it is the first pending mandatory
        publish to this exchange and key after the last one returned."""
        for seq in range(max(self._return_cursor, self._lowest), self._next):
            pending = self._pending.get(seq)
            if (
                pending is not None
                and pending.mandatory
                and pending.returned is None
                and pending.exchange == exchange
                and pending.routing_key == routing_key
            ):
                pending.returned = f"unroutable: {reply}"
                self._return_cursor = seq + 1
                return True
        return False

    def missing_exchange(self, reply_text: str) -> Outcomes:
        """The first pending publish to the exchange a channel.close 404 names
        ("NOT_FOUND - no exchange 'x' in vhost '/'"), refused with that reply."""
        for seq in range(self._lowest, self._next):
            pending = self._pending.get(seq)
            if pending is not None and f"'{pending.exchange}'" in reply_text:
                del self._pending[seq]
                return [(pending.tag, f"404 {reply_text}")]
        return []
