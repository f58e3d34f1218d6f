"""The configuration's schema: typed, frozen structs decoded from TOML, and the
error that names the file, key and problem (``gateway.config`` loads and checks
them; docs/config.md documents each key)."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Literal

import msgspec

from .bridges.config import BridgeConfig
from .core.routing import RouteRule

if TYPE_CHECKING:
    from .auth.acl import AclRule

Protocol = Literal["mqtt", "stomp", "http"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
Durability = Literal["sync", "async", "memory"]

# Protocols whose listeners exist today; the others are accepted by the schema
# so that the error can say they are not built yet rather than "unknown".
BUILT_PROTOCOLS: frozenset[str] = frozenset({"mqtt", "stomp", "http"})
DEFAULT_PORTS = {"mqtt": 1883, "stomp": 61613, "http": 8080}


class ConfigError(Exception):
    """A configuration problem: ``str(err)`` is the whole message for the operator."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


ClientCerts = Literal["none", "optional", "required"]
TLSVersion = Literal["1.2", "1.3"]


class TLSConfig(_Base, frozen=True):
    """A listener's ``tls = {...}`` table (docs/config.md, docs/security.md). Paths are
    relative to the working directory, as ``data_dir``; the files are read at start-up."""

    cert: str
    key: str
    ca: str | None = None
    client_certs: ClientCerts = "none"
    min_version: TLSVersion = "1.2"


class ListenerConfig(_Base, frozen=True):
    protocol: Protocol
    bind: str
    name: str = ""
    connect_timeout: float = 10.0
    max_packet_size: int = 16 * 1024 * 1024
    max_connections: int = 100_000
    # Limits (docs/security.md, "Limits"): 0 is off. max_connections_per_ip unset:
    # DEFAULT_CONNECTIONS_PER_IP for every address but loopback ones.
    max_connections_per_ip: int | None = None
    connection_rate_per_ip: float = 0.0
    connection_burst_per_ip: int = 0
    max_message_rate: float = 0.0
    max_byte_rate: float = 0.0
    max_subscriptions: int = 0
    auth_failures_allowed: int = 5
    auth_failure_window: float = 60.0
    auth_failure_delay: float = 1.0
    auth_failure_max_delay: float = 30.0
    receive_maximum: int = 100
    max_inflight: int = 100
    topic_alias_maximum: int = 10
    max_keep_alive: int = 65535
    backpressure_patience: float = 10.0
    heartbeat: float = 10.0
    # HTTP listeners: WebSocket upgrade paths, browser origins, API limits.
    mqtt_path: str = "/mqtt"
    stomp_path: str = "/stomp"
    ws_path: str = "/ws"
    allowed_origins: tuple[str, ...] = ()
    rate_limit: float = 0.0
    rate_burst: int = 0
    sse_keepalive: float = 15.0
    visibility_timeout: float = 30.0
    max_wait: float = 20.0
    tls: TLSConfig | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.protocol}:{self.bind}"

    @property
    def address(self) -> tuple[str, int]:
        return parse_bind(self.bind)


class GatewaySection(_Base, frozen=True):
    data_dir: str = "./data"
    drain_timeout: float = 5.0
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    max_queued_messages: int = 1000
    sys_interval: float = 10.0
    auto_create_queues: bool = True
    durability: Durability = "sync"
    store_fsync: bool = True
    store_max_size: int | None = None
    # GET /metrics on the HTTP listeners: "open" (no authentication, as Prometheus
    # scrapes), "admin" (the admin role, like the admin API) or "off".
    metrics: Literal["open", "admin", "off"] = "open"
    dashboard: bool = True


class QueueConfig(_Base, frozen=True):
    name: str
    max_length: int | None = None
    max_bytes: int | None = None
    overflow: Literal["drop-head", "reject-publish"] = "drop-head"
    max_deliveries: int | None = None
    dead_letter: str | None = None
    ttl: float | str | None = None
    durability: Durability | None = None

    @property
    def ttl_seconds(self) -> float | None:
        return None if self.ttl is None else parse_duration(self.ttl)


WebhookPreset = Literal["github", "stripe", "custom", "none"]


class WebhookConfig(_Base, frozen=True):
    """A ``[[webhooks]]`` table: ``POST /hooks/NAME`` on the HTTP listeners (docs/http.md)."""

    name: str
    destination: str
    preset: WebhookPreset
    secret: str | None = None
    secret_env: str | None = None
    # preset = "custom" only: where the signature is and what it signs.
    signature_header: str | None = None
    signature_format: str | None = None
    timestamp_header: str | None = None
    signed_payload: str | None = None
    tolerance: float | str = "5m"
    idempotency_header: str | None = None
    dedupe_window: float | str = "24h"
    dedupe_max: int = 10_000
    headers: dict[str, str] = {}

    @property
    def tolerance_seconds(self) -> float:
        return parse_duration(self.tolerance)

    @property
    def dedupe_window_seconds(self) -> float:
        return parse_duration(self.dedupe_window)


class RouteConfig(_Base, frozen=True):
    """A ``[[routes]]`` table: a routing rule, evaluated in order (docs/routing.md)."""

    match: str
    name: str = ""
    selector: str | None = None
    copy_to: tuple[str, ...] = ()
    divert_to: tuple[str, ...] = ()
    set_headers: dict[str, str] = {}
    remove_headers: tuple[str, ...] = ()
    forward_to_bridge: str | None = None
    drop: str | None = None
    stop: bool = False

    def rule(self) -> RouteRule:
        return RouteRule(
            match=self.match,
            name=self.name,
            selector=self.selector,
            copy_to=self.copy_to,
            divert_to=self.divert_to,
            set_headers=tuple(self.set_headers.items()),
            remove_headers=self.remove_headers,
            forward_to_bridge=self.forward_to_bridge,
            drop=self.drop,
            stop=self.stop,
        )


AnonymousMode = Literal["loopback", "allow", "deny"]


class JwtConfig(_Base, frozen=True):
    """``[auth.jwt]``: the keys and claims that bearer tokens are checked against
    (docs/security.md). Paths are relative to the working directory."""

    hs256_secret: str | None = None
    hs256_secret_env: str | None = None
    rs256_public_key: str | None = None
    es256_public_key: str | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 30.0
    groups_claim: str = "groups"
    acl_claim: str = "acl"

    @property
    def enabled(self) -> bool:
        return any(
            key is not None
            for key in (
                self.hs256_secret,
                self.hs256_secret_env,
                self.rs256_public_key,
                self.es256_public_key,
            )
        )


class AuthConfig(_Base, frozen=True):
    """``[auth]``: who may connect (docs/security.md, "Users, SASL and tokens")."""

    users_file: str | None = None
    anonymous: AnonymousMode = "loopback"
    jwt: JwtConfig = JwtConfig()
    # Members of this group (users file) may use the admin API, the dashboard and `gateway ctl`.
    admin_group: str = "admin"


AclAction = Literal["publish", "subscribe", "consume", "all"]


class AclConfig(_Base, frozen=True):
    """An ``[[acl]]`` table: an authorization rule, first match wins (docs/security.md)."""

    action: AclAction
    pattern: str
    allow: bool
    user: str | None = None
    group: str | None = None
    anonymous: bool = False

    def rule(self) -> AclRule:
        from .auth.acl import AclRule  # gateway.auth imports gateway.config

        return AclRule(
            action=self.action,
            pattern=self.pattern,
            allow=self.allow,
            user=self.user,
            group=self.group,
            anonymous=self.anonymous,
        )


class Config(_Base, frozen=True):
    gateway: GatewaySection = GatewaySection()
    listeners: tuple[ListenerConfig, ...] = ()
    queues: tuple[QueueConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    acl: tuple[AclConfig, ...] = ()
    bridges: tuple[BridgeConfig, ...] = ()
    auth: AuthConfig = AuthConfig()
    source: str = "<defaults>"


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string such as "500ms", "30s", "5m", "1h", "7d"."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", value)
        if match is None:
            raise ValueError(f"expected a duration like 30s, 5m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) and check both parts."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", bind)
    if match is None:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:1883 or [::1]:1883), got {bind!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    return host, port
