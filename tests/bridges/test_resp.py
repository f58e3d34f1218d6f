"""The RESP2 codec: commands out, replies in, however the input is split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bridges.resp import (
    CLOSED,
    NEED_DATA,
    ErrorReply,
    Reply,
    RespParser,
    RespProtocolError,
    encode_command,
)


def parse_all(*chunks: bytes) -> list[Reply]:
    parser = RespParser()
    replies: list[Reply] = []
    for chunk in chunks:
        if not chunk:
            continue  # b"" would be EOF
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            assert event is not CLOSED
            replies.append(event)
    return replies


def encode_reply(reply: Reply) -> bytes:
    """The server side, for the round-trip properties."""
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, ErrorReply):
        return b"-" + reply.message.encode() + b"\r\n"
    if isinstance(reply, str):
        return b"+" + reply.encode() + b"\r\n"
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)


LINE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))
REPLIES: st.SearchStrategy[Reply] = st.recursive(
    st.none()
    | st.binary(max_size=40)
    | st.integers()
    | LINE
    | LINE.map(lambda text: ErrorReply(message="ERR " + text)),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


# -- commands --------------------------------------------------------------------------


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command("SET", b"k\r\n", 42, "é") == (
        b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n$2\r\n\xc3\xa9\r\n"
    )


def test_an_empty_argument_is_an_empty_bulk_string() -> None:
    assert encode_command("GET", b"") == b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"


@pytest.mark.parametrize("bad", [1.5, True, None, ["x"]])
def test_a_command_argument_of_another_type_is_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_command("SET", bad)  # type: ignore[arg-type]


def test_a_command_has_a_name() -> None:
    with pytest.raises(ValueError, match="at least one"):
        encode_command()


# -- replies ---------------------------------------------------------------------------


def test_each_reply_type() -> None:
    data = b"+OK\r\n-WRONGTYPE Operation against a key\r\n:-7\r\n$5\r\nhe\r\no\r\n$0\r\n\r\n"
    assert parse_all(data) == [
        "OK",
        ErrorReply(message="WRONGTYPE Operation against a key"),
        -7,
        b"he\r\no",
        b"",
    ]


def test_an_error_reply_has_its_prefix_as_code() -> None:
    assert ErrorReply(message="BUSYGROUP Consumer Group name already exists").code == "BUSYGROUP"
    assert ErrorReply(message="ERR").code == "ERR"


def test_null_bulk_and_null_array_are_none_and_empty_array_is_a_list() -> None:
    assert parse_all(b"$-1\r\n*-1\r\n*0\r\n") == [None, None, []]


def test_nested_arrays() -> None:
    # An XREADGROUP reply: [[key, [[id, [field, value]]]]], and an XAUTOCLAIM one.
    data = (
        b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        b"*2\r\n$3\r\n2-0\r\n*-1\r\n"
        b"*3\r\n$3\r\n0-0\r\n*0\r\n*1\r\n$3\r\n3-0\r\n"
    )
    assert parse_all(data) == [
        [[b"s", [[b"1-0", [b"f", b"v"]], [b"2-0", None]]]],
        [b"0-0", [], [b"3-0"]],
    ]


def test_an_array_ending_in_empty_and_null_arrays() -> None:
    assert parse_all(b"*3\r\n:1\r\n*0\r\n*-1\r\n") == [[1, [], None]]


def test_a_reply_split_at_every_byte() -> None:
    data = b"*3\r\n+OK\r\n*2\r\n$3\r\na\r\n\r\n$-1\r\n:12\r\n-ERR no\r\n"
    expected = [["OK", [b"a\r\n", None], 12], ErrorReply(message="ERR no")]
    for cut in range(len(data) + 1):
        assert parse_all(data[:cut], data[cut:]) == expected
    assert parse_all(*(data[i : i + 1] for i in range(len(data)))) == expected


def test_every_strict_prefix_needs_data() -> None:
    data = b"*2\r\n$3\r\nabc\r\n*1\r\n:5\r\n"
    for cut in range(len(data)):
        assert parse_all(data[:cut]) == []


def test_eof_between_replies_is_closed() -> None:
    parser = RespParser()
    parser.receive_data(b"+OK\r\n")
    parser.receive_data(b"")
    assert parser.next_event() == "OK"
    assert parser.next_event() is CLOSED


@pytest.mark.parametrize("partial", [b"+O", b"$3\r\nab", b"*2\r\n:1\r\n"])
def test_eof_in_the_middle_of_a_reply_is_an_error(partial: bytes) -> None:
    parser = RespParser()
    parser.receive_data(partial)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    with pytest.raises(RespProtocolError, match="middle"):
        parser.next_event()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"!3\r\n", "unknown reply type"),
        (b":x\r\n", "invalid integer"),
        (b"$abc\r\n", "invalid bulk length"),
        (b"$-2\r\n", "out of range"),
        (b"*-5\r\n", "out of range"),
        (b"$2\r\nabcd\r\n", "CRLF"),
        (b"+" + b"x" * 70_000, "too long"),
        (b"*1\r\n" * 40, "nested too deep"),
    ],
)
def test_malformed_input_is_a_protocol_error(data: bytes, match: str) -> None:
    parser = RespParser()
    parser.receive_data(data)
    with pytest.raises(RespProtocolError, match=match):
        parser.next_event()


@given(st.lists(REPLIES, max_size=5), st.data())
def test_round_trip_however_split(replies: list[Reply], data: st.DataObject) -> None:
    wire = b"".join(encode_reply(reply) for reply in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert parse_all(*chunks) == replies


@given(st.binary(max_size=200))
def test_garbage_raises_only_the_protocol_error(data: bytes) -> None:
    parser = RespParser()
    if data:
        parser.receive_data(data)
    parser.receive_data(b"")
    try:
        while parser.next_event() is not CLOSED:
            pass
    except RespProtocolError:
        pass
