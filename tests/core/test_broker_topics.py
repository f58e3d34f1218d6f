"""Topic publishing through the broker: fan-out, options, retained messages, flow control."""

from __future__ import annotations

import pytest

from gateway.core import (
    Broker,
    InvalidFilter,
    Message,
    Origin,
    QueuePolicy,
    Status,
    SubscribeOptions,
)
from tests.core.fakes import Clock, RecordingSink


def msg(topic: str, payload: bytes = b"x", **fields: object) -> Message:
    return Message(destination=topic, payload=payload, **fields)  # type: ignore[arg-type]


def connect(broker: Broker, client_id: str, **kw: object) -> RecordingSink:
    sink = RecordingSink(client_id)
    broker.open_session(client_id, sink, **kw)  # type: ignore[arg-type]
    return sink


def test_every_matching_subscriber_gets_the_same_message_instance(broker: Broker) -> None:
    sinks = [connect(broker, f"c{i}") for i in range(3)]
    for sink, topic_filter in zip(sinks, ["a/b", "a/+", "#"], strict=True):
        broker.subscribe(broker.sessions[sink.name], topic_filter)
    message = msg("a/b")
    result = broker.publish(message)
    assert result.status is Status.ACCEPTED
    assert result.routed == 3
    assert all(sink.got[0][0].message is message for sink in sinks)


def test_dollar_topics_are_not_matched_by_first_level_wildcards(broker: Broker) -> None:
    hash_all = connect(broker, "all")
    sys_all = connect(broker, "sys")
    broker.subscribe(broker.sessions["all"], "#")
    broker.subscribe(broker.sessions["all"], "+/uptime")
    broker.subscribe(broker.sessions["sys"], "$SYS/#")
    broker.publish(msg("$SYS/uptime"))
    assert hash_all.got == []
    assert len(sys_all.got) == 1
    assert broker.stats.unrouted == 0


def test_unrouted_publish_is_accepted_and_counted(broker: Broker) -> None:
    result = broker.publish(msg("nobody/listens"))
    assert result == result.__class__(Status.ACCEPTED, 0)
    assert broker.stats.unrouted == 1
    assert broker.stats.topics["nobody/listens"] == 1


def test_invalid_filters_are_refused(broker: Broker) -> None:
    connect(broker, "c")
    for bad in ["a/#/b", "a+", "", "$share/g", "$share//a", "$share/g+/a"]:
        with pytest.raises(InvalidFilter):
            broker.subscribe(broker.sessions["c"], bad)


def test_overlapping_subscriptions_deliver_once_with_highest_qos_and_all_ids(
    broker: Broker,
) -> None:
    sink = connect(broker, "c")
    session = broker.sessions["c"]
    broker.subscribe(session, "a/+", SubscribeOptions(qos=0, subscription_id=1))
    broker.subscribe(session, "a/#", SubscribeOptions(qos=1, subscription_id=2))
    broker.publish(msg("a/b", qos=2))
    [(delivery, qos)] = sink.got
    assert qos == 1
    assert sorted(delivery.subscription_ids) == [1, 2]


def test_delivery_qos_is_the_lower_of_publish_and_subscription(broker: Broker) -> None:
    sink = connect(broker, "c")
    broker.subscribe(broker.sessions["c"], "t", SubscribeOptions(qos=1))
    broker.publish(msg("t", qos=0))
    broker.publish(msg("t", qos=2))
    assert [qos for _, qos in sink.got] == [0, 1]


def test_no_local_skips_the_publishers_own_session(broker: Broker) -> None:
    sink = connect(broker, "me")
    broker.subscribe(broker.sessions["me"], "chat", SubscribeOptions(no_local=True))
    broker.publish(msg("chat", b"mine", origin=Origin(protocol="mqtt", client_id="me")))
    broker.publish(msg("chat", b"theirs", origin=Origin(protocol="mqtt", client_id="you")))
    assert sink.payloads == [b"theirs"]


def test_unsubscribe_stops_delivery_and_reports_unknown_filters(broker: Broker) -> None:
    sink = connect(broker, "c")
    session = broker.sessions["c"]
    broker.subscribe(session, "a/#")
    broker.publish(msg("a/1"))
    assert broker.unsubscribe(session, "a/#") is True
    assert broker.unsubscribe(session, "a/#") is False
    broker.publish(msg("a/2"))
    assert sink.payloads == [b"x"]
    assert broker.subscription_count == 0


# -- retained messages ----------------------------------------------------------


def test_retained_message_is_delivered_on_subscribe_with_wildcards(broker: Broker) -> None:
    broker.publish(msg("home/kitchen/temp", b"21", retain=True))
    broker.publish(msg("home/hall/temp", b"19", retain=True))
    broker.publish(msg("home/kitchen/temp", b"22", retain=True))  # replaces 21
    broker.publish(msg("home/attic/temp", b"not retained"))
    sink = connect(broker, "c")
    broker.subscribe(broker.sessions["c"], "home/+/temp", SubscribeOptions(qos=1))
    assert sorted(sink.payloads) == [b"19", b"22"]
    assert all(d.retain for d, _ in sink.got)


def test_empty_retained_payload_clears_the_topic(broker: Broker) -> None:
    broker.publish(msg("t", b"old", retain=True))
    broker.publish(msg("t", b"", retain=True))
    sink = connect(broker, "c")
    broker.subscribe(broker.sessions["c"], "t")
    assert sink.got == []
    assert len(broker.retained) == 0


def test_live_deliveries_clear_the_retain_flag_unless_retain_as_published(broker: Broker) -> None:
    plain = connect(broker, "plain")
    rap = connect(broker, "rap")
    broker.subscribe(broker.sessions["plain"], "t")
    broker.subscribe(broker.sessions["rap"], "t", SubscribeOptions(retain_as_published=True))
    broker.publish(msg("t", retain=True))
    assert [d.retain for d, _ in plain.got] == [False]
    assert [d.retain for d, _ in rap.got] == [True]


@pytest.mark.parametrize(("handling", "expected"), [(0, 2), (1, 1), (2, 0)])
def test_retain_handling(broker: Broker, handling: int, expected: int) -> None:
    broker.publish(msg("t", retain=True))
    sink = connect(broker, "c")
    options = SubscribeOptions(retain_handling=handling)
    broker.subscribe(broker.sessions["c"], "t", options)
    broker.subscribe(broker.sessions["c"], "t", options)  # again: no longer new
    assert len(sink.got) == expected


def test_expired_retained_message_is_not_delivered(broker: Broker) -> None:
    clock = broker.now
    assert isinstance(clock, Clock)
    broker.publish(msg("t", retain=True, expiry=clock.now + 10))
    clock.advance(11)
    sink = connect(broker, "c")
    broker.subscribe(broker.sessions["c"], "t")
    assert sink.got == []
    broker.tick()
    assert len(broker.retained) == 0


# -- flow control -----------------------------------------------------------------


def test_a_stalled_subscriber_never_slows_the_others() -> None:
    broker = Broker(clock=Clock(), session_queue=QueuePolicy(max_length=100))
    fast = connect(broker, "fast")
    slow = connect(broker, "slow")
    for name in ("fast", "slow"):
        broker.subscribe(broker.sessions[name], "load/#", SubscribeOptions(qos=1))
    slow.open = False  # its connection stopped reading
    for i in range(1000):
        result = broker.publish(msg("load/a", str(i).encode(), qos=i % 2))
        assert result.accepted
    # The fast subscriber got every message, in order, as it was published.
    assert fast.payloads == [str(i).encode() for i in range(1000)]
    # The slow one: QoS 0 dropped and counted, persistent ones held up to the limit.
    assert slow.got == []
    queue = broker.sessions["slow"].queue
    assert queue.depth == 100
    assert [d.message.payload for d in queue.entries()] == [
        str(i).encode() for i in range(801, 1000, 2)
    ]
    assert broker.stats.drops["slow-consumer"] == 500
    assert broker.stats.drops["max-length"] == 400
    # Once it drains, what was held is sent.
    slow.open = True
    broker.resume(broker.sessions["slow"])
    assert len(slow.got) == 100


def test_qos1_delivery_waits_for_credit() -> None:
    broker = Broker(clock=Clock())
    sink = RecordingSink()
    session, _ = broker.open_session("c", sink, window=2)
    broker.subscribe(session, "t", SubscribeOptions(qos=1))
    for i in range(5):
        broker.publish(msg("t", bytes([i]), qos=1))
    assert sink.payloads == [b"\x00", b"\x01"]
    first = sink.got[0][0]
    assert broker.ack(first) is True
    assert broker.ack(first) is False  # a second ack of the same delivery is ignored
    assert sink.payloads == [b"\x00", b"\x01", b"\x02"]
