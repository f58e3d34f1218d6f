"""Session lifecycle, for the ``Broker`` (core/broker.py), which delegates to it:
attaching a connection (takeover, resume), its end, wills, and saving a session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..store.base import SessionState, StoredSubscription
from .authz import NOT_AUTHORIZED, NotAuthorized
from .delivery import CloseReason, Sink
from .destinations import SESSION_QUEUE_PREFIX, SHARE_PREFIX
from .queue import Queue
from .session import NEVER, TRUSTED, Session, Trust, Will

if TYPE_CHECKING:
    from ..auth.acl import Principal
    from .broker import Broker


def open_session(
    broker: Broker,
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
    if will is not None and not broker.authorize_message(will.message, identity):
        raise NotAuthorized("publish", will.message.destination)
    session = broker.sessions.get(client_id)
    if session is not None and session.connected:
        old_sink = session.sink
        broker.detach(session, graceful=False)
        assert old_sink is not None
        old_sink.close(CloseReason.TAKEN_OVER)
        session = broker.sessions.get(client_id)
    if session is not None and not clean and broker.acl is not None:
        # Another user's session, with what it queued, is never handed over.
        owner = session.identity
        if owner is not None and owner is not TRUSTED:
            clean = _user(identity) != owner.user
    if session is not None and clean:
        end_session(broker, session)
        session = None
    present = session is not None
    if session is None:
        durable = expiry > 0 and broker.durability != "memory"
        queue = Queue(
            SESSION_QUEUE_PREFIX + client_id,
            broker,
            broker.session_queue_policy,
            lossy=True,
            ordered=True,
            durable=durable,
        )
        session = Session(client_id=client_id, expiry=expiry, queue=queue)
        session.identity = identity
        queue.owner = session
        broker.sessions[client_id] = session
    else:
        # Back in time: a pending will is cancelled (MQTT 5, 3.1.3.2.2).
        session.will_due = None
        session.expires_at = None
        session.expiry = expiry
        if session.identity != identity:
            session.identity = identity
            if broker.acl is not None:
                broker._routes.clear()
                recheck(broker, session)
    session.will = will
    session.window = window
    session.consumer.window = window
    session.consumer.sink = sink
    for consumer in session.consumers.values():
        consumer.sink = sink
        consumer.window = min(consumer.window, window)
    save(broker, session)
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


def detach(
    broker: Broker, session: Session, *, graceful: bool, expiry: float | None = None
) -> None:
    """The session's connection ended; ``graceful`` (a clean goodbye) discards the will.

    ``expiry`` replaces the session's expiry (MQTT 5 DISCONNECT may change it).
    """
    if not session.connected:
        return
    if expiry is not None:
        session.expiry = expiry
    now = broker.now()
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
        end_session(broker, session)
        return
    if expiry is not None:
        save(broker, session)  # the expiry a restart restores is the latest one
    session.expires_at = now + session.expiry if session.expiry != NEVER else None
    will = session.will
    if will is not None:
        if will.delay <= 0:
            publish_will(broker, session)
        else:
            session.will_due = now + min(will.delay, session.expiry)


def end_session(broker: Broker, session: Session) -> None:
    if broker.sessions.get(session.client_id) is session:
        del broker.sessions[session.client_id]
        broker._delivered_gone += session.queue.stats.delivered
    publish_will(broker, session)
    for name, consumer in session.consumers.items():
        consumer.sink = None
        if name.startswith(SHARE_PREFIX):
            # Exactly-once: a QoS 2 message begun with this member goes to no other.
            for tag, entry in list(consumer.unacked.items()):
                if consumer.delivery_qos(entry.qos) == 2:
                    del consumer.unacked[tag]
                    broker.discard(consumer.queue, entry, "session-ended")
    for topic_filter in list(session.subscriptions):
        broker.unsubscribe(session, topic_filter)
    for name, consumer in list(session.consumers.items()):
        consumer.queue.detach(consumer)
        del session.consumers[name]
    for name in session.temporary:
        broker.delete_queue(name)
    session.temporary.clear()
    for entry in [*session.inflight(), *session.queue.purge()]:
        broker.forget(session.queue, entry)
    session.consumer.unacked.clear()
    session.consumer.sink = None
    if session.queue.durable:
        broker.store.drop_queue(session.queue.name)
        broker.store.delete_session(session.client_id)


def publish_will(broker: Broker, session: Session) -> None:
    will, session.will, session.will_due = session.will, None, None
    if will is not None:
        broker.publish(will.message, identity=session.identity)


def save(broker: Broker, session: Session) -> None:
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
        broker.store.save_session(
            SessionState(client_id=session.client_id, expiry=session.expiry, subscriptions=subs)
        )


def recheck(broker: Broker, session: Session) -> None:
    """A resumed session has another identity: it keeps only the subscriptions,
    consumers, queued and in-flight messages that this one may have."""
    identity, client_id = session.identity, session.client_id
    for topic_filter in list(session.subscriptions):
        if not broker.authorize(identity, "subscribe", topic_filter, client_id):
            broker.unsubscribe(session, topic_filter)
    for name in list(session.consumers):
        if not name.startswith(SHARE_PREFIX) and not broker._may_consume(session, name):
            broker.cancel(session, name)
    queue = session.queue
    for entry in queue.purge():
        if broker._readable(session, entry.message.destination):
            queue.restore(entry)
        else:
            broker.discard(queue, entry, NOT_AUTHORIZED)
    unacked = session.consumer.unacked
    for entry in session.inflight():
        if not broker._readable(session, entry.message.destination):
            del unacked[entry.tag]
            entry.consumer = None
            broker.discard(queue, entry, NOT_AUTHORIZED)


def _user(identity: Principal | Trust | None) -> str | None:
    return None if identity is None or identity is TRUSTED else identity.user
