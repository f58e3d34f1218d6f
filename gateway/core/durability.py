"""What the core records in the store as entries move (docs/durability.md): the
``Broker``'s side of the queue owner interface, mixed into it so that the per-message
callbacks cost no indirection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..store.base import DurableCallback, Store, StoredEntry
from .delivery import Delivery
from .message import Origin
from .queue import Queue, QueuePolicy
from .session import Session

if TYPE_CHECKING:
    from .holds import Holds


class Durability:
    """The ``Broker``'s store records; the attributes are the ``Broker``'s."""

    store: Store
    # "sync", "async" or "memory" (Broker): a queue's policy may choose its own.
    durability: str
    holds: Holds

    def _mode(self, policy: QueuePolicy) -> str:
        return policy.durability or self.durability

    def persist(self, queue: Queue, entry: Delivery) -> None:
        self.store.enqueue(
            queue.name,
            entry.message,
            _stored(entry),
            wait=self._mode(queue.policy) == "sync",
        )

    def progress(self, queue: Queue, entry: Delivery) -> None:
        """An entry of a durable queue was sent, or moved a step (MQTT PUBREC)."""
        self.store.update(queue.name, _stored(entry))

    def advanced(self, delivery: Delivery) -> None:
        """The protocol moved ``delivery`` a step (``stage``): record it if durable.

        In durability mode ``sync`` what the protocol says next waits for this record's
        commit (``when_durable``): after an MQTT PUBREL the client forgets the message,
        so a restart must resume from the PUBREL, never resend the PUBLISH."""
        consumer = delivery.consumer
        if consumer is not None and consumer.queue.durable and delivery.message.qos:
            queue = consumer.queue
            wait = self._mode(queue.policy) == "sync"
            self.store.update(queue.name, _stored(delivery), wait=wait)

    def hold_incomplete(self, session: Session, wire_id: int) -> None:
        """An inbound exactly-once message awaits release (MQTT QoS 2 before PUBREL)."""
        session.incomplete.add(wire_id)
        if session.queue.durable:
            self.store.add_incomplete(session.client_id, wire_id, wait=self._syncs(session))

    def release_incomplete(self, session: Session, wire_id: int) -> bool:
        if wire_id not in session.incomplete:
            return False
        session.incomplete.discard(wire_id)
        if session.queue.durable:
            self.store.remove_incomplete(session.client_id, wire_id, wait=self._syncs(session))
        return True

    def _syncs(self, session: Session) -> bool:
        """In mode ``async`` acknowledgements never wait for the store, QoS 2 ones neither."""
        return self._mode(session.queue.policy) == "sync"

    def when_durable(self, callback: DurableCallback, origin: Origin | None = None) -> None:
        """Run ``callback(ok)`` once everything recorded so far is committed: the
        acknowledgement to a publisher waits behind it (durability mode ``sync``).

        With the publisher's ``origin`` it also waits for the messages that publisher
        sent to a bridge with ``ack = "upstream"`` to be confirmed (core/holds.py)."""
        if origin is not None and self.holds:
            callback = self.holds.gate(origin, callback)
        self.store.when_durable(callback)

    def forget(self, queue: Queue, entry: Delivery, *, ok: bool = True) -> None:
        """``entry`` left ``queue`` for good: acknowledged (``ok``) or discarded."""
        # An entry queued at QoS 0 (a QoS 1 message for a QoS 0 subscription) was never
        # stored: removing it would cost a disk write per message for nothing.
        if queue.durable and entry.qos and entry.message.qos:
            self.store.remove(queue.name, entry.message.message_id)
        if self.holds:  # an entry may leave another queue than the one that held it
            self.holds.leave(id(entry), ok)


def _stored(entry: Delivery) -> StoredEntry:
    return StoredEntry(
        message_id=entry.message.message_id,
        qos=entry.qos,
        count=entry.count,
        wire_id=entry.wire_id,
        stage=entry.stage,
        retain=entry.retain,
        subscription_ids=entry.subscription_ids,
    )
