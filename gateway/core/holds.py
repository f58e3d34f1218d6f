"""Acknowledgements held until a message leaves a queue (a bridge's ``ack = "upstream"``).

A queue with ``hold_acks`` set opens a hold for every persistent message it takes;
the hold closes when the entry leaves the queue: acknowledged (the upstream
confirmed it: ok) or discarded (expired, refused upstream, dropped: not ok). A
publisher's acknowledgement registered with ``Broker.when_durable(callback,
origin)`` then waits for the store's commit and for every hold its publisher had
open at that moment, so acknowledgements stay in order per publisher while
publishers that send nowhere held are not slowed at all.
"""

from __future__ import annotations

from collections.abc import Callable

from .message import Message, Origin

DurableCallback = Callable[[bool], None]


class Hold:
    __slots__ = ("ok", "open", "waiters")

    def __init__(self) -> None:
        self.open = True
        self.ok = True
        self.waiters: list[Callable[[], None]] = []


class Holds:
    """The open holds, per publisher (the message's origin)."""

    def __init__(self) -> None:
        self._open: dict[Origin, list[Hold]] = {}
        self._by_entry: dict[int, tuple[Origin, Hold]] = {}
        self.opened = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._by_entry)

    def held(self, origin: Origin) -> bool:
        """Whether ``origin`` has acknowledgements held now."""
        return origin in self._open

    def enter(self, key: int, message: Message) -> None:
        """An entry (``key`` its identity) holds its publisher's acknowledgements."""
        if key in self._by_entry:
            return
        hold = Hold()
        origin = message.origin
        self._open.setdefault(origin, []).append(hold)
        self._by_entry[key] = (origin, hold)
        self.opened += 1

    def leave(self, key: int, ok: bool) -> None:
        found = self._by_entry.pop(key, None)
        if found is None:
            return
        origin, hold = found
        holds = self._open[origin]
        holds.remove(hold)
        if not holds:
            del self._open[origin]
        hold.open = False
        hold.ok = ok
        if not ok:
            self.failed += 1
        for waiter in hold.waiters:
            waiter()

    def gate(self, origin: Origin | None, callback: DurableCallback) -> DurableCallback:
        """``callback`` to run once the commit is done, delayed until the holds open
        for ``origin`` now are closed; ``ok`` only if the commit and all of them were."""
        holds = self._open.get(origin) if origin is not None else None
        if not holds:
            return callback
        pending = list(holds)

        def committed(ok: bool) -> None:
            waiting = [hold for hold in pending if hold.open]

            def closed() -> None:
                callback(ok and all(hold.ok for hold in pending))

            if waiting:
                _when_all_closed(waiting, closed)
            else:
                closed()

        return committed


def _when_all_closed(holds: list[Hold], then: Callable[[], None]) -> None:
    remaining = [len(holds)]

    def one_closed() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            then()

    for hold in holds:
        hold.waiters.append(one_closed)
