"""Selectors end to end (docs/selectors.md, "Where selectors apply"): STOMP's ``selector``
header, the MQTT 5 SUBSCRIBE user property ``selector`` and the HTTP ``selector`` query
parameter (SSE and pull), with real clients (stomp.py, paho, curl) and messages published
from all three protocols: MQTT 5 user properties, STOMP headers, HTTP ``X-Msg-*`` headers.

Publishes are made one after another, each waiting for its acknowledgement (a STOMP receipt,
an MQTT PUBACK, the HTTP 202), so the broker sees them in the order written. A subscriber
proves that nothing more than its subset arrived by reading up to a last message that every
selector of the test matches.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pytest
import trio

from gateway.app import Gateway
from gateway.codecs import mqtt
from tests.conftest import NET_TIMEOUT
from tests.listeners.test_http_sse import SSEStream
from tests.listeners.test_http_wire import RawHTTP, curl, mqtt5_client, record
from tests.paho import Paho, properties_dict
from tests.rawmqtt import RawClient
from tests.stomp_client import Received, Stomp, StompFailure, connected_stomp

PROTOCOLS = ("mqtt", "stomp", "http")
END = b"end"


@dataclass
class Clients:
    """Connected publishers, one per protocol, and the gateway's ports."""

    gw: Gateway
    mqtt: Paho
    stomp: Stomp

    @property
    def http_port(self) -> int:
        return self.gw.port("http")

    async def publish(
        self,
        protocol: str,
        destination: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        queue: bool = False,
        content_type: str | None = "text/plain",
    ) -> None:
        """Publish through ``protocol`` to topic (or queue) ``destination`` with the message
        headers ``headers``, and wait until the gateway has taken it."""
        headers = dict(headers or {})
        if protocol == "mqtt":
            properties: dict[str, object] = {}
            if headers:
                properties["UserProperty"] = list(headers.items())
            if content_type is not None:
                properties["ContentType"] = content_type
            topic = f"$queue/{destination}" if queue else destination
            # 0x10, no matching subscribers: the selectors turned it away (a success code).
            reason = await self.mqtt.publish(topic, payload, qos=1, properties=properties)
            assert reason in (0, 0x10), reason
        elif protocol == "stomp":
            if content_type is not None:
                headers["content-type"] = content_type
            prefix = "/queue/" if queue else "/topic/"
            name = destination if queue else destination.replace("/", ".")
            await self.stomp.send(prefix + name, payload, headers)
        else:
            http_headers = {f"X-Msg-{name}": value for name, value in headers.items()}
            if content_type is not None:
                http_headers["Content-Type"] = content_type
            kind = "queues" if queue else "topics"
            target = quote(destination, safe="" if queue else "/")
            reply = await curl(
                self.http_port, "POST", f"/api/v1/{kind}/{target}", payload, http_headers
            )
            assert reply.status == 202, reply


@pytest.fixture
async def clients(http_gateway: Gateway) -> AsyncIterator[Clients]:
    async with (
        connected_stomp(http_gateway.port("stomp")) as stomp,
        mqtt5_client(http_gateway.port("mqtt"), "selector-publisher") as publisher,
    ):
        yield Clients(http_gateway, publisher, stomp)


async def stomp_client(gw: Gateway) -> Stomp:
    client = Stomp(gw.port("stomp"))
    await client.connect()
    return client


def selector_property(selector: str) -> dict[str, object]:
    return {"UserProperty": [("selector", selector)]}


async def open_sse(port: int, topic_filter: str, selector: str) -> SSEStream:
    """An event stream for ``topic_filter`` with ``selector``, once subscribed."""
    raw = await RawHTTP.open(port)
    target = f"/api/v1/topics/{quote(topic_filter, safe='')}/events?selector={quote(selector)}"
    await raw.request("GET", target, headers={"Accept": "text/event-stream"})
    status, _ = await raw.head()
    record("GET", target, status)
    assert status == 200
    stream = SSEStream(raw)
    first = await stream.next()
    assert first.comment is not None
    assert first.comment.startswith("subscribed to")
    return stream


async def stomp_until_end(client: Stomp) -> list[bytes]:
    bodies = []
    while (body := (await client.get()).body) != END:
        bodies.append(body)
    return bodies


async def mqtt_until_end(client: Paho) -> list[bytes]:
    payloads = []
    while (payload := (await client.get()).payload) != END:
        payloads.append(payload)
    return payloads


async def sse_until_end(stream: SSEStream) -> list[bytes]:
    payloads = []
    while (payload := (await stream.message()).data["payload"].encode()) != END:
        payloads.append(payload)
    return payloads


async def pull(
    port: int, queue: str, selector: str | None = None, *, max_: int = 100, wait: float = 0
) -> list[dict[str, object]]:
    target = f"/api/v1/queues/{queue}/messages?max={max_}&wait={wait}"
    if selector is not None:
        target += f"&selector={quote(selector)}"
    reply = await curl(port, "GET", target)
    assert reply.status == 200, reply
    messages: list[dict[str, object]] = reply.json()["messages"]
    return messages


async def ack(port: int, queue: str, messages: Sequence[Mapping[str, object]]) -> None:
    body = json.dumps({"ids": [m["id"] for m in messages]}).encode()
    reply = await curl(
        port, "POST", f"/api/v1/queues/{queue}/ack", body, {"Content-Type": "application/json"}
    )
    assert reply.json() == {"acked": len(messages), "unknown": []}


def payloads(messages: Sequence[Mapping[str, object]]) -> list[bytes]:
    return [str(m["payload"]).encode() for m in messages]


# -- a mixed stream, three subscribers ---------------------------------------------------

# (site, temp) headers of the stream each protocol publishes; None: the header is absent.
STREAM: tuple[tuple[str | None, str | None], ...] = (
    ("lyon", "31"),
    ("lyon", "5"),
    ("paris", "25"),
    ("paris", "31.5"),
    ("nice", "40"),
    (None, "35"),
    ("lyon", None),
    ("paris", "warm"),
    ("nice", "20"),
    (None, None),
)


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


# What each subscriber's selector means, written out in Python.
STOMP_SELECTOR = "site = 'lyon'"
MQTT_SELECTOR = "temp > 30"  # a string header compared as a number
SSE_SELECTOR = "site IN ('lyon', 'paris') AND temp BETWEEN 20 AND 40"
EXPECTED: dict[str, Callable[[str | None, float | None], bool]] = {
    "stomp": lambda site, temp: site == "lyon",
    "mqtt": lambda site, temp: temp is not None and temp > 30,
    "sse": lambda site, temp: site in ("lyon", "paris") and temp is not None and 20 <= temp <= 40,
}


async def test_subscribers_on_each_protocol_get_exactly_their_subset_of_a_mixed_stream(
    clients: Clients,
) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT * 3):
        stomp = await stomp_client(gw)
        await stomp.subscribe("/topic/mix.#", id="mix", headers={"selector": STOMP_SELECTOR})
        async with mqtt5_client(gw.port("mqtt"), "mix-subscriber") as subscriber:
            codes = await subscriber.subscribe(
                "mix/#", qos=1, properties=selector_property(MQTT_SELECTOR)
            )
            assert [code.value for code in codes] == [1]
            sse = await open_sse(gw.port("http"), "mix/#", SSE_SELECTOR)
            expected: dict[str, list[bytes]] = {name: [] for name in EXPECTED}
            for protocol in PROTOCOLS:
                for i, (site, temp) in enumerate(STREAM):
                    headers = {"seq": str(i)}
                    if site is not None:
                        headers["site"] = site
                    if temp is not None:
                        headers["temp"] = temp
                    payload = f"{protocol}-{i}-{site}-{temp}".encode()
                    await clients.publish(protocol, f"mix/{protocol}", payload, headers)
                    for name, wanted in EXPECTED.items():
                        if wanted(site, _number(temp)):
                            expected[name].append(payload)
            # Last, a message every selector matches.
            await clients.publish("http", "mix/end", END, {"site": "lyon", "temp": "35"})
            assert await stomp_until_end(stomp) == expected["stomp"]
            assert await mqtt_until_end(subscriber) == expected["mqtt"]
            assert await sse_until_end(sse) == expected["sse"]
            await sse.aclose()
        await stomp.close()
    # Numeric coercion, from every protocol: the header '31' is more than 30, 'warm' is not.
    for protocol in PROTOCOLS:
        assert f"{protocol}-0-lyon-31".encode() in expected["mqtt"]
        assert f"{protocol}-3-paris-31.5".encode() in expected["mqtt"]
        assert f"{protocol}-7-paris-warm".encode() not in expected["mqtt"]
    assert len(expected["stomp"]) == 9
    assert len(expected["mqtt"]) == 12
    assert len(expected["sse"]) == 9


async def test_a_missing_header_matches_neither_a_test_nor_its_negation(clients: Clients) -> None:
    gw = clients.gw
    end = " OR last = 'yes'"
    with trio.fail_after(NET_TIMEOUT * 2):
        stomp = await stomp_client(gw)
        await stomp.subscribe("/topic/tv", id="tv", headers={"selector": "x = 'a'" + end})
        async with mqtt5_client(gw.port("mqtt"), "tv-subscriber") as subscriber:
            await subscriber.subscribe(
                "tv", qos=1, properties=selector_property("NOT x = 'a'" + end)
            )
            sse = await open_sse(gw.port("http"), "tv", "x IS NULL" + end)
            for protocol in PROTOCOLS:
                await clients.publish(protocol, "tv", f"{protocol}-a".encode(), {"x": "a"})
                await clients.publish(protocol, "tv", f"{protocol}-b".encode(), {"x": "b"})
                await clients.publish(protocol, "tv", f"{protocol}-none".encode(), {"y": "a"})
            await clients.publish("stomp", "tv", END, {"last": "yes"})
            assert await stomp_until_end(stomp) == [b"mqtt-a", b"stomp-a", b"http-a"]
            assert await mqtt_until_end(subscriber) == [b"mqtt-b", b"stomp-b", b"http-b"]
            assert await sse_until_end(sse) == [b"mqtt-none", b"stomp-none", b"http-none"]
            await sse.aclose()
        await stomp.close()


async def test_a_json_payload_field_selector(clients: Clients) -> None:
    gw = clients.gw
    selector = "payload.temperature > 30 AND payload.site = 'lyon'"
    sent: list[tuple[str, dict[str, object] | bytes, str | None, bool]] = [
        ("mqtt", {"temperature": 35, "site": "lyon"}, None, True),  # no content type: sniffed
        ("stomp", {"temperature": 31.5, "site": "lyon"}, "application/json", True),
        ("http", {"temperature": "40", "site": "lyon", "x": [1]}, "application/json", True),
        ("http", {"temperature": 50, "site": "lyon"}, "text/plain", False),  # not JSON
        ("stomp", {"temperature": 10, "site": "lyon"}, "application/json", False),
        ("mqtt", {"temperature": 50, "site": "paris"}, "application/json", False),
        ("mqtt", b"not json", None, False),
        ("http", {"temperature": 35}, "application/json; charset=utf-8", False),
        ("stomp", {"temperature": 45, "site": "lyon"}, "application/vnd.gw+json", True),
    ]
    with trio.fail_after(NET_TIMEOUT * 2):
        async with mqtt5_client(gw.port("mqtt"), "json-subscriber") as subscriber:
            await subscriber.subscribe("json/#", qos=1, properties=selector_property(selector))
            expected = []
            for protocol, body, content_type, matches in sent:
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                await clients.publish(protocol, "json/t", payload, content_type=content_type)
                if matches:
                    expected.append(payload)
            marker = json.dumps({"temperature": 99, "site": "lyon"}).encode()
            await clients.publish("http", "json/t", marker, content_type="application/json")
            got = []
            while (payload := (await subscriber.get()).payload) != marker:
                got.append(payload)
            assert got == expected


# -- queues: consumers split the messages by selector ------------------------------------


async def test_two_stomp_consumers_split_a_queue_by_selector(clients: Clients) -> None:
    gw = clients.gw
    port = clients.http_port
    with trio.fail_after(NET_TIMEOUT * 3):
        lyon = await stomp_client(gw)
        paris = await stomp_client(gw)
        # One acknowledges each message and takes one at a time, the other auto-acks.
        await lyon.subscribe(
            "/queue/split",
            id="lyon",
            ack="client-individual",
            headers={"selector": "site = 'lyon'", "prefetch-count": "1"},
        )
        await paris.subscribe("/queue/split", id="paris", headers={"selector": "site = 'paris'"})
        wanted: dict[str | None, list[bytes]] = {"lyon": [], "paris": [], None: []}
        for protocol in PROTOCOLS:
            for i, (site, _) in enumerate(STREAM):
                payload = f"{protocol}-{i}-{site}".encode()
                headers = {} if site is None else {"site": site}
                await clients.publish(protocol, "split", payload, headers, queue=True)
                wanted[site if site in ("lyon", "paris") else None].append(payload)
        got = []
        for _ in wanted["lyon"]:
            frame = await lyon.get()
            got.append(frame.body)
            await lyon.ack(frame)
        assert got == wanted["lyon"]
        assert [frame.body for frame in await paris.get_many(len(wanted["paris"]))] == wanted[
            "paris"
        ]
        # The messages neither wants stay queued, in their order, for another consumer.
        assert gw.broker.queue_stats("split").depth == len(wanted[None])
        left = await pull(port, "split")
        assert payloads(left) == wanted[None]
        await ack(port, "split", left)
        assert gw.broker.queue_stats("split").depth == 0
        await trio.sleep(0.2)
        assert lyon.pending() == []
        assert paris.pending() == []
        await lyon.close()
        await paris.close()


async def test_an_http_pull_with_a_selector_next_to_a_stomp_consumer(clients: Clients) -> None:
    gw = clients.gw
    port = clients.http_port
    with trio.fail_after(NET_TIMEOUT * 3):
        eu = await stomp_client(gw)
        await eu.subscribe("/queue/regions", id="eu", headers={"selector": "region = 'eu'"})
        sent: dict[str | None, list[bytes]] = {"eu": [], "us": [], None: []}
        for protocol in PROTOCOLS:
            for i, region in enumerate(("eu", "us", "us", None, "eu")):
                payload = f"{protocol}-{i}-{region}".encode()
                headers = {} if region is None else {"region": region}
                await clients.publish(protocol, "regions", payload, headers, queue=True)
                sent[region].append(payload)
        # The STOMP consumer got its share at once; the others wait for the pull.
        assert [frame.body for frame in await eu.get_many(len(sent["eu"]))] == sent["eu"]
        us = await pull(port, "regions", "region <> 'eu'")
        assert payloads(us) == sent["us"]
        assert all(m["redelivered"] is False for m in us)
        # Without the header: neither region = 'eu' nor region <> 'eu' (UNKNOWN).
        assert gw.broker.queue_stats("regions").depth == len(sent[None])
        assert await pull(port, "regions", "region <> 'eu'") == []
        await ack(port, "regions", us)
        # A new message for the pull waits for it, and a long poll gets it as it comes.
        async with trio.open_nursery() as nursery:
            results: list[list[dict[str, object]]] = []

            async def long_poll() -> None:
                results.append(await pull(port, "regions", "region <> 'eu'", max_=1, wait=10))

            nursery.start_soon(long_poll)
            await trio.sleep(0.3)
            await clients.publish("mqtt", "regions", b"late-eu", {"region": "eu"}, queue=True)
            await clients.publish("stomp", "regions", b"late-us", {"region": "us"}, queue=True)
        assert payloads(results[0]) == [b"late-us"]
        await ack(port, "regions", results[0])
        assert (await eu.get()).body == b"late-eu"
        left = await pull(port, "regions")
        assert payloads(left) == sent[None]
        await ack(port, "regions", left)
        assert eu.pending() == []
        await eu.close()


async def test_a_redelivered_selector_takes_what_another_consumer_nacked(
    clients: Clients,
) -> None:
    gw = clients.gw
    port = clients.http_port
    with trio.fail_after(NET_TIMEOUT * 2):
        fresh = await stomp_client(gw)
        retry = await stomp_client(gw)
        await fresh.subscribe(
            "/queue/redo",
            id="fresh",
            ack="client-individual",
            headers={"selector": "NOT JMSRedelivered"},
        )
        await retry.subscribe("/queue/redo", id="retry", headers={"selector": "JMSRedelivered"})
        await clients.publish("mqtt", "redo", b"one", queue=True)
        first = await fresh.get()
        assert (first.body, first.get("redelivered")) == (b"one", "false")
        await fresh.nack(first)
        again = await retry.get()
        assert (again.body, again.get("redelivered")) == (b"one", "true")
        assert again.get("x-delivery-count") == "2"
        await retry.unsubscribe("retry")
        # An HTTP pull with the selector: the nacked message waits for it.
        await clients.publish("http", "redo", b"two", queue=True)
        second = await fresh.get()
        assert second.body == b"two"
        await fresh.nack(second)
        assert await pull(port, "redo", "redelivered = FALSE") == []
        [pulled] = await pull(port, "redo", "JMSRedelivered = TRUE")
        assert (pulled["payload"], pulled["redelivered"], pulled["delivery_count"]) == (
            "two",
            True,
            2,
        )
        await ack(port, "redo", [pulled])
        assert fresh.pending() == []
        assert gw.broker.queue_stats("redo").depth == 0
        await fresh.close()
        await retry.close()


async def test_a_priority_selector_on_a_queue(clients: Clients) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT * 2):
        urgent = await stomp_client(gw)
        await urgent.subscribe("/queue/prio", id="urgent", headers={"selector": "JMSPriority >= 7"})
        async with mqtt5_client(gw.port("mqtt"), "prio-consumer") as normal:
            await normal.subscribe(
                "$queue/prio", qos=1, properties=selector_property("priority < 7")
            )
            sent = [("mqtt", "9"), ("stomp", "2"), ("http", "7"), ("mqtt", None), ("stomp", "8")]
            sent += [("http", None), ("http", "0")]
            for protocol, priority in sent:
                headers = {} if priority is None else {"priority": priority}
                payload = f"{protocol}-{priority}".encode()
                await clients.publish(protocol, "prio", payload, headers, queue=True)
            high = [frame.body for frame in await urgent.get_many(3)]
            assert high == [b"mqtt-9", b"http-7", b"stomp-8"]
            assert urgent.pending() == []
            low = [(await normal.get()).payload for _ in range(4)]
            assert low == [b"stomp-2", b"mqtt-None", b"http-None", b"http-0"]
        assert gw.broker.queue_stats("prio").depth == 0
        await urgent.close()


# -- refusals ----------------------------------------------------------------------------


async def refused_subscribe(
    gw: Gateway, destination: str, headers: Mapping[str, str], **options: str
) -> Received:
    """SUBSCRIBE on a new connection; the ERROR frame it gets, once the connection is closed."""
    client = await stomp_client(gw)
    with pytest.raises(StompFailure) as refused:
        await client.subscribe(destination, headers=headers, **options)
    # stomp.py may see the close before it has handed over the ERROR frame.
    error = refused.value.error or await client.error()
    assert await client.wait_disconnected()
    await client.close()
    return error


async def test_a_bad_stomp_selector_is_an_error_with_the_position(clients: Clients) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT):
        error = await refused_subscribe(gw, "/queue/q", {"selector": "site = 'lyon"})
        assert error.get("message") == "bad selector"
        assert error.body == b"unterminated string literal at position 7"
        # Durable subscriptions do not take selectors (yet).
        headers = {"durable": "true", "auto-delete": "false", "selector": "a = 1"}
        error = await refused_subscribe(gw, "/topic/d", headers, id="d1")
        assert error.get("message") == "bad selector"
        assert b"durable" in error.body
        assert not any(name.startswith("$durable/") for name in gw.broker.queues)


async def test_a_bad_mqtt_selector_fails_every_filter_of_the_subscribe(clients: Clients) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT):
        client = await RawClient.open(gw.port("mqtt"))
        try:
            await client.connect("raw-selector", protocol_level=5)
            bad = mqtt.Properties(user_properties=(("selector", "site == 'x'"),))
            subscriptions = (("sel/#", 1), ("$queue/selq", 1))
            await client.send(
                mqtt.Subscribe(packet_id=1, subscriptions=subscriptions, properties=bad)
            )
            suback = await client.receive()
            assert isinstance(suback, mqtt.SubAck)
            assert suback.return_codes == (0x83, 0x83)
            assert suback.properties.reason_string == (
                "bad selector: '==': equality is '=' at position 5"
            )
            session = gw.broker.sessions["raw-selector"]
            assert session.subscriptions == {}
            assert session.consumers == {}
            # Shared subscriptions do not take selectors; the packet's other filters do.
            good = mqtt.Properties(user_properties=(("selector", "site = 'x'"),))
            subscriptions = (("$share/g/sel/a", 1), ("sel/b", 1))
            await client.send(
                mqtt.Subscribe(packet_id=2, subscriptions=subscriptions, properties=good)
            )
            suback = await client.receive()
            assert isinstance(suback, mqtt.SubAck)
            assert suback.return_codes == (0x8F, 1)
            assert set(session.subscriptions) == {"sel/b"}
            await clients.publish("mqtt", "sel/b", b"no")
            await clients.publish("stomp", "sel/b", b"yes", {"site": "x"})
            publish = await client.receive()
            assert isinstance(publish, mqtt.Publish)
            assert publish.payload == b"yes"
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    "target",
    ["/api/v1/topics/sel%2F%23/events", "/api/v1/queues/selq/messages"],
    ids=["sse", "pull"],
)
async def test_a_bad_http_selector_is_400_with_the_position(clients: Clients, target: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(clients.http_port, "GET", f"{target}?selector={quote('n = 1)')}")
        assert reply.status == 400
        assert reply.error == "bad_selector"
        assert reply.json()["message"] == "unbalanced ')' at position 5"


# -- overlapping subscriptions of one connection ----------------------------------------------


async def test_overlapping_stomp_subscriptions_each_apply_their_own_selector(
    clients: Clients,
) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT):
        client = await stomp_client(gw)
        await client.subscribe("/topic/ov.*", id="one", headers={"selector": "x = '1'"})
        await client.subscribe("/topic/ov.#", id="two", headers={"selector": "x = '2'"})
        for x in ("1", "2", "3"):
            await clients.publish("http", "ov/a", f"x{x}".encode(), {"x": x})
        await clients.publish("mqtt", "ov/a", END, {"x": "1"})
        got = []
        while True:
            frame = await client.get()
            got.append((frame.get("subscription"), frame.body))
            if frame.body == END:
                break
        assert got == [("one", b"x1"), ("two", b"x2"), ("one", END)]
        await client.close()


async def test_overlapping_mqtt_subscriptions_deliver_one_copy_if_any_selector_matches(
    clients: Clients,
) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT):
        async with mqtt5_client(gw.port("mqtt"), "overlap") as client:
            await client.subscribe("ov/#", qos=1, properties=selector_property("x = '1'"))
            await client.subscribe("ov/+", qos=1, properties=selector_property("x = '2'"))
            for x in ("1", "2", "3"):
                await clients.publish("stomp", "ov/a", f"x{x}".encode(), {"x": x})
            await clients.publish("stomp", "ov/a", END, {"x": "2"})
            assert await mqtt_until_end(client) == [b"x1", b"x2"]
            assert client.messages.empty()


async def test_overlapping_mqtt_subscriptions_name_only_the_matching_subscription_ids(
    clients: Clients,
) -> None:
    gw = clients.gw
    with trio.fail_after(NET_TIMEOUT):
        async with mqtt5_client(gw.port("mqtt"), "overlap-ids") as client:
            for sub_id, (topic_filter, x) in enumerate((("ids/#", "1"), ("ids/+", "2")), 1):
                properties = {**selector_property(f"x = '{x}'"), "SubscriptionIdentifier": sub_id}
                await client.subscribe(topic_filter, qos=1, properties=properties)
            await clients.publish("stomp", "ids/a", b"x1", {"x": "1"})
            message = await client.get()
            assert properties_dict(message.properties)["SubscriptionIdentifier"] == [1]
