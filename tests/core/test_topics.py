"""The subscription trie: MQTT 4.7 examples, pruning, its match cache, and a model check."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from gateway.core.topics import InvalidFilter, TopicTrie, check_filter, filter_matches

# (filter, topic, matches) from MQTT 3.1.1 section 4.7, with a few neighbours.
SPEC_CASES = [
    # 4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    # 4.7.2 topics beginning with $
    ("#", "$SYS", False),
    ("#", "$SYS/monitor/Clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("sport/+", "sport/$x", True),
    # 4.7.3 topic names are case sensitive
    ("ACCOUNTS", "Accounts", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), SPEC_CASES)
def test_spec_examples(topic_filter: str, topic: str, expected: bool) -> None:
    trie: TopicTrie[str, str] = TopicTrie()
    trie.add(topic_filter, "client", topic_filter)
    assert trie.match(topic) == ([topic_filter] if expected else [])
    assert filter_matches(topic_filter, topic) == expected


def test_match_collects_every_matching_filter() -> None:
    trie: TopicTrie[str, str] = TopicTrie()
    for topic_filter, _, _ in SPEC_CASES:
        trie.add(topic_filter, "client", topic_filter)
    for topic in {topic for _, topic, _ in SPEC_CASES}:
        expected = sorted({f for f, _, _ in SPEC_CASES if filter_matches(f, topic)})
        assert sorted(trie.match(topic)) == expected


@pytest.mark.parametrize(
    "good", ["#", "+", "a", "a/b", "a/+/b", "a/#", "+/+", "/+", "/", "a//b", "$SYS/#"]
)
def test_check_filter_accepts(good: str) -> None:
    assert check_filter(good) == good.split("/")


@pytest.mark.parametrize(
    "bad", ["", "a/b#", "a/+b", "#/a", "a/#/b", "sport/tennis#", "sport+", "##", "++"]
)
def test_check_filter_refuses(bad: str) -> None:
    with pytest.raises(InvalidFilter):
        check_filter(bad)
    trie: TopicTrie[str, int] = TopicTrie()
    with pytest.raises(InvalidFilter):
        trie.add(bad, "client", 1)
    assert len(trie) == 0


def test_add_is_true_only_when_new() -> None:
    trie: TopicTrie[str, int] = TopicTrie()
    assert trie.add("a/+", "c1", 1)
    assert not trie.add("a/+", "c1", 2)
    assert trie.add("a/+", "c2", 3)
    assert trie.add("a/#", "c1", 4)
    assert len(trie) == 3
    # Replacing keeps one entry per key and filter, with the newer value.
    assert trie.get("a/+", "c1") == 2
    assert sorted(trie.match("a/x")) == [2, 3, 4]


def test_remove_returns_the_value_and_prunes() -> None:
    trie: TopicTrie[str, int] = TopicTrie()
    subscriptions = [("a/b/c", "c1"), ("a/b/c", "c2"), ("a/+/#", "c1"), ("#", "c3"), ("/", "c1")]
    for value, (topic_filter, key) in enumerate(subscriptions):
        trie.add(topic_filter, key, value)
    assert trie.remove("a/b/c", "nobody") is None
    assert trie.remove("a/b", "c1") is None
    assert trie.remove("x/y/z", "c1") is None
    for value, (topic_filter, key) in enumerate(subscriptions):
        assert trie.remove(topic_filter, key) == value
        assert trie.get(topic_filter, key) is None
    assert trie.remove("a/b/c", "c1") is None
    assert len(trie) == 0
    for topic in ["a/b/c", "a", "x", "/"]:
        assert trie.match(topic) == []
    assert trie._root.children == {}
    assert trie._root.entries == {}


def test_remove_keeps_a_shared_prefix() -> None:
    trie: TopicTrie[str, str] = TopicTrie()
    trie.add("a/b", "k", "ab")
    trie.add("a/b/c", "k", "abc")
    assert trie.remove("a/b/c", "k") == "abc"
    assert trie.match("a/b") == ["ab"]
    assert trie.remove("a/b", "k") == "ab"
    assert trie._root.children == {}


def test_add_and_remove_invalidate_the_cache() -> None:
    trie: TopicTrie[str, str] = TopicTrie()
    trie.add("a/b", "c1", "exact")
    assert trie.match("a/b") == ["exact"]
    trie.add("a/+", "c2", "plus")
    assert sorted(trie.match("a/b")) == ["exact", "plus"]
    trie.add("a/+", "c2", "plus again")
    assert sorted(trie.match("a/b")) == ["exact", "plus again"]
    trie.remove("a/b", "c1")
    assert trie.match("a/b") == ["plus again"]
    # A failed removal changes nothing, so the cached list may stay.
    assert trie.remove("a/b", "c1") is None
    assert trie.match("a/b") == ["plus again"]


# A few level names, so that generated topics and filters collide often.
LEVELS = ["a", "b", "$x", ""]
topic_levels = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=5)
topics = topic_levels.map("/".join)
SHORT_TOPICS = [*LEVELS, *(f"{a}/{b}" for a in LEVELS for b in LEVELS)]


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=1, max_size=5))
    # A filter of one empty level is the empty string, which is no filter.
    if levels == [""] or (len(levels) < 5 and draw(st.booleans())):
        levels.append("#")
    return "/".join(levels)


keys = st.sampled_from(["k1", "k2", "k3"])


class TrieMatchesBruteForce(RuleBasedStateMachine):
    """Adds and removes subscriptions at random; match() must equal a scan of every filter."""

    subscribed = Bundle("subscribed")

    def __init__(self) -> None:
        super().__init__()
        self.trie: TopicTrie[str, tuple[str, str, int]] = TopicTrie()
        self.model: dict[tuple[str, str], tuple[str, str, int]] = {}
        self.serial = 0

    def subscribe(self, topic_filter: str, key: str) -> tuple[str, str]:
        # Unique values, so that a stale cached list cannot pass for a fresh one.
        self.serial += 1
        value = (topic_filter, key, self.serial)
        is_new = (topic_filter, key) not in self.model
        assert self.trie.add(topic_filter, key, value) == is_new
        self.model[topic_filter, key] = value
        return topic_filter, key

    @rule(target=subscribed, topic_filter=filters(), key=keys)
    def add(self, topic_filter: str, key: str) -> tuple[str, str]:
        return self.subscribe(topic_filter, key)

    @rule(
        target=subscribed,
        near=subscribed,
        level=st.sampled_from([*LEVELS, "+", "#"]),
        key=keys,
    )
    def add_below(self, near: tuple[str, str], level: str, key: str) -> tuple[str, str]:
        """Subscribes one level below a filter (or beside its '#'): random filters rarely
        nest, and removing a child next to a live parent is where pruning goes wrong."""
        stem = near[0].removesuffix("#") if near[0].endswith("#") else near[0] + "/"
        child = stem + level
        return self.subscribe(child or "#", key)

    @rule(subscription=consumes(subscribed))
    def remove(self, subscription: tuple[str, str]) -> None:
        # The bundle may hold a subscription twice (added twice, removed once).
        expected = self.model.pop(subscription, None)
        assert self.trie.remove(*subscription) == expected

    @rule(topic_filter=filters(), key=st.sampled_from(["k1", "k9"]))
    def remove_unknown(self, topic_filter: str, key: str) -> None:
        expected = self.model.pop((topic_filter, key), None)
        assert self.trie.remove(topic_filter, key) == expected

    def check(self, topic: str) -> None:
        expected = [v for (f, _), v in self.model.items() if filter_matches(f, topic)]
        assert Counter(self.trie.match(topic)) == Counter(expected), topic

    @rule(topic=topics)
    def match(self, topic: str) -> None:
        self.check(topic)
        # Twice: the second answer comes from the cache.
        self.check(topic)

    @invariant()
    def short_topics_match(self) -> None:
        # The same topics after every step, so that a stale cached answer shows.
        for topic in SHORT_TOPICS:
            self.check(topic)

    @invariant()
    def length(self) -> None:
        assert len(self.trie) == len(self.model)


TrieMatchesBruteForce.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
test_trie_matches_brute_force = TrieMatchesBruteForce.TestCase


def test_empty_trie_keeps_no_nodes_after_churn() -> None:
    trie: TopicTrie[str, int] = TopicTrie()
    all_filters = ["#", "+", "a/#", "+/+/#", "$x/+", "/", "a//b", "a/+/b/#"]
    for n, topic_filter in enumerate(all_filters):
        trie.add(topic_filter, "k", n)
    for topic_filter in reversed(all_filters):
        trie.remove(topic_filter, "k")
    assert trie._root.children == {}
