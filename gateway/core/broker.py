"""The broker facade: the one narrow interface every listener and bridge uses.

Publishing is a synchronous call that never waits for a subscriber: each
matching subscription's queue takes the message or applies its overflow
policy on the spot. Time is read through an injected clock and advanced by
``tick``, which the application calls on a timer; the core starts no tasks.
A distributed backend implements this same class interface.

The facade holds publishing, queues and dead-lettering; it delegates sessions
(core/sessions.py), subscriptions and consumers (core/consumers.py) and recovery
(core/recovery.py), and takes its ACL checks (core/authz.py) and its store records
(core/durability.py) from mixins, which cost the per-message calls no indirection.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Final

import msgspec

from ..store.base import Snapshot, Store
from ..store.memory import MemoryStore
from . import consumers, sessions
from .authz import NOT_AUTHORIZED, Authorization, NotAuthorized
from .consumers import DEFAULT_OPTIONS, _Binding
from .delivery import Consumer, Delivery, Sink
from .destinations import (
    BRIDGE_QUEUE_PREFIX,
    QUEUE_PREFIX,
    SESSION_QUEUE_PREFIX,
    SHARE_PREFIX,
    TEMP_QUEUE_PREFIX,
)
from .durability import Durability
from .headers import Headers, header_pairs
from .holds import Holds
from .message import Kind, Message
from .queue import Queue, QueuePolicy
from .retained import RetainedStore
from .selector import Selector
from .session import TRUSTED, Session, SubscribeOptions, Trust, Will
from .stats import BrokerStats, QueueSnapshot
from .topics import TopicTrie

if TYPE_CHECKING:
    from ..auth.acl import Acl, Principal
    from .routing import Router

__all__ = [
    "BRIDGE_QUEUE_PREFIX",
    "DEAD_LETTER_REASONS",
    "DEFAULT_OPTIONS",
    "NOT_AUTHORIZED",
    "QUEUE_PREFIX",
    "SESSION_QUEUE",
    "SESSION_QUEUE_PREFIX",
    "SHARE_PREFIX",
    "TEMP_QUEUE_PREFIX",
    "Broker",
    "NotAuthorized",
    "PublishResult",
    "Status",
]

# Messages an offline or slow session holds, like Mosquitto's max_queued_messages.
SESSION_QUEUE = QueuePolicy(max_length=1000)
# Reasons for which an entry goes to its queue's dead-letter queue, if it has one.
DEAD_LETTER_REASONS = frozenset({"expired", "max-deliveries", "rejected", "max-length"})


class Status(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"


class PublishResult(msgspec.Struct, frozen=True):
    """``routed`` counts the queues (subscriptions included) that took the message.
    ``REFUSED`` means at least one queue refused it (``reason`` says why).
    ``congested`` lists queues past their high-water mark: the publisher should
    pause reading until each calls back through ``Queue.when_relieved``."""

    status: Status
    routed: int = 0
    reason: str | None = None
    congested: tuple[Queue, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status is Status.ACCEPTED


_ACCEPTED_ONE: Final = PublishResult(Status.ACCEPTED, 1)
# Read per publish: an enum member read through its class costs ~90 ns on Python 3.11.
_QUEUE_KIND: Final = Kind.QUEUE
# The common outcomes, shared: accepted by 0 to 63 queues, none congested.
_ACCEPTED: Final = tuple(PublishResult(Status.ACCEPTED, n) for n in range(64))
_UNAUTHORIZED: Final = PublishResult(Status.REFUSED, 0, NOT_AUTHORIZED)


@dataclass(frozen=True, slots=True)
class _Route:
    """A subscription's share of a topic: either a session or a shared-subscription queue."""

    session: Session | None
    queue: Queue
    qos: int
    no_local: bool
    retain_as_published: bool
    subscription_ids: tuple[int, ...]
    # None: every message; else the message must match one of the subscriptions' selectors.
    selector: Callable[[Message], bool] | None = None
    # Overlapping subscriptions of one session, some with selectors: (matches or None,
    # qos, subscription id) each, so a delivery names only the ones that matched.
    choices: tuple[tuple[Callable[[Message], bool] | None, int, int | None], ...] | None = None


class Broker(Authorization, Durability):
    def __init__(
        self,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        session_queue: QueuePolicy = SESSION_QUEUE,
        queues: Iterable[tuple[str, QueuePolicy]] = (),
        auto_create_queues: bool = True,
        durability: str = "sync",
        router: Router | None = None,
        acl: Acl | None = None,
    ) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        self.now = clock
        self.session_queue_policy = session_queue
        self.retained = RetainedStore()
        self.stats = BrokerStats()
        self.sessions: dict[str, Session] = {}
        self.queues: dict[str, Queue] = {}
        self._policies: dict[str, QueuePolicy] = dict(queues)
        self.auto_create_queues = auto_create_queues
        # "sync": acknowledgements wait for the commit; "async": they do not;
        # "memory": nothing goes to the store. Queues may choose their own.
        self.durability = durability
        # Routing rules (docs/routing.md): None when there are none, which costs nothing.
        self.router = router
        # Authorization (docs/security.md): None checks nothing, which costs nothing.
        self.acl = acl
        self._trie: TopicTrie[object, _Binding] = TopicTrie()
        self._routes: dict[str, list[_Route]] = {}
        self._temp_ids = itertools.count(1)
        self._durable: dict[str, str] = {}
        # Deliveries counted by queues that no longer exist, for delivered_total().
        self._delivered_gone = 0
        # Publishers' acknowledgements held for bridges with ack = "upstream".
        self.holds = Holds()

    # -- queues ------------------------------------------------------------------

    def declare_queue(self, name: str, policy: QueuePolicy | None = None) -> Queue:
        """Get queue ``name``, creating it (with its configured policy) on first use."""
        queue = self.queues.get(name)
        if queue is None:
            if policy is None:
                policy = self._policies.get(name, QueuePolicy())
            queue = self.queues[name] = Queue(
                name, self, policy, durable=self._mode(policy) != "memory"
            )
        elif policy is not None:
            queue.set_policy(policy)
        return queue

    def knows_queue(self, name: str) -> bool:
        """True for a queue that exists or is declared in the configuration."""
        return name in self.queues or name in self._policies

    def delete_queue(self, name: str) -> None:
        queue = self.queues.pop(name, None)
        if queue is None:
            return
        self._delivered_gone += queue.stats.delivered
        for consumer in list(queue.consumers):
            consumer.session.consumers.pop(name, None)
            queue.detach(consumer, keep_inflight=True)
        for entry in queue.purge():
            self.forget(queue, entry)
        if queue.durable:  # a temporary queue (one per HTTP request/reply) never was stored
            self.store.drop_queue(name)

    def temporary_queue(self, session: Session) -> str:
        """A queue that is deleted with ``session`` (reply queues)."""
        name = f"{TEMP_QUEUE_PREFIX}{session.client_id}/{next(self._temp_ids)}"
        self.queues[name] = Queue(name, self, QueuePolicy(), durable=False, owner=session)
        session.temporary.append(name)
        return name

    def queue_stats(self, name: str) -> QueueSnapshot:
        queue = self.queues[name]
        s = queue.stats
        return QueueSnapshot(
            name=name,
            depth=queue.depth,
            bytes=queue.bytes,
            consumers=len(queue.consumers),
            in_flight=sum(len(c.unacked) for c in queue.consumers),
            enqueued=s.enqueued,
            delivered=s.delivered,
            acked=s.acked,
            redelivered=s.redelivered,
            expired=s.expired,
            dead_lettered=s.dead_lettered,
            dropped=s.dropped,
            refused=s.refused,
        )

    @property
    def subscription_count(self) -> int:
        return len(self._trie)

    def delivered_total(self) -> int:
        """Messages handed to consumers since start, over every queue that ever existed."""
        live = sum(q.stats.delivered for q in self.queues.values())
        live += sum(s.queue.stats.delivered for s in self.sessions.values())
        return self._delivered_gone + live

    def connected_count(self) -> int:
        return sum(1 for session in self.sessions.values() if session.connected)

    def user_connections(self, user: str, *, besides: str = "") -> int:
        """Connected sessions of ``user`` (for its ``max_connections``), leaving out the
        client id ``besides`` (a reconnect that takes its own session over)."""
        return sum(
            1
            for client_id, session in self.sessions.items()
            if session.connected
            and client_id != besides
            and getattr(session.identity, "user", None) == user
        )

    # -- authorization (docs/security.md) ------------------------------------------------

    def set_acl(self, acl: Acl | None) -> None:
        """Replace the rules (a reload). Routes are planned again under the new ones, so
        subscriptions already made receive only what the new rules let them read."""
        self.acl = acl
        self._routes.clear()

    # -- the queue owner interface --------------------------------------------------

    def discard(self, queue: Queue, entry: Delivery, reason: str) -> None:
        self.forget(queue, entry, ok=False)
        target = queue.policy.dead_letter
        if target is not None and reason in DEAD_LETTER_REASONS and target != queue.name:
            message = entry.message
            dead = msgspec.structs.replace(
                message,
                destination=target,
                kind=Kind.QUEUE,
                headers=Headers(
                    (
                        *header_pairs(message.headers),
                        ("x-death-reason", reason),
                        ("x-death-queue", queue.name),
                        ("x-death-destination", message.destination),
                        ("x-delivery-count", str(entry.count)),
                    )
                ),
                expiry=None,
            )
            if self.declare_queue(target).put(Delivery(dead, qos=dead.qos)) is None:
                queue.stats.dead_lettered += 1
                return
            reason = "dead-letter-full"
        if reason != "expired":
            queue.stats.dropped += 1
        self.stats.drops[reason] += 1

    # -- sessions (core/sessions.py) ------------------------------------------------

    def open_session(
        self,
        client_id: str,
        sink: Sink,
        *,
        clean: bool = True,
        expiry: float = 0.0,
        will: Will | None = None,
        window: int = 65535,
        identity: Principal | Trust | None = None,
    ) -> tuple[Session, bool]:
        """Attach ``sink`` to ``client_id``'s session (``sessions.open_session``);
        returns it and whether it existed. Raises NotAuthorized for a will the
        ``identity`` may not publish."""
        return sessions.open_session(
            self,
            client_id,
            sink,
            clean=clean,
            expiry=expiry,
            will=will,
            window=window,
            identity=identity,
        )

    def detach(self, session: Session, *, graceful: bool, expiry: float | None = None) -> None:
        """The session's connection ended (``sessions.detach``)."""
        sessions.detach(self, session, graceful=graceful, expiry=expiry)

    def resume(self, session: Session) -> None:
        """The session's sink became writable again: send what waited."""
        session.queue.dispatch()
        for consumer in session.consumers.values():
            consumer.queue.dispatch()

    def tick(self) -> None:
        """Fire due wills, end expired sessions, expire queued and retained messages."""
        now = self.now()
        for session in list(self.sessions.values()):
            if session.will_due is not None and session.will_due <= now:
                sessions.publish_will(self, session)
            if session.expires_at is not None and session.expires_at <= now:
                sessions.end_session(self, session)
        for queue in list(self.queues.values()):
            queue.expire(now)
        for session in self.sessions.values():
            session.queue.expire(now)
        self.retained.remove_expired(now)

    # -- recovery ------------------------------------------------------------------

    def restore(self, snapshot: Snapshot) -> dict[str, int]:
        """Rebuild the core from what the store kept (``recovery.restore``); counts."""
        from .recovery import restore

        return restore(self, snapshot)

    # -- subscriptions and consumers (core/consumers.py) --------------------------

    def subscribe(
        self, session: Session, topic_filter: str, options: SubscribeOptions = DEFAULT_OPTIONS
    ) -> int:
        """Subscribe ``session`` (``consumers.subscribe``); returns the granted QoS.
        Raises InvalidFilter, NotAuthorized."""
        return consumers.subscribe(self, session, topic_filter, options)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        return consumers.unsubscribe(self, session, topic_filter)

    def durable_subscription(
        self,
        name: str,
        topic_filter: str,
        *,
        selector: Selector | None = None,
        policy: QueuePolicy | None = None,
    ) -> Queue:
        """A queue fed by ``topic_filter`` that keeps filling while its consumer is away
        (``consumers.durable_subscription``). Raises InvalidFilter."""
        return consumers.durable_subscription(
            self, name, topic_filter, selector=selector, policy=policy
        )

    def durable_filters(self) -> dict[str, str]:
        """The durable subscriptions: queue name -> topic filter."""
        return dict(self._durable)

    def unbind_durable_subscription(self, name: str) -> bool:
        """Stop feeding durable subscription ``name``, keeping its queue as a plain one."""
        return consumers.unbind_durable_subscription(self, name)

    def drop_durable_subscription(self, name: str) -> bool:
        return consumers.drop_durable_subscription(self, name)

    def consume(
        self,
        session: Session,
        queue_name: str,
        *,
        qos: int = 1,
        window: int = 65535,
        ack_all: bool = False,
        selector: Selector | None = None,
    ) -> Consumer:
        """Make ``session`` a competing consumer of queue ``queue_name``
        (``consumers.consume``). Raises NotAuthorized."""
        return consumers.consume(
            self, session, queue_name, qos=qos, window=window, ack_all=ack_all, selector=selector
        )

    def cancel(self, session: Session, queue_name: str, *, requeue: bool = True) -> bool:
        """Stop consuming (``consumers.cancel``)."""
        return consumers.cancel(self, session, queue_name, requeue=requeue)

    def _drop_if_done(self, consumer: Consumer) -> None:
        consumer_map = consumer.session.consumers
        if consumer.closed and not consumer.unacked:
            if consumer_map.get(consumer.queue.name) is consumer:
                del consumer_map[consumer.queue.name]
            consumer.sink = None

    # -- publishing ----------------------------------------------------------------

    def publish(
        self,
        message: Message,
        *,
        rules: bool = True,
        identity: Principal | Trust | None = None,
    ) -> PublishResult:
        """Route ``message`` now; never waits for a consumer.

        ``identity`` is the publisher (None: anonymous): a publish the ACL refuses is
        ``REFUSED`` with reason ``not-authorized`` (``authorize_message``). The routing
        rules run next, once: what they produce is published with ``rules=False``,
        which skips both (a message is checked and routed once per hop)."""
        if rules:
            acl = self.acl
            if (
                acl is not None
                # Nothing to check without rules, unless the identity brings its own.
                and (
                    acl.rules
                    or (
                        identity is not None
                        and identity is not TRUSTED
                        and identity.acl is not None
                    )
                )
                and not self.authorize_message(message, identity)
            ):
                self.stats.published += 1
                self.stats.refuse(NOT_AUTHORIZED)
                return _UNAUTHORIZED
            if self.router is not None:
                return self.router.dispatch(message, self)
        stats = self.stats
        stats.published += 1
        if message.qos and not self.store.available:
            # The store cannot write (disk full): acknowledging would be a lie.
            stats.refuse("store-unavailable")
            return PublishResult(Status.REFUSED, 0, "store-unavailable")
        if message.kind is _QUEUE_KIND:
            queue = self.queues.get(message.destination)
            if queue is None:
                name = message.destination
                if name.startswith(TEMP_QUEUE_PREFIX) or (
                    not self.auto_create_queues and not self.knows_queue(name)
                ):
                    # A temporary queue lives and dies with its session: a late reply
                    # to one that is gone must not bring it back as a plain queue.
                    stats.refuse("unknown-queue")
                    return PublishResult(Status.REFUSED, 0, "unknown-queue")
                queue = self.declare_queue(message.destination)
            refused = queue.put(Delivery(message, qos=message.qos, expires=message.expiry))
            if refused is not None:
                stats.refuse(refused)
                return PublishResult(Status.REFUSED, 0, refused)
            if queue.depth >= queue.high_water and queue.congested():
                return PublishResult(Status.ACCEPTED, 1, congested=(queue,))
            return _ACCEPTED_ONE
        topic = message.destination
        topics = stats.topics
        if topic in topics:
            topics[topic] += 1
        else:
            stats.count_topic(topic)
        if message.retain:
            self._retain(message)
        routes = self._routes.get(topic)
        if routes is None:
            routes = self._plan(topic)
        if not routes:
            stats.unrouted += 1
            return PublishResult(Status.ACCEPTED, 0)
        refused = None
        routed = 0
        congested: list[Queue] | None = None
        publisher = message.origin.client_id
        qos, retain, expiry = message.qos, message.retain, message.expiry
        for route in routes:
            if (
                route.no_local
                and route.session is not None
                and route.session.client_id == publisher
            ):
                continue
            route_qos, ids = route.qos, route.subscription_ids
            if route.choices is not None:
                matched = [c for c in route.choices if c[0] is None or c[0](message)]
                if not matched:
                    continue
                route_qos = max(c[1] for c in matched)
                ids = tuple(c[2] for c in matched if c[2] is not None)
            elif route.selector is not None and not route.selector(message):
                continue
            entry = Delivery(  # positional: the cheapest way to build one
                message,
                route_qos if route_qos < qos else qos,
                retain and route.retain_as_published,
                ids,
                expiry,
            )
            queue = route.queue
            why = queue.put(entry)
            if why is None:
                routed += 1
            else:
                refused = why
            if queue.depth >= queue.high_water and queue.congested():
                congested = [queue] if congested is None else [*congested, queue]
        pressure = () if congested is None else tuple(congested)
        if refused is not None:
            stats.refuse(refused)
            return PublishResult(Status.REFUSED, routed, refused, pressure)
        if not pressure and routed < 64:
            return _ACCEPTED[routed]
        return PublishResult(Status.ACCEPTED, routed, congested=pressure)

    def _retain(self, message: Message) -> None:
        previous = self.retained.get(message.destination)
        if self.retained.set(message):
            # Like every QoS 0 message, a QoS 0 retained one stays off the disk ($SYS
            # topics are republished every few seconds); it still clears a stored one.
            if message.payload and self._keeps(message):
                self.store.set_retained(message)
            elif previous is not None and self._keeps(previous):
                self.store.clear_retained(message.destination)

    def _keeps(self, retained: Message) -> bool:
        return retained.qos > 0 and self.durability != "memory"

    def _plan(self, topic: str) -> list[_Route]:
        """One route per session and per shared group; a session's overlapping
        filters merge into one delivery (highest QoS, every subscription id)."""
        per_session: dict[Session, list[SubscribeOptions]] = {}
        routes: list[_Route] = []
        for binding in self._trie.match(topic):
            if binding.session is None:
                selector = binding.options.selector
                routes.append(
                    _Route(
                        None,
                        binding.queue,
                        2,
                        False,
                        True,
                        (),
                        None if selector is None else selector.matches,
                    )
                )
            else:
                per_session.setdefault(binding.session, []).append(binding.options)
        acl = self.acl
        for session, options in per_session.items():
            if acl is not None and not self._readable(session, topic):
                continue  # a wildcard never reads a topic the ACL denies this session
            ids = tuple(o.subscription_id for o in options if o.subscription_id is not None)
            routes.append(
                _Route(
                    session,
                    session.queue,
                    max(o.qos for o in options),
                    all(o.no_local for o in options),
                    any(o.retain_as_published for o in options),
                    ids,
                    _any_selector(options),
                    _choices(options),
                )
            )
        self._routes[topic] = routes
        return routes

    # -- acknowledgements ----------------------------------------------------------

    def ack(self, delivery: Delivery) -> bool:
        """The consumer processed ``delivery``; False if it was not outstanding."""
        consumer = delivery.consumer
        if consumer is None or not consumer.queue.ack(delivery):
            return False
        self._credit_freed(consumer)
        return True

    def nack(self, delivery: Delivery, *, requeue: bool = True) -> bool:
        """Return ``delivery`` to its queue for redelivery, or reject it (dead-letter)."""
        consumer = delivery.consumer
        if consumer is None or not consumer.queue.nack(delivery, requeue=requeue):
            return False
        self._credit_freed(consumer)
        return True

    def _credit_freed(self, consumer: Consumer) -> None:
        self._drop_if_done(consumer)
        # The session's window is shared: a freed slot may unblock its other queues.
        session = consumer.session
        if session.consumers and session.connected:
            self.resume(session)


def _choices(
    options: list[SubscribeOptions],
) -> tuple[tuple[Callable[[Message], bool] | None, int, int | None], ...] | None:
    if len(options) < 2 or all(o.selector is None for o in options):
        return None
    return tuple(
        (None if o.selector is None else o.selector.matches, o.qos, o.subscription_id)
        for o in options
    )


def _any_selector(options: list[SubscribeOptions]) -> Callable[[Message], bool] | None:
    """A session's overlapping subscriptions deliver a message if any of them takes it:
    None when one of them has no selector, else a test that one selector matches."""
    selectors = [o.selector for o in options]
    if any(selector is None for selector in selectors):
        return None
    matchers = tuple(selector.matches for selector in selectors if selector is not None)
    if len(matchers) == 1:
        return matchers[0]
    return lambda message: any(matches(message) for matches in matchers)
