"""Routing rules: copy, divert, rewrite, forward or drop messages as they are published.

    router = Router([RouteRule(match="sensors/+/temp", copy_to=("$queue/temps.{1}",))])
    broker = Broker(router=router)

``Broker.publish`` hands every incoming message to ``Router.dispatch``, which
evaluates the rules in order (``apply``) and publishes what they produce with
``publish(m, rules=False)``: the core's ordinary routing, without the rules. A
message a rule produced is therefore never evaluated again in the same hop,
which is what makes routing loops impossible. docs/routing.md has the semantics.

A rule matches the destination in its neutral form: a topic filter with MQTT
wildcards (``+`` one level, ``#`` the rest), or ``$queue/`` followed by a filter
over ``/``-separated queue names. Each ``+`` captures its level as ``{1}``,
``{2}``...; ``#`` captures the rest as ``{#}``. Matching walks a ``TopicTrie`` of
the rules' filters, cached per destination, so the cost does not grow with the
number of rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec

from .broker import PublishResult, Status
from .destinations import QUEUE_PREFIX
from .headers import Headers, header_pairs
from .message import Kind, Message, next_message_id
from .selector import Selector, SelectorError, compile_selector
from .topics import CACHE_LIMIT, InvalidFilter, TopicTrie, check_filter

if TYPE_CHECKING:
    from .broker import Broker
    from .queue import Queue

__all__ = [
    "DROP_PREFIX",
    "PLACEHOLDERS",
    "QUEUE_PREFIX",
    "ROUTED_BY",
    "ROUTED_FROM",
    "BridgeSink",
    "RouteError",
    "RouteRule",
    "Routed",
    "Router",
    "Template",
    "compile_template",
    "destination_problem",
    "parse_destination",
]

# Set on every copy and diverted message: the rule that addressed it, and the
# destination (neutral form) the original was published to.
ROUTED_BY: Final = "x-routed-by"
ROUTED_FROM: Final = "x-routed-from"
# Route drops are counted in BrokerStats.drops under this prefix and the rule's reason.
DROP_PREFIX: Final = "route:"
# What a bridge registers to receive the messages of forward_to_bridge: it must
# neither block nor raise (it queues the message in its own outbox).
BridgeSink = Callable[[Message], None]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_MAX_TOPIC_BYTES: Final = 65535
_QUEUE_KIND: Final = Kind.QUEUE


class RouteError(ValueError):
    """A rule that cannot be compiled: ``key`` is the rule's field (``copy_to[1]``)."""

    def __init__(self, index: int, key: str, problem: str) -> None:
        self.index = index
        self.key = key
        self.problem = problem
        super().__init__(f"routes[{index}].{key}: {problem}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    """One ``[[routes]]`` table as data; ``Router`` compiles it."""

    match: str
    name: str = ""
    selector: str | None = None
    copy_to: tuple[str, ...] = ()
    divert_to: tuple[str, ...] = ()
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    forward_to_bridge: str | None = None
    drop: str | None = None
    stop: bool = False


# -- destinations --------------------------------------------------------------------------


def parse_destination(address: str) -> tuple[Kind, str]:
    """The neutral address form: ``$queue/NAME`` is a queue, anything else a topic."""
    if address.startswith(QUEUE_PREFIX) and len(address) > len(QUEUE_PREFIX):
        return _QUEUE_KIND, address[len(QUEUE_PREFIX) :]
    return Kind.TOPIC, address


def destination_problem(address: str) -> str | None:
    """Why ``address`` cannot be a rule's target, or None. Topics and queues starting
    with ``$`` are the gateway's own ($SYS, $share, temporary and session queues)."""
    kind, name = parse_destination(address)
    if kind is _QUEUE_KIND:
        if name.startswith("$"):
            return "a queue name must not start with '$'"
        if "\0" in name:
            return "a queue name must not contain NUL"
        return None
    if not name:
        return "empty destination"
    if name == QUEUE_PREFIX.rstrip("/") or name == QUEUE_PREFIX:
        return "expected $queue/NAME"
    if "+" in name or "#" in name or "\0" in name:
        return "a topic name has no wildcards (+, #) or NUL"
    if name.startswith("$"):
        return "topics starting with '$' are reserved (a queue is $queue/NAME)"
    if len(name) > _MAX_TOPIC_BYTES // 4 and len(name.encode()) > _MAX_TOPIC_BYTES:
        return "a topic name is at most 65535 bytes"
    return None


def _address(message: Message) -> str:
    if message.kind is _QUEUE_KIND:
        return QUEUE_PREFIX + message.destination
    return message.destination


# -- templates ------------------------------------------------------------------------------

# A value a template reads from the message and the captures; None when it is missing.
_Getter = Callable[[Message, Sequence[str]], str | None]

PLACEHOLDERS: Final = (
    "{1}",
    "{2}",
    "...",
    "{#}",
    "{destination}",
    "{topic}",
    "{header:NAME}",
    "{priority}",
    "{qos}",
    "{content_type}",
    "{message_id}",
    "{client_id}",
    "{protocol}",
)

_FIELDS: Final[dict[str, _Getter]] = {
    "destination": lambda m, c: m.destination,
    "topic": lambda m, c: m.destination,
    "priority": lambda m, c: str(m.priority),
    "qos": lambda m, c: str(m.qos),
    "content_type": lambda m, c: m.content_type,
    "message_id": lambda m, c: str(m.message_id),
    "client_id": lambda m, c: m.origin.client_id or None,
    "protocol": lambda m, c: m.origin.protocol,
}
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _capture(index: int) -> _Getter:
    return lambda m, c: c[index]


def _header(name: str) -> _Getter:
    return lambda m, c: m.headers.get(name)


class Template:
    """A string with placeholders, compiled once. ``render`` returns None when a
    placeholder has no value (a header the message lacks, no content type)."""

    __slots__ = ("_parts", "literal", "text")

    def __init__(self, text: str, parts: Sequence[str | _Getter]) -> None:
        self.text = text
        self._parts = tuple(parts)
        # The rendered text when there are no placeholders (checked at load).
        self.literal: str | None = None
        if all(isinstance(part, str) for part in self._parts):
            self.literal = "".join(part for part in self._parts if isinstance(part, str))

    def render(self, message: Message, captures: Sequence[str]) -> str | None:
        if self.literal is not None:
            return self.literal
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part(message, captures)
            if value is None:
                return None
            out.append(value)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def compile_template(text: str, captures: int, rest: bool) -> Template:
    """Compile ``text`` for a rule whose filter has ``captures`` ``+`` levels and,
    if ``rest``, a ``#``. Raises ValueError naming the problem and its position."""
    parts: list[str | _Getter] = []
    literal: list[str] = []
    position = 0
    for token in _TOKEN.finditer(text):
        start = token.start()
        literal.append(text[position:start])
        position = token.end()
        whole = token.group(0)
        if whole in ("{{", "}}"):
            literal.append(whole[0])
            continue
        if whole in ("{", "}"):
            raise ValueError(f"unbalanced {whole!r} at position {start} (write {whole * 2})")
        getter = _placeholder(token.group(1), captures, rest, start)
        if any(literal):
            parts.append("".join(literal))
        literal.clear()
        parts.append(getter)
    literal.append(text[position:])
    if any(literal):
        parts.append("".join(literal))
    return Template(text, parts)


def _placeholder(name: str, captures: int, rest: bool, at: int) -> _Getter:
    if name.isdigit() and not name.startswith("0"):
        index = int(name)
        if index > captures:
            have = {0: "no level", 1: "only {1}"}.get(captures, f"{{1}} to {{{captures}}}")
            raise ValueError(
                f"{{{name}}} at position {at}: the match captures {have} (one per '+')"
            )
        return _capture(index - 1)
    if name == "#":
        if not rest:
            raise ValueError(f"{{#}} at position {at}: the match does not end with '#'")
        return _capture(captures)
    if name.startswith("header:"):
        header = name[len("header:") :]
        if not header:
            raise ValueError(f"{{header:}} at position {at} needs a header name")
        return _header(header)
    getter = _FIELDS.get(name)
    if getter is None:
        raise ValueError(
            f"unknown placeholder {{{name}}} at position {at} "
            f"(known: {', '.join(PLACEHOLDERS)}; {{{{ and }}}} are literal braces)"
        )
    return getter


# -- rules ------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_GATEWAY_HEADERS = frozenset({ROUTED_BY, ROUTED_FROM})
# A destination a template rendered: (kind, name).
_Target = tuple[Kind, str]


class _Rule:
    """A compiled rule. Templates render against the message as it reached the rule."""

    __slots__ = (
        "copy_to",
        "divert_to",
        "drop",
        "forward_to_bridge",
        "index",
        "kind",
        "name",
        "needs_captures",
        "pattern",
        "plus",
        "remove_headers",
        "rest_at",
        "rewrites",
        "selector",
        "set_headers",
        "stop",
    )

    def __init__(self, rule: RouteRule, index: int) -> None:
        self.index = index
        self.name = _rule_name(rule, index)
        self.kind, self.pattern = _compile_match(rule.match, index)
        levels = self.pattern.split("/")
        self.plus = tuple(i for i, level in enumerate(levels) if level == "+")
        self.rest_at = len(levels) - 1 if levels[-1] == "#" else None
        rest = self.rest_at is not None
        self.selector: Selector | None = None
        if rule.selector is not None and rule.selector.strip():
            try:
                self.selector = compile_selector(rule.selector)
            except SelectorError as exc:
                raise RouteError(index, "selector", str(exc)) from None
        self.copy_to = _targets(rule.copy_to, "copy_to", index, len(self.plus), rest)
        self.divert_to = _targets(rule.divert_to, "divert_to", index, len(self.plus), rest)
        headers: list[tuple[str, Template]] = []
        for header, text in rule.set_headers:
            key = f"set_headers.{header}"
            _check_header_name(header, key, index)
            if header in _GATEWAY_HEADERS:
                raise RouteError(index, key, "the gateway sets it on every copy")
            headers.append((header, _template(text, key, index, len(self.plus), rest)))
        self.set_headers = tuple(headers)
        for j, header in enumerate(rule.remove_headers):
            _check_header_name(header, f"remove_headers[{j}]", index)
        self.remove_headers = frozenset(rule.remove_headers)
        self.rewrites = bool(self.set_headers or self.remove_headers)
        self.forward_to_bridge = rule.forward_to_bridge
        if self.forward_to_bridge is not None and not _NAME.fullmatch(self.forward_to_bridge):
            raise RouteError(index, "forward_to_bridge", "must be a bridge name")
        self.drop = rule.drop
        self.stop = rule.stop
        acts = bool(self.copy_to or self.divert_to or self.rewrites or self.forward_to_bridge)
        if self.drop is not None:
            if not _NAME.fullmatch(self.drop):
                raise RouteError(
                    index, "drop", "the reason must be 1-128 letters, digits, '.', '_', '~' or '-'"
                )
            if acts:
                raise RouteError(
                    index,
                    "drop",
                    "cannot be combined with other actions (divert_to moves a message instead)",
                )
        elif not acts and not self.stop:
            raise RouteError(
                index,
                "match",
                "the rule has no action: give copy_to, divert_to, set_headers, "
                "remove_headers, forward_to_bridge, drop or stop = true",
            )
        templates = [*self.copy_to, *self.divert_to, *(t for _, t in self.set_headers)]
        self.needs_captures = bool(self.plus or rest) and any(t.literal is None for t in templates)

    def captures(self, levels: Sequence[str]) -> list[str]:
        out = [levels[i] for i in self.plus]
        if self.rest_at is not None:
            out.append("/".join(levels[self.rest_at :]))
        return out

    @property
    def filter(self) -> str:
        """The match in its neutral form."""
        return QUEUE_PREFIX + self.pattern if self.kind is _QUEUE_KIND else self.pattern

    def rewrite(self, message: Message, captures: Sequence[str], skipped: list[str]) -> Message:
        values: list[tuple[str, str]] = []
        for header, template in self.set_headers:
            value = template.render(message, captures)
            if value is None:
                skipped.append("missing-value")
            else:
                values.append((header, value))
        pairs = header_pairs(message.headers)
        if pairs:
            gone = self.remove_headers.union([name for name, _ in values])
            kept = [(name, value) for name, value in pairs if name not in gone]
            if not values and len(kept) == len(pairs):
                return message
            values = kept + values
        elif not values:
            return message
        return msgspec.structs.replace(message, headers=Headers(values))

    def __repr__(self) -> str:
        return f"<route {self.name} {self.filter}>"


def _rule_name(rule: RouteRule, index: int) -> str:
    if not rule.name:
        return f"routes[{index}]"
    if not _NAME.fullmatch(rule.name):
        raise RouteError(index, "name", "must be 1-128 letters, digits, '.', '_', '~' or '-'")
    return rule.name


def _compile_match(match: str, index: int) -> tuple[Kind, str]:
    kind = Kind.TOPIC
    pattern = match
    if match.startswith("$share/"):
        raise RouteError(index, "match", "a shared subscription is not a destination")
    if match == "$queue" or match.startswith(QUEUE_PREFIX):
        kind, pattern = _QUEUE_KIND, match[len(QUEUE_PREFIX) :]
        if not pattern:
            raise RouteError(
                index, "match", "expected $queue/FILTER (e.g. $queue/# or $queue/jobs)"
            )
        if pattern.startswith("$"):
            raise RouteError(index, "match", "queues starting with '$' are the gateway's own")
    try:
        check_filter(pattern)
    except InvalidFilter as exc:
        raise RouteError(index, "match", str(exc)) from None
    return kind, pattern


def _template(text: str, key: str, index: int, captures: int, rest: bool) -> Template:
    try:
        return compile_template(text, captures, rest)
    except ValueError as exc:
        raise RouteError(index, key, str(exc)) from None


def _targets(
    texts: Sequence[str], field_name: str, index: int, captures: int, rest: bool
) -> tuple[Template, ...]:
    out = []
    for j, text in enumerate(texts):
        key = f"{field_name}[{j}]"
        template = _template(text, key, index, captures, rest)
        if template.literal is not None:
            problem = destination_problem(template.literal)
            if problem is not None:
                raise RouteError(index, key, problem)
        out.append(template)
    return tuple(out)


def _check_header_name(name: str, key: str, index: int) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise RouteError(index, key, f"{name!r} is not a header name")


def _render(
    template: Template, message: Message, captures: Sequence[str], skipped: list[str]
) -> _Target | None:
    address = template.render(message, captures)
    if address is None:
        skipped.append("missing-value")
        return None
    if destination_problem(address) is not None:
        skipped.append("invalid-destination")
        return None
    return parse_destination(address)


def _tagged(message: Message, rule: str, origin: str) -> Headers:
    pairs = [
        (name, value)
        for name, value in header_pairs(message.headers)
        if name not in _GATEWAY_HEADERS
    ]
    return Headers((*pairs, (ROUTED_BY, rule), (ROUTED_FROM, origin)))


def _retarget(
    message: Message, target: _Target, rule: str, origin: str, message_id: int
) -> Message:
    kind, name = target
    return msgspec.structs.replace(
        message,
        destination=name,
        kind=kind,
        headers=_tagged(message, rule, origin),
        retain=message.retain and kind is not _QUEUE_KIND,
        message_id=message_id,
    )


# -- the router -------------------------------------------------------------------------------


@dataclass(slots=True)
class Routed:
    """What the rules made of one message.

    ``messages`` are to be published without rules: first the ``primary`` ones that
    stand for the original (the original itself, possibly with rewritten headers, or
    the messages it was diverted to; none when dropped), then the copies in rule order.
    ``forwards`` are (bridge, message) pairs; ``fired`` the rules that matched;
    ``skipped`` one reason per action left out (``missing-value``, ``invalid-destination``).
    """

    messages: list[Message]
    primary: int
    dropped: str | None = None
    forwards: list[tuple[str, Message]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    copied: int = 0
    diverted: int = 0


class Router:
    """The compiled rules, in order. Raises RouteError for a rule that cannot compile."""

    def __init__(
        self, rules: Iterable[RouteRule], bridges: Mapping[str, BridgeSink] | None = None
    ) -> None:
        compiled: list[_Rule] = []
        names: set[str] = set()
        self._topics: TopicTrie[int, _Rule] = TopicTrie()
        self._queues: TopicTrie[int, _Rule] = TopicTrie()
        for index, rule in enumerate(rules):
            item = _Rule(rule, index)
            if item.name in names:
                raise RouteError(index, "name", f"duplicate route name {item.name!r}")
            names.add(item.name)
            compiled.append(item)
            trie = self._queues if item.kind is _QUEUE_KIND else self._topics
            trie.add(item.pattern, index, item)
        self.rules: tuple[_Rule, ...] = tuple(compiled)
        self._topic_cache: dict[str, tuple[_Rule, ...]] = {}
        self._queue_cache: dict[str, tuple[_Rule, ...]] = {}
        self._bridges: dict[str, BridgeSink] = dict(bridges or {})

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def bridges(self) -> frozenset[str]:
        """The bridge names the rules forward to."""
        return frozenset(r.forward_to_bridge for r in self.rules if r.forward_to_bridge)

    def attach_bridge(self, name: str, sink: BridgeSink) -> None:
        """Send what ``forward_to_bridge = NAME`` forwards to ``sink``."""
        self._bridges[name] = sink

    def detach_bridge(self, name: str) -> None:
        self._bridges.pop(name, None)

    def rules_for(self, message: Message) -> tuple[_Rule, ...]:
        """The rules whose match covers the message's destination, in order."""
        destination = message.destination
        if message.kind is _QUEUE_KIND:
            cache, trie = self._queue_cache, self._queues
        else:
            cache, trie = self._topic_cache, self._topics
        hit = cache.get(destination)
        if hit is None:
            hit = tuple(sorted(trie.match(destination), key=_by_index)) if trie else ()
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[destination] = hit
        return hit

    def apply(self, message: Message) -> Routed:
        """Evaluate the rules on ``message``; publishes nothing (``dispatch`` does)."""
        return self._apply(message, self.rules_for(message))

    def _apply(self, message: Message, rules: Sequence[_Rule]) -> Routed:
        current = message
        origin = _address(message)
        copies: list[Message] = []
        routed = Routed([], 0)
        skipped = routed.skipped
        levels: list[str] | None = None
        for rule in rules:
            selector = rule.selector
            if selector is not None and not selector.matches(current):
                continue
            routed.fired.append(rule.name)
            captures: Sequence[str] = ()
            if rule.needs_captures:
                if levels is None:
                    levels = message.destination.split("/")
                captures = rule.captures(levels)
            if rule.drop is not None:
                routed.dropped = rule.drop
                routed.messages = copies
                routed.copied = len(copies)
                return routed
            after = rule.rewrite(current, captures, skipped) if rule.rewrites else current
            for template in rule.copy_to:
                target = _render(template, current, captures, skipped)
                if target is not None:
                    copies.append(_retarget(after, target, rule.name, origin, next_message_id()))
            if rule.forward_to_bridge is not None:
                tagged = msgspec.structs.replace(after, headers=_tagged(after, rule.name, origin))
                routed.forwards.append((rule.forward_to_bridge, tagged))
            if rule.divert_to:
                targets = [_render(t, current, captures, skipped) for t in rule.divert_to]
                moved = [
                    # The first target takes the original's id: it is the original, moved.
                    _retarget(
                        after,
                        target,
                        rule.name,
                        origin,
                        next_message_id() if j else message.message_id,
                    )
                    for j, target in enumerate(t for t in targets if t is not None)
                ]
                if moved:
                    routed.messages = [*moved, *copies]
                    routed.primary = routed.diverted = len(moved)
                    routed.copied = len(copies)
                    return routed
                # No target could be rendered: the message stays where it was sent.
            current = after
            if rule.stop:
                break
        routed.messages = [current, *copies]
        routed.primary = 1
        routed.copied = len(copies)
        return routed

    def dispatch(self, message: Message, broker: Broker) -> PublishResult:
        """Apply the rules, publish what they produced with ``rules=False`` (never
        through the rules again), hand forwards to their bridges, and combine the
        results: REFUSED when what stands for the original was refused, ``routed``
        summed, ``congested`` joined."""
        rules = self.rules_for(message)
        if not rules:
            return broker.publish(message, rules=False)
        routed = self._apply(message, rules)
        if not routed.fired:
            return broker.publish(message, rules=False)
        stats = broker.stats
        counters = stats.routes
        for name in routed.fired:
            counters.matched[name] += 1
        for why in routed.skipped:
            counters.skipped[why] += 1
        counters.copied += routed.copied
        counters.diverted += routed.diverted
        results = [broker.publish(item, rules=False) for item in routed.messages]
        if routed.dropped is not None:
            stats.published += 1
            stats.drops[DROP_PREFIX + routed.dropped] += 1
        forwarded = 0
        for bridge, item in routed.forwards:
            sink = self._bridges.get(bridge)
            if sink is None:
                counters.skipped["no-bridge"] += 1
            else:
                sink(item)
                forwarded += 1
        counters.forwarded += forwarded
        if len(results) == 1 and routed.primary == 1:
            result = results[0]
        else:
            result = _combine(results, routed.primary)
        if forwarded and result.accepted:
            # A bridge's outbox took it too: it reached somebody (MQTT 5 says 0x10 otherwise).
            return PublishResult(
                result.status, result.routed + forwarded, result.reason, result.congested
            )
        return result


def _by_index(rule: _Rule) -> int:
    return rule.index


def _combine(results: Sequence[PublishResult], primary: int) -> PublishResult:
    refused = next((r for r in results[:primary] if not r.accepted), None)
    congested: list[Queue] = []
    for result in results:
        for queue in result.congested:
            if not any(queue is seen for seen in congested):
                congested.append(queue)
    total = sum(result.routed for result in results)
    if refused is not None:
        return PublishResult(Status.REFUSED, total, refused.reason, tuple(congested))
    return PublishResult(Status.ACCEPTED, total, congested=tuple(congested))
