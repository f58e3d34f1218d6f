"""A lossy queue's single-consumer QoS 0 shortcut (Queue.put -> Consumer.send_qos0) must
leave every delivery as the general path (_pick -> Consumer.send) leaves it."""

from __future__ import annotations

import pytest

from gateway.core import Broker, Consumer, Delivery, Message, Queue, SubscribeOptions
from tests.core.fakes import Clock, RecordingSink


def shared_deliveries(*, alone: bool, options: SubscribeOptions) -> list[tuple[object, ...]]:
    """What a shared subscription's member gets, alone in its group (the shortcut) or
    with a second member that cannot take anything (the general path)."""
    broker = Broker(clock=Clock())
    sink = RecordingSink("a")
    member, _ = broker.open_session("a", sink)
    broker.subscribe(member, "$share/g/t", options)
    if not alone:
        stuck = RecordingSink("b")
        stuck.open = False
        other, _ = broker.open_session("b", stuck)
        broker.subscribe(other, "$share/g/t", SubscribeOptions())
    for i in range(3):
        broker.publish(Message(destination="t", payload=b"%d" % i, retain=i == 1))
    consumer = member.consumers["$share/g/t"]
    assert all(d.consumer is consumer for d, _ in sink.got)
    stats = broker.queues["$share/g/t"].stats
    return [
        (d.message.payload, d.qos, qos, d.retain, d.subscription_ids, d.count, d.tag)
        for d, qos in sink.got
    ] + [(stats.enqueued, stats.delivered, dict(broker.stats.drops))]


@pytest.mark.parametrize(
    "options",
    [
        SubscribeOptions(),
        SubscribeOptions(qos=1, subscription_id=7),
        SubscribeOptions(retain_as_published=True, subscription_id=3),
    ],
)
def test_a_lone_consumer_gets_what_the_general_path_gives(options: SubscribeOptions) -> None:
    alone = shared_deliveries(alone=True, options=options)
    assert alone == shared_deliveries(alone=False, options=options)
    assert [tag for *_, tag in alone[:-1]] == [1, 2, 3]


def test_an_ack_all_consumer_takes_the_general_path() -> None:
    """Every delivery to an ack_all consumer needs an acknowledgement, even at QoS 0."""
    broker = Broker(clock=Clock())
    sink = RecordingSink()
    session, _ = broker.open_session("s", sink)
    queue = Queue("lossy", broker, lossy=True)
    consumer = Consumer(queue, session, qos=1, ack_all=True)
    consumer.sink = sink
    queue.attach(consumer)
    entry = Delivery(Message(destination="t", payload=b"x"))
    assert queue.put(entry) is None
    assert sink.got == [(entry, 1)]
    assert consumer.unacked == {entry.tag: entry}


def test_a_lone_consumer_that_cannot_take_drops_and_counts() -> None:
    broker = Broker(clock=Clock())
    sink = RecordingSink()
    session, _ = broker.open_session("s", sink, expiry=60.0)
    broker.subscribe(session, "t")
    sink.open = False
    broker.publish(Message(destination="t", payload=b"slow"))
    broker.detach(session, graceful=True)
    broker.publish(Message(destination="t", payload=b"away"))
    assert sink.got == []
    assert broker.stats.drops == {"slow-consumer": 1, "offline": 1}
