"""The in-memory store: the reference implementation of the store interface.

It keeps what a durable store would write, with the same reference counting,
so tests can check that the core persists exactly what it should. Nothing
survives the process.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the core imports this module: no import cycle at run time
    from ..core.message import Message
from .base import DurableCallback, SessionState, Snapshot, StoredEntry


class MemoryStore:
    def __init__(self) -> None:
        self.messages: dict[int, Message] = {}
        self.refs: Counter[int] = Counter()
        self.queues: dict[str, dict[int, StoredEntry]] = {}
        self.sessions: dict[str, SessionState] = {}
        self.retained: dict[str, Message] = {}
        self.durable_subscriptions: dict[str, str] = {}
        self.incomplete: dict[str, set[int]] = {}

    @property
    def available(self) -> bool:
        return True

    def when_durable(self, callback: DurableCallback) -> None:
        callback(True)

    def enqueue(self, queue: str, message: Message, entry: StoredEntry, *, wait: bool) -> None:
        held = self.queues.setdefault(queue, {})
        if entry.message_id not in held:
            self.refs[entry.message_id] += 1
            self.messages.setdefault(entry.message_id, message)
        held[entry.message_id] = entry

    def update(self, queue: str, entry: StoredEntry, *, wait: bool = False) -> None:
        held = self.queues.get(queue)
        if held is not None and entry.message_id in held:
            held[entry.message_id] = entry

    def remove(self, queue: str, message_id: int) -> None:
        held = self.queues.get(queue)
        if held is None or held.pop(message_id, None) is None:
            return
        self._release(message_id)

    def _release(self, message_id: int) -> None:
        self.refs[message_id] -= 1
        if self.refs[message_id] <= 0:
            del self.refs[message_id]
            self.messages.pop(message_id, None)

    def drop_queue(self, queue: str) -> None:
        for message_id in self.queues.pop(queue, {}):
            self._release(message_id)

    def save_session(self, state: SessionState) -> None:
        self.sessions[state.client_id] = state

    def delete_session(self, client_id: str) -> None:
        self.sessions.pop(client_id, None)
        self.incomplete.pop(client_id, None)

    def add_incomplete(self, client_id: str, wire_id: int, *, wait: bool = True) -> None:
        self.incomplete.setdefault(client_id, set()).add(wire_id)

    def remove_incomplete(self, client_id: str, wire_id: int, *, wait: bool = True) -> None:
        self.incomplete.get(client_id, set()).discard(wire_id)

    def save_durable_subscription(self, name: str, topic_filter: str) -> None:
        self.durable_subscriptions[name] = topic_filter

    def delete_durable_subscription(self, name: str) -> None:
        self.durable_subscriptions.pop(name, None)

    def set_retained(self, message: Message) -> None:
        self.retained[message.destination] = message

    def clear_retained(self, topic: str) -> None:
        self.retained.pop(topic, None)

    def load(self) -> Snapshot:
        return Snapshot(
            messages=dict(self.messages),
            queues={name: list(held.values()) for name, held in self.queues.items()},
            sessions=dict(self.sessions),
            retained=dict(self.retained),
            durable_subscriptions=dict(self.durable_subscriptions),
            incomplete={k: set(v) for k, v in self.incomplete.items() if v},
        )
