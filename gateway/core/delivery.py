"""What the core hands a consumer: deliveries, the sink interface, consumers and their credit."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

import msgspec

from .message import Message
from .selector import Selector

if TYPE_CHECKING:
    from .queue import Queue
    from .session import Session


class CloseReason(Enum):
    """Why the core ends a connection's attachment to its session."""

    TAKEN_OVER = "session taken over"
    SHUTDOWN = "server shutting down"


class Sink(Protocol):
    """What a listener hands the core to receive deliveries. No method may block."""

    def deliver(self, delivery: Delivery, qos: int) -> None:
        """Encode ``delivery`` at ``qos`` and append it to the connection's output buffer.

        With ``qos`` 0 the delivery is finished once sent; otherwise the core
        waits for ``Broker.ack`` or ``Broker.nack`` with this same object.
        """

    def writable(self) -> bool:
        """False while the connection's output buffer is past its high-water mark."""

    def close(self, reason: CloseReason) -> None:
        """End the connection (e.g. another connection took the session over)."""


class Delivery(msgspec.Struct, eq=False):
    """One message on its way to one consumer; also the queue entry that holds it.

    ``qos`` is the QoS the entry was queued with (the publisher's, capped by the
    subscription); each consumer may lower it further. ``count`` is how
    many times it has been sent; above 1 it is a redelivery. ``wire_id`` is the
    protocol's own id for the latest send (an MQTT packet id) and ``stage`` its
    progress (1 = MQTT QoS 2 PUBREC received), kept so that a resumed session
    resends in-flight messages under the same id, from the same step.

    A mutable msgspec Struct (one per message and receiver: cheap to build),
    compared by identity.
    """

    message: Message
    qos: int = 0
    retain: bool = False
    subscription_ids: tuple[int, ...] = ()
    expires: float | None = None
    count: int = 0
    tag: int = 0
    wire_id: int | None = None
    stage: int = 0
    consumer: Consumer | None = None

    @property
    def redelivered(self) -> bool:
        return self.count > 1

    @property
    def size(self) -> int:
        return len(self.message.payload)


class Consumer:
    """A session's attachment to one queue: its sink, credit window and unacked deliveries.

    ``qos`` caps the delivery QoS; with ``ack_all`` every delivery needs an
    acknowledgement whatever the message's QoS (STOMP client acks). ``window``
    bounds unacknowledged deliveries (MQTT receive maximum, STOMP prefetch).
    """

    __slots__ = (
        "_next_tag",
        "ack_all",
        "closed",
        "qos",
        "queue",
        "retain_as_published",
        "selector",
        "session",
        "sink",
        "subscription_ids",
        "unacked",
        "window",
    )

    def __init__(
        self,
        queue: Queue,
        session: Session,
        *,
        qos: int = 1,
        window: int = 65535,
        ack_all: bool = False,
        selector: Selector | None = None,
    ) -> None:
        self.queue = queue
        self.session = session
        # A JMS message selector: this consumer takes only the entries it matches;
        # the others stay in the queue for other consumers.
        self.selector = selector
        self.qos = qos
        self.window = window
        self.ack_all = ack_all
        self.sink: Sink | None = None
        self.unacked: dict[int, Delivery] = {}
        # A shared subscription's member options, applied to what the group's queue sends it.
        self.subscription_ids: tuple[int, ...] = ()
        self.retain_as_published = True
        # Unsubscribed, with deliveries still awaiting acknowledgement.
        self.closed = False
        self._next_tag = 1

    def delivery_qos(self, entry_qos: int) -> int:
        if self.ack_all:
            return max(1, min(entry_qos, self.qos))
        return entry_qos if entry_qos < self.qos else self.qos

    def wants(self, entry: Delivery) -> bool:
        """Whether this consumer's selector (if any) matches ``entry``."""
        selector = self.selector
        return selector is None or selector.matches(entry.message, redelivered=entry.count > 0)

    def can_take(self, entry_qos: int) -> bool:
        """Attached, writable, and with credit if this delivery will need an ack."""
        sink = self.sink
        if sink is None or not sink.writable():
            return False
        if self.delivery_qos(entry_qos) == 0:
            return True
        if len(self.unacked) >= self.window:
            return False
        session = self.session
        # The connection's window (MQTT receive maximum) is shared by all its consumers.
        return not session.consumers or session.in_flight() < session.window

    def send_qos0(self, entry: Delivery, sink: Sink) -> None:
        """``send`` for a consumer without ``ack_all`` and an entry at QoS 0."""
        entry.count += 1
        entry.consumer = self
        entry.tag = tag = self._next_tag
        self._next_tag = tag + 1
        if self.subscription_ids:
            entry.subscription_ids = self.subscription_ids
        if entry.retain and not self.retain_as_published:
            entry.retain = False
        sink.deliver(entry, 0)

    def send(self, entry: Delivery) -> None:
        """Hand ``entry`` to the sink; the caller has checked ``can_take``."""
        sink = self.sink
        assert sink is not None
        qos = entry.qos
        if self.ack_all:
            qos = max(1, min(qos, self.qos))
        elif qos > self.qos:
            qos = self.qos
        entry.count += 1
        entry.consumer = self
        entry.tag = self._next_tag
        self._next_tag += 1
        if self.subscription_ids:
            entry.subscription_ids = self.subscription_ids
        if entry.retain and not self.retain_as_published:
            entry.retain = False
        if qos:
            self.unacked[entry.tag] = entry
        sink.deliver(entry, qos)
        queue = self.queue
        if queue.durable and entry.message.qos:
            # The store follows: sent (count, packet id), or done if sent at QoS 0.
            if qos:
                queue.broker.progress(queue, entry)
            else:
                queue.broker.forget(queue, entry)

    def adopt(self, entry: Delivery) -> None:
        """Take ``entry`` as in flight to this consumer (recovered from the store)."""
        entry.consumer = self
        entry.tag = self._next_tag
        self._next_tag += 1
        self.unacked[entry.tag] = entry
