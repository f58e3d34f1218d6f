"""Retained messages: the last retained message of each topic, by MQTT rules.

A new subscription receives every retained message its filter matches, so the
store is a tree of topic levels like the subscription trie: a filter is walked
level by level and only the branches it can reach are visited. Setting a
message with an empty payload clears its topic. Expiry is checked only by
``remove_expired``; the caller owns the clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import attrgetter

from gateway.core.message import Message
from gateway.core.topics import check_filter

_by_topic = attrgetter("destination")


class _Node:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.message: Message | None = None


class RetainedStore:
    """At most one retained message per topic name, found by topic filter."""

    def __init__(self) -> None:
        # The root stands for no topic: even "" is one (empty) level below it.
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Message]:
        return self._below(self._root, skip_dollar=False)

    def set(self, message: Message) -> bool:
        """Retain ``message`` for its topic, or clear the topic if the payload is empty.

        Returns True if a message was stored or removed.
        """
        if not message.payload:
            return self._remove(message.destination) is not None
        node = self._root
        for level in message.destination.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        self._count += node.message is None
        node.message = message
        return True

    def get(self, topic: str) -> Message | None:
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node.message

    def match(self, topic_filter: str) -> list[Message]:
        """Every retained message whose topic ``topic_filter`` matches, sorted by topic.

        Raises InvalidFilter for a malformed filter.
        """
        levels = check_filter(topic_filter)
        depth = len(levels)
        found: list[Message] = []
        stack: list[tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == depth:
                if node.message is not None:
                    found.append(node.message)
                continue
            level = levels[i]
            if level == "#":
                # "a/#" also matches "a" itself (the root is no topic: it holds none).
                if node.message is not None:
                    found.append(node.message)
                found.extend(self._below(node, skip_dollar=i == 0))
            elif level == "+":
                for name, child in node.children.items():
                    # Wildcards at the first level never match "$" topics (MQTT 4.7.2).
                    if not (i == 0 and name.startswith("$")):
                        stack.append((child, i + 1))
            else:
                exact = node.children.get(level)
                if exact is not None:
                    stack.append((exact, i + 1))
        found.sort(key=_by_topic)
        return found

    def remove_expired(self, now: float) -> int:
        """Drop every message whose expiry is at or before ``now``; returns how many."""
        # A full scan: expiry is rare and this runs on a timer, not per publish.
        expired = [m.destination for m in self if m.expiry is not None and m.expiry <= now]
        for topic in expired:
            self._remove(topic)
        return len(expired)

    @staticmethod
    def _below(node: _Node, *, skip_dollar: bool) -> Iterator[Message]:
        """Messages strictly below ``node``, leaving out "$" branches if asked."""
        # Iterative, because a topic may have thousands of levels ("////...").
        stack = [
            child
            for name, child in node.children.items()
            if not (skip_dollar and name.startswith("$"))
        ]
        while stack:
            node = stack.pop()
            if node.message is not None:
                yield node.message
            stack.extend(node.children.values())

    def _remove(self, topic: str) -> Message | None:
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            path.append((node, level))
            node = child
        message = node.message
        if message is None:
            return None
        node.message = None
        self._count -= 1
        # Prune the branch so that dead nodes never slow a wildcard walk.
        for parent, level in reversed(path):
            if node.message is not None or node.children:
                break
            del parent.children[level]
            node = parent
        return message
