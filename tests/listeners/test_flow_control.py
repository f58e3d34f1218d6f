"""A subscriber that stops reading never slows the publisher or the other subscribers."""

from __future__ import annotations

from pathlib import Path

import trio
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.codecs import mqtt
from gateway.core import QueuePolicy
from tests.conftest import NET_TIMEOUT, make_config
from tests.rawmqtt import RawClient

MESSAGES = 20_000
PAYLOAD = b"p" * 512  # 10 MB in all: far past the stalled connection's buffers


async def subscribed(port: int, client_id: str) -> RawClient:
    client = await RawClient.open(port)
    await client.connect(client_id)
    await client.send(mqtt.Subscribe(packet_id=1, subscriptions=(("load/#", 0),)))
    assert isinstance(await client.receive(), mqtt.SubAck)
    return client


async def test_stalled_subscriber_does_not_slow_the_others(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        stalled = await subscribed(port, "stalled")  # subscribes, then never reads again
        fast = await subscribed(port, "fast")
        publisher = await RawClient.open(port)
        await publisher.connect("publisher")

        received: list[bytes] = []

        async def read_all() -> None:
            while len(received) < MESSAGES:
                packet = await fast.receive()
                assert isinstance(packet, mqtt.Publish)
                received.append(packet.payload[:8])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            batch = []
            for i in range(MESSAGES):
                batch.append(mqtt.Publish(topic="load/a", payload=b"%08d" % i + PAYLOAD))
                if len(batch) == 500:
                    await publisher.send(*batch)
                    batch = []
            await publisher.send(*batch)

        # Everything reached the reading subscriber, in order.
        assert received == [b"%08d" % i for i in range(MESSAGES)]
        # The stalled one lost QoS 0 messages (counted), and is still connected.
        assert gateway.broker.stats.drops["slow-consumer"] > 0
        assert "stalled" in gateway.broker.sessions
        await publisher.send(mqtt.PingReq())
        assert isinstance(await publisher.receive(), mqtt.PingResp)
        for client in (stalled, fast, publisher):
            await client.aclose()


async def _slow_qos1_reader(client: RawClient, count: int, received: list[bytes]) -> None:
    while len(received) < count:
        packet = await client.receive()
        assert isinstance(packet, mqtt.Publish)
        assert packet.packet_id is not None
        received.append(packet.payload)
        await client.send(mqtt.PubAck(packet_id=packet.packet_id))
        if len(received) % 50 == 0:
            await trio.sleep(0.01)  # slower than the publisher


async def test_qos1_flood_is_held_back_instead_of_dropped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gw = Gateway(make_config(tmp_path, max_inflight=10))
    gw.broker.session_queue_policy = QueuePolicy(max_length=40)
    await nursery.start(gw.run)
    port = gw.port("mqtt")
    total = 2_000
    with trio.fail_after(NET_TIMEOUT):
        sub = await RawClient.open(port)
        await sub.connect("slow-qos1")
        await sub.send(mqtt.Subscribe(packet_id=1, subscriptions=(("flood", 1),)))
        assert isinstance(await sub.receive(), mqtt.SubAck)
        pub = await RawClient.open(port)
        await pub.connect("flooder")
        received: list[bytes] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(_slow_qos1_reader, sub, total, received)
            # Open loop: every PUBLISH at once, PUBACKs read afterwards.
            await pub.send(
                *(
                    mqtt.Publish(topic="flood", payload=b"%05d" % i, qos=1, packet_id=i % 65535 + 1)
                    for i in range(total)
                )
            )
        assert received == [b"%05d" % i for i in range(total)]
        assert gw.broker.stats.drops["max-length"] == 0
        await sub.aclose()
        await pub.aclose()
    gw.stop()


async def test_a_stalled_qos1_subscriber_holds_publishers_only_for_a_while(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gw = Gateway(make_config(tmp_path, max_inflight=5, backpressure_patience=0.3))
    gw.broker.session_queue_policy = QueuePolicy(max_length=20)
    await nursery.start(gw.run)
    port = gw.port("mqtt")
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        stalled = await RawClient.open(port)
        await stalled.connect("never-acks")
        await stalled.send(mqtt.Subscribe(packet_id=1, subscriptions=(("t", 1),)))
        assert isinstance(await stalled.receive(), mqtt.SubAck)
        pub = await RawClient.open(port)
        await pub.connect("publisher")
        await pub.send(
            *(mqtt.Publish(topic="t", payload=b"x", qos=1, packet_id=i) for i in range(1, 101))
        )
        acks = [await pub.receive() for _ in range(100)]
        assert all(isinstance(ack, mqtt.PubAck) for ack in acks)
        for client in (stalled, pub):
            await client.aclose()
    assert any(e["event"] == "mqtt.backpressure.gave_up" for e in logs)
    assert gw.broker.stats.drops["max-length"] > 0
    gw.stop()
