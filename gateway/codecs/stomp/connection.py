"""The STOMP connection state machine, sans-I/O, for either side of a link.

Used like h11 and the MQTT codec: ``receive_data(bytes)`` (``b""`` means end of
stream), then ``next_event()`` until it returns ``NEED_DATA``; ``send(frame)``
returns the bytes to write. Events are ``Frame``, ``Heartbeat`` (a lone EOL
between frames), ``NEED_DATA`` and ``CLOSED`` (the peer ended the stream between
frames). Anything malformed raises ``StompError``, whose ``error_frame()`` is the
ERROR to send back before closing; after one, ``next_event()`` raises it again.

Versions. ``version`` is None until negotiated. A server sets it when it SENDS a
CONNECTED frame (its ``version`` header, default "1.0"; choose it with
``negotiate``); a client when it RECEIVES one. Until then frames are read with
CONNECT rules: no header escapes, and 1.0's required headers.

Rules chosen where the spec leaves room (all checked when a frame is received;
``send`` only refuses what cannot be written, whatever the direction, so tests can
encode any frame):

* Framing is lenient about line ends in every version: CRLF or LF. Headers are
  split at their FIRST colon, so a raw ':' in a value is accepted (CONNECT frames
  and 1.0 need that); names must not be empty. Values are never trimmed, not even
  in 1.0 (a 1.0 peer that pads ``login: x`` gets ``" x"``).
* A NUL where a header line would start ends the frame with an empty body, as in
  the spec's own ``DISCONNECT``/``RECEIPT`` examples, which lack the blank line.
* Limits: ``max_header_length`` bounds each header line (raw, without its EOL);
  ``max_headers`` the header count; ``max_frame_size`` the frame from its command
  to its NUL. A content-length beyond the limit is refused as soon as the headers
  are read; without one, the frame is refused once the buffered bytes reach the
  limit with no NUL. The head is bounded by the first two limits, not the third.
  A command line is refused as soon as it cannot be the start of a command.
* Direction: a server accepts client commands only, a client server commands
  only. A server's first frame must be CONNECT or STOMP; a client's first must be
  CONNECTED or ERROR. A STOMP frame must offer 1.1 or 1.2 in ``accept-version``
  (the STOMP command does not exist in 1.0). NACK does not exist in 1.0.
* Required headers (missing ones raise): SEND ``destination``; SUBSCRIBE
  ``destination`` (+ ``id`` from 1.1); UNSUBSCRIBE ``id`` (1.0: ``id`` or
  ``destination``); ACK/NACK ``id`` in 1.2, ``message-id`` and ``subscription``
  in 1.1, ACK ``message-id`` in 1.0; BEGIN/COMMIT/ABORT ``transaction``; MESSAGE
  ``destination``, ``message-id`` (+ ``subscription`` from 1.1); RECEIPT
  ``receipt-id``. A CONNECT/STOMP that offers 1.2 must carry ``host`` (spec 1.2;
  ``require_host=False`` relaxes this: stomp.js and other clients omit it).
  ``heart-beat`` on CONNECT/STOMP/CONNECTED must be two integers. A CONNECTED must
  name a version this codec speaks and, if this client sent the CONNECT, one it
  offered.
* Bodies on frames other than SEND, MESSAGE and ERROR are read and handed over
  (the spec says they MUST NOT have one; 1.0 says the body is ignored): the
  listener ignores them.
* DISCONNECT ends the session: ``state`` becomes ``CLOSED`` and any later frame
  raises (a client MUST NOT send one). So does an ERROR (sent by a server,
  received by a client). EOLs still read as heartbeats; end of stream as CLOSED.
  A server reads no frame between the CONNECT and its CONNECTED/ERROR: answer
  the CONNECT before calling ``next_event`` again.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Final

from .errors import StompError
from .frames import (
    CLIENT_COMMANDS,
    HEARTBEAT,
    SERVER_COMMANDS,
    UNESCAPED_COMMANDS,
    VERSIONS,
    Frame,
    Heartbeat,
    offered_versions,
)
from .wire import UNESCAPERS, Unescape, encode_frame, parse_heartbeat


class _Sentinel(Enum):
    NEED_DATA = auto()
    CLOSED = auto()


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event()`` needs more bytes before it can return an event."""

CLOSED: Final = _Sentinel.CLOSED
"""The peer ended the stream cleanly between frames."""

Event = Frame | Heartbeat | _Sentinel


class Role(Enum):
    SERVER = auto()
    CLIENT = auto()


class State(Enum):
    AWAIT_CONNECT = auto()
    """Server: nothing received yet. Client: no CONNECTED received yet."""
    CONNECTING = auto()
    """Server only: a CONNECT/STOMP was received and has not been answered."""
    CONNECTED = auto()
    CLOSED = auto()
    """After DISCONNECT or ERROR, or a protocol error: no more frames may arrive."""


MAX_FRAME_SIZE: Final = 1 << 20
MAX_HEADERS: Final = 100
MAX_HEADER_LENGTH: Final = 8192

# Compacting the receive buffer costs a copy; do it only once this much is consumed.
_COMPACT_AT = 65536

_COMMAND_BYTES: Final = {command.encode(): command for command in CLIENT_COMMANDS | SERVER_COMMANDS}
_COMMAND_PREFIXES: Final = frozenset(
    command[:cut] for command in _COMMAND_BYTES for cut in range(len(command) + 1)
)
_LONGEST_COMMAND: Final = max(len(command) for command in _COMMAND_BYTES)

_REQUIRED_10: Final = {
    "SEND": ("destination",),
    "SUBSCRIBE": ("destination",),
    "ACK": ("message-id",),
    "BEGIN": ("transaction",),
    "COMMIT": ("transaction",),
    "ABORT": ("transaction",),
    "MESSAGE": ("destination", "message-id"),
    "RECEIPT": ("receipt-id",),
}
_REQUIRED_11: Final = {
    **_REQUIRED_10,
    "SUBSCRIBE": ("destination", "id"),
    "UNSUBSCRIBE": ("id",),
    "ACK": ("message-id", "subscription"),
    "NACK": ("message-id", "subscription"),
    "MESSAGE": ("destination", "message-id", "subscription"),
}
_REQUIRED: Final = {
    "1.0": _REQUIRED_10,
    "1.1": _REQUIRED_11,
    "1.2": {**_REQUIRED_11, "ACK": ("id",), "NACK": ("id",)},
}


# The frames the fast path may read, by role and version: those a connected session
# receives whose only checks are their required headers (no change of state).
_FAST_SERVER_10: Final = ("SEND", "SUBSCRIBE", "ACK", "BEGIN", "COMMIT", "ABORT")
_FAST_SERVER: Final = (*_FAST_SERVER_10, "UNSUBSCRIBE", "NACK")
_FAST_CLIENT: Final = ("MESSAGE", "RECEIPT")
_FastTable = dict[bytes, tuple[str, tuple[str, ...]]]
_FAST_TABLES: Final[dict[tuple[Role, str], _FastTable]] = {
    (role, version): {
        command.encode(): (command, _REQUIRED[version].get(command, ())) for command in commands
    }
    for version in VERSIONS
    for role, commands in (
        (Role.SERVER, _FAST_SERVER_10 if version == "1.0" else _FAST_SERVER),
        (Role.CLIENT, _FAST_CLIENT),
    )
}
_NO_FAST: Final[_FastTable] = {}


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class STOMPConnection:
    """One side of a STOMP connection: framing, escapes, limits, direction, order."""

    __slots__ = (
        "_accepted",
        "_body_start",
        "_buf",
        "_command",
        "_eof",
        "_error",
        "_fast",
        "_frame_headers",
        "_headers",
        "_length",
        "_line",
        "_pos",
        "_scan",
        "_start",
        "_unescape",
        "max_frame_size",
        "max_header_length",
        "max_headers",
        "require_host",
        "role",
        "state",
        "version",
    )

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        max_frame_size: int = MAX_FRAME_SIZE,
        max_headers: int = MAX_HEADERS,
        max_header_length: int = MAX_HEADER_LENGTH,
        require_host: bool = True,
    ) -> None:
        self.role = role
        self.max_frame_size = max_frame_size
        self.max_headers = max_headers
        self.max_header_length = max_header_length
        self.require_host = require_host
        self.state = State.AWAIT_CONNECT
        self.version: str | None = None
        self._fast = _NO_FAST
        # Versions the CONNECT offered (server: received; client: sent), once known.
        self._accepted: frozenset[str] | None = None
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: StompError | None = None
        # The frame being read: -1 between frames, else the index of its first byte.
        self._start = -1
        self._line = 0  # start of the next header line to read
        self._command = ""
        self._unescape: Unescape | None = None
        self._headers: list[tuple[str, str]] = []
        self._frame_headers: tuple[tuple[str, str], ...] = ()
        self._body_start = -1  # -1 while the head is incomplete
        self._length: int | None = None  # content-length, when given
        self._scan = 0  # where the search for the NUL resumes

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event:
        """Return the next frame or heartbeat, ``NEED_DATA`` or ``CLOSED``."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except StompError as exc:
            self._error = exc
            self._enter(State.CLOSED)
            raise

    def _next(self) -> Event:
        buf = self._buf
        end = len(buf)
        if self._start < 0:
            pos = self._pos
            if pos >= end:
                if pos:
                    del buf[:pos]
                    self._pos = 0
                return CLOSED if self._eof else NEED_DATA
            first = buf[pos]
            if first == 10:
                self._pos = pos + 1
                return HEARTBEAT
            if first == 13:
                if pos + 1 >= end:
                    return self._short()
                if buf[pos + 1] != 10:
                    raise StompError("malformed frame", "a CR between frames is not followed by LF")
                self._pos = pos + 2
                return HEARTBEAT
            if pos >= _COMPACT_AT:
                del buf[:pos]
                self._pos = pos = 0
                end = len(buf)
            if self._fast:
                frame = self._fast_frame(buf, pos, end)
                if frame is not None:
                    return frame
            self._start = self._line = pos
            self._command = ""
            self._headers = []
            self._body_start = -1
        if self._body_start < 0 and not (
            (not self._command and self._read_whole_head(buf, end)) or self._read_head(buf, end)
        ):
            return self._short()
        return self._read_body(buf, end)

    def _fast_frame(self, buf: bytearray, start: int, end: int) -> Frame | None:
        """The hot path: a whole, plain frame of a common command in a connected session.

        Plain: LF line ends, no escapes, no CR or NUL in the head, within the limits,
        its required headers present. Anything else returns None, with nothing
        consumed, for the general reader to handle (or refuse) the same bytes.
        """
        eol = buf.find(b"\n", start, start + _LONGEST_COMMAND + 1)
        if eol < 0:
            return None
        entry = self._fast.get(bytes(buf[start:eol]))
        if entry is None:
            return None
        blank = buf.find(b"\n\n", eol, min(end, start + self.max_header_length + 2))
        if blank < 0:
            return None
        command, required = entry
        headers = []
        length = None
        if eol < blank:
            try:
                text = buf[eol + 1 : blank].decode()
            except UnicodeDecodeError:
                return None
            if "\\" in text or "\r" in text or "\x00" in text:
                return None
            lines = text.split("\n")
            if len(lines) > self.max_headers:
                return None
            for line in lines:
                name, colon, value = line.partition(":")
                if not name or not colon:
                    return None
                if length is None and name == "content-length":
                    length = value
                headers.append((name, value))
        for name in required:
            for key, _ in headers:
                if key == name:
                    break
            else:
                return None
        body_start = blank + 2
        if length is None:
            nul = buf.find(b"\x00", body_start, min(end, start + self.max_frame_size))
            if nul < 0:
                return None
        else:
            if not (length.isascii() and length.isdigit()) or len(length) > 15:
                return None
            nul = body_start + int(length)
            if nul >= end or buf[nul] or nul - start >= self.max_frame_size:
                return None
        if nul - body_start < 4096:
            body = bytes(buf[body_start:nul])
        else:
            with memoryview(buf) as view:
                body = bytes(view[body_start:nul])
        after = nul + 1
        if after >= _COMPACT_AT or after == end:
            del buf[:after]
            self._pos = 0
        else:
            self._pos = after
        return Frame(command=command, headers=tuple(headers), body=body)

    def _short(self) -> Event:
        if self._eof:
            raise StompError("truncated frame", "the stream ended inside a frame")
        return NEED_DATA

    def _read_whole_head(self, buf: bytearray, end: int) -> bool:
        """The fast path: the whole head is buffered, with LF line ends and within the
        limits. Decode it at once; False leaves the rest to ``_read_head``, which
        finds the same errors line by line.
        """
        start = self._start
        blank = buf.find(b"\n\n", start, min(end, start + self.max_header_length + 2))
        if (
            blank < 0
            or buf.find(b"\r", start, blank) >= 0
            or buf.find(b"\n\x00", start, blank) >= 0
        ):
            return False
        eol = buf.find(b"\n", start, blank + 1)
        if eol - start > _LONGEST_COMMAND:
            return False
        self._start_frame(bytes(buf[start:eol]))
        self._line = eol + 1
        headers = self._headers
        if eol < blank:
            try:
                text = buf[eol + 1 : blank].decode()
            except UnicodeDecodeError:
                return False
            lines = text.split("\n")
            if len(lines) > self.max_headers:
                return False
            unescape = self._unescape if "\\" in text else None
            for line in lines:
                name, colon, value = line.partition(":")
                if not colon:
                    raise StompError("malformed header", f"header line {line[:100]!r} has no ':'")
                if unescape is not None and "\\" in line:
                    name = unescape(name)
                    value = unescape(value)
                if not name:
                    raise StompError("malformed header", "a header name is empty")
                headers.append((name, value))
        self._line = blank + 2
        self._end_head(blank + 2)
        return True

    def _read_head(self, buf: bytearray, end: int) -> bool:
        """Read header lines; True once the head is complete (``_body_start`` set)."""
        line = self._line
        headers = self._headers
        while True:
            if line < end and buf[line] == 0 and self._command:
                # A NUL where a header line starts: the frame ends without a body.
                self._line = line
                self._end_head(line, bodiless=True)
                return True
            eol = buf.find(b"\n", line, end)
            if eol < 0:
                self._line = line
                self._check_partial_line(buf, line, end)
                return False
            stop = eol - 1 if eol > line and buf[eol - 1] == 13 else eol
            if not self._command:
                if stop - line > _LONGEST_COMMAND:
                    raise self._unknown(bytes(buf[line : line + 40]))
                self._start_frame(bytes(buf[line:stop]))
            elif stop == line:
                self._line = eol + 1
                self._end_head(eol + 1)
                return True
            else:
                if stop - line > self.max_header_length:
                    raise self._too_long()
                if len(headers) >= self.max_headers:
                    raise StompError(
                        "too many headers", f"a frame may carry at most {self.max_headers} headers"
                    )
                try:
                    text = buf[line:stop].decode()
                except UnicodeDecodeError:
                    raise StompError("invalid UTF-8", "a header line is not UTF-8") from None
                name, colon, value = text.partition(":")
                if not colon:
                    raise StompError("malformed header", f"header line {text[:100]!r} has no ':'")
                unescape = self._unescape
                if unescape is not None and "\\" in text:
                    name = unescape(name)
                    value = unescape(value)
                if not name:
                    raise StompError("malformed header", "a header name is empty")
                headers.append((name, value))
            line = eol + 1

    def _check_partial_line(self, buf: bytearray, line: int, end: int) -> None:
        """Refuse an incomplete line that already breaks a limit (the same errors, in
        the same order, as when the whole line is read)."""
        size = end - line
        if size and buf[end - 1] == 13:
            size -= 1  # it may be the CR of a CRLF
        if not self._command:
            if size > _LONGEST_COMMAND or bytes(buf[line : line + size]) not in _COMMAND_PREFIXES:
                raise self._unknown(bytes(buf[line : line + min(size, 40)]))
        elif size > self.max_header_length:
            raise self._too_long()

    def _too_long(self) -> StompError:
        return StompError(
            "header line too long", f"a header line may be at most {self.max_header_length} bytes"
        )

    @staticmethod
    def _unknown(raw: bytes) -> StompError:
        return StompError("unknown command", f"{raw!r} is not a STOMP command")

    def _start_frame(self, raw: bytes) -> None:
        """Check the command line against the role, state and version."""
        command = _COMMAND_BYTES.get(raw)
        if command is None:
            raise self._unknown(raw[:40])
        state = self.state
        if self.role is Role.SERVER:
            if command not in CLIENT_COMMANDS:
                raise StompError("unexpected frame", f"{command} is sent by servers, not clients")
            if state is State.AWAIT_CONNECT:
                if command != "CONNECT" and command != "STOMP":
                    raise StompError(
                        "not connected", f"the first frame must be CONNECT or STOMP, not {command}"
                    )
            elif state is State.CONNECTED:
                if command == "CONNECT" or command == "STOMP":
                    raise StompError("already connected", f"{command} in a connected session")
                if command == "NACK" and self.version == "1.0":
                    raise StompError("unknown command", "NACK does not exist in STOMP 1.0")
            elif state is State.CONNECTING:
                raise StompError("unexpected frame", f"{command} before the CONNECT was answered")
            else:
                raise StompError("unexpected frame", f"{command} after the session ended")
        else:
            if command not in SERVER_COMMANDS:
                raise StompError("unexpected frame", f"{command} is sent by clients, not servers")
            if state is State.AWAIT_CONNECT:
                if command != "CONNECTED" and command != "ERROR":
                    raise StompError(
                        "not connected",
                        f"the first frame must be CONNECTED or ERROR, not {command}",
                    )
            elif state is State.CONNECTED:
                if command == "CONNECTED":
                    raise StompError("already connected", "CONNECTED in a connected session")
            else:
                raise StompError("unexpected frame", f"{command} after the session ended")
        self._command = command
        self._unescape = None if command in UNESCAPED_COMMANDS else UNESCAPERS.get(self.version)

    def _end_head(self, body_start: int, *, bodiless: bool = False) -> None:
        """The head is read: check its headers, then learn how the body ends."""
        headers = self._frame_headers = tuple(self._headers)
        command = self._command
        required = _REQUIRED[self.version or "1.0"].get(command)
        if required is not None:
            for name in required:
                if _first(headers, name) is None:
                    raise self._missing(command, name, headers)
        elif command == "CONNECT" or command == "STOMP" or command == "CONNECTED":
            self._check_connect(command, headers)
        elif (  # 1.0: UNSUBSCRIBE names an id or a destination
            command == "UNSUBSCRIBE"
            and _first(headers, "id") is None
            and _first(headers, "destination") is None
        ):
            raise self._missing(command, "id", headers)
        length = _first(headers, "content-length")
        if length is None:
            self._length = None
        else:
            if not (length.isascii() and length.isdigit()):
                raise StompError(
                    "invalid content-length",
                    f"content-length {length[:40]!r} is not a byte count",
                    receipt=_first(headers, "receipt"),
                )
            size = body_start - self._start + 1
            if len(length) > 15 or size + int(length) > self.max_frame_size:
                raise self._too_large(headers)
            self._length = int(length)
            if bodiless and self._length:
                raise self._mismatch(headers)
        self._body_start = self._scan = body_start

    def _check_connect(self, command: str, headers: tuple[tuple[str, str], ...]) -> None:
        if command == "CONNECTED":
            version = _first(headers, "version")
            if version is None:
                version = "1.0"
            if version not in VERSIONS:
                raise StompError(
                    "unsupported version", f"the server chose version {version[:40]!r}"
                )
            if self._accepted is not None and version not in self._accepted:
                raise StompError(
                    "unsupported version", f"the server chose {version}, which was not offered"
                )
        else:
            accept = _first(headers, "accept-version")
            offered = offered_versions(accept)
            if command == "STOMP" and not offered & {"1.1", "1.2"}:
                raise StompError(
                    "unsupported version",
                    "a STOMP frame must offer version 1.1 or 1.2 in accept-version",
                )
            if "1.2" in offered and self.require_host and _first(headers, "host") is None:
                raise self._missing(command, "host", headers)
        parse_heartbeat(_first(headers, "heart-beat"))

    @staticmethod
    def _missing(command: str, name: str, headers: tuple[tuple[str, str], ...]) -> StompError:
        return StompError(
            "missing header",
            f"{command} requires a {name!r} header",
            receipt=_first(headers, "receipt"),
        )

    def _too_large(self, headers: tuple[tuple[str, str], ...]) -> StompError:
        return StompError(
            "frame too large",
            f"a frame may be at most {self.max_frame_size} bytes",
            receipt=_first(headers, "receipt"),
        )

    @staticmethod
    def _mismatch(headers: tuple[tuple[str, str], ...]) -> StompError:
        return StompError(
            "content-length mismatch",
            "the body is not followed by NUL after content-length bytes",
            receipt=_first(headers, "receipt"),
        )

    def _read_body(self, buf: bytearray, end: int) -> Event:
        start = self._body_start
        length = self._length
        if length is not None:
            nul = start + length
            if nul >= end:
                return self._short()
            if buf[nul]:
                raise self._mismatch(self._frame_headers)
        else:
            limit = self._start + self.max_frame_size  # the NUL must come before this
            nul = buf.find(b"\x00", self._scan, min(end, limit))
            if nul < 0:
                if end >= limit:
                    raise self._too_large(self._frame_headers)
                self._scan = end
                return self._short()
        if nul == start:
            body = b""
        else:
            with memoryview(buf) as view:
                body = bytes(view[start:nul])
        after = nul + 1
        if after >= _COMPACT_AT or after == end:
            del buf[:after]
            self._pos = 0
        else:
            self._pos = after
        self._start = -1
        frame = Frame(command=self._command, headers=self._frame_headers, body=body)
        self._received(frame)
        return frame

    def _enter(self, state: State) -> None:
        self.state = state
        if state is State.CONNECTED:
            self._fast = _FAST_TABLES[self.role, self.version or "1.0"]
        else:
            self._fast = _NO_FAST

    def _received(self, frame: Frame) -> None:
        command = frame.command
        if self.role is Role.SERVER:
            if command == "CONNECT" or command == "STOMP":
                self._accepted = offered_versions(frame.get("accept-version"))
                self._enter(State.CONNECTING)
            elif command == "DISCONNECT":
                self._enter(State.CLOSED)
        elif command == "CONNECTED":
            self.version = frame.get("version", "1.0")
            self._enter(State.CONNECTED)
        elif command == "ERROR":
            self._enter(State.CLOSED)

    # -------------------------------------------------------------------- sending

    def send(self, event: Frame | Heartbeat) -> bytes:
        """Encode ``event`` in this connection's version (see ``encode_frame``).

        A server's CONNECTED sets ``version`` (its ``version`` header, default 1.0),
        which must be one the received CONNECT offered (``ValueError`` otherwise, or
        when a CONNECTED was already sent). A server's ERROR ends the session. A
        client's CONNECT/STOMP records the versions it offers.
        """
        if isinstance(event, Heartbeat):
            return b"\n"
        command = event.command
        if self.role is Role.SERVER:
            if command == "CONNECTED":
                return self._send_connected(event)
            data = encode_frame(event, self.version)
            if command == "ERROR":
                self._enter(State.CLOSED)
            return data
        data = encode_frame(event, self.version)
        if command == "CONNECT" or command == "STOMP":
            self._accepted = offered_versions(event.get("accept-version"))
        return data

    def _send_connected(self, frame: Frame) -> bytes:
        if self.state is State.CONNECTED or self.state is State.CLOSED:
            raise ValueError("CONNECTED sent twice, or after the session ended")
        version = frame.get("version", "1.0")
        if version not in VERSIONS:
            raise ValueError(f"version {version!r} is not one of {', '.join(VERSIONS)}")
        if self._accepted is not None and version not in self._accepted:
            raise ValueError(f"version {version} was not offered by the client's CONNECT")
        data = encode_frame(frame, None)
        self.version = version
        self._enter(State.CONNECTED)
        return data

    def heartbeat(self) -> bytes:
        """The bytes of one heart-beat: a single LF (valid in every version)."""
        return b"\n"
