"""MQTT control packets as events: frozen, slotted, keyword-only dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect:
    protocol_name: str = "MQTT"
    protocol_level: int = 4
    client_id: str
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnAck:
    session_present: bool = False
    return_code: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PubRec:
    packet_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PubRel:
    packet_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PubComp:
    packet_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsubAck:
    packet_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    pass


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)
