"""Topic names, topic filters and the subscription trie.

Matching walks the trie one topic level at a time, so its cost grows with the
depth of the topic (and the wildcards met on the way), not with the number of
subscriptions. Results are cached per topic until the subscription set changes.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Bound on cached topics; the whole cache is dropped when it is reached.
CACHE_LIMIT = 65536


class InvalidFilter(ValueError):
    """A topic filter with a misplaced wildcard or an empty topic."""


def check_filter(topic_filter: str) -> list[str]:
    """Split a filter into levels, refusing misplaced ``+`` and ``#``."""
    if not topic_filter:
        raise InvalidFilter("empty topic filter")
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise InvalidFilter(f"misplaced '#' in {topic_filter!r}")
        if "+" in level and level != "+":
            raise InvalidFilter(f"misplaced '+' in {topic_filter!r}")
    return levels


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Match one filter against one topic without a trie (used for retained messages)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class _Node(Generic[K, V]):
    __slots__ = ("children", "entries")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.entries: dict[K, V] = {}


class TopicTrie(Generic[K, V]):
    """Maps topic filters to entries keyed by K (e.g. one per subscriber)."""

    def __init__(self) -> None:
        self._root: _Node[K, V] = _Node()
        self._cache: dict[str, list[V]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Add or replace ``key``'s entry under ``topic_filter``; True if it is new."""
        node = self._root
        for level in check_filter(topic_filter):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        is_new = key not in node.entries
        node.entries[key] = value
        self._count += is_new
        self._cache.clear()
        return is_new

    def remove(self, topic_filter: str, key: K) -> V | None:
        """Remove ``key``'s entry under ``topic_filter``; returns it, or None."""
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            path.append((node, level))
            node = child
        value = node.entries.pop(key, None)
        if value is None:
            return None
        self._count -= 1
        self._cache.clear()
        # Prune the branch so that dead nodes never slow a match.
        for parent, level in reversed(path):
            if node.entries or node.children:
                break
            del parent.children[level]
            node = parent
        return value

    def get(self, topic_filter: str, key: K) -> V | None:
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node.entries.get(key)

    def match(self, topic: str) -> list[V]:
        """All entries whose filter matches ``topic``. The list is shared: do not mutate."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        result: list[V] = []
        levels = topic.split("/")
        depth = len(levels)
        # Wildcards at the first level never match topics starting with '$' (4.7.2).
        dollar = topic.startswith("$")
        stack: list[tuple[_Node[K, V], int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            if not children and i < depth:
                continue
            if not (dollar and i == 0):
                multi = children.get("#")
                if multi is not None:
                    result.extend(multi.entries.values())
            if i == depth:
                result.extend(node.entries.values())
                continue
            exact = children.get(levels[i])
            if exact is not None:
                stack.append((exact, i + 1))
            if not (dollar and i == 0):
                single = children.get("+")
                if single is not None:
                    stack.append((single, i + 1))
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = result
        return result
