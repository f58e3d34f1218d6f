"""Routing rules with real clients: paho (MQTT 5), stomp.py and curl on one gateway copy,
divert, rewrite headers and drop as its [[routes]] say (docs/routing.md)."""

from __future__ import annotations

import os
import queue
from collections.abc import AsyncIterator

import pytest
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, gateway_toml, listeners_toml, running_gateway
from tests.listeners.test_http_wire import curl, mqtt5_client, wait_until
from tests.paho import Paho, properties_dict
from tests.stomp_client import Stomp, connected_stomp

ROUTES = """
[[routes]]
name = "temps"
match = "sensors/+/temp"
copy_to = ["$queue/temps.{1}"]

[[routes]]
name = "eu-orders"
match = "orders/#"
selector = "region = 'eu'"
divert_to = ["$queue/orders.eu"]

[[routes]]
name = "telemetry"
match = "telemetry/+/#"
set_headers = { site = "{header:site-code}", device = "{1}", metric = "{#}" }
remove_headers = ["secret", "site-code"]

[[routes]]
name = "noise"
match = "noise/#"
drop = "noise"

[[routes]]
name = "a-to-b"
match = "loop/a/#"
copy_to = ["loop/b/{#}"]

[[routes]]
name = "b-to-a"
match = "loop/b/#"
copy_to = ["loop/a/{#}"]
"""


def routes_config(tmp_path: os.PathLike[str]) -> config_mod.Config:
    """MQTT, STOMP and HTTP listeners on ephemeral loopback ports, the rules above, and
    $SYS statistics every second."""
    text = gateway_toml(tmp_path, sys_interval=1.0) + listeners_toml("mqtt", "stomp", "http")
    return config_mod.loads(text + ROUTES, "routes.toml")


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, routes_config(tmp_path)) as gateway:
        yield gateway


@pytest.fixture
async def mqtt5(gw: Gateway) -> AsyncIterator[Paho]:
    async with mqtt5_client(gw.port("mqtt"), "routes-sub") as client:
        yield client


@pytest.fixture
async def stomp(gw: Gateway) -> AsyncIterator[Stomp]:
    async with connected_stomp(gw.port("stomp")) as client:
        yield client


async def test_an_mqtt_publish_is_copied_to_a_stomp_queue(
    gw: Gateway, mqtt5: Paho, stomp: Stomp
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await stomp.subscribe("/queue/temps.dev1", id="temps", ack="client-individual")
        await mqtt5.subscribe("sensors/#", qos=1)
        async with mqtt5_client(gw.port("mqtt"), "routes-pub") as publisher:
            reason = await publisher.publish(
                "sensors/dev1/temp",
                b"21.5",
                qos=1,
                properties={"UserProperty": [("unit", "C")]},
            )
        assert reason == 0
        copy = await stomp.get()
        assert copy.body == b"21.5"
        assert copy.get("destination") == "/queue/temps.dev1"
        assert copy.get("unit") == "C"
        assert copy.get("x-routed-by") == "temps"
        assert copy.get("x-routed-from") == "sensors/dev1/temp"
        await stomp.ack(copy)
        original = await mqtt5.get()
        assert (original.topic, original.payload) == ("sensors/dev1/temp", b"21.5")
        user = properties_dict(original.properties).get("UserProperty", [])
        assert ("unit", "C") in user
        assert not any(name.startswith("x-routed") for name, _ in user)
    assert gw.broker.stats.routes.copied == 1


async def test_http_publishes_are_diverted_by_selector(gw: Gateway, mqtt5: Paho) -> None:
    http = gw.port("http")
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("orders/#", qos=1)
        for region, body in (("eu", b"order from lyon"), ("us", b"order from austin")):
            reply = await curl(
                http,
                "POST",
                "/api/v1/topics/orders/new",
                body,
                {"Content-Type": "text/plain", "X-Msg-Region": region},
            )
            assert reply.status == 202, reply
        # The EU order went to the queue instead of the topic.
        only = await mqtt5.get()
        assert (only.topic, only.payload) == ("orders/new", b"order from austin")
        reply = await curl(http, "GET", "/api/v1/queues/orders.eu/messages?max=10&wait=5")
        assert reply.status == 200, reply
        (pulled,) = reply.json()["messages"]
        assert pulled["payload"] == "order from lyon"
        assert pulled["destination"] == "$queue/orders.eu"
        assert pulled["headers"]["region"] == "eu"
        assert pulled["headers"]["x-routed-by"] == "eu-orders"
        assert pulled["headers"]["x-routed-from"] == "orders/new"
        with pytest.raises(queue.Empty):
            await mqtt5.get(within=0.3)
    assert gw.broker.stats.routes.diverted == 1


async def test_headers_set_and_removed_reach_an_mqtt5_subscriber(mqtt5: Paho, stomp: Stomp) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("telemetry/#", qos=1)
        await stomp.send(
            "/topic/telemetry.d7.power.kw",
            "3.2",
            {"site-code": "lyon", "secret": "s3", "keep": "yes"},
        )
        message = await mqtt5.get()
        assert (message.topic, message.payload) == ("telemetry/d7/power/kw", b"3.2")
        user = dict(properties_dict(message.properties).get("UserProperty", []))
        assert user["keep"] == "yes"
        assert user["site"] == "lyon"
        assert user["device"] == "d7"
        assert user["metric"] == "power/kw"
        assert "secret" not in user
        assert "site-code" not in user


async def test_a_drop_is_counted_in_the_stats_and_in_sys(gw: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("#", qos=1)
        async with mqtt5_client(gw.port("mqtt"), "routes-noisy") as publisher:
            reason = await publisher.publish("noise/fan", b"whirr", qos=1)
            assert reason == 0x10  # no matching subscribers: nothing took it
            await publisher.publish("marker", b"", qos=1)
        assert await mqtt5.topics_until("marker") == ["marker"]
        assert gw.broker.stats.drops["route:noise"] == 1
        assert gw.broker.stats.routes.matched["noise"] == 1
        # $SYS/broker/messages/dropped sums every drop, the routed ones included.
        await mqtt5.subscribe("$SYS/broker/messages/dropped", qos=0)
        while (await mqtt5.get()).payload != b"1":
            pass


async def test_rules_copying_into_each_other_do_not_loop(gw: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("loop/#", qos=1)
        async with mqtt5_client(gw.port("mqtt"), "routes-looper") as publisher:
            await publisher.publish("loop/a/x", b"once", qos=1)
            await publisher.publish("loop/marker", b"", qos=1)
        received = await mqtt5.topics_until("loop/marker")
        assert sorted(received) == ["loop/a/x", "loop/b/x", "loop/marker"]
        await wait_until(lambda: gw.broker.stats.routes.matched["a-to-b"] == 1)
        assert gw.broker.stats.routes.matched["b-to-a"] == 0
        assert gw.broker.stats.routes.copied == 1
