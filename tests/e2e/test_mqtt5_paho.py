"""MQTT 5 end to end with paho-mqtt against the gateway alone (no other broker needed)."""

from __future__ import annotations

import paho.mqtt.client as paho
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT
from tests.paho import Paho

V5 = paho.MQTTv5


async def test_persistent_session_resumes_with_queued_qos1_and_qos2(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        sub = Paho(port, "v5-dev", protocol=V5)
        await sub.connect(clean_start=True, properties={"SessionExpiryInterval": 300})
        await sub.subscribe("fleet/+/cmd", qos=2)
        await sub.close()
        pub = Paho(port, "v5-pub", protocol=V5)
        await pub.connect()
        await pub.publish("fleet/7/cmd", b"one", qos=1)
        await pub.publish("fleet/8/cmd", b"two", qos=2)
        back = Paho(port, "v5-dev", protocol=V5)
        await back.connect(clean_start=False, properties={"SessionExpiryInterval": 300})
        assert back.session_present is True
        got = [await back.get(), await back.get()]
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            ("fleet/7/cmd", b"one", 1),
            ("fleet/8/cmd", b"two", 2),
        ]
        await back.close()
        await pub.close()


async def test_request_response_with_user_properties(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        service = Paho(port, "service", protocol=V5)
        client = Paho(port, "client", protocol=V5)
        await service.connect()
        await client.connect()
        await service.subscribe("svc/time", qos=1)
        await client.subscribe("replies/client", qos=1)
        reason = await client.publish(
            "svc/time",
            b"what time is it?",
            qos=1,
            properties={
                "ResponseTopic": "replies/client",
                "CorrelationData": b"req-1",
                "UserProperty": [("tenant", "acme"), ("tenant", "beta")],
            },
        )
        assert reason == 0
        request = await service.get()
        props = request.properties
        assert props is not None
        assert props.ResponseTopic == "replies/client"
        assert props.CorrelationData == b"req-1"
        assert props.UserProperty == [("tenant", "acme"), ("tenant", "beta")]
        await service.publish(
            props.ResponseTopic,
            b"noon",
            qos=1,
            properties={"CorrelationData": props.CorrelationData},
        )
        reply = await client.get()
        assert reply.payload == b"noon"
        assert reply.properties is not None
        assert reply.properties.CorrelationData == b"req-1"
        await service.close()
        await client.close()


async def test_shared_subscription_splits_the_stream(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        members = [Paho(port, f"member-{i}", protocol=V5) for i in range(2)]
        for member in members:
            await member.connect()
            await member.subscribe("$share/workers/jobs/#", qos=1)
        pub = Paho(port, "producer", protocol=V5)
        await pub.connect()
        for i in range(20):
            await pub.publish(f"jobs/{i}", str(i).encode(), qos=1)
        got: list[set[bytes]] = [set(), set()]
        while sum(len(s) for s in got) < 20:
            for i, member in enumerate(members):
                while not member.messages.empty():
                    got[i].add(member.messages.get_nowait().payload)
            await trio.sleep(0.01)
        assert got[0].isdisjoint(got[1])
        assert got[0] | got[1] == {str(i).encode() for i in range(20)}
        assert got[0]
        assert got[1]
        for client in (*members, pub):
            await client.close()


async def test_client_topic_alias(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        sub = Paho(port, "alias-sub", protocol=V5)
        pub = Paho(port, "alias-pub", protocol=V5)
        await sub.connect()
        await pub.connect()
        assert pub.connack_properties["TopicAliasMaximum"] == 10
        await sub.subscribe("very/long/topic/name", qos=1)
        await pub.publish("very/long/topic/name", b"first", qos=1, properties={"TopicAlias": 1})
        await pub.publish("", b"second", qos=1, properties={"TopicAlias": 1})
        got = [await sub.get(), await sub.get()]
        assert [(m.topic, m.payload) for m in got] == [
            ("very/long/topic/name", b"first"),
            ("very/long/topic/name", b"second"),
        ]
        await sub.close()
        await pub.close()


async def test_takeover_tells_the_old_client_why(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        old = Paho(port, "same-id", protocol=V5)
        await old.connect()
        new = Paho(port, "same-id", protocol=V5)
        await new.connect()
        await trio.to_thread.run_sync(old.disconnected.wait, 10.0)
        assert int(old.disconnect_reason.value) == 0x8E
        await new.close()
        await old.close()


async def test_no_matching_subscribers_reason_and_retained_delivery(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT):
        pub = Paho(port, "retainer", protocol=V5)
        await pub.connect()
        assert await pub.publish("state/lamp", b"on", qos=1, retain=True) == 0x10
        sub = Paho(port, "late", protocol=V5)
        await sub.connect()
        await sub.subscribe("state/#", qos=1)
        retained = await sub.get()
        assert (retained.topic, retained.payload, retained.retain) == ("state/lamp", b"on", True)
        await sub.close()
        await pub.close()
