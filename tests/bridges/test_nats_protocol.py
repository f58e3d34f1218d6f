"""gateway.bridges.nats_protocol: the sans-I/O NATS codec, and the bridge's pure
mapping (sources, headers); no server, no I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bridges.base import ORIGIN_HEADER
from gateway.bridges.nats_protocol import (
    CLOSED,
    NEED_DATA,
    Connect,
    Err,
    Event,
    HMsg,
    HPub,
    Info,
    JetStreamSource,
    Msg,
    NatsConnection,
    NatsProtocolError,
    Ok,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    encode,
    encode_headers,
    inbound_message,
    outbound_headers,
    parse_headers,
    parse_source,
    valid_subject,
)
from gateway.core.message import Message

INFO = b'INFO {"server_id":"x","version":"2.10.0","max_payload":1048576,"headers":true} \r\n'
STREAM = (
    INFO
    + b"PING\r\n"
    + b"MSG a.b 1  5\r\nhello\r\n"  # the server writes an empty reply-to as two spaces
    + b"MSG a.b 2 _INBOX.x.1 0\r\n\r\n"
    + b"HMSG a.c 3 $JS.ACK.S.D.1.1.1.1.0 18 21\r\nNATS/1.0\r\nA: b\r\n\r\nhey\r\n"
    + b"HMSG _INBOX.x.pull 4  28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n"
    + b"HMSG _INBOX.x.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    + b"PONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\n"
)
EVENTS: list[Event] = [
    Info(data={"server_id": "x", "version": "2.10.0", "max_payload": 1048576, "headers": True}),
    Ping(),
    Msg(subject="a.b", sid="1", reply=None, payload=b"hello"),
    Msg(subject="a.b", sid="2", reply="_INBOX.x.1", payload=b""),
    HMsg(
        subject="a.c",
        sid="3",
        reply="$JS.ACK.S.D.1.1.1.1.0",
        headers=(("A", "b"),),
        payload=b"hey",
    ),
    HMsg(
        subject="_INBOX.x.pull",
        sid="4",
        reply=None,
        headers=(),
        payload=b"",
        status=404,
        description="No Messages",
    ),
    HMsg(subject="_INBOX.x.2", sid="1", reply=None, headers=(), payload=b"", status=503),
    Pong(),
    Ok(),
    Err(message="Authorization Violation"),
]


def feed(conn: NatsConnection, data: bytes) -> None:
    """``data`` read from the stream (b"" would mean its end: nothing is fed then)."""
    if data:
        conn.receive_data(data)


def drain(conn: NatsConnection) -> list[Event]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert event is not CLOSED
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
    return events


def test_whole_stream() -> None:
    conn = NatsConnection()
    conn.receive_data(STREAM)
    assert drain(conn) == EVENTS
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_split_at_every_byte() -> None:
    for cut in range(len(STREAM) + 1):
        conn = NatsConnection()
        feed(conn, STREAM[:cut])
        events = drain(conn)
        feed(conn, STREAM[cut:])
        assert events + drain(conn) == EVENTS, cut


def test_byte_at_a_time() -> None:
    conn = NatsConnection()
    events = []
    for i in range(len(STREAM)):
        feed(conn, STREAM[i : i + 1])
        events += drain(conn)
    assert events == EVENTS


def test_every_strict_prefix_of_an_operation_needs_data() -> None:
    frame = b"HMSG a.c 3 r 18 21\r\nNATS/1.0\r\nA: b\r\n\r\nhey\r\n"
    for cut in range(len(frame)):
        conn = NatsConnection()
        feed(conn, frame[:cut])
        assert conn.next_event() is NEED_DATA, cut


def test_operations_are_case_insensitive_and_tabs_separate() -> None:
    conn = NatsConnection()
    conn.receive_data(b"ping\r\npong\nmsg\ta.b\t7\t\t2\r\nhi\r\n")
    assert drain(conn) == [Ping(), Pong(), Msg(subject="a.b", sid="7", reply=None, payload=b"hi")]


def test_headers_with_status_repeats_and_blanks() -> None:
    block = (
        b"NATS/1.0 408 Request Timeout\r\n"
        b"Nats-Pending-Messages: 4\r\nNats-Pending-Bytes:0\r\nX:  two words  \r\nX: again\r\n\r\n"
    )
    headers, status, description = parse_headers(block)
    assert (status, description) == (408, "Request Timeout")
    assert headers == (
        ("Nats-Pending-Messages", "4"),
        ("Nats-Pending-Bytes", "0"),
        ("X", "two words"),
        ("X", "again"),
    )
    assert parse_headers(b"NATS/1.0\r\n\r\n") == ((), None, "")
    assert parse_headers(b"NATS/1.0 100 Idle Heartbeat\r\n\r\n")[1:] == (100, "Idle Heartbeat")


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (b"HTTP/1.1\r\n\r\n", "not NATS/1.0"),
        (b"NATS/1.0 abc\r\n\r\n", "bad status"),
        (b"NATS/1.0\r\nno colon\r\n\r\n", "bad header line"),
        (b"NATS/1.0\r\n: empty name\r\n\r\n", "bad header line"),
        (b"NATS/1.0\r\nA: b\r\n", "empty line"),
    ],
)
def test_bad_header_blocks(block: bytes, problem: str) -> None:
    with pytest.raises(NatsProtocolError, match=problem):
        parse_headers(block)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"NOPE\r\n", "unknown operation"),
        (b"\r\n", "unknown operation"),
        (b"MSG a 1 x\r\n", "bad size"),
        (b"MSG a\r\n", "MSG with 1 arguments"),
        (b"MSG a 1 r s 5\r\n", "MSG with 5 arguments"),
        (b"HMSG a 1 10 5\r\n", "header size larger"),
        (b"MSG a 1 2\r\nhiXY", "not followed by CRLF"),
        (b"INFO nope\r\n", "not JSON"),
        (b"INFO [1]\r\n", "not a JSON object"),
        (b"MSG a 1 " + b"9" * 5000, "control line too long"),
        (b"MSG a 1 2000\r\n", "more than 1000"),
        (b"HMSG a 1 6 6\r\nxx\r\n\r\n\r\n", "not NATS/1.0"),
    ],
)
def test_malformed_input_raises_and_keeps_raising(data: bytes, problem: str) -> None:
    conn = NatsConnection(max_payload=1000)
    conn.receive_data(data)
    with pytest.raises(NatsProtocolError, match=problem):
        conn.next_event()
    with pytest.raises(NatsProtocolError, match=problem):
        conn.next_event()


def test_end_of_stream_inside_an_operation() -> None:
    conn = NatsConnection()
    conn.receive_data(b"MSG a 1 5\r\nhel")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(NatsProtocolError, match="ended within an operation"):
        conn.next_event()


def test_encode_client_operations() -> None:
    connect = encode(Connect(options={"verbose": False, "name": "n"}))
    assert connect == b'CONNECT {"verbose":false,"name":"n"}\r\n'
    assert encode(Pub(subject="a.b", payload=b"hi")) == b"PUB a.b 2\r\nhi\r\n"
    assert (
        encode(Pub(subject="a", payload=b"", reply="_INBOX.x.1")) == b"PUB a _INBOX.x.1 0\r\n\r\n"
    )
    hpub = encode(HPub(subject="a", headers=(("A", "b"),), payload=b"hey", reply="r"))
    assert hpub == b"HPUB a r 18 21\r\nNATS/1.0\r\nA: b\r\n\r\nhey\r\n"
    assert (
        encode(HPub(subject="a", headers=(), payload=b""))
        == b"HPUB a 12 12\r\nNATS/1.0\r\n\r\n\r\n"
    )
    assert encode(Sub(subject="orders.>", sid="2")) == b"SUB orders.> 2\r\n"
    assert encode(Sub(subject="a.*", sid="3", queue="workers")) == b"SUB a.* workers 3\r\n"
    assert encode(Unsub(sid="2")) == b"UNSUB 2\r\n"
    assert encode(Unsub(sid="2", max_msgs=5)) == b"UNSUB 2 5\r\n"
    assert encode(Ping()) == b"PING\r\n"
    assert encode(Pong()) == b"PONG\r\n"
    assert encode_headers([], 503) == b"NATS/1.0 503\r\n\r\n"


@pytest.mark.parametrize(
    "op",
    [
        Pub(subject="a b", payload=b""),
        Pub(subject="a.*", payload=b""),
        Pub(subject="", payload=b""),
        Pub(subject="a", payload=b"", reply="r r"),
        Sub(subject="a.>.b", sid="1"),
        Sub(subject="a..b", sid="1"),
        HPub(subject="a", headers=(("A:B", "v"),), payload=b""),
        HPub(subject="a", headers=(("A", "v\r\nX: injected"),), payload=b""),
    ],
)
def test_encode_refuses_what_cannot_be_written(op: Pub | Sub | HPub) -> None:
    with pytest.raises(ValueError, match=r"invalid|line break"):
        encode(op)


def test_valid_subject() -> None:
    assert valid_subject("a.b.c")
    assert valid_subject("$JS.API.STREAM.CREATE.S")
    assert not valid_subject("a.>")
    assert valid_subject("a.>", wildcards=True)
    assert valid_subject("*.b.>", wildcards=True)
    assert not valid_subject("a.>.b", wildcards=True)
    assert not valid_subject("a.b.")
    assert not valid_subject(".a")
    assert not valid_subject("a\tb")


_names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=10,
)
_values = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20
).map(str.strip)


@given(
    headers=st.lists(st.tuples(_names, _values), max_size=5),
    payload=st.binary(max_size=50),
    status=st.none() | st.integers(100, 599),
    cut=st.integers(0, 200),
)
def test_hmsg_round_trip(
    headers: list[tuple[str, str]], payload: bytes, status: int | None, cut: int
) -> None:
    block = encode_headers(headers, status)
    frame = f"HMSG s.t 9 r {len(block)} {len(block) + len(payload)}\r\n".encode()
    data = frame + block + payload + b"\r\n"
    conn = NatsConnection()
    feed(conn, data[:cut])
    events = drain(conn)
    feed(conn, data[cut:])
    events += drain(conn)
    expected = HMsg(
        subject="s.t", sid="9", reply="r", headers=tuple(headers), payload=payload, status=status
    )
    assert events == [expected]


@given(st.binary(max_size=300))
def test_garbage_raises_only_the_protocol_error(data: bytes) -> None:
    conn = NatsConnection(max_payload=100)
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        while conn.next_event() is not CLOSED:
            pass
    except NatsProtocolError:
        pass


# ------------------------------------------------------------------ the bridge's mapping


def test_parse_source() -> None:
    assert parse_source("orders.>") == "orders.>"
    assert parse_source("jetstream:S/D") == JetStreamSource("S", "D")
    assert parse_source("jetstream:S/D/orders.*.new") == JetStreamSource("S", "D", "orders.*.new")
    for bad in ("a b", "jetstream:S", "jetstream:/D", "jetstream:S.x/D", "jetstream:S/D/a..b"):
        with pytest.raises(ValueError):  # noqa: PT011
            parse_source(bad)


def test_headers_out_and_back() -> None:
    message = Message(
        destination="a/b",
        payload=b"{}",
        headers={"x-a": "1", "bad name": "dropped", "content-type": "overridden", "x-b": "l\r\nf"},
        content_type="application/json",
        correlation_id=b"\xffid",
        reply_to="back",
        priority=9,
        expiry=1700000000.5,
    )
    headers = outbound_headers(message, (ORIGIN_HEADER, "bridge"))
    assert headers == (
        ("x-a", "1"),
        ("x-b", "l  f"),
        (ORIGIN_HEADER, "bridge"),
        ("Nats-Msg-Id", str(message.message_id)),
        ("content-type", "application/json"),
        ("correlation-id", "\ufffdid"),
        ("reply-to", "back"),
        ("priority", "9"),
        ("expires", "1700000000500"),
    )
    back = inbound_message(headers, b"{}", 1)
    assert back.headers == {"x-a": "1", "x-b": "l  f", ORIGIN_HEADER: "bridge"}
    assert (back.content_type, back.correlation_id, back.reply_to) == (
        "application/json",
        "\ufffdid".encode(),
        "back",
    )
    assert (back.priority, back.expiry, back.qos, back.text) == (9, 1700000000.5, 1, False)
    assert back.message_id != message.message_id


def test_inbound_fields_that_do_not_parse_stay_headers() -> None:
    message = inbound_message([("Priority", "high"), ("Expires", "soon"), ("x", "y")], b"", 0)
    assert (message.priority, message.expiry) == (4, None)
    assert message.headers == {"priority": "high", "expires": "soon", "x": "y"}
    plain = outbound_headers(Message(destination="a", payload=b""), (ORIGIN_HEADER, "b"))
    assert [name for name, _ in plain] == [ORIGIN_HEADER, "Nats-Msg-Id"]
    assert json.loads(encode(Connect(options={"a": [1]}))[8:]) == {"a": [1]}
