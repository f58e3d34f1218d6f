"""ACLs enforced by the core's facade: publishes refused, subscriptions and consumers
refused, each routed message checked against its subscriber, retained messages and $SYS
filtered the same way, wills, resumed sessions and reloads (docs/security.md)."""

from __future__ import annotations

import pytest

from gateway.auth.acl import Acl, AclRule, RuleAction
from gateway.auth.identity import Identity
from gateway.core import (
    NEVER,
    Broker,
    Kind,
    Message,
    Origin,
    Status,
    SubscribeOptions,
    Will,
)
from gateway.core.broker import NotAuthorized
from gateway.core.routing import Router, RouteRule
from gateway.core.session import TRUSTED, Session
from gateway.store import MemoryStore
from tests.core.fakes import Clock, RecordingSink

ALICE = Identity(user="alice", groups=("users",), via="password")
BOB = Identity(user="bob", groups=("users",), via="password")
ROOT = Identity(user="root", groups=("admins",), via="password")
SERVICE = Identity(user="service", groups=(), via="password")


def rule(
    action: RuleAction,
    pattern: str,
    allow: bool = True,
    *,
    user: str | None = None,
    group: str | None = None,
    anonymous: bool = False,
) -> AclRule:
    return AclRule(
        action=action, pattern=pattern, allow=allow, user=user, group=group, anonymous=anonymous
    )


# Each user owns inbox/USER; nobody reads another's; the rest is open to users. The
# service may do anything on topics, root reads $SYS, anonymous clients read public/.
RULES = [
    rule("all", "inbox/%u/#", group="users"),
    rule("all", "inbox/#", False, group="users"),
    rule("all", "#", group="users"),
    rule("all", "$queue/jobs", group="users"),
    rule("all", "#", user="service"),
    rule("subscribe", "$SYS/#", user="root"),
    rule("subscribe", "public/#", anonymous=True),
]


@pytest.fixture
def broker(clock: Clock) -> Broker:
    return Broker(clock=clock, acl=Acl(RULES))


def msg(topic: str, payload: bytes = b"x", *, by: str = "pub", **fields: object) -> Message:
    return Message(
        destination=topic,
        payload=payload,
        origin=Origin(protocol="mqtt", client_id=by),
        **fields,  # type: ignore[arg-type]
    )


def connect(
    broker: Broker, client_id: str, identity: Identity | None, **kwargs: object
) -> tuple[Session, RecordingSink]:
    sink = RecordingSink(client_id)
    session, _ = broker.open_session(client_id, sink, identity=identity, **kwargs)  # type: ignore[arg-type]
    return session, sink


def topics(sink: RecordingSink) -> list[str]:
    return [d.message.destination for d in sink.take()]


# -- publish ------------------------------------------------------------------------------------


def test_a_publish_the_acl_refuses_is_refused_not_authorized(broker: Broker) -> None:
    _, sink = connect(broker, "svc", SERVICE)
    broker.subscribe(broker.sessions["svc"], "#")
    result = broker.publish(msg("inbox/bob/x", by="alice"), identity=ALICE)
    assert (result.status, result.reason, result.routed) == (Status.REFUSED, "not-authorized", 0)
    assert broker.stats.refused == 1
    assert broker.publish(msg("inbox/alice/x", by="alice"), identity=ALICE).accepted
    assert broker.publish(msg("news", by="alice"), identity=ALICE).accepted
    assert not broker.publish(msg("news")).accepted  # anonymous may only read public/
    assert topics(sink) == ["inbox/alice/x", "news"]


def test_queue_publishes_are_checked_as_dollar_queue(broker: Broker) -> None:
    jobs = Message(
        destination="jobs", payload=b"j", kind=Kind.QUEUE, origin=Origin(protocol="http")
    )
    other = Message(
        destination="other", payload=b"o", kind=Kind.QUEUE, origin=Origin(protocol="http")
    )
    assert broker.publish(jobs, identity=ALICE).accepted
    assert broker.publish(other, identity=ALICE).reason == "not-authorized"
    assert "other" not in broker.queues  # a refused publish creates nothing


def test_the_gateways_own_and_trusted_publishes_are_not_checked(broker: Broker) -> None:
    internal = Message(destination="$SYS/broker/uptime", payload=b"1 seconds", retain=True)
    assert broker.publish(internal).accepted  # origin "internal", as $SYS messages
    assert broker.publish(msg("anything"), identity=TRUSTED).accepted


def test_an_acl_without_rules_allows_everything(clock: Clock) -> None:
    broker = Broker(clock=clock, acl=Acl())
    session, sink = connect(broker, "anon", None)
    broker.subscribe(session, "$SYS/#")
    broker.subscribe(session, "#")
    assert broker.publish(msg("a/b")).routed == 1
    assert broker.publish(msg("$SYS/x")).routed == 1
    assert topics(sink) == ["a/b", "$SYS/x"]


def test_routing_copies_are_checked_once_as_the_original(clock: Clock) -> None:
    router = Router([RouteRule(match="news/#", copy_to=("inbox/bob/copy",))])
    broker = Broker(clock=clock, acl=Acl(RULES), router=router)
    bob, sink = connect(broker, "bob", BOB)
    broker.subscribe(bob, "inbox/bob/#")
    # alice may not publish to inbox/bob, but the operator's rule may copy there
    assert broker.publish(msg("news/x", by="alice"), identity=ALICE).accepted
    assert topics(sink) == ["inbox/bob/copy"]
    assert not broker.publish(msg("inbox/bob/x", by="alice"), identity=ALICE).accepted


# -- subscribe and consume ----------------------------------------------------------------------


def test_a_subscription_the_acl_refuses_raises_and_is_not_made(broker: Broker) -> None:
    alice, _ = connect(broker, "alice", ALICE)
    for topic_filter in ("inbox/bob/#", "inbox/+/msg", "$SYS/#"):
        with pytest.raises(NotAuthorized) as caught:
            broker.subscribe(alice, topic_filter)
        assert (caught.value.action, caught.value.destination) == ("subscribe", topic_filter)
    assert alice.subscriptions == {}
    assert broker.subscription_count == 0


def test_a_wildcard_subscription_never_delivers_a_forbidden_topic(broker: Broker) -> None:
    alice, sink = connect(broker, "alice", ALICE)
    assert broker.subscribe(alice, "#", SubscribeOptions(qos=1)) == 1
    broker.subscribe(alice, "+/bob/#")  # overlapping filters: still one check per topic
    for topic in ("inbox/bob/secret", "inbox/alice/note", "news/today", "inbox/carol/x"):
        broker.publish(msg(topic, by="svc"), identity=SERVICE)
    assert topics(sink) == ["inbox/alice/note", "news/today"]
    # ... and a routed message with nobody allowed to read it is unrouted
    assert broker.publish(msg("inbox/bob/again", by="svc"), identity=SERVICE).routed == 0


def test_retained_messages_are_filtered_like_live_ones(broker: Broker) -> None:
    for topic in ("inbox/bob/r", "inbox/alice/r", "news/r"):
        broker.publish(msg(topic, by="svc", retain=True), identity=SERVICE)
    _, sink = connect(broker, "alice", ALICE)
    broker.subscribe(broker.sessions["alice"], "#")
    assert sorted(topics(sink)) == ["inbox/alice/r", "news/r"]
    _, anon = connect(broker, "anon", None)
    broker.subscribe(broker.sessions["anon"], "public/#")
    assert topics(anon) == []


def test_sys_topics_are_read_only_by_whom_a_rule_allows(broker: Broker) -> None:
    sys_message = Message(destination="$SYS/broker/uptime", payload=b"5", retain=True)
    broker.publish(sys_message)
    root, root_sink = connect(broker, "root", ROOT)
    broker.subscribe(root, "$SYS/#")
    assert topics(root_sink) == ["$SYS/broker/uptime"]
    alice, alice_sink = connect(broker, "alice", ALICE)
    with pytest.raises(NotAuthorized):
        broker.subscribe(alice, "$SYS/#")
    broker.subscribe(alice, "#")  # '#' never matches '$' topics, and no rule covers them
    broker.publish(Message(destination="$SYS/broker/uptime", payload=b"6", retain=True))
    assert topics(root_sink) == ["$SYS/broker/uptime"]
    assert topics(alice_sink) == []


def test_sys_filtering_is_per_topic(clock: Clock) -> None:
    broker = Broker(
        clock=clock, acl=Acl([rule("subscribe", "$SYS/broker/version", anonymous=True)])
    )
    broker.publish(Message(destination="$SYS/broker/version", payload=b"v", retain=True))
    broker.publish(Message(destination="$SYS/broker/uptime", payload=b"u", retain=True))
    session, sink = connect(broker, "anon", None)
    with pytest.raises(NotAuthorized):
        broker.subscribe(session, "$SYS/#")
    broker.subscribe(session, "$SYS/broker/version")
    assert topics(sink) == ["$SYS/broker/version"]


def test_consumers_need_consume(broker: Broker) -> None:
    alice, _ = connect(broker, "alice", ALICE)
    broker.consume(alice, "jobs")
    with pytest.raises(NotAuthorized) as caught:
        broker.consume(alice, "payroll")
    assert caught.value.destination == "$queue/payroll"
    assert "payroll" not in broker.queues
    anon, _ = connect(broker, "anon", None)
    with pytest.raises(NotAuthorized):
        broker.consume(anon, "jobs")


def test_a_session_always_consumes_its_own_temporary_queue(broker: Broker) -> None:
    anon, sink = connect(broker, "anon", None)
    reply = broker.temporary_queue(anon)
    broker.consume(anon, reply, qos=0)
    other, _ = connect(broker, "alice", ALICE)
    with pytest.raises(NotAuthorized):
        broker.consume(other, reply)
    reply_message = Message(destination=reply, payload=b"r", kind=Kind.QUEUE)
    assert broker.publish(reply_message).accepted
    assert sink.payloads == [b"r"]


def test_shared_and_durable_subscriptions_must_be_wholly_readable(broker: Broker) -> None:
    alice, sink = connect(broker, "alice", ALICE)
    # Messages of a group are not checked per member: a deny touching the filter refuses.
    with pytest.raises(NotAuthorized):
        broker.subscribe(alice, "$share/g/#")
    broker.subscribe(alice, "$share/g/news/#")
    broker.durable_subscription("$durable/x/all", "#")
    with pytest.raises(NotAuthorized):
        broker.consume(alice, "$durable/x/all")
    broker.durable_subscription("$durable/x/news", "news/#")
    broker.consume(alice, "$durable/x/news")
    broker.publish(msg("news/a", by="svc"), identity=SERVICE)
    assert len(sink.take()) == 2  # one through the group, one through the durable queue


def test_authorize_is_the_one_decision(broker: Broker) -> None:
    assert broker.authorize(ALICE, "subscribe", "inbox/alice/#")
    assert not broker.authorize(ALICE, "subscribe", "inbox/bob/#")
    assert broker.authorize(ALICE, "subscribe", "#")
    assert not broker.authorize(ALICE, "subscribe", "#", whole=True)
    assert broker.authorize(TRUSTED, "consume", "$queue/payroll")
    assert Broker().authorize(None, "consume", "$queue/payroll")  # no ACL at all
    with pytest.raises(NotAuthorized):
        broker.require(None, "publish", "news", "c1")


# -- wills --------------------------------------------------------------------------------------


def test_a_will_the_client_may_not_publish_refuses_the_connection(broker: Broker) -> None:
    will = Will(message=msg("inbox/bob/gone", by="alice"))
    with pytest.raises(NotAuthorized):
        broker.open_session("alice", RecordingSink(), identity=ALICE, will=will)
    assert "alice" not in broker.sessions


def test_a_will_is_published_under_its_clients_identity(clock: Clock) -> None:
    acl = Acl([rule("publish", "status/%c", group="users"), rule("all", "#", user="service")])
    broker = Broker(clock=clock, acl=acl)
    watcher, sink = connect(broker, "svc", SERVICE)
    broker.subscribe(watcher, "status/#")
    will = Will(message=msg("status/dev1", b"gone", by="dev1"))
    dev, _ = connect(broker, "dev1", ALICE, will=will)
    broker.detach(dev, graceful=False)
    assert sink.payloads == [b"gone"]
    # The rules changed while it was connected: the will is refused when published.
    dev, _ = connect(broker, "dev1", ALICE, will=will)
    broker.set_acl(Acl([rule("all", "#", user="service")]))
    broker.detach(dev, graceful=False)
    assert sink.payloads == [b"gone"]
    assert broker.stats.refused == 1


# -- resumed sessions and reloads ---------------------------------------------------------------


def test_another_user_never_resumes_a_session(broker: Broker) -> None:
    alice, _ = connect(broker, "dev", ALICE, clean=False, expiry=NEVER)
    broker.subscribe(alice, "inbox/alice/#", SubscribeOptions(qos=1))
    broker.detach(alice, graceful=True)
    broker.publish(msg("inbox/alice/private", qos=1, by="svc"), identity=SERVICE)
    sink = RecordingSink()
    session, present = broker.open_session("dev", sink, clean=False, expiry=NEVER, identity=BOB)
    assert not present
    assert session.subscriptions == {}
    assert sink.got == []
    # the same user resumes it as usual
    broker.subscribe(session, "inbox/bob/#", SubscribeOptions(qos=1))
    broker.detach(session, graceful=True)
    again = Identity(user="bob", groups=("users",), via="JWT")
    _, present = broker.open_session(
        "dev", RecordingSink(), clean=False, expiry=NEVER, identity=again
    )
    assert present


def test_a_recovered_session_keeps_only_what_its_client_may_read(clock: Clock) -> None:
    store = MemoryStore()
    before = Broker(store=store, clock=clock)
    session, _ = before.open_session("dev", RecordingSink(), clean=False, expiry=NEVER)
    for topic_filter in ("inbox/alice/#", "inbox/bob/#", "$share/g/inbox/#"):
        before.subscribe(session, topic_filter, SubscribeOptions(qos=1))
    before.consume(session, "payroll")
    before.detach(session, graceful=True)
    for topic in ("inbox/alice/1", "inbox/bob/1"):
        before.publish(msg(topic, qos=1))
    # After a restart, who owned the session is unknown until a client resumes it.
    after = Broker(store=MemoryStore(), clock=clock, acl=Acl(RULES))
    after.restore(store.load())
    after.publish(msg("inbox/bob/2", qos=1, by="svc"), identity=SERVICE)
    sink = RecordingSink()
    resumed, present = after.open_session("dev", sink, clean=False, expiry=NEVER, identity=ALICE)
    assert present
    assert sorted(resumed.subscriptions) == ["inbox/alice/#"]
    assert sink.payloads == [b"x"]
    assert [d.message.destination for d, _ in sink.got] == ["inbox/alice/1"]
    assert after.stats.drops["not-authorized"] == 2
    after.publish(msg("inbox/bob/3", qos=1, by="svc"), identity=SERVICE)
    assert len(sink.got) == 1


def test_a_reload_applies_to_subscriptions_already_made(broker: Broker) -> None:
    alice, sink = connect(broker, "alice", ALICE)
    broker.subscribe(alice, "#")
    broker.publish(msg("news/a", by="svc"), identity=SERVICE)
    reloaded = [
        rule("subscribe", "news/#", False, user="alice"),
        rule("subscribe", "#", user="alice"),
    ]
    broker.set_acl(Acl(reloaded))
    broker.publish(msg("news/b", by="svc"), identity=TRUSTED)
    broker.publish(msg("other", by="svc"), identity=TRUSTED)
    assert topics(sink) == ["news/a", "other"]
    broker.set_acl(None)
    broker.publish(msg("news/c"))
    assert topics(sink) == ["news/c"]
