"""The retained message store: MQTT wildcard rules, clearing, expiry, and a model check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.message import Message
from gateway.core.retained import RetainedStore
from gateway.core.topics import InvalidFilter, filter_matches


def msg(topic: str, payload: bytes = b"x", expiry: float | None = None) -> Message:
    return Message(destination=topic, payload=payload, retain=True, expiry=expiry)


def store_of(*topics: str) -> RetainedStore:
    store = RetainedStore()
    for topic in topics:
        store.set(msg(topic))
    return store


def topics(messages: list[Message]) -> list[str]:
    return [m.destination for m in messages]


def test_set_replaces_the_older_message() -> None:
    store = RetainedStore()
    first, second = msg("a/b", b"1"), msg("a/b", b"2")
    assert store.set(first)
    assert store.set(second)
    assert store.get("a/b") is second
    assert len(store) == 1
    assert list(store) == [second]


def test_empty_payload_clears_and_is_not_stored() -> None:
    store = store_of("a/b", "a/b/c")
    assert store.set(msg("a/b", b""))
    assert store.get("a/b") is None
    assert topics(store.match("#")) == ["a/b/c"]
    assert len(store) == 1
    # Clearing again, or clearing a topic never set, changes nothing.
    assert not store.set(msg("a/b", b""))
    assert not store.set(msg("x/y", b""))
    assert len(store) == 1


def test_clearing_prunes_the_tree() -> None:
    store = store_of("a/b/c/d", "a/x")
    store.set(msg("a/b/c/d", b""))
    store.set(msg("a/x", b""))
    assert len(store) == 0
    assert list(store) == []
    assert store._root.children == {}


def test_clearing_keeps_parents_and_children() -> None:
    store = store_of("a", "a/b", "a/b/c")
    store.set(msg("a/b/c", b""))
    assert topics(list(store)) == ["a", "a/b"]
    store.set(msg("a", b""))
    assert topics(list(store)) == ["a/b"]


def test_get_is_exact() -> None:
    store = store_of("a/b")
    assert store.get("a") is None
    assert store.get("a/b/c") is None
    assert store.get("a/+") is None


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/b", ["a/b"]),
        ("a/+", ["a/b", "a/c"]),
        ("+/b", ["a/b"]),
        ("a/#", ["a", "a/b", "a/b/c", "a/c"]),
        ("a/b/#", ["a/b", "a/b/c"]),
        ("a/+/#", ["a/b", "a/b/c", "a/c"]),
        ("+", ["a", "b"]),
        ("+/+", ["a/b", "a/c"]),
        ("#", ["a", "a/b", "a/b/c", "a/c", "b"]),
        ("a/b/c/#", ["a/b/c"]),
        ("a/b/c/d", []),
        ("c/#", []),
    ],
)
def test_wildcards(topic_filter: str, expected: list[str]) -> None:
    store = store_of("a", "a/b", "a/b/c", "a/c", "b")
    assert topics(store.match(topic_filter)) == expected


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("#", ["x", "x/$y"]),
        ("+/x", []),
        ("+", ["x"]),
        ("$SYS/#", ["$SYS", "$SYS/x"]),
        ("$SYS/+", ["$SYS/x"]),
        ("$SYS/x", ["$SYS/x"]),
        # Only the first level is special: "$" further down is an ordinary name.
        ("x/+", ["x/$y"]),
    ],
)
def test_dollar_topics_hide_from_first_level_wildcards(
    topic_filter: str, expected: list[str]
) -> None:
    store = store_of("$SYS", "$SYS/x", "x", "x/$y")
    assert topics(store.match(topic_filter)) == expected


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/+/b", ["a//b"]),
        ("a//b", ["a//b"]),
        ("a/+", ["a/"]),
        ("+/a", ["/a"]),
        ("+", [""]),
        ("#", ["", "/", "/a", "a/", "a//b"]),
        # The parent of "/#" is the topic made of one empty level.
        ("/#", ["", "/", "/a"]),
        ("+/+", ["/", "/a", "a/"]),
    ],
)
def test_empty_levels_are_levels(topic_filter: str, expected: list[str]) -> None:
    store = store_of("a//b", "a/", "/a", "", "/")
    assert topics(store.match(topic_filter)) == expected


@pytest.mark.parametrize("bad", ["", "a/b#", "a/+b", "#/a"])
def test_match_refuses_a_malformed_filter(bad: str) -> None:
    with pytest.raises(InvalidFilter):
        store_of("a/b").match(bad)


def test_remove_expired() -> None:
    store = RetainedStore()
    store.set(msg("a/old", expiry=100.0))
    store.set(msg("a/now", expiry=200.0))
    store.set(msg("a/later", expiry=300.0))
    store.set(msg("a/never"))
    assert store.remove_expired(200.0) == 2
    assert sorted(topics(list(store))) == ["a/later", "a/never"]
    assert store.remove_expired(200.0) == 0
    assert store.remove_expired(1e12) == 1
    assert topics(list(store)) == ["a/never"]


def test_remove_expired_prunes_the_tree() -> None:
    store = RetainedStore()
    store.set(msg("a/b/c", expiry=1.0))
    assert store.remove_expired(1.0) == 1
    assert len(store) == 0
    assert store._root.children == {}


def test_a_replacement_resets_expiry() -> None:
    store = RetainedStore()
    store.set(msg("a", expiry=1.0))
    store.set(msg("a", expiry=None))
    assert store.remove_expired(10.0) == 0
    assert len(store) == 1


# A few level names, so that generated topics and filters collide often.
LEVELS = ["a", "b", "$s", "", "c"]
names = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    # A filter of one empty level is the empty string, which is no filter.
    if levels in ([], [""]) or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, bool]]:
    """(topic, clear) pairs over a few topics and all their parents, so that a branch is
    often cleared below a retained parent or beside a retained sibling."""
    pool = {
        "/".join(levels[:n])
        for levels in (t.split("/") for t in draw(st.lists(names, min_size=1, max_size=4)))
        for n in range(1, len(levels) + 1)
    }
    topic = st.sampled_from(sorted(pool))
    return draw(st.lists(st.tuples(topic, st.booleans()), max_size=30))


@settings(max_examples=300, deadline=None)
@given(ops=operations(), topic_filters=st.lists(filters(), min_size=1, max_size=5))
def test_match_agrees_with_filter_matches(
    ops: list[tuple[str, bool]], topic_filters: list[str]
) -> None:
    """Stores and clears topics, then checks match() against a one-by-one scan of a dict."""
    store = RetainedStore()
    model: dict[str, Message] = {}
    for topic, clear in ops:
        m = msg(topic, b"" if clear else b"x")
        changed = store.set(m)
        if clear:
            assert changed == (model.pop(topic, None) is not None)
        else:
            assert changed
            model[topic] = m
    assert len(store) == len(model)
    assert sorted(topics(list(store))) == sorted(model)
    for topic_filter in topic_filters:
        expected = sorted(t for t in model if filter_matches(topic_filter, t))
        got = store.match(topic_filter)
        assert topics(got) == expected
        assert all(m is model[m.destination] for m in got)
