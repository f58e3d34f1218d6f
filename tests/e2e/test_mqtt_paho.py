"""The MQTT 3.1.1 walking skeleton, end to end with paho-mqtt."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT
from tests.paho import Paho
from tests.rawmqtt import RawClient


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv31])
async def test_wildcard_subscriber_receives_matching_publishes(
    gateway: Gateway, protocol: int
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        sub = Paho(gateway.port("mqtt"), "sub-1", protocol=protocol)
        pub = Paho(gateway.port("mqtt"), "pub-1", protocol=protocol)
        assert (await sub.connect()) == 0
        assert (await pub.connect()) == 0
        granted = await sub.subscribe("sensors/+/temp")
        assert [int(code.value) for code in granted] == [0]
        await sub.subscribe("alerts/#")

        await pub.publish("sensors/kitchen/humidity", b"no match")
        await pub.publish("sensors/kitchen/temp", b"21.5")
        await pub.publish("alerts", b"parent level matches '#'")
        await pub.publish("alerts/fire/floor2", b"deep")

        got = [await sub.get() for _ in range(3)]
        assert [(m.topic, m.payload) for m in got] == [
            ("sensors/kitchen/temp", b"21.5"),
            ("alerts", b"parent level matches '#'"),
            ("alerts/fire/floor2", b"deep"),
        ]
        assert all(m.qos == 0 and not m.retain for m in got)
        await sub.close()
        await pub.close()


async def test_unsubscribe_stops_delivery(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        sub = Paho(gateway.port("mqtt"), "sub-u")
        pub = Paho(gateway.port("mqtt"), "pub-u")
        await sub.connect()
        await pub.connect()
        await sub.subscribe("a/#")
        await sub.subscribe("barrier")
        await pub.publish("a/1", b"before")
        assert (await sub.get()).payload == b"before"

        await sub.unsubscribe("a/#")
        await pub.publish("a/2", b"after")
        await pub.publish("barrier", b"end")
        # Same publisher, same order: the barrier arriving first proves a/2 was not sent.
        assert (await sub.get()).topic == "barrier"
        assert sub.messages.empty()
        await sub.close()
        await pub.close()


async def test_qos1_and_qos2_publishes_are_acknowledged_and_delivered(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        sub = Paho(gateway.port("mqtt"), "sub-q")
        pub = Paho(gateway.port("mqtt"), "pub-q")
        await sub.connect()
        await pub.connect()
        await sub.subscribe("q/#", qos=2)
        await pub.publish("q/1", b"one", qos=1)
        await pub.publish("q/2", b"two", qos=2)
        got = [await sub.get(), await sub.get()]
        assert [(m.topic, m.payload) for m in got] == [("q/1", b"one"), ("q/2", b"two")]
        await sub.close()
        await pub.close()


async def test_keepalive_pings_keep_an_idle_client_connected(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = Paho(gateway.port("mqtt"), "pinger", keepalive=1)
        await client.connect()
        # Past 1.5x the keep-alive: only PINGREQ/PINGRESP kept the session alive.
        await trio.sleep(2.5)
        assert not client.disconnected.is_set()
        await client.subscribe("still/here")
        await client.publish("still/here", b"yes")
        assert (await client.get()).payload == b"yes"
        await client.close()


async def test_same_client_id_takes_over_the_old_connection(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        first = await RawClient.open(gateway.port("mqtt"))
        await first.connect("dup-id")
        second = Paho(gateway.port("mqtt"), "dup-id")
        await second.connect()
        # The server closes the first connection (3.1.4-3), sending nothing more.
        assert await first.receive_until_closed() == []
        await second.subscribe("t")
        await second.publish("t", b"new owner")
        assert (await second.get()).payload == b"new owner"
        await second.close()
        await first.aclose()
