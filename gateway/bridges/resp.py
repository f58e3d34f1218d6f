"""RESP2, the Redis wire protocol: a sans-I/O codec (no trio, no sockets).

A command goes out as an array of bulk strings (``encode_command``; a pipeline is
their concatenation). Replies come in through ``RespParser``: ``receive_data(bytes)``
(empty bytes = EOF), then ``next_event()`` until it returns ``NEED_DATA``; it
returns one whole reply at a time, or ``CLOSED`` once the peer ended the stream
between replies. Short input is "need more data", never an error.

A reply is a plain value:

==============  ======  ===================================
RESP2           prefix  Python
==============  ======  ===================================
simple string   ``+``   ``str``
error           ``-``   ``ErrorReply`` (returned, not raised)
integer         ``:``   ``int``
bulk string     ``$``   ``bytes``; ``$-1`` (null) is ``None``
array           ``*``   ``list`` of replies; ``*-1`` is ``None``
==============  ======  ===================================

Malformed input raises ``RespProtocolError``: the connection cannot go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, TypeAlias

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ErrorReply",
    "Reply",
    "RespParser",
    "RespProtocolError",
    "encode_command",
]

# Bounds on what a reply may hold (Redis's own proto-max-bulk-len is 512 MiB).
MAX_BULK: Final = 512 * 1024 * 1024
MAX_LINE: Final = 64 * 1024
MAX_ARRAY: Final = 1024 * 1024
MAX_DEPTH: Final = 32


class _Sentinel(Enum):
    NEED_DATA = auto()
    CLOSED = auto()


NEED_DATA: Final = _Sentinel.NEED_DATA
CLOSED: Final = _Sentinel.CLOSED


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """An error reply (``-WRONGTYPE Operation against a key ...``). ``code`` is its
    first word, the Redis error prefix (``ERR``, ``WRONGTYPE``, ``BUSYGROUP``, ...)."""

    message: str

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0]


Reply: TypeAlias = "str | bytes | int | ErrorReply | list[Reply] | None"


class RespProtocolError(Exception):
    """The peer sent something that is not RESP2 (or exceeds the bounds above)."""


Arg: TypeAlias = bytes | str | int


def _arg_bytes(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    raise TypeError(f"a command argument is bytes, str or int, not {type(arg).__name__}")


def encode_command(*args: Arg) -> bytes:
    """``args`` as a RESP2 array of bulk strings (str as UTF-8, int as decimal)."""
    if not args:
        raise ValueError("a command has at least one argument")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg_bytes(arg)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def _length(line: bytes, what: str, limit: int) -> int:
    """The decimal length or count on a ``$`` or ``*`` line (-1 is null)."""
    try:
        value = int(line)
    except ValueError:
        raise RespProtocolError(f"invalid {what} length {line[:32]!r}") from None
    if value < -1 or value > limit:
        raise RespProtocolError(f"{what} length {value} out of range")
    return value


@dataclass(slots=True)
class _Frame:
    """An array being read: how many elements it has, and those read so far."""

    count: int
    items: list[Reply]


class RespParser:
    """Replies out of a byte stream, one at a time, in order.

    Incremental: every byte is looked at once, however the input is split; a
    partly read array is kept on a stack of frames.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._stack: list[_Frame] = []
        self._eof = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; ``b""`` means it closed the stream."""
        if self._eof:
            raise RuntimeError("data after EOF")
        if not data:
            self._eof = True
            return
        if self._pos and self._pos >= len(self._buffer) // 2:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_event(self) -> Reply | _Sentinel:
        """The next whole reply, ``NEED_DATA`` or ``CLOSED``."""
        buffer = self._buffer
        while True:
            pos = self._pos
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                if len(buffer) - pos > MAX_LINE:
                    raise RespProtocolError("a reply line is too long")
                return self._short()
            if end - pos > MAX_LINE:
                raise RespProtocolError("a reply line is too long")
            prefix = buffer[pos]
            line = bytes(buffer[pos + 1 : end])
            after = end + 2
            value: Reply
            if prefix == 0x24:  # $ bulk string
                length = _length(line, "bulk", MAX_BULK)
                if length < 0:
                    value = None
                else:
                    stop = after + length
                    if len(buffer) < stop + 2:
                        return self._short()
                    if buffer[stop : stop + 2] != b"\r\n":
                        raise RespProtocolError("a bulk string does not end with CRLF")
                    value = bytes(buffer[after:stop])
                    after = stop + 2
            elif prefix == 0x2A:  # * array
                count = _length(line, "array", MAX_ARRAY)
                if count > 0:
                    if len(self._stack) >= MAX_DEPTH:
                        raise RespProtocolError("arrays nested too deep")
                    self._stack.append(_Frame(count, []))
                    self._pos = after
                    continue
                value = None if count < 0 else []
            elif prefix == 0x2B:  # + simple string
                value = line.decode("utf-8", "replace")
            elif prefix == 0x2D:  # - error
                value = ErrorReply(message=line.decode("utf-8", "replace"))
            elif prefix == 0x3A:  # : integer
                try:
                    value = int(line)
                except ValueError:
                    raise RespProtocolError(f"invalid integer {line[:32]!r}") from None
            else:
                raise RespProtocolError(f"unknown reply type {bytes([prefix])!r}")
            self._pos = after
            # Put the value in the arrays it completes, innermost first.
            while self._stack:
                frame = self._stack[-1]
                frame.items.append(value)
                if len(frame.items) < frame.count:
                    break
                self._stack.pop()
                value = frame.items
            else:
                return value

    def _short(self) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        if self._stack or self._pos < len(self._buffer):
            raise RespProtocolError("the connection closed in the middle of a reply")
        return CLOSED
