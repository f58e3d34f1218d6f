"""Typed, frozen configuration, decoded once from TOML.

Every error names the file, the key and the problem; ``load`` raises
``ConfigError`` before anything opens a port. docs/config.md documents each key.

The structs are in ``config_schema``, the checks (and the ACL and router built from
a configuration) in ``config_checks``; this module loads, applies the command line,
and exports both.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from .bridges.config import BridgeConfig
from .config_checks import build_acl, build_router, validate
from .config_schema import (
    BUILT_PROTOCOLS,
    DEFAULT_PORTS,
    AclAction,
    AclConfig,
    AnonymousMode,
    AuthConfig,
    ClientCerts,
    Config,
    ConfigError,
    Durability,
    GatewaySection,
    JwtConfig,
    ListenerConfig,
    LogFormat,
    LogLevel,
    Protocol,
    QueueConfig,
    RouteConfig,
    TLSConfig,
    TLSVersion,
    WebhookConfig,
    WebhookPreset,
    parse_bind,
    parse_duration,
)

__all__ = [
    "BUILT_PROTOCOLS",
    "DEFAULT_PORTS",
    "AclAction",
    "AclConfig",
    "AnonymousMode",
    "AuthConfig",
    "BridgeConfig",
    "ClientCerts",
    "Config",
    "ConfigError",
    "Durability",
    "GatewaySection",
    "JwtConfig",
    "ListenerConfig",
    "LogFormat",
    "LogLevel",
    "Protocol",
    "QueueConfig",
    "RouteConfig",
    "TLSConfig",
    "TLSVersion",
    "WebhookConfig",
    "WebhookPreset",
    "build_acl",
    "build_router",
    "default",
    "load",
    "loads",
    "override",
    "parse_bind",
    "parse_duration",
    "parse_listen",
]


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
    validate(config)
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
    validate(result)
    return result
