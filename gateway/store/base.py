"""The interface between the core and durable storage.

The core calls these methods synchronously as state changes; an implementation
that writes to disk records them and commits them in batches off the event
loop. ``when_durable`` is the barrier acknowledgements wait behind: its
callback runs once everything recorded so far (that asked to be waited for) is
committed. The store never calls back into the core or into protocol code
except through those callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the core imports this module: no import cycle at run time
    from ..core.message import Message

# A callback given to when_durable: True once committed, False if the store
# failed and the change will not be stored (the acknowledgement must refuse).
DurableCallback = Callable[[bool], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredEntry:
    """A message held by a queue: the message is stored once, entries refer to it.

    ``count`` is how often it was sent, ``wire_id`` the protocol id of the latest
    send (MQTT packet id) and ``stage`` its progress (1 = PUBREC received), so a
    resumed session resends under the same id from the same step.
    """

    message_id: int
    qos: int
    count: int = 0
    wire_id: int | None = None
    stage: int = 0
    retain: bool = False
    subscription_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSubscription:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None
    selector: str | None = None  # the selector's text, compiled again at recovery


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionState:
    client_id: str
    expiry: float
    subscriptions: tuple[StoredSubscription, ...] = ()


@dataclass(slots=True)
class Snapshot:
    """Everything a store recovers at start. Queue entries are in their stored order."""

    messages: dict[int, Message] = field(default_factory=dict)
    queues: dict[str, list[StoredEntry]] = field(default_factory=dict)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    retained: dict[str, Message] = field(default_factory=dict)
    durable_subscriptions: dict[str, str] = field(default_factory=dict)
    incomplete: dict[str, set[int]] = field(default_factory=dict)


class Store(Protocol):
    def enqueue(self, queue: str, message: Message, entry: StoredEntry, *, wait: bool) -> None:
        """``queue`` now holds ``message`` (stored once however many queues hold it).

        ``wait``: acknowledgements registered after this wait for its commit
        (durability mode ``sync``); otherwise it is committed in the background."""

    def update(self, queue: str, entry: StoredEntry, *, wait: bool = False) -> None:
        """An entry's delivery progress changed (count, wire id, stage).

        ``wait``: what is registered with ``when_durable`` after this waits for its
        commit, as for ``enqueue`` (the next protocol step depends on it)."""

    def remove(self, queue: str, message_id: int) -> None:
        """``queue`` no longer holds the message; it is deleted when nothing does."""

    def drop_queue(self, queue: str) -> None: ...

    def save_session(self, state: SessionState) -> None: ...

    def delete_session(self, client_id: str) -> None: ...

    def add_incomplete(self, client_id: str, wire_id: int, *, wait: bool = True) -> None:
        """An inbound exactly-once message awaits release (MQTT QoS 2 before PUBREL).
        ``wait`` as for ``enqueue`` (the PUBREC waits for it in mode ``sync``)."""

    def remove_incomplete(self, client_id: str, wire_id: int, *, wait: bool = True) -> None:
        """Released (MQTT PUBREL); ``wait``: the PUBCOMP waits for it (mode ``sync``)."""

    def save_durable_subscription(self, name: str, topic_filter: str) -> None: ...

    def delete_durable_subscription(self, name: str) -> None: ...

    def set_retained(self, message: Message) -> None: ...

    def clear_retained(self, topic: str) -> None: ...

    def when_durable(self, callback: DurableCallback) -> None:
        """Call ``callback`` once what was recorded so far is committed (in order)."""

    @property
    def available(self) -> bool:
        """False while the store cannot write (disk full): persistent publishes are refused."""

    def load(self) -> Snapshot: ...
