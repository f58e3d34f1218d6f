"""The interface between the core and durable storage.

The core calls these methods synchronously as state changes; an implementation
that writes to disk batches them off the event loop. The store never calls
back into the core or into protocol code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..core.message import Message


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEntry:
    """A message held by a queue: the message is stored once, entries refer to it."""

    message_id: int
    qos: int
    count: int = 0
    wire_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionState:
    client_id: str
    expiry: float
    subscriptions: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True)
class Snapshot:
    """Everything a store recovers at start."""

    messages: dict[int, Message] = field(default_factory=dict)
    queues: dict[str, list[StoredEntry]] = field(default_factory=dict)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    retained: dict[str, Message] = field(default_factory=dict)


class Store(Protocol):
    def enqueue(self, queue: str, message: Message, entry: StoredEntry) -> None:
        """``queue`` now holds ``message`` (stored once however many queues hold it)."""

    def remove(self, queue: str, message_id: int) -> None:
        """``queue`` no longer holds the message; it is deleted when nothing does."""

    def drop_queue(self, queue: str) -> None: ...

    def save_session(self, state: SessionState) -> None: ...

    def delete_session(self, client_id: str) -> None: ...

    def set_retained(self, message: Message) -> None: ...

    def clear_retained(self, topic: str) -> None: ...

    def load(self) -> Snapshot: ...
