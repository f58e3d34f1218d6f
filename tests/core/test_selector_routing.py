"""Selectors in the broker: topic subscriptions filter at routing time, queue consumers with
selectors take only the entries they match and leave the others for other consumers (JMS).

The selector language itself is tested in test_selector.py; here it is how the core uses it:
which subscription or consumer gets what, in what order, with nothing lost or duplicated.
"""

from __future__ import annotations

import random

import pytest

from gateway.core import (
    Broker,
    Delivery,
    Headers,
    InvalidFilter,
    Kind,
    Message,
    Session,
    SubscribeOptions,
)
from gateway.core.selector import Selector, compile_selector
from gateway.store import MemoryStore
from tests.core.fakes import Clock, RecordingSink


def msg(topic: str, payload: str, **headers: str) -> Message:
    return Message(destination=topic, payload=payload.encode(), headers=Headers(headers.items()))


def job(payload: str, queue: str = "jobs", priority: int = 4, **headers: str) -> Message:
    return Message(
        destination=queue,
        kind=Kind.QUEUE,
        payload=payload.encode(),
        qos=1,
        priority=priority,
        headers=Headers(headers.items()),
    )


def connect(broker: Broker, client_id: str) -> tuple[Session, RecordingSink]:
    sink = RecordingSink(client_id)
    session, _ = broker.open_session(client_id, sink)
    return session, sink


def subscribe(broker: Broker, session: Session, topic_filter: str, selector: str | None) -> None:
    compiled = None if selector is None else compile_selector(selector)
    broker.subscribe(session, topic_filter, SubscribeOptions(qos=1, selector=compiled))


def worker(
    broker: Broker, name: str, selector: str | None, queue: str = "jobs", window: int = 1000
) -> tuple[Session, RecordingSink]:
    session, sink = connect(broker, name)
    compiled = None if selector is None else compile_selector(selector)
    broker.consume(session, queue, window=window, selector=compiled)
    return session, sink


def texts(sink: RecordingSink) -> list[str]:
    return [payload.decode() for payload in sink.payloads]


def ack_all(broker: Broker, sink: RecordingSink) -> list[str]:
    """Acknowledge everything ``sink`` received (and forget it); returns the payloads."""
    deliveries = sink.take()
    for delivery in deliveries:
        assert broker.ack(delivery)
    return [d.message.payload.decode() for d in deliveries]


# -- topic subscriptions --------------------------------------------------------------------


def test_a_topic_subscription_gets_only_the_messages_its_selector_matches(broker: Broker) -> None:
    lyon, lyon_sink = connect(broker, "lyon")
    everyone, everyone_sink = connect(broker, "all")
    subscribe(broker, lyon, "sensors/#", "site = 'lyon'")
    subscribe(broker, everyone, "sensors/#", None)
    routed = [
        broker.publish(msg("sensors/1", "a", site="lyon")).routed,
        broker.publish(msg("sensors/2", "b", site="paris")).routed,
        broker.publish(msg("sensors/3", "c")).routed,
        broker.publish(msg("sensors/4", "d", site="lyon")).routed,
    ]
    assert texts(lyon_sink) == ["a", "d"]
    assert texts(everyone_sink) == ["a", "b", "c", "d"]
    # A subscription the selector turns away does not count as a route.
    assert routed == [2, 1, 1, 2]


def test_overlapping_subscriptions_of_a_session_deliver_once_if_any_selector_matches(
    broker: Broker,
) -> None:
    session, sink = connect(broker, "s")
    subscribe(broker, session, "a/#", "x = '1'")
    subscribe(broker, session, "a/+", "x = '2'")
    subscribe(broker, session, "a/b", "y > 10")
    for i, headers in enumerate(
        [{"x": "1"}, {"x": "2"}, {"x": "3"}, {}, {"y": "11"}, {"x": "1", "y": "20"}, {"y": "9"}]
    ):
        broker.publish(msg("a/b", str(i), **headers))
    assert texts(sink) == ["0", "1", "4", "5"]  # one copy each, however many matched


def test_an_overlapping_subscription_without_a_selector_takes_everything(broker: Broker) -> None:
    session, sink = connect(broker, "s")
    subscribe(broker, session, "a/#", "x = '1'")
    subscribe(broker, session, "a/b", None)
    broker.publish(msg("a/b", "matches", x="1"))
    broker.publish(msg("a/b", "unfiltered", x="2"))
    broker.publish(msg("a/c", "filtered", x="2"))  # only a/# covers a/c: its selector decides
    assert texts(sink) == ["matches", "unfiltered"]


def test_unsubscribing_one_of_overlapping_subscriptions_leaves_the_other_selector(
    broker: Broker,
) -> None:
    session, sink = connect(broker, "s")
    subscribe(broker, session, "a/#", "x = '1'")
    subscribe(broker, session, "a/+", "x = '2'")
    broker.publish(msg("a/b", "before", x="2"))
    assert broker.unsubscribe(session, "a/+")
    broker.publish(msg("a/b", "gone", x="2"))
    broker.publish(msg("a/b", "kept", x="1"))
    assert texts(sink) == ["before", "kept"]


def test_subscribing_again_replaces_the_selector(broker: Broker) -> None:
    session, sink = connect(broker, "s")
    subscribe(broker, session, "t", "n = 1")
    broker.publish(msg("t", "one", n="1"))
    broker.publish(msg("t", "two", n="2"))
    subscribe(broker, session, "t", "n = 2")
    broker.publish(msg("t", "one again", n="1"))
    broker.publish(msg("t", "two again", n="2"))
    subscribe(broker, session, "t", None)
    broker.publish(msg("t", "any", n="3"))
    assert texts(sink) == ["one", "two again", "any"]


def test_missing_headers_are_unknown_so_neither_a_test_nor_its_negation_matches(
    broker: Broker,
) -> None:
    positive, positive_sink = connect(broker, "positive")
    negative, negative_sink = connect(broker, "negative")
    missing, missing_sink = connect(broker, "missing")
    subscribe(broker, positive, "t", "x = 'a'")
    subscribe(broker, negative, "t", "NOT x = 'a'")
    subscribe(broker, missing, "t", "x IS NULL")
    broker.publish(msg("t", "a", x="a"))
    broker.publish(msg("t", "b", x="b"))
    broker.publish(msg("t", "none"))
    assert texts(positive_sink) == ["a"]
    assert texts(negative_sink) == ["b"]
    assert texts(missing_sink) == ["none"]


def test_topic_selectors_see_standard_fields_and_json_payloads(broker: Broker) -> None:
    session, sink = connect(broker, "s")
    subscribe(broker, session, "t/#", "JMSPriority >= 7 OR payload.level = 'alarm'")
    broker.publish(Message(destination="t/1", payload=b"high", priority=8))
    broker.publish(Message(destination="t/1", payload=b"low", priority=3))
    broker.publish(Message(destination="t/2", payload=b'{"level": "alarm"}'))
    broker.publish(Message(destination="t/2", payload=b'{"level": "info"}'))
    assert texts(sink) == ["high", '{"level": "alarm"}']


def test_a_topic_delivery_is_never_a_redelivery_for_the_selector(broker: Broker) -> None:
    session, sink = connect(broker, "s")
    subscribe(broker, session, "t", "NOT JMSRedelivered")
    broker.publish(msg("t", "fresh"))
    assert texts(sink) == ["fresh"]


def test_selectors_are_refused_on_shared_subscriptions(broker: Broker) -> None:
    session, _ = connect(broker, "s")
    with pytest.raises(InvalidFilter, match="shared"):
        subscribe(broker, session, "$share/g/t", "x = 1")
    assert "$share/g/t" not in session.subscriptions


def test_retained_messages_on_subscribe_go_through_the_selector(broker: Broker) -> None:
    for site in ("lyon", "paris"):
        broker.publish(
            Message(
                destination=f"r/{site}",
                payload=site.encode(),
                retain=True,
                headers=Headers([("site", site)]),
            )
        )
    session, sink = connect(broker, "s")
    subscribe(broker, session, "r/#", "site = 'lyon'")
    assert texts(sink) == ["lyon"]


def test_a_persistent_sessions_selector_survives_a_restart(clock: Clock) -> None:
    store = MemoryStore()
    broker = Broker(store=store, clock=clock)
    session, _ = broker.open_session("p", RecordingSink("p"), clean=False, expiry=3600)
    subscribe(broker, session, "t", "x = '1'")
    broker.detach(session, graceful=True)
    restarted = Broker(store=MemoryStore(), clock=clock)
    restarted.restore(store.load())
    sink = RecordingSink("p")
    restarted.open_session("p", sink, clean=False, expiry=3600)
    restarted.publish(msg("t", "no", x="2"))
    restarted.publish(msg("t", "yes", x="1"))
    assert texts(sink) == ["yes"]


# -- queues: selective dispatch ---------------------------------------------------------------


def test_a_head_nobody_wants_does_not_block_the_entries_behind_it(broker: Broker) -> None:
    _, a = worker(broker, "a", "kind = 'a'")
    for i, kind in enumerate("bbabcab"):
        broker.publish(job(f"{kind}{i}", kind=kind))
    assert texts(a) == ["a2", "a5"]
    assert broker.queue_stats("jobs").depth == 5
    # The entries left wait, in their order, for a consumer that wants them.
    _, b = worker(broker, "b", "kind = 'b'")
    assert texts(b) == ["b0", "b1", "b3", "b6"]
    _, rest = worker(broker, "rest", None)
    assert texts(rest) == ["c4"]
    assert broker.queue_stats("jobs").depth == 0


def test_entries_wait_for_the_consumer_that_wants_them_with_its_order_kept(
    broker: Broker,
) -> None:
    _, a = worker(broker, "a", "kind = 'a'", window=1)
    _, b = worker(broker, "b", "kind = 'b'", window=1)
    for i, kind in enumerate("aabbab"):
        broker.publish(job(f"{kind}{i}", kind=kind))
    assert (texts(a), texts(b)) == (["a0"], ["b2"])
    got: dict[str, list[str]] = {"a": [], "b": []}
    while a.got or b.got:
        got["a"] += ack_all(broker, a)
        got["b"] += ack_all(broker, b)
    assert got == {"a": ["a0", "a1", "a4"], "b": ["b2", "b3", "b5"]}
    assert broker.queue_stats("jobs").depth == 0


def test_matching_consumers_with_credit_take_turns(broker: Broker) -> None:
    _, one = worker(broker, "one", "kind = 'a'")
    _, two = worker(broker, "two", "kind = 'a'")
    _, other = worker(broker, "other", "kind = 'b'")
    for i in range(6):
        broker.publish(job(f"a{i}", kind="a"))
    broker.publish(job("b", kind="b"))
    assert texts(one) == ["a0", "a2", "a4"]
    assert texts(two) == ["a1", "a3", "a5"]
    assert texts(other) == ["b"]


def test_a_matching_consumer_without_credit_is_passed_over(broker: Broker) -> None:
    _, full = worker(broker, "full", "kind = 'a'", window=1)
    _, free = worker(broker, "free", "kind = 'a'")
    for i in range(4):
        broker.publish(job(f"a{i}", kind="a"))
    assert texts(full) == ["a0"]
    assert texts(free) == ["a1", "a2", "a3"]


def test_higher_priority_first_for_each_consumer(broker: Broker) -> None:
    for i, (kind, priority) in enumerate([("a", 1), ("b", 9), ("a", 8), ("a", 1), ("b", 0)]):
        broker.publish(job(f"{kind}{i}", priority=priority, kind=kind))
    _, a = worker(broker, "a", "kind = 'a'")
    assert texts(a) == ["a2", "a0", "a3"]
    _, b = worker(broker, "b", "kind = 'b'")
    assert texts(b) == ["b1", "b4"]


def test_a_priority_selector_splits_a_queue(broker: Broker) -> None:
    _, urgent = worker(broker, "urgent", "JMSPriority >= 7")
    _, normal = worker(broker, "normal", "JMSPriority < 7")
    for priority in (9, 4, 7, 0, 6):
        broker.publish(job(f"p{priority}", priority=priority))
    assert texts(urgent) == ["p9", "p7"]
    assert texts(normal) == ["p4", "p0", "p6"]


def test_a_nacked_entry_goes_to_the_consumer_that_wants_redeliveries(broker: Broker) -> None:
    _, fresh = worker(broker, "fresh", "NOT JMSRedelivered")
    _, retry = worker(broker, "retry", "JMSRedelivered = TRUE")
    broker.publish(job("m"))
    [first] = fresh.take()
    assert first.count == 1
    assert not first.redelivered
    assert retry.got == []
    assert broker.nack(first, requeue=True)
    assert fresh.got == []
    [again] = retry.take()
    assert again.message.payload == b"m"
    assert again.redelivered
    assert broker.ack(again)
    assert broker.queue_stats("jobs").depth == 0


def test_unacked_entries_of_a_consumer_that_leaves_go_only_to_consumers_that_want_them(
    broker: Broker,
) -> None:
    leaving, leaving_sink = worker(broker, "leaving", None)
    broker.publish(job("a", kind="a"))
    broker.publish(job("b", kind="b"))
    assert texts(leaving_sink) == ["a", "b"]
    _, a = worker(broker, "a", "kind = 'a'")
    broker.detach(leaving, graceful=True)
    assert texts(a) == ["a"]
    assert broker.queue_stats("jobs").depth == 1  # "b" waits


def test_expired_entries_are_dropped_while_scanning(broker: Broker, clock: Clock) -> None:
    _, a = worker(broker, "a", "kind = 'a'", window=1)
    broker.publish(job("a0", kind="a"))
    broker.publish(
        Message(
            destination="jobs",
            kind=Kind.QUEUE,
            payload=b"a1",
            qos=1,
            expiry=clock.now + 5,
            headers=Headers([("kind", "a")]),
        )
    )
    broker.publish(job("a2", kind="a"))
    clock.advance(10)
    assert ack_all(broker, a) == ["a0"]
    assert texts(a) == ["a2"]
    assert broker.queue_stats("jobs").expired == 1


def test_changing_the_selector_on_subscribing_again(broker: Broker) -> None:
    session, sink = worker(broker, "w", "kind = 'a'")
    for i, kind in enumerate("abab"):
        broker.publish(job(f"{kind}{i}", kind=kind))
    assert texts(sink) == ["a0", "a2"]
    queue = broker.queues["jobs"]
    # The same consumer, now with another selector: what waits and matches comes at once,
    # and what it already holds stays its own to acknowledge.
    consumer = broker.consume(session, "jobs", window=1000, selector=compile_selector("kind = 'b'"))
    assert consumer.selector is not None
    assert consumer.selector.text == "kind = 'b'"
    assert texts(sink) == ["a0", "a2", "b1", "b3"]
    broker.publish(job("a4", kind="a"))
    broker.publish(job("b5", kind="b"))
    assert texts(sink)[4:] == ["b5"]
    assert queue.depth == 1
    assert queue.selective
    # Without a selector it takes everything, and the queue goes back to plain dispatch.
    broker.consume(session, "jobs", window=1000, selector=None)
    assert texts(sink)[5:] == ["a4"]
    assert not queue.selective
    assert ack_all(broker, sink) == ["a0", "a2", "b1", "b3", "b5", "a4"]
    assert broker.queue_stats("jobs").acked == 6


def test_the_queue_is_selective_only_while_a_consumer_has_a_selector(broker: Broker) -> None:
    selective, _ = worker(broker, "selective", "kind = 'a'")
    worker(broker, "plain", None)
    queue = broker.queues["jobs"]
    assert queue.selective
    broker.cancel(selective, "jobs")
    assert not queue.selective


def test_a_consumer_that_becomes_writable_gets_its_waiting_entries_first(broker: Broker) -> None:
    """Between a connection's buffer draining and the listener's ``resume`` a new entry
    must not overtake the entries that waited for that consumer."""
    for selector in (None, "kind = 'a'"):  # as a queue without selectors does
        broker = Broker(clock=Clock())
        session, sink = worker(broker, "w", selector)
        sink.open = False
        broker.publish(job("first", kind="a"))
        broker.publish(job("second", kind="a"))
        sink.open = True  # the buffer drained; resume() has not been called yet
        broker.publish(job("third", kind="a"))
        broker.resume(session)
        assert texts(sink) == ["first", "second", "third"], selector


def test_an_idle_consumer_still_gets_new_entries_behind_unwanted_ones(broker: Broker) -> None:
    _, a = worker(broker, "a", "kind = 'a'", window=1)
    broker.publish(job("a0", kind="a"))
    broker.publish(job("a1", kind="a"))  # waits: no credit
    assert ack_all(broker, a) == ["a0"]
    assert ack_all(broker, a) == ["a1"]
    broker.publish(job("z", kind="z"))  # nobody wants it
    broker.publish(job("a2", kind="a"))
    assert texts(a) == ["a2"]


# -- nothing lost, nothing twice ------------------------------------------------------------

SELECTORS = (None, "k = 'a'", "k IN ('a', 'b')", "k = 'b' OR n > 50", "NOT k = 'c'", "n < 20")


def _random_run(seed: int, *, nacks: bool) -> None:
    """Random publishes, acks (and nacks), and connections that stop and start being
    writable (with the listener's resume sometimes late); then the invariants."""
    rng = random.Random(seed)
    broker = Broker(clock=Clock())
    sinks: dict[str, RecordingSink] = {}
    sessions: dict[str, Session] = {}
    matchers: dict[str, Selector | None] = {}

    def add(name: str, selector: str | None, window: int) -> None:
        sessions[name], sinks[name] = worker(broker, name, selector, window=window)
        matchers[name] = None if selector is None else compile_selector(selector)
        held[name], first_seen[name] = [], []

    published: list[str] = []
    acked: list[str] = []
    held: dict[str, list[Delivery]] = {}
    first_seen: dict[str, list[int]] = {}
    for i in range(rng.randint(1, 4)):
        add(f"w{i}", rng.choice(SELECTORS), rng.randint(1, 4))
    queue = broker.queues["jobs"]

    def collect() -> list[Delivery]:
        got = []
        for name, sink in sinks.items():
            for delivery in sink.take():
                matcher = matchers[name]
                redelivered = delivery.count > 1
                assert matcher is None or matcher.matches(
                    delivery.message, redelivered=redelivered
                ), (name, delivery.message)
                if delivery.count == 1:
                    first_seen[name].append(int(delivery.message.headers["seq"]))
                held[name].append(delivery)
                got.append(delivery)
        return got

    def publish(seq: int) -> Message:
        headers = {"seq": str(seq), "n": str(rng.randint(0, 99))}
        k = rng.choice("abcd-")
        if k != "-":
            headers["k"] = k
        published.append(str(seq))
        message = job(str(seq), **headers)
        broker.publish(message)
        return message

    def settle(name: str) -> None:
        delivery = held[name].pop(rng.randrange(len(held[name])))
        if nacks and rng.random() < 0.2:
            assert broker.nack(delivery, requeue=True)
        else:
            assert broker.ack(delivery)
            acked.append(delivery.message.payload.decode())

    for seq in range(300):
        op = rng.random()
        name = rng.choice(list(sinks))
        if op < 0.45:
            publish(seq)
        elif op < 0.55:
            sinks[name].open = not sinks[name].open
            if sinks[name].open and rng.random() < 0.5:
                broker.resume(sessions[name])  # else resumed later: the listener's lag
        elif op < 0.6:
            broker.resume(sessions[name])
        elif held[name]:
            settle(name)
        collect()
    # Everyone writable and resumed, everything held acknowledged until nothing moves: what
    # is left in the queue is what no consumer wants.
    for name in sinks:
        sinks[name].open = True
        broker.resume(sessions[name])
    collect()
    while any(held.values()):
        for name in sinks:
            while held[name]:
                settle(name)
        collect()
    for entry in queue.entries():
        assert not any(c.wants(entry) for c in queue.consumers), entry.message
    # New messages go at once to a consumer that wants them and has credit.
    for seq in range(1000, 1050):
        message = publish(seq)
        if not any(d.message is message for d in collect()):
            [entry] = [e for e in queue.entries() if e.message is message]
            assert not any(c.can_take(1) and c.wants(entry) for c in queue.consumers)
    # Drain: a consumer without a selector takes whatever nobody wanted.
    add("catch-all", None, 1000)
    collect()
    while any(held.values()):
        for name in sinks:
            while held[name]:
                delivery = held[name].pop(0)
                assert broker.ack(delivery)
                acked.append(delivery.message.payload.decode())
        collect()
    assert sorted(acked, key=int) == published  # every message acked once: none lost or doubled
    assert broker.queue_stats("jobs").depth == 0
    if not nacks:
        # Without redeliveries each consumer saw its messages in publish order.
        for name, seen in first_seen.items():
            assert seen == sorted(seen), name


@pytest.mark.parametrize("seed", range(40))
def test_random_runs_lose_nothing_duplicate_nothing_and_keep_each_consumers_order(
    seed: int,
) -> None:
    _random_run(seed, nacks=False)


@pytest.mark.parametrize("seed", range(40))
def test_random_runs_with_nacks_lose_nothing_and_duplicate_nothing(seed: int) -> None:
    _random_run(seed, nacks=True)
