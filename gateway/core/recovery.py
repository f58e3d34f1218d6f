"""Recovery: the core rebuilt from what the store kept, at start (docs/durability.md)."""

from __future__ import annotations

import dataclasses

from ..store.base import Snapshot
from ..store.memory import MemoryStore
from .broker import SESSION_QUEUE_PREFIX, SHARE_PREFIX, TEMP_QUEUE_PREFIX, Broker
from .delivery import CloseReason, Delivery
from .queue import Queue
from .selector import Selector, SelectorError, compile_selector
from .session import NEVER, TRUSTED, SubscribeOptions
from .topics import InvalidFilter


def restore(broker: Broker, snapshot: Snapshot) -> dict[str, int]:
    """Rebuild what the store kept: retained messages, durable subscriptions,
    sessions (offline, their expiry restarted), queue contents in their order,
    and in-flight deliveries, which a resuming client gets again under the same
    packet ids (MQTT DUP). Returns counts of what came back.

    What the store holds and nothing claims any more (a shared group or session
    that is gone, an expired retained message, a queue now configured ``memory``)
    is deleted from the store, so that it does not come back at every start."""
    store, broker.store = broker.store, MemoryStore()  # rebuilding writes nothing
    stale_queues: list[str] = []
    stale_retained: list[str] = []
    try:
        counts = _restore(broker, snapshot, stale_queues, stale_retained)
    finally:
        broker.store = store
    for name in stale_queues:
        store.drop_queue(name)
    for topic in stale_retained:
        store.clear_retained(topic)
    return counts


def _restore(
    broker: Broker, snapshot: Snapshot, stale_queues: list[str], stale_retained: list[str]
) -> dict[str, int]:
    now = broker.now()
    counts = {
        "retained": 0,
        "sessions": 0,
        "queues": 0,
        "messages": 0,
        "in_flight": 0,
        "discarded": 0,
    }
    for topic, message in snapshot.retained.items():
        if message.expiry is None or message.expiry > now:
            broker.retained.set(message)
            counts["retained"] += 1
        else:
            stale_retained.append(topic)
    for name, topic_filter in snapshot.durable_subscriptions.items():
        broker.durable_subscription(name, topic_filter)
    for state in snapshot.sessions.values():
        # Who owned it is not stored: it is checked again when a client resumes it.
        session, _ = broker.open_session(
            state.client_id, _Offline(), clean=True, expiry=1.0, identity=TRUSTED
        )
        session.consumer.sink = None
        session.expiry = state.expiry
        session.expires_at = None if state.expiry == NEVER else now + state.expiry
        session.incomplete = set(snapshot.incomplete.get(state.client_id, ()))
        for sub in state.subscriptions:
            options = SubscribeOptions(
                qos=sub.qos,
                no_local=sub.no_local,
                retain_as_published=sub.retain_as_published,
                retain_handling=2,  # no retained messages on recovery
                subscription_id=sub.subscription_id,
                selector=_recompiled(sub.selector),
            )
            try:
                broker.subscribe(session, sub.topic_filter, options)
            except InvalidFilter:
                continue
            if sub.topic_filter in session.subscriptions:
                session.subscriptions[sub.topic_filter] = dataclasses.replace(
                    options, retain_handling=sub.retain_handling
                )
        counts["sessions"] += 1
    for name, entries in snapshot.queues.items():
        queue = _recovered_queue(broker, name)
        if queue is None or not queue.durable:
            stale_queues.append(name)
            if queue is None:
                counts["discarded"] += len(entries)
                continue
        counts["queues"] += 1
        owner = queue.owner
        ttl = queue.policy.ttl
        for stored in entries:
            recovered = snapshot.messages.get(stored.message_id)
            if recovered is None:
                continue
            expires = recovered.expiry
            if ttl is not None and (expires is None or now + ttl < expires):
                expires = now + ttl  # the queue's TTL starts again
            entry = Delivery(
                recovered,
                qos=stored.qos,
                retain=stored.retain,
                subscription_ids=stored.subscription_ids,
                expires=expires,
                count=stored.count,
                wire_id=stored.wire_id,
                stage=stored.stage,
            )
            counts["messages"] += 1
            if owner is not None and queue is owner.queue and stored.wire_id is not None:
                owner.consumer.adopt(entry)  # in flight: resent first, same packet id
                counts["in_flight"] += 1
            else:
                # Back in the queue for whichever consumer comes (redelivered if it
                # was sent): the old packet id and step mean nothing to that one.
                entry.wire_id = None
                entry.stage = 0
                queue.restore(entry)
    return counts


def _recovered_queue(broker: Broker, name: str) -> Queue | None:
    if name.startswith(SESSION_QUEUE_PREFIX):
        session = broker.sessions.get(name[len(SESSION_QUEUE_PREFIX) :])
        return None if session is None else session.queue
    if name.startswith(TEMP_QUEUE_PREFIX):
        return None
    if name.startswith(SHARE_PREFIX):
        return broker.queues.get(name)
    return broker.queues.get(name) or broker.declare_queue(name)


class _Offline:
    """The sink of a session being recovered: it has no connection."""

    def deliver(self, delivery: Delivery, qos: int) -> None:  # pragma: no cover - never
        raise AssertionError("a recovering session has no connection")

    def writable(self) -> bool:
        return False

    def close(self, reason: CloseReason) -> None:  # pragma: no cover - never
        pass


def _recompiled(text: str | None) -> Selector | None:
    """A stored subscription's selector, compiled again (None if it no longer compiles)."""
    if text is None:
        return None
    try:
        return compile_selector(text)
    except SelectorError:
        return None
