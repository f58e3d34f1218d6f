"""STOMP codec (1.0, 1.1 and 1.2): frames, header escapes, framing, limits and state."""

from .connection import (
    CLOSED,
    MAX_FRAME_SIZE,
    MAX_HEADER_LENGTH,
    MAX_HEADERS,
    NEED_DATA,
    Event,
    Role,
    State,
    STOMPConnection,
)
from .errors import StompError
from .frames import (
    CLIENT_COMMANDS,
    COMMANDS,
    HEARTBEAT,
    SERVER_COMMANDS,
    VERSIONS,
    Frame,
    Heartbeat,
    negotiate,
    offered_versions,
)
from .wire import encode_frame, parse_heartbeat

__all__ = [
    "CLIENT_COMMANDS",
    "CLOSED",
    "COMMANDS",
    "HEARTBEAT",
    "MAX_FRAME_SIZE",
    "MAX_HEADERS",
    "MAX_HEADER_LENGTH",
    "NEED_DATA",
    "SERVER_COMMANDS",
    "VERSIONS",
    "Event",
    "Frame",
    "Heartbeat",
    "Role",
    "STOMPConnection",
    "State",
    "StompError",
    "encode_frame",
    "negotiate",
    "offered_versions",
    "parse_heartbeat",
]
