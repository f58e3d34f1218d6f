"""Selector text to a syntax tree: the lexer and parser of the JMS selector language.

The grammar, the identifiers and the limits are in docs/selectors.md. The parser
is a Pratt parser: chains of AND, OR and arithmetic are loops and become one
n-ary node, so only parentheses, NOT and signs recurse, and both the recursion
and the tree's depth are bounded by ``MAX_DEPTH``. Every error carries the
0-based character offset where it was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeAlias
from typing import Literal as TypingLiteral

MAX_LENGTH: Final = 4096
MAX_DEPTH: Final = 64
MAX_IN_ITEMS: Final = 1000

KEYWORDS: Final = frozenset(
    {"AND", "OR", "NOT", "BETWEEN", "LIKE", "ESCAPE", "IN", "IS", "NULL", "TRUE", "FALSE"}
)

# Standard fields: every spelling an unquoted identifier may use, to the field's key.
FIELDS: Final[dict[str, str]] = {
    "JMSDestination": "destination",
    "destination": "destination",
    "JMSPriority": "priority",
    "priority": "priority",
    "JMSMessageID": "message_id",
    "message_id": "message_id",
    "JMSTimestamp": "timestamp",
    "timestamp": "timestamp",
    "JMSCorrelationID": "correlation_id",
    "correlation_id": "correlation_id",
    "JMSReplyTo": "reply_to",
    "reply_to": "reply_to",
    "JMSDeliveryMode": "delivery_mode",
    "persistent": "persistent",
    "JMSExpiration": "expiration",
    "expires": "expiration",
    "JMSRedelivered": "redelivered",
    "redelivered": "redelivered",
    "content_type": "content_type",
    "qos": "qos",
    "retain": "retain",
}
# JMSType is the header ``type`` (STOMP's spelling of it, as ActiveMQ and Artemis use).
HEADER_ALIASES: Final[dict[str, str]] = {"JMSType": "type"}
NUMERIC_FIELDS: Final = frozenset({"priority", "qos", "timestamp", "expiration"})
BOOLEAN_FIELDS: Final = frozenset({"redelivered", "retain", "persistent"})


class SelectorError(ValueError):
    """A selector that cannot be compiled: ``reason`` found at character ``position`` (0-based)."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(reason, position)
        self.reason = reason
        self.position = position

    def __str__(self) -> str:
        return f"{self.reason} at position {self.position}"


# -- the tree ----------------------------------------------------------------------------

Scalar: TypeAlias = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Literal:
    value: Scalar
    pos: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Field:
    """A standard field of the message; ``name`` is its key in ``FIELDS``' values."""

    name: str
    pos: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    pos: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Payload:
    """A field of the JSON payload: object keys (str) and array indexes (int)."""

    path: tuple[str | int, ...]
    pos: int
    depth: int = 1


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class Logical:
    op: TypingLiteral["AND", "OR"]
    operands: tuple[Node, ...]
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # = <> < <= > >=
    left: Node
    right: Node
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class Arith:
    """``first`` then each (operator, operand) of ``rest``, left to right."""

    first: Node
    rest: tuple[tuple[str, Node], ...]
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Node
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class Between:
    operand: Node
    low: Node
    high: Node
    negated: bool
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class In:
    operand: Node
    items: tuple[str | int | float, ...]
    negated: bool
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class Like:
    operand: Node
    pattern: str
    escape: str | None
    negated: bool
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Node
    negated: bool
    pos: int
    depth: int


Node: TypeAlias = (
    Literal
    | Field
    | Header
    | Payload
    | Not
    | Logical
    | Compare
    | Arith
    | Negate
    | Between
    | In
    | Like
    | IsNull
)
PREDICATES: Final = (Not, Logical, Compare, Between, In, Like, IsNull)


def static_type(node: Node) -> str:
    """'bool', 'num' or 'str' when the node can only be that (or NULL), else 'any'."""
    if isinstance(node, Literal):
        value = node.value
        if isinstance(value, bool):
            return "bool"
        return "str" if isinstance(value, str) else "num"
    if isinstance(node, PREDICATES):
        return "bool"
    if isinstance(node, Arith | Negate):
        return "num"
    if isinstance(node, Field):
        if node.name in NUMERIC_FIELDS:
            return "num"
        if node.name in BOOLEAN_FIELDS:
            return "bool"
    return "any"


# -- the lexer ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    # num, str, ident (unquoted), qident (double-quoted), path, kw, op, end
    kind: str
    value: object
    pos: int
    text: str


_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_OPERATORS = ("<>", "<=", ">=", "<", ">", "=", "+", "-", "*", "/", "(", ")", ",")


def _digit(ch: str) -> bool:
    return len(ch) == 1 and "0" <= ch <= "9"


def _ident_start(ch: str) -> bool:
    return ch.isalpha() or ch in "_$"


def _ident_part(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """The content of a quoted run at ``start`` (doubled quotes stand for one) and its end."""
    parts = []
    i = start + 1
    while True:
        end = text.find(quote, i)
        if end < 0:
            raise SelectorError(f"unterminated {what}", start)
        parts.append(text[i:end])
        if text.startswith(quote, end + 1):
            parts.append(quote)
            i = end + 2
        else:
            return "".join(parts), end + 1


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        start = i
        if ch == "'":
            value, i = _quoted(text, start, "'", "string literal")
            tokens.append(Token("str", value, start, text[start:i]))
        elif ch == '"':
            value, i = _quoted(text, start, '"', "quoted identifier")
            if not value:
                raise SelectorError("empty quoted identifier", start)
            tokens.append(Token("qident", value, start, text[start:i]))
        elif _digit(ch) or (ch == "." and _digit(text[i + 1 : i + 2])):
            match = _NUMBER.match(text, i)
            assert match is not None
            i = match.end()
            if i < n and (_ident_part(text[i]) or text[i] == "."):
                raise SelectorError(f"malformed number {text[start : i + 1]!r}", start)
            literal = match.group()
            number: int | float = (
                float(literal) if any(c in literal for c in ".eE") else int(literal)
            )
            tokens.append(Token("num", number, start, literal))
        elif _ident_start(ch):
            i += 1
            while i < n and _ident_part(text[i]):
                i += 1
            word = text[start:i]
            if word.upper() in KEYWORDS:
                tokens.append(Token("kw", word.upper(), start, word))
            elif word == "payload" and i < n and text[i] in ".[":
                path, i = _path(text, i)
                tokens.append(Token("path", path, start, text[start:i]))
            else:
                if i < n and text[i] == ".":
                    raise SelectorError(
                        "unexpected '.': only payload.FIELD paths have dots"
                        ' (quote a header name that has one: "a.b")',
                        i,
                    )
                tokens.append(Token("ident", word, start, word))
        else:
            for op in _OPERATORS:
                if text.startswith(op, i):
                    if op == "=" and text.startswith("==", i):
                        raise SelectorError("'==': equality is '='", start)
                    i += len(op)
                    tokens.append(Token("op", op, start, op))
                    break
            else:
                if text.startswith("!=", i):
                    raise SelectorError("'!=': not equal is '<>'", start)
                raise SelectorError(f"unexpected character {ch!r}", start)
    tokens.append(Token("end", None, n, ""))
    return tokens


def _path(text: str, i: int) -> tuple[tuple[str | int, ...], int]:
    """The steps of a payload path whose first '.' or '[' is at ``i``, and its end."""
    steps: list[str | int] = []
    n = len(text)
    while i < n and text[i] in ".[":
        if text[i] == "[":
            end = text.find("]", i)
            digits = text[i + 1 : end] if end > 0 else ""
            if not (digits.isascii() and digits.isdigit()):
                raise SelectorError("expected an array index: payload.a[0]", i)
            steps.append(int(digits))
            i = end + 1
        elif i + 1 < n and text[i + 1] == '"':
            key, i = _quoted(text, i + 1, '"', "quoted identifier")
            steps.append(key)
        else:
            end = i + 1
            while end < n and _ident_part(text[end]):
                end += 1
            if end == i + 1:
                raise SelectorError("expected a field name after '.'", i + 1)
            steps.append(text[i + 1 : end])
            i = end
    return tuple(steps), i


# -- the parser --------------------------------------------------------------------------

# Binding powers: OR < AND < NOT < comparisons < + - < * / < unary sign.
_OR, _AND, _NOT, _CMP, _ADD, _MUL, _SIGN = 10, 20, 30, 40, 50, 60, 70
_COMPARISONS = frozenset({"=", "<>", "<", "<=", ">", ">="})
_FLIP = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_DESCRIBE = {"bool": "a condition", "num": "a number", "str": "a string"}


def flip(op: str) -> str:
    """The operator that gives the same result with its operands swapped."""
    return _FLIP[op]


def parse(text: str) -> Node:
    """The tree of a selector; SelectorError for anything that is not one."""
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"selector longer than {MAX_LENGTH} characters", MAX_LENGTH)
    parser = _Parser(tokenize(text))
    node = parser.expression(0)
    token = parser.peek()
    if token.kind != "end":
        if token.kind == "op" and token.value == ")":
            raise SelectorError("unbalanced ')'", token.pos)
        raise SelectorError(f"unexpected {_show(token)}", token.pos)
    _require_condition(node)
    return node


def _show(token: Token) -> str:
    if token.kind == "end":
        return "end of selector"
    return repr(token.text) if len(token.text) <= 20 else repr(token.text[:20] + "...")


def _depth(pos: int, *children: Node) -> int:
    depth = 1 + max(child.depth for child in children)
    if depth > MAX_DEPTH:
        raise SelectorError(f"expression nested deeper than {MAX_DEPTH} levels", pos)
    return depth


def _require_condition(node: Node) -> None:
    kind = static_type(node)
    if kind in ("num", "str"):
        raise SelectorError(f"expected a condition, found {_DESCRIBE[kind]}", node.pos)


def _require_value(node: Node, what: str) -> None:
    """Operands of arithmetic: numbers, or identifiers that may hold one."""
    kind = static_type(node)
    if kind in ("bool", "str"):
        raise SelectorError(f"{what} needs numbers, found {_DESCRIBE[kind]}", node.pos)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.nesting = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def next(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "kw" and token.value in words

    def expect_keyword(self, word: str) -> Token:
        token = self.next()
        if token.kind != "kw" or token.value != word:
            raise SelectorError(f"expected {word}, found {_show(token)}", token.pos)
        return token

    def expect_op(self, op: str) -> Token:
        token = self.next()
        if token.kind != "op" or token.value != op:
            raise SelectorError(f"expected '{op}', found {_show(token)}", token.pos)
        return token

    def expression(self, min_bp: int) -> Node:
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            token = self.peek()
            raise SelectorError(f"expression nested deeper than {MAX_DEPTH} levels", token.pos)
        left = self.prefix()
        compared = False
        while True:
            token = self.peek()
            if token.kind == "kw" and token.value in ("AND", "OR"):
                bp = _AND if token.value == "AND" else _OR
                if bp < min_bp:
                    break
                self.next()
                right = self.expression(bp + 1)
                left = self.logical(token, left, right)
                compared = False
            elif self.at_comparison():
                if min_bp > _CMP:
                    break
                if compared:
                    raise SelectorError("comparisons do not chain: join them with AND", token.pos)
                left = self.comparison(left)
                compared = True
            elif token.kind == "op" and token.value in ("+", "-", "*", "/"):
                op = str(token.value)
                bp = _ADD if op in ("+", "-") else _MUL
                if bp < min_bp:
                    break
                self.next()
                right = self.expression(bp + 1)
                left = self.arith(token, op, left, right)
            else:
                break
        self.nesting -= 1
        return left

    def at_comparison(self) -> bool:
        token = self.peek()
        if token.kind == "op":
            return token.value in _COMPARISONS
        if token.kind != "kw":
            return False
        if token.value in ("BETWEEN", "LIKE", "IN", "IS"):
            return True
        if token.value == "NOT":
            after = self.tokens[self.index + 1]
            return after.kind == "kw" and after.value in ("BETWEEN", "LIKE", "IN")
        return False

    def logical(self, token: Token, left: Node, right: Node) -> Node:
        op: TypingLiteral["AND", "OR"] = "AND" if token.value == "AND" else "OR"
        _require_condition(left)
        _require_condition(right)
        if isinstance(left, Logical) and left.op == op:
            depth = max(left.depth, _depth(token.pos, right))
            return Logical(op, (*left.operands, right), left.pos, depth)
        return Logical(op, (left, right), left.pos, _depth(token.pos, left, right))

    def arith(self, token: Token, op: str, left: Node, right: Node) -> Node:
        _require_value(left, f"'{op}'")
        _require_value(right, f"'{op}'")
        if isinstance(left, Arith):
            depth = max(left.depth, _depth(token.pos, right))
            return Arith(left.first, (*left.rest, (op, right)), left.pos, depth)
        return Arith(left, ((op, right),), left.pos, _depth(token.pos, left, right))

    def comparison(self, left: Node) -> Node:
        token = self.next()
        if token.kind == "op":
            op = str(token.value)
            right = self.expression(_CMP + 1)
            if op not in ("=", "<>"):
                for side in (left, right):
                    if static_type(side) == "bool":
                        raise SelectorError(
                            f"'{op}' does not order conditions: they compare with = and <>",
                            side.pos,
                        )
            return Compare(op, left, right, left.pos, _depth(token.pos, left, right))
        negated = False
        if token.value == "NOT":
            negated = True
            token = self.next()
        if token.value == "IS":
            negated = self.at_keyword("NOT")
            if negated:
                self.next()
            self.expect_keyword("NULL")
            return IsNull(left, negated, left.pos, _depth(token.pos, left))
        if token.value == "BETWEEN":
            low = self.expression(_CMP + 1)
            self.expect_keyword("AND")
            high = self.expression(_CMP + 1)
            for side in (left, low, high):
                if static_type(side) == "bool":
                    raise SelectorError("BETWEEN does not order conditions", side.pos)
            depth = _depth(token.pos, left, low, high)
            return Between(left, low, high, negated, left.pos, depth)
        if token.value == "IN":
            if static_type(left) == "bool":
                raise SelectorError("IN needs a value, found a condition", left.pos)
            items = self.in_list()
            return In(left, items, negated, left.pos, _depth(token.pos, left))
        # LIKE
        kind = static_type(left)
        if kind in ("bool", "num"):
            raise SelectorError(f"LIKE needs a string, found {_DESCRIBE[kind]}", left.pos)
        pattern = self.next()
        if pattern.kind != "str":
            raise SelectorError("LIKE needs a string literal pattern", pattern.pos)
        escape = None
        if self.at_keyword("ESCAPE"):
            self.next()
            escape_token = self.next()
            if escape_token.kind != "str" or len(str(escape_token.value)) != 1:
                raise SelectorError(
                    "ESCAPE needs a string literal of one character", escape_token.pos
                )
            escape = str(escape_token.value)
        _check_like(str(pattern.value), escape, pattern.pos)
        depth = _depth(token.pos, left)
        return Like(left, str(pattern.value), escape, negated, left.pos, depth)

    def in_list(self) -> tuple[str | int | float, ...]:
        self.expect_op("(")
        items: list[str | int | float] = []
        while True:
            token = self.next()
            sign = 1
            if token.kind == "op" and token.value in ("+", "-"):
                sign = -1 if token.value == "-" else 1
                token = self.next()
                if token.kind != "num":
                    raise SelectorError("expected a number after the sign", token.pos)
            if token.kind == "str":
                items.append(str(token.value))
            elif token.kind == "num":
                assert isinstance(token.value, int | float)
                items.append(sign * token.value)
            else:
                raise SelectorError(
                    f"IN lists hold string or number literals, found {_show(token)}", token.pos
                )
            if len(items) > MAX_IN_ITEMS:
                raise SelectorError(f"IN list longer than {MAX_IN_ITEMS} items", token.pos)
            token = self.next()
            if token.kind == "op" and token.value == ")":
                return tuple(items)
            if token.kind != "op" or token.value != ",":
                raise SelectorError(f"expected ',' or ')', found {_show(token)}", token.pos)

    def prefix(self) -> Node:
        token = self.next()
        kind = token.kind
        if kind == "num":
            assert isinstance(token.value, int | float)
            return Literal(token.value, token.pos)
        if kind == "str":
            return Literal(str(token.value), token.pos)
        if kind == "ident":
            name = str(token.value)
            if name == "payload":
                return Payload((), token.pos)
            if name in FIELDS:
                return Field(FIELDS[name], token.pos)
            return Header(HEADER_ALIASES.get(name, name), token.pos)
        if kind == "qident":
            return Header(str(token.value), token.pos)
        if kind == "path":
            assert isinstance(token.value, tuple)
            return Payload(token.value, token.pos)
        if kind == "kw":
            if token.value in ("TRUE", "FALSE"):
                return Literal(token.value == "TRUE", token.pos)
            if token.value == "NOT":
                operand = self.expression(_NOT)
                _require_condition(operand)
                return Not(operand, token.pos, _depth(token.pos, operand))
            if token.value == "NULL":
                raise SelectorError("NULL is only allowed in IS [NOT] NULL", token.pos)
        if kind == "op":
            if token.value == "(":
                inner = self.expression(0)
                self.expect_op(")")
                return inner
            if token.value in ("+", "-"):
                operand = self.expression(_SIGN)
                _require_value(operand, f"unary '{token.value}'")
                if isinstance(operand, Literal):
                    assert isinstance(operand.value, int | float)
                    value = -operand.value if token.value == "-" else operand.value
                    return Literal(value, token.pos)
                if token.value == "+":  # a number, or NULL: an arithmetic of one term
                    return Arith(operand, (), token.pos, _depth(token.pos, operand))
                return Negate(operand, token.pos, _depth(token.pos, operand))
        if kind == "end":
            raise SelectorError("unexpected end of selector", token.pos)
        raise SelectorError(f"unexpected {_show(token)}", token.pos)


def _check_like(pattern: str, escape: str | None, pos: int) -> None:
    """An escape character must be followed by %, _ or itself (as SQL-92 requires)."""
    if escape is None:
        return
    i = 0
    while i < len(pattern):
        if pattern[i] == escape:
            if i + 1 >= len(pattern) or pattern[i + 1] not in ("%", "_", escape):
                raise SelectorError(
                    "in a LIKE pattern the escape character must precede %, _ or itself", pos
                )
            i += 2
        else:
            i += 1
