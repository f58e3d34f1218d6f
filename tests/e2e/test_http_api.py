"""The HTTP API as users meet it: curl publishes, batches and asks (request/reply), paho (MQTT 5)
and stomp.py clients on the other side (docs/http.md)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, make_http_config, running_gateway
from tests.listeners.test_http_wire import Reply, curl, mqtt5_client, wait_until
from tests.paho import Paho, properties_dict
from tests.stomp_client import Received, Stomp, connected_stomp


@pytest.fixture
async def mqtt5(http_gateway: Gateway) -> AsyncIterator[Paho]:
    async with mqtt5_client(http_gateway.port("mqtt"), "http-e2e") as client:
        yield client


@pytest.fixture
async def stomp(http_gateway: Gateway) -> AsyncIterator[Stomp]:
    async with connected_stomp(http_gateway.port("stomp")) as client:
        yield client


def port(gw: Gateway) -> int:
    return gw.port("http")


FIELDS = {
    "Content-Type": "application/json",
    "X-Msg-Site": "lyon",
    "X-Msg-Trace-Id": "t-42",
    "X-Msg-Priority": "7",
    "X-Msg-Correlation-Id": "corr-1",
    "X-Msg-Reply-To": "replies/1",
    "X-Msg-Expiry": "60",
}


# -- publishing -------------------------------------------------------------------------------


async def test_publish_to_topic_reaches_mqtt5_subscriber_with_every_field(
    http_gateway: Gateway, mqtt5: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("sensors/#", qos=2)
        reply = await curl(
            port(http_gateway), "POST", "/api/v1/topics/sensors/room1/temp", b'{"t": 21.5}', FIELDS
        )
        assert reply.status == 202
        body = reply.json()
        assert body["routed"] == 1
        assert int(body["id"]) > 0
        message = await mqtt5.get()
        assert (message.topic, message.payload, message.qos) == (
            "sensors/room1/temp",
            b'{"t": 21.5}',
            1,
        )
        props = properties_dict(message.properties)
        assert props["ContentType"] == "application/json"
        assert props["PayloadFormatIndicator"] == 1
        assert ("site", "lyon") in props["UserProperty"]
        assert ("trace-id", "t-42") in props["UserProperty"]
        assert props["CorrelationData"] == b"corr-1"
        assert props["ResponseTopic"] == "replies/1"
        assert 58 <= props["MessageExpiryInterval"] <= 60


async def test_priority_reaches_mqtt5_subscriber(http_gateway: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("prio", qos=1)
        headers = {"X-Msg-Priority": "7"}
        reply = await curl(port(http_gateway), "POST", "/api/v1/topics/prio", b"p", headers)
        assert reply.status == 202
        props = properties_dict((await mqtt5.get()).properties)
        assert ("priority", "7") in props.get("UserProperty", [])


async def test_publish_to_topic_reaches_stomp_subscriber_with_headers(
    http_gateway: Gateway, stomp: Stomp
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await stomp.subscribe("/topic/sensors.#")
        started = time.time()
        reply = await curl(
            port(http_gateway), "POST", "/api/v1/topics/sensors/room1/temp", b'{"t": 1}', FIELDS
        )
        assert reply.status == 202
        frame = await stomp.get()
        assert frame.body == b'{"t": 1}'
        assert frame.get("destination") == "/topic/sensors.room1.temp"
        assert frame.get("content-type") == "application/json"
        assert frame.get("site") == "lyon"
        assert frame.get("trace-id") == "t-42"
        assert frame.get("priority") == "7"
        assert frame.get("correlation-id") == "corr-1"
        assert frame.get("reply-to") == "/topic/replies.1"
        assert frame.get("persistent") == "true"
        expires = int(frame.get("expires") or 0) / 1000
        assert started + 59 <= expires <= time.time() + 61
        assert frame.get("message-id")


async def test_publish_to_queue_reaches_stomp_and_mqtt_consumers(
    http_gateway: Gateway, stomp: Stomp, mqtt5: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(port(http_gateway), "POST", "/api/v1/queues/work", b"job-1")
        assert reply.status == 202
        assert reply.json()["routed"] == 1  # held by the queue until someone consumes
        await stomp.subscribe("/queue/work")
        frame = await stomp.get()
        assert (frame.body, frame.get("destination")) == (b"job-1", "/queue/work")
        await stomp.unsubscribe("/queue/work")
        await mqtt5.subscribe("$queue/work", qos=1)
        # A queue name is one path segment; "/" is sent as %2F.
        reply = await curl(port(http_gateway), "POST", "/api/v1/queues/work", b"job-2")
        message = await mqtt5.get()
        assert (message.topic, message.payload) == ("$queue/work", b"job-2")
        await mqtt5.subscribe("$queue/a/b", qos=1)
        reply = await curl(port(http_gateway), "POST", "/api/v1/queues/a%2Fb", b"job-3")
        assert reply.status == 202
        message = await mqtt5.get()
        assert (message.topic, message.payload) == ("$queue/a/b", b"job-3")


async def test_utf8_header_values_arrive_as_sent(
    http_gateway: Gateway, mqtt5: Paho, stomp: Stomp
) -> None:
    """curl sends header values as UTF-8 bytes; they are not read as ISO-8859-1."""
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("utf8", qos=1)
        await stomp.subscribe("/topic/utf8")
        headers = {"X-Msg-City": "Z\u00fcrich", "X-Msg-Correlation-Id": "\u00e9t\u00e9"}
        reply = await curl(port(http_gateway), "POST", "/api/v1/topics/utf8", b"x", headers)
        assert reply.status == 202
        props = properties_dict((await mqtt5.get()).properties)
        assert props["UserProperty"] == [("city", "Z\u00fcrich")]
        assert props["CorrelationData"] == "\u00e9t\u00e9".encode()
        frame = await stomp.get()
        assert (frame.get("city"), frame.get("correlation-id")) == ("Z\u00fcrich", "\u00e9t\u00e9")


async def test_percent_encoded_topic_levels(http_gateway: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("caf\u00e9/#", qos=1)
        reply = await curl(port(http_gateway), "POST", "/api/v1/topics/caf%C3%A9/a%20b", b"x")
        assert reply.status == 202
        assert (await mqtt5.get()).topic == "caf\u00e9/a b"


async def test_ack_stored_is_201_once_committed_and_says_durable(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for target in ("/api/v1/queues/stored?ack=stored", "/api/v1/topics/stored?ack=stored"):
            reply = await curl(port(http_gateway), "POST", target, b"kept")
            assert reply.status == 201, target
            body = reply.json()
            assert body["stored"] is True
            assert body["durable"] is True  # the SQLite store, a persistent message
            assert set(body) == {"id", "routed", "stored", "durable"}


async def test_ack_stored_in_memory_mode_says_not_durable(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_http_config(tmp_path, gateway={"durability": "memory"})
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            reply = await curl(port(gw), "POST", "/api/v1/queues/stored?ack=stored", b"kept")
            assert reply.status == 201
            assert reply.json()["durable"] is False


async def test_persistent_false_is_qos_0(http_gateway: Gateway, mqtt5: Paho, stomp: Stomp) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("q0", qos=2)
        await stomp.subscribe("/topic/q0")
        headers = {"X-Msg-Persistent": "false"}
        reply = await curl(port(http_gateway), "POST", "/api/v1/topics/q0", b"light", headers)
        assert reply.status == 202
        assert (await mqtt5.get()).qos == 0
        assert (await stomp.get()).get("persistent") is None


async def test_retain_true_is_kept_for_later_subscribers(
    http_gateway: Gateway, mqtt5: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        headers = {"X-Msg-Retain": "true"}
        reply = await curl(port(http_gateway), "POST", "/api/v1/topics/kept/one", b"last", headers)
        assert reply.status == 202
        await mqtt5.subscribe("kept/#", qos=1)
        message = await mqtt5.get()
        assert (message.topic, message.payload, message.retain) == ("kept/one", b"last", True)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Msg-Priority", "10"),
        ("X-Msg-Priority", "high"),
        ("X-Msg-Expiry", "-1"),
        ("X-Msg-Expiry", "soon"),
        ("X-Msg-Persistent", "maybe"),
        ("X-Msg-Retain", "2"),
    ],
)
async def test_bad_message_header_is_400(http_gateway: Gateway, header: str, value: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for target in ("/api/v1/topics/a", "/api/v1/queues/q", "/api/v1/request/a"):
            reply = await curl(port(http_gateway), "POST", target, b"x", {header: value})
            assert (reply.status, reply.error) == (400, "bad_header"), target
            assert header in reply.json()["message"]


@pytest.mark.parametrize(
    ("target", "status", "error"),
    [
        ("/api/v1/topics/a/+/b", 400, "bad_destination"),
        ("/api/v1/topics/a/%23", 400, "bad_destination"),
        ("/api/v1/topics/a%00b", 400, "bad_destination"),
        ("/api/v1/queues/%24sys", 400, "bad_destination"),
        ("/api/v1/topics/%24SYS/broker/x", 403, "reserved_topic"),
        ("/api/v1/topics/$internal", 403, "reserved_topic"),
        ("/api/v1/request/a/+", 400, "bad_destination"),
        ("/api/v1/request/%24SYS/x", 403, "reserved_topic"),
    ],
)
async def test_bad_destinations(
    http_gateway: Gateway, target: str, status: int, error: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(port(http_gateway), "POST", target, b"x")
        assert (reply.status, reply.error) == (status, error)


async def test_full_queue_refuses_with_503_and_retry_after(http_gateway: Gateway) -> None:
    """Queue "small" holds one message and refuses the rest (overflow = "reject-publish")."""
    with trio.fail_after(NET_TIMEOUT):
        assert (await curl(port(http_gateway), "POST", "/api/v1/queues/small", b"1")).status == 202
        reply = await curl(port(http_gateway), "POST", "/api/v1/queues/small", b"2")
        assert (reply.status, reply.error) == (503, "refused")
        assert reply.header("retry-after") == "1"
        assert http_gateway.broker.queue_stats("small").depth == 1


async def test_topic_refused_by_a_full_subscription_queue_is_503(http_gateway: Gateway) -> None:
    """A topic's subscriber queue may refuse too: here a durable subscription fed into the
    reject-publish queue "small"."""
    http_gateway.broker.durable_subscription("small", "full/#")
    with trio.fail_after(NET_TIMEOUT):
        assert (await curl(port(http_gateway), "POST", "/api/v1/topics/full/a", b"1")).status == 202
        reply = await curl(port(http_gateway), "POST", "/api/v1/topics/full/a", b"2")
        assert (reply.status, reply.error) == (503, "refused")
        assert reply.header("retry-after") == "1"


async def test_unknown_queue_is_404_without_auto_create(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = make_http_config(tmp_path, gateway={"auto_create_queues": False})
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            for target in ("/api/v1/queues/nope", "/api/v1/request/%24queue%2Fnope"):
                reply = await curl(gw.port("http"), "POST", target, b"x")
                assert (reply.status, reply.error) == (404, "unknown_queue"), target
            batch = b'[{"queue": "jobs", "payload": "1"}, {"queue": "nope", "payload": "2"}]'
            reply = await post_batch(gw, batch, "application/json")
            assert (reply.status, reply.error) == (404, "unknown_queue")
            reply = await curl(gw.port("http"), "POST", "/api/v1/queues/jobs", b"x")
            assert reply.status == 202  # configured queues exist
            assert gw.broker.queue_stats("jobs").depth == 1  # the batch published nothing
            assert "nope" not in gw.broker.queues


# -- batch ------------------------------------------------------------------------------------


async def post_batch(gw: Gateway, body: bytes, content_type: str) -> Reply:
    headers = {"Content-Type": content_type}
    return await curl(port(gw), "POST", "/api/v1/messages", body, headers)


BATCH = [
    {"topic": "b/1", "payload": "one", "content_type": "text/plain", "headers": {"k": "v"}},
    {"queue": "bq", "payload": "two", "priority": 9},
    {"topic": "b/2", "payload_base64": "/w==", "correlation_id": "c", "reply_to": "r/1"},
    {"topic": "b/3", "payload": "four", "persistent": False, "expiry": 30},
]


@pytest.mark.parametrize("form", ["json", "ndjson"])
async def test_batch_delivers_every_message_in_order(
    http_gateway: Gateway, mqtt5: Paho, form: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("b/#", qos=1)
        await mqtt5.subscribe("$queue/bq", qos=1)
        if form == "json":
            reply = await post_batch(http_gateway, json.dumps(BATCH).encode(), "application/json")
        else:
            lines = "\n".join(json.dumps(item) for item in BATCH) + "\n\n"
            reply = await post_batch(http_gateway, lines.encode(), "application/x-ndjson")
        assert reply.status == 202, reply
        body = reply.json()
        assert (body["accepted"], body["refused"]) == (4, 0)
        assert [r["status"] for r in body["results"]] == ["accepted"] * 4
        ids = [int(r["id"]) for r in body["results"]]
        assert ids == sorted(ids)
        got = [await mqtt5.get() for _ in range(4)]
        assert [(m.topic, m.payload) for m in got] == [
            ("b/1", b"one"),
            ("$queue/bq", b"two"),
            ("b/2", b"\xff"),
            ("b/3", b"four"),
        ]
        one, _, two, four = (properties_dict(m.properties) for m in got)
        assert one["ContentType"] == "text/plain"
        assert one["UserProperty"] == [("k", "v")]
        assert (two["CorrelationData"], two["ResponseTopic"]) == (b"c", "r/1")
        assert got[3].qos == 0
        assert 28 <= four["MessageExpiryInterval"] <= 30


async def test_batch_of_other_content_types_is_415(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for content_type in ("text/plain", "application/xml", ""):
            reply = await post_batch(http_gateway, b"[]", content_type)
            assert (reply.status, reply.error) == (415, "unsupported_media_type"), content_type


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'[{"topic": "ok", "payload": "1"}, {"payload": "no destination"}]', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "t", "queue": "q"}]', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "t", "priority": 12}]', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "t", "expiry": -1}]', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "t", "payload_base64": "!!"}]', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "t", "unknown": 1}]', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "t", "payload": 5}]', "bad_batch"),
        (b'{"topic": "not an array"}', "bad_batch"),
        (b'[{"topic": "ok"}, {"topic": "a/#"}]', "bad_destination"),
        (b'[{"topic": "ok"}, {"topic": "$SYS/x"}]', "reserved_topic"),
        (b'[{"topic": "ok"}, ', "bad_json"),
    ],
)
async def test_bad_batch_item_is_400_and_nothing_is_published(
    http_gateway: Gateway, mqtt5: Paho, body: bytes, error: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("#", qos=1)
        reply = await post_batch(http_gateway, body, "application/json")
        status = 403 if error == "reserved_topic" else 400
        assert (reply.status, reply.error) == (status, error)
        await mqtt5.publish("barrier", b"", qos=1)
        assert (await mqtt5.get()).topic == "barrier"  # nothing came before it


async def test_bad_ndjson_line_is_400(http_gateway: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("a", qos=1)
        body = b'{"topic": "a", "payload": "1"}\nnot json\n'
        reply = await post_batch(http_gateway, body, "application/x-ndjson")
        assert (reply.status, reply.error) == (400, "bad_json")
        await mqtt5.publish("a", b"barrier", qos=1)
        assert (await mqtt5.get()).payload == b"barrier"  # nothing came before it


async def test_batch_partly_refused_is_207_then_503(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        items = [{"queue": "small", "payload": "1"}, {"queue": "small", "payload": "2"}]
        reply = await post_batch(http_gateway, json.dumps(items).encode(), "application/json")
        assert reply.status == 207
        body = reply.json()
        assert (body["accepted"], body["refused"]) == (1, 1)
        assert [r["status"] for r in body["results"]] == ["accepted", "refused"]
        assert body["results"][1]["reason"] == "queue-full"
        # Every message refused: 503, an error body with the results, and Retry-After.
        reply = await post_batch(http_gateway, json.dumps(items).encode(), "application/json")
        assert (reply.status, reply.error) == (503, "refused")
        assert reply.header("retry-after") == "1"
        body = reply.json()
        assert (body["accepted"], body["refused"]) == (0, 2)
        assert [r["status"] for r in body["results"]] == ["refused", "refused"]


# -- request/reply ----------------------------------------------------------------------------


async def ask(gw: Gateway, destination: str, body: bytes, **headers: str) -> Reply:
    return await curl(port(gw), "POST", f"/api/v1/request/{destination}", body, headers)


async def test_request_answered_by_an_mqtt5_responder(http_gateway: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("svc/time", qos=1)
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:

            async def requester() -> None:
                replies.append(
                    await ask(
                        http_gateway,
                        "svc/time?timeout=10",
                        b"what time?",
                        **{"Content-Type": "text/plain", "X-Msg-Correlation-Id": "mine"},
                    )
                )

            nursery.start_soon(requester)
            request = await mqtt5.get()
            assert request.payload == b"what time?"
            props = properties_dict(request.properties)
            assert props["CorrelationData"] == b"mine"
            assert props["ResponseTopic"].startswith("$queue/$temp/")
            await mqtt5.publish(
                props["ResponseTopic"],
                b'{"now": 1}',
                qos=1,
                properties={
                    "CorrelationData": props["CorrelationData"],
                    "ContentType": "application/json",
                    "UserProperty": [("served-by", "mqtt"), ("priority", "8")],
                },
            )
        (reply,) = replies
        assert reply.status == 200
        assert reply.body == b'{"now": 1}'
        assert reply.header("content-type") == "application/json"
        assert reply.header("x-msg-correlation-id") == "mine"
        assert reply.header("x-msg-served-by") == "mqtt"
        assert reply.header("x-msg-priority") == "8"
        assert (reply.header("x-msg-destination") or "").startswith("$queue/$temp/")
        assert reply.header("x-msg-message-id")
        # The exchange's temporary session and queue are gone.
        await wait_until(lambda: not _exchanges(http_gateway))


def _exchanges(gw: Gateway) -> list[str]:
    return [
        name
        for name in [*gw.broker.sessions, *gw.broker.queues]
        if name.startswith(("$http/request/", "$temp/$http/request/"))
    ]


async def test_request_answered_by_a_stomp_responder(http_gateway: Gateway, stomp: Stomp) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await stomp.subscribe("/topic/svc.echo")
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:

            async def requester() -> None:
                replies.append(await ask(http_gateway, "svc/echo", b"echo me"))

            nursery.start_soon(requester)
            request: Received = await stomp.get()
            assert request.body == b"echo me"
            reply_to = request.get("reply-to")
            assert reply_to is not None
            assert reply_to.startswith("/queue/$temp/")
            correlation = request.get("correlation-id")
            assert correlation
            await stomp.send(
                reply_to,
                b"echo me back",
                {
                    "correlation-id": correlation,
                    "content-type": "text/plain",
                    "served-by": "stomp",
                },
            )
        (reply,) = replies
        assert reply.status == 200
        assert reply.body == b"echo me back"
        assert reply.header("content-type") == "text/plain"
        assert reply.header("x-msg-correlation-id") == correlation
        assert reply.header("x-msg-served-by") == "stomp"


async def test_request_to_a_queue_destination(
    http_gateway: Gateway, stomp: Stomp, mqtt5: Paho
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await stomp.subscribe("/queue/rpc", ack="client-individual")
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:

            async def requester() -> None:
                replies.append(await ask(http_gateway, "%24queue%2Frpc", b"q?"))

            nursery.start_soon(requester)
            request = await stomp.get()
            assert request.get("destination") == "/queue/rpc"
            await stomp.ack(request)
            await stomp.send(request.get("reply-to") or "", b"q!")
        (reply,) = replies
        assert (reply.status, reply.body) == (200, b"q!")
        assert reply.header("content-type") == "application/octet-stream"
        # The same with the "$queue/" prefix written out, answered over MQTT.
        await stomp.unsubscribe("/queue/rpc")
        await mqtt5.subscribe("$queue/rpc", qos=1)
        async with trio.open_nursery() as nursery:

            async def requester2() -> None:
                replies.append(await ask(http_gateway, "$queue/rpc", b"again?"))

            nursery.start_soon(requester2)
            request2 = await mqtt5.get()
            response_topic = properties_dict(request2.properties)["ResponseTopic"]
            await mqtt5.publish(response_topic, b"again!", qos=1)
        assert (replies[1].status, replies[1].body) == (200, b"again!")


async def test_request_with_no_responder_is_503(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for destination in ("nobody/home", "%24queue%2Fidle"):
            reply = await ask(http_gateway, destination, b"anyone?")
            assert (reply.status, reply.error) == (503, "no_responders"), destination
        # The request was not left behind in the queue for a later consumer.
        assert "idle" not in http_gateway.broker.queues or not (
            http_gateway.broker.queue_stats("idle").depth
        )
        assert not _exchanges(http_gateway)


async def test_request_without_a_reply_is_504(http_gateway: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        await mqtt5.subscribe("svc/silent", qos=1)
        started = trio.current_time()
        reply = await ask(http_gateway, "svc/silent?timeout=0.5", b"hello?")
        assert (reply.status, reply.error) == (504, "timeout")
        assert 0.5 <= trio.current_time() - started < 5
        assert (await mqtt5.get()).payload == b"hello?"
        assert not _exchanges(http_gateway)


async def _timed_out_reply_topic(gw: Gateway, responder: Paho) -> str:
    """Ask "svc/slow", let it time out (504); the request's response topic."""
    await responder.subscribe("svc/slow", qos=1)
    reply = await ask(gw, "svc/slow?timeout=0.2", b"hurry")
    assert reply.status == 504
    request = await responder.get()
    response_topic: str = properties_dict(request.properties)["ResponseTopic"]
    return response_topic


async def test_a_late_reply_over_http_is_404(http_gateway: Gateway, mqtt5: Paho) -> None:
    """After a 504 the exchange's temporary queue is gone: publishing to it over HTTP is 404
    and does not create it again."""
    with trio.fail_after(NET_TIMEOUT):
        temp = (await _timed_out_reply_topic(http_gateway, mqtt5)).removeprefix("$queue/")
        encoded = temp.replace("$", "%24").replace("/", "%2F")
        reply = await curl(port(http_gateway), "POST", f"/api/v1/queues/{encoded}", b"late")
        assert (reply.status, reply.error) == (404, "unknown_queue")
        assert temp not in http_gateway.broker.queues


async def test_a_late_mqtt_reply_leaves_no_queue_behind(http_gateway: Gateway, mqtt5: Paho) -> None:
    with trio.fail_after(NET_TIMEOUT):
        response_topic = await _timed_out_reply_topic(http_gateway, mqtt5)
        await mqtt5.publish(response_topic, b"late", qos=1)
        assert response_topic.removeprefix("$queue/") not in http_gateway.broker.queues


@pytest.mark.parametrize("query", ["?timeout=0", "?timeout=301", "?timeout=soon"])
async def test_bad_request_timeout_is_400(http_gateway: Gateway, query: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await ask(http_gateway, f"svc{query}", b"x")
        assert (reply.status, reply.error) == (400, "bad_parameter")


async def test_full_request_queue_is_503_refused(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        # "small" holds one message. An HTTP puller is its consumer, but takes nothing
        # unless it polls: the queue stays full.
        reply = await curl(port(http_gateway), "GET", "/api/v1/queues/small/messages")
        assert reply.json() == {"messages": []}
        assert (await curl(port(http_gateway), "POST", "/api/v1/queues/small", b"1")).status == 202
        reply = await ask(http_gateway, "%24queue%2Fsmall", b"2")
        assert (reply.status, reply.error) == (503, "refused")
        assert reply.header("retry-after") == "1"
