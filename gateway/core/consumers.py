"""Subscriptions and consumers, for the ``Broker`` (core/broker.py), which delegates
to it: topic and shared subscriptions, durable subscriptions, and competing
consumers of named queues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .authz import NotAuthorized
from .delivery import Consumer, Delivery
from .destinations import BRIDGE_QUEUE_PREFIX, QUEUE_PREFIX, SHARE_PREFIX
from .queue import Queue, QueuePolicy
from .selector import Selector
from .session import TRUSTED, Session, SubscribeOptions
from .sessions import save
from .topics import InvalidFilter, check_filter

if TYPE_CHECKING:
    from .broker import Broker

DEFAULT_OPTIONS = SubscribeOptions()


@dataclass(frozen=True, slots=True)
class _Binding:
    options: SubscribeOptions
    session: Session | None
    queue: Queue


def subscribe(
    broker: Broker, session: Session, topic_filter: str, options: SubscribeOptions = DEFAULT_OPTIONS
) -> int:
    """Subscribe ``session``; returns the granted QoS. Raises InvalidFilter.

    ``$share/GROUP/FILTER`` joins the shared subscription GROUP: a queue fed by
    FILTER whose members compete for its messages.
    """
    if topic_filter.startswith(SHARE_PREFIX):
        return subscribe_shared(broker, session, topic_filter, options)
    check_filter(topic_filter)
    if broker.acl is not None:
        broker.require(session.identity, "subscribe", topic_filter, session.client_id)
    is_new = topic_filter not in session.subscriptions
    session.subscriptions[topic_filter] = options
    broker._trie.add(
        topic_filter, (session, topic_filter), _Binding(options, session, session.queue)
    )
    broker._routes.clear()
    save(broker, session)
    if options.retain_handling == 0 or (options.retain_handling == 1 and is_new):
        send_retained(broker, session, topic_filter, options)
    return options.qos


def subscribe_shared(
    broker: Broker, session: Session, share: str, options: SubscribeOptions
) -> int:
    group, sep, topic_filter = share[len(SHARE_PREFIX) :].partition("/")
    if not group or not sep or "+" in group or "#" in group:
        raise InvalidFilter(f"shared subscription needs $share/GROUP/FILTER: {share!r}")
    check_filter(topic_filter)
    if options.selector is not None:
        raise InvalidFilter("selectors are not supported on shared subscriptions (yet)")
    if broker.acl is not None:
        # The group's messages are not checked per member: all must be readable.
        broker.require(session.identity, "subscribe", share, session.client_id, whole=True)
    queue = broker.queues.get(share)
    if queue is None:
        queue = broker.queues[share] = Queue(
            share,
            broker,
            broker.session_queue_policy,
            lossy=True,
            ordered=True,
            durable=broker._mode(broker.session_queue_policy) != "memory",
        )
        shared = SubscribeOptions(qos=2)
        broker._trie.add(topic_filter, share, _Binding(shared, None, queue))
        broker._routes.clear()
    session.subscriptions[share] = options
    consumer = attach(broker, session, queue, qos=options.qos)
    sub_id = options.subscription_id
    consumer.subscription_ids = () if sub_id is None else (sub_id,)
    consumer.retain_as_published = options.retain_as_published
    save(broker, session)
    return options.qos


def unsubscribe(broker: Broker, session: Session, topic_filter: str) -> bool:
    if session.subscriptions.pop(topic_filter, None) is None:
        return False
    if topic_filter.startswith(SHARE_PREFIX):
        detach_consumer(broker, session, topic_filter)
        queue = broker.queues.get(topic_filter)
        if (
            queue is not None
            and not queue.consumers
            and not any(topic_filter in s.subscriptions for s in broker.sessions.values())
        ):
            # The last member left: the group's queue goes with it.
            broker._trie.remove(topic_filter.split("/", 2)[2], topic_filter)
            broker.delete_queue(topic_filter)
    else:
        broker._trie.remove(topic_filter, (session, topic_filter))
    broker._routes.clear()
    save(broker, session)
    return True


def durable_subscription(
    broker: Broker,
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
    queue = broker.queues.get(name)
    if queue is not None:
        # Taken back after a restart, perhaps with a changed filter (a bridge's outbox
        # whose rule was edited), or a queue that was unbound: it keeps what it holds.
        previous = broker._durable.get(name)
        if previous != topic_filter:
            check_filter(topic_filter)
            if previous is not None:
                broker._trie.remove(previous, name)
            broker._durable[name] = topic_filter
            if queue.durable:
                broker.store.save_durable_subscription(name, topic_filter)
        if policy is not None:
            queue.set_policy(policy)
        broker._trie.add(
            topic_filter,
            name,
            _Binding(SubscribeOptions(qos=2, selector=selector), None, queue),
        )
        broker._routes.clear()
        return queue
    check_filter(topic_filter)
    if policy is None:
        policy = broker._policies.get(name, broker.session_queue_policy)
    queue = broker.queues[name] = Queue(
        name, broker, policy, ordered=True, durable=broker._mode(policy) != "memory"
    )
    binding = _Binding(SubscribeOptions(qos=2, selector=selector), None, queue)
    broker._trie.add(topic_filter, name, binding)
    broker._durable[name] = topic_filter
    if queue.durable:
        broker.store.save_durable_subscription(name, topic_filter)
    broker._routes.clear()
    return queue


def unbind_durable_subscription(broker: Broker, name: str) -> bool:
    """Stop feeding durable subscription ``name`` but keep its queue and what it
    holds, as a plain queue (a bridge outbox whose rule is gone)."""
    topic_filter = broker._durable.pop(name, None)
    if topic_filter is None:
        return False
    broker._trie.remove(topic_filter, name)
    broker._routes.clear()
    broker.store.delete_durable_subscription(name)
    return True


def drop_durable_subscription(broker: Broker, name: str) -> bool:
    topic_filter = broker._durable.pop(name, None)
    if topic_filter is None:
        return False
    broker._trie.remove(topic_filter, name)
    broker._routes.clear()
    broker.delete_queue(name)
    broker.store.delete_durable_subscription(name)
    return True


def consume(
    broker: Broker,
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
        broker.stats.denied["consume"] += 1
        raise NotAuthorized("consume", QUEUE_PREFIX + queue_name)
    if broker.acl is not None and not broker._may_consume(session, queue_name):
        destination = QUEUE_PREFIX + queue_name
        broker._denied(session.identity, "consume", destination, session.client_id)
        raise NotAuthorized("consume", destination)
    queue = broker.queues.get(queue_name) or broker.declare_queue(queue_name)
    return attach(
        broker, session, queue, qos=qos, window=window, ack_all=ack_all, selector=selector
    )


def cancel(broker: Broker, session: Session, queue_name: str, *, requeue: bool = True) -> bool:
    """Stop consuming. Unacked deliveries go back to the queue (JMS), or with
    ``requeue=False`` may still be acknowledged (MQTT 3.10.4-3)."""
    if not requeue:
        return detach_consumer(broker, session, queue_name)
    consumer = session.consumers.pop(queue_name, None)
    if consumer is None or consumer.closed:
        return False
    consumer.queue.detach(consumer)
    consumer.sink = None
    return True


def attach(
    broker: Broker,
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
    consumer = Consumer(queue, session, qos=qos, window=window, ack_all=ack_all, selector=selector)
    session.consumers[queue.name] = consumer
    consumer.sink = session.sink
    if consumer.sink is not None:
        queue.attach(consumer)
    return consumer


def detach_consumer(broker: Broker, session: Session, queue_name: str) -> bool:
    """Take no more from the queue, but let deliveries already sent be acknowledged
    (MQTT 3.10.4-3): the consumer stays with the session, closed, until they are."""
    consumer = session.consumers.get(queue_name)
    if consumer is None or consumer.closed:
        return False
    consumer.queue.detach(consumer, keep_inflight=True)
    consumer.closed = True
    broker._drop_if_done(consumer)
    return True


def send_retained(
    broker: Broker, session: Session, topic_filter: str, options: SubscribeOptions
) -> None:
    now = broker.now()
    ids = () if options.subscription_id is None else (options.subscription_id,)
    acl = broker.acl
    for message in broker.retained.match(topic_filter):
        if message.expiry is not None and message.expiry <= now:
            continue
        if options.selector is not None and not options.selector.matches(message):
            continue
        if acl is not None and not broker._readable(session, message.destination):
            continue
        qos = min(message.qos, options.qos)
        session.queue.put(
            Delivery(message, qos=qos, retain=True, subscription_ids=ids, expires=message.expiry)
        )
