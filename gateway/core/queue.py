"""Queues: anycast delivery with credit, acks, redelivery, priorities, TTL, limits.

Every delivery path in the core ends in a ``Queue``: named queues, each
session's own queue (fed by its topic subscriptions) and shared subscriptions.
A queue holds ready entries in ten FIFO lanes, one per priority, and hands
them round-robin to consumers that are writable and have credit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from .delivery import Consumer, Delivery

if TYPE_CHECKING:
    from .holds import Holds
    from .session import Session

PRIORITIES = 10


class Overflow(Enum):
    """What a full queue does with one more message."""

    DROP_HEAD = "drop-head"
    REJECT_PUBLISH = "reject-publish"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePolicy:
    """Limits of one queue. ``None`` means unlimited; ``ttl`` is in seconds."""

    max_length: int | None = None
    max_bytes: int | None = None
    overflow: Overflow = Overflow.DROP_HEAD
    max_deliveries: int | None = None
    dead_letter: str | None = None
    ttl: float | None = None
    # "sync", "async" or "memory"; None follows the gateway's setting.
    durability: str | None = None


@dataclass(slots=True)
class QueueStats:
    enqueued: int = 0
    delivered: int = 0
    acked: int = 0
    redelivered: int = 0
    expired: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    refused: int = 0


class QueueOwner(Protocol):
    """What a queue needs from the broker that holds it."""

    def now(self) -> float: ...

    def discard(self, queue: Queue, entry: Delivery, reason: str) -> None:
        """Dead-letter ``entry`` (or drop it and count why); it has left ``queue``."""

    def persist(self, queue: Queue, entry: Delivery) -> None: ...

    def progress(self, queue: Queue, entry: Delivery) -> None: ...

    def forget(self, queue: Queue, entry: Delivery) -> None: ...


class Queue:
    """One queue. ``lossy`` queues (topic subscriptions) drop QoS 0 entries they cannot send
    at once instead of holding them; ``ordered`` ones deliver in arrival order whatever the
    priority; ``owner`` is the session a private queue belongs to."""

    def __init__(
        self,
        name: str,
        broker: QueueOwner,
        policy: QueuePolicy = QueuePolicy(),
        *,
        lossy: bool = False,
        ordered: bool = False,
        durable: bool = True,
        owner: Session | None = None,
    ) -> None:
        self.name = name
        self.broker = broker
        self.policy = policy
        self.lossy = lossy
        # An ordered queue ignores priorities: MQTT keeps a topic's messages in order (4.6).
        self.ordered = ordered
        self.durable = durable
        self.owner = owner
        self.consumers: list[Consumer] = []
        self.stats = QueueStats()
        self.depth = 0
        self.bytes = 0
        # One FIFO lane per priority, made on first use: most queues only ever use one.
        self._lanes: list[deque[Delivery] | None] = [None] * PRIORITIES
        self._rr = 0
        self.selective = False  # some consumer has a selector
        # With selectors: the consumers that could not take an entry left waiting (no credit,
        # not writable), which may be theirs. A new entry must not overtake it: it goes
        # straight only to a consumer not in this set, else waits for the next dispatch,
        # which the consumer's ack or resume brings. Meaningful only while depth > 0.
        self._owed: set[Consumer] = set()
        # Publisher backpressure: past the high-water mark (half the length limit)
        # a queue with a consumer online asks publishers to pause until it is back
        # under the low-water mark; one that stays full past their patience is
        # "stalled" and lets the overflow policy act instead.
        self.high_water = math.inf
        self.low_water = 0
        self.stalled = False
        self._waiters: list[Callable[[], None]] = []
        self._set_water_marks()
        # Set by a bridge with ack = "upstream": persistent entries put here hold their
        # publisher's acknowledgement until they leave (whatever queue they leave from
        # then: core/holds.py).
        self.holds: Holds | None = None

    def set_policy(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self._set_water_marks()

    def _set_water_marks(self) -> None:
        limit = self.policy.max_length
        if limit is not None:
            self.high_water = max(1, limit // 2)
            self.low_water = limit // 4

    def congested(self) -> bool:
        """Past the high-water mark with a consumer that is draining it."""
        return (
            self.depth >= self.high_water
            and not self.stalled
            and any(c.sink is not None for c in self.consumers)
        )

    def when_relieved(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the queue is back under its low-water mark."""
        if self.depth <= self.low_water or not self.congested():
            callback()
        else:
            self._waiters.append(callback)

    def mark_stalled(self) -> None:
        """Publishers waited long enough: stop holding them back until the queue drains."""
        self.stalled = True
        self._relieve()

    def _relieve(self) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} depth={self.depth} consumers={len(self.consumers)}>"

    # -- consumers -------------------------------------------------------------

    def attach(self, consumer: Consumer) -> None:
        self.consumers.append(consumer)
        self.selectors_changed()
        self.dispatch()

    def selectors_changed(self) -> None:
        """Recompute whether some consumer filters (the slower, scanning dispatch)."""
        self.selective = any(consumer.selector is not None for consumer in self.consumers)

    def detach(self, consumer: Consumer, *, keep_inflight: bool = False) -> None:
        """Remove ``consumer``; its unacked entries go back to the queue unless kept for it."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self.selectors_changed()
        if self._waiters and not self.congested():
            self._relieve()  # its last draining consumer left: nobody to wait for
        if not keep_inflight and consumer.unacked:
            entries = list(consumer.unacked.values())
            consumer.unacked.clear()
            self.requeue(entries)
        self.dispatch()

    def _pick_for(self, entry: Delivery, skip: set[Consumer] | None = None) -> Consumer | None:
        """A consumer that can take ``entry`` and whose selector matches it (round robin),
        other than those in ``skip``."""
        consumers = self.consumers
        n = len(consumers)
        start = self._rr
        for i in range(n):
            consumer = consumers[(start + i) % n]
            if skip and consumer in skip:
                continue
            if consumer.can_take(entry.qos) and consumer.wants(entry):
                self._rr = (start + i + 1) % n
                return consumer
        return None

    def _pick(self, qos: int) -> Consumer | None:
        consumers = self.consumers
        n = len(consumers)
        if n == 1:
            only = consumers[0]
            return only if only.can_take(qos) else None
        start = self._rr
        for i in range(n):
            consumer = consumers[(start + i) % n]
            if consumer.can_take(qos):
                self._rr = (start + i + 1) % n
                return consumer
        return None

    # -- entries in --------------------------------------------------------------

    def put(self, entry: Delivery) -> str | None:
        """Offer ``entry``; returns None once it is taken, else why it was refused."""
        stats = self.stats
        if self.lossy and entry.qos == 0:
            consumers = self.consumers
            if len(consumers) == 1 and not consumers[0].ack_all:
                # A session's own queue: _pick(0) and can_take(0) in line.
                only = consumers[0]
                sink = only.sink
                if sink is not None and sink.writable():
                    stats.enqueued += 1
                    stats.delivered += 1
                    only.send_qos0(entry, sink)
                else:
                    self.broker.discard(self, entry, "offline" if sink is None else "slow-consumer")
                return None
            consumer = self._pick(0)
            if consumer is None:
                online = any(c.sink is not None for c in self.consumers)
                self.broker.discard(self, entry, "slow-consumer" if online else "offline")
                return None
            stats.enqueued += 1
            stats.delivered += 1
            consumer.send(entry)
            return None
        policy = self.policy
        if policy.ttl is not None:
            deadline = self.broker.now() + policy.ttl
            if entry.expires is None or deadline < entry.expires:
                entry.expires = deadline
        # With selectors, entries waiting may be ones nobody wants: a new one can still
        # go straight to a consumer it matches that no waiting entry may be owed to.
        if self.consumers and (self.depth == 0 or self.selective):
            if self.selective:
                consumer = self._pick_for(entry, self._owed if self.depth else None)
            else:
                consumer = self._pick(entry.qos)
            if consumer is not None:
                stats.enqueued += 1
                stats.delivered += 1
                if self.durable and entry.message.qos:
                    self.broker.persist(self, entry)
                if self.holds is not None and entry.qos:
                    self.holds.enter(id(entry), entry.message)
                consumer.send(entry)
                return None
        if not self._make_room(entry):
            stats.refused += 1
            return "queue-full"
        if self.selective:
            blocked = {c for c in self.consumers if not c.can_take(entry.qos)}
            if self.depth:
                self._owed |= blocked
            else:
                self._owed = blocked
        self._lane(4 if self.ordered else entry.message.priority).append(entry)
        self.depth += 1
        self.bytes += entry.size
        stats.enqueued += 1
        if self.durable and entry.message.qos:
            self.broker.persist(self, entry)
        if self.holds is not None and entry.qos:
            self.holds.enter(id(entry), entry.message)
        return None

    def _make_room(self, entry: Delivery) -> bool:
        policy = self.policy
        max_length, max_bytes = policy.max_length, policy.max_bytes
        if (max_length is None or self.depth < max_length) and (
            max_bytes is None or self.bytes + entry.size <= max_bytes
        ):
            return True  # room to spare: the usual case, without the closure below

        def full() -> bool:
            return (max_length is not None and self.depth + 1 > max_length) or (
                max_bytes is not None and self.bytes + entry.size > max_bytes
            )

        if policy.overflow is Overflow.REJECT_PUBLISH:
            return False
        # drop-head: the oldest entry of the lowest priority goes first.
        while full() and self.depth:
            lane = next(lane for lane in self._lanes if lane)
            dropped = lane.popleft()
            self._remove(dropped)
            self.broker.discard(self, dropped, "max-length")
        return not full()

    def _lane(self, priority: int) -> deque[Delivery]:
        lane = self._lanes[priority]
        if lane is None:
            lane = self._lanes[priority] = deque()
        return lane

    def _remove(self, entry: Delivery) -> None:
        self.depth -= 1
        self.bytes -= entry.size
        if self.depth <= self.low_water:
            self.stalled = False
            if self._waiters:
                self._relieve()

    def drained(self) -> None:
        """Entries left without being sent (an admin purge or move, core/admin.py): back
        under the low-water mark, publishers this queue held back go on, as ``_remove``
        lets them go."""
        if self.depth <= self.low_water:
            self.stalled = False
            if self._waiters:
                self._relieve()

    def requeue(self, entries: list[Delivery]) -> None:
        """Put delivered-but-unacked entries back at the front, in their original order."""
        limit = self.policy.max_deliveries
        for entry in sorted(entries, key=lambda e: e.tag, reverse=True):
            # Another consumer gets it afresh: the old protocol id means nothing there.
            entry.consumer = None
            entry.wire_id = None
            entry.stage = 0
            if limit is not None and entry.count >= limit:
                self.broker.discard(self, entry, "max-deliveries")
                continue
            self._lane(4 if self.ordered else entry.message.priority).appendleft(entry)
            self.depth += 1
            self.bytes += entry.size

    def restore(self, entry: Delivery) -> None:
        """Append an entry recovered from the store (it is stored already)."""
        self._lane(4 if self.ordered else entry.message.priority).append(entry)
        self.depth += 1
        self.bytes += entry.size

    # -- entries out -------------------------------------------------------------

    def dispatch(self) -> None:
        """Send ready entries, highest priority first, while some consumer can take them."""
        if not self.depth or not self.consumers:
            return
        if self.selective:
            self._dispatch_selective()
            return
        now = self.broker.now()
        lanes = self._lanes
        stats = self.stats
        ordered = self.ordered
        while self.depth:
            found = lanes[4] if ordered else next(lane for lane in reversed(lanes) if lane)
            assert found is not None  # depth > 0: some lane holds an entry
            lane = found
            entry = lane[0]
            if entry.expires is not None and entry.expires <= now:
                lane.popleft()
                self._remove(entry)
                stats.expired += 1
                self.broker.discard(self, entry, "expired")
                continue
            consumer = self._pick(entry.qos)
            if consumer is None:
                return
            lane.popleft()
            self._remove(entry)
            stats.delivered += 1
            if entry.count:
                stats.redelivered += 1
            consumer.send(entry)

    def _dispatch_selective(self) -> None:
        """Dispatch when consumers filter: an entry no consumer wants stays where it is,
        and the entries behind it still go to the consumers they match (JMS)."""
        now = self.broker.now()
        stats = self.stats
        consumers = self.consumers
        owed: set[Consumer] = set()
        for priority in range(PRIORITIES - 1, -1, -1):
            lane = self._lanes[priority]
            if not lane:
                continue
            kept: deque[Delivery] = deque()
            while lane:
                entry = lane.popleft()
                if entry.expires is not None and entry.expires <= now:
                    self._remove(entry)
                    stats.expired += 1
                    self.broker.discard(self, entry, "expired")
                    continue
                consumer = self._pick_for(entry)
                if consumer is None:
                    kept.append(entry)
                    blocked = [c for c in consumers if not c.can_take(entry.qos)]
                    owed.update(blocked)
                    if len(blocked) == len(consumers):
                        kept.extend(lane)  # nobody has credit left: stop scanning
                        lane.clear()
                    continue
                self._remove(entry)
                stats.delivered += 1
                if entry.count:
                    stats.redelivered += 1
                consumer.send(entry)
            self._lanes[priority] = kept
        self._owed = owed

    def ack(self, entry: Delivery) -> bool:
        consumer = entry.consumer
        if consumer is None or consumer.unacked.pop(entry.tag, None) is None:
            return False
        self.stats.acked += 1
        self.broker.forget(self, entry)
        self.dispatch()
        return True

    def nack(self, entry: Delivery, *, requeue: bool) -> bool:
        consumer = entry.consumer
        if consumer is None or consumer.unacked.pop(entry.tag, None) is None:
            return False
        if requeue:
            self.requeue([entry])
            self.dispatch()
        else:
            entry.consumer = None
            self.broker.discard(self, entry, "rejected")
        return True

    def expire(self, now: float) -> int:
        """Remove every ready entry whose deadline has passed; returns how many."""
        count = 0
        for i, lane in enumerate(self._lanes):
            if not lane or all(e.expires is None or e.expires > now for e in lane):
                continue
            keep: deque[Delivery] = deque()
            for entry in lane:
                if entry.expires is not None and entry.expires <= now:
                    self._remove(entry)
                    self.stats.expired += 1
                    self.broker.discard(self, entry, "expired")
                    count += 1
                else:
                    keep.append(entry)
            self._lanes[i] = keep
        return count

    def entries(self) -> list[Delivery]:
        """Ready entries in delivery order (highest priority first)."""
        return [entry for lane in reversed(self._lanes) if lane for entry in lane]

    def purge(self) -> list[Delivery]:
        """Remove and return every ready entry."""
        removed = self.entries()
        self._lanes = [None] * PRIORITIES
        self.depth = 0
        self.bytes = 0
        return removed
