"""The ``[[bridges]]`` tables (docs/bridges.md), decoded with the rest of the config.

Each kind's own table (``[bridges.amqp]``, ``[bridges.mqtt]``, ...) is decoded by
that kind's ``Options`` struct, so that a kind's settings live with its code.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal, get_args

import msgspec

BridgeKind = Literal["amqp", "mqtt", "nats", "redis"]
KINDS: tuple[str, ...] = get_args(BridgeKind)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class BridgeTLSConfig(_Base, frozen=True):
    """A bridge's ``tls = {...}``: how it checks the upstream and who it is to it."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    server_name: str | None = None


class OutboundRuleConfig(_Base, frozen=True):
    """Local messages to send upstream: ``match`` a topic filter or ``$queue/NAME``."""

    match: str
    to: str = "{topic}"
    selector: str | None = None
    ack: Literal["stored", "upstream"] = "stored"


class InboundRuleConfig(_Base, frozen=True):
    """Upstream messages to take in: ``from`` in the kind's syntax, ``to`` a local
    destination template (a topic, or ``$queue/NAME``)."""

    source: str = msgspec.field(name="from")
    to: str = "{subject}"
    qos: int = 1


class OutboxConfig(_Base, frozen=True):
    """The policy of the bridge's outbox queues (docs/bridges.md, "Outbox")."""

    max_length: int | None = 100_000
    max_bytes: int | None = None
    overflow: Literal["reject-publish", "drop-head"] = "reject-publish"
    ttl: float | str | None = None
    max_deliveries: int | None = None
    dead_letter: str | None = None


class BridgeConfig(_Base, frozen=True):
    name: str
    kind: BridgeKind
    url: str
    tls: BridgeTLSConfig | None = None
    outbound: tuple[OutboundRuleConfig, ...] = ()
    inbound: tuple[InboundRuleConfig, ...] = ()
    # Where a route's forward_to_bridge sends a message upstream.
    forward_to: str = "{topic}"
    outbox: OutboxConfig = OutboxConfig()
    max_in_flight: int = 1024
    connect_timeout: float = 10.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    enabled: bool = True
    amqp: dict[str, Any] | None = None
    mqtt: dict[str, Any] | None = None
    nats: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None

    def options(self) -> object:
        """This kind's own table, decoded by its ``Options``. Raises ValueError."""
        module = importlib.import_module(f"gateway.bridges.{self.kind}")
        raw = getattr(self, self.kind) or {}
        try:
            return msgspec.convert(raw, module.Options)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None


def check_bridge(bridge: BridgeConfig) -> tuple[str, str] | None:
    """The first problem with ``bridge`` as (key, problem), or None."""
    if not _NAME.fullmatch(bridge.name):
        return (
            "name",
            "letters, digits, '_', '.' and '-', at most 64, starting with one of the first two",
        )
    for kind in KINDS:
        if kind != bridge.kind and getattr(bridge, kind) is not None:
            return kind, f"a table for kind {kind!r} on a {bridge.kind!r} bridge"
    if bridge.max_in_flight < 1:
        return "max_in_flight", "must be at least 1"
    if bridge.connect_timeout <= 0:
        return "connect_timeout", "must be more than 0 seconds"
    if not 0 < bridge.reconnect_min <= bridge.reconnect_max:
        return "reconnect_min", "must be more than 0 and at most reconnect_max"
    # A bridge with no rules may still serve routes' forward_to_bridge: checked there.
    for i, rule in enumerate(bridge.outbound):
        if rule.match.startswith("$queue/") and rule.selector is not None:
            return f"outbound[{i}].selector", "a queue is drained whole; use a route to select"
        if not rule.match:
            return f"outbound[{i}].match", "must not be empty"
    for i, inbound in enumerate(bridge.inbound):
        if not 0 <= inbound.qos <= 2:
            return f"inbound[{i}].qos", "must be 0, 1 or 2"
        if not inbound.source:
            return f"inbound[{i}].from", "must not be empty"
    if bridge.tls is not None and (bridge.tls.cert is None) != (bridge.tls.key is None):
        return "tls.cert", "cert and key go together"
    try:
        bridge.options()
    except ValueError as exc:
        return bridge.kind, str(exc)
    return _check_kind(bridge)


# Where each kind parses its URL schemes, outbound targets and inbound sources, so that
# a mistake is refused when the configuration loads, not at the first connect.
_PARSERS = {
    "amqp": ("gateway.bridges.amqp_protocol", "parse_target", "parse_source"),
    "nats": ("gateway.bridges.nats", None, "parse_source"),
}


def _check_kind(bridge: BridgeConfig) -> tuple[str, str] | None:
    from .base import Endpoint

    kind = importlib.import_module(f"gateway.bridges.{bridge.kind}")
    try:
        Endpoint.parse(bridge.url, kind.DEFAULT_PORTS, kind.TLS_SCHEMES)
    except ValueError as exc:
        return "url", str(exc)
    module_name, target_name, source_name = _PARSERS.get(bridge.kind, ("", None, None))
    if not module_name:
        return None
    module = importlib.import_module(module_name)
    checks: list[tuple[str, str | None, list[tuple[str, str]]]] = [
        (
            "outbound",
            target_name,
            [(f"outbound[{i}].to", rule.to) for i, rule in enumerate(bridge.outbound)]
            + [("forward_to", bridge.forward_to)],
        ),
        (
            "inbound",
            source_name,
            [(f"inbound[{i}].from", rule.source) for i, rule in enumerate(bridge.inbound)],
        ),
    ]
    for _, parser_name, items in checks:
        if parser_name is None:
            continue
        parse = getattr(module, parser_name)
        for key, text in items:
            try:
                parse(text)
            except ValueError as exc:
                return key, str(exc)
    return None
