"""The batch: the changes recorded since the last commit, coalesced by key (group
commit). A message enqueued and removed within one batch never reaches the disk;
the updates of one entry collapse into one."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.message import Message
from .base import DurableCallback, SessionState, StoredEntry


class Gone:
    """An entry removed in this batch: its row is deleted at commit."""


GONE = Gone()


@dataclass(slots=True)
class Batch:
    """Changes recorded since the last commit, coalesced by key."""

    messages: dict[int, Message] = field(default_factory=dict)
    # (queue, message id) -> (seq, entry) to write, or GONE to delete
    entries: dict[tuple[str, int], tuple[int, StoredEntry] | Gone] = field(default_factory=dict)
    # keys first enqueued in this batch (not on disk): removing one cancels it
    fresh: set[tuple[str, int]] = field(default_factory=set)
    dropped_queues: list[str] = field(default_factory=list)
    sessions: dict[str, SessionState | None] = field(default_factory=dict)
    incomplete: dict[tuple[str, int], bool] = field(default_factory=dict)
    retained: dict[str, Message | None] = field(default_factory=dict)
    durable: dict[str, str | None] = field(default_factory=dict)
    callbacks: list[DurableCallback] = field(default_factory=list)
    wait: bool = False

    def empty(self) -> bool:
        return not (
            self.entries
            or self.dropped_queues
            or self.sessions
            or self.incomplete
            or self.retained
            or self.durable
        )

    def absorb(self, newer: Batch) -> int:
        """Apply ``newer``'s changes (recorded after this batch's) on top of this one,
        as if they had been recorded into it; returns how many entries cancel out.

        A batch whose commit failed is kept this way: it is written together with
        what came after it, so the acknowledgements that followed (their removals
        free space) can make the retry fit on a full disk.
        """
        cancelled = 0
        entries, fresh = self.entries, self.fresh
        for queue in newer.dropped_queues:
            for key in [k for k in entries if k[0] == queue]:
                fresh.discard(key)
                del entries[key]
            self.dropped_queues.append(queue)
        for key, held in newer.entries.items():
            old = entries.get(key)
            if isinstance(held, Gone):
                if key in fresh:  # written by neither: never reaches the disk
                    fresh.discard(key)
                    del entries[key]
                    cancelled += 1
                else:
                    entries[key] = held
                continue
            seq, entry = held
            if seq < 0:  # an update: keep the write this batch already has
                if isinstance(old, Gone):
                    continue
                if old is not None:
                    seq = old[0]
            elif old is None and key in newer.fresh:
                fresh.add(key)
            entries[key] = (seq, entry)
        self.messages.update(newer.messages)
        self.sessions.update(newer.sessions)
        for key, held_now in newer.incomplete.items():
            if key[1] < 0:  # the session ended: every earlier id of it goes
                for old_key in [k for k in self.incomplete if k[0] == key[0]]:
                    del self.incomplete[old_key]
            self.incomplete.pop(key, None)  # keep the order: newer changes apply last
            self.incomplete[key] = held_now
        self.retained.update(newer.retained)
        self.durable.update(newer.durable)
        self.callbacks.extend(newer.callbacks)
        # Nobody waits for this batch's own changes any more (they were refused):
        # only the newer batch's acknowledgements wait for the commit.
        self.wait = newer.wait
        return cancelled
