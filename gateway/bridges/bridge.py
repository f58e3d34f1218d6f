"""One bridge: its outboxes, its link to the upstream, and what it takes in.

Outbound, a bridge is a consumer of core queues (its outboxes): a durable topic
subscription per outbound rule matching a topic filter, the queue itself for a
rule matching ``$queue/NAME``, and one queue for what routes forward to it. An
entry leaves an outbox only when the upstream confirmed it (acknowledged in the
core) or refused it for good (rejected: dead-lettered); when the link drops,
what was in flight goes back to the outbox and is sent again on the next link.
So the outbox is the store's, with its limits, overflow policy, expiry,
dead-lettering and counters, and it survives a restart like any durable queue.

Inbound, each message is published into the core as the bridge's own
(trusted) origin, and settled upstream once the core has it: accepted and, for
durable destinations, committed.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import structlog
import trio

from ..config import parse_duration
from ..core.broker import BRIDGE_QUEUE_PREFIX, QUEUE_PREFIX, Broker
from ..core.delivery import CloseReason, Delivery
from ..core.message import Kind, Message, Origin
from ..core.queue import Overflow, Queue, QueuePolicy
from ..core.routing import parse_destination
from ..core.selector import Selector, compile_selector
from ..core.session import TRUSTED, Session
from .base import ORIGIN_HEADER, InboundRule, Outbound, Settle, Upstream, UpstreamError

if TYPE_CHECKING:
    from .config import BridgeConfig, OutboundRuleConfig

BRIDGE_PREFIX = BRIDGE_QUEUE_PREFIX
_UPSTREAMS = {
    "amqp": "AmqpUpstream",
    "mqtt": "MqttUpstream",
    "nats": "NatsUpstream",
    "redis": "RedisUpstream",
}
# How many outbound messages go to the upstream in one write at most.
_BATCH = 512
# How long close() may take before the link is dropped.
_CLOSE_TIMEOUT = 2.0
# How long an inbound message the core refused waits before it goes back upstream: an
# upstream that redelivers at once (AMQP requeue, JetStream -NAK) would otherwise spin.
INBOUND_RETRY_DELAY = 1.0


@dataclass(slots=True)
class BridgeStats:
    """What a bridge reports (health, metrics, the admin API)."""

    state: str = "starting"  # starting | connecting | up | down | paused | stopped
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_code: int | str | None = None
    last_change: float = field(default_factory=time.time)
    sent: int = 0
    resent: int = 0  # sent again after a link loss: the upstream may have it twice
    confirmed: int = 0
    refused: int = 0
    received: int = 0
    inbound_refused: int = 0
    loops: int = 0
    forwarded: int = 0
    confirm_seconds_total: float = 0.0
    confirm_seconds_max: float = 0.0


@dataclass(frozen=True, slots=True)
class _Outbox:
    queue: str
    template: str
    prefix: int  # characters of the topic before what the filter's "#" matched
    upstream_ack: bool


class Bridge:
    """A link to one upstream broker, reconnecting with backoff until stopped."""

    def __init__(self, config: BridgeConfig, broker: Broker) -> None:
        self.config = config
        self.name = config.name
        self.broker = broker
        self.stats = BridgeStats()
        self.log = structlog.get_logger("gateway.bridges").bind(
            bridge=config.name, kind=config.kind
        )
        module = importlib.import_module(f"gateway.bridges.{config.kind}")
        self._upstream_class: type[Upstream] = getattr(module, _UPSTREAMS[config.kind])
        self._options = config.options()
        self._separator = self._upstream_class.separator
        self.client_id = BRIDGE_PREFIX + config.name
        self.origin = Origin(protocol="bridge", listener=config.name, client_id=self.client_id)
        self.outboxes: dict[str, _Outbox] = {}
        self.forward_queue = f"{BRIDGE_PREFIX}{config.name}/forward"
        self.dead_letter = config.outbox.dead_letter or f"bridge.{config.name}.dlq"
        self._inbound = tuple(
            InboundRule(index=i, source=rule.source, qos=rule.qos)
            for i, rule in enumerate(config.inbound)
        )
        self._pending: deque[Delivery] = deque()
        # Inbound messages the core refused, returned upstream once due (in order).
        self._refused: deque[tuple[float, Settle]] = deque()
        self._refused_wake = trio.Event()
        self._inflight: dict[int, tuple[Delivery, float]] = {}
        self._tags = itertools.count(1)
        self._wake = trio.Event()
        self._session: Session | None = None
        self._link_scope: trio.CancelScope | None = None
        self._paused = not config.enabled
        self._resumed = trio.Event()
        self._failure: UpstreamError | None = None
        self.attached = False

    # -- set-up --------------------------------------------------------------------

    def _policy(self) -> QueuePolicy:
        box = self.config.outbox
        return QueuePolicy(
            max_length=box.max_length,
            max_bytes=box.max_bytes,
            overflow=Overflow(box.overflow),
            max_deliveries=box.max_deliveries,
            dead_letter=self.dead_letter,
            ttl=None if box.ttl is None else parse_duration(box.ttl),
        )

    def attach(self) -> None:
        """Create (or take back, after a restart) the outboxes, so that what is
        published from now on is kept for the upstream even before the link is up."""
        policy = self._policy()
        for i, rule in enumerate(self.config.outbound):
            if rule.match.startswith(QUEUE_PREFIX):
                name = rule.match[len(QUEUE_PREFIX) :]
                queue = self.broker.declare_queue(name)
                prefix = 0
            else:
                name = f"{BRIDGE_PREFIX}{self.name}/{i}"
                queue = self.broker.durable_subscription(
                    name, rule.match, selector=self._selector(rule), policy=policy
                )
                prefix = len(rule.match) - 1 if rule.match.endswith("#") else len(rule.match)
            self._hold_acks(queue, rule.ack == "upstream")
            self.outboxes[name] = _Outbox(name, rule.to, prefix, rule.ack == "upstream")
        if self.broker.router is not None and self.name in self.broker.router.bridges:
            queue = self.broker.declare_queue(self.forward_queue, policy)
            self.outboxes[self.forward_queue] = _Outbox(
                self.forward_queue, self.config.forward_to, 0, False
            )
            self.broker.router.attach_bridge(self.name, self._forward)
        self._unbind(keep=self.outboxes)
        self.attached = True

    def detach(self, *, release: bool = True) -> None:
        """The bridge is removed from the configuration (or replaced: ``release``
        False): its outboxes stop filling and stay as plain queues with what they hold.
        Acknowledgements held for their messages (``ack = "upstream"``) are released as
        not confirmed, since nothing will send them upstream now; a replaced bridge's
        successor takes the same outboxes, and they stay held."""
        for name in self.outboxes:
            queue = self.broker.queues.get(name)
            if queue is None or queue.holds is None:
                continue
            queue.holds = None
            if release:
                unacked = (e for c in queue.consumers for e in c.unacked.values())
                for entry in [*queue.entries(), *unacked]:
                    self.broker.holds.leave(id(entry), ok=False)
        if self.broker.router is not None:
            self.broker.router.detach_bridge(self.name)
        self._unbind(keep={})
        self.attached = False

    def _unbind(self, keep: Mapping[str, object]) -> None:
        """Stop feeding this bridge's topic outboxes that ``keep`` does not name: their
        rule is gone (after a restart or a reload with fewer outbound rules). Whatever
        they hold stays, as a queue an operator can move or purge."""
        prefix = f"{BRIDGE_PREFIX}{self.name}/"
        for name in self.broker.durable_filters():
            if name.startswith(prefix) and name not in keep:
                self.broker.unbind_durable_subscription(name)
                queue = self.broker.queues.get(name)
                depth = queue.depth if queue is not None else 0
                self.log.warning("bridge.outbox_unbound", queue=name, depth=depth)

    def _hold_acks(self, queue: Queue, hold: bool) -> None:
        queue.holds = self.broker.holds if hold else None

    def _selector(self, rule: OutboundRuleConfig) -> Selector:
        """What goes into an outbox: never what this bridge brought in (no loops),
        and only what the rule's selector matches."""
        own = self.name
        chosen = None if rule.selector is None else compile_selector(rule.selector)

        def matches(message: Message, redelivered: bool) -> bool:
            origin = message.origin
            if origin.protocol == "bridge" and origin.listener == own:
                return False
            return chosen is None or chosen.matches(message)

        text = f"not from bridge {own}" + ("" if chosen is None else f" and ({chosen.text})")
        return Selector(text, matches)

    def _forward(self, message: Message) -> None:
        """A route's forward_to_bridge: into the forward outbox (never blocks)."""
        origin = message.origin
        if origin.protocol == "bridge" and origin.listener == self.name:
            self.stats.loops += 1
            return
        queue = self.broker.declare_queue(self.forward_queue)
        if queue.put(Delivery(message, message.qos, False, (), message.expiry)) is None:
            self.stats.forwarded += 1

    @property
    def outbox_depth(self) -> int:
        queues = self.broker.queues
        return sum(queues[name].depth for name in self.outboxes if name in queues) + len(
            self._pending
        )

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- the link ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a link to the upstream until cancelled."""
        if not self.attached:
            self.attach()
        task_status.started()
        failures = 0
        try:
            while True:
                if self._paused:
                    self._set_state("paused")
                    await self._resumed.wait()
                    continue
                self._set_state("connecting")
                if await self._link():
                    failures = 0
                else:
                    failures += 1
                if self.paused:
                    continue
                delay = min(
                    self.config.reconnect_max, self.config.reconnect_min * 2 ** min(failures, 30)
                )
                error = self._failure
                if error is not None and not error.retry:
                    delay = self.config.reconnect_max
                # Jitter spreads the reconnects of many gateways after an upstream restart.
                delay *= 0.5 + random.random() / 2
                self.log.info("bridge.retry", seconds=round(delay, 2), failures=failures)
                await trio.sleep(delay)
        finally:
            self._set_state("stopped")
            snapshot = self.snapshot()
            del snapshot["name"], snapshot["kind"], snapshot["state"]
            self.log.info("bridge.stopped", **snapshot)

    async def _link(self) -> bool:
        """One connection, until it fails; True if it was up."""
        upstream = self._upstream_class(self.config, self._options, self, self._inbound)
        self._failure = None
        up = False
        try:
            with trio.CancelScope() as scope:
                self._link_scope = scope
                try:
                    with trio.fail_after(self.config.connect_timeout):
                        await upstream.open()
                except trio.TooSlowError:
                    raise UpstreamError(
                        f"no answer within connect_timeout ({self.config.connect_timeout} s)"
                    ) from None
                up = True
                self._went_up()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, upstream.run, nursery.cancel_scope)
                    nursery.start_soon(self._guard, self._return_refused, nursery.cancel_scope)
                    nursery.start_soon(
                        self._guard, lambda: self._pump(upstream), nursery.cancel_scope
                    )
            failure = self._last_failure()
            if failure is not None:
                self._failed(failure)
        except UpstreamError as exc:
            self._failed(exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(UpstreamError(f"connection lost: {exc!r}"))
        finally:
            self._link_scope = None
            if up:
                self._went_down()
            with trio.move_on_after(_CLOSE_TIMEOUT) as closing:
                closing.shield = True
                with contextlib.suppress(
                    UpstreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    await upstream.close()
        return up

    async def _guard(self, task: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        """Run one of the link's tasks; whichever ends first ends the link."""
        try:
            await task()
            self._failure = self._failure or UpstreamError("the upstream closed the connection")
        except UpstreamError as exc:
            self._failure = exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failure = UpstreamError(f"connection lost: {exc!r}")
        except Exception as exc:  # a bug in a kind must not end the gateway: log, reconnect
            self.log.exception("bridge.error")
            self._failure = UpstreamError(f"internal error: {exc!r}")
        scope.cancel()

    def _last_failure(self) -> UpstreamError | None:
        return self._failure  # set by the link's tasks (_guard)

    @property
    def paused(self) -> bool:
        return self._paused

    def _failed(self, error: UpstreamError) -> None:
        self._failure = error
        self.stats.failures += 1
        self.stats.last_error = str(error)
        self.stats.last_error_code = error.code
        self.log.warning("bridge.down", error=str(error), code=error.code, retry=error.retry)
        self._set_state("down")

    def _set_state(self, state: str) -> None:
        if self.stats.state != state:
            self.stats.state = state
            self.stats.last_change = time.time()

    def _went_up(self) -> None:
        self.stats.connects += 1
        self._set_state("up")
        self.log.info("bridge.up", connects=self.stats.connects)
        # The bridge consumes its outboxes only while the link is up; whatever a
        # previous link left unconfirmed was requeued and comes first.
        session, _ = self.broker.open_session(
            self.client_id, self, window=self.config.max_in_flight, identity=TRUSTED
        )
        self._session = session
        for name in self.outboxes:
            self.broker.consume(session, name, qos=1, window=self.config.max_in_flight)

    def _went_down(self) -> None:
        session, self._session = self._session, None
        self._inflight.clear()
        self._pending.clear()
        self._refused.clear()  # never settled: the upstream sends them again
        if session is not None:
            # Ends the session: every unconfirmed entry goes back to its outbox.
            self.broker.detach(session, graceful=True)

    async def _pump(self, upstream: Upstream) -> None:
        pending = self._pending
        stats = self.stats
        while True:
            if not pending:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            now = time.monotonic()
            batch: list[Outbound] = []
            while pending and len(batch) < _BATCH:
                delivery = pending.popleft()
                tag = next(self._tags)
                self._inflight[tag] = (delivery, now)
                redelivered = delivery.count > 1
                if redelivered:
                    stats.resent += 1
                batch.append(Outbound(tag, delivery.message, self._target(delivery), redelivered))
            stats.sent += len(batch)
            await upstream.publish(batch)

    def _target(self, delivery: Delivery) -> str:
        consumer = delivery.consumer
        box = self.outboxes.get(consumer.queue.name) if consumer is not None else None
        template = box.template if box is not None else self.config.forward_to
        message = delivery.message
        if "{" not in template:
            return template
        sep = self._separator
        topic = message.destination
        rest = topic[box.prefix :] if box is not None else topic
        if sep != "/":
            topic, rest = topic.replace("/", sep), rest.replace("/", sep)
        return template.replace("{topic}", topic).replace("{#}", rest)

    # -- the core's Sink: deliveries from the outboxes ----------------------------

    def deliver(self, delivery: Delivery, qos: int) -> None:
        self._pending.append(delivery)
        self._wake.set()

    def writable(self) -> bool:
        return True  # the consumers' window (max_in_flight) bounds what is handed over

    def close(self, reason: CloseReason) -> None:
        self.log.warning("bridge.session_closed", reason=reason.value)
        scope = self._link_scope
        if scope is not None:
            scope.cancel()

    # -- the Link: what the upstream reports -----------------------------------------

    def confirmed(self, tag: int) -> None:
        found = self._inflight.pop(tag, None)
        if found is None:
            return
        delivery, sent = found
        seconds = time.monotonic() - sent
        stats = self.stats
        stats.confirmed += 1
        stats.confirm_seconds_total += seconds
        if seconds > stats.confirm_seconds_max:
            stats.confirm_seconds_max = seconds
        self.broker.ack(delivery)

    def refused(self, tag: int, reason: str) -> None:
        found = self._inflight.pop(tag, None)
        if found is None:
            return
        delivery, _ = found
        self.stats.refused += 1
        self.log.warning(
            "bridge.refused",
            reason=reason,
            destination=delivery.message.destination,
            message_id=delivery.message.message_id,
            dead_letter=self.dead_letter,
        )
        self.broker.nack(delivery, requeue=False)

    def received(self, rule: int, subject: str, message: Message, settle: Settle) -> None:
        stats = self.stats
        if message.headers.get(ORIGIN_HEADER) == self.name:
            # This bridge sent it upstream: taking it back in would loop.
            stats.loops += 1
            settle(True)
            return
        stats.received += 1
        try:
            destination = self._local(rule, subject)
        except ValueError as exc:
            stats.inbound_refused += 1
            self.log.warning("bridge.inbound_refused", subject=subject, error=str(exc))
            self._return_later(settle)
            return
        kind, destination = parse_destination(destination)
        local = msgspec.structs.replace(
            message,
            destination=destination,
            kind=kind,
            retain=message.retain and kind is Kind.TOPIC,
            origin=self.origin,
        )
        result = self.broker.publish(local, identity=TRUSTED)
        if not result.accepted:
            stats.inbound_refused += 1
            self.log.warning(
                "bridge.inbound_refused",
                subject=subject,
                destination=destination,
                reason=result.reason,
            )
            self._return_later(settle)
            return
        # Acknowledged upstream only once the core has it (stored, when durable).
        self.broker.when_durable(lambda ok: settle(True) if ok else self._return_later(settle))

    def _return_later(self, settle: Settle) -> None:
        self._refused.append((trio.current_time() + INBOUND_RETRY_DELAY, settle))
        self._refused_wake.set()

    async def _return_refused(self) -> None:
        """Return refused inbound messages upstream once due (INBOUND_RETRY_DELAY)."""
        refused = self._refused
        while True:
            if not refused:
                await self._refused_wake.wait()
                self._refused_wake = trio.Event()
                continue
            due, settle = refused[0]
            await trio.sleep_until(due)
            if refused and refused[0][1] is settle:
                refused.popleft()
                settle(False)

    def _local(self, rule: int, subject: str) -> str:
        template = self.config.inbound[rule].to
        sep = self._separator
        local = subject.replace(sep, "/") if sep != "/" else subject
        destination = template.replace("{subject}", local)
        if not destination or destination == QUEUE_PREFIX:
            raise ValueError("empty local destination")
        return destination

    # -- control ---------------------------------------------------------------------

    def pause(self) -> None:
        """Drop the link and stay disconnected (messages wait in the outboxes)."""
        self._paused = True
        self._resumed = trio.Event()
        self._set_state("paused")
        scope = self._link_scope
        if scope is not None:
            scope.cancel()

    def resume(self) -> None:
        if self._paused:
            self._set_state("connecting")
        self._paused = False
        self._resumed.set()

    def snapshot(self) -> dict[str, object]:
        """The bridge's state for health checks, metrics and the admin API."""
        stats = self.stats
        return {
            "name": self.name,
            "kind": self.config.kind,
            "state": stats.state,
            "connected": stats.state == "up",
            "connects": stats.connects,
            "reconnects": max(0, stats.connects - 1),
            "failures": stats.failures,
            "last_error": stats.last_error,
            "last_error_code": stats.last_error_code,
            "outbox_depth": self.outbox_depth,
            "in_flight": self.in_flight,
            "sent": stats.sent,
            "resent": stats.resent,
            "confirmed": stats.confirmed,
            "refused": stats.refused,
            "received": stats.received,
            "inbound_refused": stats.inbound_refused,
            "loops": stats.loops,
            "confirm_latency_avg": (
                stats.confirm_seconds_total / stats.confirmed if stats.confirmed else None
            ),
            "confirm_latency_max": stats.confirm_seconds_max,
            "dead_letter": self.dead_letter,
        }
