"""The broker facade: the one narrow interface every listener and bridge uses.

Publishing is a synchronous call that never waits for a subscriber: each
matching subscription's queue takes the message or applies its overflow
policy on the spot. Time is read through an injected clock and advanced by
``tick``, which the application calls on a timer; the core starts no tasks.
A distributed backend implements this same class interface.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Final

import msgspec

from ..store.base import (
    DurableCallback,
    SessionState,
    Snapshot,
    Store,
    StoredEntry,
    StoredSubscription,
)
from ..store.memory import MemoryStore
from .delivery import CloseReason, Consumer, Delivery, Sink
from .headers import Headers, header_pairs
from .holds import Holds
from .message import Kind, Message, Origin
from .queue import Queue, QueuePolicy
from .retained import RetainedStore
from .selector import Selector
from .session import NEVER, TRUSTED, Session, SubscribeOptions, Trust, Will
from .stats import BrokerStats, QueueSnapshot
from .topics import InvalidFilter, TopicTrie, check_filter

if TYPE_CHECKING:
    from ..auth.acl import Acl, Action, Principal
    from .routing import Router

SHARE_PREFIX = "$share/"
QUEUE_PREFIX = "$queue/"
NOT_AUTHORIZED = "not-authorized"
SESSION_QUEUE_PREFIX = "$session/"
TEMP_QUEUE_PREFIX = "$temp/"
# Bridges' outboxes (gateway/bridges): only the gateway's own sessions consume them.
BRIDGE_QUEUE_PREFIX = "$bridge/"
# Reasons for which an entry goes to its queue's dead-letter queue, if it has one.
# Messages an offline or slow session holds, like Mosquitto's max_queued_messages.
SESSION_QUEUE = QueuePolicy(max_length=1000)
DEFAULT_OPTIONS = SubscribeOptions()
DEAD_LETTER_REASONS = frozenset({"expired", "max-deliveries", "rejected", "max-length"})


class Status(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"


class NotAuthorized(Exception):
    """The ACL refuses this subscribe, consume or will (docs/security.md); the
    refusal is logged (``acl.denied``) and each listener answers in its protocol."""

    def __init__(self, action: str, destination: str) -> None:
        super().__init__(f"{action} {destination!r} is not authorized")
        self.action = action
        self.destination = destination


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


@dataclass(frozen=True, slots=True)
class _Binding:
    options: SubscribeOptions
    session: Session | None
    queue: Queue


class Broker:
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

    def authorize(
        self,
        identity: Principal | Trust | None,
        action: Action,
        destination: str,
        client_id: str = "",
        *,
        whole: bool = False,
    ) -> bool:
        """May ``identity`` (None: anonymous) ``publish`` to a topic or ``$queue/NAME``,
        ``subscribe`` to a topic filter (and read a topic), or ``consume`` ``$queue/NAME``?
        Every check of the core is this decision; it logs nothing (``require`` does).
        ``whole``: every topic the filter matches must be readable."""
        acl = self.acl
        if acl is None or identity is TRUSTED:
            return True
        return acl.allows(identity, action, destination, client_id, whole=whole)

    def require(
        self,
        identity: Principal | Trust | None,
        action: Action,
        destination: str,
        client_id: str = "",
        *,
        whole: bool = False,
    ) -> None:
        """``authorize``, or log ``acl.denied`` and raise NotAuthorized."""
        if not self.authorize(identity, action, destination, client_id, whole=whole):
            self._denied(identity, action, destination, client_id)
            raise NotAuthorized(action, destination)

    def authorize_message(self, message: Message, identity: Principal | Trust | None) -> bool:
        """May ``identity`` publish ``message``? The gateway's own messages (origin
        protocol ``internal``, such as $SYS) may. A refusal is logged (``acl.denied``)."""
        acl = self.acl
        origin = message.origin
        if acl is None or identity is TRUSTED or origin.protocol == "internal":
            return True
        destination = message.destination
        if message.kind is _QUEUE_KIND:
            destination = QUEUE_PREFIX + destination
        if acl.allows(identity, "publish", destination, origin.client_id):
            return True
        self._denied(identity, "publish", destination, origin.client_id)
        return False

    def _denied(
        self, identity: Principal | Trust | None, action: str, destination: str, client_id: str
    ) -> None:
        if self.acl is not None and identity is not TRUSTED:
            self.stats.denied[action] += 1
            self.acl.denied(identity, action, destination, client_id)

    def _readable(self, session: Session, topic: str) -> bool:
        """May ``session`` receive a message published to ``topic``?"""
        return self.authorize(session.identity, "subscribe", topic, session.client_id)

    def _may_consume(self, session: Session, name: str) -> bool:
        queue = self.queues.get(name)
        if queue is not None and queue.owner is session:
            return True  # its own temporary queue
        topic_filter = self._durable.get(name)
        if topic_filter is not None:
            # A durable topic subscription's queue holds its topics: reading it is reading them.
            return self.authorize(
                session.identity, "subscribe", topic_filter, session.client_id, whole=True
            )
        return self.authorize(session.identity, "consume", QUEUE_PREFIX + name, session.client_id)

    def _recheck(self, session: Session) -> None:
        """A resumed session has another identity: it keeps only the subscriptions,
        consumers, queued and in-flight messages that this one may have."""
        identity, client_id = session.identity, session.client_id
        for topic_filter in list(session.subscriptions):
            if not self.authorize(identity, "subscribe", topic_filter, client_id):
                self.unsubscribe(session, topic_filter)
        for name in list(session.consumers):
            if not name.startswith(SHARE_PREFIX) and not self._may_consume(session, name):
                self.cancel(session, name)
        queue = session.queue
        for entry in queue.purge():
            if self._readable(session, entry.message.destination):
                queue.restore(entry)
            else:
                self.discard(queue, entry, NOT_AUTHORIZED)
        unacked = session.consumer.unacked
        for entry in session.inflight():
            if not self._readable(session, entry.message.destination):
                del unacked[entry.tag]
                entry.consumer = None
                self.discard(queue, entry, NOT_AUTHORIZED)

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

    def _mode(self, policy: QueuePolicy) -> str:
        return policy.durability or self.durability

    def persist(self, queue: Queue, entry: Delivery) -> None:
        self.store.enqueue(
            queue.name,
            entry.message,
            _stored(entry),
            wait=self._mode(queue.policy) == "sync",
        )

    def progress(self, queue: Queue, entry: Delivery) -> None:
        """An entry of a durable queue was sent, or moved a step (MQTT PUBREC)."""
        self.store.update(queue.name, _stored(entry))

    def advanced(self, delivery: Delivery) -> None:
        """The protocol moved ``delivery`` a step (``stage``): record it if durable.

        In durability mode ``sync`` what the protocol says next waits for this record's
        commit (``when_durable``): after an MQTT PUBREL the client forgets the message,
        so a restart must resume from the PUBREL, never resend the PUBLISH."""
        consumer = delivery.consumer
        if consumer is not None and consumer.queue.durable and delivery.message.qos:
            queue = consumer.queue
            wait = self._mode(queue.policy) == "sync"
            self.store.update(queue.name, _stored(delivery), wait=wait)

    def hold_incomplete(self, session: Session, wire_id: int) -> None:
        """An inbound exactly-once message awaits release (MQTT QoS 2 before PUBREL)."""
        session.incomplete.add(wire_id)
        if session.queue.durable:
            self.store.add_incomplete(session.client_id, wire_id, wait=self._syncs(session))

    def release_incomplete(self, session: Session, wire_id: int) -> bool:
        if wire_id not in session.incomplete:
            return False
        session.incomplete.discard(wire_id)
        if session.queue.durable:
            self.store.remove_incomplete(session.client_id, wire_id, wait=self._syncs(session))
        return True

    def _syncs(self, session: Session) -> bool:
        """In mode ``async`` acknowledgements never wait for the store, QoS 2 ones neither."""
        return self._mode(session.queue.policy) == "sync"

    def when_durable(self, callback: DurableCallback, origin: Origin | None = None) -> None:
        """Run ``callback(ok)`` once everything recorded so far is committed: the
        acknowledgement to a publisher waits behind it (durability mode ``sync``).

        With the publisher's ``origin`` it also waits for the messages that publisher
        sent to a bridge with ``ack = "upstream"`` to be confirmed (core/holds.py)."""
        if origin is not None and self.holds:
            callback = self.holds.gate(origin, callback)
        self.store.when_durable(callback)

    def forget(self, queue: Queue, entry: Delivery, *, ok: bool = True) -> None:
        """``entry`` left ``queue`` for good: acknowledged (``ok``) or discarded."""
        # An entry queued at QoS 0 (a QoS 1 message for a QoS 0 subscription) was never
        # stored: removing it would cost a disk write per message for nothing.
        if queue.durable and entry.qos and entry.message.qos:
            self.store.remove(queue.name, entry.message.message_id)
        if self.holds:  # an entry may leave another queue than the one that held it
            self.holds.leave(id(entry), ok)

    # -- sessions ------------------------------------------------------------------

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
        """Attach ``sink`` to ``client_id``'s session; returns it and whether it existed.

        A connection already attached is closed (takeover); its will is handled as
        for any abnormal disconnect. ``clean`` discards an existing session.
        ``identity`` (None: anonymous) is who the client is, for authorization: a will
        it may not publish raises NotAuthorized before anything changes; a session
        that belonged to another user is not resumed but started anew.
        """
        if will is not None and not self.authorize_message(will.message, identity):
            raise NotAuthorized("publish", will.message.destination)
        session = self.sessions.get(client_id)
        if session is not None and session.connected:
            old_sink = session.sink
            self.detach(session, graceful=False)
            assert old_sink is not None
            old_sink.close(CloseReason.TAKEN_OVER)
            session = self.sessions.get(client_id)
        if session is not None and not clean and self.acl is not None:
            # Another user's session, with what it queued, is never handed over.
            owner = session.identity
            if owner is not None and owner is not TRUSTED:
                clean = _user(identity) != owner.user
        if session is not None and clean:
            self._end_session(session)
            session = None
        present = session is not None
        if session is None:
            durable = expiry > 0 and self.durability != "memory"
            queue = Queue(
                SESSION_QUEUE_PREFIX + client_id,
                self,
                self.session_queue_policy,
                lossy=True,
                ordered=True,
                durable=durable,
            )
            session = Session(client_id=client_id, expiry=expiry, queue=queue)
            session.identity = identity
            queue.owner = session
            self.sessions[client_id] = session
        else:
            # Back in time: a pending will is cancelled (MQTT 5, 3.1.3.2.2).
            session.will_due = None
            session.expires_at = None
            session.expiry = expiry
            if session.identity != identity:
                session.identity = identity
                if self.acl is not None:
                    self._routes.clear()
                    self._recheck(session)
        session.will = will
        session.window = window
        session.consumer.window = window
        session.consumer.sink = sink
        for consumer in session.consumers.values():
            consumer.sink = sink
            consumer.window = min(consumer.window, window)
        self._save(session)
        # Deliveries in flight when the last connection ended go first, in their
        # original order, marked as redeliveries (MQTT resends them with DUP).
        for consumer in session.all_consumers():
            for entry in sorted(consumer.unacked.values(), key=lambda e: e.tag):
                entry.count += 1
                consumer.queue.stats.redelivered += 1
                sink.deliver(entry, consumer.delivery_qos(entry.qos))
        for consumer in session.consumers.values():
            if not consumer.closed:
                consumer.queue.attach(consumer)
        session.queue.dispatch()
        return session, present

    def detach(self, session: Session, *, graceful: bool, expiry: float | None = None) -> None:
        """The session's connection ended; ``graceful`` (a clean goodbye) discards the will.

        ``expiry`` replaces the session's expiry (MQTT 5 DISCONNECT may change it).
        """
        if not session.connected:
            return
        if expiry is not None:
            session.expiry = expiry
        now = self.now()
        session.consumer.sink = None
        ending = session.expiry <= 0
        for name, consumer in session.consumers.items():
            consumer.sink = None
            # A shared group's in-flight messages wait for this member to come back
            # (MQTT 4.8.2); a plain queue's go to the other consumers at once.
            keep = ending or name.startswith(SHARE_PREFIX)
            consumer.queue.detach(consumer, keep_inflight=keep)
        if graceful:
            session.will = None
        if ending:
            self._end_session(session)
            return
        if expiry is not None:
            self._save(session)  # the expiry a restart restores is the latest one
        session.expires_at = now + session.expiry if session.expiry != NEVER else None
        will = session.will
        if will is not None:
            if will.delay <= 0:
                self._publish_will(session)
            else:
                session.will_due = now + min(will.delay, session.expiry)

    def _end_session(self, session: Session) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            self._delivered_gone += session.queue.stats.delivered
        self._publish_will(session)
        for name, consumer in session.consumers.items():
            consumer.sink = None
            if name.startswith(SHARE_PREFIX):
                # Exactly-once: a QoS 2 message begun with this member goes to no other.
                for tag, entry in list(consumer.unacked.items()):
                    if consumer.delivery_qos(entry.qos) == 2:
                        del consumer.unacked[tag]
                        self.discard(consumer.queue, entry, "session-ended")
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)
        for name, consumer in list(session.consumers.items()):
            consumer.queue.detach(consumer)
            del session.consumers[name]
        for name in session.temporary:
            self.delete_queue(name)
        session.temporary.clear()
        for entry in [*session.inflight(), *session.queue.purge()]:
            self.forget(session.queue, entry)
        session.consumer.unacked.clear()
        session.consumer.sink = None
        if session.queue.durable:
            self.store.drop_queue(session.queue.name)
            self.store.delete_session(session.client_id)

    def _publish_will(self, session: Session) -> None:
        will, session.will, session.will_due = session.will, None, None
        if will is not None:
            self.publish(will.message, identity=session.identity)

    def _save(self, session: Session) -> None:
        if session.durable and session.queue.durable:
            subs = tuple(
                StoredSubscription(
                    topic_filter=f,
                    qos=o.qos,
                    no_local=o.no_local,
                    retain_as_published=o.retain_as_published,
                    retain_handling=o.retain_handling,
                    subscription_id=o.subscription_id,
                    selector=None if o.selector is None else o.selector.text,
                )
                for f, o in session.subscriptions.items()
            )
            self.store.save_session(
                SessionState(client_id=session.client_id, expiry=session.expiry, subscriptions=subs)
            )

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
                self._publish_will(session)
            if session.expires_at is not None and session.expires_at <= now:
                self._end_session(session)
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

    # -- subscriptions -----------------------------------------------------------

    def subscribe(
        self, session: Session, topic_filter: str, options: SubscribeOptions = DEFAULT_OPTIONS
    ) -> int:
        """Subscribe ``session``; returns the granted QoS. Raises InvalidFilter.

        ``$share/GROUP/FILTER`` joins the shared subscription GROUP: a queue fed by
        FILTER whose members compete for its messages.
        """
        if topic_filter.startswith(SHARE_PREFIX):
            return self._subscribe_shared(session, topic_filter, options)
        check_filter(topic_filter)
        if self.acl is not None:
            self.require(session.identity, "subscribe", topic_filter, session.client_id)
        is_new = topic_filter not in session.subscriptions
        session.subscriptions[topic_filter] = options
        self._trie.add(
            topic_filter, (session, topic_filter), _Binding(options, session, session.queue)
        )
        self._routes.clear()
        self._save(session)
        if options.retain_handling == 0 or (options.retain_handling == 1 and is_new):
            self._send_retained(session, topic_filter, options)
        return options.qos

    def _subscribe_shared(self, session: Session, share: str, options: SubscribeOptions) -> int:
        group, sep, topic_filter = share[len(SHARE_PREFIX) :].partition("/")
        if not group or not sep or "+" in group or "#" in group:
            raise InvalidFilter(f"shared subscription needs $share/GROUP/FILTER: {share!r}")
        check_filter(topic_filter)
        if options.selector is not None:
            raise InvalidFilter("selectors are not supported on shared subscriptions (yet)")
        if self.acl is not None:
            # The group's messages are not checked per member: all must be readable.
            self.require(session.identity, "subscribe", share, session.client_id, whole=True)
        queue = self.queues.get(share)
        if queue is None:
            queue = self.queues[share] = Queue(
                share,
                self,
                self.session_queue_policy,
                lossy=True,
                ordered=True,
                durable=self._mode(self.session_queue_policy) != "memory",
            )
            shared = SubscribeOptions(qos=2)
            self._trie.add(topic_filter, share, _Binding(shared, None, queue))
            self._routes.clear()
        session.subscriptions[share] = options
        consumer = self._attach(session, queue, qos=options.qos)
        sub_id = options.subscription_id
        consumer.subscription_ids = () if sub_id is None else (sub_id,)
        consumer.retain_as_published = options.retain_as_published
        self._save(session)
        return options.qos

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        if topic_filter.startswith(SHARE_PREFIX):
            self._detach_consumer(session, topic_filter)
            queue = self.queues.get(topic_filter)
            if (
                queue is not None
                and not queue.consumers
                and not any(topic_filter in s.subscriptions for s in self.sessions.values())
            ):
                # The last member left: the group's queue goes with it.
                self._trie.remove(topic_filter.split("/", 2)[2], topic_filter)
                self.delete_queue(topic_filter)
        else:
            self._trie.remove(topic_filter, (session, topic_filter))
        self._routes.clear()
        self._save(session)
        return True

    def durable_subscription(
        self,
        name: str,
        topic_filter: str,
        *,
        selector: Selector | None = None,
        policy: QueuePolicy | None = None,
    ) -> Queue:
        """A queue fed by ``topic_filter`` that keeps filling while its consumer is away
        (JMS durable topic subscriptions, a bridge's outbox). Deleted only by
        ``drop_durable_subscription``. With a ``selector`` only the messages it
        matches go in; ``policy`` replaces the configured one. Called again for an
        existing one (one restored from the store), it takes the new selector and
        policy. Raises InvalidFilter."""
        queue = self.queues.get(name)
        if queue is not None:
            # Taken back after a restart, perhaps with a changed filter (a bridge's outbox
            # whose rule was edited), or a queue that was unbound: it keeps what it holds.
            previous = self._durable.get(name)
            if previous != topic_filter:
                check_filter(topic_filter)
                if previous is not None:
                    self._trie.remove(previous, name)
                self._durable[name] = topic_filter
                if queue.durable:
                    self.store.save_durable_subscription(name, topic_filter)
            if policy is not None:
                queue.set_policy(policy)
            self._trie.add(
                topic_filter,
                name,
                _Binding(SubscribeOptions(qos=2, selector=selector), None, queue),
            )
            self._routes.clear()
            return queue
        check_filter(topic_filter)
        if policy is None:
            policy = self._policies.get(name, self.session_queue_policy)
        queue = self.queues[name] = Queue(
            name, self, policy, ordered=True, durable=self._mode(policy) != "memory"
        )
        binding = _Binding(SubscribeOptions(qos=2, selector=selector), None, queue)
        self._trie.add(topic_filter, name, binding)
        self._durable[name] = topic_filter
        if queue.durable:
            self.store.save_durable_subscription(name, topic_filter)
        self._routes.clear()
        return queue

    def durable_filters(self) -> dict[str, str]:
        """The durable subscriptions: queue name -> topic filter."""
        return dict(self._durable)

    def unbind_durable_subscription(self, name: str) -> bool:
        """Stop feeding durable subscription ``name`` but keep its queue and what it
        holds, as a plain queue (a bridge outbox whose rule is gone)."""
        topic_filter = self._durable.pop(name, None)
        if topic_filter is None:
            return False
        self._trie.remove(topic_filter, name)
        self._routes.clear()
        self.store.delete_durable_subscription(name)
        return True

    def drop_durable_subscription(self, name: str) -> bool:
        topic_filter = self._durable.pop(name, None)
        if topic_filter is None:
            return False
        self._trie.remove(topic_filter, name)
        self._routes.clear()
        self.delete_queue(name)
        self.store.delete_durable_subscription(name)
        return True

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
        """Make ``session`` a competing consumer of queue ``queue_name`` (created on first use).

        With a ``selector`` it takes only the messages the selector matches; the others
        stay queued for other consumers (JMS). Raises NotAuthorized."""
        if queue_name.startswith(BRIDGE_QUEUE_PREFIX) and session.identity is not TRUSTED:
            # A client consuming a bridge's outbox would take messages from the upstream.
            self.stats.denied["consume"] += 1
            raise NotAuthorized("consume", QUEUE_PREFIX + queue_name)
        if self.acl is not None and not self._may_consume(session, queue_name):
            destination = QUEUE_PREFIX + queue_name
            self._denied(session.identity, "consume", destination, session.client_id)
            raise NotAuthorized("consume", destination)
        queue = self.queues.get(queue_name) or self.declare_queue(queue_name)
        return self._attach(
            session, queue, qos=qos, window=window, ack_all=ack_all, selector=selector
        )

    def cancel(self, session: Session, queue_name: str, *, requeue: bool = True) -> bool:
        """Stop consuming. Unacked deliveries go back to the queue (JMS), or with
        ``requeue=False`` may still be acknowledged (MQTT 3.10.4-3)."""
        if not requeue:
            return self._detach_consumer(session, queue_name)
        consumer = session.consumers.pop(queue_name, None)
        if consumer is None or consumer.closed:
            return False
        consumer.queue.detach(consumer)
        consumer.sink = None
        return True

    def _attach(
        self,
        session: Session,
        queue: Queue,
        *,
        qos: int,
        window: int = 65535,
        ack_all: bool = False,
        selector: Selector | None = None,
    ) -> Consumer:
        consumer = session.consumers.get(queue.name)
        if consumer is not None:
            consumer.qos = qos  # subscribing again updates the options
            if consumer.selector != selector:
                consumer.selector = selector
                queue.selectors_changed()
                queue.dispatch()
            if consumer.closed:
                consumer.closed = False
                if consumer.sink is not None:
                    queue.attach(consumer)
            return consumer
        window = min(window, session.consumer.window)
        consumer = Consumer(
            queue, session, qos=qos, window=window, ack_all=ack_all, selector=selector
        )
        session.consumers[queue.name] = consumer
        consumer.sink = session.sink
        if consumer.sink is not None:
            queue.attach(consumer)
        return consumer

    def _detach_consumer(self, session: Session, queue_name: str) -> bool:
        """Take no more from the queue, but let deliveries already sent be acknowledged
        (MQTT 3.10.4-3): the consumer stays with the session, closed, until they are."""
        consumer = session.consumers.get(queue_name)
        if consumer is None or consumer.closed:
            return False
        consumer.queue.detach(consumer, keep_inflight=True)
        consumer.closed = True
        self._drop_if_done(consumer)
        return True

    def _drop_if_done(self, consumer: Consumer) -> None:
        consumer_map = consumer.session.consumers
        if consumer.closed and not consumer.unacked:
            if consumer_map.get(consumer.queue.name) is consumer:
                del consumer_map[consumer.queue.name]
            consumer.sink = None

    def _send_retained(
        self, session: Session, topic_filter: str, options: SubscribeOptions
    ) -> None:
        now = self.now()
        ids = () if options.subscription_id is None else (options.subscription_id,)
        acl = self.acl
        for message in self.retained.match(topic_filter):
            if message.expiry is not None and message.expiry <= now:
                continue
            if options.selector is not None and not options.selector.matches(message):
                continue
            if acl is not None and not self._readable(session, message.destination):
                continue
            qos = min(message.qos, options.qos)
            session.queue.put(
                Delivery(
                    message, qos=qos, retain=True, subscription_ids=ids, expires=message.expiry
                )
            )

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


def _stored(entry: Delivery) -> StoredEntry:
    return StoredEntry(
        message_id=entry.message.message_id,
        qos=entry.qos,
        count=entry.count,
        wire_id=entry.wire_id,
        stage=entry.stage,
        retain=entry.retain,
        subscription_ids=entry.subscription_ids,
    )


def _user(identity: Principal | Trust | None) -> str | None:
    return None if identity is None or identity is TRUSTED else identity.user


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
