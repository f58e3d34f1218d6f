"""Acknowledgements held until a message leaves a queue (a bridge's ``ack = "upstream"``).

A queue with ``holds`` set opens a hold for every persistent message it takes; the
hold closes when the entry leaves (whatever queue it leaves from): acknowledged
(the upstream confirmed it: ok) or discarded (expired, refused upstream, dropped:
not ok). A publisher's acknowledgement registered with ``Broker.when_durable(
callback, origin)`` then waits for the store's commit and for every hold its
publisher had open at that moment, so acknowledgements stay in order per
publisher while publishers that send nowhere held are not slowed at all.

Holds are numbered per publisher in the order they open, so "every hold open at
that moment" is a range of numbers, and a waiting acknowledgement is released
when the lowest number still open is past its range: constant work per hold and
per acknowledgement, however many a publisher has in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .message import Message, Origin

DurableCallback = Callable[[bool], None]


class _Publisher:
    """One publisher's holds: the numbers still open (in opening order), the ones
    that closed not ok, and the acknowledgements committed and waiting for holds."""

    __slots__ = ("failed", "next", "open", "registered", "waiting")

    def __init__(self) -> None:
        self.next = 0
        self.open: dict[int, None] = {}  # insertion order = number order
        self.failed: list[int] = []
        # (first, last, callback, commit ok) in registration order.
        self.waiting: deque[tuple[int, int, DurableCallback, bool]] = deque()
        # The first number of each acknowledgement registered and not yet released.
        self.registered: deque[int] = deque()

    def lowest_open(self) -> int:
        return next(iter(self.open), self.next)


class Holds:
    """The open holds, per publisher (the message's origin)."""

    def __init__(self) -> None:
        self._publishers: dict[Origin, _Publisher] = {}
        self._by_entry: dict[int, tuple[Origin, _Publisher, int]] = {}
        self.failed = 0

    def __len__(self) -> int:
        return len(self._by_entry)

    def held(self, origin: Origin) -> bool:
        """Whether ``origin`` has acknowledgements held now."""
        publisher = self._publishers.get(origin)
        return publisher is not None and bool(publisher.open)

    def enter(self, key: int, message: Message) -> None:
        """An entry (``key`` its identity) holds its publisher's acknowledgements."""
        if key in self._by_entry:
            return
        origin = message.origin
        publisher = self._publishers.get(origin)
        if publisher is None:
            publisher = self._publishers[origin] = _Publisher()
        number = publisher.next
        publisher.next += 1
        publisher.open[number] = None
        self._by_entry[key] = (origin, publisher, number)

    def leave(self, key: int, ok: bool) -> None:
        found = self._by_entry.pop(key, None)
        if found is None:
            return
        origin, publisher, number = found
        del publisher.open[number]
        if not ok:
            self.failed += 1
            publisher.failed.append(number)
        self._release(origin, publisher)

    def gate(self, origin: Origin | None, callback: DurableCallback) -> DurableCallback:
        """``callback`` to run once the commit is done, delayed until the holds open
        for ``origin`` now are closed; ``ok`` only if the commit and all of them were."""
        publisher = self._publishers.get(origin) if origin is not None else None
        if publisher is None or not publisher.open:
            return callback
        assert origin is not None
        first, last = publisher.lowest_open(), publisher.next - 1
        publisher.registered.append(first)

        def committed(ok: bool) -> None:
            publisher.waiting.append((first, last, callback, ok))
            self._release(origin, publisher)

        return committed

    def _release(self, origin: Origin, publisher: _Publisher) -> None:
        """Run the waiting acknowledgements whose holds have all closed, in order."""
        lowest = publisher.lowest_open()
        waiting, failed = publisher.waiting, publisher.failed
        while waiting and waiting[0][1] < lowest:
            first, last, callback, ok = waiting.popleft()
            publisher.registered.popleft()
            if failed and any(first <= number <= last for number in failed):
                ok = False
            callback(ok)
        if failed:
            # A failure matters only to acknowledgements not yet released.
            oldest = publisher.registered[0] if publisher.registered else lowest
            publisher.failed = [number for number in failed if number >= oldest]
        idle = not publisher.open and not publisher.registered
        if idle and self._publishers.get(origin) is publisher:
            del self._publishers[origin]
