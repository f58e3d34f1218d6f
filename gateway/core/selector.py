"""Message selectors: the SQL-92 subset of JMS, compiled once into a fast predicate.

    selector = compile_selector("site = 'lyon' AND payload.temperature > 30")
    selector.matches(message)          # True only when the selector is TRUE

``compile_selector`` refuses a bad selector with ``SelectorError`` (its reason
and 0-based position). The tree from ``selector_parse`` becomes nested Python
closures, specialised for the common shapes (an identifier compared with a
literal), so no text is ever evaluated and nothing is parsed per message except
a JSON payload, lazily and once. Values are ``str``, ``int``, ``float``,
``bool`` and ``None`` (SQL's NULL; a condition that is NULL is UNKNOWN).
docs/selectors.md has the language, the identifiers and the coercion rules.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from typing import Any, Final

from .message import Message
from .selector_parse import (
    MAX_DEPTH,
    MAX_IN_ITEMS,
    MAX_LENGTH,
    Arith,
    Between,
    Compare,
    Field,
    Header,
    In,
    Like,
    Literal,
    Logical,
    Negate,
    Node,
    Not,
    Payload,
    SelectorError,
    flip,
    parse,
    static_type,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_IN_ITEMS",
    "MAX_JSON_BYTES",
    "MAX_LENGTH",
    "MAX_NUMBER_TEXT",
    "Selector",
    "SelectorError",
    "compile_selector",
    "like_matcher",
    "to_bool",
    "to_number",
]

Fn = Callable[[Message, bool], object]

MAX_NUMBER_TEXT: Final = 64
MAX_JSON_BYTES: Final = 1 << 20
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


class Selector:
    """A compiled selector. ``matches`` is true only when the expression is TRUE."""

    __slots__ = ("_fn", "text")

    def __init__(self, text: str, fn: Fn) -> None:
        self.text = text
        self._fn = fn

    def matches(self, message: Message, *, redelivered: bool = False) -> bool:
        return self._fn(message, redelivered) is True

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def compile_selector(text: str) -> Selector:
    """Parse and compile ``text`` once; SelectorError(reason, position) if it is not a selector.

    A blank selector matches every message (JMS treats an empty selector as none)."""
    if not text.strip():
        return Selector(text, _always)
    return Selector(text, _condition(parse(text)))


def _always(message: Message, redelivered: bool) -> object:
    return True


# -- coercions ---------------------------------------------------------------------------

_NUMERIC_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def to_number(text: str) -> int | float | None:
    """The number a string holds, written as a selector's numeric literal may be (with an
    optional sign, no spaces, at most MAX_NUMBER_TEXT characters), else None."""
    if text.isdigit() and len(text) < 19 and text.isascii():
        return int(text)  # the common case: a plain integer that fits a long
    if len(text) > MAX_NUMBER_TEXT:
        return None
    if _NUMERIC_TEXT.fullmatch(text) is None:
        return None
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return _long(int(text))


def _long(number: int) -> int | float:
    """Integers outside a signed 64-bit long become floats, as in a JSON or Java double."""
    if _LONG_MIN <= number <= _LONG_MAX:
        return number
    try:
        return float(number)
    except OverflowError:
        return float("inf") if number > 0 else float("-inf")


def to_bool(text: str) -> bool | None:
    """'true' or 'false' in any ASCII case, else None."""
    if len(text) in (4, 5) and text.isascii():
        lowered = text.lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    return None


def _truth(value: object) -> bool | None:
    """A value used as a condition: booleans, and strings 'true'/'false'; else UNKNOWN."""
    if value is True or value is False:
        return value
    if type(value) is str:
        return to_bool(value)
    return None


def _as_number(value: object) -> int | float | None:
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[return-value]
    if kind is str:
        return to_number(value)  # type: ignore[arg-type]
    return None


_TESTS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def compare(op: str, left: object, right: object) -> bool | None:
    """SQL comparison with the gateway's coercions; None is UNKNOWN."""
    test = _TESTS[op]
    lt, rt = type(left), type(right)
    if lt is str and rt is str:
        return test(left, right)
    if lt is int or lt is float:
        if rt is int or rt is float:
            return test(left, right)
        if rt is str:
            number = to_number(right)  # type: ignore[arg-type]
            return None if number is None else test(left, number)
        return None
    if lt is str and (rt is int or rt is float):
        number = to_number(left)  # type: ignore[arg-type]
        return None if number is None else test(number, right)
    if (lt is bool or rt is bool) and op in ("=", "<>"):
        a, b = _truth(left), _truth(right)
        if a is None or b is None:
            return None
        return (a is b) if op == "=" else (a is not b)
    return None


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _arith(op: str, a: int | float, b: int | float) -> int | float | None:
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            return None
        if type(a) is int and type(b) is int:
            quotient = abs(a) // abs(b)  # Java's long division: truncated toward zero
            return quotient if (a < 0) == (b < 0) else -quotient
        return a / b
    except OverflowError:
        return None


# -- LIKE --------------------------------------------------------------------------------


def like_matcher(pattern: str, escape: str | None = None) -> Callable[[str], bool]:
    """A predicate for ``value LIKE pattern [ESCAPE escape]`` (the pattern is already checked).

    The pattern splits at each unescaped % into segments of literal characters and _
    (any one character). Simple shapes use str methods; the rest one regular
    expression in which every segment but the last is an atomic group taking its
    leftmost occurrence, so matching never backtracks across segments.
    """
    segments: list[list[str | None]] = [[]]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == escape:
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if char == "%":
            segments.append([])
        else:
            segments[-1].append(None if char == "_" else char)
        i += 1
    plain = all(None not in segment for segment in segments)
    if len(segments) == 1 and plain:
        exact = "".join(segments[0])  # type: ignore[arg-type]
        return exact.__eq__
    first, last = segments[0], segments[-1]
    middle = [segment for segment in segments[1:-1] if segment]  # %% is one %
    if plain and not middle:
        head, tail = "".join(first), "".join(last)  # type: ignore[arg-type]
        size = len(head) + len(tail)
        if not tail:
            return lambda value: value.startswith(head)
        if not head:
            return lambda value: value.endswith(tail)
        return lambda value: len(value) >= size and value.startswith(head) and value.endswith(tail)
    if plain and len(middle) == 1 and not first and not last:
        inner = "".join(middle[0])  # type: ignore[arg-type]
        return lambda value: inner in value

    def regex(segment: list[str | None]) -> str:
        return "".join("." if char is None else re.escape(char) for char in segment)

    if len(segments) == 1:
        source = regex(first) + r"\Z"  # only _ wildcards
    else:
        source = regex(first) + "".join(f"(?>.*?{regex(s)})" for s in middle)
        source += ".*" + regex(last) + r"\Z"
    compiled = re.compile(source, re.DOTALL)
    return lambda value: compiled.match(value) is not None


# -- JSON payloads -----------------------------------------------------------------------

_NOT_JSON: Final = object()
_JSON_START = re.compile(rb"[ \t\r\n]*[\[{]")
# The last message whose payload was parsed, and the result: the selectors of one
# fan-out share one parse. Holds that one message alive until the next parse.
_last_document: tuple[Message | None, object] = (None, _NOT_JSON)


def is_json(content_type: str | None, payload: bytes) -> bool:
    """application/json, text/json or */*+json; with no content type at all (MQTT 3, most
    MQTT 5 publishers) a payload that starts with { or [ is tried."""
    if content_type is None:
        return _JSON_START.match(payload) is not None
    media = content_type.partition(";")[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def _document(message: Message) -> object:
    global _last_document
    cached = _last_document
    if cached[0] is message:
        return cached[1]
    payload = message.payload
    if len(payload) > MAX_JSON_BYTES or not is_json(message.content_type, payload):
        return _NOT_JSON
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError, TypeError):
        document = _NOT_JSON
    _last_document = (message, document)
    return document


def _payload_getter(path: tuple[str | int, ...]) -> Fn:
    def get(message: Message, redelivered: bool) -> object:
        value = _document(message)
        if value is _NOT_JSON:
            return None
        for step in path:
            if type(step) is str:
                if type(value) is not dict:
                    return None
                value = value.get(step)
            else:
                if type(value) is not list or step >= len(value):  # type: ignore[operator]
                    return None
                value = value[step]  # type: ignore[index]
        if type(value) is int:
            return _long(value)
        return value  # a JSON object or array: not NULL, equal to nothing

    return get


# -- standard fields ---------------------------------------------------------------------


def _correlation_id(message: Message, redelivered: bool) -> object:
    value = message.correlation_id
    return None if value is None else value.decode("utf-8", "replace")


def _milliseconds(seconds: float) -> int | None:
    try:
        return int(seconds * 1000)
    except (OverflowError, ValueError):  # infinity, NaN
        return None


def _expiration(message: Message, redelivered: bool) -> object:
    expiry = message.expiry
    return 0 if expiry is None else _milliseconds(expiry)


_FIELD_GETTERS: Final[dict[str, Fn]] = {
    "destination": lambda m, r: m.destination,
    "priority": lambda m, r: m.priority,
    "message_id": lambda m, r: str(m.message_id),
    "timestamp": lambda m, r: _milliseconds(m.timestamp),
    "correlation_id": _correlation_id,
    "reply_to": lambda m, r: m.reply_to,
    "delivery_mode": lambda m, r: "PERSISTENT" if m.qos else "NON_PERSISTENT",
    "persistent": lambda m, r: m.qos > 0,
    "expiration": _expiration,
    "redelivered": lambda m, r: bool(r),
    "content_type": lambda m, r: m.content_type,
    "qos": lambda m, r: m.qos,
    "retain": lambda m, r: bool(m.retain),
}
# Plain integer attributes, read without a call.
_INT_ATTRIBUTES: Final = {"priority": "priority", "qos": "qos"}


# -- the compiler ------------------------------------------------------------------------


def _condition(node: Node) -> Fn:
    """``node`` compiled to return True, False or None (UNKNOWN)."""
    fn = _compile(node)
    if static_type(node) == "bool":
        return fn
    return lambda m, r: _truth(fn(m, r))


def _compile(node: Node) -> Fn:
    if isinstance(node, Literal):
        constant = node.value
        return lambda m, r: constant
    if isinstance(node, Field):
        return _FIELD_GETTERS[node.name]
    if isinstance(node, Header):
        name = node.name
        return lambda m, r: m.headers.get(name)
    if isinstance(node, Payload):
        return _payload_getter(node.path)
    if isinstance(node, Not):
        return _not(_condition(node.operand))
    if isinstance(node, Logical):
        return _logical(node)
    if isinstance(node, Compare):
        return _compare(node)
    if isinstance(node, Arith):
        return _arithmetic(node)
    if isinstance(node, Negate):
        operand = _compile(node.operand)

        def negate(m: Message, r: bool) -> object:
            number = _as_number(operand(m, r))
            return None if number is None else -number

        return negate
    if isinstance(node, Between):
        return _between(node)
    if isinstance(node, In):
        return _in(node)
    if isinstance(node, Like):
        return _like(node)
    operand = _compile(node.operand)
    if node.negated:
        return lambda m, r: operand(m, r) is not None
    return lambda m, r: operand(m, r) is None


def _not(operand: Fn) -> Fn:
    def not_(m: Message, r: bool) -> object:
        value = operand(m, r)
        return None if value is None else not value

    return not_


def _logical(node: Logical) -> Fn:
    """AND and OR in three-valued logic, one the dual of the other: AND stops at the
    first False, OR at the first True; otherwise an unknown (None) operand makes the
    result unknown, else it is the other value."""
    fns = tuple(_condition(operand) for operand in node.operands)
    stop = node.op != "AND"
    other = not stop
    if len(fns) == 2:
        f, g = fns

        def both(m: Message, r: bool) -> object:
            a = f(m, r)
            if a is stop:
                return stop
            b = g(m, r)
            if b is stop:
                return stop
            return None if a is None or b is None else other

        return both

    def every(m: Message, r: bool) -> object:
        result: object = other
        for fn in fns:
            value = fn(m, r)
            if value is stop:
                return stop
            if value is None:
                result = None
        return result

    return every


def _compare(node: Compare) -> Fn:
    op, left, right = node.op, node.left, node.right
    if isinstance(left, Literal) and not isinstance(right, Literal):
        left, right, op = right, left, flip(op)
    if isinstance(right, Literal):
        if isinstance(left, Literal):
            constant = compare(op, left.value, right.value)
            return lambda m, r: constant
        return _compare_literal(op, left, right.value)
    f, g = _compile(left), _compile(right)
    return lambda m, r: compare(op, f(m, r), g(m, r))


def _compare_literal(op: str, left: Node, literal: object) -> Fn:
    """``left OP literal``, with a fast path for the value type that needs no coercion."""
    test = _TESTS[op]
    if type(literal) is bool:
        f = _compile(left)
        want = literal if op == "=" else not literal

        def compare_bool(m: Message, r: bool) -> object:
            value = _truth(f(m, r))
            return None if value is None else value is want

        return compare_bool
    if type(literal) is str:
        if isinstance(left, Header):
            name = left.name

            def header_str(m: Message, r: bool) -> object:
                value = m.headers.get(name)
                if type(value) is str:
                    return test(value, literal)
                return compare(op, value, literal)

            return header_str
        f = _compile(left)

        def compare_str(m: Message, r: bool) -> object:
            value = f(m, r)
            if type(value) is str:
                return test(value, literal)
            return compare(op, value, literal)

        return compare_str
    # A number.
    if isinstance(left, Field) and left.name in _INT_ATTRIBUTES:
        read = operator.attrgetter(_INT_ATTRIBUTES[left.name])
        return lambda m, r: test(read(m), literal)
    if isinstance(left, Header):
        name = left.name

        def header_number(m: Message, r: bool) -> object:
            value = m.headers.get(name)
            if type(value) is str:
                number = to_number(value)
                return None if number is None else test(number, literal)
            return compare(op, value, literal)

        return header_number
    f = _compile(left)

    def compare_number(m: Message, r: bool) -> object:
        value = f(m, r)
        kind = type(value)
        if kind is int or kind is float:
            return test(value, literal)
        return compare(op, value, literal)

    return compare_number


def _arithmetic(node: Arith) -> Fn:
    first = _compile(node.first)
    rest = tuple((op, _compile(operand)) for op, operand in node.rest)

    def arithmetic(m: Message, r: bool) -> object:
        total = _as_number(first(m, r))
        if total is None:
            return None
        for op, fn in rest:
            number = _as_number(fn(m, r))
            if number is None:
                return None
            total = _arith(op, total, number)
            if total is None:
                return None
        return total

    return arithmetic


def _between(node: Between) -> Fn:
    operand, negated = _compile(node.operand), node.negated
    low, high = node.low, node.high
    if (
        isinstance(low, Literal)
        and isinstance(high, Literal)
        and type(low.value) in (int, float)
        and type(high.value) in (int, float)
    ):
        lo, hi = low.value, high.value

        def between_numbers(m: Message, r: bool) -> object:
            number = _as_number(operand(m, r))
            if number is None:
                return None
            return not lo <= number <= hi if negated else lo <= number <= hi  # type: ignore[operator]

        return between_numbers
    low_fn, high_fn = _compile(low), _compile(high)

    def between(m: Message, r: bool) -> object:
        value = operand(m, r)
        result = _and(compare(">=", value, low_fn(m, r)), compare("<=", value, high_fn(m, r)))
        if negated and result is not None:
            return not result
        return result

    return between


def _in(node: In) -> Fn:
    operand, items, negated = _compile(node.operand), node.items, node.negated
    strings = frozenset(item for item in items if type(item) is str)
    numbers = frozenset(item for item in items if type(item) is not str)
    only_strings = len(strings) == len(items)
    only_numbers = not strings

    def in_(m: Message, r: bool) -> object:
        value = operand(m, r)
        if value is None:
            return None
        kind = type(value)
        if kind is str and only_strings:
            found = value in strings
        elif (kind is int or kind is float) and only_numbers:
            found = value in numbers
        else:
            # As SQL: x IN (a, b) is x = a OR x = b.
            result: bool | None = False
            for item in items:
                equal = compare("=", value, item)
                if equal:
                    result = True
                    break
                if equal is None:
                    result = None
            if result is None:
                return None
            found = result
        return not found if negated else found

    return in_


def _like(node: Like) -> Fn:
    operand, negated = _compile(node.operand), node.negated
    match = like_matcher(node.pattern, node.escape)

    def like(m: Message, r: bool) -> object:
        value = operand(m, r)
        if type(value) is not str:
            return None
        return not match(value) if negated else match(value)

    return like
