"""The MQTT connection state machine, sans-I/O, for either side of a link.

Used like h11: ``receive_data(bytes)`` (``b""`` means end of stream), then
``next_event()`` until it returns ``NEED_DATA``; ``send(packet)`` returns the
bytes to write.

Every packet after CONNECT is read and written in ``protocol_level`` (3, 4 or 5):
a server learns it from the CONNECT it receives, a client from the CONNECT it sends.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto
from typing import Final

from .errors import MQTTProtocolError, ReasonCode
from .packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
)
from .serialize import _TOPICS, PACKET_TYPES, decode_packet, decode_publish, encode_packet
from .wire import MAX_REMAINING_LENGTH, decode_varint


class _Sentinel(Enum):
    NEED_DATA = auto()
    CLOSED = auto()
    PAUSED = auto()


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event()`` needs more bytes before it can return a packet."""

CLOSED: Final = _Sentinel.CLOSED
"""The peer ended the stream cleanly between packets."""

PAUSED: Final = _Sentinel.PAUSED
"""``on_plain_publish`` asked to stop reading; ``next_event()`` goes on when called again."""

Event = Packet | _Sentinel

# Which packet types each side may send (spec 2.1.2, "Direction of flow").
_FROM_CLIENT = frozenset(
    {
        PacketType.CONNECT,
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBSCRIBE,
        PacketType.UNSUBSCRIBE,
        PacketType.PINGREQ,
        PacketType.DISCONNECT,
    }
)
_FROM_SERVER = frozenset(
    {
        PacketType.CONNACK,
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBACK,
        PacketType.UNSUBACK,
        PacketType.PINGRESP,
    }
)
# MQTT 5 adds AUTH both ways and lets the server send DISCONNECT too.
_FROM_CLIENT_V5 = _FROM_CLIENT | {PacketType.AUTH}
_FROM_SERVER_V5 = _FROM_SERVER | {PacketType.AUTH, PacketType.DISCONNECT}


class Role(Enum):
    SERVER = auto()
    CLIENT = auto()


class State(Enum):
    AWAIT_CONNECT = auto()
    CONNECTED = auto()
    CLOSED = auto()


# An enum member read through its class costs about 90 ns on Python 3.11 (measured),
# as much as decoding a field: the per-packet paths use these aliases instead.
_AWAIT_CONNECT: Final = State.AWAIT_CONNECT
_CONNECTED: Final = State.CONNECTED
_PUBLISH: Final = int(PacketType.PUBLISH)


_ACK_CLASSES = (PubAck, PubRec, PubRel, PubComp)

# The largest packet the spec allows: type byte, 4-byte length, maximum remaining length.
MAX_PACKET_SIZE = 1 + 4 + MAX_REMAINING_LENGTH

# Compacting the receive buffer costs a copy; do it only once this much is consumed.
_COMPACT_AT = 65536

PlainPublishHandler = Callable[[str, bytes, bytes, bool], bool]
"""``handler(topic, payload, packet, retain)``, see ``MQTTConnection.on_plain_publish``:
``packet`` is the whole PUBLISH as received; False asks to stop after this one."""


class MQTTConnection:
    """One side of an MQTT connection: framing, direction and ordering rules.

    ``on_plain_publish``, when set, is the QoS 0 hot path: ``next_event`` hands it
    every plain QoS 0 PUBLISH (QoS 0 without DUP, a topic name without alias that
    an earlier PUBLISH already had decoded and validated, and in MQTT 5 an empty
    property block) as ``(topic, payload, packet, retain)`` instead of returning a
    ``Publish``, and returns ``PAUSED`` when it returns False. Everything else, and
    any packet in doubt, is decoded (or refused) the general way, in order.
    """

    __slots__ = (
        "_allowed_in",
        "_auth_method",
        "_buf",
        "_eof",
        "_last_raw",
        "_last_topic",
        "_pos",
        "_session_expiry",
        "max_packet_size",
        "on_plain_publish",
        "protocol_level",
        "role",
        "state",
    )

    def __init__(self, role: Role = Role.SERVER, *, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.role = role
        self.max_packet_size = max_packet_size
        self.state = State.AWAIT_CONNECT
        self.protocol_level = 4
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._allowed_in = _FROM_CLIENT if role is Role.SERVER else _FROM_SERVER
        # From the MQTT 5 CONNECT, for the rules on later DISCONNECT and AUTH packets.
        self._session_expiry = 0
        self._auth_method: str | None = None
        self.on_plain_publish: PlainPublishHandler | None = None
        # The topic of the last plain PUBLISH, raw and decoded (_take_plain_publishes).
        self._last_raw = b""
        self._last_topic = ""

    def receive_data(self, data: bytes | bytearray) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event:
        """Return the next complete packet, ``NEED_DATA``, ``CLOSED`` or ``PAUSED``."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if pos >= end:
            if pos:
                del buf[:pos]
                self._pos = 0
            if self._eof:
                self.state = State.CLOSED
                return CLOSED
            return NEED_DATA
        if buf[pos] & 0xFE == 0x30 and self.on_plain_publish is not None:
            # QoS 0 PUBLISHes, the hot path: as many as there are, then what follows.
            if self._take_plain_publishes(self.on_plain_publish):
                return PAUSED
            pos = self._pos
            end = len(buf)
            if pos >= end:
                return self.next_event()  # NEED_DATA, or CLOSED at the end of the stream
        if self.state is _AWAIT_CONNECT and self.role is Role.SERVER and buf[pos] != 0x10:
            # Refuse at the first byte: waiting for a length that garbage announces could stall.
            raise MQTTProtocolError("first packet is not CONNECT", ReasonCode.PROTOCOL_ERROR)
        if pos + 1 < end and buf[pos + 1] < 0x80:
            length = buf[pos + 1]  # the usual one-byte remaining length, in line
            body_start = pos + 2
        else:
            decoded = decode_varint(buf, pos + 1, end)
            if decoded is None:
                return self._short()
            length, body_start = decoded
        # 1 byte type + varint + body; refuse before buffering a huge packet.
        if length + (body_start - pos) > self.max_packet_size:
            size = length + body_start - pos
            raise MQTTProtocolError(
                f"packet of {size} bytes exceeds the maximum {self.max_packet_size}",
                ReasonCode.PACKET_TOO_LARGE,
            )
        body_end = body_start + length
        if body_end > end:
            return self._short()
        type_byte = buf[pos]
        body = bytes(buf[body_start:body_end])
        if body_end >= _COMPACT_AT or body_end == end:
            del buf[:body_end]
            self._pos = 0
        else:
            self._pos = body_end
        kind = type_byte >> 4
        if 4 <= kind <= 7 and length == 2 and self.state is _CONNECTED:
            # PUBACK/PUBREC/PUBREL/PUBCOMP in their short form: the QoS 1/2 hot path.
            if type_byte & 0x0F != (2 if kind == 6 else 0):
                raise MQTTProtocolError(f"bad fixed-header flags for {PACKET_TYPES[kind]}")
            pid = (body[0] << 8) | body[1]
            if not pid:
                raise MQTTProtocolError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
            return _ACK_CLASSES[kind - 4](packet_id=pid)
        if kind == _PUBLISH and self.state is _CONNECTED:
            # PUBLISH flows both ways once connected: no ordering rule to check.
            publish = decode_publish(type_byte & 0x0F, body, self.protocol_level)
            if self.protocol_level == 5:
                self._check_v5(publish)
            return publish
        try:
            packet = decode_packet(type_byte, body, self.protocol_level)
        except MQTTProtocolError as exc:
            if (
                exc.protocol_level is not None
                and self.role is Role.SERVER
                and self.state is State.AWAIT_CONNECT
            ):
                # A refused CONNECT still told its level: send() answers in that version.
                self.protocol_level = exc.protocol_level
            raise
        self._check_order(PACKET_TYPES[type_byte >> 4], packet)
        return packet

    def _take_plain_publishes(self, handler: PlainPublishHandler) -> bool:
        """Hand ``handler`` each plain QoS 0 PUBLISH at the front of the buffer, in order.

        Stops at the first packet that is anything else, incomplete, or in any doubt
        (a topic not seen yet, a long or non-minimal length, the size limit), which
        the general decoding then takes or refuses: a packet taken here gives
        ``handler`` exactly what that decoding would have put in its ``Publish``.
        Returns True if ``handler`` asked to stop.
        """
        if self.state is not _CONNECTED:
            return False
        buf = self._buf
        pos = self._pos
        end = len(buf)
        v5 = self.protocol_level == 5
        limit = self.max_packet_size
        topics = _TOPICS
        last_raw = self._last_raw
        last_topic = self._last_topic
        stopped = False
        try:
            while pos + 4 <= end:
                first = buf[pos]
                if first != 0x30 and first != 0x31:
                    break
                length = buf[pos + 1]
                body = pos + 2
                if length & 0x80:
                    second = buf[pos + 2]
                    if second & 0x80 or not second:  # 3-4 byte or non-minimal: the general way
                        break
                    length = (length & 0x7F) | (second << 7)
                    body = pos + 3
                body_end = body + length
                if body_end > end or body_end - pos > limit or length < 2:
                    break
                topic_end = body + 2 + ((buf[body] << 8) | buf[body + 1])
                if topic_end > body_end or topic_end == body + 2:
                    break
                payload_at = topic_end
                if v5:
                    if topic_end == body_end or buf[topic_end]:
                        break  # properties (or none at all, malformed): the general way
                    payload_at += 1
                size = topic_end - body - 2
                if size == len(last_raw) and buf.startswith(last_raw, body + 2):
                    topic = last_topic
                else:
                    raw = bytes(buf[body + 2 : topic_end])
                    found = topics.get(raw)
                    if found is None:
                        break  # not seen yet: next_event decodes and validates it
                    topic = last_topic = found
                    last_raw = raw
                packet = bytes(buf[pos:body_end])
                payload = packet[payload_at - pos :]
                pos = body_end
                if not handler(topic, payload, packet, first == 0x31):
                    stopped = True
                    break
        finally:
            self._last_raw = last_raw
            self._last_topic = last_topic
            if pos >= end:
                del buf[:]
                pos = 0
            elif pos >= _COMPACT_AT:
                del buf[:pos]
                pos = 0
            self._pos = pos
        return stopped

    def _short(self) -> Event:
        if self._eof:
            raise MQTTProtocolError("stream ended inside a packet")
        return NEED_DATA

    def _check_order(self, ptype: PacketType, packet: Packet) -> None:
        if ptype not in self._allowed_in:
            raise MQTTProtocolError(
                f"{ptype.name} may not be sent by the peer", ReasonCode.PROTOCOL_ERROR
            )
        if self.state is State.AWAIT_CONNECT:
            first = PacketType.CONNECT if self.role is Role.SERVER else PacketType.CONNACK
            if ptype is not first:
                if isinstance(packet, Auth):
                    # MQTT 5 enhanced authentication: the server challenges before CONNACK (4.12).
                    self._check_auth(packet)
                    return
                raise MQTTProtocolError(
                    f"expected {first.name}, got {ptype.name}", ReasonCode.PROTOCOL_ERROR
                )
            if isinstance(packet, Connect):
                self._adopt(packet)
            self.state = State.CONNECTED
        elif self.state is State.CONNECTED:
            if ptype is PacketType.CONNECT:
                raise MQTTProtocolError("second CONNECT", ReasonCode.PROTOCOL_ERROR)
            if ptype is PacketType.DISCONNECT:
                self.state = State.CLOSED
        else:
            raise MQTTProtocolError(f"{ptype.name} after DISCONNECT", ReasonCode.PROTOCOL_ERROR)
        if self.protocol_level == 5:
            self._check_v5(packet)

    def _adopt(self, connect: Connect) -> None:
        """Speak the CONNECT's protocol level from now on."""
        self.protocol_level = level = connect.protocol_level
        server = self.role is Role.SERVER
        if level == 5:
            self._allowed_in = _FROM_CLIENT_V5 if server else _FROM_SERVER_V5
        else:
            self._allowed_in = _FROM_CLIENT if server else _FROM_SERVER
        self._session_expiry = connect.properties.session_expiry_interval or 0
        self._auth_method = connect.properties.authentication_method

    def _check_v5(self, packet: Packet) -> None:
        """MQTT 5 rules that depend on the direction of flow or on the CONNECT."""
        match packet:
            case Publish() if packet.properties.subscription_identifiers:
                if self.role is Role.SERVER:
                    raise MQTTProtocolError(
                        "subscription identifier in a PUBLISH from a client",
                        ReasonCode.PROTOCOL_ERROR,
                    )
            case Disconnect(properties=props) if props.session_expiry_interval is not None:
                if self.role is Role.CLIENT:
                    raise MQTTProtocolError(
                        "session expiry interval in a DISCONNECT from the server",
                        ReasonCode.PROTOCOL_ERROR,
                    )
                if props.session_expiry_interval and not self._session_expiry:
                    raise MQTTProtocolError(
                        "DISCONNECT sets a session expiry after a CONNECT with none",
                        ReasonCode.PROTOCOL_ERROR,
                    )
            case Auth():
                self._check_auth(packet)
            case _:
                pass

    def _check_auth(self, packet: Auth) -> None:
        """AUTH belongs to the method the CONNECT named, and only exists if it named one."""
        if self._auth_method is None:
            raise MQTTProtocolError(
                "AUTH without an authentication method in CONNECT", ReasonCode.PROTOCOL_ERROR
            )
        method = packet.properties.authentication_method
        if method is not None and method != self._auth_method:
            raise MQTTProtocolError(
                "AUTH with another authentication method than CONNECT",
                ReasonCode.PROTOCOL_ERROR,
            )

    def send(self, packet: Packet) -> bytes:
        """Encode ``packet`` in this connection's protocol level.

        A client's CONNECT sets the level. A server's DISCONNECT exists only in
        MQTT 5: before that, ``send(Disconnect(...))`` returns ``b""`` (nothing to
        write) and only marks the connection closed.
        """
        if isinstance(packet, Disconnect) and self.role is Role.SERVER and self.protocol_level != 5:
            self.state = State.CLOSED
            return b""
        data = encode_packet(packet, self.protocol_level)  # CONNECT brings its own level
        if isinstance(packet, Connect) and self.role is Role.CLIENT:
            self._adopt(packet)
        refused = isinstance(packet, ConnAck) and packet.return_code != 0
        if isinstance(packet, Disconnect) or refused:
            self.state = State.CLOSED
        return data
