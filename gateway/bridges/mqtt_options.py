"""The ``[bridges.mqtt]`` table: the options of the ``mqtt`` bridge kind and their
bounds (docs/bridge-mqtt.md, "Options"). ``gateway.bridges.mqtt`` uses them."""

from __future__ import annotations

from typing import Literal

import msgspec


class Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``[bridges.mqtt]`` table (docs/bridge-mqtt.md)."""

    # Default: gateway-bridge-<bridge name>.
    client_id: str = ""
    version: Literal[4, 5] = 5
    # False with a session expiry: a persistent session, so that the broker keeps
    # QoS 1/2 messages for the inbound subscriptions while the gateway is away.
    clean_start: bool = False
    session_expiry: int = 3600
    keep_alive: int = 30
    # QoS of outbound publishes; 0 is confirmed as soon as it is written.
    qos: Literal[0, 1, 2] = 1
    # Pass a message's retain flag upstream (otherwise never retained there).
    retain: bool = False
    receive_maximum: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry must be 0 to 4294967295 seconds")
        if not 0 <= self.keep_alive <= 0xFFFF:
            raise ValueError("keep_alive must be 0 to 65535 seconds")
        if not 1 <= self.receive_maximum <= 0xFFFF:
            raise ValueError("receive_maximum must be 1 to 65535")
