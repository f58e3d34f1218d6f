"""Sessions: takeover, persistence across connections, expiry, wills, shared subscriptions."""

from __future__ import annotations

from gateway.core import NEVER, Broker, CloseReason, Message, SubscribeOptions, Will
from gateway.store import MemoryStore
from tests.core.fakes import Clock, RecordingSink


def msg(topic: str, payload: bytes = b"x", qos: int = 1) -> Message:
    return Message(destination=topic, payload=payload, qos=qos)


def watch(broker: Broker, topic_filter: str) -> RecordingSink:
    sink = RecordingSink("watcher")
    session, _ = broker.open_session("watcher", sink)
    broker.subscribe(session, topic_filter)
    return sink


def test_takeover_closes_the_old_connection_and_keeps_a_persistent_session(broker: Broker) -> None:
    old = RecordingSink("old")
    session, present = broker.open_session("dev", old, clean=False, expiry=NEVER)
    assert present is False
    broker.subscribe(session, "cmd/dev", SubscribeOptions(qos=1))
    new = RecordingSink("new")
    resumed, present = broker.open_session("dev", new, clean=False, expiry=NEVER)
    assert old.closed is CloseReason.TAKEN_OVER
    assert present is True
    assert resumed is session
    broker.publish(msg("cmd/dev"))
    assert old.got == []
    assert len(new.got) == 1


def test_takeover_with_clean_start_discards_the_old_session(broker: Broker) -> None:
    old = RecordingSink()
    session, _ = broker.open_session("dev", old, clean=False, expiry=NEVER)
    broker.subscribe(session, "t")
    new = RecordingSink()
    fresh, present = broker.open_session("dev", new, clean=True)
    assert old.closed is CloseReason.TAKEN_OVER
    assert present is False
    assert fresh is not session
    assert broker.publish(msg("t")).routed == 0


def test_persistent_session_queues_while_offline_and_resends_inflight(broker: Broker) -> None:
    first = RecordingSink()
    session, _ = broker.open_session("dev", first, clean=False, expiry=NEVER)
    broker.subscribe(session, "t", SubscribeOptions(qos=1))
    broker.publish(msg("t", b"sent-not-acked"))
    broker.detach(session, graceful=False)
    broker.publish(msg("t", b"queued", qos=1))
    broker.publish(msg("t", b"qos0-dropped", qos=0))
    assert broker.stats.drops["offline"] == 1

    second = RecordingSink()
    resumed, present = broker.open_session("dev", second, clean=False, expiry=NEVER)
    assert present
    # In flight before the disconnect: resent first, as a redelivery; then what queued.
    assert second.payloads == [b"sent-not-acked", b"queued"]
    assert [d.redelivered for d, _ in second.got] == [True, False]
    assert [d.message.payload for d in resumed.inflight()] == [b"sent-not-acked", b"queued"]


def test_clean_session_ends_with_its_connection(broker: Broker) -> None:
    session, _ = broker.open_session("tmp", RecordingSink(), clean=True)
    broker.subscribe(session, "t")
    broker.detach(session, graceful=True)
    assert "tmp" not in broker.sessions
    assert broker.subscription_count == 0


def test_disconnected_session_expires(broker: Broker, clock: Clock) -> None:
    store = MemoryStore()
    broker = Broker(clock=clock, store=store)
    session, _ = broker.open_session("dev", RecordingSink(), clean=False, expiry=60)
    broker.subscribe(session, "t", SubscribeOptions(qos=1))
    assert [(s.topic_filter, s.qos) for s in store.sessions["dev"].subscriptions] == [("t", 1)]
    broker.detach(session, graceful=True)
    broker.publish(msg("t"))
    clock.advance(59)
    broker.tick()
    assert "dev" in broker.sessions
    clock.advance(2)
    broker.tick()
    assert "dev" not in broker.sessions
    assert broker.subscription_count == 0
    assert store.sessions == {}
    assert store.messages == {}


def test_will_is_published_on_abnormal_disconnect_only(broker: Broker) -> None:
    sink = watch(broker, "status/#")
    will = Will(message=msg("status/a", b"gone"))
    a, _ = broker.open_session("a", RecordingSink(), will=will)
    b, _ = broker.open_session("b", RecordingSink(), will=Will(message=msg("status/b", b"gone")))
    broker.detach(a, graceful=False)
    broker.detach(b, graceful=True)
    assert [d.message.destination for d in sink.take()] == ["status/a"]


def test_will_delay_fires_later_and_is_cancelled_by_reconnecting_in_time(
    broker: Broker, clock: Clock
) -> None:
    sink = watch(broker, "status/#")
    for client in ("late", "back"):
        will = Will(message=msg(f"status/{client}", b"gone"), delay=30)
        session, _ = broker.open_session(
            client, RecordingSink(), clean=False, expiry=NEVER, will=will
        )
        broker.detach(session, graceful=False)
    broker.tick()
    assert sink.got == []
    clock.advance(20)
    broker.open_session("back", RecordingSink(), clean=False, expiry=NEVER)
    clock.advance(11)
    broker.tick()
    assert [d.message.destination for d in sink.take()] == ["status/late"]


def test_will_is_published_when_the_session_ends_before_the_delay(
    broker: Broker, clock: Clock
) -> None:
    sink = watch(broker, "status/#")
    will = Will(message=msg("status/x", b"gone"), delay=100)
    session, _ = broker.open_session("x", RecordingSink(), clean=False, expiry=10, will=will)
    broker.detach(session, graceful=False)
    clock.advance(10)
    broker.tick()
    assert sink.payloads == [b"gone"]


def test_takeover_publishes_the_old_connections_will(broker: Broker) -> None:
    sink = watch(broker, "status/#")
    broker.open_session("dev", RecordingSink(), will=Will(message=msg("status/dev", b"gone")))
    broker.open_session("dev", RecordingSink())
    assert sink.payloads == [b"gone"]


def test_shared_subscription_members_compete(broker: Broker) -> None:
    plain = watch(broker, "jobs/+")
    members = []
    for name in ("m1", "m2"):
        sink = RecordingSink(name)
        session, _ = broker.open_session(name, sink)
        broker.subscribe(session, "$share/workers/jobs/+", SubscribeOptions(qos=1))
        members.append(sink)
    for i in range(10):
        broker.publish(msg(f"jobs/{i}", str(i).encode()))
    assert len(plain.got) == 10  # an ordinary subscriber still gets every one
    got = [set(sink.payloads) for sink in members]
    assert len(got[0]) == len(got[1]) == 5
    assert got[0] | got[1] == {str(i).encode() for i in range(10)}


def test_shared_group_goes_away_with_its_last_member(broker: Broker) -> None:
    session, _ = broker.open_session("m", RecordingSink())
    broker.subscribe(session, "$share/g/t")
    assert "$share/g/t" in broker.queues
    assert broker.unsubscribe(session, "$share/g/t")
    assert "$share/g/t" not in broker.queues
    assert broker.publish(msg("t")).routed == 0
