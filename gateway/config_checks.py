"""The configuration's checks beyond its types (ranges, names, cross-references,
the files it names), and what is built from it: the ACL and the router. Each
problem is a ConfigError naming the file and key."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .bridges.config import check_bridge
from .config_schema import (
    BUILT_PROTOCOLS,
    Config,
    ConfigError,
    ListenerConfig,
    TLSConfig,
    WebhookConfig,
    parse_bind,
    parse_duration,
)
from .core.message import Kind
from .core.routing import RouteError, Router, parse_destination

if TYPE_CHECKING:
    from .auth.acl import Acl


def validate(config: Config) -> None:
    """Raise ConfigError at the first problem of a decoded configuration."""
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
    from .auth.acl import AclError, check_rule  # gateway.auth imports gateway.config

    for i, item in enumerate(config.acl):
        try:
            check_rule(item.rule())
        except AclError as exc:
            raise ConfigError(config.source, f"acl[{i}].{exc.key}", exc.problem) from None


def build_acl(config: Config) -> Acl:
    """The ``[[acl]]`` rules. Always an ``Acl``: without rules it allows everything,
    except what an identity's own token rules do not allow."""
    from .auth.acl import Acl  # gateway.auth imports gateway.config

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
    kind, queue = parse_destination(destination)  # "$queue/NAME" or a topic name
    if kind is Kind.QUEUE:
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
    # Imported here: gateway.auth imports gateway.config.
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
