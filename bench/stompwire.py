"""Minimal STOMP 1.2 frames for the load generator, and a MESSAGE counter.

Frames are encoded once; SEND bodies come from :func:`bench.mqttwire.payload` (the 8-byte
time-stamp placeholder, then padding) and carry ``content-length``, so one batch of SEND
frames is stamped with the same ``bytes.replace`` as MQTT publishes. :func:`scan` counts
MESSAGE frames without parsing them: it finds the end of the headers, reads
``content-length`` (which the gateway, RabbitMQ and coilmq all send), skips the body and
checks the NUL. :func:`client_heartbeat_ms` reads the negotiated heart-beat from CONNECTED.
Imports nothing from ``gateway``.
"""

from __future__ import annotations

from collections.abc import Callable

from .mqttwire import payload, read_stamp, stamp

__all__ = ["payload", "read_stamp", "stamp"]

NUL = b"\x00"


def frame(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [command, *(f"{k}:{v}" for k, v in headers.items())]
    return ("\n".join(lines) + "\n\n").encode() + body + NUL


def connect(
    host: str, login: str = "guest", passcode: str = "guest", heartbeat: tuple[int, int] = (0, 0)
) -> bytes:
    """CONNECT for STOMP 1.2; ``heartbeat`` is the client's ``cx,cy`` offer in ms."""
    headers = {"accept-version": "1.2", "host": host, "login": login, "passcode": passcode}
    return frame("CONNECT", {**headers, "heart-beat": f"{heartbeat[0]},{heartbeat[1]}"})


def client_heartbeat_ms(connected: bytes, cx: int) -> int:
    """How often the client must send something (a heart-beat EOL when idle), in ms, from
    the CONNECTED frame's ``heart-beat:sx,sy`` and the client's own offer ``cx``: STOMP
    1.1/1.2 negotiation, ``max(cx, sy)``, or 0 (none) when either side said 0 or the
    broker sent no heart-beat header. (coilmq answers ``heart-beat:100,100`` to a client's
    ``0,0``; with ``cx = 0`` that still means the client sends none.)"""
    if not cx:
        return 0
    for line in connected.split(b"\n\n", 1)[0].split(b"\n")[1:]:
        if line.startswith(b"heart-beat:"):
            try:
                sy = int(line[11:].split(b",")[1])
            except (IndexError, ValueError):
                return 0
            return max(cx, sy) if sy > 0 else 0
    return 0


def send(destination: str, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    headers = {"destination": destination, **(extra or {}), "content-length": str(len(body))}
    return frame("SEND", headers, body)


def subscribe(
    sub_id: str,
    destination: str,
    ack: str = "auto",
    prefetch: int = 0,
    receipt: str = "",
    extra: dict[str, str] | None = None,
) -> bytes:
    headers = {"id": sub_id, "destination": destination, "ack": ack, **(extra or {})}
    if prefetch:
        headers["prefetch-count"] = str(prefetch)
    if receipt:
        headers["receipt"] = receipt
    return frame("SUBSCRIBE", headers)


def ack(ack_id: bytes) -> bytes:
    return b"ACK\nid:" + ack_id + b"\n\n" + NUL


def ack_message_id(sub_id: bytes) -> Callable[[bytes], bytes]:
    """ACK frames for a broker whose MESSAGE has no ``ack`` header (coilmq): coilmq's STOMP
    1.2 ACK handler wants ``id`` (which it reads as the subscription id) and
    ``message-id``; a function of the MESSAGE's ``message-id``."""
    head = b"ACK\nid:" + sub_id + b"\nmessage-id:"
    return lambda message_id: head + message_id + b"\n\n" + NUL


DISCONNECT = frame("DISCONNECT", {})


def scan(
    buf: bytes,
    pos: int,
    acks: list[bytes] | None = None,
    stamps: list[int] | None = None,
    ack_header: bytes = b"\nack:",
) -> tuple[int, int, bytes | None]:
    """Walk the complete frames of ``buf`` from ``pos``: (position after the last complete
    frame, MESSAGE frames seen, the command of the first other frame or None). With
    ``acks``, each MESSAGE's ``ack`` header value (or the header ``ack_header`` names,
    e.g. ``b"\\nmessage-id:"``) is appended; with ``stamps``, the body's time stamp of
    the first MESSAGE."""
    n = 0
    other: bytes | None = None
    end = len(buf)
    while pos < end:
        c = buf[pos]
        if c == 10 or c == 13:  # heart-beat / trailing EOL between frames
            pos += 1
            continue
        hdr_end = buf.find(b"\n\n", pos)
        if hdr_end < 0:
            break
        body = hdr_end + 2
        cl = buf.find(b"\ncontent-length:", pos, hdr_end + 1)
        if cl >= 0:
            eol = buf.find(b"\n", cl + 16)
            stop = body + int(buf[cl + 16 : eol])
            if stop >= end:
                break
            if buf[stop] != 0:
                raise ValueError("STOMP frame without NUL after content-length")
        else:
            stop = buf.find(NUL, body)
            if stop < 0:
                break
        if buf.startswith(b"MESSAGE\n", pos):
            n += 1
            if acks is not None:
                a = buf.find(ack_header, pos, hdr_end + 1)
                if a >= 0:
                    a += len(ack_header)
                    acks.append(bytes(buf[a : buf.find(b"\n", a)]))
            if stamps is not None and not stamps and stop - body >= 8:
                stamps.append(read_stamp(buf, body))
        elif other is None:
            other = bytes(buf[pos : buf.find(b"\n", pos)])
        pos = stop + 1
    return pos, n, other
