"""MQTT 5 (paho-mqtt) and STOMP (stomp.py) clients on one gateway exchange messages.

Topics map as `a/b/c` <-> `/topic/a.b.c`, queues as `$queue/jobs` <-> `/queue/jobs`, MQTT 5
user properties <-> STOMP headers (gateway/listeners/mqtt_mapping.py, stomp_mapping.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT
from tests.listeners.test_http_wire import mqtt5_client
from tests.paho import Paho, properties_dict
from tests.stomp_client import Stomp, connected_stomp

V5 = paho.MQTTv5


@pytest.fixture
async def stomp_client(stomp_gateway: Gateway) -> AsyncIterator[Stomp]:
    async with connected_stomp(stomp_gateway.port("stomp")) as client:
        yield client


@pytest.fixture
async def mqtt_client(stomp_gateway: Gateway) -> AsyncIterator[Paho]:
    async with mqtt5_client(stomp_gateway.port("mqtt"), "cross-v5") as client:
        yield client


async def test_mqtt5_publish_reaches_stomp_topic_subscriber_with_headers(
    stomp_client: Stomp, mqtt_client: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await stomp_client.subscribe("/topic/a.b.c", id="abc")
        reason = await mqtt_client.publish(
            "a/b/c",
            b'{"n": 1}',
            qos=1,
            properties={
                "UserProperty": [("tenant", "acme"), ("trace-id", "t-1")],
                "ContentType": "application/json",
                "CorrelationData": b"corr-9",
            },
        )
        assert reason == 0
        message = await stomp_client.get()
        assert message.body == b'{"n": 1}'
        assert message.get("destination") == "/topic/a.b.c"
        assert message.get("subscription") == "abc"
        assert message.get("tenant") == "acme"
        assert message.get("trace-id") == "t-1"
        assert message.get("content-type") == "application/json"
        assert message.get("correlation-id") == "corr-9"


async def test_stomp_send_reaches_mqtt5_subscriber_with_user_properties(
    stomp_client: Stomp, mqtt_client: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt_client.subscribe("x/y", qos=1)
        await stomp_client.send(
            "/topic/x.y",
            "hello mqtt",
            {"tenant": "acme", "trace-id": "t-2", "content-type": "text/plain"},
        )
        message = await mqtt_client.get()
        assert (message.topic, message.payload) == ("x/y", b"hello mqtt")
        props = properties_dict(message.properties)
        user = props.get("UserProperty", [])
        assert ("tenant", "acme") in user
        assert ("trace-id", "t-2") in user
        assert props.get("ContentType") == "text/plain"


async def test_mqtt_publish_to_queue_reaches_stomp_queue_subscriber(
    stomp_client: Stomp, mqtt_client: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await stomp_client.subscribe("/queue/jobs", id="jobs", ack="client-individual")
        assert await mqtt_client.publish("$queue/jobs", b"job-1", qos=1) == 0
        message = await stomp_client.get()
        assert message.body == b"job-1"
        assert message.get("destination") == "/queue/jobs"
        assert message.get("persistent") == "true"  # QoS 1
        await stomp_client.ack(message)


async def test_stomp_send_to_queue_reaches_mqtt_queue_subscriber(
    stomp_client: Stomp, mqtt_client: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt_client.subscribe("$queue/jobs", qos=1)
        await stomp_client.send("/queue/jobs", "job-2", {"persistent": "true"})
        message = await mqtt_client.get()
        assert (message.topic, message.payload, message.qos) == ("$queue/jobs", b"job-2", 1)


async def test_mqtt5_request_is_answered_by_a_stomp_responder_via_reply_to(
    stomp_client: Stomp, mqtt_client: Paho
) -> None:
    """The response topic `replies/cross` reaches STOMP as reply-to `/topic/replies.cross`;
    a SEND there reaches the MQTT requester."""
    with trio.fail_after(NET_TIMEOUT):
        await stomp_client.subscribe("/queue/service", id="svc")
        await mqtt_client.subscribe("replies/cross", qos=1)
        await mqtt_client.publish(
            "$queue/service",
            b"ping",
            qos=1,
            properties={"ResponseTopic": "replies/cross", "CorrelationData": b"c-7"},
        )
        request = await stomp_client.get()
        assert request.get("reply-to") == "/topic/replies.cross"
        await stomp_client.send(
            request.get("reply-to"), "pong", {"correlation-id": request.get("correlation-id")}
        )
        reply = await mqtt_client.get()
        assert (reply.topic, reply.payload) == ("replies/cross", b"pong")
        assert properties_dict(reply.properties).get("CorrelationData") == b"c-7"


async def test_stomp_request_is_answered_by_an_mqtt5_responder_via_response_topic(
    stomp_client: Stomp, mqtt_client: Paho
) -> None:
    """A STOMP `/temp-queue/` reply-to reaches MQTT as the response topic `$queue/...`;
    the MQTT responder's publish there lands in the requester's temporary queue."""
    with trio.fail_after(NET_TIMEOUT):
        await mqtt_client.subscribe("$queue/service", qos=1)
        await stomp_client.send(
            "/queue/service", "ping", {"reply-to": "/temp-queue/r", "correlation-id": "c-8"}
        )
        request = await mqtt_client.get()
        props = properties_dict(request.properties)
        response_topic = props["ResponseTopic"]
        assert response_topic.startswith("$queue/$temp/")
        await mqtt_client.publish(
            response_topic, b"pong", qos=1, properties={"CorrelationData": b"c-8"}
        )
        reply = await stomp_client.get()
        assert reply.body == b"pong"
        assert reply.get("correlation-id") == "c-8"
