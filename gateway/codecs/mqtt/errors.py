"""Typed errors raised by the MQTT codec, each carrying what to send back."""

from __future__ import annotations

from enum import IntEnum


class ReasonCode(IntEnum):
    """MQTT 5 reason codes the codec and listener use (spec section 2.4)."""

    SUCCESS = 0x00
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    SERVER_SHUTTING_DOWN = 0x8B
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_TOO_LARGE = 0x95
    QUOTA_EXCEEDED = 0x97


class ConnectReturnCode(IntEnum):
    """MQTT 3.1/3.1.1 CONNACK return codes (spec 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USER_NAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


class MQTTProtocolError(Exception):
    """The peer broke the protocol; the connection must be closed.

    ``reason`` is the MQTT 5 reason code for a DISCONNECT (or CONNACK while
    connecting). ``connack_code`` is set when the error happened while decoding
    CONNECT and a 3.1.1 CONNACK should be sent before closing (spec 3.1.4).
    """

    def __init__(
        self,
        message: str,
        reason: ReasonCode = ReasonCode.MALFORMED_PACKET,
        *,
        connack_code: ConnectReturnCode | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.connack_code = connack_code
