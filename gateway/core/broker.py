"""The broker facade: the one narrow interface every listener and bridge uses."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .message import Message
from .topics import TopicTrie


class CloseReason(Enum):
    TAKEN_OVER = "session taken over"
    SHUTDOWN = "server shutting down"


class Sink(Protocol):
    """What a listener hands the core to receive deliveries. Never blocks."""

    def deliver(self, message: Message, qos: int, retain: bool) -> None: ...

    def close(self, reason: CloseReason) -> None: ...


@dataclass(slots=True, eq=False)
class Session:
    client_id: str
    sink: Sink | None
    subscriptions: dict[str, int]


@dataclass(frozen=True, slots=True)
class Subscriber:
    session: Session
    qos: int


class Broker:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._topics: TopicTrie[Session, Subscriber] = TopicTrie()

    @property
    def subscription_count(self) -> int:
        return len(self._topics)

    def open_session(self, client_id: str, sink: Sink) -> Session:
        old = self._sessions.pop(client_id, None)
        if old is not None:
            old_sink = old.sink
            self._drop(old)
            if old_sink is not None:
                old_sink.close(CloseReason.TAKEN_OVER)
        session = Session(client_id=client_id, sink=sink, subscriptions={})
        self._sessions[client_id] = session
        return session

    def close_session(self, session: Session) -> None:
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        self._drop(session)

    def _drop(self, session: Session) -> None:
        session.sink = None
        for topic_filter in session.subscriptions:
            self._topics.remove(topic_filter, session)
        session.subscriptions.clear()

    def subscribe(self, session: Session, topic_filter: str, qos: int) -> int:
        """Subscribe; returns the granted QoS."""
        session.subscriptions[topic_filter] = qos
        self._topics.add(topic_filter, session, Subscriber(session, qos))
        return qos

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self._topics.remove(topic_filter, session)
        return True

    def publish(self, message: Message) -> int:
        """Route ``message`` to every matching subscriber; returns how many got it."""
        delivered = 0
        for sub in self._topics.match(message.destination):
            sink = sub.session.sink
            if sink is not None:
                sink.deliver(message, min(sub.qos, message.qos), False)
                delivered += 1
        return delivered
