"""Authorization: who may publish, subscribe to and consume which destinations.

A rule names its subject (a ``user``, a ``group``, or ``anonymous`` clients), an
``action`` (``publish``, ``subscribe``, ``consume`` or ``all``), a ``pattern`` and
``allow`` or deny. Patterns are destinations in the core's neutral form: a topic
filter with MQTT wildcards, or ``$queue/`` and a filter over ``/``-separated queue
names; ``%u`` stands for the user name and ``%c`` for the client id. An identity's
own rules (token claims) come first, then the configured rules that apply to it;
the first rule whose pattern matches decides, and once any rule exists whatever no
rule allows is denied. Without any rule at all everything is allowed.

Subscribing is reading: ``subscribe`` rules decide both whether a topic filter may
be subscribed to (a rule's pattern must cover the whole filter: ``sensors/%u/#``
covers ``sensors/alice/+``) and whether each message's topic may be delivered
through it, so that a wildcard never reads a topic a rule denies.
docs/security.md has the semantics.

``Acl`` is the decision; the core (``Broker.authorize``) is where it is enforced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from ..core.destinations import QUEUE_PREFIX, SHARE_PREFIX
from ..core.topics import InvalidFilter, check_filter
from ..logging import get_logger

Action = Literal["publish", "subscribe", "consume"]
RuleAction = Literal["publish", "subscribe", "consume", "all"]
ACTIONS: Final[tuple[Action, ...]] = ("publish", "subscribe", "consume")
RULE_ACTIONS: Final[tuple[RuleAction, ...]] = (*ACTIONS, "all")
# The reason of a refused publish (PublishResult.reason) and the drop counter's name.
NOT_AUTHORIZED: Final = "not-authorized"
# Bounds of the caches: identities seen, and decisions per identity.
VIEW_LIMIT: Final = 10_000
DECISION_LIMIT: Final = 4096

_PLACEHOLDER = re.compile(r"%(.?)")


class Principal(Protocol):
    """What authorization needs of an authenticated identity (``gateway.auth.identity``):
    ``user`` (None: anonymous), ``groups``, and ``acl``, the identity's own rules (a
    token's ACL claim; None without one) as mappings with ``action`` (default
    ``all``), ``pattern`` and ``allow``, ``AclRule`` objects or ``(action, pattern,
    allow)`` tuples. Rules an identity carries, even none, make denial the default."""

    @property
    def user(self) -> str | None: ...

    @property
    def groups(self) -> Sequence[str]: ...

    @property
    def acl(self) -> Sequence[object] | None: ...


class AclError(ValueError):
    """A rule that cannot be used: ``key`` is the field at fault (``pattern``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class AclRule:
    """One rule. A configured rule names exactly one subject; a rule with none (an
    identity's own rule) applies to whoever carries it."""

    action: RuleAction
    pattern: str
    allow: bool
    user: str | None = None
    group: str | None = None
    anonymous: bool = False

    def applies_to(self, identity: Principal | None) -> bool:
        if self.user is not None:
            return identity is not None and identity.user == self.user
        if self.group is not None:
            return identity is not None and self.group in identity.groups
        if self.anonymous:
            return identity is None or identity.user is None
        return True


def check_rule(rule: AclRule, *, subject: bool = True) -> None:
    """Raise AclError naming the field of ``rule`` that is wrong. ``subject``: the rule
    must name exactly one of user, group or anonymous (configured rules do)."""
    if rule.action not in RULE_ACTIONS:
        raise AclError("action", f"must be one of {', '.join(RULE_ACTIONS)}, not {rule.action!r}")
    if subject:
        given = [k for k in ("user", "group") if getattr(rule, k) is not None]
        if rule.anonymous:
            given.append("anonymous")
        if len(given) != 1:
            raise AclError("user", "give exactly one of user, group or anonymous = true")
        for key in ("user", "group"):
            if getattr(rule, key) == "":
                raise AclError(key, "must not be empty")
    check_pattern(rule.pattern, rule.action)


def check_pattern(pattern: str, action: str = "all") -> None:
    """Raise AclError (key ``pattern``) for a pattern that could never be used as meant."""
    for placeholder in _PLACEHOLDER.findall(pattern):
        if placeholder not in ("u", "c"):
            raise AclError("pattern", f"unknown placeholder %{placeholder} (use %u or %c)")
    if pattern.startswith(SHARE_PREFIX):
        raise AclError("pattern", "name the filter without $share/GROUP/ (it is checked as such)")
    try:
        check_filter(_PLACEHOLDER.sub("x", pattern))
    except InvalidFilter as exc:
        raise AclError("pattern", str(exc)) from None
    queue = pattern.startswith(QUEUE_PREFIX)
    if queue and action == "subscribe":
        raise AclError(
            "pattern", "a $queue/ pattern goes with consume, publish or all (not subscribe)"
        )
    if not queue and action == "consume":
        raise AclError("pattern", "consume applies to queues: the pattern must start with $queue/")


# -- matching ---------------------------------------------------------------------------


def covers(pattern: Sequence[str], levels: Sequence[str]) -> bool:
    """Every topic that the filter ``levels`` matches, the filter ``pattern`` matches too
    (for a topic name: the pattern matches it). Both are split on ``/``."""
    if levels[0][:1] == "$" and pattern[0] in ("+", "#"):
        return False  # wildcards at the first level never match '$' topics
    for i, want in enumerate(pattern):
        if want == "#":
            return True
        if i >= len(levels):
            return False
        have = levels[i]
        if have == "#":
            return False
        if want == "+":
            continue
        if have == "+" or have != want:
            return False
    return len(levels) == len(pattern)


def overlaps(pattern: Sequence[str], levels: Sequence[str]) -> bool:
    """Some topic is matched by both filters."""
    first_a, first_b = pattern[0], levels[0]
    if (first_a in ("+", "#") and first_b[:1] == "$") or (
        first_b in ("+", "#") and first_a[:1] == "$"
    ):
        return False
    for i in range(max(len(pattern), len(levels)) + 1):
        a = pattern[i] if i < len(pattern) else None
        b = levels[i] if i < len(levels) else None
        if a == "#" or b == "#":
            return True
        if a is None or b is None:
            return a is None and b is None
        if a != b and a != "+" and b != "+":
            return False
    return True  # pragma: no cover - the loop always returns


def _usable(value: str | None) -> bool:
    """A user name or client id that may stand in a pattern: one literal level."""
    if not value or value[0] == "$":
        return False
    return not any(c in value for c in "/+#\0")


def _expand(pattern: str, allow: bool, user: str | None, client_id: str) -> tuple[str, ...] | None:
    """The pattern's levels with %u and %c replaced. A value that cannot stand in a
    level (none, empty, or with '/', '+', '#') makes an allowing rule inapplicable and
    a denying one deny that whole level (``+``): a strange name never widens access."""
    if "%" not in pattern:
        return tuple(pattern.split("/"))
    values = {"u": user, "c": client_id}
    levels = []
    for level in pattern.split("/"):
        wanted = _PLACEHOLDER.findall(level)
        if wanted:
            if not all(_usable(values.get(name)) for name in wanted):
                if allow:
                    return None
                levels.append("+")
                continue
            level = _PLACEHOLDER.sub(lambda m: values[m.group(1)] or "", level)
        levels.append(level)
    return tuple(levels)


def token_rule(item: object) -> AclRule:
    """An identity's own rule from its claims; raises AclError when malformed."""
    if isinstance(item, AclRule):
        rule = item
    elif isinstance(item, Mapping):
        action, pattern, allow = item.get("action", "all"), item.get("pattern"), item.get("allow")
        if not isinstance(action, str) or not isinstance(pattern, str):
            raise AclError("pattern", "a token rule needs a string action and pattern")
        if not isinstance(allow, bool):
            raise AclError("allow", "a token rule needs allow = true or false")
        rule = AclRule(action=action, pattern=pattern, allow=allow)  # type: ignore[arg-type]
    elif isinstance(item, tuple | list) and len(item) == 3:
        action, pattern, allow = item
        if not (isinstance(action, str) and isinstance(pattern, str) and isinstance(allow, bool)):
            raise AclError("pattern", "a token rule is (action, pattern, allow)")
        rule = AclRule(action=action, pattern=pattern, allow=allow)  # type: ignore[arg-type]
    else:
        raise AclError("pattern", f"cannot read a token rule from {type(item).__name__}")
    check_rule(rule, subject=False)
    return rule


# -- decisions ---------------------------------------------------------------------------

_Compiled = tuple[tuple[tuple[str, ...], bool], ...]


@dataclass(slots=True, eq=False)
class _View:
    """The rules of one identity and client id, per action, with %u and %c replaced."""

    identity: Principal | None
    rules: dict[str, _Compiled]
    # Per (action, whole): destination -> decision.
    decisions: dict[tuple[str, bool], dict[str, bool]] = field(
        default_factory=lambda: {(a, w): {} for a in ACTIONS for w in (False, True)}
    )


class Acl:
    """The configured rules, and the decisions made with them (cached per identity)."""

    def __init__(self, rules: Iterable[AclRule] = ()) -> None:
        self.rules: tuple[AclRule, ...] = tuple(rules)
        for rule in self.rules:
            check_rule(rule)
        self._views: dict[tuple[int, str], _View] = {}
        self.log = get_logger()

    def __len__(self) -> int:
        return len(self.rules)

    def allows(
        self,
        identity: Principal | None,
        action: Action,
        destination: str,
        client_id: str = "",
        *,
        whole: bool = False,
    ) -> bool:
        """May ``identity`` (None: anonymous) do ``action`` on ``destination``?

        ``destination`` is a topic name (publish), a topic filter (subscribe; also
        ``$share/GROUP/FILTER``, checked with ``whole``) or ``$queue/NAME``. For a filter,
        the first rule whose pattern covers all of it decides; with ``whole`` a denying
        rule that matches any part of it refuses it, so that every topic it matches
        may be read (used where messages are not checked one by one)."""
        if not self.rules and (identity is None or identity.acl is None):
            return True
        if action == "subscribe" and destination.startswith(SHARE_PREFIX):
            group, sep, destination = destination[len(SHARE_PREFIX) :].partition("/")
            if not group or not sep or not destination:
                return False
            whole = True
        view = self._views.get((id(identity), client_id))
        if view is None or view.identity is not identity:
            view = self._view(identity, client_id)
        decisions = view.decisions[action, whole]
        decision = decisions.get(destination)
        if decision is None:
            decision = _decide(view.rules[action], destination.split("/"), whole)
            if len(decisions) >= DECISION_LIMIT:
                decisions.clear()
            decisions[destination] = decision
        return decision

    def denied(
        self, identity: Principal | None, action: str, destination: str, client_id: str
    ) -> None:
        """Log a refusal (``acl.denied``): the core calls it once per refused operation."""
        self.log.info(
            "acl.denied",
            user=None if identity is None else identity.user,
            client_id=client_id,
            action=action,
            destination=destination,
        )

    def _view(self, identity: Principal | None, client_id: str) -> _View:
        key = (id(identity), client_id)
        view = _View(identity, self._compile(identity, client_id))
        if len(self._views) >= VIEW_LIMIT:
            self._views.clear()
        self._views[key] = view
        return view

    def _compile(self, identity: Principal | None, client_id: str) -> dict[str, _Compiled]:
        rules: list[AclRule] = []
        if identity is not None and identity.acl is not None:
            try:
                rules.extend(token_rule(item) for item in identity.acl)
            except AclError as exc:
                # Claims that cannot be read grant nothing (and deny by default).
                self.log.warning("acl.token_rules_invalid", user=identity.user, error=str(exc))
                return {action: () for action in ACTIONS}
        rules.extend(rule for rule in self.rules if rule.applies_to(identity))
        user = None if identity is None else identity.user
        compiled: dict[str, list[tuple[tuple[str, ...], bool]]] = {a: [] for a in ACTIONS}
        for rule in rules:
            levels = _expand(rule.pattern, rule.allow, user, client_id)
            if levels is None:
                continue
            for action in ACTIONS if rule.action == "all" else (rule.action,):
                compiled[action].append((levels, rule.allow))
        return {action: tuple(items) for action, items in compiled.items()}


def _decide(rules: _Compiled, levels: list[str], whole: bool) -> bool:
    for pattern, allow in rules:
        if covers(pattern, levels):
            return allow
        if whole and not allow and overlaps(pattern, levels):
            return False
    return False
