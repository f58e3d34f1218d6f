"""The listener's QoS 0 fast path (``MQTTSession.publish_plain``) against the general path.

Random sessions of 3.1, 3.1.1 and 5 clients subscribing (with every MQTT 5 option),
publishing (QoS 0 mostly, retained or not, to $SYS, $queue and shared topics too) and
falling behind are played twice, once with PUBLISHes as events and once with the fast
path, and must leave every byte sent to every client, the broker's counters, the
queues' counters and the retained messages the same.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import mqtt
from gateway.core import Broker, QueuePolicy
from tests.core.fakes import Clock, RecordingSink
from tests.listeners.mqtt_harness import Client

P = mqtt.Properties

# name: (protocol level, CONNECT properties)
CLIENTS: dict[str, tuple[int, P]] = {
    "s3": (3, mqtt.NO_PROPERTIES),
    "s4": (4, mqtt.NO_PROPERTIES),
    "s5": (5, mqtt.NO_PROPERTIES),
    "s5-alias": (5, P(topic_alias_maximum=2)),
    "s5-small": (5, P(maximum_packet_size=40)),
    "p4": (4, mqtt.NO_PROPERTIES),
    "p5": (5, mqtt.NO_PROPERTIES),
}
TOPICS = ["a", "a/b", "a/b/c", "dev/1/temp", "$SYS/x", "$queue/q", "ü"]
FILTERS = ["#", "a/#", "a/+", "a/b", "+/+/temp", "$queue/q", "$share/g/a/#", "$SYS/#", "ü"]

steps = st.one_of(
    st.tuples(
        st.just("sub"),
        st.sampled_from(sorted(CLIENTS)),
        st.sampled_from(FILTERS),
        st.integers(0, 2),  # QoS
        # MQTT 5 options: no local, retain as published, retain handling
        st.builds(
            lambda nl, rap, rh: nl << 2 | rap << 3 | rh << 4,
            *[st.integers(0, 1)] * 2,
            st.integers(0, 2),
        ),
        st.sampled_from([None, 7]),  # subscription identifier
    ),
    *[
        st.tuples(
            st.just("pub"),
            st.sampled_from(sorted(CLIENTS)),
            st.sampled_from(TOPICS),
            st.binary(max_size=40),
            st.booleans(),  # retain
            st.sampled_from([0, 0, 0, 1]),  # QoS
            st.sampled_from([None, P(message_expiry_interval=5), P(content_type="t")]),
        )
    ]
    * 3,
    st.tuples(st.just("unsub"), st.sampled_from(sorted(CLIENTS)), st.sampled_from(FILTERS)),
    st.tuples(st.just("writable"), st.sampled_from(sorted(CLIENTS)), st.booleans()),
)


def play(script: list[tuple[Any, ...]], *, fast: bool) -> dict[str, Any]:
    """Play ``script``; everything a client or the broker could tell apart."""
    clock = Clock()
    broker = Broker(clock=clock, queues=[("durable", QueuePolicy(max_length=6))])
    # A consumer that never takes anything: its queue fills and asks publishers to wait.
    holder, _ = broker.open_session("holder", RecordingSink())
    durable = broker.durable_subscription("durable", "a/#")
    broker.consume(holder, "durable")
    assert holder.sink is not None
    holder.sink.open = False  # type: ignore[attr-defined]
    Client.plain_fast_path = fast
    try:
        clients = {name: Client(broker, clock) for name in CLIENTS}
    finally:
        Client.plain_fast_path = False
    wire = {name: bytearray() for name in CLIENTS}
    for name, c in clients.items():
        version, props = CLIENTS[name]
        fields: dict[str, Any] = {"properties": props}
        if version == 3:
            fields["protocol_name"] = "MQIsdp"
        c.connect(name, version=version, **fields)
        c.received()

        def send(data: bytes, c: Client = c, raw: bytearray = wire[name]) -> None:
            raw.extend(data)
            c.client.receive_data(data)

        c.session.send = send
    pids = iter(range(1, 60000))
    congested = []
    for step in script:
        c = clients[step[1]]
        version = CLIENTS[step[1]][0]
        match step:
            case ("sub", _, topic_filter, qos, options, sub_id):
                if version != 5:
                    options, sub_id = 0, None
                options |= qos
                if topic_filter.startswith("$share/"):
                    options &= ~4  # no local on a shared subscription is a protocol error
                props = P(subscription_identifiers=(sub_id,)) if sub_id else mqtt.NO_PROPERTIES
                c.send(
                    mqtt.Subscribe(
                        packet_id=next(pids),
                        subscriptions=((topic_filter, options),),
                        properties=props,
                    )
                )
            case ("pub", _, topic, payload, retain, qos, props):
                props = props if version == 5 and props is not None else mqtt.NO_PROPERTIES
                c.send(
                    mqtt.Publish(
                        topic=topic,
                        payload=payload,
                        retain=retain,
                        qos=qos,
                        packet_id=next(pids) if qos else None,
                        properties=props,
                    )
                )
            case ("unsub", _, topic_filter):
                c.send(mqtt.Unsubscribe(packet_id=next(pids), topic_filters=(topic_filter,)))
            case ("writable", _, writable):
                c.writable = writable
                if writable:
                    c.session.resume()
        congested.append(sorted(q.name for q in c.session.congested))
        c.session.congested.clear()  # as the listener does once it has waited
    stats = broker.stats
    return {
        "wire": {name: bytes(raw) for name, raw in wire.items()},
        "stopped": {name: c.stopped for name, c in clients.items()},
        "too_large": {name: c.session.dropped_too_large for name, c in clients.items()},
        "congested": congested,
        "broker": (stats.published, stats.unrouted, stats.refused, stats.drops, stats.topics),
        "queues": {name: s.queue.stats for name, s in sorted(broker.sessions.items())}
        | {name: q.stats for name, q in sorted(broker.queues.items())},
        "durable": [e.message.payload for e in durable.entries()],
        "retained": sorted((m.destination, m.payload, m.qos) for m in broker.retained.match("#")),
        "plain": sum(c.plain_publishes for c in clients.values()),
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, max_size=30))
def test_the_fast_path_sends_and_counts_what_the_general_path_does(
    script: list[tuple[Any, ...]],
) -> None:
    fast = play(script, fast=True)
    events = play(script, fast=False)
    assert events.pop("plain") == 0
    taken = fast.pop("plain")
    assert fast == events
    plain = [s for s in script if s[0] == "pub" and s[5] == 0 and not s[2].startswith("$")]
    if any(s[1] == "p4" or s[1] == "s3" or s[1] == "s4" or s[6] is None for s in plain):
        assert taken, "no PUBLISH took the fast path"


@pytest.mark.parametrize("version", [3, 4, 5])
def test_a_plain_publish_reaches_every_kind_of_subscriber(version: int) -> None:
    """The PUBLISH as received is what same-generation subscribers get; the others get theirs."""
    script: list[tuple[Any, ...]] = [
        ("sub", name, "a/#", 0, 0x08, None) for name in ("s3", "s4", "s5", "s5-alias")
    ]
    script += [("sub", "s5", "a/b", 0, 0, 9)]  # a subscription identifier: its own encoding
    publisher = {3: "s3", 4: "p4", 5: "p5"}[version]
    script += [("pub", publisher, "a/b", b"m%d" % i, i == 1, 0, None) for i in range(3)]
    fast = play(script, fast=True)
    events = play(script, fast=False)
    assert fast.pop("plain") == 3
    events.pop("plain")
    assert fast == events
    assert all(fast["wire"][name] for name in ("s3", "s4", "s5", "s5-alias"))


def test_a_full_queue_stops_the_publisher_right_after_the_publish_that_filled_it() -> None:
    """Publisher backpressure on the fast path: the codec pauses where the listener would
    have stopped reading (after the third, as the durable queue's high-water mark is 3)."""
    clock = Clock()
    broker = Broker(clock=clock, queues=[("durable", QueuePolicy(max_length=6))])
    holder, _ = broker.open_session("holder", RecordingSink())
    queue = broker.durable_subscription("durable", "a/#")
    broker.consume(holder, "durable")
    holder.consumer.sink.open = False  # type: ignore[union-attr]
    Client.plain_fast_path = True
    try:
        pub = Client(broker, clock)
    finally:
        Client.plain_fast_path = False
    pub.connect("p", version=4)
    pub.send(mqtt.Publish(topic="a/b", payload=b"0"))
    assert not pub.session.congested
    data = b"".join(
        mqtt.encode_packet(mqtt.Publish(topic="a/b", payload=b"%d" % i)) for i in (1, 2, 3)
    )
    pub.server.receive_data(data + mqtt.encode_packet(mqtt.PingReq()))
    assert pub.server.next_event() is mqtt.PAUSED
    assert pub.session.congested == {queue}
    assert queue.depth == 3
    assert pub.plain_publishes == 3
    pub.session.congested.clear()
    assert pub.server.next_event() is mqtt.PAUSED  # still full
    assert queue.depth == 4
    assert pub.server.next_event() == mqtt.PingReq()
