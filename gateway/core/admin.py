"""What the admin API does to queues and retained messages (docs/admin.md).

Functions of the ``Broker``, so that the store stays consistent: an entry taken out
of a queue is forgotten as an acknowledged or discarded one is (``Broker.forget``),
a moved message is published again through ``Broker.publish`` (stored in its new
queue before it leaves the old one), and a retained message is cleared in the core
and in the store as an empty retained publish would clear it. Entries in flight
(sent to a consumer, not yet acknowledged) are never touched: only ready ones.
"""

from __future__ import annotations

import msgspec

from .broker import TEMP_QUEUE_PREFIX, Broker, Status
from .delivery import Delivery
from .headers import Headers, header_pairs
from .message import Kind, Message, next_message_id
from .queue import Queue
from .session import TRUSTED

# Headers dead-lettering adds (Broker.discard); a message moved back loses them.
DEATH_QUEUE = "x-death-queue"
DEATH_HEADERS = ("x-death-", "x-delivery-count")
# The drop reason counted for purged entries (BrokerStats.drops).
PURGED = "purged"


def peek(queue: Queue, limit: int) -> list[Delivery]:
    """Up to ``limit`` ready entries of ``queue`` in delivery order; nothing is removed."""
    return queue.entries()[:limit] if limit > 0 else []


def purge(broker: Broker, queue: Queue) -> int:
    """Discard every ready entry of ``queue``; returns how many."""
    entries = queue.purge()
    for entry in entries:
        broker.forget(queue, entry, ok=False)
    if entries:
        broker.stats.drops[PURGED] += len(entries)
    queue.drained()
    return len(entries)


def death_queue(message: Message) -> str | None:
    """The queue a dead-lettered message came from (its ``x-death-queue`` header)."""
    return message.headers.get(DEATH_QUEUE)


def move(broker: Broker, queue: Queue, to: str | None = None) -> tuple[int, int]:
    """Move the ready entries of ``queue`` to queue ``to``, or, without it, each back
    to the queue it was dead-lettered from (``x-death-queue``; the dead-letter headers
    are removed). Returns (moved, kept): an entry with nowhere to go (no such header,
    a temporary queue, a destination that refused it) stays where it was, in order."""
    moved = 0
    kept: list[Delivery] = []
    for entry in queue.purge():
        message = entry.message
        origin = death_queue(message)
        target = to if to is not None else origin
        if target is None or target == queue.name or target.startswith(TEMP_QUEUE_PREFIX):
            kept.append(entry)
            continue
        headers = message.headers
        if target == origin:
            headers = Headers(
                (name, value)
                for name, value in header_pairs(headers)
                if not name.startswith(DEATH_HEADERS)
            )
        again = msgspec.structs.replace(
            message,
            destination=target,
            kind=Kind.QUEUE,
            headers=headers,
            retain=False,
            # A new message for the store: the old id stays with the old queue's entry
            # until its removal is committed.
            message_id=next_message_id(),
        )
        result = broker.publish(again, rules=False, identity=TRUSTED)
        if result.status is Status.REFUSED:
            kept.append(entry)
            continue
        broker.forget(queue, entry)
        moved += 1
    for entry in kept:
        queue.restore(entry)  # still stored: only put back in line
    queue.drained()
    if kept:
        queue.dispatch()
    return moved, len(kept)


def delete_retained(broker: Broker, topic: str) -> bool:
    """Clear the retained message of ``topic`` (False if there is none)."""
    if broker.retained.get(topic) is None:
        return False
    broker.retained.set(Message(destination=topic, payload=b"", retain=True))
    broker.store.clear_retained(topic)  # a no-op where it was never stored
    return True
