"""Named queues: competing consumers, acks, redelivery, dead-lettering, expiry, limits."""

from __future__ import annotations

from gateway.core import Broker, Kind, Message, Overflow, QueuePolicy, Session, Status
from gateway.store import MemoryStore
from tests.core.fakes import Clock, RecordingSink


def job(payload: bytes | str, queue: str = "jobs", **fields: object) -> Message:
    data = payload.encode() if isinstance(payload, str) else payload
    return Message(destination=queue, kind=Kind.QUEUE, payload=data, qos=1, **fields)  # type: ignore[arg-type]


def worker(
    broker: Broker, name: str, queue: str = "jobs", **kw: object
) -> tuple[Session, RecordingSink]:
    sink = RecordingSink(name)
    session, _ = broker.open_session(name, sink)
    broker.consume(session, queue, **kw)  # type: ignore[arg-type]
    return session, sink


def test_competing_consumers_get_disjoint_sets_whose_union_is_everything(broker: Broker) -> None:
    sinks = [worker(broker, f"w{i}", window=1000)[1] for i in range(3)]
    for i in range(300):
        assert broker.publish(job(str(i))).accepted
    seen = [set(sink.payloads) for sink in sinks]
    assert all(len(s) == 100 for s in seen)  # round-robin over consumers with credit
    assert seen[0].isdisjoint(seen[1])
    assert seen[1].isdisjoint(seen[2])
    assert seen[0].isdisjoint(seen[2])
    assert set().union(*seen) == {str(i).encode() for i in range(300)}


def test_messages_wait_in_the_queue_until_a_consumer_comes(broker: Broker) -> None:
    for i in range(3):
        broker.publish(job(str(i)))
    assert broker.queue_stats("jobs").depth == 3
    _, sink = worker(broker, "late")
    assert sink.payloads == [b"0", b"1", b"2"]
    assert broker.queue_stats("jobs").depth == 0


def test_credit_window_bounds_unacked_deliveries(broker: Broker) -> None:
    _, sink = worker(broker, "w", window=2)
    for i in range(5):
        broker.publish(job(str(i)))
    assert sink.payloads == [b"0", b"1"]
    assert broker.queue_stats("jobs").in_flight == 2
    for delivery in sink.take():
        broker.ack(delivery)
    assert sink.payloads == [b"2", b"3"]
    assert broker.queue_stats("jobs").acked == 2


def test_unacked_message_goes_to_another_consumer_when_its_consumer_leaves(broker: Broker) -> None:
    first, first_sink = worker(broker, "first", window=1)
    _, second_sink = worker(broker, "second", window=1)
    broker.publish(job("a"))  # -> first
    broker.publish(job("b"))  # -> second
    broker.publish(job("c"))  # waits: both are at their window
    assert first_sink.payloads == [b"a"]
    assert second_sink.payloads == [b"b"]
    broker.detach(first, graceful=False)  # the connection died without acking "a"
    assert second_sink.payloads == [b"b"]
    broker.ack(second_sink.take()[0])
    redelivered = second_sink.take()[0]
    assert redelivered.message.payload == b"a"
    assert redelivered.redelivered
    assert redelivered.count == 2
    broker.ack(redelivered)
    assert second_sink.payloads == [b"c"]
    assert broker.queue_stats("jobs").redelivered == 1


def test_cancel_returns_unacked_messages(broker: Broker) -> None:
    session, _sink = worker(broker, "w")
    broker.publish(job("a"))
    assert broker.cancel(session, "jobs") is True
    assert broker.cancel(session, "jobs") is False
    assert broker.queue_stats("jobs").depth == 1
    assert broker.queue_stats("jobs").consumers == 0


def test_nack_with_requeue_redelivers_then_dead_letters_past_max_deliveries(broker: Broker) -> None:
    broker.declare_queue("jobs", QueuePolicy(max_deliveries=3, dead_letter="jobs.dlq"))
    _, sink = worker(broker, "w")
    broker.publish(job("poison", headers={"tenant": "t1"}))
    for attempt in range(1, 4):
        [delivery] = sink.take()
        assert delivery.count == attempt
        assert broker.nack(delivery, requeue=True)
    assert sink.got == []
    [dead] = broker.queues["jobs.dlq"].entries()
    assert dead.message.payload == b"poison"
    assert dead.message.headers == {
        "tenant": "t1",
        "x-death-reason": "max-deliveries",
        "x-death-queue": "jobs",
        "x-death-destination": "jobs",
        "x-delivery-count": "3",
    }
    assert broker.queue_stats("jobs").dead_lettered == 1


def test_nack_without_requeue_rejects_to_the_dlq_or_drops(broker: Broker) -> None:
    broker.declare_queue("jobs", QueuePolicy(dead_letter="dlq"))
    _, sink = worker(broker, "w")
    broker.publish(job("bad"))
    broker.nack(sink.take()[0], requeue=False)
    assert broker.queues["dlq"].entries()[0].message.headers["x-death-reason"] == "rejected"

    _, other = worker(broker, "w2", queue="plain")
    broker.publish(job("bad", queue="plain"))
    broker.nack(other.take()[0], requeue=False)
    assert broker.queue_stats("plain").dropped == 1
    assert broker.stats.drops["rejected"] == 1


def test_higher_priority_first_fifo_within_a_priority(broker: Broker) -> None:
    for payload, priority in [("low1", 1), ("high1", 9), ("mid", 5), ("high2", 9), ("low2", 1)]:
        broker.publish(job(payload, priority=priority))
    _, sink = worker(broker, "w")
    assert sink.payloads == [b"high1", b"high2", b"mid", b"low1", b"low2"]


def test_expired_messages_are_dropped_or_dead_lettered_and_counted(
    broker: Broker, clock: Clock
) -> None:
    broker.declare_queue("jobs", QueuePolicy(dead_letter="dlq"))
    broker.publish(job("short", expiry=clock.now + 5))
    broker.publish(job("long", expiry=clock.now + 500))
    broker.publish(job("plain-short", queue="plain", expiry=clock.now + 5))
    clock.advance(10)
    _, sink = worker(broker, "w")
    assert sink.payloads == [b"long"]
    assert broker.queue_stats("jobs").expired == 1
    assert broker.queues["dlq"].entries()[0].message.headers["x-death-reason"] == "expired"
    broker.tick()  # the periodic sweep finds the one nobody consumed
    assert broker.queue_stats("plain").expired == 1
    assert broker.queue_stats("plain").depth == 0


def test_queue_ttl_caps_message_lifetime(broker: Broker, clock: Clock) -> None:
    broker.declare_queue("jobs", QueuePolicy(ttl=60))
    broker.publish(job("a"))
    broker.publish(job("b", expiry=clock.now + 10))
    clock.advance(30)
    broker.tick()
    assert [e.message.payload for e in broker.queues["jobs"].entries()] == [b"a"]
    clock.advance(31)
    broker.tick()
    assert broker.queue_stats("jobs").depth == 0
    assert broker.queue_stats("jobs").expired == 2


def test_reject_publish_refuses_when_full(broker: Broker) -> None:
    broker.declare_queue("jobs", QueuePolicy(max_length=2, overflow=Overflow.REJECT_PUBLISH))
    assert broker.publish(job("1")).accepted
    assert broker.publish(job("2")).accepted
    result = broker.publish(job("3"))
    assert result.status is Status.REFUSED
    assert result.reason == "queue-full"
    assert [e.message.payload for e in broker.queues["jobs"].entries()] == [b"1", b"2"]
    assert broker.queue_stats("jobs").refused == 1


def test_drop_head_makes_room_by_dropping_the_oldest(broker: Broker) -> None:
    broker.declare_queue("jobs", QueuePolicy(max_bytes=10, dead_letter="dlq"))
    for payload in ["aaaa", "bbbb", "cccc"]:
        assert broker.publish(job(payload)).accepted
    assert [e.message.payload for e in broker.queues["jobs"].entries()] == [b"bbbb", b"cccc"]
    assert broker.queues["dlq"].entries()[0].message.headers["x-death-reason"] == "max-length"


def test_configured_policies_apply_to_queues_created_on_first_use(clock: Clock) -> None:
    broker = Broker(clock=clock, queues=[("orders", QueuePolicy(max_length=1))])
    broker.publish(job("1", queue="orders"))
    broker.publish(job("2", queue="orders"))
    assert broker.queue_stats("orders").depth == 1


def test_persistent_entries_are_stored_once_and_removed_on_ack(clock: Clock) -> None:
    store = MemoryStore()
    broker = Broker(clock=clock, store=store)
    broker.publish(job("kept"))
    broker.publish(Message(destination="jobs", kind=Kind.QUEUE, payload=b"volatile", qos=0))
    [(message_id, _entry)] = store.queues["jobs"].items()
    assert store.messages[message_id].payload == b"kept"
    _, sink = worker(broker, "w")
    for delivery in sink.take():
        broker.ack(delivery)
    assert store.queues["jobs"] == {}
    assert store.messages == {}


def test_temporary_queue_vanishes_with_its_owner(broker: Broker) -> None:
    sink = RecordingSink()
    session, _ = broker.open_session("requester", sink)
    name = broker.temporary_queue(session)
    broker.consume(session, name)
    broker.publish(job("reply", queue=name))
    assert sink.payloads == [b"reply"]
    broker.detach(session, graceful=True)
    assert name not in broker.queues


def test_without_auto_create_only_declared_queues_take_messages() -> None:
    broker = Broker(queues=[("orders", QueuePolicy())], auto_create_queues=False)
    result = broker.publish(job("lost?", queue="typo"))
    assert (result.status, result.reason) == (Status.REFUSED, "unknown-queue")
    assert "typo" not in broker.queues
    assert broker.publish(job("kept", queue="orders")).accepted  # declared in the config
    assert broker.queue_stats("orders").depth == 1
    assert Broker().publish(job("made", queue="typo")).accepted  # the default creates
