"""Selectors: each construct of the language, SQL's three-valued logic, coercions, errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.core import Headers, Kind, Message
from gateway.core import selector as selector_module
from gateway.core.selector import (
    MAX_DEPTH,
    MAX_IN_ITEMS,
    MAX_LENGTH,
    Selector,
    SelectorError,
    compile_selector,
    like_matcher,
    to_bool,
    to_number,
)


def message(**fields: Any) -> Message:
    headers = fields.pop("headers", {})
    if isinstance(headers, dict):
        headers = Headers(headers.items())
    fields.setdefault("destination", "site/1/temp")
    fields.setdefault("payload", b"")
    return Message(headers=headers, **fields)


SAMPLE = message(
    headers=Headers(
        [
            ("site", "lyon"),
            ("n", "5"),
            ("f", "-2.5"),
            ("e", "1e3"),
            ("flag", "TRUE"),
            ("off", "false"),
            ("word", "abc"),
            ("trace-id", "t-42"),
            ("site", "paris"),  # a repeat: the first value counts
            ("priority", "1"),  # shadowed by the standard field
            ("type", "order"),
            ("pct", "50%"),
            ("empty", ""),
        ]
    ),
    priority=7,
    qos=1,
    retain=True,
    content_type="text/plain",
    correlation_id=b"corr-1",
    reply_to="$queue/replies",
    message_id=1234,
    timestamp=1700000000.5,
    expiry=1700000060.25,
)


def matches(text: str, msg: Message = SAMPLE, *, redelivered: bool = False) -> bool:
    return compile_selector(text).matches(msg, redelivered=redelivered)


def truth(text: str, msg: Message = SAMPLE) -> str:
    """'T', 'F' or 'U' (UNKNOWN): a selector and its negation are both false only when UNKNOWN."""
    if matches(text, msg):
        assert not matches(f"NOT ({text})", msg)
        return "T"
    return "F" if matches(f"NOT ({text})", msg) else "U"


# -- literals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("word = 'abc'", "T"),
        ("'abc' = word", "T"),
        ("'it''s' = 'it''s'", "T"),
        ("'' = empty", "T"),
        ("n = 5", "T"),
        ("n = 5.0", "T"),
        ("n = 5.", "T"),
        ("e = 1000", "T"),
        ("e = 1E3", "T"),
        ("e = 10e+2", "T"),
        ("f = -2.5", "T"),
        ("f = -25e-1", "T"),
        (".5 = 0.5", "T"),
        ("1 = 1", "T"),
        ("1 = 2", "F"),
        ("TRUE", "T"),
        ("false", "F"),
        ("True = TRUE", "T"),
        ("TRUE <> FALSE", "T"),
        ("9223372036854775807 > 9223372036854775806", "T"),
        ("1e999 > 1e308", "T"),
    ],
)
def test_literals(text: str, expected: str) -> None:
    assert truth(text) == expected


def test_keywords_are_case_insensitive_and_identifiers_are_not() -> None:
    assert matches("site = 'lyon' and n between 1 AnD 9 oR false")
    assert matches("word not like 'x%' and missing is null and word in ('abc')")
    assert truth("Site = 'lyon'") == "U"  # no header "Site"


# -- identifiers ------------------------------------------------------------------------


def test_headers_by_name_first_value_of_a_repeat_and_missing_is_null() -> None:
    assert matches("site = 'lyon'")
    assert not matches("site = 'paris'")
    assert truth("nosuch = 'x'") == "U"
    assert matches("nosuch IS NULL")
    assert matches("site IS NOT NULL")


def test_headers_given_as_a_plain_mapping() -> None:
    msg = Message(destination="t", payload=b"", headers={"site": "lyon", "n": "12"})
    assert matches("site = 'lyon' AND n > 10", msg)
    assert not matches("site = 'lyon'", Message(destination="t", payload=b""))


def test_quoted_identifiers_reach_any_header_name() -> None:
    assert matches("\"trace-id\" = 't-42'")
    assert matches("\"trace-id\" LIKE 't-%'")
    msg = message(headers={'say "hi"': "x", "a.b": "1", "and": "y", "payload": "p"})
    assert matches('"say ""hi""" = \'x\'', msg)
    assert matches('"a.b" = 1', msg)
    assert matches("\"and\" = 'y'", msg)
    assert matches("\"payload\" = 'p'", msg)


def test_hyphen_unquoted_is_subtraction() -> None:
    msg = message(headers={"trace": "10", "id": "3", "trace-id": "x"})
    assert matches("trace-id = 7", msg)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("JMSPriority = 7", "T"),
        ("priority = 7", "T"),
        ('"priority" = 1', "T"),  # the header of that name, quoted
        ("JMSDestination = 'site/1/temp'", "T"),
        ("destination LIKE 'site/%'", "T"),
        ("JMSMessageID = '1234'", "T"),
        ("message_id = 1234", "T"),
        ("JMSTimestamp = 1700000000500", "T"),
        ("timestamp > 1600000000000", "T"),
        ("JMSCorrelationID = 'corr-1'", "T"),
        ("correlation_id = 'corr-1'", "T"),
        ("JMSReplyTo = '$queue/replies'", "T"),
        ("reply_to = '$queue/replies'", "T"),
        ("JMSDeliveryMode = 'PERSISTENT'", "T"),
        ("persistent", "T"),
        ("persistent = TRUE", "T"),
        ("JMSExpiration = 1700000060250", "T"),
        ("expires = 1700000060250", "T"),
        ("JMSType = 'order'", "T"),
        ("content_type = 'text/plain'", "T"),
        ("qos = 1", "T"),
        ("retain", "T"),
        ("retain = 'true'", "T"),
        ("JMSRedelivered", "F"),
        ("redelivered", "F"),
    ],
)
def test_standard_fields(text: str, expected: str) -> None:
    assert truth(text) == expected


def test_standard_fields_of_a_bare_message() -> None:
    bare = Message(destination="jobs", payload=b"", kind=Kind.QUEUE)
    assert matches("correlation_id IS NULL AND reply_to IS NULL AND content_type IS NULL", bare)
    assert matches("JMSExpiration = 0 AND JMSDeliveryMode = 'NON_PERSISTENT'", bare)
    assert matches("NOT persistent AND NOT retain AND qos = 0 AND priority = 4", bare)
    assert matches("destination = 'jobs' AND JMSType IS NULL", bare)


def test_times_that_are_not_finite_are_null() -> None:
    msg = message(expiry=float("inf"), timestamp=float("nan"))
    assert truth("JMSExpiration > 0", msg) == "U"
    assert matches("JMSExpiration IS NULL AND JMSTimestamp IS NULL", msg)


def test_redelivered_is_the_argument() -> None:
    assert matches("redelivered", redelivered=True)
    assert matches("JMSRedelivered = TRUE", redelivered=True)
    assert not matches("NOT redelivered", redelivered=True)
    assert matches("NOT redelivered")


def test_correlation_id_bytes_decode_as_utf8_with_replacement() -> None:
    msg = message(correlation_id=b"\xffid")
    assert matches("correlation_id = '\ufffdid'", msg)


# -- three-valued logic -----------------------------------------------------------------

T, F, U = "TRUE", "FALSE", "nosuch = 1"  # U is UNKNOWN
VALUES = {T: "T", F: "F", U: "U"}
AND = {
    ("T", "T"): "T", ("T", "F"): "F", ("T", "U"): "U",
    ("F", "T"): "F", ("F", "F"): "F", ("F", "U"): "F",
    ("U", "T"): "U", ("U", "F"): "F", ("U", "U"): "U",
}  # fmt: skip
OR = {
    ("T", "T"): "T", ("T", "F"): "T", ("T", "U"): "T",
    ("F", "T"): "T", ("F", "F"): "F", ("F", "U"): "U",
    ("U", "T"): "T", ("U", "F"): "U", ("U", "U"): "U",
}  # fmt: skip


@pytest.mark.parametrize("a", [T, F, U])
@pytest.mark.parametrize("b", [T, F, U])
def test_and_or_truth_tables(a: str, b: str) -> None:
    assert truth(f"{a} AND {b}") == AND[VALUES[a], VALUES[b]]
    assert truth(f"{a} OR {b}") == OR[VALUES[a], VALUES[b]]
    assert truth(f"({a}) AND ({b}) AND TRUE") == AND[VALUES[a], VALUES[b]]
    assert truth(f"({a}) OR ({b}) OR FALSE") == OR[VALUES[a], VALUES[b]]


def test_not() -> None:
    assert truth("NOT TRUE") == "F"
    assert truth("NOT FALSE") == "T"
    assert truth("NOT nosuch = 1") == "U"
    assert truth("NOT NOT nosuch = 1") == "U"
    assert truth("NOT (nosuch = 1) IS NULL") == "F"


def test_long_chains_mix_unknown_false_and_true() -> None:
    assert truth("nosuch = 1 OR FALSE OR nosuch = 2 OR TRUE") == "T"
    assert truth("nosuch = 1 OR FALSE OR nosuch = 2") == "U"
    assert truth("nosuch = 1 AND TRUE AND nosuch = 2 AND FALSE") == "F"
    assert truth("nosuch = 1 AND TRUE AND nosuch = 2") == "U"


@pytest.mark.parametrize(
    "text",
    [
        "nosuch = 'x'",
        "nosuch <> 'x'",
        "nosuch < 1",
        "nosuch + 1 = 2",
        "-nosuch = -1",
        "nosuch BETWEEN 1 AND 2",
        "nosuch NOT BETWEEN 1 AND 2",
        "n BETWEEN nosuch AND 10",
        "nosuch IN ('a', 'b')",
        "nosuch NOT IN ('a', 'b')",
        "nosuch LIKE '%'",
        "nosuch NOT LIKE 'x'",
        "nosuch",
        "nosuch = TRUE",
        "nosuch = nosuch",
    ],
)
def test_null_operands_are_unknown(text: str) -> None:
    assert truth(text) == "U"


def test_null_against_a_false_bound_of_between_is_false() -> None:
    assert truth("n BETWEEN nosuch AND 4") == "F"  # 5 <= 4 is false: FALSE AND UNKNOWN
    assert truth("n NOT BETWEEN nosuch AND 4") == "T"


# -- comparisons and coercions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n = 5", "T"),
        ("n <> 5", "F"),
        ("n < 6", "T"),
        ("n <= 5", "T"),
        ("n > 5", "F"),
        ("n >= 5", "T"),
        ("5 < n", "F"),
        ("6 > n", "T"),
        ("n > 4.5", "T"),
        ("f < -2", "T"),
        ("e >= 999.9", "T"),
        ("word = 5", "U"),  # not a number: UNKNOWN, never FALSE
        ("word <> 5", "U"),
        ("empty = 0", "U"),
        ("n = '5'", "T"),  # two strings
        ("n > '10'", "T"),  # two strings compare as strings: '5' > '10'
        ("n > 10", "F"),  # a number: numerically
        ("priority = '7'", "T"),  # a number field against a numeric string
        ("priority = 'seven'", "U"),
        ("word < 'abd'", "T"),
        ("word >= 'abc'", "T"),
        ("site = word", "F"),
        ("n = f", "F"),
        ("priority > n", "T"),  # 7 > '5': the header parses
        ("flag = TRUE", "T"),  # 'TRUE' in any case
        ("off = FALSE", "T"),
        ("off <> TRUE", "T"),
        ("word = TRUE", "U"),
        ("n = TRUE", "U"),
        ("priority = TRUE", "U"),
        ("flag", "T"),  # a header as a condition: 'true'/'false' strings
        ("off", "F"),
        ("word", "U"),
        ("flag AND NOT off", "T"),
        ("(n = 5) = TRUE", "T"),
        ("(n = 5) <> (n = 6)", "T"),
        ("(nosuch = 5) = TRUE", "U"),
    ],
)
def test_comparisons(text: str, expected: str) -> None:
    assert truth(text) == expected


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("5", 5),
        ("+5", 5),
        ("-0", 0),
        ("007", 7),
        ("1.5", 1.5),
        ("5.", 5.0),
        (".5", 0.5),
        ("-1.5e3", -1500.0),
        ("2E-2", 0.02),
        ("9223372036854775807", 9223372036854775807),
        ("9223372036854775808", 9.223372036854776e18),  # past a long: a double
        (" 5", None),
        ("5 ", None),
        ("", None),
        ("0x10", None),
        ("1_000", None),
        ("NaN", None),
        ("inf", None),
        ("1e", None),
        ("--1", None),
        ("\u0665", None),  # an Arabic-Indic digit
        ("1" * 65, None),  # longer than MAX_NUMBER_TEXT
    ],
)
def test_numeric_strings(text: str, number: float | None) -> None:
    assert to_number(text) == number
    if number is not None:
        assert type(to_number(text)) is type(number)


def test_boolean_strings() -> None:
    assert to_bool("true") is True
    assert to_bool("False") is False
    assert to_bool("TRUE") is True
    assert to_bool("yes") is None
    assert to_bool("1") is None
    assert to_bool(" true") is None


def test_numeric_coercion_of_header_values() -> None:
    msg = message(headers={"temp": "31.5", "count": "12", "bad": "12a", "big": "1" * 30})
    assert matches("temp > 30 AND count > 9", msg)  # a string compare would say '12' < '9'
    assert matches("count = 12.0", msg)
    assert truth("bad > 1", msg) == "U"
    assert truth("bad <> 1", msg) == "U"
    assert matches("big > 1e28", msg)


# -- arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3 = 7", "T"),
        ("(1 + 2) * 3 = 9", "T"),
        ("10 - 2 - 3 = 5", "T"),
        ("2 * 3 - 4 / 2 = 4", "T"),
        ("-n = -5", "T"),
        ("- -n = 5", "T"),
        ("+n = 5", "T"),
        ("+n = '5'", "T"),  # a number now: compared numerically
        ("+word IS NULL", "T"),  # not a number: NULL
        ("+flag IS NULL", "T"),
        ("n * 2 = 10", "T"),
        ("n + f = 2.5", "T"),
        ("e / 4 = 250", "T"),
        ("7 / 2 = 3", "T"),  # integers divide as Java longs
        ("-7 / 2 = -3", "T"),  # truncated toward zero
        ("7 / -2 = -3", "T"),
        ("7.0 / 2 = 3.5", "T"),
        ("n / 2 = 2", "T"),
        ("n / 2.0 = 2.5", "T"),
        ("n / 0 = 1", "U"),  # division by zero is NULL
        ("(n / 0) IS NULL", "T"),
        ("n / 0.0 IS NULL", "T"),
        ("word + 1 = 1", "U"),
        ("flag + 1 = 1", "U"),
        ("nosuch * 0 = 0", "U"),
        ("n - 1 BETWEEN 3 AND 4", "T"),
        ("priority * qos = 7", "T"),
        ("9223372036854775807 * 9223372036854775807 * 2 > 1e38", "T"),
        ("1e308 * 10 > 1e308", "T"),  # infinity
    ],
)
def test_arithmetic(text: str, expected: str) -> None:
    assert truth(text) == expected


def test_arithmetic_overflowing_a_double_is_null() -> None:
    huge = " * ".join(["9223372036854775807"] * 40)  # an integer past any double
    assert truth(f"{huge} * 1.5 > 0") == "U"


# -- BETWEEN, IN, LIKE, IS NULL -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n BETWEEN 1 AND 5", "T"),
        ("n BETWEEN 5 AND 5", "T"),
        ("n BETWEEN 6 AND 9", "F"),
        ("n BETWEEN 9 AND 1", "F"),
        ("n NOT BETWEEN 6 AND 9", "T"),
        ("f BETWEEN -3 AND -2", "T"),
        ("priority BETWEEN n AND 8", "T"),
        ("priority BETWEEN n + 3 AND 8", "F"),
        ("word BETWEEN 'abb' AND 'abd'", "T"),
        ("word BETWEEN 1 AND 2", "U"),
        ("word NOT BETWEEN 1 AND 2", "U"),
        ("n BETWEEN 1 AND 2 + 3", "T"),
        ("n BETWEEN 1 AND 9 AND word = 'abc'", "T"),
    ],
)
def test_between(text: str, expected: str) -> None:
    assert truth(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site IN ('paris', 'lyon')", "T"),
        ("site IN ('paris')", "F"),
        ("site NOT IN ('paris')", "T"),
        ("site NOT IN ('lyon', 'paris')", "F"),
        ("n IN ('4', '5')", "T"),
        ("n IN (4, 5)", "T"),  # a numeric string against numbers
        ("n IN (4.0, 5.0)", "T"),
        ("priority IN (1, 7)", "T"),
        ("priority IN ('7')", "T"),
        ("priority IN (-1, +7)", "T"),
        ("f IN (-2.5)", "T"),
        ("word IN ('x', 1)", "U"),  # 'abc' = 1 is UNKNOWN: x IN (a, b) is x = a OR x = b
        ("word IN ('abc', 1)", "T"),
        ("word NOT IN ('x', 1)", "U"),
        ("priority IN ('x', 1)", "U"),
        ("priority IN ('x', 7)", "T"),
        ("flag IN ('true')", "F"),  # strings compare as strings
    ],
)
def test_in(text: str, expected: str) -> None:
    assert truth(text) == expected


def test_in_with_a_boolean_value() -> None:
    msg = json_message()
    assert truth("payload.ok IN ('TRUE')", msg) == "T"  # 'true' in any case
    assert truth("payload.ok IN ('false')", msg) == "F"
    assert truth("payload.ok IN ('x')", msg) == "U"
    assert truth("payload.ok IN (1)", msg) == "U"
    with pytest.raises(SelectorError, match="IN needs a value"):
        compile_selector("retain IN ('true')")


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("a%", "abc", True),
        ("a%", "a", True),
        ("a%", "ba", False),
        ("%c", "abc", True),
        ("%b%", "abc", True),
        ("%b%", "ac", False),
        ("a%c", "ac", True),
        ("a%c", "abbbc", True),
        ("a%c", "abcd", False),
        ("a_c", "abc", True),
        ("a_c", "ac", False),
        ("a_c", "abbc", False),
        ("___", "abc", True),
        ("%", "", True),
        ("_", "", False),
        ("", "", True),
        ("a%%b", "ab", True),
        ("%a%b%c%", "xaybzc!", True),
        ("%a%b%c%", "cba", False),
        ("a%a", "a", False),
        ("a%a", "aa", True),
        ("%ab%b", "abb", True),
        ("%a_b%", "xaxbx", True),
        ("%a_b", "a_b", True),
        ("_%_", "a", False),
        ("_%_", "ab", True),
        ("a.c", "abc", False),  # regex characters are literal
        ("a.c", "a.c", True),
        ("[a]*(b)?\\", "[a]*(b)?\\", True),
        ("%$^%", "x$^y", True),
        ("a%b", "a\nb", True),  # % spans lines
        ("a_b", "a\nb", True),
        ("é_", "éé", True),
    ],
)
def test_like_patterns(pattern: str, value: str, expected: bool) -> None:
    assert like_matcher(pattern)(value) is expected
    msg = message(headers={"v": value})
    quoted = pattern.replace("'", "''")
    assert matches(f"v LIKE '{quoted}'", msg) is expected
    assert matches(f"v NOT LIKE '{quoted}'", msg) is (not expected)


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        (r"v LIKE '50\%' ESCAPE '\'", "50%", True),
        (r"v LIKE '50\%' ESCAPE '\'", "500", False),
        (r"v LIKE '%\%' ESCAPE '\'", "100%", True),
        (r"v LIKE 'a\_b' ESCAPE '\'", "a_b", True),
        (r"v LIKE 'a\_b' ESCAPE '\'", "axb", False),
        (r"v LIKE 'a\\b' ESCAPE '\'", "a\\b", True),
        ("v LIKE 'a!%b%' ESCAPE '!'", "a%bcd", True),
        ("v LIKE 'a!%b%' ESCAPE '!'", "axbcd", False),
        ("v LIKE 'a!!b' ESCAPE '!'", "a!b", True),
        ("v LIKE '%%' ESCAPE '%'", "%", True),  # the escape may be a wildcard character
        ("v LIKE '%%' ESCAPE '%'", "x", False),
        ("v LIKE '%%_' ESCAPE '%'", "%a", True),
        ("v LIKE 'x''_' ESCAPE ''''", "x_", True),
        ("v LIKE 'x''_' ESCAPE ''''", "xy", False),
        ("v LIKE '%' ESCAPE '\\'", "anything", True),
    ],
)
def test_like_escape(text: str, value: str, expected: bool) -> None:
    assert matches(text, message(headers={"v": value})) is expected


def test_like_needs_a_string_value() -> None:
    msg = message(
        headers={"n": "5"}, payload=b'{"n": 5, "s": "5"}', content_type="application/json"
    )
    assert truth("n LIKE '5'", msg) == "T"  # headers are strings
    assert truth("payload.n LIKE '5'", msg) == "U"  # a JSON number is not
    assert truth("payload.s LIKE '5'", msg) == "T"
    assert truth("nosuch LIKE '%'", msg) == "U"


def test_like_does_not_backtrack_catastrophically() -> None:
    # A regex of .*a.*a.*a... would take O(n^k) steps here; the atomic groups take O(n*k).
    value = "a" * 20000
    assert not like_matcher("%a%a%a%a%a%a%a%a%a%a%b")(value)
    assert not like_matcher("%a_%a_%a_%a_%a_%a_%a_%b")(value)
    assert like_matcher("%a%a%a%a%a%a%a%a%a%a%")(value)
    assert not like_matcher("_%a%a%a%a%a%a%a%a%a%ab")(value)


def test_is_null() -> None:
    assert truth("nosuch IS NULL") == "T"
    assert truth("nosuch IS NOT NULL") == "F"
    assert truth("site IS NULL") == "F"
    assert truth("empty IS NULL") == "F"  # an empty string is a value
    assert truth("n + 1 IS NOT NULL") == "T"
    assert truth("word + 1 IS NULL") == "T"
    assert truth("NOT nosuch IS NULL") == "F"  # NOT (nosuch IS NULL)


# -- JSON payloads -----------------------------------------------------------------------

DOC = {
    "temperature": 31.5,
    "count": 3,
    "unit": "C",
    "ok": True,
    "gone": None,
    "n": "42",
    "big": 2**70,
    "nested": {"a": {"b": [10, {"c": "deep"}]}},
    "list": [1, 2],
    "odd key": 1,
}


def json_message(
    payload: bytes | None = None, content_type: str | None = "application/json"
) -> Message:
    body = json.dumps(DOC).encode() if payload is None else payload
    return message(payload=body, content_type=content_type)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.temperature > 30", "T"),
        ("payload.temperature BETWEEN 31 AND 32", "T"),
        ("payload.count = 3", "T"),
        ("payload.count + 1 = 4", "T"),
        ("payload.unit = 'C'", "T"),
        ("payload.unit LIKE 'C%'", "T"),
        ("payload.ok", "T"),
        ("payload.ok = TRUE", "T"),
        ("NOT payload.ok", "F"),
        ("payload.gone IS NULL", "T"),
        ("payload.gone = 1", "U"),
        ("payload.nosuch IS NULL", "T"),
        ("payload.nosuch.deeper IS NULL", "T"),
        ("payload.n > 40", "T"),  # a JSON string that holds a number
        ("payload.big > 1e21", "T"),
        ("payload.nested.a.b[0] = 10", "T"),
        ("payload.nested.a.b[1].c = 'deep'", "T"),
        ("payload.nested.a.b[2] IS NULL", "T"),
        ("payload.nested.a[0] IS NULL", "T"),  # an index into an object
        ("payload.list.x IS NULL", "T"),  # a key into an array
        ('payload."odd key" = 1', "T"),
        ("payload.nested IS NOT NULL", "T"),  # an object is a value...
        ("payload.nested = 'x'", "U"),  # ... equal to nothing
        ("payload.list IN (1, 2)", "U"),
        ("payload IS NOT NULL", "T"),
    ],
)
def test_json_payload_fields(text: str, expected: str) -> None:
    assert truth(text, json_message()) == expected


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/json",
     "application/vnd.api+json", None],
)  # fmt: skip
def test_json_content_types(content_type: str | None) -> None:
    assert matches("payload.count = 3", json_message(content_type=content_type))


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (b'{"count": 3}', "text/plain"),  # not declared JSON
        (b'{"count": 3}', "application/octet-stream"),
        (b"count=3", None),  # does not look like JSON
        (b'{"count": 3', "application/json"),  # truncated
        (b"\xff\xfe\x00", "application/json"),
        (b"", "application/json"),
        (b"[" * 100000 + b"]" * 100000, "application/json"),  # deeper than the parser goes
        (b"[" * 100000, None),
        (b'{"count": 3}' + b" " * (1 << 20), "application/json"),  # larger than MAX_JSON_BYTES
    ],
)
def test_payloads_that_are_not_json_make_fields_null(
    payload: bytes, content_type: str | None
) -> None:
    msg = json_message(payload, content_type)
    assert truth("payload.count = 3", msg) == "U"
    assert matches("payload.count IS NULL", msg)


def test_a_json_scalar_payload() -> None:
    assert matches("payload = 42", json_message(b"42"))
    assert matches("payload = 'x'", json_message(b'"x"'))
    assert matches("payload.a IS NULL AND payload = 'x'", json_message(b'"x"'))
    assert matches("payload IS NULL", json_message(b"null"))
    assert matches("payload[1] = 2", json_message(b"[1, 2]", None))


def test_a_payload_is_parsed_once_for_many_selectors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = json.loads

    def counting(data: bytes) -> object:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(json, "loads", counting)
    selectors = [compile_selector(f"payload.count = {i} OR payload.unit = 'x'") for i in range(10)]
    msg = json_message()
    assert [s.matches(msg) for s in selectors] == [i == 3 for i in range(10)]
    assert len(calls) == 1
    other = json_message()
    assert selectors[3].matches(other)
    assert len(calls) == 2
    assert not compile_selector("site = 'x'").matches(json_message())
    assert len(calls) == 2  # never parsed when no payload field is reached


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("site =", 6, "unexpected end of selector"),
        ("site = 'lyon", 7, "unterminated string literal"),
        ('"trace-id = 1', 0, "unterminated quoted identifier"),
        ('"" = 1', 0, "empty quoted identifier"),
        ("site == 'x'", 5, "'==': equality is '='"),
        ("site != 'x'", 5, "'!=': not equal is '<>'"),
        ("site = 'x' && n = 1", 11, "unexpected character '&'"),
        ("(n = 1", 6, "expected ')'"),
        ("n = 1)", 5, "unbalanced ')'"),
        ("n = 1 n = 2", 6, "unexpected 'n'"),
        ("a.b = 1", 1, "only payload.FIELD paths have dots"),
        ("payload. = 1", 8, "expected a field name after '.'"),
        ("payload.a[x] = 1", 9, "expected an array index"),
        ("1abc = 1", 0, "malformed number"),
        ("n = 1.2.3", 4, "malformed number"),
        ("n = 1e", 4, "malformed number"),
        ("", None, None),
        ("n + 1", 0, "expected a condition, found a number"),
        ("'x'", 0, "expected a condition, found a string"),
        ("priority", 0, "expected a condition, found a number"),
        ("n = 1 AND 5", 10, "expected a condition, found a number"),
        ("NOT 'x'", 4, "expected a condition, found a string"),
        ("TRUE + 1 = 2", 0, "'+' needs numbers, found a condition"),
        ("n + 'x' = 2", 4, "'+' needs numbers, found a string"),
        ("-'x' = 1", 1, "unary '-' needs numbers"),
        ("redelivered * 2 = 2", 0, "'*' needs numbers, found a condition"),
        ("(n = 1) < TRUE", 1, "'<' does not order conditions"),
        ("n BETWEEN TRUE AND 2", 10, "BETWEEN does not order conditions"),
        ("n BETWEEN 1 OR 2", 12, "expected AND"),
        ("n = 1 = 2", 6, "comparisons do not chain"),
        ("n < 1 BETWEEN 0 AND 2", 6, "comparisons do not chain"),
        ("NULL IS NULL", 0, "NULL is only allowed in IS [NOT] NULL"),
        ("n = NULL", 4, "NULL is only allowed in IS [NOT] NULL"),
        ("n IS 1", 5, "expected NULL"),
        ("n IN ()", 6, "IN lists hold string or number literals"),
        ("n IN (a)", 6, "IN lists hold string or number literals"),
        ("n IN ('a' 'b')", 10, "expected ',' or ')'"),
        ("n IN 'a'", 5, "expected '('"),
        ("n IN (-'a')", 7, "expected a number after the sign"),
        ("(n = 1) IN (1)", 1, "IN needs a value, found a condition"),
        ("n LIKE 5", 7, "LIKE needs a string literal pattern"),
        ("n LIKE word", 7, "LIKE needs a string literal pattern"),
        ("priority LIKE '5'", 0, "LIKE needs a string, found a number"),
        ("n LIKE 'a' ESCAPE 'ab'", 18, "ESCAPE needs a string literal of one character"),
        ("n LIKE 'a' ESCAPE ''", 18, "ESCAPE needs a string literal of one character"),
        (r"n LIKE 'a\' ESCAPE '\'", 7, "the escape character must precede %, _ or itself"),
        (r"n LIKE '\a' ESCAPE '\'", 7, "the escape character must precede %, _ or itself"),
        ("n NOT = 1", 2, "unexpected 'NOT'"),
        ("AND", 0, "unexpected 'AND'"),
        ("n = ,", 4, "unexpected ','"),
    ],
)
def test_errors_name_the_position_and_reason(
    text: str, position: int | None, reason: str | None
) -> None:
    if position is None:
        compile_selector(text)  # an empty selector is no selector
        return
    with pytest.raises(SelectorError) as info:
        compile_selector(text)
    assert info.value.position == position, str(info.value)
    assert reason is not None
    assert reason in info.value.reason
    assert str(info.value) == f"{info.value.reason} at position {position}"
    assert isinstance(info.value, ValueError)


def test_limits() -> None:
    long_ok = "n = 1 OR " * 400 + "TRUE"
    assert len(long_ok) <= MAX_LENGTH
    assert matches(long_ok)
    with pytest.raises(SelectorError, match=f"longer than {MAX_LENGTH}") as info:
        compile_selector("n = 1 OR " * 500 + "TRUE")
    assert info.value.position == MAX_LENGTH

    nested = "(" * (MAX_DEPTH - 2) + "n = 5" + ")" * (MAX_DEPTH - 2)
    assert matches(nested)
    for deep in (
        "(" * MAX_DEPTH + "n = 5" + ")" * MAX_DEPTH,
        "NOT " * MAX_DEPTH + "TRUE",
        "-" * MAX_DEPTH + "n = 5",
        "".join(f"(n{i} = 1 OR " for i in range(MAX_DEPTH)) + "TRUE" + ")" * MAX_DEPTH,
    ):
        with pytest.raises(SelectorError, match=f"nested deeper than {MAX_DEPTH} levels"):
            compile_selector(deep)

    items = ",".join(["4"] * (MAX_IN_ITEMS - 1) + ["5"])
    assert matches(f"n IN ({items})")
    with pytest.raises(SelectorError, match=f"IN list longer than {MAX_IN_ITEMS}") as info:
        compile_selector(f"n IN ({items},6)")
    assert info.value.position == len(f"n IN ({items},")


def test_long_flat_chains_evaluate_without_deep_recursion() -> None:
    ors = " OR ".join(f"n = {i}" for i in range(6, 360))
    assert len(ors) < MAX_LENGTH
    assert truth(ors) == "F"
    sums = "n" + " + n" * 800 + " = 4005"
    assert matches(sums)
    ands = " AND ".join(["flag"] * 400)
    assert matches(ands)


def test_the_tree_depth_is_bounded_even_without_parentheses_nesting() -> None:
    # Each parenthesis level here holds an OR of an AND of a comparison of a sum.
    one = "a OR b AND c = d + ("
    text = one * 20 + "1" + ")" * 20
    with pytest.raises(SelectorError, match="nested deeper"):
        compile_selector(text)


# -- the Selector object -------------------------------------------------------------------


def test_selector_object() -> None:
    selector = compile_selector("site = 'lyon'")
    assert isinstance(selector, Selector)
    assert selector.text == "site = 'lyon'"
    assert selector == compile_selector("site = 'lyon'")
    assert hash(selector) == hash(compile_selector("site = 'lyon'"))
    assert selector != compile_selector("site = 'paris'")
    assert repr(selector) == "Selector(\"site = 'lyon'\")"
    assert selector.matches(SAMPLE) is True
    assert selector.matches(message()) is False


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_a_blank_selector_matches_everything(text: str) -> None:
    assert compile_selector(text).matches(message())


def test_the_selector_modules_import_only_the_standard_library_and_the_message() -> None:
    allowed = {"__future__", "json", "operator", "re", "collections.abc", "dataclasses", "typing"}
    core = Path(selector_module.__file__).parent
    for name in ("selector.py", "selector_parse.py"):
        tree = ast.parse((core / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {alias.name for alias in node.names} <= allowed, name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.module in ("message", "selector_parse"), name
                else:
                    assert node.module in allowed, name
