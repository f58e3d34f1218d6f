"""Encoding and decoding of MQTT 3.1, 3.1.1 and 5.0 packet bodies (chapter 3 of each spec).

``version`` is the connection's protocol level: 3, 4 or 5. CONNECT carries its own
level and ignores it. Encoding for 3.1/3.1.1 leaves out what those versions cannot
carry (properties, reason codes other than CONNACK's and SUBACK's), so a caller can
build one packet for every version; AUTH has no 3.1.1 form at all.
"""

from __future__ import annotations

from typing import Final, assert_never

from .errors import ConnectReturnCode, MQTTProtocolError, ReasonCode
from .packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    Properties,
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
from .properties import SCOPES, WILL_SCOPE, decode_properties, encode_properties
from .wire import (
    Reader,
    decode_utf8,
    encode_binary,
    encode_string,
    encode_varint,
    validate_topic_filter,
    validate_topic_name,
)

# Protocol (name, level) pairs this codec speaks: 3.1, 3.1.1 and 5.0.
PROTOCOLS = {("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)}

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
    PacketType.AUTH: 0,
}

_RC = ReasonCode
_PUBACK_CODES = frozenset(
    {
        _RC.SUCCESS,
        _RC.NO_MATCHING_SUBSCRIBERS,
        _RC.UNSPECIFIED_ERROR,
        _RC.IMPLEMENTATION_SPECIFIC_ERROR,
        _RC.NOT_AUTHORIZED,
        _RC.TOPIC_NAME_INVALID,
        _RC.PACKET_IDENTIFIER_IN_USE,
        _RC.QUOTA_EXCEEDED,
        _RC.PAYLOAD_FORMAT_INVALID,
    }
)
_PUBREL_CODES = frozenset({_RC.SUCCESS, _RC.PACKET_IDENTIFIER_NOT_FOUND})

# The MQTT 5 reason codes each packet type may carry (spec table 2-6 and 3.x.2.1).
REASON_CODES: Final[dict[PacketType, frozenset[int]]] = {
    PacketType.CONNACK: frozenset(
        {
            _RC.SUCCESS,
            _RC.UNSPECIFIED_ERROR,
            _RC.MALFORMED_PACKET,
            _RC.PROTOCOL_ERROR,
            _RC.IMPLEMENTATION_SPECIFIC_ERROR,
            _RC.UNSUPPORTED_PROTOCOL_VERSION,
            _RC.CLIENT_IDENTIFIER_NOT_VALID,
            _RC.BAD_USER_NAME_OR_PASSWORD,
            _RC.NOT_AUTHORIZED,
            _RC.SERVER_UNAVAILABLE,
            _RC.SERVER_BUSY,
            _RC.BANNED,
            _RC.BAD_AUTHENTICATION_METHOD,
            _RC.TOPIC_NAME_INVALID,
            _RC.PACKET_TOO_LARGE,
            _RC.QUOTA_EXCEEDED,
            _RC.PAYLOAD_FORMAT_INVALID,
            _RC.RETAIN_NOT_SUPPORTED,
            _RC.QOS_NOT_SUPPORTED,
            _RC.USE_ANOTHER_SERVER,
            _RC.SERVER_MOVED,
            _RC.CONNECTION_RATE_EXCEEDED,
        }
    ),
    PacketType.PUBACK: _PUBACK_CODES,
    PacketType.PUBREC: _PUBACK_CODES,
    PacketType.PUBREL: _PUBREL_CODES,
    PacketType.PUBCOMP: _PUBREL_CODES,
    PacketType.SUBACK: frozenset(
        {
            _RC.GRANTED_QOS_0,
            _RC.GRANTED_QOS_1,
            _RC.GRANTED_QOS_2,
            _RC.UNSPECIFIED_ERROR,
            _RC.IMPLEMENTATION_SPECIFIC_ERROR,
            _RC.NOT_AUTHORIZED,
            _RC.TOPIC_FILTER_INVALID,
            _RC.PACKET_IDENTIFIER_IN_USE,
            _RC.QUOTA_EXCEEDED,
            _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            _RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        }
    ),
    PacketType.UNSUBACK: frozenset(
        {
            _RC.SUCCESS,
            _RC.NO_SUBSCRIPTION_EXISTED,
            _RC.UNSPECIFIED_ERROR,
            _RC.IMPLEMENTATION_SPECIFIC_ERROR,
            _RC.NOT_AUTHORIZED,
            _RC.TOPIC_FILTER_INVALID,
            _RC.PACKET_IDENTIFIER_IN_USE,
        }
    ),
    PacketType.DISCONNECT: frozenset(
        {
            _RC.NORMAL_DISCONNECTION,
            _RC.DISCONNECT_WITH_WILL_MESSAGE,
            _RC.UNSPECIFIED_ERROR,
            _RC.MALFORMED_PACKET,
            _RC.PROTOCOL_ERROR,
            _RC.IMPLEMENTATION_SPECIFIC_ERROR,
            _RC.NOT_AUTHORIZED,
            _RC.SERVER_BUSY,
            _RC.SERVER_SHUTTING_DOWN,
            _RC.BAD_AUTHENTICATION_METHOD,
            _RC.KEEP_ALIVE_TIMEOUT,
            _RC.SESSION_TAKEN_OVER,
            _RC.TOPIC_FILTER_INVALID,
            _RC.TOPIC_NAME_INVALID,
            _RC.RECEIVE_MAXIMUM_EXCEEDED,
            _RC.TOPIC_ALIAS_INVALID,
            _RC.PACKET_TOO_LARGE,
            _RC.MESSAGE_RATE_TOO_HIGH,
            _RC.QUOTA_EXCEEDED,
            _RC.ADMINISTRATIVE_ACTION,
            _RC.PAYLOAD_FORMAT_INVALID,
            _RC.RETAIN_NOT_SUPPORTED,
            _RC.QOS_NOT_SUPPORTED,
            _RC.USE_ANOTHER_SERVER,
            _RC.SERVER_MOVED,
            _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
            _RC.CONNECTION_RATE_EXCEEDED,
            _RC.MAXIMUM_CONNECT_TIME,
            _RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        }
    ),
    PacketType.AUTH: frozenset({_RC.SUCCESS, _RC.CONTINUE_AUTHENTICATION, _RC.RE_AUTHENTICATE}),
}

_PUBLISH_SCOPE = SCOPES[PacketType.PUBLISH]

# The four acknowledgements of PUBLISH share one MQTT 5 form: first byte and class.
_Ack = PubAck | PubRec | PubRel | PubComp
_ACKS: Final[dict[PacketType, tuple[int, type[_Ack]]]] = {
    PacketType.PUBACK: (0x40, PubAck),
    PacketType.PUBREC: (0x50, PubRec),
    PacketType.PUBREL: (0x62, PubRel),
    PacketType.PUBCOMP: (0x70, PubComp),
}
_ACK_HEADERS: Final = {cls: (type_byte, ptype) for ptype, (type_byte, cls) in _ACKS.items()}
_SHARED_PREFIX = "$share/"


# ------------------------------------------------------------------------------ decoding


# PacketType by the high nibble of the first byte; None for the reserved type 0.
PACKET_TYPES: Final = (None, *PacketType)

# Decoded topic names by their raw bytes: devices publish to few topics many
# times, and a hit skips UTF-8 decoding and validation. Dropped whole when full.
_TOPICS: dict[bytes, str] = {}
_TOPIC_CACHE_LIMIT = 4096


def _remember_topic(raw: bytes, topic: str) -> None:
    """Keep a valid topic name by its raw bytes (``_TOPICS``)."""
    if len(_TOPICS) >= _TOPIC_CACHE_LIMIT:
        _TOPICS.clear()
    _TOPICS[raw] = topic


def decode_packet(type_byte: int, body: bytes, version: int = 4) -> Packet:
    """Decode one packet from its first byte and its body (the remaining length bytes)."""
    ptype = PACKET_TYPES[type_byte >> 4]
    if ptype is None:
        raise MQTTProtocolError("reserved packet type 0")
    flags = type_byte & 0x0F
    if ptype is PacketType.PUBLISH:
        return decode_publish(flags, body, version)
    if ptype is PacketType.AUTH and version != 5:
        raise MQTTProtocolError("AUTH is an MQTT 5 packet", ReasonCode.PROTOCOL_ERROR)
    if flags != _REQUIRED_FLAGS[ptype]:
        raise MQTTProtocolError(f"bad fixed-header flags for {ptype.name}")
    r = Reader(body)
    packet = _decode_v5(ptype, r) if version == 5 else _decode_v3(ptype, r)
    if r.remaining():
        raise MQTTProtocolError(f"{ptype.name} longer than its fields")
    return packet


def _decode_v3(ptype: PacketType, r: Reader) -> Packet:
    match ptype:
        case PacketType.CONNECT:
            return _decode_connect(r)
        case PacketType.CONNACK:
            ack_flags = r.u8()
            if ack_flags & 0xFE:
                raise MQTTProtocolError("reserved CONNACK flags set")
            return ConnAck(session_present=bool(ack_flags & 1), return_code=r.u8())
        case PacketType.PUBACK:
            return PubAck(packet_id=_packet_id(r))
        case PacketType.PUBREC:
            return PubRec(packet_id=_packet_id(r))
        case PacketType.PUBREL:
            return PubRel(packet_id=_packet_id(r))
        case PacketType.PUBCOMP:
            return PubComp(packet_id=_packet_id(r))
        case PacketType.SUBSCRIBE:
            return _decode_subscribe(r, 4)
        case PacketType.SUBACK:
            pid = _packet_id(r)
            return SubAck(packet_id=pid, return_codes=tuple(r.rest()))
        case PacketType.UNSUBSCRIBE:
            return _decode_unsubscribe(r, 4)
        case PacketType.UNSUBACK:
            return UnsubAck(packet_id=_packet_id(r))
        case PacketType.PINGREQ:
            return PingReq()
        case PacketType.PINGRESP:
            return PingResp()
        case PacketType.DISCONNECT:
            return Disconnect()
        case _:  # pragma: no cover - PUBLISH and AUTH are handled by decode_packet
            raise AssertionError(ptype)


def _decode_v5(ptype: PacketType, r: Reader) -> Packet:
    match ptype:
        case PacketType.CONNECT:
            return _decode_connect(r)
        case PacketType.CONNACK:
            return _decode_connack5(r)
        case PacketType.PUBACK | PacketType.PUBREC | PacketType.PUBREL | PacketType.PUBCOMP:
            pid = _packet_id(r)
            code, props = _reason_and_properties(r, ptype)
            return _ACKS[ptype][1](packet_id=pid, reason_code=code, properties=props)
        case PacketType.SUBSCRIBE:
            return _decode_subscribe(r, 5)
        case PacketType.SUBACK:
            pid = _packet_id(r)
            props = decode_properties(r, SCOPES[ptype])
            return SubAck(packet_id=pid, return_codes=_reason_list(r, ptype), properties=props)
        case PacketType.UNSUBSCRIBE:
            return _decode_unsubscribe(r, 5)
        case PacketType.UNSUBACK:
            pid = _packet_id(r)
            props = decode_properties(r, SCOPES[ptype])
            return UnsubAck(packet_id=pid, reason_codes=_reason_list(r, ptype), properties=props)
        case PacketType.PINGREQ:
            return PingReq()
        case PacketType.PINGRESP:
            return PingResp()
        case PacketType.DISCONNECT:
            code, props = _reason_and_properties(r, ptype)
            return Disconnect(reason_code=code, properties=props)
        case PacketType.AUTH:
            code, props = _reason_and_properties(r, ptype)
            return Auth(reason_code=code, properties=props)
        case _:  # pragma: no cover - PUBLISH is handled by decode_packet
            raise AssertionError(ptype)


def _packet_id(r: Reader) -> int:
    pid = r.u16()
    if pid == 0:
        raise MQTTProtocolError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
    return pid


def _check_reason(code: int, ptype: PacketType) -> None:
    if code not in REASON_CODES[ptype]:
        raise MQTTProtocolError(
            f"reason code 0x{code:02x} is not valid in {ptype.name}", ReasonCode.PROTOCOL_ERROR
        )


def _reason_and_properties(r: Reader, ptype: PacketType) -> tuple[int, Properties]:
    """The optional reason code and property block that end PUBACK-like packets,
    DISCONNECT and AUTH: absent means success, and a lone reason code has no properties
    (3.4.2.1, 3.14.2.1, 3.15.2.1)."""
    if not r.remaining():
        return 0, NO_PROPERTIES
    code = r.u8()
    _check_reason(code, ptype)
    if not r.remaining():
        return code, NO_PROPERTIES
    return code, decode_properties(r, SCOPES[ptype])


def _reason_list(r: Reader, ptype: PacketType) -> tuple[int, ...]:
    """SUBACK and UNSUBACK payloads: one reason code per topic filter, so at least one."""
    codes = tuple(r.rest())
    if not codes:
        raise MQTTProtocolError(f"{ptype.name} with no reason code", ReasonCode.PROTOCOL_ERROR)
    for code in codes:
        _check_reason(code, ptype)
    return codes


def decode_publish(flags: int, body: bytes, version: int) -> Publish:
    """Decode a PUBLISH body; ``flags`` are the low four bits of its first byte."""
    qos = (flags >> 1) & 3
    if version != 5 and qos != 3 and (qos or not flags & 8):
        # The common case, no properties: without the general machinery.
        n = len(body)
        end = 2 + ((body[0] << 8) | body[1]) if n >= 2 else n + 1
        if end > n:
            raise MQTTProtocolError("packet shorter than its fields")
        raw = body[2:end]
        topic = _TOPICS.get(raw)
        if topic is None:
            topic = decode_utf8(raw)
            validate_topic_name(topic)
            _remember_topic(raw, topic)
        if not qos:
            return Publish(topic=topic, payload=body[end:], retain=bool(flags & 1))
        if end + 2 > n:
            raise MQTTProtocolError("packet shorter than its fields")
        pid = (body[end] << 8) | body[end + 1]
        if not pid:
            raise MQTTProtocolError("packet identifier 0", ReasonCode.PROTOCOL_ERROR)
        return Publish(
            topic=topic,
            payload=body[end + 2 :],
            qos=qos,
            retain=bool(flags & 1),
            dup=bool(flags & 8),
            packet_id=pid,
        )
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MQTTProtocolError("PUBLISH with QoS 3")
    dup = bool(flags & 8)
    if dup and qos == 0:
        raise MQTTProtocolError("DUP set on a QoS 0 PUBLISH")
    r = Reader(body)
    if version == 5:
        raw = r.binary()
        topic = _TOPICS.get(raw) or decode_utf8(raw)
        publish = _decode_publish5(r, topic, qos, dup, bool(flags & 1))
        if topic and raw not in _TOPICS:
            # Valid: from now on MQTTConnection.on_plain_publish may have such PUBLISHes.
            _remember_topic(raw, topic)
        return publish
    topic = r.string()
    validate_topic_name(topic)
    packet_id = _packet_id(r) if qos else None
    return Publish(
        topic=topic, payload=r.rest(), qos=qos, retain=bool(flags & 1), dup=dup, packet_id=packet_id
    )


def _decode_publish5(r: Reader, topic: str, qos: int, dup: bool, retain: bool) -> Publish:
    packet_id = _packet_id(r) if qos else None
    props = decode_properties(r, _PUBLISH_SCOPE)
    if topic:
        validate_topic_name(topic)
    elif props.topic_alias is None:
        # An empty topic name stands for the one a Topic Alias was bound to (3.3.2.1).
        raise MQTTProtocolError("empty topic name without a topic alias", ReasonCode.PROTOCOL_ERROR)
    return Publish(
        topic=topic,
        payload=r.rest(),
        qos=qos,
        retain=retain,
        dup=dup,
        packet_id=packet_id,
        properties=props,
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
    try:
        return _decode_connect_rest(r, name, level)
    except MQTTProtocolError as exc:
        # The level is known: an MQTT 5 server may answer in kind (4.13.1).
        exc.protocol_level = level
        raise


def _decode_connect_rest(r: Reader, name: str, level: int) -> Connect:
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
    # Only 3.1.1 ties the password to a user name; 3.1 and 5 (3.1.2.9) do not.
    if has_password and not has_username and level == 4:
        raise MQTTProtocolError("password flag without user name flag")
    keep_alive = r.u16()
    v5 = level == 5
    props = decode_properties(r, SCOPES[PacketType.CONNECT]) if v5 else NO_PROPERTIES
    if props.authentication_data is not None and props.authentication_method is None:
        raise MQTTProtocolError("authentication data without a method", ReasonCode.PROTOCOL_ERROR)
    client_id = r.string()
    will = None
    if will_flag:
        will_props = decode_properties(r, WILL_SCOPE) if v5 else NO_PROPERTIES
        will_topic = r.string()
        validate_topic_name(will_topic)
        will = Will(
            topic=will_topic,
            payload=r.binary(),
            qos=will_qos,
            retain=will_retain,
            properties=will_props,
        )
    username = r.string() if has_username else None
    password = r.binary() if has_password else None
    if r.remaining():
        raise MQTTProtocolError("CONNECT longer than its fields")
    return Connect(
        protocol_name=name,
        protocol_level=level,
        client_id=client_id,
        clean_start=bool(flags & 2),
        keep_alive=keep_alive,
        username=username,
        password=password,
        will=will,
        properties=props,
    )


def _decode_connack5(r: Reader) -> ConnAck:
    ack_flags = r.u8()
    if ack_flags & 0xFE:
        raise MQTTProtocolError("reserved CONNACK flags set")
    code = r.u8()
    _check_reason(code, PacketType.CONNACK)
    if code and ack_flags:
        # A refused connection has no session to be present [MQTT-3.2.2-6].
        raise MQTTProtocolError(
            "session present on a refused connection", ReasonCode.PROTOCOL_ERROR
        )
    props = decode_properties(r, SCOPES[PacketType.CONNACK])
    return ConnAck(session_present=bool(ack_flags), return_code=code, properties=props)


def _decode_subscribe(r: Reader, version: int) -> Subscribe:
    pid = _packet_id(r)
    v5 = version == 5
    props = decode_properties(r, SCOPES[PacketType.SUBSCRIBE]) if v5 else NO_PROPERTIES
    check_options = _check_options5 if v5 else _check_options
    subs: list[tuple[str, int]] = []
    while r.remaining():
        raw = r.binary()
        topic_filter = decode_utf8(raw)
        validate_topic_filter(topic_filter)
        options = r.u8()
        check_options(topic_filter, options)
        subs.append((topic_filter, options))
    if not subs:
        raise MQTTProtocolError("SUBSCRIBE with no topic filter", ReasonCode.PROTOCOL_ERROR)
    return Subscribe(packet_id=pid, subscriptions=tuple(subs), properties=props)


def _check_options(topic_filter: str, options: int) -> None:
    """3.1/3.1.1: the options byte is the requested QoS alone."""
    if options & 0xFC:
        raise MQTTProtocolError("reserved subscription option bits set")
    if options == 3:
        raise MQTTProtocolError("requested QoS 3")


def _check_options5(topic_filter: str, options: int) -> None:
    """MQTT 5 subscription options (3.8.3.1): QoS, no local, retain as published,
    retain handling; bits 6-7 are reserved."""
    if options & 0xC0:
        raise MQTTProtocolError("reserved subscription option bits set")
    if options & 3 == 3:
        raise MQTTProtocolError("requested QoS 3", ReasonCode.PROTOCOL_ERROR)
    if options >> 4 == 3:
        raise MQTTProtocolError("retain handling 3", ReasonCode.PROTOCOL_ERROR)
    if options & 4 and topic_filter.startswith(_SHARED_PREFIX):
        # A shared subscriber could never receive its own messages [MQTT-3.8.3-4].
        raise MQTTProtocolError("no local on a shared subscription", ReasonCode.PROTOCOL_ERROR)


def _decode_unsubscribe(r: Reader, version: int) -> Unsubscribe:
    pid = _packet_id(r)
    v5 = version == 5
    props = decode_properties(r, SCOPES[PacketType.UNSUBSCRIBE]) if v5 else NO_PROPERTIES
    filters: list[str] = []
    while r.remaining():
        topic_filter = r.string()
        validate_topic_filter(topic_filter)
        filters.append(topic_filter)
    if not filters:
        raise MQTTProtocolError("UNSUBSCRIBE with no topic filter", ReasonCode.PROTOCOL_ERROR)
    return Unsubscribe(packet_id=pid, topic_filters=tuple(filters), properties=props)


# ------------------------------------------------------------------------------ encoding


def _frame(type_byte: int, body: bytes) -> bytes:
    return bytes((type_byte,)) + encode_varint(len(body)) + body


def publish_bytes(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    properties: bytes = b"",
) -> bytes:
    """A whole PUBLISH from already-encoded parts, in one join: the delivery hot path."""
    n = len(topic)
    if n > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    if not qos and not properties:
        length = 2 + n + len(payload)
        if length < 128:
            # The usual small QoS 0 message: a one-byte remaining length.
            first = 0x31 if retain else 0x30
            return bytes((first, length, n >> 8, n & 0xFF)) + topic + payload
    if qos:
        if packet_id is None:
            raise ValueError("a QoS 1 or 2 PUBLISH needs a packet id")
        ids = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big")
    else:
        ids = len(topic).to_bytes(2, "big") + topic
    first = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    length = len(ids) + len(properties) + len(payload)
    return b"".join((bytes((first,)), encode_varint(length), ids, properties, payload))


def encode_publish(packet: Publish, version: int = 4) -> bytes:
    return publish_bytes(
        packet.topic.encode(),
        packet.payload,
        qos=packet.qos,
        retain=packet.retain,
        dup=packet.dup,
        packet_id=packet.packet_id,
        properties=encode_properties(packet.properties, _PUBLISH_SCOPE) if version == 5 else b"",
    )


def encode_packet(packet: Packet, version: int = 4) -> bytes:
    if version == 5:
        return _encode_v5(packet)
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
            return _frame(0x82, pid.to_bytes(2, "big") + _subscriptions(subs))
        case Unsubscribe(packet_id=pid, topic_filters=filters):
            body = pid.to_bytes(2, "big") + b"".join(encode_string(f) for f in filters)
            return _frame(0xA2, body)
        case Connect():
            return _encode_connect(packet)
        case Auth():
            raise ValueError("AUTH is an MQTT 5 packet")
        case _:
            assert_never(packet)


def _encode_v5(packet: Packet) -> bytes:
    match packet:
        case Publish():
            return encode_publish(packet, 5)
        case PubAck() | PubRec() | PubRel() | PubComp():
            type_byte, ptype = _ACK_HEADERS[type(packet)]
            tail = _reason_tail(ptype, packet.reason_code, packet.properties)
            return _frame(type_byte, packet.packet_id.to_bytes(2, "big") + tail)
        case ConnAck():
            return _encode_connack5(packet)
        case SubAck(packet_id=pid, return_codes=codes, properties=props):
            return _encode_reason_list(0x90, PacketType.SUBACK, pid, codes, props)
        case UnsubAck(packet_id=pid, reason_codes=codes, properties=props):
            return _encode_reason_list(0xB0, PacketType.UNSUBACK, pid, codes, props)
        case PingReq():
            return b"\xc0\x00"
        case PingResp():
            return b"\xd0\x00"
        case Disconnect(reason_code=code, properties=props):
            return _frame(0xE0, _reason_tail(PacketType.DISCONNECT, code, props))
        case Auth(reason_code=code, properties=props):
            return _frame(0xF0, _reason_tail(PacketType.AUTH, code, props))
        case Subscribe(packet_id=pid, subscriptions=subs, properties=props):
            block = encode_properties(props, SCOPES[PacketType.SUBSCRIBE])
            return _frame(0x82, pid.to_bytes(2, "big") + block + _subscriptions(subs))
        case Unsubscribe(packet_id=pid, topic_filters=filters, properties=props):
            block = encode_properties(props, SCOPES[PacketType.UNSUBSCRIBE])
            body = b"".join(encode_string(f) for f in filters)
            return _frame(0xA2, pid.to_bytes(2, "big") + block + body)
        case Connect():
            return _encode_connect(packet)
        case _:
            assert_never(packet)


def _check_reason_to_send(ptype: PacketType, code: int) -> None:
    if code not in REASON_CODES[ptype]:
        raise ValueError(f"reason code 0x{code:02x} is not valid in {ptype.name}")


def _reason_tail(ptype: PacketType, code: int, props: Properties) -> bytes:
    """Reason code and properties in the shortest form the receiver must accept."""
    _check_reason_to_send(ptype, code)
    block = encode_properties(props, SCOPES[ptype])
    if block == b"\x00":
        if code == 0:
            return b""
        # AUTH's spec text only allows leaving out both; strict peers want the length.
        if ptype is not PacketType.AUTH:
            return bytes((code,))
    return bytes((code,)) + block


def _encode_reason_list(
    type_byte: int, ptype: PacketType, pid: int, codes: tuple[int, ...], props: Properties
) -> bytes:
    if not codes:
        raise ValueError(f"an MQTT 5 {ptype.name} needs one reason code per topic filter")
    for code in codes:
        _check_reason_to_send(ptype, code)
    block = encode_properties(props, SCOPES[ptype])
    return _frame(type_byte, pid.to_bytes(2, "big") + block + bytes(codes))


def _encode_connack5(packet: ConnAck) -> bytes:
    _check_reason_to_send(PacketType.CONNACK, packet.return_code)
    if packet.return_code and packet.session_present:
        raise ValueError("a refusing CONNACK cannot have session present")
    block = encode_properties(packet.properties, SCOPES[PacketType.CONNACK])
    head = bytes((1 if packet.session_present else 0, packet.return_code))
    return _frame(0x20, head + block)


def _subscriptions(subs: tuple[tuple[str, int], ...]) -> bytes:
    return b"".join(
        encode_string(topic_filter) + bytes((options,)) for topic_filter, options in subs
    )


def _encode_connect(packet: Connect) -> bytes:
    v5 = packet.protocol_level == 5
    flags = 2 if packet.clean_start else 0
    payload = encode_string(packet.client_id)
    if packet.will is not None:
        flags |= 4 | (packet.will.qos << 3) | (32 if packet.will.retain else 0)
        if v5:
            payload += encode_properties(packet.will.properties, WILL_SCOPE)
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
    if v5:
        header += encode_properties(packet.properties, SCOPES[PacketType.CONNECT])
    return _frame(0x10, header + payload)
