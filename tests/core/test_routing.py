"""Routing rules: matching and captures, templates, selectors, order, stop, copy, divert,
header rewrites, drops, bridge forwards, loop freedom, and the [[routes]] configuration."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.app import build_broker
from gateway.core import Broker, Headers, Kind, Message, Origin, Overflow, QueuePolicy, Status
from gateway.core.message import next_message_id
from gateway.core.routing import (
    ROUTED_BY,
    ROUTED_FROM,
    RouteError,
    Router,
    RouteRule,
    compile_template,
)
from tests.core.fakes import RecordingSink


def msg(topic: str, payload: bytes = b"x", **fields: object) -> Message:
    return Message(destination=topic, payload=payload, **fields)  # type: ignore[arg-type]


def headers(**values: str) -> Headers:
    return Headers(values.items())


def router(*rules: RouteRule) -> Router:
    return Router(rules)


def subscriber(broker: Broker, client_id: str, *filters: str) -> RecordingSink:
    sink = RecordingSink(client_id)
    session, _ = broker.open_session(client_id, sink)
    for topic_filter in filters:
        broker.subscribe(session, topic_filter)
    return sink


def consumer(broker: Broker, client_id: str, queue: str) -> RecordingSink:
    sink = RecordingSink(client_id)
    session, _ = broker.open_session(client_id, sink)
    broker.consume(session, queue)
    return sink


def routed_broker(*rules: RouteRule, **kw: object) -> Broker:
    return Broker(router=Router(rules), **kw)  # type: ignore[arg-type]


def addresses(messages: Iterable[Message]) -> list[str]:
    return [("$queue/" if m.kind is Kind.QUEUE else "") + m.destination for m in messages]


# -- templates --------------------------------------------------------------------------------


def test_template_renders_captures_fields_and_headers() -> None:
    template = compile_template(
        "out/{2}/{1}/{#}/{header:site}/{priority}/{qos}/{content_type}", 2, True
    )
    message = msg("a/b/c", headers=headers(site="lyon"), priority=7, content_type="text/plain")
    assert template.render(message, ["b", "c", "d/e"]) == "out/c/b/d/e/lyon/7/0/text/plain"
    assert template.literal is None


def test_template_literal_braces_and_plain_text() -> None:
    template = compile_template("a{{b}}c", 0, False)
    assert template.literal == "a{b}c"
    assert template.render(msg("t"), ()) == "a{b}c"


def test_template_missing_value_renders_none() -> None:
    template = compile_template("t/{header:tenant}", 0, False)
    assert template.render(msg("t"), ()) is None
    assert compile_template("{content_type}", 0, False).render(msg("t"), ()) is None
    origin = Origin(protocol="mqtt", client_id="dev-1")
    rendered = compile_template("{protocol}:{client_id}", 0, False).render(
        msg("t", origin=origin), ()
    )
    assert rendered == "mqtt:dev-1"


@pytest.mark.parametrize(
    ("text", "captures", "rest", "error"),
    [
        ("x/{3}", 2, False, "{3} at position 2: the match captures {1} to {2} (one per '+')"),
        ("x/{1}", 0, False, "{1} at position 2: the match captures no level"),
        ("x/{#}", 1, False, "{#} at position 2: the match does not end with '#'"),
        ("x/{nope}", 0, False, "unknown placeholder {nope} at position 2"),
        ("x/{header:}", 0, False, "{header:} at position 2 needs a header name"),
        ("x/{0}", 1, False, "unknown placeholder {0}"),
        ("x/{", 0, False, "unbalanced '{' at position 2"),
        ("x}/y", 0, False, "unbalanced '}' at position 1"),
    ],
)
def test_template_errors_name_the_problem_and_position(
    text: str, captures: int, rest: bool, error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        compile_template(text, captures, rest)


# -- matching and captures --------------------------------------------------------------------


def test_plus_and_hash_capture_levels() -> None:
    r = router(RouteRule(match="site/+/dev/+/#", copy_to=("copy/{2}/{1}/{#}",)))
    out = r.apply(msg("site/lyon/dev/7/temp/c"))
    assert addresses(out.messages) == ["site/lyon/dev/7/temp/c", "copy/7/lyon/temp/c"]
    assert r.apply(msg("site/lyon/other/7/x")).fired == []


def test_hash_matches_the_parent_level_with_an_empty_capture() -> None:
    r = router(RouteRule(match="a/#", copy_to=("b/{#}",)))
    assert addresses(r.apply(msg("a")).messages) == ["a", "b/"]


def test_queue_rules_match_queues_only_and_topic_rules_topics_only() -> None:
    r = router(
        RouteRule(match="$queue/jobs/+", copy_to=("$queue/audit.{1}",)),
        RouteRule(match="#", set_headers=(("seen", "yes"),)),
    )
    queued = r.apply(msg("jobs/eu", kind=Kind.QUEUE))
    assert addresses(queued.messages) == ["$queue/jobs/eu", "$queue/audit.eu"]
    assert queued.fired == ["routes[0]"]
    topic = r.apply(msg("jobs/eu"))
    assert topic.fired == ["routes[1]"]
    assert topic.messages[0].headers["seen"] == "yes"


def test_wildcards_never_match_dollar_topics_or_dollar_queues() -> None:
    r = router(
        RouteRule(match="#", drop="all"),
        RouteRule(match="$queue/#", drop="all-queues"),
        RouteRule(match="$SYS/#", copy_to=("$queue/sys",)),
    )
    assert r.apply(msg("$SYS/broker/uptime")).fired == ["routes[2]"]
    assert r.apply(msg("$temp/c/1", kind=Kind.QUEUE)).fired == []
    assert r.apply(msg("jobs", kind=Kind.QUEUE)).dropped == "all-queues"


def test_many_rules_are_matched_through_the_trie_in_order() -> None:
    rules = [RouteRule(match=f"dev/{i}/#", set_headers=(("rule", str(i)),)) for i in range(1000)]
    rules.append(RouteRule(match="dev/+/temp", set_headers=(("temp", "{1}"),)))
    rules.insert(0, RouteRule(match="#", set_headers=(("first", "1"),)))
    r = Router(rules)
    matched = r.rules_for(msg("dev/500/temp"))
    assert [rule.index for rule in matched] == [0, 501, 1001]
    assert r.rules_for(msg("dev/500/temp")) is matched  # cached per destination
    out = r.apply(msg("dev/500/temp")).messages[0]
    assert dict(out.headers) == {"first": "1", "rule": "500", "temp": "500"}


# -- selectors, order, stop -------------------------------------------------------------------


def test_a_rule_fires_only_when_its_selector_is_true() -> None:
    r = router(RouteRule(match="orders/#", selector="region = 'eu'", divert_to=("eu/{#}",)))
    assert addresses(r.apply(msg("orders/1", headers=headers(region="eu"))).messages) == ["eu/1"]
    assert addresses(r.apply(msg("orders/1", headers=headers(region="us"))).messages) == [
        "orders/1"
    ]
    assert r.apply(msg("orders/1")).fired == []  # UNKNOWN is not TRUE


def test_rules_see_what_earlier_rules_rewrote() -> None:
    r = router(
        RouteRule(match="#", set_headers=(("tier", "gold"),)),
        RouteRule(match="#", selector="tier = 'gold'", copy_to=("vip/{header:tier}",)),
    )
    out = r.apply(msg("a"))
    assert addresses(out.messages) == ["a", "vip/gold"]
    assert out.messages[1].headers["tier"] == "gold"


def test_templates_render_against_the_message_as_it_reached_the_rule() -> None:
    """A rename: the new header takes the old one's value, which is then removed."""
    r = router(
        RouteRule(
            match="#",
            set_headers=(("site", "{header:site-code}"),),
            remove_headers=("site-code",),
        )
    )
    out = r.apply(msg("a", headers=headers(**{"site-code": "lyon", "keep": "1"}))).messages[0]
    assert list(out.headers.items()) == [("keep", "1"), ("site", "lyon")]


def test_stop_ends_evaluation() -> None:
    r = router(
        RouteRule(match="a/#", selector="internal = 'yes'", stop=True),
        RouteRule(match="#", copy_to=("audit",)),
    )
    assert addresses(r.apply(msg("a/1", headers=headers(internal="yes"))).messages) == ["a/1"]
    assert addresses(r.apply(msg("a/1")).messages) == ["a/1", "audit"]


def test_copies_are_snapshots_later_rewrites_do_not_reach_them() -> None:
    r = router(
        RouteRule(match="#", copy_to=("audit",)),
        RouteRule(match="#", set_headers=(("late", "1"),)),
    )
    original, copy = r.apply(msg("a")).messages
    assert original.headers["late"] == "1"
    assert "late" not in copy.headers


# -- copy, divert, rewrite, drop --------------------------------------------------------------


def test_a_copy_is_a_new_tagged_message() -> None:
    r = router(RouteRule(name="audit", match="a/+", copy_to=("$queue/audit", "copies/{1}")))
    origin = Origin(protocol="mqtt", client_id="dev")
    message = msg("a/b", headers=headers(x="1"), qos=1, retain=True, priority=6, origin=origin)
    out = r.apply(message)
    assert out.messages[0] is message  # unchanged: the very same object
    queue_copy, topic_copy = out.messages[1:]
    assert queue_copy.kind is Kind.QUEUE
    assert queue_copy.destination == "audit"
    assert queue_copy.retain is False  # queues keep no retained messages
    assert topic_copy.retain is True
    for copy in (queue_copy, topic_copy):
        assert copy.message_id not in (message.message_id, 0)
        assert copy.payload == message.payload
        assert (copy.qos, copy.priority, copy.origin) == (1, 6, origin)
        assert list(copy.headers.items()) == [
            ("x", "1"),
            (ROUTED_BY, "audit"),
            (ROUTED_FROM, "a/b"),
        ]
    assert queue_copy.message_id != topic_copy.message_id
    assert out.copied == 2
    assert out.primary == 1


def test_routed_tags_replace_ones_the_publisher_sent() -> None:
    r = router(RouteRule(name="r", match="$queue/in", copy_to=("out",)))
    sent = headers(**{ROUTED_BY: "forged", ROUTED_FROM: "nowhere"})
    copy = r.apply(msg("in", kind=Kind.QUEUE, headers=sent)).messages[1]
    assert list(copy.headers.items()) == [(ROUTED_BY, "r"), (ROUTED_FROM, "$queue/in")]


def test_divert_moves_the_message_and_ends_evaluation() -> None:
    r = router(
        RouteRule(name="mv", match="in/#", divert_to=("$queue/work", "seen/{#}")),
        RouteRule(match="#", copy_to=("never",)),
    )
    message = msg("in/x/y")
    out = r.apply(message)
    assert addresses(out.messages) == ["$queue/work", "seen/x/y"]
    assert out.primary == 2
    assert out.diverted == 2
    assert out.fired == ["mv"]
    assert out.messages[0].message_id == message.message_id  # the original, moved
    assert out.messages[1].message_id != message.message_id
    assert out.messages[0].headers[ROUTED_FROM] == "in/x/y"


def test_a_divert_whose_targets_cannot_render_leaves_the_message_in_place() -> None:
    r = router(RouteRule(match="#", divert_to=("t/{header:tenant}",)))
    out = r.apply(msg("a"))
    assert addresses(out.messages) == ["a"]
    assert out.primary == 1
    assert out.skipped == ["missing-value"]


def test_copies_to_invalid_destinations_are_skipped() -> None:
    r = router(RouteRule(match="#", copy_to=("x/{header:h}", "$queue/{header:h}")))
    out = r.apply(msg("a", headers=headers(h="+")))
    assert addresses(out.messages) == ["a", "$queue/+"]  # a queue name may hold '+'
    assert out.skipped == ["invalid-destination"]
    out = r.apply(msg("a", headers=headers(h="$SYS")))
    assert addresses(out.messages) == ["a", "x/$SYS"]
    assert out.skipped == ["invalid-destination"]


def test_set_headers_replaces_every_pair_of_a_name_and_remove_drops_them_all() -> None:
    r = router(RouteRule(match="#", set_headers=(("a", "new"),), remove_headers=("b",)))
    sent = Headers([("a", "1"), ("b", "2"), ("c", "3"), ("a", "4"), ("b", "5")])
    out = r.apply(msg("t", headers=sent)).messages[0]
    assert out.headers.pairs == (("c", "3"), ("a", "new"))  # type: ignore[attr-defined]


def test_set_header_with_a_missing_value_is_skipped() -> None:
    r = router(RouteRule(match="#", set_headers=(("a", "{header:nope}"), ("b", "ok"))))
    out = r.apply(msg("t"))
    assert dict(out.messages[0].headers) == {"b": "ok"}
    assert out.skipped == ["missing-value"]


def test_drop_discards_the_message_but_not_earlier_copies() -> None:
    r = router(
        RouteRule(match="#", copy_to=("audit",)),
        RouteRule(match="noise/#", drop="noise"),
        RouteRule(match="#", copy_to=("never",)),
    )
    out = r.apply(msg("noise/1"))
    assert out.dropped == "noise"
    assert addresses(out.messages) == ["audit"]
    assert out.primary == 0


# -- through the broker -----------------------------------------------------------------------


def test_without_rules_the_broker_has_no_router() -> None:
    config = config_mod.loads("", "t.toml")
    assert build_broker(config).router is None


def test_a_copy_reaches_a_queue_consumer_and_the_original_its_subscribers() -> None:
    broker = routed_broker(RouteRule(match="sensors/+/temp", copy_to=("$queue/temps.{1}",)))
    topic = subscriber(broker, "sub", "sensors/#")
    queue = consumer(broker, "worker", "temps.dev1")
    result = broker.publish(msg("sensors/dev1/temp", b"21"))
    assert result == result.__class__(Status.ACCEPTED, 2)
    assert topic.payloads == [b"21"]
    assert queue.payloads == [b"21"]
    assert queue.got[0][0].message.headers[ROUTED_BY] == "routes[0]"
    assert broker.stats.routes.copied == 1
    assert broker.stats.routes.matched["routes[0]"] == 1
    assert broker.stats.published == 2  # the original and its copy


def test_copies_are_never_routed_again_so_rules_cannot_loop() -> None:
    broker = routed_broker(
        RouteRule(name="a-to-b", match="a/#", copy_to=("b/{#}",)),
        RouteRule(name="b-to-a", match="b/#", copy_to=("a/{#}",)),
        RouteRule(name="self", match="c/#", copy_to=("c/{#}",), divert_to=("c/{#}",)),
    )
    everything = subscriber(broker, "all", "#")
    broker.publish(msg("a/x", b"1"))
    assert sorted(addresses(d.message for d, _ in everything.got)) == ["a/x", "b/x"]
    everything.take()
    broker.publish(msg("c/y", b"2"))
    assert addresses(d.message for d, _ in everything.got) == ["c/y", "c/y"]
    assert broker.stats.routes.copied == 2
    assert broker.stats.routes.diverted == 1


def test_a_diverted_message_does_not_reach_its_own_destination() -> None:
    broker = routed_broker(RouteRule(match="orders/#", divert_to=("$queue/orders",)))
    topic = subscriber(broker, "sub", "orders/#")
    queue = consumer(broker, "worker", "orders")
    message = msg("orders/1", b"o")
    result = broker.publish(message)
    assert result.accepted
    assert result.routed == 1
    assert topic.got == []
    assert queue.payloads == [b"o"]
    assert queue.got[0][0].message.message_id == message.message_id
    assert broker.stats.topics.get("orders/1") is None  # the topic never saw it


def test_a_drop_is_counted_by_reason_and_accepted() -> None:
    broker = routed_broker(RouteRule(match="noise/#", drop="noise"))
    sink = subscriber(broker, "sub", "#")
    result = broker.publish(msg("noise/a"))
    assert result == result.__class__(Status.ACCEPTED, 0)
    assert sink.got == []
    assert broker.stats.drops["route:noise"] == 1
    assert broker.stats.published == 1
    assert broker.stats.unrouted == 0


def test_a_refused_original_refuses_the_publish_a_refused_copy_does_not() -> None:
    full = QueuePolicy(max_length=1, overflow=Overflow.REJECT_PUBLISH)
    broker = routed_broker(
        RouteRule(match="$queue/in", copy_to=("$queue/side",)),
        queues=[("in", full), ("side", full)],
    )
    assert broker.publish(msg("in", kind=Kind.QUEUE)).routed == 2
    broker.declare_queue("in").purge()
    # "side" is full: the copy is refused, the original is not.
    result = broker.publish(msg("in", kind=Kind.QUEUE))
    assert result.accepted
    assert result.routed == 1
    # Both full: the original's refusal is the publisher's.
    result = broker.publish(msg("in", kind=Kind.QUEUE))
    assert result.status is Status.REFUSED
    assert result.reason == "queue-full"
    assert broker.stats.refused == 3


def test_a_refused_divert_refuses_the_publish() -> None:
    full = QueuePolicy(max_length=1, overflow=Overflow.REJECT_PUBLISH)
    broker = routed_broker(RouteRule(match="t", divert_to=("$queue/q",)), queues=[("q", full)])
    assert broker.publish(msg("t")).accepted
    result = broker.publish(msg("t"))
    assert result.status is Status.REFUSED
    assert result.reason == "queue-full"


def test_congested_queues_of_copies_reach_the_publisher_once() -> None:
    broker = routed_broker(
        RouteRule(match="t", copy_to=("$queue/q", "$queue/q")),
        queues=[("q", QueuePolicy(max_length=8))],  # congested from 4 on
    )
    consumer(broker, "worker", "q").open = False  # attached but not reading
    results = [broker.publish(msg("t")) for _ in range(2)]
    assert results[0].congested == ()
    queue = broker.queues["q"]
    assert results[1].congested == (queue,)


def test_forward_to_bridge_hands_a_tagged_copy_to_the_registered_sink() -> None:
    forwarded: list[Message] = []
    r = Router([RouteRule(name="up", match="out/#", forward_to_bridge="upstream")])
    broker = Broker(router=r)
    sink = subscriber(broker, "local", "out/#")
    broker.publish(msg("out/1", b"a"))
    assert broker.stats.routes.skipped["no-bridge"] == 1  # no bridge attached yet
    r.attach_bridge("upstream", forwarded.append)
    broker.publish(msg("out/2", b"b"))
    assert [m.payload for m in forwarded] == [b"b"]
    assert forwarded[0].destination == "out/2"
    assert forwarded[0].headers[ROUTED_BY] == "up"
    assert sink.payloads == [b"a", b"b"]  # a forward is a copy: local delivery goes on
    assert broker.stats.routes.forwarded == 1
    assert r.bridges == frozenset({"upstream"})
    r.detach_bridge("upstream")
    broker.publish(msg("out/3"))
    assert broker.stats.routes.skipped["no-bridge"] == 2


def test_wills_and_sys_messages_go_through_the_rules() -> None:
    broker = routed_broker(RouteRule(match="$SYS/#", copy_to=("$queue/sys",)))
    worker = consumer(broker, "worker", "sys")
    broker.publish(msg("$SYS/broker/uptime", b"1 seconds"))
    assert worker.payloads == [b"1 seconds"]


def test_message_ids_of_copies_do_not_collide_with_later_messages() -> None:
    r = router(RouteRule(match="#", copy_to=("b",)))
    copy = r.apply(msg("a")).messages[1]
    assert next_message_id() > copy.message_id


# -- rule errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (RouteRule(match="a/#/b", drop="x"), "routes[0].match: misplaced '#'"),
        (RouteRule(match="$share/g/a", drop="x"), "routes[0].match: a shared subscription"),
        (RouteRule(match="$queue/", drop="x"), "routes[0].match: expected $queue/FILTER"),
        (RouteRule(match="$queue/$temp/#", drop="x"), "routes[0].match: queues starting with '$'"),
        (RouteRule(match="a"), "routes[0].match: the rule has no action"),
        (RouteRule(match="a", selector="x =", drop="y"), "routes[0].selector: unexpected end"),
        (RouteRule(match="a", copy_to=("{1}",)), "routes[0].copy_to[0]: {1} at position 0"),
        (RouteRule(match="a", divert_to=("ok", "$SYS/x")), "routes[0].divert_to[1]: topics"),
        (RouteRule(match="a", copy_to=("x/#",)), "routes[0].copy_to[0]: a topic name has no"),
        (RouteRule(match="a", copy_to=("",)), "routes[0].copy_to[0]: empty destination"),
        (
            RouteRule(match="a", copy_to=("$queue/$temp",)),
            "routes[0].copy_to[0]: a queue name must",
        ),
        (RouteRule(match="a", drop="x", copy_to=("b",)), "routes[0].drop: cannot be combined"),
        (RouteRule(match="a", drop="a b"), "routes[0].drop: the reason must be"),
        (RouteRule(match="a", name="no spaces", stop=True), "routes[0].name: must be"),
        (
            RouteRule(match="a", set_headers=(("bad name", "x"),)),
            "routes[0].set_headers.bad name: 'bad name' is not a header name",
        ),
        (
            RouteRule(match="a", set_headers=((ROUTED_BY, "x"),)),
            "routes[0].set_headers.x-routed-by: the gateway sets it",
        ),
        (RouteRule(match="a", remove_headers=("",)), "routes[0].remove_headers[0]"),
        (RouteRule(match="a", forward_to_bridge="a/b"), "routes[0].forward_to_bridge"),
    ],
)
def test_bad_rules_are_refused_with_their_key(rule: RouteRule, error: str) -> None:
    with pytest.raises(RouteError) as info:
        Router([rule])
    assert str(info.value).startswith(error), str(info.value)


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(RouteError, match=r"routes\[1\]\.name: duplicate route name 'x'"):
        Router([RouteRule(match="a", name="x", stop=True)] * 2)


# -- configuration --------------------------------------------------------------------------


def load(text: str) -> config_mod.Config:
    return config_mod.loads(text, "r.toml")


def test_routes_load_from_toml() -> None:
    config = load(
        """
[[routes]]
name = "temps"
match = "sensors/+/temp"
selector = "payload.value > 30"
copy_to = ["$queue/hot.{1}"]
set_headers = { site = "{1}", "x-unit" = "C" }
remove_headers = ["secret"]
stop = true
"""
    )
    (route,) = config.routes
    assert route.rule() == RouteRule(
        match="sensors/+/temp",
        name="temps",
        selector="payload.value > 30",
        copy_to=("$queue/hot.{1}",),
        set_headers=(("site", "{1}"), ("x-unit", "C")),
        remove_headers=("secret",),
        stop=True,
    )
    broker = build_broker(config)
    assert broker.router is not None
    assert len(broker.router) == 1


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        (
            '[[routes]]\nmatch = "a"\nselector = "site == 1"\ndrop = "x"\n',
            "r.toml: routes[0].selector: '==': equality is '=' at position 5",
        ),
        (
            '[[routes]]\nmatch = "a"\ndrop = "x"\n[[routes]]\nmatch = "a/+"\ncopy_to = ["{2}"]\n',
            "r.toml: routes[1].copy_to[0]: {2} at position 0: the match captures only {1} "
            "(one per '+')",
        ),
        (
            '[[routes]]\nmatch = "a"\nforward_to_bridge = "up"\n',
            "r.toml: routes[0].forward_to_bridge: bridge 'up' is not configured",
        ),
        ('[[routes]]\nmatch = "a"\ncopy = ["b"]\n', "r.toml: routes[0].copy: unknown key"),
        ('[[routes]]\ndrop = "x"\n', "r.toml: routes[0].match: required key is missing"),
        (
            "[gateway]\nauto_create_queues = false\n"
            '[[routes]]\nmatch = "a"\ncopy_to = ["$queue/nowhere"]\n',
            "r.toml: routes[0].copy_to[0]: queue 'nowhere' is not declared and "
            "gateway.auto_create_queues is off",
        ),
    ],
)
def test_route_configuration_errors_name_the_key(toml: str, error: str) -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        load(toml)
    assert str(info.value) == error


def test_declared_queues_may_be_targets_with_auto_create_off() -> None:
    config = load(
        '[gateway]\nauto_create_queues = false\n[[queues]]\nname = "audit"\n'
        '[[routes]]\nmatch = "#"\ncopy_to = ["$queue/audit", "$queue/{header:q}"]\n'
    )
    assert len(config.routes) == 1


DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("doc", ["routing.md", "config.md"])
def test_the_documented_route_examples_load(doc: str) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (DOCS / doc).read_text(), re.DOTALL)
    examples = [block for block in blocks if "[[routes]]" in block]
    assert examples
    for block in examples:
        assert load(block).routes
