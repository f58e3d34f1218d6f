"""Encoding and decoding of MQTT 3.1/3.1.1 packet bodies (spec chapter 3)."""

from __future__ import annotations

from typing import assert_never

from .errors import ConnectReturnCode, MQTTProtocolError, ReasonCode
from .packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .wire import (
    Reader,
    decode_utf8,
    encode_binary,
    encode_string,
    encode_varint,
    validate_topic_filter,
    validate_topic_name,
)

# Protocol (name, level) pairs this codec speaks: 3.1 and 3.1.1.
PROTOCOLS = {("MQIsdp", 3), ("MQTT", 4)}

# Fixed-header flags the spec reserves per packet type (2.2.2); PUBLISH is free.
_REQUIRED_FLAGS = {
    PacketType.CONNECT: 0,
    PacketType.CONNACK: 0,
    PacketType.PUBACK: 0,
    PacketType.PUBREC: 0,
    PacketType.PUBREL: 2,
    PacketType.PUBCOMP: 0,
    PacketType.SUBSCRIBE: 2,
    PacketType.SUBACK: 0,
    PacketType.UNSUBSCRIBE: 2,
    PacketType.UNSUBACK: 0,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
}


def decode_packet(type_byte: int, body: bytes) -> Packet:
    """Decode one packet from its first byte and its body (the remaining length bytes)."""
    try:
        ptype = PacketType(type_byte >> 4)
    except ValueError:
        raise MQTTProtocolError(f"reserved packet type {type_byte >> 4}") from None
    flags = type_byte & 0x0F
    if ptype is PacketType.PUBLISH:
        return _decode_publish(flags, body)
    if ptype is PacketType.AUTH:
        raise MQTTProtocolError("AUTH is an MQTT 5 packet", ReasonCode.PROTOCOL_ERROR)
    if flags != _REQUIRED_FLAGS[ptype]:
        raise MQTTProtocolError(f"bad fixed-header flags for {ptype.name}")
    r = Reader(body)
    packet: Packet
    match ptype:
        case PacketType.CONNECT:
            packet = _decode_connect(r)
        case PacketType.CONNACK:
            ack_flags = r.u8()
            if ack_flags & 0xFE:
                raise MQTTProtocolError("reserved CONNACK flags set")
            packet = ConnAck(session_present=bool(ack_flags & 1), return_code=r.u8())
        case PacketType.PUBACK:
            packet = PubAck(packet_id=_packet_id(r))
        case PacketType.PUBREC:
            packet = PubRec(packet_id=_packet_id(r))
        case PacketType.PUBREL:
            packet = PubRel(packet_id=_packet_id(r))
        case PacketType.PUBCOMP:
            packet = PubComp(packet_id=_packet_id(r))
        case PacketType.SUBSCRIBE:
            packet = _decode_subscribe(r)
        case PacketType.SUBACK:
            pid = _packet_id(r)
            packet = SubAck(packet_id=pid, return_codes=tuple(r.rest()))
        case PacketType.UNSUBSCRIBE:
            pid = _packet_id(r)
            filters: list[str] = []
            while r.remaining():
                topic_filter = r.string()
                validate_topic_filter(topic_filter)
                filters.append(topic_filter)
            if not filters:
                raise MQTTProtocolError(
                    "UNSUBSCRIBE with no topic filter", ReasonCode.PROTOCOL_ERROR
                )
            packet = Unsubscribe(packet_id=pid, topic_filters=tuple(filters))
        case PacketType.UNSUBACK:
            packet = UnsubAck(packet_id=_packet_id(r))
        case PacketType.PINGREQ:
            packet = PingReq()
        case PacketType.PINGRESP:
            packet = PingResp()
        case PacketType.DISCONNECT:
            packet = Disconnect()
        case _:  # pragma: no cover - PUBLISH and AUTH returned above
            raise AssertionError(ptype)
    if r.remaining():
        raise MQTTProtocolError(f"{ptype.name} longer than its fields")
    return packet


def _packet_id(r: Reader) -> int:
    pid = r.u16()
    if pid == 0:
        raise MQTTProtocolError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
    return pid


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MQTTProtocolError("PUBLISH with QoS 3")
    dup = bool(flags & 8)
    if dup and qos == 0:
        raise MQTTProtocolError("DUP set on a QoS 0 PUBLISH")
    r = Reader(body)
    topic = r.string()
    validate_topic_name(topic)
    packet_id = _packet_id(r) if qos else None
    return Publish(
        topic=topic, payload=r.rest(), qos=qos, retain=bool(flags & 1), dup=dup, packet_id=packet_id
    )


def _decode_connect(r: Reader) -> Connect:
    name = r.string()
    level = r.u8()
    if (name, level) not in PROTOCOLS:
        if name in ("MQTT", "MQIsdp"):
            raise MQTTProtocolError(
                f"unsupported protocol level {level}",
                ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
                connack_code=ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION,
            )
        raise MQTTProtocolError(f"unknown protocol name {name!r}", ReasonCode.PROTOCOL_ERROR)
    flags = r.u8()
    if flags & 1:
        raise MQTTProtocolError("reserved CONNECT flag set")
    will_flag = bool(flags & 4)
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 32)
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise MQTTProtocolError("inconsistent will flags")
    has_password = bool(flags & 64)
    has_username = bool(flags & 128)
    if has_password and not has_username and level == 4:
        raise MQTTProtocolError("password flag without user name flag")
    keep_alive = r.u16()
    client_id = r.string()
    will = None
    if will_flag:
        will_topic = r.string()
        validate_topic_name(will_topic)
        will = Will(topic=will_topic, payload=r.binary(), qos=will_qos, retain=will_retain)
    username = r.string() if has_username else None
    password = r.binary() if has_password else None
    return Connect(
        protocol_name=name,
        protocol_level=level,
        client_id=client_id,
        clean_start=bool(flags & 2),
        keep_alive=keep_alive,
        username=username,
        password=password,
        will=will,
    )


def _decode_subscribe(r: Reader) -> Subscribe:
    pid = _packet_id(r)
    subs: list[tuple[str, int]] = []
    while r.remaining():
        raw = r.binary()
        topic_filter = decode_utf8(raw)
        validate_topic_filter(topic_filter)
        options = r.u8()
        if options & 0xFC:
            raise MQTTProtocolError("reserved subscription option bits set")
        if options == 3:
            raise MQTTProtocolError("requested QoS 3")
        subs.append((topic_filter, options))
    if not subs:
        raise MQTTProtocolError("SUBSCRIBE with no topic filter", ReasonCode.PROTOCOL_ERROR)
    return Subscribe(packet_id=pid, subscriptions=tuple(subs))


def _frame(type_byte: int, body: bytes) -> bytes:
    return bytes((type_byte,)) + encode_varint(len(body)) + body


def encode_publish(packet: Publish) -> bytes:
    flags = (packet.qos << 1) | (8 if packet.dup else 0) | (1 if packet.retain else 0)
    body = encode_string(packet.topic)
    if packet.qos:
        if packet.packet_id is None:
            raise ValueError("a QoS 1 or 2 PUBLISH needs a packet id")
        body += packet.packet_id.to_bytes(2, "big")
    return _frame(0x30 | flags, body + packet.payload)


def encode_packet(packet: Packet) -> bytes:
    match packet:
        case Publish():
            return encode_publish(packet)
        case PubAck(packet_id=pid):
            return b"\x40\x02" + pid.to_bytes(2, "big")
        case PubRec(packet_id=pid):
            return b"\x50\x02" + pid.to_bytes(2, "big")
        case PubRel(packet_id=pid):
            return b"\x62\x02" + pid.to_bytes(2, "big")
        case PubComp(packet_id=pid):
            return b"\x70\x02" + pid.to_bytes(2, "big")
        case ConnAck(session_present=present, return_code=code):
            return bytes((0x20, 2, 1 if present else 0, code))
        case SubAck(packet_id=pid, return_codes=codes):
            return _frame(0x90, pid.to_bytes(2, "big") + bytes(codes))
        case UnsubAck(packet_id=pid):
            return b"\xb0\x02" + pid.to_bytes(2, "big")
        case PingReq():
            return b"\xc0\x00"
        case PingResp():
            return b"\xd0\x00"
        case Disconnect():
            return b"\xe0\x00"
        case Subscribe(packet_id=pid, subscriptions=subs):
            body = pid.to_bytes(2, "big")
            for topic_filter, options in subs:
                body += encode_string(topic_filter) + bytes((options,))
            return _frame(0x82, body)
        case Unsubscribe(packet_id=pid, topic_filters=filters):
            body = pid.to_bytes(2, "big") + b"".join(encode_string(f) for f in filters)
            return _frame(0xA2, body)
        case Connect():
            return _encode_connect(packet)
        case _:
            assert_never(packet)


def _encode_connect(packet: Connect) -> bytes:
    flags = 2 if packet.clean_start else 0
    payload = encode_string(packet.client_id)
    if packet.will is not None:
        flags |= 4 | (packet.will.qos << 3) | (32 if packet.will.retain else 0)
        payload += encode_string(packet.will.topic) + encode_binary(packet.will.payload)
    if packet.username is not None:
        flags |= 128
        payload += encode_string(packet.username)
    if packet.password is not None:
        flags |= 64
        payload += encode_binary(packet.password)
    header = (
        encode_string(packet.protocol_name)
        + bytes((packet.protocol_level, flags))
        + packet.keep_alive.to_bytes(2, "big")
    )
    return _frame(0x10, header + payload)
