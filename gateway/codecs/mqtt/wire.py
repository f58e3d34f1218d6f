"""MQTT data representations (spec section 1.5): integers, strings, binary data."""

from __future__ import annotations

from .errors import MQTTProtocolError, ReasonCode

MAX_REMAINING_LENGTH = 268_435_455


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"variable byte integer out of range: {value}")
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(
    buf: bytes | bytearray | memoryview, pos: int, end: int
) -> tuple[int, int] | None:
    """Decode a variable byte integer at ``pos``; None if more bytes are needed."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i and byte == 0:
                # The spec requires the minimal encoding (1.5.5).
                raise MQTTProtocolError("non-minimal variable byte integer")
            return value, pos + i + 1
        shift += 7
    raise MQTTProtocolError("variable byte integer longer than 4 bytes")


def encode_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("UTF-8 string longer than 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def encode_binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("binary data longer than 65535 bytes")
    return len(value).to_bytes(2, "big") + value


class Reader:
    """Bounds-checked cursor over one packet's body; overruns are malformed packets."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int) -> None:
        if self.pos + n > self.end:
            raise MQTTProtocolError("packet shorter than its fields")

    def u8(self) -> int:
        self._need(1)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        self._need(2)
        value = (self.buf[self.pos] << 8) | self.buf[self.pos + 1]
        self.pos += 2
        return value

    def u32(self) -> int:
        self._need(4)
        value = int.from_bytes(self.buf[self.pos : self.pos + 4], "big")
        self.pos += 4
        return value

    def varint(self) -> int:
        decoded = decode_varint(self.buf, self.pos, self.end)
        if decoded is None:
            raise MQTTProtocolError("packet shorter than its fields")
        value, self.pos = decoded
        return value

    def binary(self) -> bytes:
        n = self.u16()
        self._need(n)
        value = self.buf[self.pos : self.pos + n]
        self.pos += n
        return value

    def string(self) -> str:
        return decode_utf8(self.binary())

    def rest(self) -> bytes:
        value = self.buf[self.pos : self.end]
        self.pos = self.end
        return value


def decode_utf8(raw: bytes) -> str:
    """Decode an MQTT UTF-8 string: well-formed, no surrogates, no U+0000 (1.5.4)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MQTTProtocolError("string is not well-formed UTF-8") from exc
    if "\x00" in text:
        raise MQTTProtocolError("string contains U+0000")
    return text


def validate_topic_name(topic: str) -> None:
    """A topic name in PUBLISH: non-empty and free of wildcards (4.7.1, 4.7.3)."""
    if not topic:
        raise MQTTProtocolError("empty topic name", ReasonCode.TOPIC_NAME_INVALID)
    if "+" in topic or "#" in topic:
        raise MQTTProtocolError("wildcard in topic name", ReasonCode.TOPIC_NAME_INVALID)


def validate_topic_filter(topic_filter: str) -> None:
    """A topic filter: '#' only as the whole last level, '+' only as a whole level (4.7.1)."""
    if not topic_filter:
        raise MQTTProtocolError("empty topic filter", ReasonCode.TOPIC_FILTER_INVALID)
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise MQTTProtocolError(
                "misplaced '#' in topic filter", ReasonCode.TOPIC_FILTER_INVALID
            )
        if "+" in level and level != "+":
            raise MQTTProtocolError(
                "misplaced '+' in topic filter", ReasonCode.TOPIC_FILTER_INVALID
            )
