"""GET /metrics (docs/metrics.md): the counters match the traffic that real clients (paho,
stomp.py, curl) made; authentication failures, ACL denials, store commits and bridges are
reported; ``[gateway] metrics`` "admin" and "off" close the page; client ids never become
label values. Timings are never asserted, only counts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway import config as config_mod
from gateway.codecs import mqtt
from gateway.codecs.mqtt import ReasonCode
from gateway.core.stats import SAMPLE_EVERY, Buckets
from gateway.ops.metrics import registry_for
from tests.conftest import NET_TIMEOUT, make_http_config, running_gateway
from tests.e2e.test_auth_http import basic
from tests.e2e.test_auth_mqtt import PASSWORDS, make_users
from tests.listeners.test_http_wire import Reply, curl
from tests.paho import Paho
from tests.stomp_client import Stomp

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(port: int, target: str, headers: Mapping[str, str] | None = None) -> Reply:
    # /metrics is not in the API's EXERCISED table (tests/listeners/test_openapi.py).
    return await curl(port, "GET", target, None, headers, check_recorded=False)


async def scrape(port: int, headers: Mapping[str, str] | None = None) -> Samples:
    reply = await get(port, "/metrics", headers)
    assert reply.status == 200, reply.body
    assert (reply.header("content-type") or "").startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample, labels in samples if sample == name]


def traffic(samples: Samples, name: str, protocol: str) -> float:
    """``name`` on the listener named after ``protocol``."""
    return value(samples, name, protocol=protocol, listener=protocol)


async def post(port: int, target: str, body: bytes = b"x") -> int:
    reply = await curl(port, "POST", target, body, None, check_recorded=False)
    return reply.status


# -- traffic ----------------------------------------------------------------------------


async def test_traffic_is_counted_per_protocol(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        http = gw.port("http")
        with trio.fail_after(NET_TIMEOUT):
            subscriber = Paho(gw.port("mqtt"), "metrics-sub")
            await subscriber.connect()
            await subscriber.subscribe("m/#", qos=1)
            publisher = Paho(gw.port("mqtt"), "metrics-pub")
            await publisher.connect()
            for i in range(5):
                await publisher.publish("m/x", b"%d" % i, qos=1)
            # HTTP publishes: one to the MQTT subscriber's topic, two to a queue nobody
            # consumes, one that no one receives, two to a queue that holds one.
            assert await post(http, "/api/v1/topics/m/http") == 202
            assert await post(http, "/api/v1/queues/held") == 202
            assert await post(http, "/api/v1/queues/held") == 202
            assert await post(http, "/api/v1/topics/nobody/listens") == 202
            assert await post(http, "/api/v1/queues/small") == 202
            assert await post(http, "/api/v1/queues/small") == 503
            # A pull of two from a third queue: sent over HTTP, unacknowledged.
            assert await post(http, "/api/v1/queues/pulled") == 202
            assert await post(http, "/api/v1/queues/pulled") == 202
            pulled = await get(http, "/api/v1/queues/pulled/messages?max=2")
            assert len(pulled.json()["messages"]) == 2
            # STOMP: three SENDs to a queue nobody consumes.
            stomp = Stomp(gw.port("stomp"))
            await stomp.connect()
            for _ in range(3):
                await stomp.send("/queue/stomped", b"s")
            received = [await subscriber.get() for _ in range(6)]
            assert sorted(m.topic for m in received) == ["m/http", *["m/x"] * 5]
            await publisher.close()  # what it sent outlives its connection
            samples = await scrape(http)
            scrapes = 1
            # Until the closes are seen: the publisher's, and earlier curls' (not the scrape's).
            while (
                traffic(samples, "gateway_connections", "mqtt") != 1
                or traffic(samples, "gateway_connections", "http") != 1
            ):
                await trio.sleep(0.01)
                samples = await scrape(http)
                scrapes += 1
            await stomp.disconnect()
            await subscriber.close()

    assert traffic(samples, "gateway_messages_received_total", "mqtt") == 5
    assert traffic(samples, "gateway_messages_sent_total", "mqtt") == 6
    assert traffic(samples, "gateway_messages_received_total", "stomp") == 3
    assert traffic(samples, "gateway_messages_sent_total", "stomp") == 0
    assert traffic(samples, "gateway_messages_received_total", "http") == 8
    assert traffic(samples, "gateway_messages_sent_total", "http") == 2
    for protocol in ("mqtt", "stomp", "http"):
        assert traffic(samples, "gateway_received_bytes_total", protocol) > 0
        assert traffic(samples, "gateway_sent_bytes_total", protocol) > 0
    # The subscriber and STOMP client are open; the publisher has gone; the scrape is on.
    assert traffic(samples, "gateway_connections", "mqtt") == 1
    assert traffic(samples, "gateway_connections", "stomp") == 1
    assert traffic(samples, "gateway_connections", "http") == 1
    assert traffic(samples, "gateway_connections_accepted_total", "mqtt") == 2
    assert traffic(samples, "gateway_connections_accepted_total", "http") == 9 + scrapes
    # Queues: depth (the consumers' lag), refusals.
    assert value(samples, "gateway_queue_depth", queue="held") == 2
    assert value(samples, "gateway_queue_enqueued_total", queue="held") == 2
    assert value(samples, "gateway_queue_consumers", queue="held") == 0
    assert value(samples, "gateway_queue_depth", queue="stomped") == 3
    assert value(samples, "gateway_queue_depth", queue="small") == 1
    assert value(samples, "gateway_queue_refused_total", queue="small") == 1
    assert value(samples, "gateway_queue_depth", queue="pulled") == 0
    assert value(samples, "gateway_queue_unacked", queue="pulled") == 2
    assert value(samples, "gateway_queue_delivered_total", queue="pulled") == 2
    assert value(samples, "gateway_publishes_total", outcome="refused") == 1
    assert value(samples, "gateway_publish_refused_total", reason="queue-full") == 1
    assert value(samples, "gateway_publishes_total", outcome="accepted") >= 16
    assert value(samples, "gateway_unrouted_total") >= 1
    # No session queue is reported (one per client: cardinality).
    assert not [q for q in labelled(samples, "gateway_queue_depth") if "$" in q["queue"]]
    assert value(samples, "gateway_info", version=__version__) == 1
    assert value(samples, "process_cpu_seconds_total") > 0


async def test_delivery_latency_is_sampled(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        with trio.fail_after(NET_TIMEOUT):
            client = Paho(gw.port("mqtt"), "latency")
            await client.connect()
            await client.subscribe("lat", qos=0)
            before = await scrape(gw.port("http"))
            for _ in range(2 * SAMPLE_EVERY):
                await client.publish("lat", b"t", qos=1)
            for _ in range(2 * SAMPLE_EVERY):
                await client.get()
            samples = await scrape(gw.port("http"))
            await client.close()
    name = "gateway_delivery_latency_seconds"
    assert value(before, f"{name}_count") == 0
    assert value(samples, f"{name}_count") == 2
    assert value(samples, f"{name}_bucket", le="+Inf") == 2


async def test_store_commits_are_counted(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        with trio.fail_after(NET_TIMEOUT):
            # ack=stored: answered once committed.
            assert await post(gw.port("http"), "/api/v1/queues/kept?ack=stored") == 201
            samples = await scrape(gw.port("http"))
    assert value(samples, "gateway_store_commit_seconds_count") > 0
    assert value(samples, "gateway_store_commit_entries_count") > 0
    assert value(samples, "gateway_store_commit_entries_sum") >= 1
    assert value(samples, "gateway_store_available") == 1


# -- bridges ----------------------------------------------------------------------------


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_bridge(nursery: trio.Nursery, tmp_path: Path) -> None:
    text = f"""
[gateway]
data_dir = "{os.fspath(tmp_path)}/data"
drain_timeout = 2.0

[[listeners]]
protocol = "http"
name = "http"
bind = "127.0.0.1:0"

[[bridges]]
name = "up"
kind = "mqtt"
url = "mqtt://127.0.0.1:{_unused_port()}"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [{{ match = "out/#", to = "{{topic}}" }}]
"""
    config = config_mod.loads(text, "test.toml")
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            for _ in range(3):
                assert await post(gw.port("http"), "/api/v1/topics/out/a") == 202
            samples = await scrape(gw.port("http"))
    assert value(samples, "gateway_bridge_up", bridge="up") == 0
    assert value(samples, "gateway_bridge_outbox_depth", bridge="up") == 3
    assert value(samples, "gateway_bridge_in_flight", bridge="up") == 0
    assert value(samples, "gateway_bridge_sent_total", bridge="up") == 0
    assert value(samples, "gateway_bridge_confirmed_total", bridge="up") == 0
    # Its outbox is a queue like any other, and reported.
    outboxes = [q["queue"] for q in labelled(samples, "gateway_queue_depth")]
    assert [q for q in outboxes if q.startswith("$bridge/up/")]


# -- security -------------------------------------------------------------------------


def secured_config(
    tmp_path: Path, metrics: str = "open", admin_group: str = "users"
) -> config_mod.Config:
    """MQTT and HTTP listeners, users alice (group "users", the admin group here) and bob,
    anonymous clients refused; alice may not publish to secret/#."""
    users = make_users(tmp_path / "users.toml")
    text = f"""
[gateway]
data_dir = "{tmp_path}/data"
drain_timeout = 2.0
metrics = "{metrics}"

[auth]
users_file = "{users}"
anonymous = "deny"
admin_group = "{admin_group}"

[[acl]]
user = "alice"
action = "publish"
pattern = "secret/#"
allow = false

[[acl]]
user = "alice"
action = "all"
pattern = "#"
allow = true

[[listeners]]
protocol = "mqtt"
name = "mqtt"
bind = "127.0.0.1:0"

[[listeners]]
protocol = "http"
name = "http"
bind = "127.0.0.1:0"
"""
    return config_mod.loads(text, "test.toml")


async def test_auth_failures_and_acl_denials(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with running_gateway(nursery, secured_config(tmp_path)) as gw:
        with trio.fail_after(NET_TIMEOUT):
            intruder = Paho(gw.port("mqtt"), "intruder", protocol=paho.MQTTv5)
            intruder.client.username_pw_set("bob", "wrong")
            assert (await intruder.connect()).value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
            await intruder.close()
            alice = Paho(gw.port("mqtt"), "alice", protocol=paho.MQTTv5)
            alice.client.username_pw_set("alice", PASSWORDS["alice"])
            assert (await alice.connect()).value == 0
            assert await alice.publish("secret/plans", b"no", qos=1) == ReasonCode.NOT_AUTHORIZED
            assert (
                await alice.publish("open/plans", b"yes", qos=1)
                == ReasonCode.NO_MATCHING_SUBSCRIBERS
            )
            await alice.close()
            samples = await scrape(gw.port("http"))
            # A reload that changes [auth] brings a new authenticator: the count stays.
            before = gw.auth
            gw.reload_config = lambda: secured_config(tmp_path, admin_group="ops")
            gw.reload("test")
            assert gw.auth is not before
            reloaded = await scrape(gw.port("http"))
    assert (
        value(
            samples, "gateway_auth_failures_total", mechanism="password", reason="bad-credentials"
        )
        == 1
    )
    assert value(samples, "gateway_acl_denied_total", action="publish") == 1
    assert value(samples, "gateway_publishes_total", outcome="refused") == 1
    assert value(samples, "gateway_publish_refused_total", reason="not-authorized") == 1
    failures = "gateway_auth_failures_total"
    assert value(reloaded, failures, mechanism="password", reason="bad-credentials") == 1


async def test_admin_mode(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with running_gateway(nursery, secured_config(tmp_path, "admin")) as gw:
        port = gw.port("http")
        with trio.fail_after(NET_TIMEOUT):
            nobody = await get(port, "/metrics")
            wrong = await get(port, "/metrics", basic("alice", "wrong"))
            bob = await get(port, "/metrics", basic("bob", PASSWORDS["bob"]))
            samples = await scrape(port, basic("alice", PASSWORDS["alice"]))
    assert nobody.status == 401
    assert nobody.header("www-authenticate")
    assert wrong.status == 401
    assert bob.status == 403
    assert nobody.json()["error"] == "unauthorized"
    assert bob.json()["error"] == "forbidden"
    assert value(samples, "gateway_info", version=__version__) == 1
    # The refused scrape's credentials count like any other failure.
    assert (
        value(
            samples, "gateway_auth_failures_total", mechanism="password", reason="bad-credentials"
        )
        == 1
    )


async def test_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = make_http_config(tmp_path, gateway={"metrics": "off"})
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            reply = await get(gw.port("http"), "/metrics")
    assert reply.status == 404


# -- cardinality ----------------------------------------------------------------------------


async def _connect_publish_leave(port: int, client_id: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            mqtt.encode_packet(mqtt.Connect(client_id=client_id))
            + mqtt.encode_packet(mqtt.Publish(topic=f"card/{client_id}", payload=b"x"))
            + mqtt.encode_packet(mqtt.Disconnect())
        )
        while await stream.receive_some(1024):  # until the server closes
            pass


async def test_client_ids_are_no_label_values(nursery: trio.Nursery, tmp_path: Path) -> None:
    clients = 1000
    async with running_gateway(nursery, make_http_config(tmp_path)) as gw:
        port = gw.port("mqtt")
        with trio.fail_after(NET_TIMEOUT * 3):
            before = await scrape(gw.port("http"))
            limit = trio.CapacityLimiter(50)

            async def one(i: int) -> None:
                async with limit:
                    await _connect_publish_leave(port, f"device-{i:04d}")

            async with trio.open_nursery() as clients_nursery:
                for i in range(clients):
                    clients_nursery.start_soon(one, i)
            after = await scrape(gw.port("http"))
    assert value(after, "gateway_messages_received_total", protocol="mqtt", listener="mqtt") == (
        clients
    )
    assert value(after, "gateway_connections_accepted_total", protocol="mqtt", listener="mqtt") == (
        clients
    )
    # A few more series (counters seen for the first time), never one per client.
    assert len(after) - len(before) < 50
    assert not any("device-" in v for _, labels in after for _, v in labels)


# -- the registry -------------------------------------------------------------------------


async def test_each_gateway_has_its_own_registry(nursery: trio.Nursery, tmp_path: Path) -> None:
    one = make_http_config(tmp_path / "one")
    two = make_http_config(tmp_path / "two")
    async with running_gateway(nursery, one) as a, running_gateway(nursery, two) as b:
        assert registry_for(a) is registry_for(a)
        assert registry_for(a) is not registry_for(b)
        with trio.fail_after(NET_TIMEOUT):
            assert await post(a.port("http"), "/api/v1/queues/only-a") == 202
            seen_by_b = await scrape(b.port("http"))
    assert not [q for q in labelled(seen_by_b, "gateway_queue_depth") if q["queue"] == "only-a"]


def test_buckets() -> None:
    buckets = Buckets((1.0, 2.0))
    for sample in (0.5, 1.0, 1.5, 3.0):
        buckets.observe(sample)
    assert buckets.counts == [2, 1, 1]
    assert buckets.cumulative() == [(1.0, 2), (2.0, 3), (float("inf"), 4)]
    assert buckets.count == 4
    assert buckets.sum == 6.0
