"""Counters the operations work exposes: plain integers, cheap to bump on the hot path."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# Per-topic publish counts are kept for this many topics; the rest are summed
# under OTHER_TOPICS so that millions of device topics cannot grow memory.
TOPIC_COUNT_LIMIT = 10_000
OTHER_TOPICS = "(other)"

# Delivery latency is measured on one delivery in SAMPLE_EVERY of each connection (a
# power of two: the check is ``not count & SAMPLE_MASK``), so that the hot path pays
# for a clock reading and a histogram update only that rarely.
SAMPLE_EVERY = 64
SAMPLE_MASK = SAMPLE_EVERY - 1

# Histogram bounds in seconds: delivery latency (ingress to delivery) and store commits.
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Entries per store commit.
BATCH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Buckets:
    """A histogram as plain counters: ``counts[i]`` values at most ``bounds[i]`` (and
    above the previous bound); the last count is above every bound."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, values at most it) per bound, then (inf, every value)."""
        total = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((float(bound), total))
        return out


class Traffic:
    """What a connection moved (a listener's Connection is one): bytes read and
    written, messages received (publishes) and sent (deliveries)."""

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.messages_out = 0

    def add(self, other: Traffic) -> None:
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.messages_in += other.messages_in
        self.messages_out += other.messages_out


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
    refusals: Counter[str] = field(default_factory=Counter)  # refused, per reason
    drops: Counter[str] = field(default_factory=Counter)
    topics: dict[str, int] = field(default_factory=dict)
    routes: RouteStats = field(default_factory=RouteStats)
    # Refusals and throttling by the limits (docs/security.md, "Limits"), per reason:
    # max_connections, max_connections_per_ip, connection_rate_per_ip, message_rate,
    # rate_throttled, max_subscriptions, auth_delayed.
    limited: Counter[str] = field(default_factory=Counter)
    # Authorization refusals (docs/security.md) per action: publish, subscribe, consume.
    denied: Counter[str] = field(default_factory=Counter)
    # Ingress-to-delivery seconds of one delivery in SAMPLE_EVERY (the listeners observe).
    latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BOUNDS))

    def refuse(self, reason: str) -> None:
        """A publish was refused (never on the accepted path: no cost there)."""
        self.refused += 1
        self.refusals[reason] += 1

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
