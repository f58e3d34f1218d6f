"""The admin API (docs/admin.md) as operators meet it: curl against a gateway with MQTT,
STOMP and HTTP listeners, a users file with an administrator (root, group "admin") and a
plain user (alice), paho (MQTT 5) and stomp.py clients to look at and act on.

Every status a test observes for an admin route is checked against the OpenAPI document
(``_record``) and, after the whole module ran, the document declares no status that no
test saw (``test_every_declared_status_was_observed``).
"""

from __future__ import annotations

import queue
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho_mqtt
import pytest
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.auth.users import Users, save_users, with_password
from gateway.listeners.http import path_params
from gateway.listeners.http_admin import ADMIN_ROUTES, PREFIX
from tests.conftest import (
    NET_TIMEOUT,
    gateway_toml,
    listeners_toml,
    make_http_config,
    running_gateway,
)
from tests.listeners.test_http_wire import Reply, curl, declared_statuses, wait_until
from tests.paho import Paho
from tests.stomp_client import Stomp

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

ADMIN = ("root", "r00t-secret-pw")
PLAIN = ("alice", "wonderland")
JWT_SECRET = "jwt-secret-of-at-least-thirty-two-bytes!"
HOOK_SECRET = "webhook-signing-secret"
BRIDGE_PASSWORD = "bridge-pass-123"

# (method, route pattern) -> the statuses tests saw the admin route answer.
OBSERVED: dict[tuple[str, str], set[int]] = {}


def _record(method: str, target: str, status: int) -> None:
    path = target.partition("?")[0]
    for route in ADMIN_ROUTES:
        if route.method == method and path_params(route.pattern, path) is not None:
            OBSERVED.setdefault((method, route.pattern), set()).add(status)
            declared = declared_statuses(method, route.pattern)
            assert status in declared, f"{method} {route.pattern}: {status} not in {declared}"
            return
    raise AssertionError(f"{method} {target} is no admin route")


async def api(
    gw: Gateway,
    method: str,
    path: str,
    *,
    user: tuple[str, str] | None = ADMIN,
) -> Reply:
    """An admin request with curl (as ``user``; None: anonymous); its status is recorded."""
    options = ("-u", f"{user[0]}:{user[1]}") if user is not None else ()
    body = b"" if method in ("POST", "DELETE") else None
    reply = await curl(
        gw.port("http"), method, PREFIX + path, body, None, *options, check_recorded=False
    )
    _record(method, PREFIX + path, reply.status)
    return reply


def write_config(tmp_path: Path, *, extra: str = "") -> Path:
    users = Users()
    users = with_password(users, ADMIN[0], ADMIN[1], groups=("admin",), iterations=4096)
    users = with_password(users, PLAIN[0], PLAIN[1], groups=("users",), iterations=4096)
    save_users(tmp_path / "users.toml", users)
    text = (
        gateway_toml(tmp_path)
        + f"""
[auth]
users_file = "{tmp_path}/users.toml"

[auth.jwt]
hs256_secret = "{JWT_SECRET}"

{listeners_toml("mqtt", "stomp", "http")}
[[queues]]
name = "jobs"
max_deliveries = 1
dead_letter = "jobs.dlq"

[[webhooks]]
name = "gh"
destination = "hooks/gh"
preset = "github"
secret = "{HOOK_SECRET}"

[[bridges]]
name = "up"
kind = "amqp"
url = "amqp://guest:{BRIDGE_PASSWORD}@127.0.0.1:1/"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [{{ match = "bridged/#", to = "exchange:amq.topic/{{topic}}" }}]
{extra}
"""
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = config_mod.load(write_config(tmp_path))
    async with running_gateway(nursery, config) as gateway:
        yield gateway


async def mqtt5(gw: Gateway, client_id: str, user: tuple[str, str] = PLAIN) -> Paho:
    client = Paho(gw.port("mqtt"), client_id, protocol=paho_mqtt.MQTTv5)
    client.client.username_pw_set(*user)
    await client.connect()
    return client


async def stomp(gw: Gateway, user: tuple[str, str] = PLAIN) -> Stomp:
    client = Stomp(gw.port("stomp"))
    await client.connect(*user)
    return client


async def publish(gw: Gateway, queue_name: str, payload: bytes) -> None:
    reply = await curl(
        gw.port("http"),
        "POST",
        f"/api/v1/queues/{queue_name}",
        payload,
        None,
        "-u",
        f"{ADMIN[0]}:{ADMIN[1]}",
        check_recorded=False,
    )
    assert reply.status == 202, reply.body


# -- looking ------------------------------------------------------------------------------------


async def test_overview_connections_and_sessions(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        device = await mqtt5(gw, "dev-1")
        await device.subscribe("sensors/#", qos=1)
        console = await stomp(gw)
        try:
            overview = (await api(gw, "GET", "/overview")).json()
            assert overview["version"]
            assert overview["uptime"] >= 0
            assert overview["time"] > 0
            assert overview["connections"]["by_protocol"]["mqtt"] == 1
            assert overview["connections"]["by_protocol"]["stomp"] == 1
            assert overview["connections"]["total"] >= 3  # and curl's own
            assert {"jobs"} <= {q["name"] for q in overview["queues"]}
            assert set(overview["queues"][0]) == {"name", "depth", "consumers"}
            assert [b["name"] for b in overview["bridges"]] == ["up"]
            assert overview["sessions"] >= 2
            assert isinstance(overview["messages_in"], int)
            assert isinstance(overview["messages_out"], int)

            conns = (await api(gw, "GET", "/connections")).json()["connections"]
            by_client = {c["client_id"]: c for c in conns}
            mqtt = by_client["dev-1"]
            assert mqtt["protocol"] == "mqtt"
            assert mqtt["listener"] == "mqtt"
            assert mqtt["user"] == "alice"
            assert mqtt["tls"] is False
            assert mqtt["peer"].startswith("127.0.0.1:")
            assert mqtt["connected_at"] > 0
            for key in ("bytes_in", "bytes_out", "messages_in", "messages_out"):
                assert isinstance(mqtt[key], int), key
            session_id = console.connected_headers["session"]
            assert by_client[session_id]["protocol"] == "stomp"
            assert by_client[session_id]["user"] == "alice"

            one = await api(gw, "GET", f"/connections/{mqtt['id']}")
            assert one.status == 200
            assert one.json()["client_id"] == "dev-1"
            missing = await api(gw, "GET", "/connections/999999999")
            assert (missing.status, missing.error) == (404, "not_found")

            sessions = (await api(gw, "GET", "/sessions")).json()["sessions"]
            dev = next(s for s in sessions if s["client_id"] == "dev-1")
            assert dev["connected"] is True
            assert dev["subscriptions"] == ["sensors/#"]
            assert dev["user"] == "alice"
            assert dev["expiry"] == 0
            assert (dev["queued"], dev["in_flight"]) == (0, 0)
            assert any(s["client_id"] == session_id for s in sessions)

            listeners = (await api(gw, "GET", "/listeners")).json()["listeners"]
            by_name = {item["name"]: item for item in listeners}
            assert set(by_name) == {"mqtt", "stomp", "http"}
            assert by_name["mqtt"]["address"] == f"127.0.0.1:{gw.port('mqtt')}"
            assert by_name["mqtt"]["protocol"] == "mqtt"
            assert by_name["mqtt"]["connections"] == 1
            assert by_name["http"]["tls"] is False
        finally:
            await device.close()
            await console.close()


# -- kicking ------------------------------------------------------------------------------------


async def test_kick_by_client_id_and_by_connection_id(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        device = await mqtt5(gw, "kick-me")
        console = await stomp(gw)
        try:
            reply = await api(gw, "POST", "/connections/kick-me/kick")
            assert reply.status == 200
            [kicked] = reply.json()["kicked"]
            await trio.to_thread.run_sync(device.disconnected.wait, 10)
            assert device.disconnect_reason.value == 0x98  # administrative action

            conns = (await api(gw, "GET", "/connections")).json()["connections"]
            assert kicked not in {c["id"] for c in conns}
            session_id = console.connected_headers["session"]
            stomp_id = next(c["id"] for c in conns if c["client_id"] == session_id)
            reply = await api(gw, "POST", f"/connections/{stomp_id}/kick")
            assert reply.json() == {"kicked": [stomp_id]}
            error = await console.error()
            assert error.get("message") == "kicked by an administrator"

            missing = await api(gw, "POST", "/connections/nobody/kick")
            assert (missing.status, missing.error) == (404, "not_found")
        finally:
            await device.close()
            await console.close()


# -- queues -------------------------------------------------------------------------------------


async def test_queue_counters_peek_and_purge_leave_in_flight_alone(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for i in range(4):
            await publish(gw, "work", b"job-%d" % i)
        queues = {q["name"]: q for q in (await api(gw, "GET", "/queues")).json()["queues"]}
        assert queues["work"]["depth"] == 4
        assert queues["work"]["dead_letter"] is None
        assert queues["jobs"]["dead_letter"] == "jobs.dlq"  # configured, not used yet
        assert {"enqueued", "bytes", "in_flight", "durable"} <= set(queues["work"])

        peeked = (await api(gw, "GET", "/queues/work/messages?max=2")).json()["messages"]
        assert [m["payload"] for m in peeked] == ["job-0", "job-1"]
        assert peeked[0]["destination"] == "$queue/work"
        default = (await api(gw, "GET", "/queues/work/messages")).json()["messages"]
        assert len(default) == 4
        assert (await api(gw, "GET", "/queues/work")).json()["depth"] == 4  # nothing taken

        bad = await api(gw, "GET", "/queues/work/messages?max=0")
        assert (bad.status, bad.error) == (400, "bad_parameter")
        for method, path in (
            ("GET", "/queues/nope"),
            ("GET", "/queues/nope/messages"),
            ("POST", "/queues/nope/purge"),
            ("POST", "/queues/nope/move"),
        ):
            reply = await api(gw, method, path)
            assert (reply.status, reply.error) == (404, "unknown_queue"), path

        consumer = await stomp(gw)
        try:
            await consumer.subscribe(
                "/queue/work", ack="client-individual", headers={"prefetch-count": "1"}
            )
            taken = await consumer.get()
            assert taken.body == b"job-0"
            reply = await api(gw, "POST", "/queues/work/purge")
            assert reply.json() == {"purged": 3}
            work = (await api(gw, "GET", "/queues/work")).json()
            assert (work["depth"], work["in_flight"]) == (0, 1)
            await consumer.ack(taken)
        finally:
            await consumer.close()
        assert (await api(gw, "GET", "/queues/work")).json()["depth"] == 0


async def test_move_dead_letters_back_and_to_a_queue(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        worker = await stomp(gw)
        try:
            await worker.send("/queue/jobs", b"task", {"trace": "t-1"})
            await worker.subscribe("/queue/jobs", id="w", ack="client-individual")
            await worker.nack(await worker.get())
            await worker.unsubscribe("w")
        finally:
            await worker.close()

        def depth(reply: Reply) -> int:
            return int(reply.json()["depth"])

        await wait_until(lambda: gw.broker.queues["jobs.dlq"].depth == 1)
        dead = (await api(gw, "GET", "/queues/jobs.dlq/messages")).json()["messages"]
        assert dead[0]["headers"]["x-death-queue"] == "jobs"
        assert dead[0]["headers"]["trace"] == "t-1"

        same = await api(gw, "POST", "/queues/jobs.dlq/move?to=jobs.dlq")
        assert (same.status, same.error) == (400, "bad_parameter")
        reply = await api(gw, "POST", "/queues/jobs.dlq/move")
        assert reply.json()["moved"] == 1
        assert depth(await api(gw, "GET", "/queues/jobs.dlq")) == 0
        assert depth(await api(gw, "GET", "/queues/jobs")) == 1
        back = (await api(gw, "GET", "/queues/jobs/messages")).json()["messages"]
        assert back[0]["payload"] == "task"
        assert back[0]["headers"] == {"trace": "t-1"}  # x-death-* gone

        reply = await api(gw, "POST", "/queues/jobs/move?to=parked")
        assert reply.json()["moved"] == 1
        assert depth(await api(gw, "GET", "/queues/parked")) == 1

        # What was moved back is consumed as any message.
        await api(gw, "POST", "/queues/parked/move?to=jobs")
        consumer = await stomp(gw)
        try:
            await consumer.subscribe("/queue/jobs", ack="client-individual")
            message = await consumer.get()
            assert message.body == b"task"
            await consumer.ack(message)
        finally:
            await consumer.close()


# -- topics and retained messages -----------------------------------------------------------------


async def test_topics_and_retained_delete(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        device = await mqtt5(gw, "lamp")
        try:
            await device.publish("status/lamp", b"on", qos=1, retain=True)
            await device.publish("status/lamp", b"on", qos=1, retain=True)
        finally:
            await device.close()
        topics = (await api(gw, "GET", "/topics")).json()["topics"]
        assert {"topic": "status/lamp", "published": 2} in topics
        retained = (await api(gw, "GET", "/retained")).json()["retained"]
        lamp = next(r for r in retained if r["topic"] == "status/lamp")
        assert (lamp["size"], lamp["qos"]) == (2, 1)
        assert lamp["timestamp"] > 0

        reply = await api(gw, "DELETE", "/retained/status/lamp")
        assert reply.json() == {"deleted": "status/lamp"}
        again = await api(gw, "DELETE", "/retained/status/lamp")
        assert (again.status, again.error) == (404, "not_found")
        retained = (await api(gw, "GET", "/retained")).json()["retained"]
        assert "status/lamp" not in {r["topic"] for r in retained}

        late = await mqtt5(gw, "late")
        try:
            await late.subscribe("status/#", qos=1)
            with pytest.raises(queue.Empty):
                await late.get(within=0.5)
        finally:
            await late.close()


# -- bridges ------------------------------------------------------------------------------------


async def test_bridge_pause_and_resume(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        [bridge] = (await api(gw, "GET", "/bridges")).json()["bridges"]
        assert (bridge["name"], bridge["kind"]) == ("up", "amqp")
        assert bridge["state"] != "up"  # nothing listens on port 1

        paused = await api(gw, "POST", "/bridges/up/pause")
        assert paused.status == 200
        assert paused.json()["state"] == "paused"
        await wait_until(lambda: gw.bridges["up"].stats.state == "paused")
        [bridge] = (await api(gw, "GET", "/bridges")).json()["bridges"]
        assert bridge["state"] == "paused"

        resumed = await api(gw, "POST", "/bridges/up/resume")
        assert resumed.status == 200
        assert resumed.json()["state"] != "paused"
        await wait_until(lambda: gw.bridges["up"].stats.state != "paused")

        for action in ("pause", "resume"):
            missing = await api(gw, "POST", f"/bridges/nope/{action}")
            assert (missing.status, missing.error) == (404, "not_found")


# -- configuration ------------------------------------------------------------------------------


async def test_config_is_shown_with_secrets_redacted(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await api(gw, "GET", "/config")
    assert reply.status == 200
    for secret in (ADMIN[1], JWT_SECRET, HOOK_SECRET, BRIDGE_PASSWORD):
        assert secret.encode() not in reply.body
    config = reply.json()
    assert config["bridges"][0]["url"] == "amqp://guest:***@127.0.0.1:1/"
    assert config["auth"]["jwt"]["hs256_secret"] == "***"
    assert config["webhooks"][0]["secret"] == "***"
    assert config["webhooks"][0]["secret_env"] is None  # nothing to hide
    assert config["auth"]["admin_group"] == "admin"
    assert [item["name"] for item in config["listeners"]] == ["mqtt", "stomp", "http"]


async def test_reload_applies_a_valid_file_and_refuses_a_broken_one(
    gw: Gateway, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.toml"
    good = path.read_text()
    with trio.fail_after(NET_TIMEOUT):
        path.write_text(good + '\n[[queues]]\nname = "added"\nmax_length = 5\n')
        reply = await api(gw, "POST", "/reload")
        assert reply.status == 200, reply.body
        assert isinstance(reply.json()["reloaded"], dict)
        queues = (await api(gw, "GET", "/config")).json()["queues"]
        assert "added" in {q["name"] for q in queues}

        path.write_text(good + "\n[[queues]]\nname = \n")  # not TOML
        reply = await api(gw, "POST", "/reload")
        assert (reply.status, reply.error) == (422, "invalid_config")
        assert "gateway.toml" in reply.json()["message"]
        queues = (await api(gw, "GET", "/config")).json()["queues"]
        assert "added" in {q["name"] for q in queues}  # the configuration in force stays
        path.write_text(good)


# -- who may ------------------------------------------------------------------------------------


def _sample(pattern: str) -> str:
    path = pattern[len(PREFIX) :]
    for name, value in (("{id}", "1"), ("{queue}", "jobs"), ("{topic...}", "a/b")):
        path = path.replace(name, value)
    return path.replace("{name}", "up")


@pytest.mark.parametrize(
    ("method", "pattern"), [(route.method, route.pattern) for route in ADMIN_ROUTES]
)
async def test_only_administrators_may(gw: Gateway, method: str, pattern: str) -> None:
    path = _sample(pattern)
    with trio.fail_after(NET_TIMEOUT):
        anonymous = await api(gw, method, path, user=None)
        assert (anonymous.status, anonymous.error) == (401, "unauthorized")
        assert anonymous.header("www-authenticate") is not None
        assert "Basic" in (anonymous.header("www-authenticate") or "")
        plain = await api(gw, method, path, user=PLAIN)
        assert (plain.status, plain.error) == (403, "forbidden")
        options = ("-u", "root:wrong")
        target = PREFIX + path
        wrong = await curl(
            gw.port("http"), method, target, None, None, *options, check_recorded=False
        )
        assert wrong.status == 401  # bad credentials: refused before the route


async def test_without_users_the_loopback_operator_is_the_administrator(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        with trio.fail_after(NET_TIMEOUT):
            reply = await api(gw, "GET", "/overview", user=None)
            assert reply.status == 200
            assert reply.json()["connections"]["by_protocol"] == {"http": 1}


def test_every_declared_status_was_observed(request: pytest.FixtureRequest) -> None:
    """After the whole module ran: the document declares exactly what the tests saw."""
    session = request.session
    module = request.node.parent
    ran = {item.nodeid for item in session.items if item.parent is module}
    whole = ran >= {item.nodeid for item in module.collect()}
    filtered = request.config.option.keyword or request.config.option.markexpr
    distributed = hasattr(request.config, "workerinput")  # pytest-xdist: tests split up
    if session.testsfailed or filtered or distributed or not whole:
        pytest.skip("needs a whole run of this module")
    for route in ADMIN_ROUTES:
        key = (route.method, route.pattern)
        assert OBSERVED.get(key) == declared_statuses(*key), key
