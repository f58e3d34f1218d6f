"""Typed, frozen configuration, decoded once from TOML.

Every error names the file, the key and the problem; ``load`` raises
``ConfigError`` before anything opens a port. docs/config.md documents each key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from .bridges.config import BridgeConfig, check_bridge
from .core.routing import RouteError, Router, RouteRule

if TYPE_CHECKING:
    from .auth.acl import Acl, AclRule

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
        from .auth.acl import AclRule  # gateway.auth imports this module

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


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _explain(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Turn msgspec's message into (dotted key, problem)."""
    match = _AT.match(str(exc))
    assert match is not None
    msg, path = match.group("msg"), (match.group("path") or "").lstrip(".")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", msg)
    if unknown:
        return _join(path, unknown.group(1)), "unknown key"
    missing = re.fullmatch(r"Object missing required field `(.+)`", msg)
    if missing:
        return _join(path, missing.group(1)), "required key is missing"
    return path, msg[0].lower() + msg[1:]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _validate(config: Config) -> None:
    src = config.source
    if config.gateway.drain_timeout < 0:
        raise ConfigError(src, "gateway.drain_timeout", "must be zero or more seconds")
    if config.gateway.sys_interval < 0:
        raise ConfigError(src, "gateway.sys_interval", "must be 0 (off) or more seconds")
    if config.gateway.store_max_size is not None and config.gateway.store_max_size < 65536:
        raise ConfigError(src, "gateway.store_max_size", "must be at least 65536 bytes")
    if config.gateway.max_queued_messages < 1:
        raise ConfigError(src, "gateway.max_queued_messages", "must be at least 1")
    _validate_queues(config)
    _validate_webhooks(config)
    _validate_bridges(config)
    _validate_routes(config)
    _validate_acl(config)
    _validate_auth(config)
    names: set[str] = set()
    for i, listener in enumerate(config.listeners):
        key = f"listeners[{i}]"
        try:
            parse_bind(listener.bind)
        except ValueError as exc:
            raise ConfigError(src, f"{key}.bind", str(exc)) from None
        if listener.protocol not in BUILT_PROTOCOLS:
            raise ConfigError(
                src,
                f"{key}.protocol",
                f"{listener.protocol!r} listeners are not built yet "
                f"(available: {', '.join(sorted(BUILT_PROTOCOLS))})",
            )
        if listener.connect_timeout <= 0:
            raise ConfigError(src, f"{key}.connect_timeout", "must be more than 0 seconds")
        if not 64 <= listener.max_packet_size <= 268_435_460:
            raise ConfigError(
                src, f"{key}.max_packet_size", "must be between 64 and 268435460 bytes"
            )
        if listener.max_connections < 1:
            raise ConfigError(src, f"{key}.max_connections", "must be at least 1")
        _validate_limits(src, key, listener)
        for field, low in (("receive_maximum", 1), ("max_inflight", 1), ("topic_alias_maximum", 0)):
            if not low <= getattr(listener, field) <= 65535:
                raise ConfigError(src, f"{key}.{field}", f"must be between {low} and 65535")
        if listener.heartbeat < 0:
            raise ConfigError(src, f"{key}.heartbeat", "must be 0 (off) or more seconds")
        if listener.backpressure_patience < 0:
            raise ConfigError(src, f"{key}.backpressure_patience", "must be 0 or more seconds")
        if not 1 <= listener.max_keep_alive <= 65535:
            raise ConfigError(src, f"{key}.max_keep_alive", "must be between 1 and 65535 seconds")
        _validate_http(src, key, listener)
        if listener.tls is not None:
            _validate_tls(src, f"{key}.tls", listener.tls)
        if listener.label in names:
            raise ConfigError(src, f"{key}.name", f"duplicate listener name {listener.label!r}")
        names.add(listener.label)


def _validate_limits(src: str, key: str, listener: ListenerConfig) -> None:
    for field in (
        "max_connections_per_ip",
        "connection_rate_per_ip",
        "connection_burst_per_ip",
        "max_message_rate",
        "max_byte_rate",
        "max_subscriptions",
        "auth_failures_allowed",
        "auth_failure_delay",
        "auth_failure_max_delay",
    ):
        value = getattr(listener, field)
        if value is not None and value < 0:
            raise ConfigError(src, f"{key}.{field}", "must be 0 (off) or more")
    if listener.auth_failure_window <= 0:
        raise ConfigError(src, f"{key}.auth_failure_window", "must be more than 0 seconds")


def _validate_http(src: str, key: str, listener: ListenerConfig) -> None:
    paths = (listener.mqtt_path, listener.stomp_path, listener.ws_path)
    for field, path in zip(("mqtt_path", "stomp_path", "ws_path"), paths, strict=True):
        if path and not path.startswith("/"):
            raise ConfigError(src, f"{key}.{field}", "must start with '/' (or be empty: off)")
        if path.startswith("/api/") or path.startswith("/hooks/"):
            raise ConfigError(src, f"{key}.{field}", "must not be under /api/ or /hooks/")
    used = [path for path in paths if path]
    if len(set(used)) != len(used):
        raise ConfigError(src, f"{key}.ws_path", "the WebSocket paths must differ")
    for field in ("rate_limit", "sse_keepalive", "visibility_timeout", "max_wait"):
        if getattr(listener, field) < 0:
            raise ConfigError(src, f"{key}.{field}", "must be 0 or more seconds")
    if listener.rate_burst < 0:
        raise ConfigError(src, f"{key}.rate_burst", "must be 0 or more")
    if listener.visibility_timeout == 0:
        raise ConfigError(src, f"{key}.visibility_timeout", "must be more than 0 seconds")


def _validate_tls(src: str, key: str, tls: TLSConfig) -> None:
    for field in ("cert", "key", "ca"):
        if getattr(tls, field) == "":
            raise ConfigError(src, f"{key}.{field}", "must not be empty")
    if tls.client_certs != "none" and tls.ca is None:
        raise ConfigError(
            src,
            f"{key}.ca",
            f"required with client_certs = {tls.client_certs!r}: the CA bundle that "
            "client certificates are verified against",
        )
    if tls.client_certs == "none" and tls.ca is not None:
        raise ConfigError(
            src,
            f"{key}.client_certs",
            "ca is given but client certificates are not asked for: "
            "set 'optional' or 'required' (or remove ca)",
        )


def _validate_queues(config: Config) -> None:
    seen: set[str] = set()
    for i, queue in enumerate(config.queues):
        key = f"queues[{i}]"
        if not queue.name or queue.name.startswith("$"):
            raise ConfigError(
                config.source, f"{key}.name", "must be non-empty and not start with '$'"
            )
        if queue.name in seen:
            raise ConfigError(config.source, f"{key}.name", f"duplicate queue {queue.name!r}")
        seen.add(queue.name)
        for field in ("max_length", "max_bytes", "max_deliveries"):
            value = getattr(queue, field)
            if value is not None and value < 1:
                raise ConfigError(config.source, f"{key}.{field}", "must be at least 1")
        if queue.dead_letter == queue.name:
            raise ConfigError(config.source, f"{key}.dead_letter", "a queue cannot be its own DLQ")
        try:
            queue.ttl_seconds  # noqa: B018 - parsed for its error
        except ValueError as exc:
            raise ConfigError(config.source, f"{key}.ttl", str(exc)) from None


_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_WEBHOOK_CUSTOM_ONLY = (
    "signature_header",
    "signature_format",
    "timestamp_header",
    "signed_payload",
)
_WEBHOOK_SECRET_KEYS = ("secret", "secret_env", *_WEBHOOK_CUSTOM_ONLY)


def _validate_webhooks(config: Config) -> None:
    src = config.source
    seen: set[str] = set()
    for i, hook in enumerate(config.webhooks):
        key = f"webhooks[{i}]"
        if not _WEBHOOK_NAME.fullmatch(hook.name):
            raise ConfigError(
                src, f"{key}.name", "must be 1-128 letters, digits, '.', '_', '~' or '-'"
            )
        if hook.name in seen:
            raise ConfigError(src, f"{key}.name", f"duplicate webhook {hook.name!r}")
        seen.add(hook.name)
        problem = _webhook_destination_problem(config, hook.destination)
        if problem:
            raise ConfigError(src, f"{key}.destination", problem)
        if hook.preset == "none":
            for field in _WEBHOOK_SECRET_KEYS:
                if getattr(hook, field) is not None:
                    raise ConfigError(
                        src, f"{key}.{field}", "preset 'none' verifies no signature; remove it"
                    )
        else:
            _validate_webhook_secret(src, key, hook, os.environ)
            _validate_webhook_scheme(src, key, hook)
        for field in ("tolerance", "dedupe_window"):
            try:
                parse_duration(getattr(hook, field))
            except ValueError as exc:
                raise ConfigError(src, f"{key}.{field}", str(exc)) from None
        if hook.dedupe_max < 1:
            raise ConfigError(src, f"{key}.dedupe_max", "must be at least 1")
        if hook.idempotency_header and not _HEADER_NAME.fullmatch(hook.idempotency_header):
            raise ConfigError(src, f"{key}.idempotency_header", "is not an HTTP header name")
        for name in hook.headers:
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(src, f"{key}.headers", f"{name!r} is not a header name")
            if name.lower() in ("webhook", "idempotency-key"):
                raise ConfigError(src, f"{key}.headers", f"{name!r} is set by the gateway")


def _validate_acl(config: Config) -> None:
    from .auth.acl import AclError, check_rule  # gateway.auth imports this module

    for i, item in enumerate(config.acl):
        try:
            check_rule(item.rule())
        except AclError as exc:
            raise ConfigError(config.source, f"acl[{i}].{exc.key}", exc.problem) from None


def build_acl(config: Config) -> Acl:
    """The ``[[acl]]`` rules. Always an ``Acl``: without rules it allows everything,
    except what an identity's own token rules do not allow."""
    from .auth.acl import Acl  # gateway.auth imports this module

    return Acl(item.rule() for item in config.acl)


def _validate_bridges(config: Config) -> None:
    src = config.source
    names: set[str] = set()
    for i, bridge in enumerate(config.bridges):
        problem = check_bridge(bridge)
        if problem is not None:
            raise ConfigError(src, f"bridges[{i}].{problem[0]}", problem[1])
        if bridge.name in names:
            raise ConfigError(src, f"bridges[{i}].name", f"duplicate bridge name {bridge.name!r}")
        names.add(bridge.name)


def build_router(config: Config) -> Router | None:
    """The compiled ``[[routes]]``, or None without any (then routing costs nothing).
    Raises RouteError; ``load`` has already refused a configuration that would."""
    if not config.routes:
        return None
    return Router(route.rule() for route in config.routes)


def _validate_routes(config: Config) -> None:
    src = config.source
    try:
        router = build_router(config)
    except RouteError as exc:
        raise ConfigError(src, f"routes[{exc.index}].{exc.key}", exc.problem) from None
    if router is None:
        return
    declared = {item.name for item in config.queues}
    for i, rule in enumerate(router.rules):
        bridge = rule.forward_to_bridge
        if bridge is not None and bridge not in {b.name for b in config.bridges}:
            raise ConfigError(
                src, f"routes[{i}].forward_to_bridge", f"bridge {bridge!r} is not configured"
            )
        if config.gateway.auto_create_queues:
            continue
        for field in ("copy_to", "divert_to"):
            for j, template in enumerate(getattr(rule, field)):
                literal = template.literal
                if literal and literal.startswith("$queue/") and literal[7:] not in declared:
                    raise ConfigError(
                        src,
                        f"routes[{i}].{field}[{j}]",
                        f"queue {literal[7:]!r} is not declared and "
                        "gateway.auto_create_queues is off",
                    )


def _webhook_destination_problem(config: Config, destination: str) -> str | None:
    # The neutral address form of http_mapping.parse_destination (config imports no
    # listener): "$queue/NAME" or a topic name.
    if destination.startswith("$queue/") and len(destination) > len("$queue/"):
        queue = destination[len("$queue/") :]
        if queue.startswith("$"):
            return "a queue name must not start with '$'"
        declared = {item.name for item in config.queues}
        if not config.gateway.auto_create_queues and queue not in declared:
            return f"queue {queue!r} is not declared and gateway.auto_create_queues is off"
        return None
    if not destination or any(c in destination for c in "+#\0"):
        return "expected a topic name (no wildcards) or $queue/NAME"
    if destination.startswith("$"):
        return "topics starting with '$' are reserved (a queue is $queue/NAME)"
    return None


def _validate_webhook_secret(
    src: str, key: str, hook: WebhookConfig, env: Mapping[str, str]
) -> None:
    if (hook.secret is None) == (hook.secret_env is None):
        raise ConfigError(
            src,
            f"{key}.secret",
            f"give exactly one of secret or secret_env (preset {hook.preset!r} verifies an "
            "HMAC-SHA256 signature; preset = 'none' accepts unsigned requests)",
        )
    if hook.secret is not None and not hook.secret:
        raise ConfigError(src, f"{key}.secret", "must not be empty")
    if hook.secret_env is not None and not env.get(hook.secret_env):
        raise ConfigError(
            src, f"{key}.secret_env", f"environment variable {hook.secret_env!r} is not set"
        )


def _validate_webhook_scheme(src: str, key: str, hook: WebhookConfig) -> None:
    if hook.preset != "custom":
        for field in _WEBHOOK_CUSTOM_ONLY:
            if getattr(hook, field) is not None:
                raise ConfigError(src, f"{key}.{field}", "only with preset = 'custom'")
        return
    for field in ("signature_header", "timestamp_header"):
        value = getattr(hook, field)
        if value is not None and not _HEADER_NAME.fullmatch(value):
            raise ConfigError(src, f"{key}.{field}", "is not an HTTP header name")
    if hook.signature_header is None:
        raise ConfigError(src, f"{key}.signature_header", "required with preset = 'custom'")
    form = hook.signature_format or "{hex}"
    if [form.count("{hex}"), form.count("{base64}")] not in ([1, 0], [0, 1]):
        raise ConfigError(
            src, f"{key}.signature_format", "must contain exactly one {hex} or {base64}"
        )
    signed = hook.signed_payload or ("{timestamp}.{body}" if hook.timestamp_header else "{body}")
    if signed.count("{body}") != 1:
        raise ConfigError(src, f"{key}.signed_payload", "must contain {body} exactly once")
    if hook.timestamp_header is not None and "{timestamp}" not in signed:
        raise ConfigError(
            src,
            f"{key}.signed_payload",
            "must contain {timestamp} with a timestamp_header: an unsigned timestamp "
            "does not stop replays",
        )
    if hook.timestamp_header is None and "{timestamp}" in signed:
        raise ConfigError(src, f"{key}.timestamp_header", "required by {timestamp}")


def _validate_auth(config: Config) -> None:
    # Imported here: gateway.auth imports this module.
    from .auth.tokens import MIN_HS256_SECRET, KeyFileError, load_public_key
    from .auth.users import load_users

    src, auth, jwt = config.source, config.auth, config.auth.jwt
    if jwt.hs256_secret is not None and jwt.hs256_secret_env is not None:
        raise ConfigError(src, "auth.jwt.hs256_secret", "give hs256_secret or hs256_secret_env")
    secret = jwt.hs256_secret
    if jwt.hs256_secret_env is not None:
        secret = os.environ.get(jwt.hs256_secret_env)
        if not secret:
            raise ConfigError(
                src,
                "auth.jwt.hs256_secret_env",
                f"environment variable {jwt.hs256_secret_env!r} is not set",
            )
    if secret is not None and len(secret.encode()) < MIN_HS256_SECRET:
        key = "hs256_secret" if jwt.hs256_secret is not None else "hs256_secret_env"
        raise ConfigError(src, f"auth.jwt.{key}", f"must be at least {MIN_HS256_SECRET} bytes")
    for field, alg in (("rs256_public_key", "RS256"), ("es256_public_key", "ES256")):
        path = getattr(jwt, field)
        if path is not None:
            try:
                load_public_key(path, alg)
            except KeyFileError as exc:
                raise ConfigError(src, f"auth.jwt.{field}", f"{path}: {exc}") from None
    for field in ("audience", "issuer", "groups_claim", "acl_claim"):
        if getattr(jwt, field) == "":
            raise ConfigError(src, f"auth.jwt.{field}", "must not be empty")
    if jwt.groups_claim == jwt.acl_claim:
        raise ConfigError(src, "auth.jwt.acl_claim", "must differ from groups_claim")
    if not 0 <= jwt.leeway <= 3600:
        raise ConfigError(src, "auth.jwt.leeway", "must be between 0 and 3600 seconds")
    if auth.users_file == "":
        raise ConfigError(src, "auth.users_file", "must not be empty (leave it out: no users)")
    if auth.users_file is not None:
        load_users(auth.users_file)  # UsersFileError (a ConfigError) names that file
    if auth.anonymous == "deny" and auth.users_file is None and not jwt.enabled:
        raise ConfigError(
            src,
            "auth.anonymous",
            "'deny' without users_file or a JWT key lets no client in",
        )


def loads(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    raw.pop("source", None)
    try:
        config = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        key, problem = _explain(exc)
        raise ConfigError(source, key, problem) from None
    config = msgspec.structs.replace(config, source=source)
    _validate(config)
    return config


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    return loads(text, str(path))


def default() -> Config:
    """The built-in defaults, as conf/gateway.toml: MQTT, STOMP and HTTP on all interfaces."""
    return Config(
        listeners=(
            ListenerConfig(protocol="mqtt", bind="0.0.0.0:1883"),
            ListenerConfig(protocol="stomp", bind="0.0.0.0:61613"),
            ListenerConfig(protocol="http", bind="0.0.0.0:8080"),
        )
    )


def parse_listen(spec: str) -> ListenerConfig:
    """Parse a ``--listen PROTO=HOST:PORT`` option."""
    proto, sep, bind = spec.partition("=")
    if not sep or proto not in DEFAULT_PORTS:
        raise ConfigError(
            "--listen", spec, "expected PROTO=HOST:PORT with PROTO one of mqtt, stomp, http"
        )
    try:
        parse_bind(bind)
    except ValueError as exc:
        raise ConfigError("--listen", spec, str(exc)) from None
    return msgspec.convert({"protocol": proto, "bind": bind}, ListenerConfig)


def override(
    config: Config,
    *,
    listen: Sequence[ListenerConfig] = (),
    data_dir: str | None = None,
    log_level: str | None = None,
) -> Config:
    """Apply command-line options: each ``--listen`` replaces that protocol's listeners."""
    replaced = {item.protocol for item in listen}
    listeners: Iterable[ListenerConfig] = [
        *(item for item in config.listeners if item.protocol not in replaced),
        *listen,
    ]
    gateway = config.gateway
    if data_dir is not None:
        gateway = msgspec.structs.replace(gateway, data_dir=data_dir)
    if log_level is not None:
        gateway = msgspec.convert(
            {**msgspec.structs.asdict(gateway), "log_level": log_level}, GatewaySection
        )
    result = msgspec.structs.replace(config, gateway=gateway, listeners=tuple(listeners))
    _validate(result)
    return result
