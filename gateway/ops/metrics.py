"""Prometheus metrics of one gateway, read from its counters at scrape time.

``GatewayCollector`` turns what the gateway already counts (plain integers on
the broker, queues, listeners, connections, bridges, store and authenticator)
into metric families when Prometheus scrapes GET /metrics; nothing is done per
message for the metrics beyond those integer bumps. Each gateway has its own
``CollectorRegistry`` (``registry_for``), never the global one, so that several
gateways in one process (the tests) do not clash.

Cardinality is bounded: labels are protocols, listener names, queue names
(session and temporary queues left out), bridge names, rule names and reasons,
never client ids. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..core.broker import SESSION_QUEUE_PREFIX, TEMP_QUEUE_PREFIX
from ..core.stats import Buckets, Traffic

# The exposition format's media type (text/plain; version=...).
CONTENT_TYPE = CONTENT_TYPE_LATEST

# The queues left out by default: one per client (MQTT sessions) or per request.
SKIPPED_QUEUE_PREFIXES = (SESSION_QUEUE_PREFIX, TEMP_QUEUE_PREFIX)

_registries: weakref.WeakKeyDictionary[Any, CollectorRegistry] = weakref.WeakKeyDictionary()


def registry_for(gateway: Any) -> CollectorRegistry:
    """The registry of ``gateway`` (an ``app.Gateway``), made on first use: its
    ``GatewayCollector`` and the process metrics."""
    registry = _registries.get(gateway)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GatewayCollector(gateway))
        ProcessCollector(registry=registry)
        _registries[gateway] = registry
    return registry


def exposition(gateway: Any) -> bytes:
    """The text exposition of ``gateway``'s metrics."""
    return generate_latest(registry_for(gateway))


def _per_label(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A counter with one sample per key of ``counts`` (a Counter), in key order."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _histogram(name: str, documentation: str, buckets: Buckets) -> HistogramMetricFamily:
    # Read once: the store's histograms grow in its writer thread meanwhile.
    counts = list(buckets.counts)
    total = 0
    pairs: list[tuple[str, float]] = []
    for bound, count in zip((*buckets.bounds, float("inf")), counts, strict=True):
        total += count
        pairs.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return HistogramMetricFamily(name, documentation, buckets=pairs, sum_value=buckets.sum)


class GatewayCollector(Collector):
    """The gateway's metric families, built from its counters at each scrape.

    ``gateway`` is an ``app.Gateway`` (read: ``broker``, ``_servers``, ``bridges``,
    ``auth``). ``all_queues`` also reports session and temporary queues, one per
    client or request: for debugging only (cardinality).
    """

    def __init__(self, gateway: Any, *, all_queues: bool = False) -> None:
        self.gateway = gateway
        self.all_queues = all_queues
        # A reload replaces the authenticator: its failures are kept, so that the
        # counter never goes back.
        self._auth: Any = None
        self._auth_before: Counter[tuple[str, str]] = Counter()

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("gateway", "The gateway's version")
        info.add_metric([], {"version": __version__})
        yield info
        yield from self._listeners()
        yield from self._publishing()
        yield from self._queues()
        yield from self._store()
        yield from self._bridges()
        yield from self._security()

    # -- listeners and connections -------------------------------------------------------

    def _listeners(self) -> Iterable[Metric]:
        labels = ["protocol", "listener"]
        open_ = GaugeMetricFamily("gateway_connections", "Open connections", labels=labels)
        accepted = CounterMetricFamily(
            "gateway_connections_accepted", "Connections admitted since start", labels=labels
        )
        received = CounterMetricFamily(
            "gateway_messages_received",
            "Messages published by clients (MQTT PUBLISH, STOMP SEND, HTTP publishes)",
            labels=labels,
        )
        sent = CounterMetricFamily(
            "gateway_messages_sent",
            "Messages delivered to clients (MQTT PUBLISH, STOMP MESSAGE, SSE events, pulls)",
            labels=labels,
        )
        bytes_in = CounterMetricFamily(
            "gateway_received_bytes", "Bytes read from clients", labels=labels
        )
        bytes_out = CounterMetricFamily(
            "gateway_sent_bytes", "Bytes written to clients", labels=labels
        )
        for server in getattr(self.gateway, "_servers", ()):
            config = server.config
            key = [config.protocol, config.label]
            total = Traffic()
            total.add(server.closed)
            connections = list(server.connections)
            for conn in connections:
                total.add(conn)
            open_.add_metric(key, len(connections))
            accepted.add_metric(key, server.accepted)
            received.add_metric(key, total.messages_in)
            sent.add_metric(key, total.messages_out)
            bytes_in.add_metric(key, total.bytes_in)
            bytes_out.add_metric(key, total.bytes_out)
        yield from (open_, accepted, received, sent, bytes_in, bytes_out)
        yield _per_label(
            "gateway_limited",
            "Connections refused and clients throttled by the limits, per reason",
            "reason",
            self.gateway.broker.stats.limited,
        )

    # -- the core: publishing and routing ------------------------------------------------

    def _publishing(self) -> Iterable[Metric]:
        broker = self.gateway.broker
        stats = broker.stats
        outcome = CounterMetricFamily(
            "gateway_publishes",
            "Publishes handed to the core, by outcome (accepted includes unrouted)",
            labels=["outcome"],
        )
        outcome.add_metric(["accepted"], stats.published - stats.refused)
        outcome.add_metric(["refused"], stats.refused)
        yield outcome
        yield _per_label(
            "gateway_publish_refused", "Publishes refused, per reason", "reason", stats.refusals
        )
        yield CounterMetricFamily(
            "gateway_unrouted",
            "Publishes accepted that no subscription or queue took",
            value=stats.unrouted,
        )
        yield _per_label(
            "gateway_dropped", "Messages dropped by the core, per reason", "reason", stats.drops
        )
        yield CounterMetricFamily(
            "gateway_delivered", "Deliveries made by the core", value=broker.delivered_total()
        )
        yield GaugeMetricFamily("gateway_sessions", "Sessions held", value=len(broker.sessions))
        yield GaugeMetricFamily(
            "gateway_sessions_connected", "Sessions connected", value=broker.connected_count()
        )
        yield GaugeMetricFamily(
            "gateway_subscriptions", "Topic subscriptions", value=broker.subscription_count
        )
        yield GaugeMetricFamily(
            "gateway_retained_messages", "Retained messages", value=len(broker.retained)
        )
        routes = stats.routes
        yield _per_label(
            "gateway_route_matched", "Messages each routing rule matched", "rule", routes.matched
        )
        actions = CounterMetricFamily(
            "gateway_route_actions", "What the routing rules did", labels=["action"]
        )
        actions.add_metric(["copied"], routes.copied)
        actions.add_metric(["diverted"], routes.diverted)
        actions.add_metric(["forwarded"], routes.forwarded)
        yield actions
        yield _per_label(
            "gateway_route_skipped",
            "Routing actions left out, per reason",
            "reason",
            routes.skipped,
        )
        yield _histogram(
            "gateway_delivery_latency_seconds",
            "Seconds from a message's arrival to its delivery to an MQTT or STOMP client "
            "(one delivery in 64 of each connection)",
            stats.latency,
        )

    # -- queues -----------------------------------------------------------------------------

    def _queues(self) -> Iterable[Metric]:
        broker = self.gateway.broker
        labels = ["queue"]
        gauges = {
            "depth": GaugeMetricFamily(
                "gateway_queue_depth", "Messages waiting (the consumers' lag)", labels=labels
            ),
            "bytes": GaugeMetricFamily(
                "gateway_queue_bytes", "Payload bytes waiting", labels=labels
            ),
            "consumers": GaugeMetricFamily(
                "gateway_queue_consumers", "Consumers attached", labels=labels
            ),
            "in_flight": GaugeMetricFamily(
                "gateway_queue_unacked",
                "Messages delivered and not yet acknowledged",
                labels=labels,
            ),
        }
        counters = {
            name: CounterMetricFamily(f"gateway_queue_{name}", help_, labels=labels)
            for name, help_ in (
                ("enqueued", "Messages put on the queue"),
                ("delivered", "Deliveries from the queue (redeliveries included)"),
                ("acked", "Deliveries acknowledged"),
                ("redelivered", "Redeliveries"),
                ("expired", "Messages expired on the queue"),
                ("dead_lettered", "Messages moved to the dead-letter queue"),
                ("dropped", "Messages dropped (overflow, max deliveries without a DLQ)"),
                ("refused", "Messages the queue refused (full, reject-publish)"),
            )
        }
        for name in sorted(broker.queues):
            if not self.all_queues and name.startswith(SKIPPED_QUEUE_PREFIXES):
                continue
            snapshot = broker.queue_stats(name)
            for field, family in gauges.items():
                family.add_metric([name], getattr(snapshot, field))
            for field, counter in counters.items():
                counter.add_metric([name], getattr(snapshot, field))
        yield from gauges.values()
        yield from counters.values()

    # -- the store ------------------------------------------------------------------------

    def _store(self) -> Iterable[Metric]:
        store = self.gateway.broker.store
        yield GaugeMetricFamily(
            "gateway_store_available",
            "1 while the store can write (0: disk full or failing)",
            value=1 if store.available else 0,
        )
        stats = getattr(store, "stats", None)
        if stats is None:  # the memory store
            return
        yield _histogram(
            "gateway_store_commit_seconds", "Seconds per store commit", stats.commit_seconds
        )
        yield _histogram(
            "gateway_store_commit_entries", "Entries written per store commit", stats.batch_entries
        )
        yield CounterMetricFamily(
            "gateway_store_commit_failures", "Store commits that failed", value=stats.failures
        )

    # -- bridges ------------------------------------------------------------------------

    def _bridges(self) -> Iterable[Metric]:
        labels = ["bridge"]
        up = GaugeMetricFamily(
            "gateway_bridge_up", "1 while the bridge is connected", labels=labels
        )
        gauges = {
            "outbox_depth": GaugeMetricFamily(
                "gateway_bridge_outbox_depth", "Messages waiting to be sent", labels=labels
            ),
            "in_flight": GaugeMetricFamily(
                "gateway_bridge_in_flight", "Messages sent and not yet confirmed", labels=labels
            ),
        }
        counters = {
            name: CounterMetricFamily(f"gateway_bridge_{name}", help_, labels=labels)
            for name, help_ in (
                ("sent", "Messages sent upstream"),
                ("confirmed", "Messages the upstream confirmed"),
                ("refused", "Messages the upstream refused"),
                ("resent", "Messages sent again after a reconnect"),
                ("received", "Messages received from upstream"),
                ("connects", "Connections made to the upstream"),
                ("failures", "Connection attempts that failed"),
            )
        }
        latency = {
            "confirm_latency_avg": GaugeMetricFamily(
                "gateway_bridge_confirm_latency_avg_seconds",
                "Mean seconds from send to upstream confirmation",
                labels=labels,
            ),
            "confirm_latency_max": GaugeMetricFamily(
                "gateway_bridge_confirm_latency_max_seconds",
                "Longest seconds from send to upstream confirmation",
                labels=labels,
            ),
        }
        for name, bridge in sorted(getattr(self.gateway, "bridges", {}).items()):
            snapshot = bridge.snapshot()
            up.add_metric([name], 1 if snapshot["connected"] else 0)
            for field, gauge in gauges.items():
                gauge.add_metric([name], snapshot[field])
            for field, counter in counters.items():
                counter.add_metric([name], snapshot[field])
            for field, family in latency.items():
                value = snapshot[field]
                if value is not None:
                    family.add_metric([name], value)
        yield up
        yield from gauges.values()
        yield from counters.values()
        yield from latency.values()

    # -- authentication and authorization -------------------------------------------------

    def _security(self) -> Iterable[Metric]:
        failures = CounterMetricFamily(
            "gateway_auth_failures",
            "Refused authentications, per mechanism and reason",
            labels=["mechanism", "reason"],
        )
        auth = getattr(self.gateway, "auth", None)
        if auth is not self._auth:
            if self._auth is not None:
                self._auth_before.update(self._auth.failures)
            self._auth = auth
        counts = Counter(self._auth_before)
        if auth is not None:
            counts.update(auth.failures)
        for (mechanism, reason), count in sorted(counts.items()):
            failures.add_metric([mechanism, reason], count)
        yield failures
        yield _per_label(
            "gateway_acl_denied",
            "Requests the ACL refused, per action",
            "action",
            self.gateway.broker.stats.denied,
        )
