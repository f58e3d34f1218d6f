"""HTTP consumers: queue pull with a visibility timeout, and reply waiting.

``PullConsumer`` is one competing consumer of a queue on behalf of every HTTP
client pulling from it (as SQS does): a long poll asks it for up to N messages;
each message handed out gets a delivery id and stays invisible to other
consumers until it is acknowledged by that id or its visibility timeout runs
out, when it returns to the queue as a redelivery (and, past the queue's
``max_deliveries``, to its dead-letter queue).
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from dataclasses import dataclass, field

import trio

from ..core import Broker, CloseReason, Delivery, Message
from ..core.selector import Selector
from ..core.session import Trust

PULL_SESSION_PREFIX = "$http/pull/"
_run = secrets.token_hex(4)
# Delivery ids are unique in the process, whichever pull consumer handed them out.
_delivery_ids = itertools.count(1)


@dataclass(eq=False)
class _Waiter:
    want: int
    visibility: float
    items: list[tuple[str, Delivery]] = field(default_factory=list)
    ready: trio.Event = field(default_factory=trio.Event)


class PullConsumer:
    """The core's sink for one queue's HTTP pulls."""

    def __init__(
        self,
        broker: Broker,
        queue: str,
        selector: Selector | None = None,
        identity: Trust | None = None,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.inflight: dict[str, tuple[Delivery, float]] = {}
        self._waiters: deque[_Waiter] = deque()
        self.last_used: float | None = None  # trio time of the latest pull
        # Pullers with a selector share a consumer per selector, in a session of its own.
        client_id = PULL_SESSION_PREFIX + queue
        if selector is not None:
            client_id += "?" + selector.text
        # ``identity``: TRUSTED when the HTTP API checks each request itself (ACLs).
        self.session, _ = broker.open_session(client_id, self, clean=True, identity=identity)
        self.consumer = broker.consume(self.session, queue, qos=1, ack_all=True, selector=selector)

    # -- the Sink interface ----------------------------------------------------------

    def writable(self) -> bool:
        return any(waiter.want > 0 for waiter in self._waiters)

    def deliver(self, delivery: Delivery, qos: int) -> None:
        for waiter in self._waiters:
            if waiter.want > 0:
                delivery_id = f"{_run}-{next(_delivery_ids)}"
                self.inflight[delivery_id] = (delivery, trio.current_time() + waiter.visibility)
                waiter.items.append((delivery_id, delivery))
                waiter.want -= 1
                waiter.ready.set()
                return
        # Nobody is waiting (cannot happen: writable() said so): back it goes.
        self.broker.nack(delivery, requeue=True)

    def close(self, reason: CloseReason) -> None:
        for waiter in self._waiters:
            waiter.ready.set()

    # -- pulling and acknowledging ---------------------------------------------------

    async def pull(self, limit: int, wait: float, visibility: float) -> list[tuple[str, Delivery]]:
        """Up to ``limit`` messages; waits up to ``wait`` seconds for the first one."""
        waiter = _Waiter(limit, visibility)
        self._waiters.append(waiter)
        self.last_used = trio.current_time()
        try:
            self.broker.resume(self.session)  # hands over what is ready, synchronously
            if not waiter.items and wait > 0:
                with trio.move_on_after(wait):
                    await waiter.ready.wait()
        finally:
            self._waiters.remove(waiter)
        return waiter.items

    def ack(self, delivery_ids: list[str]) -> list[str]:
        """Acknowledge; returns the ids that were not outstanding (unknown or timed out)."""
        unknown = []
        for delivery_id in delivery_ids:
            held = self.inflight.pop(delivery_id, None)
            if held is None or not self.broker.ack(held[0]):
                unknown.append(delivery_id)
        return unknown

    def release(self, delivery_ids: list[str]) -> list[str]:
        """Return messages to the queue at once (a negative acknowledgement)."""
        unknown = []
        for delivery_id in delivery_ids:
            held = self.inflight.pop(delivery_id, None)
            if held is None or not self.broker.nack(held[0], requeue=True):
                unknown.append(delivery_id)
        return unknown

    def idle(self, now: float, after: float) -> bool:
        """Nobody waiting, nothing handed out, and no pull for ``after`` seconds."""
        if self._waiters or self.inflight:
            return False
        if self.last_used is None:
            self.last_used = now
        return now - self.last_used >= after

    def stop(self) -> None:
        """Stop consuming: the queue keeps its messages for other consumers."""
        self.broker.detach(self.session, graceful=True)

    def expire(self, now: float) -> int:
        """Return every message whose visibility timeout has passed; how many."""
        due = [key for key, (_, deadline) in self.inflight.items() if deadline <= now]
        for key in due:
            delivery, _ = self.inflight.pop(key)
            self.broker.nack(delivery, requeue=True)
        return len(due)


class ReplySink:
    """The sink of a request/reply exchange: it keeps the first reply."""

    def __init__(self) -> None:
        self.reply: Message | None = None
        self.arrived = trio.Event()

    def writable(self) -> bool:
        return self.reply is None

    def deliver(self, delivery: Delivery, qos: int) -> None:
        if self.reply is None:
            self.reply = delivery.message
            self.arrived.set()

    def close(self, reason: CloseReason) -> None:
        self.arrived.set()
