"""Header value escaping and frame encoding, per protocol version.

Escapes (spec "Value Encoding"): 1.1 has ``\\n`` ``\\c`` ``\\\\``; 1.2 adds ``\\r``;
1.0 has none; CONNECT, STOMP and CONNECTED frames are never escaped. Any other
backslash sequence in a 1.1/1.2 header is a fatal protocol error.

Encoding refuses (``ValueError``) only what the version cannot put on the wire
unambiguously, and takes a fast path, with no per-header work beyond formatting,
when no name or value holds a special character.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from .errors import StompError
from .frames import COMMANDS, UNESCAPED_COMMANDS, Frame

Unescape = Callable[[str], str]

_ESCAPE_RE: Final = re.compile(r"\\(.?)", re.DOTALL)


def _unescaper(table: dict[str, str], version: str) -> Unescape:
    def replace(match: re.Match[str]) -> str:
        try:
            return table[match.group(1)]
        except KeyError:
            raise StompError(
                "invalid header escape",
                f"'{match.group(0)}' is not an escape sequence in STOMP {version}",
            ) from None

    def unescape(text: str) -> str:
        return _ESCAPE_RE.sub(replace, text)

    return unescape


_UNESCAPE_11: Final = {"n": "\n", "c": ":", "\\": "\\"}
UNESCAPERS: Final[dict[str | None, Unescape]] = {
    "1.1": _unescaper(_UNESCAPE_11, "1.1"),
    "1.2": _unescaper({**_UNESCAPE_11, "r": "\r"}, "1.2"),
}
"""Header unescaping by version; a version absent here (1.0, None) has no escapes."""


def _escape_11(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")


def _escape_12(text: str) -> str:
    return _escape_11(text).replace("\r", "\\r")


def _header_line(name: str, value: str, mode: str | None) -> str:
    """``name:value`` for one header in ``mode`` ("1.1", "1.2" or None for no escapes)."""
    if not name:
        raise ValueError("a header name cannot be empty")
    if name[0] == "\x00":
        # The decoder reads a NUL where a header line starts as the end of the frame.
        raise ValueError(f"header name {name!r} cannot start with NUL")
    if mode == "1.2":
        return f"{_escape_12(name)}:{_escape_12(value)}"
    # Without \r escapes, a CR ending a value would read as part of a CRLF line end.
    if value.endswith("\r"):
        raise ValueError(f"header {name!r}: a value ending in CR cannot be sent in this version")
    if mode == "1.1":
        return f"{_escape_11(name)}:{_escape_11(value)}"
    if ":" in name or "\n" in name or "\n" in value:
        raise ValueError(f"header {name!r}: ':' in a name or LF cannot be sent without escapes")
    return f"{name}:{value}"


def _check_command(command: str) -> None:
    if not command or any(char in command for char in "\n\r:\x00"):
        raise ValueError(f"{command!r} cannot be sent as a command")


def _checked_length(headers: tuple[tuple[str, str], ...], body: bytes) -> bool:
    """Whether ``headers`` hold a content-length; if so, the first must match ``body``."""
    for name, value in headers:
        if name == "content-length":
            if not (value.isascii() and value.isdigit()) or int(value) != len(body):
                raise ValueError(
                    f"content-length {value!r} does not match a body of {len(body)} bytes"
                )
            return True
    return False


def encode_frame(frame: Frame, version: str | None = None) -> bytes:
    """The wire form of ``frame`` in ``version`` (None: not yet negotiated, no escapes).

    LF line ends. A ``content-length`` header is added, last, when the body is not
    empty and the frame has none (SHOULD in the spec, and MUST when the body holds
    NUL); one the frame carries must match the body. Raises ``ValueError`` for what
    the version cannot carry: an empty header name, LF (or ':' in a name) without
    escapes, a value ending in CR before 1.2, a header name starting with NUL.
    """
    command = frame.command
    if command not in COMMANDS:
        _check_command(command)
    headers = frame.headers
    body = frame.body
    if headers:
        text = "\n".join([f"{name}:{value}" for name, value in headers])
        count = len(headers)
        if (
            text.count(":") != count
            or text.count("\n") != count - 1
            or "\\" in text
            or "\r" in text
            or "\x00" in text
            or text[0] == ":"
            or "\n:" in text
        ):
            # Some name or value holds a special character: escape or refuse it.
            mode = None if command in UNESCAPED_COMMANDS or version not in UNESCAPERS else version
            text = "\n".join([_header_line(name, value, mode) for name, value in headers])
        if "content-length" in text and _checked_length(headers, body):
            head = f"{command}\n{text}\n\n"
        elif body:
            head = f"{command}\n{text}\ncontent-length:{len(body)}\n\n"
        else:
            head = f"{command}\n{text}\n\n"
    elif body:
        head = f"{command}\ncontent-length:{len(body)}\n\n"
    else:
        head = f"{command}\n\n"
    return b"".join((head.encode(), body, b"\x00"))


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """The (can send, wants to receive) milliseconds of a ``heart-beat`` header.

    A missing header means ``0,0`` (spec "Heart-beating"). Blanks around either
    number are tolerated; anything but two non-negative integers raises StompError.
    """
    if value is None:
        return (0, 0)
    parts = value.split(",")
    if len(parts) == 2:
        first, second = parts[0].strip(), parts[1].strip()
        if (
            first.isascii()
            and first.isdigit()
            and second.isascii()
            and second.isdigit()
            and len(first) <= 10
            and len(second) <= 10
        ):
            return (int(first), int(second))
    raise StompError("invalid heart-beat", f"heart-beat {value[:40]!r} is not two integers 'x,y'")
