from __future__ import annotations

import contextlib
import io
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio

from gateway import config as config_mod
from gateway import logging as gw_logging
from gateway.app import Gateway

# Every networked test runs under trio.fail_after(NET_TIMEOUT) or a subprocess timeout.
NET_TIMEOUT = 20


@pytest.fixture(autouse=True, scope="session")
def _logging() -> None:
    gw_logging.configure("debug", "json", io.StringIO())


def gateway_toml(tmp_path: os.PathLike[str], **keys: object) -> str:
    """A ``[gateway]`` table: the data directory under ``tmp_path``, a two-second drain,
    and ``keys``."""
    return f"""
[gateway]
data_dir = "{os.fspath(tmp_path)}/data"
drain_timeout = 2.0
""" + "".join(f"{key} = {_toml(value)}\n" for key, value in keys.items())


def make_config(tmp_path: os.PathLike[str], **listener: object) -> config_mod.Config:
    keys = "".join(f"{key} = {value!r}\n" for key, value in listener.items())
    return config_mod.loads(gateway_toml(tmp_path) + listeners_toml("mqtt") + keys, "test.toml")


@pytest.fixture
async def gateway(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Gateway]:
    """A gateway with one MQTT listener on an ephemeral loopback port."""
    async with running_gateway(nursery, make_config(tmp_path)) as gw:
        yield gw


# The STOMP gateway's named queues: "x" dead-letters to "x.dlq" after three deliveries.
STOMP_QUEUES = ({"name": "x", "max_deliveries": 3, "dead_letter": "x.dlq"},)
# The second STOMP listener's heart-beat period (seconds), short enough to time out in a test.
FAST_HEARTBEAT = 0.2


def make_stomp_config(
    tmp_path: os.PathLike[str], queues: tuple[dict[str, object], ...] = STOMP_QUEUES
) -> config_mod.Config:
    """MQTT and STOMP listeners (named "mqtt" and "stomp"), plus a STOMP listener named
    "stomp-fast" whose heart-beat period is FAST_HEARTBEAT; all on ephemeral loopback ports."""
    text = gateway_toml(tmp_path) + listeners_toml("mqtt", "stomp")
    text += listeners_toml("stomp", stomp="stomp-fast") + f"heartbeat = {FAST_HEARTBEAT}\n"
    for queue in queues:
        text += "\n[[queues]]\n" + "".join(f"{k} = {v!r}\n" for k, v in queue.items())
    return config_mod.loads(text, "test.toml")


def listener_port(gw: Gateway, name: str) -> int:
    """The port of the listener called ``name``."""
    for item in gw.bound:
        if item.name == name:
            return item.port
    raise LookupError(f"no listener named {name!r}")


@pytest.fixture
async def stomp_gateway(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> AsyncIterator[Gateway]:
    """A gateway with MQTT and STOMP listeners (make_stomp_config); gw.port("stomp")."""
    async with running_gateway(nursery, make_stomp_config(tmp_path)) as gw:
        yield gw


def upstream_reachable(host: str, port: int) -> None:
    """Skip (or, with GATEWAY_TEST_REQUIRE_UPSTREAMS=1, fail) when a server is down."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        why = f"upstream {host}:{port} unreachable: {exc}"
    if os.environ.get("GATEWAY_TEST_REQUIRE_UPSTREAMS") == "1":
        pytest.fail(why)
    pytest.skip(why)


def listeners_toml(*protocols: str, **names: str) -> str:
    """``[[listeners]]`` tables for ``protocols`` on ephemeral loopback ports, each named
    after its protocol unless ``names`` says otherwise (``http="web"``)."""
    return "".join(
        f'\n[[listeners]]\nprotocol = "{protocol}"\nname = "{names.get(protocol, protocol)}"\n'
        'bind = "127.0.0.1:0"\n'
        for protocol in protocols
    )


# The HTTP gateway's named queues: "jobs" dead-letters to "jobs.dlq" after two deliveries;
# "small" holds one message and refuses more (503 refused).
HTTP_QUEUES: tuple[dict[str, object], ...] = (
    {"name": "jobs", "max_deliveries": 2, "dead_letter": "jobs.dlq"},
    {"name": "small", "max_length": 1, "overflow": "reject-publish"},
)


def make_http_config(
    tmp_path: os.PathLike[str],
    *,
    gateway: dict[str, object] | None = None,
    queues: tuple[dict[str, object], ...] = HTTP_QUEUES,
    **http: object,
) -> config_mod.Config:
    """MQTT, STOMP and HTTP listeners (named "mqtt", "stomp", "http") on ephemeral loopback
    ports; ``http`` adds keys to the HTTP listener, ``gateway`` to the [gateway] table."""
    text = gateway_toml(tmp_path, **(gateway or {}))
    text += listeners_toml("mqtt", "stomp", "http") + "".join(
        f"{key} = {_toml(value)}\n" for key, value in http.items()
    )
    for queue in queues:
        text += "\n[[queues]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in queue.items())
    return config_mod.loads(text, "test.toml")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if not isinstance(value, str) else f'"{value}"'


@contextlib.asynccontextmanager
async def running_gateway(
    nursery: trio.Nursery, config: config_mod.Config
) -> AsyncIterator[Gateway]:
    """A started gateway, stopped (and drained) on exit."""
    gw = Gateway(config)
    with trio.fail_after(NET_TIMEOUT):
        await nursery.start(gw.run)
    try:
        yield gw
    finally:
        gw.stop()
        with trio.fail_after(NET_TIMEOUT):
            await gw.stopped.wait()


@pytest.fixture
async def http_gateway(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Gateway]:
    """A gateway with MQTT, STOMP and HTTP listeners (make_http_config); gw.port("http")."""
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        yield gw
