"""A subscriber that stops reading never slows the publisher or the other subscribers."""

from __future__ import annotations

import trio

from gateway.app import Gateway
from gateway.codecs import mqtt
from tests.conftest import NET_TIMEOUT
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
