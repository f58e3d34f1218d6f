"""The MQTT, NATS and Redis bridges end to end, as test_bridge_amqp.py does for RabbitMQ:
paho and stomp.py on the gateway's listeners, the upstream's own client on the real
server (Mosquitto 127.0.0.1:1883, NATS with JetStream 127.0.0.1:4222, Redis
127.0.0.1:6379), and a TCP proxy of the tests' own between the gateway and the server
for cuts. Every name upstream is unique per test and removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import paho.mqtt.client as paho_mqtt
import pytest
import redis
import trio
from nats.aio.client import Client as NatsClient

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.bridges.bridge import Bridge
from tests.bridges.proxy import Proxy, proxy_to
from tests.conftest import NET_TIMEOUT, listeners_toml, running_gateway, upstream_reachable
from tests.listeners.test_http_wire import mqtt5_client
from tests.paho import Paho, properties_dict
from tests.stomp_client import Received, Stomp

pytestmark = pytest.mark.upstream

HOST = "127.0.0.1"
MOSQUITTO = 1883
NATS = 4222
REDIS = 6379
QUIET = 1.0  # seconds in which nothing more may arrive (loop checks)
T = TypeVar("T")

# An MQTT 5 publish carrying every field a bridge can take upstream.
DEVICE_PROPERTIES = {
    "UserProperty": [("site", "lyon"), ("priority", "7")],
    "ContentType": "application/json",
    "CorrelationData": b"corr-1",
    "ResponseTopic": "$queue/replies",
    "MessageExpiryInterval": 600,
    "PayloadFormatIndicator": 1,
}

_LISTENERS = """
[gateway]
data_dir = "{data}"
drain_timeout = 2.0
""" + listeners_toml("mqtt", "stomp")


# -- the gateway side -----------------------------------------------------------------


@dataclass
class Setup:
    gw: Gateway
    proxy: Proxy
    tag: str
    name: str

    @property
    def bridge(self) -> Bridge:
        return self.gw.bridges[self.name]

    @property
    def mqtt(self) -> int:
        return self.gw.port("mqtt")

    @property
    def stomp(self) -> int:
        return self.gw.port("stomp")


def new_tag() -> str:
    return f"gw{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def bridged_gateway(
    nursery: trio.Nursery,
    tmp_path: os.PathLike[str],
    name: str,
    bridge_toml: str,
    *,
    up: bool = True,
) -> AsyncIterator[Gateway]:
    """A gateway with MQTT and STOMP listeners and one bridge (once it is ``up``)."""
    text = _LISTENERS.format(data=f"{os.fspath(tmp_path)}/data") + bridge_toml
    async with running_gateway(nursery, config_mod.loads(text, "bridge.toml")) as gw:
        if up:
            await wait_until(lambda: gw.bridges[name].stats.state == "up")
        yield gw


async def wait_until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(NET_TIMEOUT):
        while not condition():  # noqa: ASYNC110 - the gateway's counters have no event
            await trio.sleep(0.02)


async def wait_for(condition: Callable[[], Awaitable[bool]]) -> None:
    with trio.fail_after(NET_TIMEOUT):
        while not await condition():  # noqa: ASYNC110 - polling the upstream server
            await trio.sleep(0.05)


@contextlib.asynccontextmanager
async def stomp_subscriber(port: int, *destinations: str) -> AsyncIterator[Stomp]:
    stomp = Stomp(port, "1.2")
    with trio.fail_after(NET_TIMEOUT):
        await stomp.connect()
    try:
        for destination in destinations:
            with trio.fail_after(NET_TIMEOUT):
                await stomp.subscribe(destination)
        yield stomp
    finally:
        with trio.fail_after(NET_TIMEOUT):
            await stomp.close()


async def publish_while_cut(
    setup: Setup, count: int = 20, before_restore: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Cut the link, publish ``count`` QoS 1 messages (acked at once, kept in the
    outbox), call ``before_restore``, restore the link."""
    setup.proxy.cut()
    await wait_until(lambda: setup.bridge.stats.state != "up")
    async with mqtt5_client(setup.mqtt, "device-cut") as device:
        for i in range(count):
            with trio.fail_after(2):  # a PUBACK at once, not after the link is back
                assert await device.publish(f"orders/{i}", str(i).encode(), qos=1) == 0
    assert setup.bridge.outbox_depth == count
    assert setup.bridge.stats.state != "up"
    if before_restore is not None:
        await before_restore()
    setup.proxy.restore()


def assert_stomp_fields(frame: Received, destination: str, *, persistent: bool) -> None:
    """The fields every inbound test's upstream message carries, as STOMP shows them."""
    assert frame.body == b"21.5"
    assert frame.get("destination") == destination
    assert frame.get("unit") == "C"
    assert frame.get("content-type") == "text/plain"
    assert frame.get("correlation-id") == "c-9"
    assert frame.get("priority") == "6"
    assert frame.get("persistent") == ("true" if persistent else None)


def assert_mqtt_fields(message: Any, topic: str, qos: int) -> dict[str, Any]:
    assert message.topic == topic
    assert message.payload == b"21.5"
    assert message.qos == qos
    props = properties_dict(message.properties)
    assert ("unit", "C") in props["UserProperty"]
    assert props["ContentType"] == "text/plain"
    assert props["CorrelationData"] == b"c-9"
    return props


def drained(bridge: Bridge) -> bool:
    """Nothing left for the upstream: the outbox (its ready entries) is empty and
    nothing waits for a confirm."""
    return bridge.outbox_depth == 0 and bridge.in_flight == 0


def no_more(*queues: queue.Queue[Any]) -> bool:
    return all(q.empty() for q in queues)


# -- Mosquitto (kind "mqtt") ----------------------------------------------------------


def _mosquitto_bridge(port: int, tag: str) -> str:
    return f"""
[[bridges]]
name = "mosq"
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [
  {{ match = "orders/#", to = "{tag}/{{topic}}" }},
  {{ match = "{tag}/loop/#", to = "{{topic}}" }},
]
inbound = [
  {{ from = "{tag}/in/#", to = "from-mqtt/{{subject}}" }},
  {{ from = "{tag}/loop/#", to = "{{subject}}" }},
]

[bridges.mqtt]
client_id = "{tag}-bridge"
clean_start = true
session_expiry = 0
keep_alive = 10
"""


@pytest.fixture
async def mosquitto(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Setup]:
    upstream_reachable(HOST, MOSQUITTO)
    tag = new_tag()
    async with proxy_to(nursery, MOSQUITTO) as proxy:
        toml = _mosquitto_bridge(proxy.port, tag)
        async with bridged_gateway(nursery, tmp_path, "mosq", toml) as gw:
            yield Setup(gw, proxy, tag, "mosq")


@contextlib.asynccontextmanager
async def mosquitto_client(client_id: str, *filters: str) -> AsyncIterator[Paho]:
    """An MQTT 5 client of Mosquitto itself (never the gateway), subscribed at QoS 1."""
    client = Paho(MOSQUITTO, client_id, protocol=paho_mqtt.MQTTv5)
    try:
        with trio.fail_after(NET_TIMEOUT):
            await client.connect()
            for topic_filter in filters:
                await client.subscribe(topic_filter, qos=1)
        yield client
    finally:
        with trio.fail_after(NET_TIMEOUT):
            await client.close()


async def test_mqtt_publish_reaches_mosquitto_with_its_properties(mosquitto: Setup) -> None:
    tag = mosquitto.tag
    async with mosquitto_client(f"{tag}-reader", f"{tag}/orders/#") as reader:
        async with mqtt5_client(mosquitto.mqtt, "device-1") as device:
            reason = await device.publish(
                "orders/eu/42", b'{"qty": 3}', qos=1, properties=DEVICE_PROPERTIES
            )
        assert reason == 0
        message = await reader.get()
    assert message.topic == f"{tag}/orders/eu/42"
    assert message.payload == b'{"qty": 3}'
    assert message.qos == 1
    props = properties_dict(message.properties)
    assert ("site", "lyon") in props["UserProperty"]
    assert ("priority", "7") in props["UserProperty"]
    assert ("x-gateway-bridge", "mosq") in props["UserProperty"]
    assert props["ContentType"] == "application/json"
    assert props["CorrelationData"] == b"corr-1"
    assert props["ResponseTopic"] == "$queue/replies"
    assert 590 <= props["MessageExpiryInterval"] <= 600
    assert props["PayloadFormatIndicator"] == 1
    await wait_until(lambda: mosquitto.bridge.stats.confirmed == 1)
    assert mosquitto.bridge.outbox_depth == 0


async def test_a_mosquitto_publish_reaches_stomp_and_mqtt_subscribers(mosquitto: Setup) -> None:
    tag = mosquitto.tag
    async with (
        stomp_subscriber(mosquitto.stomp, "/topic/from-mqtt.#") as stomp,
        mqtt5_client(mosquitto.mqtt, "watcher") as watcher,
        mosquitto_client(f"{tag}-sender") as sender,
    ):
        await watcher.subscribe("from-mqtt/#", qos=1)
        reason = await sender.publish(
            f"{tag}/in/kitchen",
            b"21.5",
            qos=1,
            properties={
                "UserProperty": [("unit", "C"), ("priority", "6")],
                "ContentType": "text/plain",
                "CorrelationData": b"c-9",
                "ResponseTopic": "replies/x",
                "MessageExpiryInterval": 300,
            },
        )
        assert reason in (0, 0x10)
        message = await watcher.get()
        props = assert_mqtt_fields(message, f"from-mqtt/{tag}/in/kitchen", qos=1)
        assert props["ResponseTopic"] == "replies/x"
        assert 290 <= props["MessageExpiryInterval"] <= 300
        frame = await stomp.get()
        assert_stomp_fields(frame, f"/topic/from-mqtt.{tag}.in.kitchen", persistent=True)
        assert frame.get("reply-to") == "/topic/replies.x"
        expires = int(frame.get("expires") or 0)
        assert abs(expires - (time.time() + 300) * 1000) < 10_000
    # (Mosquitto keeps no trace of the PUBACK that is easy to read back: not checked.)
    assert mosquitto.bridge.stats.received == 1
    assert mosquitto.bridge.stats.inbound_refused == 0


async def test_mosquitto_cut_messages_wait_in_the_outbox(mosquitto: Setup) -> None:
    tag = mosquitto.tag
    async with (
        mosquitto_client(f"{tag}-reader", f"{tag}/orders/#") as reader,
        mosquitto_client(f"{tag}-sender") as sender,
        mqtt5_client(mosquitto.mqtt, "watcher") as watcher,
    ):
        await watcher.subscribe("from-mqtt/#", qos=1)
        await publish_while_cut(mosquitto)
        got = [await reader.get() for _ in range(20)]
        assert sorted(int(m.payload) for m in got) == list(range(20))
        assert {m.topic for m in got} == {f"{tag}/orders/{i}" for i in range(20)}
        await wait_until(lambda: drained(mosquitto.bridge))
        assert mosquitto.bridge.stats.confirmed == 20
        assert mosquitto.bridge.stats.connects >= 2
        # The new link subscribed again: inbound works as before the cut.
        assert (await sender.publish(f"{tag}/in/after", b"back", qos=1)) in (0, 0x10)
        message = await watcher.get(within=3)
        assert (message.topic, message.payload) == (f"from-mqtt/{tag}/in/after", b"back")


async def test_mosquitto_loop_one_copy_each_way(mosquitto: Setup) -> None:
    """Outbound and inbound rules on the same topics: a local publish goes up once and
    does not come back; an upstream publish comes in once and does not go back up."""
    tag, bridge = mosquitto.tag, mosquitto.bridge
    async with (
        mosquitto_client(f"{tag}-reader", f"{tag}/loop/#") as upstream,
        mosquitto_client(f"{tag}-sender") as sender,
        mqtt5_client(mosquitto.mqtt, "watcher") as local,
    ):
        await local.subscribe(f"{tag}/loop/#", qos=1)
        async with mqtt5_client(mosquitto.mqtt, "device-loop") as device:
            assert await device.publish(f"{tag}/loop/down", b"local", qos=1) == 0
        assert (await sender.publish(f"{tag}/loop/up", b"remote", qos=1)) in (0, 0x10)
        up = sorted([(await upstream.get()).payload for _ in range(2)])
        down = sorted([(await local.get()).payload for _ in range(2)])
        assert up == [b"local", b"remote"]
        assert down == [b"local", b"remote"]
        await trio.sleep(QUIET)
        assert no_more(upstream.messages, local.messages)
    assert bridge.stats.sent == 1
    assert bridge.stats.confirmed == 1
    # MQTT 5 no local keeps the bridge's own publish off its subscription; had it come
    # back, the framework would have counted it in loops, not in received.
    assert bridge.stats.received == 1
    assert bridge.outbox_depth == 0


# -- NATS -----------------------------------------------------------------------------


def nats_call(fn: Callable[[NatsClient], Awaitable[T]]) -> Awaitable[T]:
    """``fn(client)`` with a nats-py client of its own, in a thread (asyncio)."""

    async def main() -> T:
        client = await nats.connect(f"nats://{HOST}:{NATS}")
        try:
            return await fn(client)
        finally:
            await client.close()

    return trio.to_thread.run_sync(asyncio.run, main())


def _nats_bridge(port: int, tag: str) -> str:
    return f"""
[[bridges]]
name = "nats"
kind = "nats"
url = "nats://127.0.0.1:{port}"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [
  {{ match = "orders/#", to = "{tag}.{{topic}}" }},
  {{ match = "loop/#", to = "{tag}.in.{{#}}" }},
  {{ match = "lost/#", to = "{tag}.nowhere.{{#}}" }},
]
inbound = [
  {{ from = "jetstream:IN{tag}/D{tag}", to = "from-js/{{subject}}" }},
  {{ from = "{tag}.core.>", to = "from-core/{{subject}}" }},
]

[bridges.nats]
ack_wait = 5
streams = [
  {{ name = "OUT{tag}", subjects = ["{tag}.orders.>"], storage = "memory" }},
  {{ name = "IN{tag}", subjects = ["{tag}.in.>"], storage = "memory" }},
]
"""


@pytest.fixture
async def natsbridge(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Setup]:
    upstream_reachable(HOST, NATS)
    tag = new_tag()
    try:
        async with proxy_to(nursery, NATS) as proxy:
            toml = _nats_bridge(proxy.port, tag)
            async with bridged_gateway(nursery, tmp_path, "nats", toml) as gw:
                yield Setup(gw, proxy, tag, "nats")
    finally:

        async def delete(client: NatsClient) -> None:
            js = client.jetstream()
            for stream in (f"OUT{tag}", f"IN{tag}"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)

        await nats_call(delete)


async def stream_count(stream: str) -> int:
    async def count(client: NatsClient) -> int:
        return int((await client.jetstream().stream_info(stream)).state.messages)

    return await nats_call(count)


async def stream_messages(stream: str, count: int) -> list[Any]:
    """The first ``count`` messages of ``stream``, once it has that many."""
    await wait_for(lambda: _at_least(stream, count))

    async def read(client: NatsClient) -> list[Any]:
        js = client.jetstream()
        return [await js.get_msg(stream, seq) for seq in range(1, count + 1)]

    return await nats_call(read)


async def _at_least(stream: str, count: int) -> bool:
    return await stream_count(stream) >= count


async def consumer_settled(tag: str) -> bool:
    """Nothing waits for the bridge's durable consumer: delivered and acknowledged."""

    async def info(client: NatsClient) -> Any:
        return await client.jetstream().consumer_info(f"IN{tag}", f"D{tag}")

    consumer = await nats_call(info)
    return bool(consumer.num_ack_pending == 0 and consumer.num_pending == 0)


async def test_mqtt_publish_is_stored_in_jetstream_with_headers(natsbridge: Setup) -> None:
    tag = natsbridge.tag
    async with mqtt5_client(natsbridge.mqtt, "device-1") as device:
        reason = await device.publish(
            "orders/eu/42", b'{"qty": 3}', qos=1, properties=DEVICE_PROPERTIES
        )
    assert reason == 0
    (stored,) = await stream_messages(f"OUT{tag}", 1)
    assert stored.subject == f"{tag}.orders.eu.42"
    assert stored.data == b'{"qty": 3}'
    headers = stored.headers
    assert headers["site"] == "lyon"
    assert headers["x-gateway-bridge"] == "nats"
    assert headers["content-type"] == "application/json"
    assert headers["correlation-id"] == "corr-1"
    assert headers["reply-to"] == "$queue/replies"
    assert headers["priority"] == "7"
    assert abs(int(headers["expires"]) - (time.time() + 600) * 1000) < 10_000
    assert headers["Nats-Msg-Id"].isdigit()
    await wait_until(lambda: natsbridge.bridge.stats.confirmed == 1)
    assert natsbridge.bridge.outbox_depth == 0
    assert await stream_count(f"OUT{tag}") == 1


async def test_jetstream_and_core_nats_reach_stomp_and_mqtt_subscribers(natsbridge: Setup) -> None:
    tag = natsbridge.tag
    async with (
        stomp_subscriber(natsbridge.stomp, "/topic/from-js.#", "/topic/from-core.#") as stomp,
        mqtt5_client(natsbridge.mqtt, "watcher") as watcher,
    ):
        await watcher.subscribe("from-js/#", qos=1)
        await watcher.subscribe("from-core/#", qos=1)
        expires = int((time.time() + 300) * 1000)
        fields = {
            "unit": "C",
            "content-type": "text/plain",
            "correlation-id": "c-9",
            "priority": "6",
            "reply-to": "$queue/replies",
            "expires": str(expires),
        }

        async def js_publish(client: NatsClient) -> None:
            await client.jetstream().publish(f"{tag}.in.kitchen", b"21.5", headers=fields)

        await nats_call(js_publish)
        message = await watcher.get()
        props = assert_mqtt_fields(message, f"from-js/{tag}/in/kitchen", qos=1)
        assert props["ResponseTopic"] == "$queue/replies"
        assert 290 <= props["MessageExpiryInterval"] <= 300
        frame = await stomp.get()
        assert_stomp_fields(frame, f"/topic/from-js.{tag}.in.kitchen", persistent=True)
        assert frame.get("reply-to") == "/queue/replies"
        assert frame.get("expires") == str(expires)

        # Settled upstream once the core had it: nothing pending on the durable.
        await wait_for(lambda: consumer_settled(tag))

        # Core NATS (at most once, QoS 0); the subscription was made long before.
        async def core_publish(client: NatsClient) -> None:
            await client.publish(f"{tag}.core.kitchen", b"21.5", headers=fields)
            await client.flush()

        await nats_call(core_publish)
        message = await watcher.get()
        assert_mqtt_fields(message, f"from-core/{tag}/core/kitchen", qos=0)
        frame = await stomp.get()
        assert_stomp_fields(frame, f"/topic/from-core.{tag}.core.kitchen", persistent=False)
    assert natsbridge.bridge.stats.received == 2
    assert natsbridge.bridge.stats.inbound_refused == 0


async def test_nats_cut_messages_wait_in_the_outbox(natsbridge: Setup) -> None:
    tag = natsbridge.tag

    async def js_publish(client: NatsClient) -> None:
        await client.jetstream().publish(f"{tag}.in.during", b"kept")

    async def core_publish(client: NatsClient) -> None:
        await client.publish(f"{tag}.core.after", b"core")
        await client.flush()

    async with mqtt5_client(natsbridge.mqtt, "watcher") as watcher:
        await watcher.subscribe("from-js/#", qos=1)
        await watcher.subscribe("from-core/#", qos=1)
        await publish_while_cut(natsbridge, before_restore=lambda: nats_call(js_publish))
        stored = await stream_messages(f"OUT{tag}", 20)
        assert sorted(int(m.data) for m in stored) == list(range(20))
        assert {m.subject for m in stored} == {f"{tag}.orders.{i}" for i in range(20)}
        await wait_until(lambda: drained(natsbridge.bridge))
        assert natsbridge.bridge.stats.confirmed == 20
        assert natsbridge.bridge.stats.connects >= 2
        assert await stream_count(f"OUT{tag}") == 20
        # What JetStream kept during the cut is pulled by the new link (well within
        # ack_wait: not a redelivery), and the core subscription is made again.
        message = await watcher.get(within=3)
        assert (message.topic, message.payload) == (f"from-js/{tag}/in/during", b"kept")
        await nats_call(core_publish)
        message = await watcher.get(within=3)
        assert (message.topic, message.payload) == (f"from-core/{tag}/core/after", b"core")
    await wait_for(lambda: consumer_settled(tag))


async def test_nats_what_the_bridge_stored_is_not_taken_back_in(natsbridge: Setup) -> None:
    """An outbound rule into the stream an inbound rule reads: the copy that comes
    back carries x-gateway-bridge, is counted as a loop, acknowledged, not published."""
    tag, bridge = natsbridge.tag, natsbridge.bridge
    async with mqtt5_client(natsbridge.mqtt, "watcher") as local:
        await local.subscribe("loop/#", qos=1)
        await local.subscribe("from-js/#", qos=1)
        async with mqtt5_client(natsbridge.mqtt, "device-loop") as device:
            assert await device.publish("loop/x", b"local", qos=1) == 0
        assert (await local.get()).payload == b"local"
        await wait_until(lambda: bridge.stats.loops == 1)
        await wait_for(lambda: consumer_settled(tag))
        await trio.sleep(QUIET)
        assert no_more(local.messages)
    (stored,) = await stream_messages(f"IN{tag}", 1)
    assert stored.subject == f"{tag}.in.x"
    assert stored.headers["x-gateway-bridge"] == "nats"
    assert bridge.stats.confirmed == 1
    assert bridge.stats.received == 0
    assert bridge.stats.sent == 1
    assert await stream_count(f"IN{tag}") == 1


async def test_a_subject_no_stream_captures_is_dead_lettered(natsbridge: Setup) -> None:
    async with stomp_subscriber(natsbridge.stomp) as stomp:
        async with mqtt5_client(natsbridge.mqtt, "device-4") as device:
            assert await device.publish("lost/x", b"no stream", qos=1) == 0
        await wait_until(lambda: natsbridge.bridge.stats.refused == 1)
        with trio.fail_after(NET_TIMEOUT):
            await stomp.subscribe("/queue/bridge.nats.dlq")
        frame = await stomp.get()
    assert frame.body == b"no stream"
    assert frame.get("x-death-destination") == "lost/x"
    assert natsbridge.bridge.stats.confirmed == 0
    assert natsbridge.bridge.outbox_depth == 0
    assert natsbridge.bridge.stats.state == "up"


# -- Redis Streams --------------------------------------------------------------------


def _redis_bridge(port: int, tag: str) -> str:
    return f"""
[[bridges]]
name = "redis"
kind = "redis"
url = "redis://127.0.0.1:{port}"
reconnect_min = 0.1
reconnect_max = 0.5
outbound = [
  {{ match = "orders/#", to = "{tag}/{{topic}}" }},
  {{ match = "loop/#", to = "{tag}/in" }},
]
inbound = [{{ from = "{tag}/in", to = "from-redis/{{subject}}" }}]

[bridges.redis]
group = "g{tag}"
block = 0.2
"""


def _redis(fn: Callable[[redis.Redis], T]) -> Callable[[], T]:
    def run() -> T:
        with redis.Redis(host=HOST, port=REDIS) as client:
            return fn(client)

    return run


async def redis_call(fn: Callable[[redis.Redis], T]) -> T:
    return await trio.to_thread.run_sync(_redis(fn))


async def delete_keys(tag: str) -> None:
    """Every key this test made (streams go with their consumer groups)."""

    def delete(client: redis.Redis) -> None:
        keys = list(client.scan_iter(match=f"{tag}*"))
        if keys:
            client.delete(*keys)

    await redis_call(delete)


@pytest.fixture
async def redisbridge(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Setup]:
    upstream_reachable(HOST, REDIS)
    tag = new_tag()
    try:
        async with proxy_to(nursery, REDIS) as proxy:
            toml = _redis_bridge(proxy.port, tag)
            async with bridged_gateway(nursery, tmp_path, "redis", toml) as gw:
                yield Setup(gw, proxy, tag, "redis")
    finally:
        await delete_keys(tag)


async def nothing_pending(key: str, group: str) -> bool:
    """Every entry the group was given is acknowledged (XPENDING count 0)."""
    pending = await redis_call(lambda r: r.xpending(key, group))
    return int(pending["pending"]) == 0


async def stream_entries(key: str, count: int) -> list[dict[str, bytes]]:
    """The fields of every entry of stream ``key``, once it has ``count``."""

    async def enough() -> bool:
        return await redis_call(lambda r: r.xlen(key)) >= count

    await wait_for(enough)
    entries: Any = await redis_call(lambda r: r.xrange(key))
    return [{name.decode(): value for name, value in fields.items()} for _, fields in entries]


async def test_mqtt_publish_becomes_a_stream_entry_with_its_fields(redisbridge: Setup) -> None:
    tag = redisbridge.tag
    before = time.time()
    async with mqtt5_client(redisbridge.mqtt, "device-1") as device:
        reason = await device.publish(
            "orders/eu/42", b'{"qty": 3}', qos=1, properties=DEVICE_PROPERTIES
        )
    assert reason == 0
    (entry,) = await stream_entries(f"{tag}/orders/eu/42", 1)
    assert entry["payload"] == b'{"qty": 3}'
    assert entry["h:site"] == b"lyon"
    assert entry["h:x-gateway-bridge"] == b"redis"
    assert entry["content-type"] == b"application/json"
    assert entry["correlation-id"] == b"corr-1"
    assert entry["reply-to"] == b"$queue/replies"
    assert entry["priority"] == b"7"
    assert abs(int(entry["expires"]) - (before + 600) * 1000) < 10_000
    assert entry["message-id"].isdigit()
    assert abs(int(entry["timestamp"]) - before * 1000) < 10_000
    await wait_until(lambda: redisbridge.bridge.stats.confirmed == 1)
    assert redisbridge.bridge.outbox_depth == 0


async def test_a_stream_entry_reaches_stomp_and_mqtt_subscribers(redisbridge: Setup) -> None:
    tag = redisbridge.tag
    key = f"{tag}/in"
    async with (
        stomp_subscriber(redisbridge.stomp, "/topic/from-redis.#") as stomp,
        mqtt5_client(redisbridge.mqtt, "watcher") as watcher,
    ):
        await watcher.subscribe("from-redis/#", qos=1)
        expires = int((time.time() + 300) * 1000)
        fields = {
            "payload": b"21.5",
            "h:unit": "C",
            "content-type": "text/plain",
            "correlation-id": b"c-9",
            "priority": "6",
            "reply-to": "$queue/replies",
            "expires": str(expires),
        }
        await redis_call(lambda r: r.xadd(key, fields))  # type: ignore[arg-type]
        message = await watcher.get()
        props = assert_mqtt_fields(message, f"from-redis/{tag}/in", qos=1)
        assert props["ResponseTopic"] == "$queue/replies"
        assert 290 <= props["MessageExpiryInterval"] <= 300
        frame = await stomp.get()
        assert_stomp_fields(frame, f"/topic/from-redis.{tag}.in", persistent=True)
        assert frame.get("reply-to") == "/queue/replies"
        assert frame.get("expires") == str(expires)

    # XACKed once the core had it: nothing pending in the group.
    await wait_for(lambda: nothing_pending(key, f"g{tag}"))
    groups = await redis_call(lambda r: r.xinfo_groups(key))
    assert [int(g["pending"]) for g in groups] == [0]
    assert redisbridge.bridge.stats.received == 1


async def test_an_entry_without_payload_arrives_as_a_json_object(redisbridge: Setup) -> None:
    tag = redisbridge.tag
    key = f"{tag}/in"
    async with mqtt5_client(redisbridge.mqtt, "watcher") as watcher:
        await watcher.subscribe("from-redis/#", qos=1)
        await redis_call(lambda r: r.xadd(key, {"temp": "21.5", "unit": "C"}))
        message = await watcher.get()
    assert json.loads(message.payload) == {"temp": "21.5", "unit": "C"}
    assert properties_dict(message.properties)["ContentType"] == "application/json"
    await wait_for(lambda: nothing_pending(key, f"g{tag}"))


async def test_what_expires_in_the_outbox_is_not_sent(redisbridge: Setup) -> None:
    tag = redisbridge.tag
    redisbridge.proxy.cut()
    await wait_until(lambda: redisbridge.bridge.stats.state != "up")
    async with mqtt5_client(redisbridge.mqtt, "device-5") as device:
        expiring = {"MessageExpiryInterval": 1}
        assert await device.publish("orders/short", b"stale", qos=1, properties=expiring) == 0
        assert await device.publish("orders/long", b"fresh", qos=1) == 0
    await trio.sleep(1.3)
    redisbridge.proxy.restore()
    (entry,) = await stream_entries(f"{tag}/orders/long", 1)
    assert entry["payload"] == b"fresh"
    await wait_until(lambda: drained(redisbridge.bridge))
    assert await redis_call(lambda r: r.exists(f"{tag}/orders/short")) == 0
    assert redisbridge.bridge.stats.confirmed == 1


async def test_redis_cut_messages_wait_in_the_outbox(redisbridge: Setup) -> None:
    tag = redisbridge.tag
    key = f"{tag}/in"

    async def all_there() -> bool:
        keys = [f"{tag}/orders/{i}" for i in range(20)]
        return all(await redis_call(lambda r: [r.xlen(k) for k in keys]))

    async with mqtt5_client(redisbridge.mqtt, "watcher") as watcher:
        await watcher.subscribe("from-redis/#", qos=1)
        await publish_while_cut(
            redisbridge,
            before_restore=lambda: redis_call(lambda r: r.xadd(key, {"payload": "kept"})),
        )
        await wait_for(all_there)
        for i in range(20):
            (entry,) = await stream_entries(f"{tag}/orders/{i}", 1)
            assert entry["payload"] == str(i).encode()
        await wait_until(lambda: drained(redisbridge.bridge))
        assert redisbridge.bridge.stats.confirmed == 20
        assert redisbridge.bridge.stats.connects >= 2
        # What was added to the inbound stream during the cut is read by the new link.
        message = await watcher.get(within=3)
        assert (message.topic, message.payload) == (f"from-redis/{tag}/in", b"kept")

    await wait_for(lambda: nothing_pending(key, f"g{tag}"))


async def test_xadd_to_a_key_of_another_type_is_dead_lettered(redisbridge: Setup) -> None:
    tag = redisbridge.tag
    await redis_call(lambda r: r.set(f"{tag}/orders/wrong", "a string"))
    async with stomp_subscriber(redisbridge.stomp) as stomp:
        async with mqtt5_client(redisbridge.mqtt, "device-2") as device:
            assert await device.publish("orders/wrong", b"nowhere to go", qos=1) == 0
        await wait_until(lambda: redisbridge.bridge.stats.refused == 1)
        with trio.fail_after(NET_TIMEOUT):
            await stomp.subscribe("/queue/bridge.redis.dlq")
        frame = await stomp.get()
    assert frame.body == b"nowhere to go"
    assert frame.get("x-death-destination") == "orders/wrong"
    assert redisbridge.bridge.stats.confirmed == 0
    assert redisbridge.bridge.outbox_depth == 0
    assert await redis_call(lambda r: r.get(f"{tag}/orders/wrong")) == b"a string"
    # The link stays up: a refusal is per message.
    assert redisbridge.bridge.stats.state == "up"


async def test_redis_what_the_bridge_added_is_not_taken_back_in(redisbridge: Setup) -> None:
    """An outbound rule into the stream an inbound rule reads: the entry read back
    carries h:x-gateway-bridge, is counted as a loop, XACKed, not published."""
    tag, bridge = redisbridge.tag, redisbridge.bridge
    key = f"{tag}/in"
    async with mqtt5_client(redisbridge.mqtt, "watcher") as local:
        await local.subscribe("loop/#", qos=1)
        await local.subscribe("from-redis/#", qos=1)
        async with mqtt5_client(redisbridge.mqtt, "device-loop") as device:
            assert await device.publish("loop/x", b"local", qos=1) == 0
        assert (await local.get()).payload == b"local"
        await wait_until(lambda: bridge.stats.loops == 1)

        await wait_for(lambda: nothing_pending(key, f"g{tag}"))
        await trio.sleep(QUIET)
        assert no_more(local.messages)
    (entry,) = await stream_entries(key, 1)
    assert entry["h:x-gateway-bridge"] == b"redis"
    assert bridge.stats.received == 0
    assert bridge.stats.sent == 1
    assert await redis_call(lambda r: r.xlen(key)) == 1


async def test_an_inbound_key_of_another_type_keeps_the_link_down_until_fixed(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    upstream_reachable(HOST, REDIS)
    tag = new_tag()
    key = f"{tag}/in"
    await redis_call(lambda r: r.set(key, "a string"))
    try:
        toml = _redis_bridge(REDIS, tag)
        async with bridged_gateway(nursery, tmp_path, "redis", toml, up=False) as gw:
            bridge = gw.bridges["redis"]
            await wait_until(lambda: bridge.stats.failures >= 1)
            assert bridge.stats.state != "up"
            assert bridge.stats.last_error_code == "WRONGTYPE"
            assert key in (bridge.stats.last_error or "")
            # Meanwhile outbound messages wait in the outbox.
            async with mqtt5_client(gw.port("mqtt"), "device-3") as device:
                assert await device.publish("orders/waiting", b"later", qos=1) == 0
            assert bridge.outbox_depth == 1
            # Retried (at the longest backoff): once the key is gone, the link comes up.
            await redis_call(lambda r: r.delete(key))
            await wait_until(lambda: bridge.stats.state == "up")
            (entry,) = await stream_entries(f"{tag}/orders/waiting", 1)
            assert entry["payload"] == b"later"
            await wait_until(lambda: drained(bridge))
            assert await redis_call(lambda r: r.type(key)) == b"stream"  # MKSTREAM
    finally:
        await delete_keys(tag)
