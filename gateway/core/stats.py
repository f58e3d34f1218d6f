"""Counters the operations work exposes: plain integers, cheap to bump on the hot path."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Per-topic publish counts are kept for this many topics; the rest are summed
# under OTHER_TOPICS so that millions of device topics cannot grow memory.
TOPIC_COUNT_LIMIT = 10_000
OTHER_TOPICS = "(other)"


@dataclass(slots=True)
class RouteStats:
    """What the routing rules did (docs/routing.md); their drops are in ``drops``."""

    matched: Counter[str] = field(default_factory=Counter)  # per rule name
    copied: int = 0
    diverted: int = 0
    forwarded: int = 0
    # Actions left out: missing-value, invalid-destination, no-bridge.
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class BrokerStats:
    published: int = 0
    unrouted: int = 0
    refused: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    topics: dict[str, int] = field(default_factory=dict)
    routes: RouteStats = field(default_factory=RouteStats)
    # Refusals and throttling by the limits (docs/security.md, "Limits"), per reason:
    # max_connections, max_connections_per_ip, connection_rate_per_ip, message_rate,
    # rate_throttled, max_subscriptions, auth_delayed.
    limited: Counter[str] = field(default_factory=Counter)

    def count_topic(self, topic: str) -> None:
        topics = self.topics
        if topic in topics:
            topics[topic] += 1
        elif len(topics) < TOPIC_COUNT_LIMIT:
            topics[topic] = 1
        else:
            topics[OTHER_TOPICS] = topics.get(OTHER_TOPICS, 0) + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSnapshot:
    name: str
    depth: int
    bytes: int
    consumers: int
    in_flight: int
    enqueued: int
    delivered: int
    acked: int
    redelivered: int
    expired: int
    dead_lettered: int
    dropped: int
    refused: int
