"""What the core stores, and what ``Broker.restore`` rebuilds from the SQLite store
after a restart: sessions, subscriptions, queues, in-flight deliveries, retained
messages, durable subscriptions. A restart here is: commit, close, reopen, restore
into a new broker."""

from __future__ import annotations

from pathlib import Path

from gateway.codecs import mqtt
from gateway.core import (
    NEVER,
    Broker,
    Kind,
    Message,
    QueuePolicy,
    SubscribeOptions,
)
from gateway.store.sqlite import SQLiteStore
from tests.core.fakes import Clock, RecordingSink
from tests.listeners.mqtt_harness import Client

P = mqtt.Properties
HOUR = P(session_expiry_interval=3600)


def flush(store: SQLiteStore) -> None:
    batch = store.take_batch()
    if batch is not None:
        store.commit(batch)
        store.committed(batch, ok=True)


def start(path: Path, clock: Clock, **kwargs: object) -> tuple[Broker, SQLiteStore, dict[str, int]]:
    store = SQLiteStore(path)
    store.open()
    broker = Broker(store=store, clock=clock, **kwargs)  # type: ignore[arg-type]
    counts = broker.restore(store.load())
    return broker, store, counts


def restart(
    store: SQLiteStore, clock: Clock, **kwargs: object
) -> tuple[Broker, SQLiteStore, dict[str, int]]:
    flush(store)
    store.close()
    return start(store.dir, clock, **kwargs)


def stored_entries(store: SQLiteStore) -> list[tuple[str, int]]:
    assert store._db is not None
    return store._db.execute("SELECT queue, message_id FROM entries ORDER BY seq").fetchall()


def msg(topic: str, payload: bytes = b"x", qos: int = 1, **fields: object) -> Message:
    return Message(destination=topic, payload=payload, qos=qos, **fields)  # type: ignore[arg-type]


def to_queue(name: str, payload: bytes, qos: int = 1) -> Message:
    return Message(destination=name, payload=payload, qos=qos, kind=Kind.QUEUE)


def subscribe(c: Client, topic_filter: str, options: int) -> list[mqtt.Packet]:
    """Subscribe; returns what followed the SUBACK (a queue's waiting messages)."""
    c.send(mqtt.Subscribe(packet_id=1, subscriptions=((topic_filter, options),)))
    ack, *rest = c.received()
    assert isinstance(ack, mqtt.SubAck)
    return rest


# -- sessions and subscriptions --------------------------------------------------------------


def test_sessions_come_back_offline_with_their_subscriptions(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    session, _ = broker.open_session("dev", RecordingSink(), clean=False, expiry=3600)
    plain = SubscribeOptions(
        qos=1, no_local=True, retain_as_published=True, retain_handling=1, subscription_id=5
    )
    shared = SubscribeOptions(qos=2, subscription_id=6)
    broker.subscribe(session, "a/+", plain)
    broker.subscribe(session, "$share/g/b/#", shared)
    forever, _ = broker.open_session("kept", RecordingSink(), clean=False, expiry=NEVER)
    broker.subscribe(forever, "c", SubscribeOptions(qos=1))
    broker.detach(session, graceful=True)
    broker.detach(forever, graceful=True)
    clock.advance(1000)

    broker, store, counts = restart(store, clock)
    try:
        assert counts["sessions"] == 2
        dev = broker.sessions["dev"]
        assert not dev.connected
        assert dev.expiry == 3600
        assert dev.expires_at == clock.now + 3600  # the expiry starts again at restart
        assert dev.subscriptions == {"a/+": plain, "$share/g/b/#": shared}
        assert broker.sessions["kept"].expires_at is None
        # The shared group is back, with dev as a member (attached when it returns).
        assert "$share/g/b/#" in broker.queues
        assert "$share/g/b/#" in dev.consumers

        assert broker.publish(msg("a/1", b"mine")).routed == 1
        assert broker.publish(msg("b/x", b"group")).routed == 1
        sink = RecordingSink()
        _, present = broker.open_session("dev", sink, clean=False, expiry=3600)
        assert present
        assert sorted(sink.payloads) == [b"group", b"mine"]
        by_payload = {d.message.payload: d for d, _ in sink.got}
        assert by_payload[b"mine"].subscription_ids == (5,)
        assert by_payload[b"group"].subscription_ids == (6,)
    finally:
        store.close()


def test_a_session_ended_before_the_restart_stays_gone(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    session, _ = broker.open_session("dev", RecordingSink(), clean=False, expiry=10)
    broker.subscribe(session, "t", SubscribeOptions(qos=1))
    broker.detach(session, graceful=True)
    broker.publish(msg("t"))
    flush(store)
    clock.advance(11)
    broker.tick()
    broker, store, counts = restart(store, clock)
    try:
        assert broker.sessions == {}
        assert (counts["sessions"], counts["messages"]) == (0, 0)
        assert stored_entries(store) == []
    finally:
        store.close()


def test_an_expiry_changed_at_disconnect_is_the_one_restored(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    session, _ = broker.open_session("dev", RecordingSink(), clean=False, expiry=3600)
    broker.detach(session, graceful=True, expiry=120)  # MQTT 5 DISCONNECT with an expiry
    broker, store, _ = restart(store, clock)
    try:
        assert broker.sessions["dev"].expiry == 120
    finally:
        store.close()


# -- in-flight state -------------------------------------------------------------------------


def test_in_flight_messages_are_resent_with_the_same_packet_ids_and_dup(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    sub, pub = Client(broker, clock), Client(broker, clock)
    sub.connect("dev", clean_start=False, properties=HOUR)
    subscribe(sub, "t", 2)
    pub.connect("pub")
    pub.send(mqtt.Publish(topic="t", payload=b"one", qos=1, packet_id=1))
    [first] = sub.received()
    pub.send(mqtt.Publish(topic="t", payload=b"two", qos=2, packet_id=2))
    [second] = sub.received()
    assert isinstance(first, mqtt.Publish)
    assert isinstance(second, mqtt.Publish)
    assert second.packet_id is not None
    sub.send(mqtt.PubRec(packet_id=second.packet_id))  # QoS 2, one step done
    flush(store)  # the PUBREL waits for that step's commit
    assert sub.received() == [mqtt.PubRel(packet_id=second.packet_id)]
    sub.drop()
    pub.send(mqtt.Publish(topic="t", payload=b"three", qos=1, packet_id=3))  # queued offline
    flush(store)
    assert [type(p) for p in pub.received()] == [mqtt.PubAck, mqtt.PubRec, mqtt.PubAck]

    broker, store, counts = restart(store, clock)
    try:
        assert counts["in_flight"] == 2
        assert counts["messages"] == 3
        again = Client(broker, clock)
        ack = again.connect("dev", clean_start=False, properties=HOUR)
        assert ack.session_present
        resent, released, queued = again.after_connack
        assert isinstance(resent, mqtt.Publish)
        assert (resent.payload, resent.packet_id, resent.dup) == (b"one", first.packet_id, True)
        assert released == mqtt.PubRel(packet_id=second.packet_id)
        assert isinstance(queued, mqtt.Publish)
        assert (queued.payload, queued.dup) == (b"three", False)
        assert queued.packet_id not in (first.packet_id, second.packet_id)
        # Settled now: the store follows.
        again.send(mqtt.PubAck(packet_id=first.packet_id))
        again.send(mqtt.PubComp(packet_id=second.packet_id))
        assert queued.packet_id is not None
        again.send(mqtt.PubAck(packet_id=queued.packet_id))
        flush(store)
        assert stored_entries(store) == []
    finally:
        store.close()


def test_an_inbound_qos2_message_awaiting_pubrel_is_not_published_twice(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    watcher = broker.open_session("watcher", RecordingSink(), clean=False, expiry=3600)[0]
    broker.subscribe(watcher, "t", SubscribeOptions(qos=2))
    broker.detach(watcher, graceful=True)
    pub = Client(broker, clock)
    pub.connect("pub", clean_start=False, properties=HOUR)
    pub.send(mqtt.Publish(topic="t", payload=b"once", qos=2, packet_id=9))
    assert pub.received() == []  # PUBREC says "stored": it waits for the commit
    flush(store)
    assert pub.received() == [mqtt.PubRec(packet_id=9)]

    broker, store, _ = restart(store, clock)
    try:
        assert broker.sessions["pub"].incomplete == {9}
        pub = Client(broker, clock)
        pub.connect("pub", clean_start=False, properties=HOUR)
        pub.send(mqtt.Publish(topic="t", payload=b"once", qos=2, packet_id=9, dup=True))
        pub.send(mqtt.PubRel(packet_id=9))
        flush(store)
        assert pub.received() == [mqtt.PubRec(packet_id=9), mqtt.PubComp(packet_id=9)]
        sink = RecordingSink()
        broker.open_session("watcher", sink, clean=False, expiry=3600)
        assert sink.payloads == [b"once"]
    finally:
        store.close()


def test_queue_messages_sent_before_the_restart_come_back_redelivered(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    worker, _ = broker.open_session("w", (sink := RecordingSink()))
    broker.consume(worker, "jobs", qos=1, ack_all=True)  # a STOMP client-ack consumer
    for i in range(3):
        broker.publish(to_queue("jobs", bytes([i])))
    first, _, _ = sink.take()
    broker.ack(first)

    broker, store, counts = restart(store, clock)
    try:
        assert (counts["queues"], counts["messages"]) == (1, 2)
        broker.publish(to_queue("jobs", b"new"))
        worker, _ = broker.open_session("w2", (sink := RecordingSink()))
        broker.consume(worker, "jobs", qos=1, ack_all=True)
        got = sink.take()
        assert [d.message.payload for d in got] == [b"\x01", b"\x02", b"new"]
        assert [d.redelivered for d in got] == [True, True, False]
    finally:
        store.close()


def test_a_queue_message_past_pubrec_goes_to_the_next_consumer_as_a_publish(
    tmp_path: Path,
) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    w1 = Client(broker, clock)
    w1.connect("w1")
    subscribe(w1, "$queue/jobs", 2)
    broker.publish(to_queue("jobs", b"job", qos=2))
    [publish] = w1.received()
    assert isinstance(publish, mqtt.Publish)
    assert publish.packet_id is not None
    w1.send(mqtt.PubRec(packet_id=publish.packet_id))
    flush(store)
    assert w1.received() == [mqtt.PubRel(packet_id=publish.packet_id)]

    broker, store, _ = restart(store, clock)
    try:
        w2 = Client(broker, clock)
        w2.connect("w2")
        # Not a PUBREL for a packet id this connection never saw: the message itself.
        [again] = subscribe(w2, "$queue/jobs", 2)
        assert isinstance(again, mqtt.Publish)
        assert again.payload == b"job"
    finally:
        store.close()


# -- acknowledgements and the durability modes -----------------------------------------------


def _publisher_and_subscriber(broker: Broker, clock: Clock) -> Client:
    sub = Client(broker, clock)
    sub.connect("dev", clean_start=False, properties=HOUR)
    subscribe(sub, "t", 2)
    sub.drop()
    pub = Client(broker, clock)
    pub.connect("pub", clean_start=False, properties=HOUR)
    return pub


def test_sync_mode_acknowledges_once_the_message_is_committed(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    try:
        pub = _publisher_and_subscriber(broker, clock)
        flush(store)
        pub.send(mqtt.Publish(topic="t", payload=b"1", qos=1, packet_id=1))
        pub.send(mqtt.Publish(topic="t", payload=b"2", qos=2, packet_id=2))
        assert pub.received() == []
        flush(store)
        assert pub.received() == [mqtt.PubAck(packet_id=1), mqtt.PubRec(packet_id=2)]
        assert len(stored_entries(store)) == 2
    finally:
        store.close()


def test_async_mode_acknowledges_at_once_and_commits_in_the_background(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock, durability="async")
    try:
        pub = _publisher_and_subscriber(broker, clock)
        pub.send(mqtt.Publish(topic="t", payload=b"1", qos=1, packet_id=1))
        pub.send(mqtt.Publish(topic="t", payload=b"2", qos=2, packet_id=2))
        assert pub.received() == [mqtt.PubAck(packet_id=1), mqtt.PubRec(packet_id=2)]
        pub.send(mqtt.PubRel(packet_id=2))
        assert pub.received() == [mqtt.PubComp(packet_id=2)]
        assert stored_entries(store) == []  # not yet: the loss window
        flush(store)
        assert len(stored_entries(store)) == 2
    finally:
        store.close()


def test_an_async_queue_in_a_sync_gateway_does_not_wait(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock, queues=[("fast", QueuePolicy(durability="async"))])
    try:
        pub = Client(broker, clock)
        pub.connect("pub")
        pub.send(mqtt.Publish(topic="$queue/fast", payload=b"f", qos=1, packet_id=1))
        assert pub.received() == [mqtt.PubAck(packet_id=1)]
        pub.send(mqtt.Publish(topic="$queue/safe", payload=b"s", qos=1, packet_id=2))
        assert pub.received() == []
        flush(store)
        assert pub.received() == [mqtt.PubAck(packet_id=2)]
        assert {q for q, _ in stored_entries(store)} == {"fast", "safe"}
    finally:
        store.close()


# -- what is never stored --------------------------------------------------------------------


def test_qos0_never_touches_the_store(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    try:
        online, _ = broker.open_session("online", RecordingSink(), clean=False, expiry=3600)
        broker.subscribe(online, "t", SubscribeOptions(qos=0))
        offline, _ = broker.open_session("offline", RecordingSink(), clean=False, expiry=3600)
        broker.subscribe(offline, "t", SubscribeOptions(qos=0))
        broker.detach(offline, graceful=True)
        worker, _ = broker.open_session("w", RecordingSink())
        broker.consume(worker, "jobs", qos=0)
        broker.declare_queue("idle")
        flush(store)

        broker.publish(msg("t", qos=0))
        broker.publish(to_queue("idle", b"q0", qos=0))
        broker.publish(msg("t/x", b"retained", qos=0, retain=True))
        # QoS 1 messages that travel at QoS 0 (the subscription's QoS) are not stored
        # either: nothing about them is written, not even a deletion.
        broker.publish(msg("t", qos=1))
        assert store.take_batch() is None
        # A QoS 1 queue message sent at QoS 0 is stored, then done at once.
        broker.publish(to_queue("jobs", b"j"))
        flush(store)
        assert stored_entries(store) == []
        assert broker.queues["idle"].depth == 1
    finally:
        store.close()


def test_memory_queues_and_memory_mode_never_touch_the_store(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(
        tmp_path, clock, queues=[("volatile", QueuePolicy(durability="memory"))]
    )
    try:
        broker.publish(to_queue("volatile", b"v"))
        assert store.take_batch() is None
        broker.publish(to_queue("kept", b"k"))
        flush(store)
        assert [q for q, _ in stored_entries(store)] == ["kept"]
    finally:
        store.close()

    broker, store, _ = start(
        tmp_path / "m",
        clock,
        durability="memory",
        queues=[("kept", QueuePolicy(durability="sync"))],
    )
    try:
        session, _ = broker.open_session("dev", RecordingSink(), clean=False, expiry=3600)
        broker.subscribe(session, "t", SubscribeOptions(qos=1))
        broker.subscribe(session, "$share/g/t", SubscribeOptions(qos=1))
        broker.detach(session, graceful=True)
        broker.publish(msg("t", qos=1, retain=True))
        broker.publish(to_queue("other", b"o"))
        assert store.take_batch() is None
        broker.publish(to_queue("kept", b"k"))
        assert store.take_batch() is not None
    finally:
        store.close()


def test_deleting_a_temporary_queue_writes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    try:
        session, _ = broker.open_session("requester", RecordingSink())
        name = broker.temporary_queue(session)
        broker.publish(to_queue(name, b"reply"))
        broker.detach(session, graceful=True)  # its temporary queues go with it
        assert name not in broker.queues
        assert store.take_batch() is None
    finally:
        store.close()


# -- retained messages and durable subscriptions ---------------------------------------------


def test_retained_messages_come_back_except_qos0_and_expired_ones(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    broker.publish(msg("s/kept", b"k", qos=1, retain=True))
    broker.publish(msg("s/volatile", b"v", qos=0, retain=True))
    broker.publish(msg("s/replaced", b"old", qos=1, retain=True))
    broker.publish(msg("s/expiring", b"e", qos=1, retain=True, expiry=clock.now + 10))
    flush(store)
    broker.publish(msg("s/replaced", b"new", qos=0, retain=True))  # clears the stored one
    clock.advance(20)

    broker, store, counts = restart(store, clock)
    try:
        assert counts["retained"] == 1
        assert [m.payload for m in broker.retained] == [b"k"]
        flush(store)  # the expired one is deleted from the store too
        assert store.load().retained.keys() == {"s/kept"}
    finally:
        store.close()


def test_durable_subscriptions_keep_their_queue_and_their_filter(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    broker.durable_subscription("sub-1", "news/#")
    broker.publish(msg("news/a", b"while away"))
    broker.durable_subscription("sub-2", "old/#")
    broker.drop_durable_subscription("sub-2")

    broker, store, _ = restart(store, clock)
    try:
        assert "sub-2" not in broker.queues
        assert broker.queues["sub-1"].depth == 1
        assert broker.publish(msg("news/b", b"after")).routed == 1
        worker, _ = broker.open_session("w", (sink := RecordingSink()))
        broker.consume(worker, "sub-1", qos=1, ack_all=True)
        assert sink.payloads == [b"while away", b"after"]
    finally:
        store.close()


# -- what nothing claims any more ------------------------------------------------------------


def test_entries_nothing_claims_are_deleted_at_restore(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, _ = start(tmp_path, clock)
    # A shared group whose only member is a clean session: its queue is stored, but
    # no session brings it back.
    member, _ = broker.open_session("member", RecordingSink())
    broker.subscribe(member, "$share/g/t", SubscribeOptions(qos=1))
    member.consumer.sink = None  # stop taking: the next message waits in the group's queue
    for consumer in member.consumers.values():
        consumer.sink = None
    broker.publish(msg("t", b"orphan"))
    broker.publish(to_queue("later-volatile", b"v"))
    flush(store)
    assert {q for q, _ in stored_entries(store)} == {"$share/g/t", "later-volatile"}

    policies = [("later-volatile", QueuePolicy(durability="memory"))]
    broker, store, counts = restart(store, clock, queues=policies)
    try:
        assert counts["discarded"] == 1
        # A queue now configured "memory" keeps its messages this once, off the disk.
        assert broker.queues["later-volatile"].depth == 1
        flush(store)
        assert stored_entries(store) == []
        assert store.load().messages == {}
    finally:
        store.close()


def test_a_queue_ttl_starts_again_at_restore(tmp_path: Path) -> None:
    clock = Clock()
    policies = [("short", QueuePolicy(ttl=60))]
    broker, store, _ = start(tmp_path, clock, queues=policies)
    broker.publish(to_queue("short", b"m"))
    clock.advance(50)
    broker, store, _ = restart(store, clock, queues=policies)
    try:
        [entry] = broker.queues["short"].entries()
        assert entry.expires == clock.now + 60
        clock.advance(61)
        broker.tick()
        assert broker.queues["short"].depth == 0
        flush(store)
        assert stored_entries(store) == []
    finally:
        store.close()


def test_restore_returns_counts_of_what_came_back(tmp_path: Path) -> None:
    clock = Clock()
    broker, store, counts = start(tmp_path, clock)
    assert counts == {
        "retained": 0,
        "sessions": 0,
        "queues": 0,
        "messages": 0,
        "in_flight": 0,
        "discarded": 0,
    }
    broker.publish(to_queue("a", b"1"))
    broker.publish(to_queue("b", b"2"))
    broker.publish(msg("r", b"r", retain=True))
    broker, store, counts = restart(store, clock)
    store.close()
    assert (counts["queues"], counts["messages"], counts["retained"]) == (2, 2, 1)
