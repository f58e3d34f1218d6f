"""The RabbitMQ bridge end to end: paho and stomp.py on the gateway, pika on the real
RabbitMQ at 127.0.0.1:5672, a TCP proxy of the tests' own between the two for cuts."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as paho_mqtt
import pika
import pytest
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.bridges.bridge import Bridge
from tests.bridges.proxy import Proxy, proxy_to
from tests.conftest import NET_TIMEOUT, listeners_toml, running_gateway, upstream_reachable
from tests.listeners.test_http_wire import mqtt5_client
from tests.paho import Paho, properties_dict
from tests.stomp_client import Stomp, StompFailure

pytestmark = pytest.mark.upstream
RABBIT = 5672


def _config(tmp_path: os.PathLike[str], port: int, tag: str) -> config_mod.Config:
    text = f"""
[gateway]
data_dir = "{os.fspath(tmp_path)}/data"
drain_timeout = 2.0

{listeners_toml("mqtt", "stomp")}
[[bridges]]
name = "rabbit"
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:{port}/"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [
  {{ match = "orders/#", to = "queue:{tag}.orders" }},
  {{ match = "held/#", to = "queue:{tag}.held", ack = "upstream" }},
  {{ match = "lost/#", to = "exchange:amq.direct/{tag}.nobody" }},
  {{ match = "$queue/{tag}.jobs", to = "exchange:amq.topic/{tag}.jobs.{{topic}}" }},
]
forward_to = "exchange:amq.topic/{tag}.fwd.{{#}}"
inbound = [{{ from = "exchange:amq.topic/{tag}.in.#", to = "from-rabbit/{{subject}}" }}]

[bridges.amqp]
heartbeat = 5
queues = [
  {{ name = "{tag}.orders", durable = false, auto_delete = false }},
  {{ name = "{tag}.held", durable = false, auto_delete = false }},
  {{ name = "{tag}.seen", durable = false, auto_delete = false }},
]
bindings = [
  {{ queue = "{tag}.seen", exchange = "amq.topic", routing_key = "{tag}.#" }},
]

[[routes]]
match = "alerts/#"
forward_to_bridge = "rabbit"
"""
    return config_mod.loads(text, "bridge.toml")


def _pika(fn: Callable[[Any], Any]) -> Callable[[], Any]:
    def run() -> Any:
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", RABBIT))
        try:
            return fn(connection.channel())
        finally:
            connection.close()

    return run


async def rabbit(fn: Callable[[Any], Any]) -> Any:
    return await trio.to_thread.run_sync(_pika(fn))


async def get_all(queue: str, count: int) -> list[tuple[Any, Any, bytes]]:
    """``count`` messages from ``queue`` (waiting for them), acknowledged."""

    def take(channel: Any) -> list[tuple[Any, Any, bytes]]:
        got: list[tuple[Any, Any, bytes]] = []
        deadline = time.monotonic() + NET_TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            got.append((method, props, body))
        return got

    return await rabbit(take)


async def depth(queue: str) -> int:
    return int(await rabbit(lambda ch: ch.queue_declare(queue, passive=True).method.message_count))


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(NET_TIMEOUT):
        while not condition():  # noqa: ASYNC110 - the gateway's counters have no event
            await trio.sleep(0.02)


@pytest.fixture
def tag() -> str:
    upstream_reachable("127.0.0.1", RABBIT)
    return f"gwtest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> AsyncIterator[Proxy]:
    async with proxy_to(nursery, RABBIT) as proxy:
        yield proxy


@pytest.fixture
async def gw(
    nursery: trio.Nursery, tmp_path: os.PathLike[str], proxy: Proxy, tag: str
) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, _config(tmp_path, proxy.port, tag)) as gateway:
        await wait_until(lambda: gateway.bridges["rabbit"].stats.state == "up")
        yield gateway
    for suffix in ("orders", "held", "seen"):
        await rabbit(lambda ch, s=suffix: ch.queue_delete(f"{tag}.{s}"))
    await rabbit(lambda ch: ch.queue_delete("gateway.rabbit.0"))


def bridge(gw: Gateway) -> Bridge:
    return gw.bridges["rabbit"]


async def test_an_mqtt_publish_lands_in_a_rabbitmq_queue_with_its_properties(
    gw: Gateway, tag: str
) -> None:
    async with mqtt5_client(gw.port("mqtt"), "device-1") as device:
        reason = await device.publish(
            "orders/eu/42",
            b'{"qty": 3}',
            qos=1,
            properties={
                "UserProperty": [("site", "lyon"), ("priority", "7")],
                "ContentType": "application/json",
                "CorrelationData": b"corr-1",
                "ResponseTopic": "$queue/replies",
                "MessageExpiryInterval": 600,
            },
        )
    assert reason == 0
    ((method, props, body),) = await get_all(f"{tag}.orders", 1)
    assert body == b'{"qty": 3}'
    assert method.routing_key == f"{tag}.orders"
    assert props.headers["site"] == "lyon"
    assert props.headers["x-gateway-bridge"] == "rabbit"
    assert props.content_type == "application/json"
    assert props.correlation_id == "corr-1"
    assert props.reply_to == "replies"
    assert props.priority == 7
    assert props.delivery_mode == 2
    assert 590_000 <= int(props.expiration) <= 600_000
    assert props.message_id.isdigit()
    assert abs(props.timestamp - time.time()) < 60
    await wait_until(lambda: bridge(gw).stats.confirmed == 1)
    assert bridge(gw).outbox_depth == 0


async def test_a_rabbitmq_publish_reaches_stomp_and_mqtt_subscribers(gw: Gateway, tag: str) -> None:
    stomp = Stomp(gw.port("stomp"), "1.2")
    async with mqtt5_client(gw.port("mqtt"), "watcher") as watcher:
        with trio.fail_after(NET_TIMEOUT):
            await stomp.connect()
            await stomp.subscribe(f"/topic/from-rabbit.{tag}.in.#")
        await watcher.subscribe("from-rabbit/#", qos=1)

        def send(channel: Any) -> None:
            channel.basic_publish(
                "amq.topic",
                f"{tag}.in.kitchen",
                b"21.5",
                pika.BasicProperties(
                    headers={"unit": "C"},
                    content_type="text/plain",
                    correlation_id="c-9",
                    delivery_mode=2,
                    priority=6,
                ),
            )

        await rabbit(send)
        message = await watcher.get()
        assert message.topic == f"from-rabbit/{tag}/in/kitchen"
        assert message.payload == b"21.5"
        assert message.qos == 1
        props = properties_dict(message.properties)
        assert ("unit", "C") in props["UserProperty"]
        assert props["ContentType"] == "text/plain"
        assert props["CorrelationData"] == b"c-9"
        frame = await stomp.get()
        assert frame.body == b"21.5"
        assert frame.get("destination") == f"/topic/from-rabbit.{tag}.in.kitchen"
        assert frame.get("unit") == "C"
        assert frame.get("correlation-id") == "c-9"
        assert frame.get("priority") == "6"
        assert frame.get("persistent") == "true"
        with trio.fail_after(NET_TIMEOUT):
            await stomp.close()
    # Acknowledged upstream once the core had it: nothing waits in RabbitMQ.
    await wait_until(lambda: bridge(gw).stats.received == 1)
    with trio.fail_after(NET_TIMEOUT):
        while await depth("gateway.rabbit.0"):  # noqa: ASYNC110 - RabbitMQ's count
            await trio.sleep(0.05)


async def test_what_is_published_during_a_cut_is_acked_at_once_and_delivered_later(
    gw: Gateway, proxy: Proxy, tag: str
) -> None:
    proxy.cut()
    await wait_until(lambda: bridge(gw).stats.state != "up")
    async with mqtt5_client(gw.port("mqtt"), "device-2") as device:
        for i in range(20):
            assert await device.publish(f"orders/{i}", str(i).encode(), qos=1) == 0
    assert bridge(gw).outbox_depth == 20
    proxy.restore()
    received = await get_all(f"{tag}.orders", 20)
    assert sorted(int(body) for _, _, body in received) == list(range(20))
    await wait_until(lambda: bridge(gw).outbox_depth == 0)
    assert bridge(gw).stats.connects >= 2


async def test_ack_upstream_holds_the_puback_until_rabbitmq_confirms(
    gw: Gateway, proxy: Proxy, tag: str
) -> None:
    proxy.cut()
    await wait_until(lambda: bridge(gw).stats.state != "up")
    device = Paho(gw.port("mqtt"), "device-3", protocol=paho_mqtt.MQTTv5)
    with trio.fail_after(NET_TIMEOUT):
        await device.connect()
    try:
        held = device.client.publish("held/a", b"wait for it", qos=1)
        local = device.client.publish("orders/b", b"not held", qos=1)
        await trio.sleep(0.5)
        # Acknowledgements stay in order: the second waits behind the first.
        assert not held.is_published()
        assert not local.is_published()
        proxy.restore()
        await wait_until(lambda: held.is_published() and local.is_published())
        ((_, _, body),) = await get_all(f"{tag}.held", 1)
        assert body == b"wait for it"
    finally:
        await device.close()


async def test_an_unroutable_message_is_dead_lettered_and_counted(gw: Gateway, tag: str) -> None:
    stomp = Stomp(gw.port("stomp"), "1.2")
    with trio.fail_after(NET_TIMEOUT):
        await stomp.connect()
        async with mqtt5_client(gw.port("mqtt"), "device-4") as device:
            assert await device.publish("lost/x", b"nobody binds this", qos=1) == 0
        await wait_until(lambda: bridge(gw).stats.refused == 1)
        await stomp.subscribe("/queue/bridge.rabbit.dlq")
        frame = await stomp.get()
        await stomp.close()
    assert frame.body == b"nobody binds this"
    assert frame.get("x-death-reason") == "rejected"
    assert frame.get("x-death-destination") == "lost/x"
    assert bridge(gw).stats.confirmed == 0
    assert bridge(gw).outbox_depth == 0


async def test_a_local_queue_is_drained_upstream_and_a_route_forwards_to_the_bridge(
    gw: Gateway, tag: str
) -> None:
    stomp = Stomp(gw.port("stomp"), "1.2")
    with trio.fail_after(NET_TIMEOUT):
        await stomp.connect()
        await stomp.send(f"/queue/{tag}.jobs", b"job 1", headers={"persistent": "true"})
        await stomp.close()
    async with mqtt5_client(gw.port("mqtt"), "device-5") as device:
        assert await device.publish("alerts/fire/kitchen", b"hot", qos=1) == 0
    got = await get_all(f"{tag}.seen", 2)
    keys = sorted(method.routing_key for method, _, _ in got)
    # A queue's messages keep their queue name as {topic}; a forward's {#} is the whole topic.
    assert keys == sorted([f"{tag}.fwd.alerts.fire.kitchen", f"{tag}.jobs.{tag}.jobs"])
    await wait_until(lambda: bridge(gw).outbox_depth == 0)
    assert gw.broker.queues[f"{tag}.jobs"].depth == 0
    assert bridge(gw).stats.forwarded == 1


async def test_clients_cannot_consume_a_bridges_outbox(gw: Gateway) -> None:
    # A client taking messages from an outbox would take them from the upstream.
    async with mqtt5_client(gw.port("mqtt"), "thief") as thief:
        granted = await thief.subscribe("$queue/$bridge/rabbit/0", qos=1)
    assert [int(code.value) for code in granted] == [0x87]
    stomp = Stomp(gw.port("stomp"), "1.2")
    with trio.fail_after(NET_TIMEOUT):
        await stomp.connect()
        with pytest.raises(StompFailure) as failure:
            await stomp.subscribe("/queue/$bridge/rabbit/0", ack="client-individual")
    error = failure.value.error or await stomp.error()
    assert "not authorized" in (error.get("message") or "") + error.text
    consumers = gw.broker.queues["$bridge/rabbit/0"].consumers
    assert [c.session.client_id for c in consumers] == ["$bridge/rabbit"]
