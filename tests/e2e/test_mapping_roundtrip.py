"""Cross-protocol round trips keep every field docs/mapping.md's table says they keep.

For each ordered pair of MQTT 3.1.1, MQTT 5, STOMP 1.2 and HTTP (publisher -> subscriber;
an HTTP subscriber reads Server-Sent Events from a topic and pulls from a queue), one
message carrying every field the publisher's protocol can express crosses the gateway, and
the subscriber must see exactly what the table promises: ``expected`` is the table written
as code (SENDS x SHOWS), and ``Seen`` is what each subscriber shows, read back into one form.

Two cases per pair: a topic with a binary (non-UTF-8) payload and a topic reply-to, and a
queue with a UTF-8 text payload and a queue reply-to. Request/reply across protocols is
tested in test_cross_protocol.py (MQTT 5 <-> STOMP) and test_http_api.py (HTTP requesters).
The tests at the end hold the rules for what a protocol cannot carry (docs/mapping.md,
"Headers a protocol cannot carry").
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT
from tests.listeners.test_http_sse import SSEStream
from tests.listeners.test_http_wire import curl
from tests.paho import Paho, properties_dict
from tests.stomp_client import Stomp

PROTOCOLS = ("mqtt311", "mqtt5", "stomp", "http")
TOPIC = "map/x"
QUEUE = "mapq"
HEADERS = (("tenant", "acme"), ("Trace-Id", "t-1"))
PRIORITY = 7
CORRELATION = "corr-7"
EXPIRY = 60
# What each publisher publishes with: MQTT at QoS 2, STOMP `persistent:true`, HTTP by default.
PUBLISHED_QOS = {"mqtt311": 2, "mqtt5": 2, "stomp": 1, "http": 1}
# The frame headers of a STOMP MESSAGE that are not the message's own headers.
STOMP_FIELDS = frozenset(
    {
        "subscription",
        "message-id",
        "ack",
        "redelivered",
        "x-delivery-count",
        "destination",
        "persistent",
        "priority",
        "expires",
        "correlation-id",
        "reply-to",
        "content-type",
        "content-length",
    }
)


@dataclass(frozen=True)
class Case:
    kind: str  # "topic" or "queue"
    payload: bytes
    content_type: str
    text: bool  # the content type marks the payload as UTF-8 text
    reply_to: str  # in the neutral form: a topic name or $queue/NAME


CASES = {
    "topic": Case(
        "topic", b"\x00\xffbin\xfe\r\n", "application/octet-stream", False, "replies/map"
    ),
    "queue": Case(
        "queue", "héllo ✓ wörld".encode(), "text/plain; charset=utf-8", True, "$queue/rq"
    ),
}

# The table (docs/mapping.md) as sets: which fields a protocol can set when it publishes...
_FIELDS = ("headers", "priority", "content_type", "text", "correlation_id", "reply_to", "expiry")
SENDS = {
    "mqtt311": frozenset({"retain"}),
    "mqtt5": frozenset({"retain", *_FIELDS}),
    "stomp": frozenset(_FIELDS),  # no retain
    "http": frozenset({"retain", *_FIELDS}),
}
# ... and which it shows a subscriber. MQTT shows persistence as the delivery QoS, STOMP and
# HTTP as a flag; STOMP and the JSON forms show text only through the content type; STOMP
# has no retain flag.
SHOWS = {
    "mqtt311": frozenset({"qos", "retain"}),
    "mqtt5": frozenset({"qos", "retain", *_FIELDS}),
    "stomp": frozenset({"persistent", *_FIELDS} - {"text"}),
    "http": frozenset({"persistent", "retain", *_FIELDS} - {"text"}),
}


@dataclass
class Seen:
    """A received message in one form; None where the subscriber's protocol cannot show it.

    ``headers`` are the message's own headers with a `priority` one taken out (MQTT 5 carries
    the priority as a user property; each reader checks it against the priority shown)."""

    payload: bytes
    content_type: str | None = None
    text: bool | None = None
    headers: dict[str, str] | None = None
    priority: int | None = None
    correlation_id: bytes | None = None
    reply_to: str | None = None
    expires: bool | None = None
    persistent: bool | None = None
    qos: int | None = None
    retain: bool | None = None
    expires_in: float | None = field(default=None, compare=False)
    message_id: str | None = field(default=None, compare=False)
    timestamp: float | None = field(default=None, compare=False)


def address(protocol: str, neutral: str) -> str:
    """A destination or reply-to in the protocol's own form."""
    if protocol != "stomp":
        return neutral
    if neutral.startswith("$queue/"):
        return "/queue/" + neutral[len("$queue/") :]
    return "/topic/" + neutral.replace("/", ".")


def expected(pub: str, sub: str, case: Case) -> Seen:
    sends, shows = SENDS[pub], SHOWS[sub]

    def carried(name: str, value: Any, default: Any) -> Any:
        if name not in shows:
            return None
        return value if name in sends else default

    # HTTP header names are case-insensitive: the gateway takes them in lower case.
    headers = {k.lower() if pub == "http" else k: v for k, v in HEADERS}
    # A live delivery to MQTT 3.1.1 clears RETAIN (MQTT-3.3.1-9); the MQTT 5 subscriber asks
    # for retain-as-published; the JSON form says what the publisher said. Queues never retain.
    retain = case.kind == "topic" and "retain" in sends and sub != "mqtt311"
    return Seen(
        payload=case.payload,
        content_type=carried("content_type", case.content_type, None),
        text=carried("text", case.text, False),
        headers=carried("headers", headers, {}),
        priority=carried("priority", PRIORITY, 4),
        correlation_id=carried("correlation_id", CORRELATION.encode(), None),
        reply_to=carried("reply_to", address(sub, case.reply_to), None),
        expires=carried("expiry", True, False),
        persistent=True if "persistent" in shows else None,
        qos=PUBLISHED_QOS[pub] if "qos" in shows else None,  # subscribed at QoS 2
        retain=retain if "retain" in shows else None,
    )


# -- publishers ------------------------------------------------------------------------


async def publish(
    pub: str, gw: Gateway, case: Case, stack: contextlib.AsyncExitStack
) -> str | None:
    """Publish the case's message with every field ``pub`` can express; HTTP returns its id."""
    neutral = TOPIC if case.kind == "topic" else "$queue/" + QUEUE
    if pub in ("mqtt311", "mqtt5"):
        v5 = pub == "mqtt5"
        client = await mqtt_client(gw, f"pub-{pub}", stack, v5=v5)
        props: dict[str, Any] | None = None
        if v5:
            props = {
                "UserProperty": [*HEADERS, ("priority", str(PRIORITY))],
                "ContentType": case.content_type,
                "CorrelationData": CORRELATION.encode(),
                "ResponseTopic": case.reply_to,
                "MessageExpiryInterval": EXPIRY,
            }
            if case.text:
                props["PayloadFormatIndicator"] = 1
        await client.publish(neutral, case.payload, qos=2, retain=True, properties=props)
        return None
    if pub == "stomp":
        stomp = await stomp_client(gw, stack)
        await stomp.send(
            address("stomp", neutral),
            case.payload,
            {
                **dict(HEADERS),
                "persistent": "true",
                "priority": str(PRIORITY),
                "expires": str(int((time.time() + EXPIRY) * 1000)),
                "correlation-id": CORRELATION,
                "reply-to": address("stomp", case.reply_to),
                "content-type": case.content_type,
            },
        )
        return None
    target = f"/api/v1/topics/{TOPIC}" if case.kind == "topic" else f"/api/v1/queues/{QUEUE}"
    reply = await curl(
        gw.port("http"),
        "POST",
        target,
        case.payload,
        [
            *[(f"X-Msg-{name}", value) for name, value in HEADERS],
            ("Content-Type", case.content_type),
            ("X-Msg-Priority", str(PRIORITY)),
            ("X-Msg-Expiry", str(EXPIRY)),
            ("X-Msg-Correlation-Id", CORRELATION),
            ("X-Msg-Reply-To", case.reply_to),
            ("X-Msg-Retain", "true"),
        ],
    )
    assert reply.status == 202, reply
    return str(reply.json()["id"])


async def mqtt_client(
    gw: Gateway, client_id: str, stack: contextlib.AsyncExitStack, *, v5: bool
) -> Paho:
    client = Paho(gw.port("mqtt"), client_id, protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
    await client.connect()
    stack.push_async_callback(client.close)
    return client


async def stomp_client(
    gw: Gateway, stack: contextlib.AsyncExitStack, version: str = "1.2"
) -> Stomp:
    client = Stomp(gw.port("stomp"), version)
    await client.connect()
    stack.push_async_callback(client.close)
    return client


# -- subscribers ----------------------------------------------------------------------

Receive = Callable[[], Awaitable[Seen]]


async def subscribe(
    sub: str, gw: Gateway, case: Case, stack: contextlib.AsyncExitStack, name: str = "sub"
) -> Receive:
    """Subscribe with ``sub`` to the case's destination; returns how to read the next message."""
    neutral = TOPIC if case.kind == "topic" else "$queue/" + QUEUE
    if sub in ("mqtt311", "mqtt5"):
        v5 = sub == "mqtt5"
        client = await mqtt_client(gw, f"{name}-{sub}", stack, v5=v5)
        await client.subscribe(neutral, qos=2, retain_as_published=v5)

        async def receive_mqtt() -> Seen:
            message = await client.get()
            assert message.topic == neutral
            assert not message.dup
            retain = bool(message.retain)
            seen = Seen(payload=bytes(message.payload), qos=message.qos, retain=retain)
            return read_mqtt5(seen, properties_dict(message.properties)) if v5 else seen

        return receive_mqtt
    if sub == "stomp":
        stomp = await stomp_client(gw, stack)
        ack = "auto" if case.kind == "topic" else "client-individual"
        await stomp.subscribe(address("stomp", neutral), id="s", ack=ack)

        async def receive_stomp() -> Seen:
            frame = await stomp.get()
            assert frame.get("destination") == address("stomp", neutral)
            assert (frame.get("redelivered"), frame.get("x-delivery-count")) == ("false", "1")
            if ack != "auto":
                await stomp.ack(frame)
            return read_stomp(frame.headers, frame.body)

        return receive_stomp
    if case.kind == "queue":

        async def pull() -> Seen:
            port = gw.port("http")
            reply = await curl(port, "GET", f"/api/v1/queues/{QUEUE}/messages?wait=5")
            (message,) = reply.json()["messages"]
            assert (message["redelivered"], message["delivery_count"]) == (False, 1)
            acked = await curl(port, "POST", f"/api/v1/queues/{QUEUE}/ack", ids(message))
            assert acked.json() == {"acked": 1, "unknown": []}
            return read_json(message, neutral)

        return pull
    sse, status, _ = await SSEStream.open(gw.port("http"), TOPIC.replace("/", "%2F"))
    stack.push_async_callback(sse.aclose)
    assert status == 200
    assert (await sse.next()).comment == f"subscribed to {TOPIC}"

    async def receive_sse() -> Seen:
        event = await sse.message()
        assert event.fields["event"] == "message"
        seen = read_json(event.data, neutral)
        assert event.fields["id"] == seen.message_id
        return seen

    return receive_sse


def ids(message: dict[str, Any]) -> bytes:
    return json.dumps({"ids": [message["id"]]}).encode()


def read_mqtt5(seen: Seen, props: dict[str, Any]) -> Seen:
    user = list(props.get("UserProperty", []))
    priorities = [value for name, value in user if name == "priority"]
    assert len(priorities) <= 1, user  # the priority travels once, never twice
    interval = props.get("MessageExpiryInterval")
    seen.content_type = props.get("ContentType")
    seen.text = props.get("PayloadFormatIndicator") == 1
    seen.headers = {name: value for name, value in user if name != "priority"}
    seen.priority = int(priorities[0]) if priorities else 4
    seen.correlation_id = props.get("CorrelationData")
    seen.reply_to = props.get("ResponseTopic")
    seen.expires = interval is not None
    seen.expires_in = interval
    return seen


def read_stomp(headers: dict[str, str], body: bytes) -> Seen:
    correlation = headers.get("correlation-id")
    expires = headers.get("expires")
    return Seen(
        payload=body,
        content_type=headers.get("content-type"),
        # An MQTT 5 `priority` user property is sent as a plain header too: the first counts.
        headers={k: v for k, v in headers.items() if k not in STOMP_FIELDS},
        priority=int(headers.get("priority", "4")),
        correlation_id=None if correlation is None else correlation.encode(),
        reply_to=headers.get("reply-to"),
        expires=expires is not None,
        expires_in=None if expires is None else int(expires) / 1000 - time.time(),
        persistent=headers.get("persistent") == "true",
    )


def read_json(message: dict[str, Any], neutral: str) -> Seen:
    """The JSON form of SSE events and pulled messages."""
    assert message["destination"] == neutral
    if message.get("encoding") == "base64":
        payload = base64.b64decode(message["payload"])
    else:
        assert "encoding" not in message
        payload = message["payload"].encode()
    headers = dict(message.get("headers", {}))
    if "priority" in headers:  # an MQTT 5 priority user property, also a header
        assert headers.pop("priority") == str(message["priority"])
    correlation = message.get("correlation_id")
    expires_at = message.get("expires_at")
    return Seen(
        payload=payload,
        content_type=message.get("content_type"),
        headers=headers,
        priority=message["priority"],
        correlation_id=None if correlation is None else correlation.encode(),
        reply_to=message.get("reply_to"),
        expires=expires_at is not None,
        expires_in=None if expires_at is None else expires_at - time.time(),
        persistent=message["persistent"],
        retain=message.get("retain", False),
        message_id=message["message_id"],
        timestamp=message["timestamp"],
    )


# -- the round trips -------------------------------------------------------------------


PAIRS = [(pub, sub, kind) for pub in PROTOCOLS for sub in PROTOCOLS for kind in CASES]


@pytest.mark.parametrize(("pub", "sub", "kind"), PAIRS, ids=[f"{p}->{s}-{k}" for p, s, k in PAIRS])
async def test_round_trip_keeps_what_the_table_says(
    http_gateway: Gateway, pub: str, sub: str, kind: str
) -> None:
    case = CASES[kind]
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            receive = await subscribe(sub, http_gateway, case, stack)
            before = time.time()
            published_id = await publish(pub, http_gateway, case, stack)
            seen = await receive()
            assert seen == expected(pub, sub, case)
            if seen.expires:
                assert seen.expires_in is not None
                assert EXPIRY - 5 < seen.expires_in <= EXPIRY + 0.5
            if sub == "http":
                assert seen.message_id is not None
                assert seen.message_id.isdigit()
                assert seen.timestamp is not None
                assert before - 0.01 <= seen.timestamp <= time.time()
                if published_id is not None:
                    assert seen.message_id == published_id
            if kind == "topic" and "retain" in SENDS[pub] and sub != "http":
                # A later subscriber gets the retained copy: MQTT with RETAIN set, STOMP
                # without a header saying so (SSE never replays retained messages).
                late = await (await subscribe(sub, http_gateway, case, stack, "late"))()
                assert late.payload == case.payload
                assert late.retain is (None if sub == "stomp" else True)


@pytest.mark.parametrize("pub", PROTOCOLS)
async def test_a_non_persistent_message_stays_non_persistent(
    http_gateway: Gateway, pub: str
) -> None:
    """QoS 0, no `persistent` header, `X-Msg-Persistent: false`: each is the others."""
    gw = http_gateway
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            mqtt = await mqtt_client(gw, "np-sub", stack, v5=True)
            await mqtt.subscribe(TOPIC, qos=2)
            stomp = await stomp_client(gw, stack)
            await stomp.subscribe("/topic/map.x", id="np")
            sse, _, _ = await SSEStream.open(gw.port("http"), "map%2Fx")
            stack.push_async_callback(sse.aclose)
            await sse.next()
            if pub in ("mqtt311", "mqtt5"):
                client = await mqtt_client(gw, "np-pub", stack, v5=pub == "mqtt5")
                await client.publish(TOPIC, b"np", qos=0)
            elif pub == "stomp":
                sender = await stomp_client(gw, stack)
                await sender.send("/topic/map.x", b"np", {"persistent": "false"})
            else:
                reply = await curl(
                    gw.port("http"),
                    "POST",
                    f"/api/v1/topics/{TOPIC}",
                    b"np",
                    {"X-Msg-Persistent": "false", "Content-Type": "text/plain"},
                )
                assert reply.status == 202
            message = await mqtt.get()
            assert (message.payload, message.qos) == (b"np", 0)
            frame = await stomp.get()
            assert frame.body == b"np"
            assert frame.get("persistent") is None
            event = (await sse.message()).data
            assert event["persistent"] is False


@pytest.mark.parametrize("consumer", ["stomp", "http", "mqtt5"])
async def test_redelivery_indicators(http_gateway: Gateway, consumer: str) -> None:
    """A message released by an HTTP puller goes to the next consumer as a redelivery:
    STOMP `redelivered:true` + `x-delivery-count:2`, HTTP `redelivered` + `delivery_count`;
    MQTT has no such field for a message it never had (DUP only marks its own resends)."""
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            assert (await curl(port, "POST", "/api/v1/queues/redo", b"again")).status == 202
            first = await curl(port, "GET", "/api/v1/queues/redo/messages")
            (message,) = first.json()["messages"]
            assert (message["redelivered"], message["delivery_count"]) == (False, 1)
            released = await curl(port, "POST", "/api/v1/queues/redo/release", ids(message))
            assert released.json()["released"] == 1
            if consumer == "stomp":
                stomp = await stomp_client(http_gateway, stack)
                await stomp.subscribe("/queue/redo", id="r", ack="client-individual")
                frame = await stomp.get()
                assert frame.body == b"again"
                assert (frame.get("redelivered"), frame.get("x-delivery-count")) == ("true", "2")
                await stomp.ack(frame)
            elif consumer == "http":
                again = await curl(port, "GET", "/api/v1/queues/redo/messages")
                (message,) = again.json()["messages"]
                assert message["payload"] == "again"
                assert (message["redelivered"], message["delivery_count"]) == (True, 2)
            else:
                mqtt = await mqtt_client(http_gateway, "redo", stack, v5=True)
                await mqtt.subscribe("$queue/redo", qos=1)
                got = await mqtt.get()
                assert (got.payload, got.dup) == (b"again", False)


# -- known mapping bugs ----------------------------------------------------------------

UNENCODABLE = {
    "mqtt5-content-length": (
        "mqtt5",
        "1.2",
        "an MQTT 5 user property named content-length (value not the payload length) is "
        "copied into the STOMP MESSAGE; encode_frame raises ValueError inside the STOMP "
        "subscriber's deliver(), which crashes the MQTT publisher's connection (conn.crashed) "
        "and aborts the fan-out, so the STOMP subscriber gets nothing",
    ),
    "http-content-length": (
        "http",
        "1.2",
        "X-Msg-Content-Length becomes header content-length, copied into the STOMP MESSAGE; "
        "encode_frame raises ValueError in the STOMP subscriber's deliver(), the HTTP "
        "publisher's connection crashes (empty reply, no 202) and nothing is delivered",
    ),
    "mqtt5-lf-to-stomp-1.0": (
        "mqtt5",
        "1.0",
        "a user property value holding LF cannot be written in STOMP 1.0 (no escapes); "
        "encode_frame raises ValueError in the STOMP 1.0 subscriber's deliver(), crashing "
        "the MQTT publisher's connection instead of leaving that header out",
    ),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(name, id=name) for name in UNENCODABLE],
)
async def test_a_header_stomp_cannot_carry_does_not_break_the_publisher(
    http_gateway: Gateway, case: str
) -> None:
    pub, version, _ = UNENCODABLE[case]
    gw = http_gateway
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            stomp = await stomp_client(gw, stack, version)
            await stomp.subscribe("/topic/map.x", id="u")
            if pub == "mqtt5":
                client = await mqtt_client(gw, "u-pub", stack, v5=True)
                name, value = ("k", "a\nb") if version == "1.0" else ("content-length", "1")
                props = {"UserProperty": [(name, value)]}
                await client.publish(TOPIC, b"abc", qos=0, properties=props)
            else:
                headers = {"X-Msg-Content-Length": "1", "Content-Type": "text/plain"}
                reply = await curl(
                    gw.port("http"), "POST", f"/api/v1/topics/{TOPIC}", b"abc", headers
                )
                assert reply.status == 202
            frame = await stomp.get(within=1.0)
            assert frame.body == b"abc"
            if pub == "mqtt5":
                assert not client.disconnected.is_set()


async def test_nul_in_correlation_data_keeps_stomp_framing(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            stomp = await stomp_client(http_gateway, stack)
            await stomp.subscribe("/topic/map.x", id="n")
            client = await mqtt_client(http_gateway, "n-pub", stack, v5=True)
            props = {"CorrelationData": b"c\x00d"}
            await client.publish(TOPIC, b"payload", qos=1, properties=props)
            await client.publish(TOPIC, b"next", qos=1)
            assert (await stomp.get()).body == b"payload"
            assert (await stomp.get()).body == b"next"


@pytest.mark.parametrize(
    "pub",
    [pytest.param(pub, id=pub) for pub in ("stomp", "http")],
)
async def test_text_content_type_on_binary_payload_is_not_marked_utf8(
    http_gateway: Gateway, pub: str
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            mqtt = await mqtt_client(http_gateway, "t-sub", stack, v5=True)
            await mqtt.subscribe(TOPIC, qos=1)
            if pub == "stomp":
                sender = await stomp_client(http_gateway, stack)
                await sender.send("/topic/map.x", b"\xff\xfe", {"content-type": "text/plain"})
            else:
                port = http_gateway.port("http")
                headers = {"Content-Type": "text/plain"}
                reply = await curl(port, "POST", f"/api/v1/topics/{TOPIC}", b"\xff\xfe", headers)
                assert reply.status == 202
            message = await mqtt.get()
            assert message.payload == b"\xff\xfe"
            assert properties_dict(message.properties).get("PayloadFormatIndicator") != 1


async def test_repeated_header_names_show_the_first_value_in_json(
    http_gateway: Gateway,
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            stomp = await stomp_client(http_gateway, stack)
            await stomp.subscribe("/topic/map.x", id="r")
            sse, _, _ = await SSEStream.open(http_gateway.port("http"), "map%2Fx")
            stack.push_async_callback(sse.aclose)
            await sse.next()
            client = await mqtt_client(http_gateway, "r-pub", stack, v5=True)
            props = {"UserProperty": [("a", "1"), ("a", "2")]}
            await client.publish(TOPIC, b"r", qos=1, properties=props)
            assert (await stomp.get()).get("a") == "1"
            assert (await sse.message()).data["headers"]["a"] == "1"


async def test_user_properties_named_like_stomp_headers_do_not_pose_as_them(
    http_gateway: Gateway,
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            stomp = await stomp_client(http_gateway, stack)
            await stomp.subscribe("/topic/map.x", id="p")
            client = await mqtt_client(http_gateway, "p-pub", stack, v5=True)
            user = [("reply-to", "/queue/elsewhere"), ("persistent", "true"), ("expires", "1")]
            await client.publish(TOPIC, b"p", qos=0, properties={"UserProperty": user})
            frame = await stomp.get()
            assert frame.body == b"p"
            assert frame.get("reply-to") is None
            assert frame.get("persistent") is None
            assert frame.get("expires") is None


async def test_request_reply_with_a_non_ascii_correlation_id(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        async with contextlib.AsyncExitStack() as stack:
            responder = await mqtt_client(http_gateway, "rr", stack, v5=True)
            await responder.subscribe("svc", qos=1)

            async def respond() -> None:
                request = await responder.get()
                props = properties_dict(request.properties)
                await responder.publish(
                    props["ResponseTopic"],
                    b"pong",
                    qos=1,
                    properties={"CorrelationData": props["CorrelationData"]},
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(respond)
                reply = await curl(
                    http_gateway.port("http"),
                    "POST",
                    "/api/v1/request/svc?timeout=5",
                    b"ping",
                    {"X-Msg-Correlation-Id": "café"},
                )
            assert reply.status == 200
            assert reply.body == b"pong"
