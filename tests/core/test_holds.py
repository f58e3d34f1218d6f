"""Bridge outboxes in the core: acknowledgements held until a message leaves a queue
(ack = "upstream"), and outboxes taken back after a restart."""

from __future__ import annotations

from gateway.core import Broker, Message
from gateway.core.holds import Holds
from gateway.core.message import Origin
from gateway.core.queue import Overflow, QueuePolicy
from gateway.core.session import TRUSTED
from tests.core.fakes import RecordingSink

ALICE = Origin(protocol="mqtt", listener="m", client_id="alice")
BOB = Origin(protocol="mqtt", listener="m", client_id="bob")


def _held_outbox(broker: Broker) -> None:
    queue = broker.durable_subscription("$bridge/up/0", "up/#")
    queue.holds = broker.holds


def _message(origin: Origin, topic: str = "up/a", qos: int = 1) -> Message:
    return Message(destination=topic, payload=b"x", qos=qos, origin=origin)


def _ack_log(broker: Broker, origin: Origin, results: list[tuple[str, bool]], label: str) -> None:
    broker.when_durable(lambda ok: results.append((label, ok)), origin)


def test_ack_waits_until_the_entry_is_acknowledged_and_stays_in_order() -> None:
    broker = Broker()
    _held_outbox(broker)
    results: list[tuple[str, bool]] = []
    broker.publish(_message(ALICE))
    _ack_log(broker, ALICE, results, "first")
    broker.publish(_message(ALICE, topic="elsewhere"))  # not held itself, but after "first"
    _ack_log(broker, ALICE, results, "second")
    assert results == []
    sink = RecordingSink()
    session, _ = broker.open_session("$bridge/up", sink, identity=TRUSTED)
    broker.consume(session, "$bridge/up/0")
    (delivery,) = sink.take()
    assert results == []
    broker.ack(delivery)
    assert results == [("first", True), ("second", True)]
    assert not broker.holds.held(ALICE)


def test_other_publishers_are_not_held() -> None:
    broker = Broker()
    _held_outbox(broker)
    results: list[tuple[str, bool]] = []
    broker.publish(_message(ALICE))
    _ack_log(broker, ALICE, results, "alice")
    broker.publish(_message(BOB, topic="local"))
    _ack_log(broker, BOB, results, "bob")
    assert results == [("bob", True)]


def test_a_discarded_entry_releases_the_ack_as_not_ok() -> None:
    broker = Broker()
    _held_outbox(broker)
    results: list[tuple[str, bool]] = []
    broker.publish(_message(ALICE))
    _ack_log(broker, ALICE, results, "a")
    sink = RecordingSink()
    session, _ = broker.open_session("$bridge/up", sink, identity=TRUSTED)
    broker.consume(session, "$bridge/up/0")
    (delivery,) = sink.take()
    broker.nack(delivery, requeue=False)  # the upstream refused it
    assert results == [("a", False)]
    assert broker.holds.failed == 1


def test_requeue_after_a_lost_link_keeps_holding() -> None:
    broker = Broker()
    _held_outbox(broker)
    results: list[tuple[str, bool]] = []
    broker.publish(_message(ALICE))
    _ack_log(broker, ALICE, results, "a")
    sink = RecordingSink()
    session, _ = broker.open_session("$bridge/up", sink, identity=TRUSTED)
    broker.consume(session, "$bridge/up/0")
    sink.take()
    broker.detach(session, graceful=True)  # the link dropped: back in the outbox
    assert results == []
    again = RecordingSink()
    session, _ = broker.open_session("$bridge/up", again, identity=TRUSTED)
    broker.consume(session, "$bridge/up/0")
    (delivery,) = again.take()
    assert delivery.count == 2
    broker.ack(delivery)
    assert results == [("a", True)]


def test_qos0_messages_are_never_held() -> None:
    broker = Broker()
    _held_outbox(broker)
    results: list[tuple[str, bool]] = []
    broker.publish(_message(ALICE, qos=0))
    _ack_log(broker, ALICE, results, "a")
    assert results == [("a", True)]


def test_a_full_outbox_refuses_the_publish() -> None:
    broker = Broker()
    broker.durable_subscription(
        "$bridge/up/0", "up/#", policy=QueuePolicy(max_length=1, overflow=Overflow.REJECT_PUBLISH)
    )
    assert broker.publish(_message(ALICE)).accepted
    refused = broker.publish(_message(ALICE))
    assert not refused.accepted
    assert refused.reason == "queue-full"


def test_an_outbox_taken_back_with_another_filter_is_fed_by_the_new_one() -> None:
    broker = Broker()
    queue = broker.durable_subscription("$bridge/up/0", "old/#")
    assert broker.durable_subscription("$bridge/up/0", "new/#") is queue
    broker.publish(_message(ALICE, topic="old/a"))
    broker.publish(_message(ALICE, topic="new/a"))
    assert [e.message.destination for e in queue.entries()] == ["new/a"]
    assert broker.store.durable_subscriptions == {"$bridge/up/0": "new/#"}  # type: ignore[attr-defined]


def test_an_unbound_outbox_keeps_its_messages_and_can_be_bound_again() -> None:
    broker = Broker()
    queue = broker.durable_subscription("$bridge/up/1", "a/#")
    broker.publish(_message(ALICE, topic="a/1"))
    assert broker.unbind_durable_subscription("$bridge/up/1")
    broker.publish(_message(ALICE, topic="a/2"))  # no longer fed
    assert [e.message.destination for e in queue.entries()] == ["a/1"]
    assert "$bridge/up/1" not in broker.durable_filters()
    assert broker.durable_subscription("$bridge/up/1", "a/#") is queue
    broker.publish(_message(ALICE, topic="a/3"))
    assert [e.message.destination for e in queue.entries()] == ["a/1", "a/3"]


def test_holds_closing_out_of_order_release_acks_in_order_and_failures_stay_in_range() -> None:
    holds = Holds()
    message = _message(ALICE)
    results: list[tuple[str, bool]] = []

    def register(label: str) -> None:
        holds.gate(ALICE, lambda ok: results.append((label, ok)))(True)  # committed at once

    holds.enter(0, message)
    holds.enter(1, message)
    register("a")  # waits for holds 0 and 1
    holds.enter(2, message)
    register("b")  # waits for 0, 1 and 2
    holds.leave(1, ok=False)
    assert results == []
    holds.leave(0, ok=True)
    assert results == [("a", False)]
    holds.leave(2, ok=True)
    assert results == [("a", False), ("b", False)]  # b's holds included the failed one
    holds.enter(3, message)
    register("c")
    holds.leave(3, ok=True)
    assert results[-1] == ("c", True)  # an old failure does not reach a later ack
    assert not holds.held(ALICE)
    assert len(holds) == 0
