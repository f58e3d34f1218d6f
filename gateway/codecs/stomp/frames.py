"""STOMP frames as events: frozen, keyword-only msgspec Structs.

Structs rather than frozen dataclasses for the reason given in
``gateway/codecs/mqtt/packets.py``: a frame is built per message on the hot path,
and a frozen dataclass's ``__init__`` is about ten times slower.

One ``Frame`` type serves every command: STOMP frames differ only by their command
and which headers they must carry, which the connection checks. Headers stay a
tuple of (name, value) pairs in wire order with repeats kept (a relaying server
may prepend a newer value: spec 1.2 "Repeated Header Entries"); ``get`` returns
the first, which is the one that counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, overload

import msgspec

VERSIONS: Final = ("1.0", "1.1", "1.2")
"""The protocol versions this codec speaks, lowest first."""

CLIENT_COMMANDS: Final = frozenset(
    {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "DISCONNECT",
    }
)
SERVER_COMMANDS: Final = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
COMMANDS: Final = CLIENT_COMMANDS | SERVER_COMMANDS

# Frames whose headers are never escaped, whatever the version (spec 1.1/1.2 "Value
# Encoding"). STOMP is handled "in the same manner as a CONNECT frame"; it is sent
# before any version is agreed, so it cannot use a version's escapes either.
UNESCAPED_COMMANDS: Final = frozenset({"CONNECT", "STOMP", "CONNECTED"})


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """One STOMP frame: ``command``, ``headers`` in wire order (repeats kept), ``body``.

    Header names and values are the decoded text (escapes undone). ``body`` is the
    raw octets; a ``content-length`` header, when present, is kept in ``headers``.
    """

    command: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    @overload
    def get(self, name: str, default: str | None) -> str | None: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the FIRST header called ``name`` (spec: the first one counts)."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of header ``name``, in wire order (newest first when a server
        prepended updates)."""
        return tuple(value for key, value in self.headers if key == name)

    @classmethod
    def build(
        cls,
        command: str,
        /,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | str = b"",
        **named: str,
    ) -> Frame:
        """A frame from a mapping or pairs, then keyword headers (``_`` becomes ``-``).

        ``Frame.build("SEND", destination="/queue/a", content_type="text/plain")``;
        a ``str`` body is encoded as UTF-8. Names that are not identifiers, really
        contain ``_``, or are ``headers``/``body``, go in ``headers``.
        """
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        pairs.extend((key.replace("_", "-"), value) for key, value in named.items())
        if isinstance(body, str):
            body = body.encode()
        return cls(command=command, headers=tuple(pairs), body=body)


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A lone end-of-line (``\\n`` or ``\\r\\n``) between frames: the peer is alive.

    Every EOL between frames is one heartbeat, including the optional EOLs a peer
    writes after a frame's NUL: whether an EOL is a frame's trailer or a later
    heart-beat cannot be told from the bytes, and the answer must not depend on how
    the stream was chunked.
    """


HEARTBEAT: Final = Heartbeat()
"""The one ``Heartbeat`` the codec returns (they are all equal)."""


def offered_versions(accept_version: str | None) -> frozenset[str]:
    """The versions an ``accept-version`` header lists; a missing header means 1.0.

    Lenient on the list's form: blanks around entries are ignored, empty entries
    dropped.
    """
    if accept_version is None:
        return frozenset(("1.0",))
    return frozenset(filter(None, (part.strip() for part in accept_version.split(","))))


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def negotiate(accept_version: str | None, supported: Iterable[str] = VERSIONS) -> str | None:
    """The highest version both the client (its ``accept-version``) and we support.

    ``accept_version`` is the CONNECT's header value, or None when it has none,
    which means the client only speaks 1.0 (spec "Protocol Negotiation"). Returns
    None when there is no common version: the server then answers with an ERROR
    (carrying a ``version`` header listing what it supports) and closes.
    """
    offered = offered_versions(accept_version)
    common = [version for version in supported if version in offered]
    return max(common, key=_version_key) if common else None
