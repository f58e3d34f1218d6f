"""The NATS client protocol, sans-I/O: bytes from the server in, events out; client
operations in, bytes out. Also the bridge's pure mapping (no I/O either): the
inbound source syntax and the core message <-> NATS headers mapping
(docs/bridge-nats.md).

Used like h11 and the gateway's own codecs: ``receive_data(bytes)`` (``b""`` means
end of stream), then ``next_event()`` until it returns ``NEED_DATA`` (or ``CLOSED``
once the server ended the stream between operations); ``encode(op)`` returns the
bytes of a client operation. Short input is always ``NEED_DATA``; anything malformed
raises ``NatsProtocolError``, and keeps raising it: the connection must end.

Server operations (https://docs.nats.io/reference/reference-protocols/nats-protocol):
``INFO {json}``, ``MSG <subject> <sid> [reply-to] <#bytes>``, ``HMSG <subject> <sid>
[reply-to] <#header bytes> <#total bytes>``, ``PING``, ``PONG``, ``+OK``, ``-ERR
'<text>'``. Operation names are case-insensitive and arguments are separated by any
run of spaces or tabs (the server writes an empty reply-to as two spaces). Lines end
with CRLF; a bare LF is accepted too.

HMSG headers are ``NATS/1.0[ <status>[ <description>]]`` then ``Name: value`` lines
and an empty line. Names keep their case (NATS headers are case-sensitive); values
are stripped of surrounding blanks; a name may repeat. The status line is how the
server and JetStream report no responders (503), no messages (404), request timeout
(408) and the like (409, 100) on a message with an empty body.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Final, assert_never

from ..core.message import Message, is_utf8

MAX_CONTROL_LINE: Final = 4096
HEADER_VERSION: Final = "NATS/1.0"
_BLANKS: Final = frozenset(" \t\r\n")
_BAD_NAME: Final = frozenset(" \t\r\n:")


class NatsProtocolError(Exception):
    """The server sent something that is not the NATS protocol; the connection must
    end (there is nothing to send back: a client just closes)."""


class _Sentinel(Enum):
    NEED_DATA = auto()
    CLOSED = auto()


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event()`` needs more bytes before it can return an event."""
CLOSED: Final = _Sentinel.CLOSED
"""The server ended the stream between two operations."""


# ---------------------------------------------------------------- server events


@dataclass(frozen=True, slots=True, kw_only=True)
class Info:
    """The server's INFO: its JSON object (``max_payload``, ``tls_required``,
    ``jetstream``, ``version``, ``ldm``, ...)."""

    data: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg:
    """A message delivered to subscription ``sid``; ``subject`` is the subject it was
    published to, ``reply`` its reply subject (None when it has none)."""

    subject: str
    sid: str
    reply: str | None
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HMsg:
    """A message with headers. ``status`` and ``description`` come from the header
    block's first line (``NATS/1.0 404 No Messages``); ``status`` is None without."""

    subject: str
    sid: str
    reply: str | None
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    status: int | None = None
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """PING: either side asks the other to answer PONG."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """PONG: the answer to the oldest PING not yet answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ok:
    """+OK (only in verbose mode)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Err:
    """-ERR: ``message`` is the server's text without its quotes."""

    message: str


Event = Info | Msg | HMsg | Ping | Pong | Ok | Err


# ---------------------------------------------------------------- client operations


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect:
    """CONNECT with its JSON options (verbose, headers, user, pass, name, ...)."""

    options: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pub:
    subject: str
    payload: bytes
    reply: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HPub:
    subject: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes
    reply: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sub:
    subject: str
    sid: str
    queue: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsub:
    sid: str
    max_msgs: int | None = None


Operation = Connect | Pub | HPub | Sub | Unsub | Ping | Pong


def valid_subject(subject: str, *, wildcards: bool = False) -> bool:
    """Whether ``subject`` is a well-formed subject: non-empty dot-separated tokens
    without blanks; ``*`` and ``>`` (last token only) only when ``wildcards``."""
    if not subject or any(c in _BLANKS for c in subject):
        return False
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            return False
        if token in ("*", ">") and (not wildcards or (token == ">" and i != len(tokens) - 1)):
            return False
    return True


def valid_header_name(name: str) -> bool:
    """Whether ``name`` can be written as a header name (no blanks, no colon, no
    control characters)."""
    return bool(name) and not any(c in _BAD_NAME or ord(c) < 32 or c == "\x7f" for c in name)


def encode_headers(headers: Iterable[tuple[str, str]], status: int | None = None) -> bytes:
    """The header block of an HPUB/HMSG, ending with its empty line."""
    head = HEADER_VERSION if status is None else f"{HEADER_VERSION} {status}"
    lines = [head]
    for name, value in headers:
        if not valid_header_name(name):
            raise ValueError(f"invalid header name {name!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} has a line break in its value")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _check(subject: str, what: str, *, wildcards: bool = False) -> str:
    if not valid_subject(subject, wildcards=wildcards):
        raise ValueError(f"invalid {what} {subject!r}")
    return subject


def encode(op: Operation) -> bytes:
    """The bytes of one client operation. Raises ValueError for what cannot be
    written (a malformed subject or header)."""
    match op:
        case Connect(options=options):
            return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + b"\r\n"
        case Pub(subject=subject, payload=payload, reply=reply):
            reply_part = f" {_check(reply, 'reply subject')}" if reply else ""
            line = f"PUB {_check(subject, 'subject')}{reply_part} {len(payload)}\r\n"
            return line.encode() + payload + b"\r\n"
        case HPub(subject=subject, headers=headers, payload=payload, reply=reply):
            block = encode_headers(headers)
            reply_part = f" {_check(reply, 'reply subject')}" if reply else ""
            total = len(block) + len(payload)
            line = f"HPUB {_check(subject, 'subject')}{reply_part} {len(block)} {total}\r\n"
            return line.encode() + block + payload + b"\r\n"
        case Sub(subject=subject, sid=sid, queue=queue):
            queue_part = f" {_check(queue, 'queue group')}" if queue else ""
            return (
                f"SUB {_check(subject, 'subject', wildcards=True)}{queue_part} {sid}\r\n".encode()
            )
        case Unsub(sid=sid, max_msgs=max_msgs):
            return (
                f"UNSUB {sid}\r\n" if max_msgs is None else f"UNSUB {sid} {max_msgs}\r\n"
            ).encode()
        case Ping():
            return b"PING\r\n"
        case Pong():
            return b"PONG\r\n"
        case _:
            assert_never(op)


def parse_headers(block: bytes) -> tuple[tuple[tuple[str, str], ...], int | None, str]:
    """``(headers, status, description)`` of an HMSG header block. Raises
    NatsProtocolError."""
    text = block.decode("utf-8", errors="replace")
    if not text.endswith("\r\n\r\n"):
        raise NatsProtocolError("header block does not end with an empty line")
    lines = text[:-4].split("\r\n")
    first = lines[0]
    if not first.startswith(HEADER_VERSION):
        raise NatsProtocolError(f"header block starts with {first[:20]!r}, not {HEADER_VERSION}")
    status: int | None = None
    description = ""
    rest = first[len(HEADER_VERSION) :].strip()
    if rest:
        code, _, description = rest.partition(" ")
        if not (code.isdigit() and len(code) == 3):
            raise NatsProtocolError(f"bad status {code[:20]!r} in header block")
        status, description = int(code), description.strip()
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not valid_header_name(name):
            raise NatsProtocolError(f"bad header line {line[:40]!r}")
        headers.append((name, value.strip()))
    return tuple(headers), status, description


def _size(arg: bytes) -> int:
    if not arg.isdigit():
        raise NatsProtocolError(f"bad size {arg[:20]!r}")
    return int(arg)


class NatsConnection:
    """The client side of a NATS connection: reads what the server sends.

    ``max_payload`` bounds a message (headers and body); raise it (or lower it) to
    the server's INFO ``max_payload`` and some slack once known.
    """

    def __init__(
        self, *, max_payload: int = 64 * 1024 * 1024, max_control_line: int = MAX_CONTROL_LINE
    ) -> None:
        self.max_payload = max_payload
        self.max_control_line = max_control_line
        self._buffer = bytearray()
        self._eof = False
        self._error: NatsProtocolError | None = None

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes read from the server; ``b""`` at the end of the stream."""
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Event | _Sentinel:
        """The next complete server operation, NEED_DATA or CLOSED."""
        if self._error is not None:
            raise self._error
        try:
            event = self._parse()
        except NatsProtocolError as exc:
            self._error = exc
            raise
        if event is NEED_DATA and self._eof:
            if self._buffer:
                self._error = NatsProtocolError("the stream ended within an operation")
                raise self._error
            return CLOSED
        return event

    def _parse(self) -> Event | _Sentinel:
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > self.max_control_line:
                raise NatsProtocolError("control line too long")
            return NEED_DATA
        if end > self.max_control_line:
            raise NatsProtocolError("control line too long")
        line = bytes(buffer[: end - 1 if end and buffer[end - 1] == 13 else end])
        parts = line.split(None, 1)
        op = parts[0].upper() if parts else b""
        rest = parts[1] if len(parts) > 1 else b""
        if op in (b"MSG", b"HMSG"):
            return self._message(op == b"HMSG", rest.split(), end + 1)
        del buffer[: end + 1]
        if op == b"PING":
            return Ping()
        if op == b"PONG":
            return Pong()
        if op == b"+OK":
            return Ok()
        if op == b"-ERR":
            text = rest.strip().decode("utf-8", errors="replace")
            if len(text) >= 2 and text[0] == text[-1] == "'":
                text = text[1:-1]
            return Err(message=text)
        if op == b"INFO":
            try:
                data = json.loads(rest)
            except ValueError as exc:
                raise NatsProtocolError(f"INFO is not JSON: {exc}") from None
            if not isinstance(data, dict):
                raise NatsProtocolError("INFO is not a JSON object")
            return Info(data=data)
        raise NatsProtocolError(f"unknown operation {op[:20]!r}")

    def _message(self, with_headers: bool, args: list[bytes], start: int) -> Event | _Sentinel:
        count = len(args) - (4 if with_headers else 3)
        if count not in (0, 1):
            raise NatsProtocolError(
                f"{'HMSG' if with_headers else 'MSG'} with {len(args)} arguments"
            )
        reply = args[2].decode("utf-8", errors="replace") if count else None
        total = _size(args[-1])
        header_size = _size(args[-2]) if with_headers else 0
        if header_size > total:
            raise NatsProtocolError("header size larger than the message")
        if total > self.max_payload:
            raise NatsProtocolError(f"message of {total} bytes, more than {self.max_payload}")
        end = start + total
        if len(self._buffer) < end + 2:
            return NEED_DATA
        if self._buffer[end : end + 2] != b"\r\n":
            raise NatsProtocolError("message not followed by CRLF")
        data = bytes(self._buffer[start:end])
        del self._buffer[: end + 2]
        subject = args[0].decode("utf-8", errors="replace")
        sid = args[1].decode("utf-8", errors="replace")
        if not with_headers:
            return Msg(subject=subject, sid=sid, reply=reply, payload=data)
        headers, status, description = parse_headers(data[:header_size])
        return HMsg(
            subject=subject,
            sid=sid,
            reply=reply,
            headers=headers,
            payload=data[header_size:],
            status=status,
            description=description,
        )


# ---------------------------------------------------------------- the bridge's mapping

_JETSTREAM_PREFIX = "jetstream:"
# Message fields carried as headers; inbound, these names (any case) become fields.
_MSG_ID = "Nats-Msg-Id"
_MAPPED = frozenset(
    {"nats-msg-id", "content-type", "correlation-id", "reply-to", "priority", "expires"}
)


@dataclass(frozen=True, slots=True)
class JetStreamSource:
    """``jetstream:STREAM/DURABLE[/FILTER]``: a durable pull consumer."""

    stream: str
    durable: str
    filter: str | None = None


def parse_source(source: str) -> str | JetStreamSource:
    """An inbound ``from``: a subject (wildcards allowed) or a JetStreamSource.
    Raises ValueError."""
    if not source.startswith(_JETSTREAM_PREFIX):
        if not valid_subject(source, wildcards=True):
            raise ValueError(f"invalid subject {source!r}")
        return source
    parts = source[len(_JETSTREAM_PREFIX) :].split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{source!r}: expected jetstream:STREAM/DURABLE[/FILTER]")
    for name in parts[:2]:
        if any(c in name for c in ".*> \t\r\n"):
            raise ValueError(f"{source!r}: invalid stream or consumer name {name!r}")
    filter_ = parts[2] if len(parts) == 3 else None
    if filter_ is not None and not valid_subject(filter_, wildcards=True):
        raise ValueError(f"{source!r}: invalid filter subject {filter_!r}")
    return JetStreamSource(parts[0], parts[1], filter_)


def outbound_headers(message: Message, origin: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The NATS headers of ``message``: its own (those that cannot be written are
    dropped, line breaks in values become spaces), ``origin`` (the bridge's loop
    guard, which replaces one the message has), and its fields."""
    headers = [
        (name, _one_line(value))
        for name, value in message.headers.items()
        if valid_header_name(name) and name.lower() not in _MAPPED and name != origin[0]
    ]
    headers.append(origin)
    headers.append((_MSG_ID, str(message.message_id)))
    if message.content_type is not None:
        headers.append(("content-type", _one_line(message.content_type)))
    if message.correlation_id is not None:
        correlation = message.correlation_id.decode("utf-8", errors="replace")
        headers.append(("correlation-id", _one_line(correlation)))
    if message.reply_to is not None:
        headers.append(("reply-to", _one_line(message.reply_to)))
    if message.priority != 4:
        headers.append(("priority", str(message.priority)))
    if message.expiry is not None:
        headers.append(("expires", str(int(message.expiry * 1000))))
    return tuple(headers)


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def inbound_message(headers: Iterable[tuple[str, str]], payload: bytes, qos: int) -> Message:
    """A core message from a NATS message (the last value of a repeated name wins)."""
    own: dict[str, str] = {}
    fields: dict[str, str] = {}
    for name, value in headers:
        if name.lower() in _MAPPED:
            fields[name.lower()] = value
        else:
            own[name] = value
    priority = 4
    if (text := fields.get("priority")) is not None:
        if text.isdigit() and 0 <= int(text) <= 9:
            priority = int(text)
        else:
            own["priority"] = text
    expiry = None
    if (text := fields.get("expires")) is not None:
        try:
            expiry = int(text) / 1000
        except ValueError:
            own["expires"] = text
    content_type = fields.get("content-type")
    correlation = fields.get("correlation-id")
    return Message(
        destination="",
        payload=payload,
        headers=own,
        qos=qos,
        priority=priority,
        expiry=expiry,
        content_type=content_type,
        text=content_type is not None and content_type.startswith("text/") and is_utf8(payload),
        correlation_id=correlation.encode() if correlation is not None else None,
        reply_to=fields.get("reply-to"),
    )
