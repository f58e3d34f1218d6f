"""Reloading the configuration while clients stay connected (docs/operations.md, "Reload").

In process: a Gateway started from a file in tmp_path, the file edited, ``Gateway.reload``
called; a paho MQTT 5 client ("stayer") stays connected through every reload and still
receives. Then the same through SIGHUP on a ``python -m gateway run`` process.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho_mqtt
import pika
import pytest
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.auth import users as users_mod
from gateway.config import ConfigError
from tests.conftest import NET_TIMEOUT, listeners_toml, upstream_reachable
from tests.e2e.crash_harness import ROOT, GatewayProcess, wait_until
from tests.paho import Paho

RABBIT = 5672
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
NO_SUBSCRIBERS = 0x10  # a success: nobody subscribed to the topic
# Anonymous clients may do anything but publish under secret/.
ACL = """
[[acl]]
anonymous = true
action = "publish"
pattern = "secret/#"
allow = false

[[acl]]
anonymous = true
action = "all"
pattern = "#"
allow = true
"""


def _users(path: Path, *names: str) -> None:
    users = users_mod.Users()
    for name in names:
        users = users_mod.with_password(
            users, name, f"{name}-pw", iterations=users_mod.MIN_ITERATIONS
        )
    users_mod.save_users(path, users)


class Setup:
    """The configuration file and what the tests add to it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "gateway.toml"
        self.users = directory / "users.toml"
        _users(self.users, "alice")

    def write(self, extra: str = "", *, anonymous: str = "loopback") -> None:
        self.path.write_text(
            f"""
[gateway]
data_dir = "{self.dir}/data"
drain_timeout = 2.0
sys_interval = 0

[auth]
users_file = "{self.users}"
anonymous = "{anonymous}"

{listeners_toml("mqtt", "stomp")}{extra}
"""
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = Setup(tmp_path)
    s.write()
    return s


@pytest.fixture
async def gw(nursery: trio.Nursery, setup: Setup) -> AsyncIterator[Gateway]:
    gateway = Gateway(config_mod.load(setup.path))
    with trio.fail_after(NET_TIMEOUT):
        await nursery.start(gateway.run)
    yield gateway
    gateway.stop()
    with trio.fail_after(NET_TIMEOUT):
        await gateway.stopped.wait()


@pytest.fixture
async def stayer(gw: Gateway) -> AsyncIterator[Paho]:
    """An MQTT 5 client connected before the first reload, subscribed to keep/#."""
    client = Paho(gw.port("mqtt"), "stayer", protocol=paho_mqtt.MQTTv5)
    with trio.fail_after(NET_TIMEOUT):
        assert (await client.connect()).value == 0
        await client.subscribe("keep/#", qos=1)
    yield client
    await client.close()


async def still_there(client: Paho, n: int) -> None:
    """The client's connection survived: it publishes and receives on it."""
    assert not client.disconnected.is_set()
    with trio.fail_after(NET_TIMEOUT):
        assert await client.publish(f"keep/{n}", f"alive {n}".encode(), qos=1) == 0
        message = await client.get()
    assert (message.topic, message.payload) == (f"keep/{n}", f"alive {n}".encode())


async def connect(port: int, client_id: str, user: str | None = None) -> tuple[Paho, int]:
    client = Paho(port, client_id, protocol=paho_mqtt.MQTTv5)
    if user is not None:
        client.client.username_pw_set(user, f"{user}-pw")
    with trio.fail_after(NET_TIMEOUT):
        reason = await client.connect()
    return client, int(reason.value)


async def test_an_acl_added_by_a_reload_denies_a_publish(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    client, _ = await connect(gw.port("mqtt"), "writer")
    try:
        with trio.fail_after(NET_TIMEOUT):
            assert await client.publish("secret/a", b"1", qos=1) == NO_SUBSCRIBERS
        setup.write(ACL)
        summary = gw.reload("test")
        assert summary["acl_rules"] == 2
        assert summary["restart_required"] == []
        with trio.fail_after(NET_TIMEOUT):
            # The same connection, opened before the reload, is now refused.
            assert await client.publish("secret/a", b"2", qos=1) == NOT_AUTHORIZED
            assert await client.publish("public/a", b"3", qos=1) == NO_SUBSCRIBERS
        await still_there(stayer, 1)
    finally:
        await client.close()


async def test_a_user_added_to_the_users_file_logs_in_after_a_reload(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    client, reason = await connect(gw.port("mqtt"), "bob-1", "bob")
    await client.close()
    assert reason == BAD_CREDENTIALS
    _users(setup.users, "alice", "bob")
    summary = gw.reload("test")
    assert summary["users"] == 2
    assert summary["auth_rebuilt"] is False
    client, reason = await connect(gw.port("mqtt"), "bob-2", "bob")
    await client.close()
    assert reason == 0
    await still_there(stayer, 1)


async def test_a_changed_auth_section_rebuilds_the_authenticator(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    before = gw.auth
    setup.write(anonymous="deny")
    summary = gw.reload("test")
    assert summary["auth_rebuilt"] is True
    assert gw.auth is not before
    assert gw.http.auth is gw.auth
    # New anonymous connections are refused; the anonymous stayer is not dropped.
    client, reason = await connect(gw.port("mqtt"), "anon")
    await client.close()
    assert reason == NOT_AUTHORIZED
    client, reason = await connect(gw.port("mqtt"), "alice-1", "alice")
    await client.close()
    assert reason == 0
    await still_there(stayer, 1)


async def test_a_routing_rule_and_a_queue_policy_apply_after_a_reload(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    watcher, _ = await connect(gw.port("mqtt"), "watcher")
    try:
        with trio.fail_after(NET_TIMEOUT):
            await watcher.subscribe("copied/#", qos=1)
            assert await stayer.publish("keep/x", b"before", qos=1) == 0
        assert (await stayer.get()).payload == b"before"
        with pytest.raises(queue.Empty):
            await watcher.get(within=0.3)
        setup.write(
            """
[[queues]]
name = "jobs"
max_length = 7

[[routes]]
name = "copy-keep"
match = "keep/#"
copy_to = ["copied/{#}"]
"""
        )
        summary = gw.reload("test")
        assert (summary["routes"], summary["queues"]) == (1, 1)
        assert gw.broker.queues["jobs"].policy.max_length == 7
        await still_there(stayer, 1)
        message = await watcher.get()
        assert (message.topic, message.payload) == ("copied/1", b"alive 1")
        setup.write('[[queues]]\nname = "jobs"\nmax_length = 9\n')
        summary = gw.reload("test")
        assert summary["routes"] == 0
        assert gw.broker.router is None
        assert gw.broker.queues["jobs"].policy.max_length == 9
    finally:
        await watcher.close()


async def test_an_invalid_configuration_is_refused_and_changes_nothing(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    setup.write(ACL)
    gw.reload("test")
    config, auth, acl = gw.config, gw.auth, gw.broker.acl
    for broken in (
        "[[acl]\nthis is not TOML",  # a syntax error
        '[[routes]]\nmatch = "a/#"\nforward_to_bridge = "nowhere"\n',  # no such bridge
        '[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1:99999"\n',  # a bad port
    ):
        setup.write(broken)
        with pytest.raises(ConfigError):
            gw.reload("test")
        assert (gw.config, gw.auth, gw.broker.acl) == (config, auth, acl)
    with trio.fail_after(NET_TIMEOUT):
        assert await stayer.publish("secret/x", b"no", qos=1) == NOT_AUTHORIZED
    await still_there(stayer, 1)


async def test_listener_changes_are_reported_as_needing_a_restart(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    text = setup.path.read_text().replace(
        'name = "stomp"\nbind = "127.0.0.1:0"',
        'name = "stomp"\nbind = "127.0.0.1:0"\nheartbeat = 3.0',
    )
    setup.path.write_text(text.replace('data_dir = "', 'data_dir = "/elsewhere'))
    data_dir, listeners = gw.config.gateway.data_dir, gw.config.listeners
    for _ in range(2):  # reported again until a restart applies them
        summary = gw.reload("test")
        assert summary["restart_required"] == ["gateway.data_dir", "listeners['stomp']"]
        # The configuration in force keeps them.
        assert (gw.config.gateway.data_dir, gw.config.listeners) == (data_dir, listeners)
    await still_there(stayer, 1)


# -- bridges (the real RabbitMQ) ------------------------------------------------------------


def _rabbit(fn: Callable[[Any], Any]) -> Any:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", RABBIT))
    try:
        return fn(connection.channel())
    finally:
        connection.close()


def _take(name: str, count: int) -> list[bytes]:
    def take(channel: Any) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + NET_TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            method, _props, body = channel.basic_get(name, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            got.append(body)
        return got

    return list(_rabbit(take))


def _bridge(tag: str, target: str) -> str:
    return f"""
[[bridges]]
name = "rabbit"
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:{RABBIT}/"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [{{ match = "out/#", to = "queue:{tag}.{target}" }}]

[bridges.amqp]
queues = [
  {{ name = "{tag}.one", durable = false, auto_delete = false }},
  {{ name = "{tag}.two", durable = false, auto_delete = false }},
]
"""


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(NET_TIMEOUT):
        while not condition():  # noqa: ASYNC110 - bridge states have no event
            await trio.sleep(0.02)


@pytest.mark.upstream
async def test_bridges_are_added_changed_and_removed_by_reloads(
    gw: Gateway, setup: Setup, stayer: Paho
) -> None:
    upstream_reachable("127.0.0.1", RABBIT)
    tag = f"gwreload-{uuid.uuid4().hex[:8]}"
    try:
        setup.write(_bridge(tag, "one"))
        summary = gw.reload("test")
        assert summary["bridges_added"] == ["rabbit"]
        first = gw.bridges["rabbit"]
        await wait_for(lambda: first.stats.state == "up")
        with trio.fail_after(NET_TIMEOUT):
            assert await stayer.publish("out/a", b"to one", qos=1) == 0
        assert await trio.to_thread.run_sync(_take, f"{tag}.one", 1) == [b"to one"]

        # Changed: the old link stops, a new one starts; the outbox keeps what waits.
        setup.write(_bridge(tag, "two"))
        summary = gw.reload("test")
        assert summary["bridges_changed"] == ["rabbit"]
        second = gw.bridges["rabbit"]
        assert second is not first
        with trio.fail_after(NET_TIMEOUT):
            assert await stayer.publish("out/b", b"to two", qos=1) == 0
        await wait_for(lambda: first.stats.state == "stopped")
        await wait_for(lambda: second.stats.state == "up")
        assert await trio.to_thread.run_sync(_take, f"{tag}.two", 1) == [b"to two"]

        setup.write()
        summary = gw.reload("test")
        assert summary["bridges_removed"] == ["rabbit"]
        assert "rabbit" not in gw.bridges
        await wait_for(lambda: second.stats.state == "stopped")
        await still_there(stayer, 1)
        # The removed bridge's outbox no longer fills (a full one would refuse publishes)
        # and stays as a plain queue.
        assert "$bridge/rabbit/0" not in gw.broker.durable_filters()
        with trio.fail_after(NET_TIMEOUT):
            assert await stayer.publish("out/c", b"nobody's", qos=1) == 0x10
        assert gw.broker.queues["$bridge/rabbit/0"].depth == 0
    finally:

        def clean(channel: Any) -> None:
            for suffix in ("one", "two"):
                channel.queue_delete(f"{tag}.{suffix}")

        await trio.to_thread.run_sync(_rabbit, clean)


# -- SIGHUP on a gateway process ---------------------------------------------------------


def _publish(port: int, topic: str) -> int:
    """One QoS 1 publish from a new MQTT 5 client; its PUBACK reason code."""
    client = paho_mqtt.Client(
        paho_mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=paho_mqtt.MQTTv5
    )
    codes: list[int] = []
    client.on_publish = lambda _c, _u, _mid, reason, _p: codes.append(int(reason.value))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b"x", qos=1).wait_for_publish(NET_TIMEOUT)
        assert wait_until(lambda: bool(codes), NET_TIMEOUT)
        return codes[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_sighup_reloads_the_configuration_file_of_a_running_process(tmp_path: Path) -> None:
    process = GatewayProcess(tmp_path, ["mqtt"])
    try:
        process.start()
        port = process.port("mqtt")
        assert _publish(port, "secret/a") == NO_SUBSCRIBERS
        original = process.config.read_text()
        process.config.write_text(original + ACL)
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)

        def logged(event: str, count: int = 1) -> bool:
            return sum(1 for e in process.events() if e.get("event") == event) >= count

        assert wait_until(lambda: logged("config.reloaded"), NET_TIMEOUT)
        reloaded = next(e for e in process.events() if e.get("event") == "config.reloaded")
        assert (reloaded["reason"], reloaded["acl_rules"]) == ("SIGHUP", 2)
        assert _publish(port, "secret/a") == NOT_AUTHORIZED
        # A broken file: logged, refused, and the gateway keeps its rules and runs on.
        process.config.write_text(original + "[[acl]\n")
        process.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: logged("config.reload_failed"), NET_TIMEOUT)
        failed = next(e for e in process.events() if e.get("event") == "config.reload_failed")
        assert failed["level"] == "error"
        assert "invalid TOML" in failed["error"]
        assert process.process.poll() is None
        assert _publish(port, "secret/a") == NOT_AUTHORIZED
        assert process.stop() == 0
    finally:
        process.close()
    assert os.path.exists(process.data / "gateway.db")


def test_a_reload_applies_the_command_line_overrides_again(tmp_path: Path) -> None:
    """--listen, --data-dir and --log-level still override the file after a SIGHUP: nothing
    is reported as needing a restart."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\ndata_dir = "./elsewhere"\nlog_format = "json"\nlog_level = "info"\n'
        '\n[[listeners]]\nprotocol = "mqtt"\nname = "m"\nbind = "127.0.0.1:0"\n'
    )
    command = [
        *(sys.executable, "-m", "gateway", "run", "-c", str(config)),
        *("--listen", "mqtt=127.0.0.1:0", "--data-dir", str(tmp_path / "data")),
        *("--log-level", "debug"),
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    events: list[dict[str, Any]] = []

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            with contextlib.suppress(ValueError):
                events.append(json.loads(raw))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert wait_until(lambda: any(e.get("event") == "gateway.started" for e in events), 15)
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(e.get("event") == "config.reloaded" for e in events), 15)
        reloaded = next(e for e in events if e.get("event") == "config.reloaded")
        assert reloaded["restart_required"] == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(15)
        assert process.stdout is not None
        process.stdout.close()
    assert (tmp_path / "data" / "gateway.db").exists()
    assert not (tmp_path / "elsewhere").exists()
