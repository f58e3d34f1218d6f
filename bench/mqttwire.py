"""Just enough MQTT 3.1.1 to drive a broker: encoders and a fixed-header frame walker.

Self-contained on purpose: the load generator must not share code with the system
under test, so nothing here imports the gateway.

Payloads start with an 8-byte placeholder (``STAMP``) that :func:`stamp` replaces,
in C, with a little-endian ``time.monotonic_ns()`` for a whole pre-encoded batch at
once; the rest of the payload is padding. ``CLOCK_MONOTONIC`` is one clock for every
process on a Linux host, so a subscriber in another process can compute latency.
Tracked QoS 1 publishes (the durability scenarios, :func:`tracked_frames`) carry a
sequence number in those 8 bytes instead, and their latency is PUBLISH to PUBACK, matched
by packet identifier (:func:`puback_ids`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

STAMP = b"\xa5STAMP!\xa5"  # 8 bytes, never produced by the encoders below otherwise
_Q = struct.Struct("<Q")
_H = struct.Struct(">H")

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

DISCONNECT_PACKET = b"\xe0\x00"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return _H.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str, *, keepalive: int = 0, clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0x00
    body = _str("MQTT") + bytes([4, flags]) + _H.pack(keepalive) + _str(client_id)
    return _packet(0x10, body)


def subscribe(packet_id: int, filters: Iterable[tuple[str, int]]) -> bytes:
    body = _H.pack(packet_id) + b"".join(_str(f) + bytes([qos]) for f, qos in filters)
    return _packet(0x82, body)


def publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0) -> bytes:
    body = _str(topic) + (_H.pack(packet_id) if qos else b"") + payload
    return _packet(0x30 | (qos << 1), body)


def payload(size: int) -> bytes:
    """A payload of ``size`` bytes (at least 8): the stamp placeholder, then padding."""
    return STAMP + b"." * max(0, size - len(STAMP))


def stamp(template: bytes, now_ns: int) -> bytes:
    """``template`` with every payload's placeholder replaced by ``now_ns``."""
    return template.replace(STAMP, _Q.pack(now_ns))


def read_stamp(buf: bytes, offset: int) -> int:
    return int(_Q.unpack_from(buf, offset)[0])


# Replies a peer owes, by packet type (index) -> fixed header of the reply.
SUB_REPLIES_QOS1: tuple[bytes | None, ...] = tuple(
    b"\x40\x02" if t == PUBLISH else None for t in range(16)
)
SUB_REPLIES_QOS2: tuple[bytes | None, ...] = tuple(
    b"\x50\x02" if t == PUBLISH else b"\x70\x02" if t == PUBREL else None for t in range(16)
)
PUB_REPLIES_QOS2: tuple[bytes | None, ...] = tuple(
    b"\x62\x02" if t == PUBREC else None for t in range(16)
)
NO_REPLIES: tuple[bytes | None, ...] = (None,) * 16


def scan(
    buf: bytes,
    pos: int,
    counts: list[int],
    replies: tuple[bytes | None, ...] = NO_REPLIES,
    out: bytearray | None = None,
) -> int:
    """Walk the complete frames of ``buf`` from ``pos``; return where the first incomplete
    one starts. Only the fixed header and remaining length are read, except the packet
    identifier of a frame that needs a reply (``replies[type]``): that reply is appended
    to ``out``. ``counts[type]`` is incremented per frame."""
    end = len(buf)
    while end - pos >= 2:
        b0 = buf[pos]
        rl = buf[pos + 1]
        hdr = 2
        if rl & 0x80:
            rl &= 0x7F
            shift = 7
            while True:
                if pos + hdr >= end:
                    return pos
                b = buf[pos + hdr]
                rl |= (b & 0x7F) << shift
                hdr += 1
                shift += 7
                if not b & 0x80:
                    break
        nxt = pos + hdr + rl
        if nxt > end:
            return pos
        t = b0 >> 4
        counts[t] += 1
        reply = replies[t]
        if reply is not None and out is not None:
            body = pos + hdr
            if t == PUBLISH:
                if b0 & 0x06:
                    idp = body + 2 + ((buf[body] << 8) | buf[body + 1])
                    out += reply
                    out += buf[idp : idp + 2]
            else:
                out += reply
                out += buf[body : body + 2]
        pos = nxt
    return pos


def publish_stamp_offset(buf: bytes, pos: int) -> int | None:
    """Offset of the payload's first byte of the PUBLISH frame at ``pos`` (complete or not
    past the stamp), or None if that frame is not a PUBLISH or is cut short."""
    end = len(buf)
    if end - pos < 2 or buf[pos] >> 4 != PUBLISH:
        return None
    hdr = 1
    while True:
        if pos + hdr >= end:
            return None
        b = buf[pos + hdr]
        hdr += 1
        if not b & 0x80:
            break
    body = pos + hdr
    if body + 2 > end:
        return None
    off = body + 2 + ((buf[body] << 8) | buf[body + 1]) + (2 if buf[pos] & 0x06 else 0)
    return off if off + 8 <= end else None


def publish_stamps(buf: bytes, pos: int, end: int) -> list[int]:
    """The stamps of every PUBLISH among the complete frames of ``buf[pos:end]`` (the slow
    path, for the latency scenario's 1,000 messages per second)."""
    stamps = []
    while end - pos >= 2:
        hdr, rl, shift = 1, 0, 0
        while True:
            b = buf[pos + hdr]
            rl |= (b & 0x7F) << shift
            hdr += 1
            shift += 7
            if not b & 0x80:
                break
        off = publish_stamp_offset(buf, pos)
        if off is not None:
            stamps.append(read_stamp(buf, off))
        pos += hdr + rl
    return stamps


# ---------------------------------------------------------------------------- tracked QoS 1

# Sequence numbers: the publisher's number in the top 16 bits, its message count below.
SEQ_SHIFT = 48
SEQ_MASK = (1 << SEQ_SHIFT) - 1


def tracked_frames(topic: str, payload_size: int, qos: int = 1) -> tuple[list[bytes], bytes]:
    """(heads, padding): ``heads[pid]`` is a QoS ``qos`` PUBLISH of ``topic`` with packet
    id ``pid`` (1..65535) up to its payload, whose first 8 bytes are then a little-endian
    sequence number (:func:`seq_pack`) followed by ``padding``."""
    pad = b"." * max(0, payload_size - 8)
    body_len = len(_str(topic)) + 2 + 8 + len(pad)
    fixed = bytes([0x30 | (qos << 1)]) + varint(body_len) + _str(topic)
    heads = [b""] + [fixed + _H.pack(pid) for pid in range(1, 65536)]
    return heads, pad


seq_pack = _Q.pack


def puback_ids(buf: bytes, pos: int, ids: list[int]) -> tuple[int, int]:
    """Append the packet identifier of every complete PUBACK in ``buf`` from ``pos`` to
    ``ids``: (where the first incomplete frame starts, frames of other types skipped)."""
    end = len(buf)
    other = 0
    while end - pos >= 2:
        b0 = buf[pos]
        rl, hdr, shift = 0, 1, 0
        while True:
            if pos + hdr >= end:
                return pos, other
            b = buf[pos + hdr]
            rl |= (b & 0x7F) << shift
            hdr += 1
            shift += 7
            if not b & 0x80:
                break
        if pos + hdr + rl > end:
            return pos, other
        if b0 >> 4 == PUBACK and rl >= 2:
            ids.append((buf[pos + hdr] << 8) | buf[pos + hdr + 1])
        else:
            other += 1
        pos += hdr + rl
    return pos, other
