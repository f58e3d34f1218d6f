"""MQTT codec (3.1 and 3.1.1 today; MQTT 5 follows): packets, framing and state."""

from .connection import CLOSED, NEED_DATA, MQTTConnection, Role, State
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
from .serialize import encode_packet, encode_publish

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ConnAck",
    "Connect",
    "ConnectReturnCode",
    "Disconnect",
    "MQTTConnection",
    "MQTTProtocolError",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "ReasonCode",
    "Role",
    "State",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "encode_packet",
    "encode_publish",
]
