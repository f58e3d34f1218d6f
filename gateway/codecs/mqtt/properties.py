"""MQTT 5 properties (spec 2.2.2): one table drives decoding, encoding and the rules.

A property block is a variable byte integer length followed by properties, each an
identifier and a value of the identifier's data type. Which identifiers a block may
hold depends on where it sits (the packet type, or the will properties in CONNECT):
anything else is a Malformed Packet (2.2.2.2). Repeating a property is a Protocol
Error, except User Property (anywhere) and Subscription Identifier (PUBLISH only).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, auto
from typing import Any, Final

from .errors import MQTTProtocolError, ReasonCode
from .packets import NO_PROPERTIES, PacketType, Properties
from .wire import Reader, encode_binary, encode_string, encode_varint


class PropertyId(IntEnum):
    """Property identifiers (spec table 2-4)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class _Kind(Enum):
    """The data types of property values (spec 1.5)."""

    BYTE = auto()
    TWO_BYTE = auto()
    FOUR_BYTE = auto()
    VARINT = auto()
    STRING = auto()
    BINARY = auto()
    STRING_PAIR = auto()


_P = PropertyId
_K = _Kind

# (identifier, Properties field, data type), in identifier order: the encoding order.
_FIELDS: Final[tuple[tuple[PropertyId, str, _Kind], ...]] = (
    (_P.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", _K.BYTE),
    (_P.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval", _K.FOUR_BYTE),
    (_P.CONTENT_TYPE, "content_type", _K.STRING),
    (_P.RESPONSE_TOPIC, "response_topic", _K.STRING),
    (_P.CORRELATION_DATA, "correlation_data", _K.BINARY),
    (_P.SUBSCRIPTION_IDENTIFIER, "subscription_identifiers", _K.VARINT),
    (_P.SESSION_EXPIRY_INTERVAL, "session_expiry_interval", _K.FOUR_BYTE),
    (_P.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier", _K.STRING),
    (_P.SERVER_KEEP_ALIVE, "server_keep_alive", _K.TWO_BYTE),
    (_P.AUTHENTICATION_METHOD, "authentication_method", _K.STRING),
    (_P.AUTHENTICATION_DATA, "authentication_data", _K.BINARY),
    (_P.REQUEST_PROBLEM_INFORMATION, "request_problem_information", _K.BYTE),
    (_P.WILL_DELAY_INTERVAL, "will_delay_interval", _K.FOUR_BYTE),
    (_P.REQUEST_RESPONSE_INFORMATION, "request_response_information", _K.BYTE),
    (_P.RESPONSE_INFORMATION, "response_information", _K.STRING),
    (_P.SERVER_REFERENCE, "server_reference", _K.STRING),
    (_P.REASON_STRING, "reason_string", _K.STRING),
    (_P.RECEIVE_MAXIMUM, "receive_maximum", _K.TWO_BYTE),
    (_P.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", _K.TWO_BYTE),
    (_P.TOPIC_ALIAS, "topic_alias", _K.TWO_BYTE),
    (_P.MAXIMUM_QOS, "maximum_qos", _K.BYTE),
    (_P.RETAIN_AVAILABLE, "retain_available", _K.BYTE),
    (_P.USER_PROPERTY, "user_properties", _K.STRING_PAIR),
    (_P.MAXIMUM_PACKET_SIZE, "maximum_packet_size", _K.FOUR_BYTE),
    (_P.WILDCARD_SUBSCRIPTION_AVAILABLE, "wildcard_subscription_available", _K.BYTE),
    (_P.SUBSCRIPTION_IDENTIFIER_AVAILABLE, "subscription_identifier_available", _K.BYTE),
    (_P.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available", _K.BYTE),
)
_BY_ID: Final = {int(ident): (name, kind) for ident, name, kind in _FIELDS}
# Plain ints for the decoding loop: comparing with an enum member costs an attribute lookup.
_USER_PROPERTY: Final = int(_P.USER_PROPERTY)
_SUBSCRIPTION_IDENTIFIER: Final = int(_P.SUBSCRIPTION_IDENTIFIER)
_RESPONSE_TOPIC: Final = int(_P.RESPONSE_TOPIC)

# Value rules the spec states property by property; breaking one is a Protocol Error.
_ZERO_OR_ONE: Final = frozenset[int](
    {
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.REQUEST_PROBLEM_INFORMATION,
        _P.REQUEST_RESPONSE_INFORMATION,
        _P.MAXIMUM_QOS,
        _P.RETAIN_AVAILABLE,
        _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        _P.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
_NON_ZERO: Final = frozenset[int](
    {_P.SUBSCRIPTION_IDENTIFIER, _P.RECEIVE_MAXIMUM, _P.TOPIC_ALIAS, _P.MAXIMUM_PACKET_SIZE}
)


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a property block sits: the identifiers it may hold and those that may repeat."""

    name: str
    allowed: frozenset[int]
    repeatable: frozenset[int] = frozenset({_USER_PROPERTY})


def _scope(name: str, *allowed: PropertyId, repeatable: frozenset[int] | None = None) -> Scope:
    # Every block may carry user properties.
    ids = frozenset({_USER_PROPERTY, *(int(ident) for ident in allowed)})
    return Scope(name, ids) if repeatable is None else Scope(name, ids, repeatable)


def _ack_scope(name: str) -> Scope:
    return _scope(name, _P.REASON_STRING)


# Spec table 2-4, read by packet type.
SCOPES: Final[dict[PacketType, Scope]] = {
    PacketType.CONNECT: _scope(
        "CONNECT",
        _P.SESSION_EXPIRY_INTERVAL,
        _P.AUTHENTICATION_METHOD,
        _P.AUTHENTICATION_DATA,
        _P.REQUEST_PROBLEM_INFORMATION,
        _P.REQUEST_RESPONSE_INFORMATION,
        _P.RECEIVE_MAXIMUM,
        _P.TOPIC_ALIAS_MAXIMUM,
        _P.MAXIMUM_PACKET_SIZE,
    ),
    PacketType.CONNACK: _scope(
        "CONNACK",
        _P.SESSION_EXPIRY_INTERVAL,
        _P.ASSIGNED_CLIENT_IDENTIFIER,
        _P.SERVER_KEEP_ALIVE,
        _P.AUTHENTICATION_METHOD,
        _P.AUTHENTICATION_DATA,
        _P.RESPONSE_INFORMATION,
        _P.SERVER_REFERENCE,
        _P.REASON_STRING,
        _P.RECEIVE_MAXIMUM,
        _P.TOPIC_ALIAS_MAXIMUM,
        _P.MAXIMUM_QOS,
        _P.RETAIN_AVAILABLE,
        _P.MAXIMUM_PACKET_SIZE,
        _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        _P.SHARED_SUBSCRIPTION_AVAILABLE,
    ),
    PacketType.PUBLISH: _scope(
        "PUBLISH",
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.MESSAGE_EXPIRY_INTERVAL,
        _P.CONTENT_TYPE,
        _P.RESPONSE_TOPIC,
        _P.CORRELATION_DATA,
        _P.SUBSCRIPTION_IDENTIFIER,
        _P.TOPIC_ALIAS,
        # A message matching several subscriptions carries each one's identifier (3.3.4).
        repeatable=frozenset({_USER_PROPERTY, _SUBSCRIPTION_IDENTIFIER}),
    ),
    PacketType.PUBACK: _ack_scope("PUBACK"),
    PacketType.PUBREC: _ack_scope("PUBREC"),
    PacketType.PUBREL: _ack_scope("PUBREL"),
    PacketType.PUBCOMP: _ack_scope("PUBCOMP"),
    PacketType.SUBSCRIBE: _scope("SUBSCRIBE", _P.SUBSCRIPTION_IDENTIFIER),
    PacketType.SUBACK: _ack_scope("SUBACK"),
    PacketType.UNSUBSCRIBE: _scope("UNSUBSCRIBE"),
    PacketType.UNSUBACK: _ack_scope("UNSUBACK"),
    PacketType.DISCONNECT: _scope(
        "DISCONNECT", _P.SESSION_EXPIRY_INTERVAL, _P.SERVER_REFERENCE, _P.REASON_STRING
    ),
    PacketType.AUTH: _scope(
        "AUTH", _P.AUTHENTICATION_METHOD, _P.AUTHENTICATION_DATA, _P.REASON_STRING
    ),
}

WILL_SCOPE: Final = _scope(
    "will properties",
    _P.PAYLOAD_FORMAT_INDICATOR,
    _P.MESSAGE_EXPIRY_INTERVAL,
    _P.CONTENT_TYPE,
    _P.RESPONSE_TOPIC,
    _P.CORRELATION_DATA,
    _P.WILL_DELAY_INTERVAL,
)


# ------------------------------------------------------------------------------ decoding


def decode_properties(r: Reader, scope: Scope) -> Properties:
    """Read the property block at the reader's position."""
    pos = r.pos
    if pos < r.end and r.buf[pos] == 0:
        # Most blocks are empty: skip building anything.
        r.pos = pos + 1
        return NO_PROPERTIES
    length = r.varint()
    end = r.pos + length
    if end > r.end:
        raise MQTTProtocolError("property length runs past the end of the packet")
    block = Reader(r.buf, r.pos, end)
    r.pos = end
    fields: dict[str, Any] = {}
    users: list[tuple[str, str]] = []
    subscription_ids: list[int] = []
    while block.remaining():
        # Identifiers are variable byte integers, but every defined one is below 128:
        # a first byte of 128 or more cannot start a known identifier.
        ident = block.u8()
        _check_allowed(ident, scope)
        if ident == _USER_PROPERTY:
            users.append((block.string(), block.string()))
        elif ident == _SUBSCRIPTION_IDENTIFIER:
            if subscription_ids and ident not in scope.repeatable:
                raise _duplicate(ident, scope)
            sid = block.varint()
            _check_value(ident, sid)
            subscription_ids.append(sid)
        else:
            name, kind = _BY_ID[ident]
            if name in fields:
                raise _duplicate(ident, scope)
            value = _read(block, kind)
            _check_value(ident, value)
            fields[name] = value
    if users:
        fields["user_properties"] = tuple(users)
    if subscription_ids:
        fields["subscription_identifiers"] = tuple(subscription_ids)
    return Properties(**fields)


def _check_allowed(ident: int, scope: Scope) -> None:
    if ident not in scope.allowed:
        if ident in _BY_ID:
            raise MQTTProtocolError(f"{_describe(ident)} is not allowed in {scope.name}")
        raise MQTTProtocolError(f"unknown property identifier 0x{ident:02x}")


def _describe(ident: int) -> str:
    return PropertyId(ident).name.lower().replace("_", " ") + " property"


def _duplicate(ident: int, scope: Scope) -> MQTTProtocolError:
    return MQTTProtocolError(
        f"{_describe(ident)} repeated in {scope.name}", ReasonCode.PROTOCOL_ERROR
    )


def _read(r: Reader, kind: _Kind) -> int | str | bytes:
    match kind:
        case _Kind.BYTE:
            return r.u8()
        case _Kind.TWO_BYTE:
            return r.u16()
        case _Kind.FOUR_BYTE:
            return r.u32()
        case _Kind.VARINT:
            return r.varint()
        case _Kind.STRING:
            return r.string()
        case _Kind.BINARY:
            return r.binary()
        case _Kind.STRING_PAIR:  # pragma: no cover - user properties are read by the caller
            raise AssertionError(kind)


def _check_value(ident: int, value: int | str | bytes) -> None:
    if ident in _ZERO_OR_ONE:
        if value not in (0, 1):
            raise _bad_value(ident, value, "must be 0 or 1")
    elif ident in _NON_ZERO:
        if value == 0:
            raise _bad_value(ident, value, "must not be 0")
    elif ident == _RESPONSE_TOPIC and not _is_topic_name(value):
        raise _bad_value(ident, value, "is not a valid topic name")


def _is_topic_name(value: object) -> bool:
    """A Response Topic is a topic name: non-empty, no wildcards (3.3.2.3.5)."""
    return isinstance(value, str) and bool(value) and "+" not in value and "#" not in value


def _bad_value(ident: int, value: object, rule: str) -> MQTTProtocolError:
    return MQTTProtocolError(f"{_describe(ident)} {value!r} {rule}", ReasonCode.PROTOCOL_ERROR)


# ------------------------------------------------------------------------------ encoding


def encode_properties(props: Properties, scope: Scope) -> bytes:
    """The property block for ``props``.

    Raises ValueError for a property the scope does not allow, a repeated
    subscription identifier outside PUBLISH, or a value the spec forbids: the
    peer would have to refuse the packet.
    """
    if props is NO_PROPERTIES:
        return b"\x00"
    out = bytearray()
    for ident, name, kind in _FIELDS:
        value = getattr(props, name)
        if value is None or value == ():
            continue
        if ident not in scope.allowed:
            raise ValueError(f"{name} is not allowed in {scope.name}")
        if kind is _Kind.STRING_PAIR:
            for key, val in value:
                out.append(ident)
                out += encode_string(key) + encode_string(val)
        elif ident == _SUBSCRIPTION_IDENTIFIER:
            if len(value) > 1 and ident not in scope.repeatable:
                raise ValueError(f"only one subscription identifier is allowed in {scope.name}")
            for sid in value:
                _check_for_send(ident, sid)
                out.append(ident)
                out += encode_varint(sid)
        else:
            _check_for_send(ident, value)
            out.append(ident)
            out += _write(kind, value)
    return encode_varint(len(out)) + out


def _check_for_send(ident: int, value: int | str | bytes) -> None:
    try:
        _check_value(ident, value)
    except MQTTProtocolError as exc:
        raise ValueError(str(exc)) from None


def _write(kind: _Kind, value: Any) -> bytes:
    match kind:
        case _Kind.BYTE:
            return _uint(value, 1)
        case _Kind.TWO_BYTE:
            return _uint(value, 2)
        case _Kind.FOUR_BYTE:
            return _uint(value, 4)
        case _Kind.VARINT:
            return encode_varint(value)
        case _Kind.STRING:
            return encode_string(value)
        case _Kind.BINARY:
            return encode_binary(value)
        case _Kind.STRING_PAIR:  # pragma: no cover - user properties are written by the caller
            raise AssertionError(kind)


def _uint(value: int, size: int) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{value} does not fit in {size} byte(s)")
    return value.to_bytes(size, "big")
