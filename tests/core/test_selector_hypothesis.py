"""The compiled selector against a straightforward interpreter, on random selectors and messages.

The test builds its own expression trees, renders them as selector text, and
evaluates the tree itself with the rules of docs/selectors.md written out the
plain way (no specialisation, no caching, a recursive LIKE); the compiled
selector must agree on every message. Fuzzing checks that any text either
compiles or raises SelectorError, and that a compiled selector never raises.
"""

from __future__ import annotations

import json
import operator
import re
from functools import cache
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.core import Headers, Message
from gateway.core.selector import (
    MAX_LENGTH,
    Selector,
    SelectorError,
    compile_selector,
    like_matcher,
    to_number,
)

Tree = tuple[Any, ...]

HEADER_NAMES = ("a", "b", "c", "x-y", "nosuch")
# Header values: numbers in every spelling, booleans in any case, text, LIKE-ish strings.
HEADER_VALUES = st.one_of(
    st.integers(-20, 20).map(str),
    st.sampled_from(["1.5", "-0.5", "2e1", "+3", ".5", "5.", "007", " 1", "1 ", "0x1", "1_0"]),
    st.sampled_from(["true", "FALSE", "True", "yes", "", "abc", "ab", "a%b", "a_b", "a!b"]),
    st.text(alphabet="ab.%_!", max_size=5),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-20, 20),
    st.integers(2**63 - 2, 2**64),
    st.floats(-100, 100, allow_nan=False),
    st.sampled_from(["abc", "5", "-2.5", "true", "a%b"]),
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, bool]:
    headers: list[tuple[str, str]] = []
    for name in HEADER_NAMES[:4]:
        if draw(st.booleans()):
            headers.append((name, draw(HEADER_VALUES)))
    repeat: bool = draw(st.booleans())
    if headers and repeat:
        headers.append((headers[0][0], draw(HEADER_VALUES)))  # a repeat: the first one counts
    document: dict[str, object] = {}
    for key in ("t", "s", "b"):
        if draw(st.integers(0, 4)):
            document[key] = draw(JSON_SCALARS)
    document["o"] = {"k": draw(JSON_SCALARS)}
    document["l"] = draw(st.lists(JSON_SCALARS, max_size=2))
    payload = draw(
        st.sampled_from(
            [json.dumps(document).encode(), b"not json", b"{broken", json.dumps(3).encode()]
        )
    )
    message = Message(
        destination=draw(st.sampled_from(["a/b", "jobs", "5"])),
        payload=payload,
        headers=Headers(headers),
        priority=draw(st.integers(0, 9)),
        qos=draw(st.integers(0, 2)),
        retain=draw(st.booleans()),
        content_type=draw(st.sampled_from([None, "application/json", "text/plain"])),
        correlation_id=draw(st.sampled_from([None, b"7", b"abc"])),
        expiry=draw(st.sampled_from([None, 1700000000.5])),
        timestamp=1600000000.25,
        message_id=draw(st.sampled_from([12, 5])),
    )
    return message, draw(st.booleans())


# -- random selector trees ---------------------------------------------------------------

IDENTIFIERS: dict[str, tuple[str, Any]] = {
    # text -> (kind, name) for the interpreter; the static type they have for the parser
    "a": ("header", "a"),
    "b": ("header", "b"),
    "c": ("header", "c"),
    '"x-y"': ("header", "x-y"),
    "nosuch": ("header", "nosuch"),
    "JMSType": ("header", "type"),
    "destination": ("field", "destination"),
    "content_type": ("field", "content_type"),
    "JMSCorrelationID": ("field", "correlation_id"),
    "message_id": ("field", "message_id"),
    "JMSDeliveryMode": ("field", "delivery_mode"),
    "payload.t": ("payload", ("t",)),
    "payload.s": ("payload", ("s",)),
    "payload.b": ("payload", ("b",)),
    "payload.o.k": ("payload", ("o", "k")),
    "payload.l[0]": ("payload", ("l", 0)),
    "payload.nope": ("payload", ("nope",)),
    "payload": ("payload", ()),
}
NUMERIC_FIELDS = {
    "priority": "priority",
    "JMSPriority": "priority",
    "qos": "qos",
    "JMSTimestamp": "timestamp",
    "JMSExpiration": "expiration",
}
BOOLEAN_FIELDS = {"redelivered": "redelivered", "retain": "retain", "persistent": "persistent"}

# Identifiers that may hold anything ("any"), numbers, strings.
any_ident = st.sampled_from(sorted(IDENTIFIERS)).map(lambda t: ("ident", t))
num_ident = st.sampled_from(sorted(NUMERIC_FIELDS)).map(lambda t: ("numfield", t))
bool_ident = st.sampled_from(sorted(BOOLEAN_FIELDS)).map(lambda t: ("boolfield", t))
numbers = st.one_of(
    st.integers(-20, 20),
    st.floats(-50, 50, allow_nan=False).map(lambda x: round(x, 2)),
    st.sampled_from([0, 1e20, 2**63, 1700000000500]),
)
strings = st.one_of(HEADER_VALUES, st.sampled_from(["it's", "a/b", "jobs", "abc"]))


def num_expr(depth: int) -> st.SearchStrategy[Tree]:
    leaf = st.one_of(numbers.map(lambda n: ("lit", n)), any_ident, num_ident)
    if depth <= 0:
        return leaf
    inner = num_expr(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(st.just("arith"), st.sampled_from("+-*/"), inner, inner),
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("pos"), inner),
    )


def value_expr(depth: int) -> st.SearchStrategy[Tree]:
    return st.one_of(num_expr(depth), strings.map(lambda s: ("lit", s)), any_ident)


@st.composite
def like_pattern(draw: st.DrawFn) -> tuple[str, str | None]:
    escape = draw(st.sampled_from([None, "!"]))
    pieces = ["a", "b", ".", "%", "_"]
    if escape:
        pieces += ["!%", "!_", "!!"]
    return "".join(draw(st.lists(st.sampled_from(pieces), max_size=6))), escape


def condition(depth: int) -> st.SearchStrategy[Tree]:
    leaf = st.one_of(
        st.booleans().map(lambda b: ("lit", b)),
        bool_ident,
        any_ident,  # a header or payload field used as a condition
    )
    if depth <= 0:
        return leaf
    value = value_expr(depth - 1)
    inner = condition(depth - 1)
    items = st.lists(st.one_of(numbers, strings), min_size=1, max_size=4).map(tuple)
    return st.one_of(
        leaf,
        st.tuples(st.just("cmp"), st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), value, value),
        st.tuples(st.just("cmp"), st.sampled_from(["=", "<>"]), inner, inner),
        st.tuples(st.just("between"), value, value, value, st.booleans()),
        st.tuples(st.just("in"), value, items, st.booleans()),
        st.tuples(
            st.just("like"),
            st.one_of(any_ident, strings.map(lambda s: ("lit", s))),
            like_pattern(),
            st.booleans(),
        ),
        st.tuples(st.just("isnull"), st.one_of(value, inner), st.booleans()),
        st.tuples(st.just("not"), inner),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner),
    )


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render(tree: Tree) -> str:
    kind = tree[0]
    if kind == "lit":
        value = tree[1]
        if isinstance(value, bool):
            return "TRUE" if value else "false"
        return quote(value) if isinstance(value, str) else repr(value)
    if kind in ("ident", "numfield", "boolfield"):
        return str(tree[1])
    if kind == "arith":
        return f"({render(tree[2])}) {tree[1]} ({render(tree[3])})"
    if kind == "neg":
        return f"-({render(tree[1])})"
    if kind == "pos":
        return f"+({render(tree[1])})"
    if kind == "cmp":
        return f"({render(tree[2])}) {tree[1]} ({render(tree[3])})"
    if kind == "between":
        not_ = "NOT " if tree[4] else ""
        return f"({render(tree[1])}) {not_}BETWEEN ({render(tree[2])}) AND ({render(tree[3])})"
    if kind == "in":
        not_ = "not " if tree[3] else ""
        items = ", ".join(quote(i) if isinstance(i, str) else repr(i) for i in tree[2])
        return f"({render(tree[1])}) {not_}IN ({items})"
    if kind == "like":
        not_ = "NOT " if tree[3] else ""
        pattern, escape = tree[2]
        escape_text = f" ESCAPE {quote(escape)}" if escape else ""
        return f"({render(tree[1])}) {not_}LIKE {quote(pattern)}{escape_text}"
    if kind == "isnull":
        return f"({render(tree[1])}) IS {'NOT ' if tree[2] else ''}NULL"
    if kind == "not":
        return f"NOT ({render(tree[1])})"
    return f"({render(tree[1])}) {kind.upper()} ({render(tree[2])})"


# -- the straightforward interpreter -----------------------------------------------------

NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")


def as_long(value: int) -> int | float:
    return value if -(2**63) <= value < 2**63 else float(value)


def parse_number(text: str) -> int | float | None:
    if len(text) > 64 or not NUMBER.match(text) or text.endswith("\n"):
        return None
    if any(c in text for c in ".eE"):
        return float(text)
    return as_long(int(text))


def parse_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false") and value.isascii():
        return value.lower() == "true"
    return None


def sort_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return "str" if isinstance(value, str) else "other"


OPS: dict[str, Any] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def ref_compare(op: str, a: object, b: object) -> bool | None:
    sorts = {sort_of(a), sort_of(b)}
    if "null" in sorts or "other" in sorts:
        return None
    if sorts == {"str"}:
        return bool(OPS[op](a, b))
    if sorts <= {"num", "str"}:
        x = a if sort_of(a) == "num" else parse_number(str(a))
        y = b if sort_of(b) == "num" else parse_number(str(b))
        if x is None or y is None:
            return None
        return bool(OPS[op](x, y))
    if "bool" in sorts and sorts <= {"bool", "str"} and op in ("=", "<>"):
        x, y = parse_bool(a), parse_bool(b)
        if x is None or y is None:
            return None
        return (x == y) if op == "=" else (x != y)
    return None


def ref_number(value: object) -> int | float | None:
    if sort_of(value) == "num":
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return parse_number(value)
    return None


def ref_and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def ref_or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


def ref_not(a: bool | None) -> bool | None:
    return None if a is None else not a


def ref_like(value: str, pattern: str, escape: str | None) -> bool:
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == escape:
            tokens.append(("char", pattern[i + 1]))
            i += 2
        else:
            c = pattern[i]
            tokens.append(("many", "") if c == "%" else ("one", "") if c == "_" else ("char", c))
            i += 1

    @cache
    def match(t: int, v: int) -> bool:
        if t == len(tokens):
            return v == len(value)
        kind, char = tokens[t]
        if kind == "many":
            return any(match(t + 1, w) for w in range(v, len(value) + 1))
        if v == len(value):
            return False
        return (kind == "one" or value[v] == char) and match(t + 1, v + 1)

    return match(0, 0)


def document(message: Message) -> object:
    ctype = message.content_type
    if ctype is None:
        looks = message.payload.lstrip()[:1] in (b"{", b"[")
    else:
        looks = ctype == "application/json"
    if not looks:
        return KeyError
    try:
        return json.loads(message.payload)
    except ValueError:
        return KeyError


def field(name: str, message: Message, redelivered: bool) -> object:
    if name == "destination":
        return message.destination
    if name == "priority":
        return message.priority
    if name == "qos":
        return message.qos
    if name == "timestamp":
        return round(message.timestamp * 1000)
    if name == "expiration":
        return 0 if message.expiry is None else round(message.expiry * 1000)
    if name == "content_type":
        return message.content_type
    if name == "correlation_id":
        return None if message.correlation_id is None else message.correlation_id.decode()
    if name == "message_id":
        return str(message.message_id)
    if name == "delivery_mode":
        return "PERSISTENT" if message.qos > 0 else "NON_PERSISTENT"
    if name == "redelivered":
        return redelivered
    if name == "retain":
        return message.retain
    assert name == "persistent"
    return message.qos >= 1


def identifier(text: str, message: Message, redelivered: bool) -> object:
    kind, name = IDENTIFIERS[text]
    if kind == "header":
        for key, value in message.headers.pairs:  # type: ignore[attr-defined]
            if key == name:
                return value
        return None
    if kind == "field":
        return field(name, message, redelivered)
    value = document(message)
    if value is KeyError:
        return None
    for step in name:
        if isinstance(step, str) and isinstance(value, dict):
            value = value.get(step)
        elif isinstance(step, int) and isinstance(value, list) and step < len(value):
            value = value[step]
        else:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return as_long(value)
    return value


def evaluate(tree: Tree, message: Message, redelivered: bool) -> object:
    kind = tree[0]
    if kind == "lit":
        return tree[1]
    if kind == "ident":
        return identifier(tree[1], message, redelivered)
    if kind == "numfield":
        return field(NUMERIC_FIELDS[tree[1]], message, redelivered)
    if kind == "boolfield":
        return field(BOOLEAN_FIELDS[tree[1]], message, redelivered)
    if kind == "arith":
        a = ref_number(evaluate(tree[2], message, redelivered))
        b = ref_number(evaluate(tree[3], message, redelivered))
        if a is None or b is None:
            return None
        try:
            if tree[1] == "+":
                return a + b
            if tree[1] == "-":
                return a - b
            if tree[1] == "*":
                return a * b
            if b == 0:
                return None
            if isinstance(a, int) and isinstance(b, int):
                return -(-a // b) if (a < 0) != (b < 0) else a // b
            return a / b
        except OverflowError:
            return None
    if kind == "neg":
        a = ref_number(evaluate(tree[1], message, redelivered))
        return None if a is None else -a
    if kind == "pos":
        return ref_number(evaluate(tree[1], message, redelivered))
    if kind == "cmp":
        left, right = (
            evaluate(tree[2], message, redelivered),
            evaluate(tree[3], message, redelivered),
        )
        return ref_compare(tree[1], left, right)
    if kind == "between":
        v, lo, hi = (evaluate(t, message, redelivered) for t in tree[1:4])
        result = ref_and(ref_compare(">=", v, lo), ref_compare("<=", v, hi))
        return ref_not(result) if tree[4] else result
    if kind == "in":
        v = evaluate(tree[1], message, redelivered)
        found: bool | None = False
        for item in tree[2]:
            found = ref_or(found, ref_compare("=", v, item))
        return ref_not(found) if tree[3] else found
    if kind == "like":
        v = evaluate(tree[1], message, redelivered)
        if not isinstance(v, str):
            return None
        pattern, escape = tree[2]
        found = ref_like(v, pattern, escape)
        return not found if tree[3] else found
    if kind == "isnull":
        v = evaluate(tree[1], message, redelivered)
        return (v is not None) if tree[2] else (v is None)
    if kind == "not":
        return ref_not(condition_of(tree[1], message, redelivered))
    a = condition_of(tree[1], message, redelivered)
    b = condition_of(tree[2], message, redelivered)
    return ref_and(a, b) if kind == "and" else ref_or(a, b)


def condition_of(tree: Tree, message: Message, redelivered: bool) -> bool | None:
    value = evaluate(tree, message, redelivered)
    return parse_bool(value)


# -- the properties ----------------------------------------------------------------------


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition(4), st.lists(messages(), min_size=1, max_size=4))
def test_compiled_selector_agrees_with_the_interpreter(
    tree: Tree, cases: list[tuple[Message, bool]]
) -> None:
    text = render(tree)
    assume(len(text) < MAX_LENGTH - 10)
    selector = compile_selector(text)
    negated = compile_selector(f"NOT ({text})")
    for message, redelivered in cases:
        expected = condition_of(tree, message, redelivered)
        assert selector.matches(message, redelivered=redelivered) is (expected is True), text
        assert negated.matches(message, redelivered=redelivered) is (expected is False), text


@settings(max_examples=1000, deadline=None)
@given(like_pattern(), st.text(alphabet="ab.%_!\n", max_size=6))
def test_like_agrees_with_a_recursive_matcher(pattern: tuple[str, str | None], value: str) -> None:
    text, escape = pattern
    assert like_matcher(text, escape)(value) is ref_like(value, text, escape)


@given(
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False))
)
def test_numbers_written_by_python_read_back(number: float) -> None:
    assert to_number(repr(number)) == number
    assert to_number(str(number)) == number


def compile_or_position(text: str) -> Selector | int:
    """The compiled selector, or the position of its error."""
    try:
        return compile_selector(text)
    except SelectorError as error:
        return error.position


TOKENS = st.sampled_from(
    [
        "a", "b", '"x-y"', "payload.t", "payload.l[0]", "priority", "redelivered", "1", "2.5",
        "-", "+", "*", "/", "'s'", "'%'", "=", "<>", "<", ">=", "(", ")", ",", "AND", "OR",
        "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "'!'", "IS", "NULL", "TRUE", "FALSE",
    ]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(TOKENS, max_size=14).map(" ".join), st.lists(messages(), max_size=2))
def test_token_soup_compiles_or_is_refused_and_never_raises_when_run(
    text: str, cases: list[tuple[Message, bool]]
) -> None:
    selector = compile_or_position(text)
    if isinstance(selector, int):
        assert 0 <= selector <= len(text)
        return
    for message, redelivered in cases:
        assert selector.matches(message, redelivered=redelivered) in (True, False)


@given(st.text(max_size=40))
def test_any_text_compiles_or_is_refused_with_a_position(text: str) -> None:
    position = compile_or_position(text)
    if isinstance(position, int):
        assert 0 <= position <= len(text)
