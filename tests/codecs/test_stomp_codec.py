"""The sans-I/O STOMP 1.0/1.1/1.2 codec: spec examples, properties and protocol rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.stomp import (
    CLOSED,
    HEARTBEAT,
    NEED_DATA,
    VERSIONS,
    Event,
    Frame,
    Heartbeat,
    Role,
    State,
    STOMPConnection,
    StompError,
    encode_frame,
    negotiate,
    parse_heartbeat,
)

CONNECT_12 = b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:h\n\n\x00"

# Required headers, by version and command (spec "Frames and Headers", 1.1 and 1.0 texts).
REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    "1.0": {
        "SEND": ("destination",),
        "SUBSCRIBE": ("destination",),
        "UNSUBSCRIBE": ("id",),  # or destination
        "ACK": ("message-id",),
        "BEGIN": ("transaction",),
        "COMMIT": ("transaction",),
        "ABORT": ("transaction",),
        "DISCONNECT": (),
        "MESSAGE": ("destination", "message-id"),
        "RECEIPT": ("receipt-id",),
        "ERROR": (),
    },
    "1.1": {
        "SEND": ("destination",),
        "SUBSCRIBE": ("destination", "id"),
        "UNSUBSCRIBE": ("id",),
        "ACK": ("message-id", "subscription"),
        "NACK": ("message-id", "subscription"),
        "BEGIN": ("transaction",),
        "COMMIT": ("transaction",),
        "ABORT": ("transaction",),
        "DISCONNECT": (),
        "MESSAGE": ("destination", "message-id", "subscription"),
        "RECEIPT": ("receipt-id",),
        "ERROR": (),
    },
    "1.2": {
        "SEND": ("destination",),
        "SUBSCRIBE": ("destination", "id"),
        "UNSUBSCRIBE": ("id",),
        "ACK": ("id",),
        "NACK": ("id",),
        "BEGIN": ("transaction",),
        "COMMIT": ("transaction",),
        "ABORT": ("transaction",),
        "DISCONNECT": (),
        "MESSAGE": ("destination", "message-id", "subscription"),
        "RECEIPT": ("receipt-id",),
        "ERROR": (),
    },
}
SERVER_FRAMES = ("MESSAGE", "RECEIPT", "ERROR")


# --------------------------------------------------------------------------- helpers


def drain(conn: STOMPConnection) -> list[Event]:
    """Every event available now, ending with CLOSED if the stream ended (never NEED_DATA)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if event is CLOSED:
            return events


def limited(conn: STOMPConnection, limits: dict[str, int]) -> STOMPConnection:
    """Set limits after the handshake, which they might not allow."""
    for name, value in limits.items():
        setattr(conn, name, value)
    return conn


def server(version: str | None = "1.2", **limits: int) -> STOMPConnection:
    """A server that received a CONNECT and, unless ``version`` is None, answered it."""
    conn = STOMPConnection(Role.SERVER)
    conn.receive_data(CONNECT_12)
    assert isinstance(conn.next_event(), Frame)
    if version is not None:
        conn.send(Frame.build("CONNECTED", version=version))
        assert conn.version == version
    return limited(conn, limits)


def client(version: str | None = "1.2", **limits: int) -> STOMPConnection:
    """A client that sent a CONNECT and, unless ``version`` is None, got CONNECTED."""
    conn = STOMPConnection(Role.CLIENT)
    conn.send(Frame.build("CONNECT", {"accept-version": "1.0,1.1,1.2", "host": "h"}))
    if version is not None:
        conn.receive_data(b"CONNECTED\nversion:" + version.encode() + b"\n\n\x00")
        assert isinstance(conn.next_event(), Frame)
        assert conn.version == version
    return limited(conn, limits)


def receiver(command: str, version: str | None = "1.2", **kwargs: int) -> STOMPConnection:
    """A connected connection on the side that receives ``command``."""
    if command in ("MESSAGE", "RECEIPT", "ERROR", "CONNECTED"):
        return client(version, **kwargs)
    return server(version, **kwargs)


def status(conn: STOMPConnection) -> tuple[str | None, State]:
    return conn.version, conn.state


def feed(conn: STOMPConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def one(conn: STOMPConnection, data: bytes) -> Frame:
    """Feed ``data``, which must hold exactly one frame."""
    events = feed(conn, data)
    assert len(events) == 1, events
    assert isinstance(events[0], Frame)
    return events[0]


def refused(conn: STOMPConnection, data: bytes, message: str) -> StompError:
    conn.receive_data(data)
    with pytest.raises(StompError) as info:
        drain(conn)
    assert info.value.message == message, info.value
    return info.value


# ------------------------------------------------------------------ spec examples


def test_spec_connect_and_connected() -> None:
    srv = STOMPConnection(Role.SERVER)
    assert srv.version is None
    frame = one(srv, b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\x00")
    assert frame == Frame(
        command="CONNECT", headers=(("accept-version", "1.2"), ("host", "stomp.github.org"))
    )
    assert srv.state is State.CONNECTING
    data = srv.send(Frame.build("CONNECTED", version="1.2"))
    assert data == b"CONNECTED\nversion:1.2\n\n\x00"
    assert status(srv) == ("1.2", State.CONNECTED)

    cli = STOMPConnection(Role.CLIENT)
    assert cli.send(frame) == b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\x00"
    assert one(cli, data) == Frame(command="CONNECTED", headers=(("version", "1.2"),))
    assert status(cli) == ("1.2", State.CONNECTED)


def test_spec_negotiation_example() -> None:
    srv = STOMPConnection(Role.SERVER)
    frame = one(srv, b"CONNECT\naccept-version:1.0,1.1,2.0\nhost:stomp.github.org\n\n\x00")
    version = negotiate(frame.get("accept-version"))
    assert version == "1.1"
    assert srv.send(Frame.build("CONNECTED", version=version)) == b"CONNECTED\nversion:1.1\n\n\x00"
    assert srv.version == "1.1"


def test_spec_no_common_version_error_reaches_an_unconnected_client() -> None:
    cli = client(None)
    data = (
        b"ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\n"
        b"Supported protocol versions are 1.2 2.1\x00"
    )
    frame = one(cli, data)
    assert frame.get("version") == "1.2,2.1"
    assert frame.body == b"Supported protocol versions are 1.2 2.1"
    assert cli.state is State.CLOSED
    assert cli.version is None


@pytest.mark.parametrize(
    ("data", "command", "headers", "body"),
    [
        (
            b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\x00",
            "SEND",
            (("destination", "/queue/a"), ("content-type", "text/plain")),
            b"hello queue a\n",
        ),
        (
            b"SEND\ndestination:/queue/a\nreceipt:message-12345\n\nhello queue a\x00",
            "SEND",
            (("destination", "/queue/a"), ("receipt", "message-12345")),
            b"hello queue a",
        ),
        (
            b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\x00",
            "SUBSCRIBE",
            (("id", "0"), ("destination", "/queue/foo"), ("ack", "client")),
            b"",
        ),
        (b"UNSUBSCRIBE\nid:0\n\n\x00", "UNSUBSCRIBE", (("id", "0"),), b""),
        (
            b"ACK\nid:12345\ntransaction:tx1\n\n\x00",
            "ACK",
            (("id", "12345"), ("transaction", "tx1")),
            b"",
        ),
        (b"NACK\nid:12345\n\n\x00", "NACK", (("id", "12345"),), b""),
        (b"BEGIN\ntransaction:tx1\n\n\x00", "BEGIN", (("transaction", "tx1"),), b""),
        (b"COMMIT\ntransaction:tx1\n\n\x00", "COMMIT", (("transaction", "tx1"),), b""),
        (b"ABORT\ntransaction:tx1\n\n\x00", "ABORT", (("transaction", "tx1"),), b""),
        # The spec's DISCONNECT and RECEIPT examples have no blank line before the NUL.
        (b"DISCONNECT\nreceipt:77\n\x00", "DISCONNECT", (("receipt", "77"),), b""),
        (b"RECEIPT\nreceipt-id:77\n\x00", "RECEIPT", (("receipt-id", "77"),), b""),
        (
            b"RECEIPT\nreceipt-id:message-12345\n\n\x00",
            "RECEIPT",
            (("receipt-id", "message-12345"),),
            b"",
        ),
        (
            b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\n"
            b"content-type:text/plain\n\nhello queue a\x00",
            "MESSAGE",
            (
                ("subscription", "0"),
                ("message-id", "007"),
                ("destination", "/queue/a"),
                ("content-type", "text/plain"),
            ),
            b"hello queue a",
        ),
    ],
)
def test_spec_1_2_examples(
    data: bytes, command: str, headers: tuple[tuple[str, str], ...], body: bytes
) -> None:
    assert one(receiver(command), data) == Frame(command=command, headers=headers, body=body)


ERROR_BODY = (
    b"The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\n"
    b"Hello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\n"
    b"for message propagation.\n"
)


def _spec_error(length: int) -> bytes:
    return (
        (
            b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:%d\n"
            b"message: malformed frame received\n\n" % length
        )
        + ERROR_BODY
        + b"\x00"
    )


def test_spec_error_example_with_its_body_length() -> None:
    # The spec says content-length:171; the body it shows is 170 bytes.
    assert len(ERROR_BODY) == 170
    frame = one(client(), _spec_error(170))
    assert frame.body == ERROR_BODY
    assert frame.get("message") == " malformed frame received"  # never trimmed
    assert frame.get("receipt-id") == "message-12345"


def test_spec_error_example_as_printed_is_a_content_length_mismatch() -> None:
    # Its NUL is read as the 171st body byte; the frame then waits for its own NUL.
    conn = client()
    assert feed(conn, _spec_error(171)) == []
    refused(conn, b"\n", "content-length mismatch")


def test_spec_1_1_ack_example() -> None:
    frame = one(server("1.1"), b"ACK\nsubscription:0\nmessage-id:007\ntransaction:tx1\n\n\x00")
    assert frame.headers == (("subscription", "0"), ("message-id", "007"), ("transaction", "tx1"))


def test_spec_1_0_examples_keep_padding() -> None:
    srv = STOMPConnection(Role.SERVER)
    connect = one(srv, b"CONNECT\nlogin: <username>\npasscode:<passcode>\n\n\x00")
    assert connect.get("login") == " <username>"
    assert negotiate(connect.get("accept-version")) == "1.0"
    srv.send(Frame.build("CONNECTED", session="<session-id>"))
    assert srv.version == "1.0"
    sub = one(srv, b"SUBSCRIBE\ndestination: /queue/foo\nack: client\n\n\x00")
    assert sub.headers == (("destination", " /queue/foo"), ("ack", " client"))
    assert one(srv, b"UNSUBSCRIBE\ndestination: /queue/a\n\n\x00").get("destination") == " /queue/a"
    ack = one(srv, b"ACK\nmessage-id: <message-identifier>\ntransaction: <tx>\n\n\x00")
    assert ack.get("message-id") == " <message-identifier>"

    cli = STOMPConnection(Role.CLIENT)
    one(cli, b"CONNECTED\nsession: <session-id>\n\n\x00")
    assert cli.version == "1.0"


# ---------------------------------------------------------------- value encoding


def test_1_1_unescapes_lf_colon_backslash() -> None:
    frame = one(server("1.1"), b"SEND\ndestination:/q\nk\\cey:a\\nb\\\\c\\cd\n\n\x00")
    assert frame.headers[1] == ("k:ey", "a\nb\\c:d")


def test_1_2_also_unescapes_cr() -> None:
    frame = one(server("1.2"), b"SEND\ndestination:/q\nk:a\\rb\\n\\c\\\\\n\n\x00")
    assert frame.get("k") == "a\rb\n:\\"


@pytest.mark.parametrize(
    ("version", "escape"),
    [("1.1", b"\\r"), ("1.1", b"\\t"), ("1.2", b"\\t"), ("1.2", b"\\x"), ("1.2", b"\\C")],
)
def test_undefined_escape_is_fatal(version: str, escape: bytes) -> None:
    err = refused(
        server(version),
        b"SEND\ndestination:/q\nk:a" + escape + b"b\n\n\x00",
        "invalid header escape",
    )
    assert version in err.detail


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_trailing_backslash_is_fatal(version: str) -> None:
    refused(server(version), b"SEND\ndestination:/q\nk:ab\\\n\n\x00", "invalid header escape")


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_escape_in_a_header_name_is_fatal_too(version: str) -> None:
    refused(server(version), b"SEND\ndestination:/q\nk\\t:v\n\n\x00", "invalid header escape")


def test_1_0_has_no_escapes() -> None:
    frame = one(server("1.0"), b"SEND\ndestination:/q\nk:a\\nb\\t\\\n\n\x00")
    assert frame.get("k") == "a\\nb\\t\\"


def test_connect_and_connected_are_never_unescaped() -> None:
    srv = STOMPConnection(Role.SERVER)
    frame = one(srv, b"CONNECT\naccept-version:1.2\nhost:h\npasscode:a\\cb\\t\n\n\x00")
    assert frame.get("passcode") == "a\\cb\\t"
    cli = client(None)
    frame = one(cli, b"CONNECTED\nversion:1.2\nserver:x\\cy\n\n\x00")
    assert frame.get("server") == "x\\cy"
    # STOMP is handled the same way as CONNECT.
    frame = one(STOMPConnection(), b"STOMP\naccept-version:1.2\nhost:h\nlogin:\\u\n\n\x00")
    assert frame.get("login") == "\\u"


def test_error_before_connected_is_read_without_escapes() -> None:
    frame = one(client(None), b"ERROR\nmessage:bad\\cthing\n\n\x00")
    assert frame.get("message") == "bad\\cthing"


def test_raw_colon_in_a_value_is_accepted() -> None:
    assert one(server("1.2"), b"SEND\ndestination:a:b:c\n\n\x00").get("destination") == "a:b:c"


SPECIAL = Frame.build("MESSAGE", {"k:\\": "a:b\nc\\d\re"})


def test_encoding_1_2_escapes_everything() -> None:
    assert encode_frame(SPECIAL, "1.2") == b"MESSAGE\nk\\c\\\\:a\\cb\\nc\\\\d\\re\n\n\x00"


def test_encoding_1_1_cannot_escape_cr_but_keeps_it_raw_inside_a_value() -> None:
    assert encode_frame(SPECIAL, "1.1") == b"MESSAGE\nk\\c\\\\:a\\cb\\nc\\\\d\re\n\n\x00"
    frame = one(client("1.1"), encode_frame(Frame.build("RECEIPT", {"receipt-id": "a\rb"}), "1.1"))
    assert frame.get("receipt-id") == "a\rb"
    with pytest.raises(ValueError, match="ending in CR"):
        encode_frame(Frame.build("RECEIPT", {"receipt-id": "a\r"}), "1.1")


@pytest.mark.parametrize("version", ["1.0", None])
def test_encoding_without_escapes(version: str | None) -> None:
    frame = Frame.build("MESSAGE", {"k": "a:b\\n"})
    assert encode_frame(frame, version) == b"MESSAGE\nk:a:b\\n\n\n\x00"
    for bad in ({"k": "a\nb"}, {"k:": "v"}, {"k\n": "v"}, {"k": "v\r"}):
        with pytest.raises(ValueError, match="cannot be sent"):
            encode_frame(Frame.build("MESSAGE", bad), version)


def test_connect_frames_are_encoded_without_escapes_in_any_session() -> None:
    frame = Frame.build("CONNECTED", {"version": "1.2", "server": "a:b\\"})
    assert encode_frame(frame, "1.2") == b"CONNECTED\nversion:1.2\nserver:a:b\\\n\n\x00"
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_frame(Frame.build("CONNECT", {"passcode": "a\nb"}), "1.2")


def test_encoding_refuses_what_cannot_be_read_back() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_frame(Frame.build("SEND", {"": "v"}), "1.2")
    with pytest.raises(ValueError, match="NUL"):
        encode_frame(Frame.build("SEND", {"\x00k": "v"}), "1.2")
    with pytest.raises(ValueError, match="command"):
        encode_frame(Frame(command="SE\nND"), "1.2")
    with pytest.raises(ValueError, match="command"):
        encode_frame(Frame(command=""), "1.2")


def test_escaped_header_round_trips_in_each_version() -> None:
    for version, value in (("1.0", "a:b\\c"), ("1.1", "a:b\nc\\d\re"), ("1.2", "a:\r\n\\:")):
        frame = Frame.build(
            "MESSAGE", {"destination": value, "message-id": "1", "subscription": "s"}
        )
        assert one(client(version), client(version).send(frame)) == frame
        send = Frame.build("SEND", {"destination": value, "x:y" if version != "1.0" else "x": "é"})
        assert one(server(version), client(version).send(send)) == send


# ------------------------------------------------------------- headers and bodies


def test_repeated_headers_first_wins_all_kept() -> None:
    data = b"MESSAGE\ndestination:/q\nmessage-id:1\nsubscription:0\nfoo:World\nfoo:Hello\n\n\x00"
    frame = one(client(), data)
    assert frame.get("foo") == "World"
    assert frame.get_all("foo") == ("World", "Hello")
    assert frame.headers[-2:] == (("foo", "World"), ("foo", "Hello"))
    assert client().send(frame) == data  # wire order kept


def test_frame_get_and_build() -> None:
    frame = Frame.build("SEND", {"destination": "/q"}, "héllo", content_type="text/plain", x_y="1")
    assert frame == Frame(
        command="SEND",
        headers=(("destination", "/q"), ("content-type", "text/plain"), ("x-y", "1")),
        body="héllo".encode(),
    )
    assert frame.get("nope") is None
    assert frame.get("nope", "d") == "d"
    assert frame.get_all("nope") == ()
    assert Frame.build("ACK", [("id", "1"), ("id", "2")]).get("id") == "1"


def test_content_length_body_may_hold_nul() -> None:
    body = b"\x00a\x00\x00b\x00"
    data = b"SEND\ndestination:/q\ncontent-length:6\n\n" + body + b"\x00"
    frame = one(server(), data)
    assert frame.body == body
    assert frame.get("content-length") == "6"
    assert feed(server(), data + b"\n" + data) == [frame, HEARTBEAT, frame]


def test_repeated_content_length_uses_the_first() -> None:
    data = b"SEND\ndestination:/q\ncontent-length:2\ncontent-length:5\n\nab\x00"
    assert one(server(), data).body == b"ab"


def test_missing_nul_after_content_length_is_refused() -> None:
    err = refused(
        server(),
        b"SEND\ndestination:/q\nreceipt:r9\ncontent-length:2\n\nabc\x00",
        "content-length mismatch",
    )
    assert err.receipt == "r9"
    assert err.error_frame().get("receipt-id") == "r9"


def test_frame_without_blank_line_cannot_announce_a_body() -> None:
    assert one(server(), b"SEND\ndestination:/q\ncontent-length:0\n\x00").body == b""
    refused(server(), b"SEND\ndestination:/q\ncontent-length:2\n\x00", "content-length mismatch")


def test_zero_content_length() -> None:
    assert one(server(), b"SEND\ndestination:/q\ncontent-length:0\n\n\x00").body == b""
    refused(server(), b"SEND\ndestination:/q\ncontent-length:0\n\nx\x00", "content-length mismatch")


@pytest.mark.parametrize("value", [b"-1", b"+1", b" 1", b"1 ", b"0x1", b"", b"\xd9\xa1", b"1_0"])
def test_invalid_content_length_is_refused(value: bytes) -> None:
    refused(
        server(),
        b"SEND\ndestination:/q\ncontent-length:" + value + b"\n\n\x00",
        "invalid content-length",
    )


def test_without_content_length_the_body_ends_at_the_first_nul() -> None:
    conn = server()
    data = b"SEND\ndestination:/q\n\nhello\x00SEND\ndestination:/r\n\n\x00"
    first, second = feed(conn, data)
    assert isinstance(first, Frame)
    assert isinstance(second, Frame)
    assert (first.body, second.body, second.get("destination")) == (b"hello", b"", "/r")


def test_encoder_adds_content_length_and_checks_a_given_one() -> None:
    assert encode_frame(Frame.build("SEND", {"destination": "/q"}, b"a\x00")) == (
        b"SEND\ndestination:/q\ncontent-length:2\n\na\x00\x00"
    )
    given_length = Frame.build("SEND", [("content-length", "2"), ("destination", "/q")], b"ab")
    assert encode_frame(given_length) == b"SEND\ncontent-length:2\ndestination:/q\n\nab\x00"
    assert encode_frame(Frame.build("MESSAGE", body=b"")) == b"MESSAGE\n\n\x00"
    assert encode_frame(Frame(command="ERROR", body=b"x")) == b"ERROR\ncontent-length:1\n\nx\x00"
    mention = Frame.build("SEND", {"x": "content-length"}, b"ab")
    assert encode_frame(mention) == b"SEND\nx:content-length\ncontent-length:2\n\nab\x00"
    for bad in ("3", "x", "-2"):
        with pytest.raises(ValueError, match="content-length"):
            encode_frame(Frame.build("SEND", {"content-length": bad}, b"ab"))


def test_crlf_line_endings() -> None:
    conn = STOMPConnection()
    connect, beat = feed(conn, b"CONNECT\r\naccept-version:1.2\r\nhost:h\r\n\r\n\x00\r\n")
    assert connect == Frame.build("CONNECT", {"accept-version": "1.2", "host": "h"})
    assert beat == HEARTBEAT
    conn.send(Frame.build("CONNECTED", version="1.2"))
    assert feed(conn, b"SEND\r\ndestination:/q\r\nk:v\r\n\r\nbody\r\n\x00\r\n\r\n") == [
        Frame.build("SEND", {"destination": "/q", "k": "v"}, b"body\r\n"),
        HEARTBEAT,
        HEARTBEAT,
    ]


def test_mixed_line_endings_and_raw_cr_inside_a_1_1_value() -> None:
    frame = one(server("1.1"), b"SEND\r\ndestination:/q\nk:a\rb\r\n\n\x00")
    assert frame.headers == (("destination", "/q"), ("k", "a\rb"))


def test_heartbeats_between_frames() -> None:
    conn = STOMPConnection()
    events = feed(conn, b"\n\r\n" + CONNECT_12 + b"\n")
    assert events[:2] == [HEARTBEAT, HEARTBEAT]
    assert isinstance(events[2], Frame)
    assert events[3] == HEARTBEAT
    assert isinstance(events[3], Heartbeat)
    conn.send(Frame.build("CONNECTED", version="1.2"))
    assert feed(conn, b"\r") == []  # half an EOL
    assert feed(conn, b"\n\n") == [HEARTBEAT, HEARTBEAT]
    assert conn.heartbeat() == conn.send(HEARTBEAT) == b"\n"


def test_cr_not_followed_by_lf_between_frames_is_refused() -> None:
    refused(server(), b"\rSEND\n", "malformed frame")


def test_malformed_header_lines() -> None:
    refused(server(), b"SEND\ndestination:/q\nnocolon\n\n\x00", "malformed header")
    refused(server(), b"SEND\ndestination:/q\n:value\n\n\x00", "malformed header")
    refused(server(), b"SEND\ndestination:/q\nk:\xff\n\n\x00", "invalid UTF-8")
    refused(server(), b"SEND\r\ndestination:/q\r\nnocolon\r\n\r\n\x00", "malformed header")
    refused(server(), b"SEND\r\ndestination:/q\r\n:value\r\n\r\n\x00", "malformed header")


def test_empty_value_and_non_ascii() -> None:
    frame = one(server(), "SEND\ndestination:/q\nk:\nnäme:välue ☃\n\n\x00".encode())
    assert frame.headers[1:] == (("k", ""), ("näme", "välue ☃"))


def test_body_on_other_frames_is_handed_over() -> None:
    assert one(server(), b"BEGIN\ntransaction:t\n\nignored\x00").body == b"ignored"


# ------------------------------------------------------------------------- limits


def test_oversize_content_length_is_refused_before_the_body_arrives() -> None:
    conn = server(max_frame_size=1000)
    err = refused(
        conn, b"SEND\ndestination:/q\nreceipt:7\ncontent-length:5000\n\n", "frame too large"
    )
    assert err.receipt == "7"
    refused(
        server(),
        b"SEND\ndestination:/q\ncontent-length:99999999999999999999\n\n",
        "frame too large",
    )


def test_frame_size_limit_is_exact() -> None:
    for head in (b"SEND\ndestination:/q\n\n", b"SEND\ndestination:/q\ncontent-length:10\n\n"):
        data = head + b"x" * 10 + b"\x00"
        assert one(server(max_frame_size=len(data)), data).body == b"x" * 10
        refused(server(max_frame_size=len(data) - 1), data, "frame too large")


def test_body_without_nul_is_refused_once_it_reaches_the_limit() -> None:
    conn = server(max_frame_size=100)
    head = b"SEND\ndestination:/q\n\n"
    assert feed(conn, head + b"x" * (99 - len(head))) == []  # one byte left for the NUL
    refused(conn, b"x", "frame too large")


def test_too_many_headers() -> None:
    head = b"SEND\ndestination:/q\nb:2\nc:3\n"
    assert isinstance(one(server(max_headers=3), head + b"\n\x00"), Frame)
    refused(server(max_headers=3), head + b"d:4\n", "too many headers")  # head not complete
    refused(server(max_headers=3), head + b"d:4\n\n\x00", "too many headers")  # whole head
    crlf = head.replace(b"\n", b"\r\n")
    refused(server(max_headers=3), crlf + b"d:4\r\n\r\n\x00", "too many headers")
    connect = b"CONNECT\naccept-version:1.2\nhost:h\nlogin:x\n\n\x00"
    refused(STOMPConnection(max_headers=2), connect, "too many headers")


def test_header_line_too_long_is_refused_before_its_end_arrives() -> None:
    conn = server(max_header_length=16)
    assert one(conn, b"SEND\ndestination:/q\nk:" + b"v" * 14 + b"\r\n\n\x00").get("k") == "v" * 14
    conn = server(max_header_length=16)
    assert feed(conn, b"SEND\ndestination:/q\nk:" + b"v" * 14) == []
    assert feed(conn, b"\r") == []  # may be the CR of a CRLF
    refused(conn, b"v", "header line too long")
    refused(
        server(max_header_length=16), b"SEND\nk:" + b"v" * 15 + b"\n\n\x00", "header line too long"
    )


# ---------------------------------------------------------------- commands and order


def test_unknown_command() -> None:
    refused(server(), b"FOO\n\n\x00", "unknown command")
    refused(server(), b"send\ndestination:/q\n\n\x00", "unknown command")
    refused(server(), b"SEND \ndestination:/q\n\n\x00", "unknown command")
    refused(server(), b"\x00", "unknown command")


def test_garbage_command_is_refused_at_its_first_impossible_byte() -> None:
    refused(STOMPConnection(), b"G", "unknown command")  # GET / HTTP/1.1
    conn = STOMPConnection()
    assert feed(conn, b"CONNEC") == []
    refused(conn, b"X", "unknown command")
    refused(STOMPConnection(), b"CONNECTED" + b"D" * 10, "unknown command")


def test_server_first_frame_must_be_connect_or_stomp() -> None:
    refused(STOMPConnection(), b"SEND\ndestination:/q\n\n\x00", "not connected")
    refused(STOMPConnection(), b"DISCONNECT\n\n\x00", "not connected")


def test_client_first_frame_must_be_connected_or_error() -> None:
    refused(client(None), b"MESSAGE\ndestination:/q\nmessage-id:1\n\n\x00", "not connected")
    refused(client(None), b"RECEIPT\nreceipt-id:1\n\n\x00", "not connected")


def test_frames_only_flow_their_own_direction() -> None:
    refused(
        server(),
        b"MESSAGE\ndestination:/q\nmessage-id:1\nsubscription:0\n\n\x00",
        "unexpected frame",
    )
    refused(STOMPConnection(), b"CONNECTED\n\n\x00", "unexpected frame")
    refused(client(), b"SEND\ndestination:/q\n\n\x00", "unexpected frame")
    refused(STOMPConnection(Role.CLIENT), CONNECT_12, "unexpected frame")


def test_second_connect() -> None:
    refused(server(None), CONNECT_12, "unexpected frame")  # before the CONNECT was answered
    refused(server(), CONNECT_12, "already connected")
    refused(server(), b"STOMP\naccept-version:1.2\nhost:h\n\n\x00", "already connected")
    refused(client(), b"CONNECTED\nversion:1.2\n\n\x00", "already connected")


def test_server_reads_no_frame_before_answering_the_connect() -> None:
    conn = server(None)
    assert feed(conn, b"\n") == [HEARTBEAT]
    refused(conn, b"SEND\ndestination:/q\n\n\x00", "unexpected frame")


def test_pipelined_frames_after_connect_are_read_in_the_negotiated_version() -> None:
    conn = STOMPConnection()
    conn.receive_data(CONNECT_12 + b"SEND\ndestination:a\\cb\n\n\x00")
    assert isinstance(conn.next_event(), Frame)
    conn.send(Frame.build("CONNECTED", version="1.2"))
    event = conn.next_event()
    assert isinstance(event, Frame)
    assert event.get("destination") == "a:b"


def test_nack_does_not_exist_in_1_0() -> None:
    refused(server("1.0"), b"NACK\nmessage-id:1\n\n\x00", "unknown command")
    assert one(server("1.1"), b"NACK\nmessage-id:1\nsubscription:0\n\n\x00").command == "NACK"


def test_stomp_frame() -> None:
    conn = STOMPConnection()
    frame = one(conn, b"STOMP\naccept-version:1.1,1.2\nhost:h\n\n\x00")
    assert frame.command == "STOMP"
    assert conn.state is State.CONNECTING
    conn.send(Frame.build("CONNECTED", version="1.2"))
    assert conn.version == "1.2"
    assert one(STOMPConnection(), b"STOMP\naccept-version:1.1\n\n\x00").command == "STOMP"
    refused(STOMPConnection(), b"STOMP\nhost:h\n\n\x00", "unsupported version")
    refused(STOMPConnection(), b"STOMP\naccept-version:1.0\nhost:h\n\n\x00", "unsupported version")


def test_connect_offering_1_2_needs_host() -> None:
    err = refused(STOMPConnection(), b"CONNECT\naccept-version:1.1,1.2\n\n\x00", "missing header")
    assert "host" in err.detail
    refused(STOMPConnection(), b"STOMP\naccept-version:1.2\n\n\x00", "missing header")
    relaxed = STOMPConnection(require_host=False)
    assert one(relaxed, b"CONNECT\naccept-version:1.1,1.2\n\n\x00").get("host") is None
    # A client offering at most 1.1 (stomp.py's 1.1 default) or nothing (1.0) may omit it.
    assert one(STOMPConnection(), b"CONNECT\naccept-version:1.1\n\n\x00").command == "CONNECT"
    assert one(STOMPConnection(), b"CONNECT\n\n\x00").command == "CONNECT"


def test_heart_beat_header_must_be_two_integers() -> None:
    ok = b"CONNECT\naccept-version:1.2\nhost:h\nheart-beat:0,1000\n\n\x00"
    assert one(STOMPConnection(), ok).get("heart-beat") == "0,1000"
    bad = b"CONNECT\naccept-version:1.2\nhost:h\nheart-beat:10\n\n\x00"
    refused(STOMPConnection(), bad, "invalid heart-beat")
    refused(client(None), b"CONNECTED\nversion:1.2\nheart-beat:a,b\n\n\x00", "invalid heart-beat")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (0, 0)), ("0,0", (0, 0)), ("10000,5000", (10000, 5000)), (" 1 , 2 ", (1, 2))],
)
def test_parse_heartbeat(value: str | None, expected: tuple[int, int]) -> None:
    assert parse_heartbeat(value) == expected


@pytest.mark.parametrize(
    "value", ["", "1", "1,2,3", "-1,0", "a,0", "1.5,0", "\u0661,0", "1" * 11 + ",0"]
)
def test_parse_heartbeat_refuses(value: str) -> None:
    with pytest.raises(StompError, match="invalid heart-beat"):
        parse_heartbeat(value)


# ------------------------------------------------------------------ required headers


REQUIRED_CASES = [
    (version, command, name)
    for version, table in REQUIRED.items()
    for command, names in table.items()
    for name in names
]


def _frame_bytes(command: str, names: tuple[str, ...]) -> bytes:
    headers = b"".join(b"%s:v\n" % name.encode() for name in names)
    return command.encode() + b"\nreceipt:r1\n" + headers + b"\n\x00"


@pytest.mark.parametrize(("version", "command"), [(v, c) for v in REQUIRED for c in REQUIRED[v]])
def test_frame_with_its_required_headers_is_accepted(version: str, command: str) -> None:
    names = REQUIRED[version][command]
    frame = one(receiver(command, version), _frame_bytes(command, names))
    assert frame.command == command


@pytest.mark.parametrize(("version", "command", "name"), REQUIRED_CASES)
def test_missing_required_header_is_refused(version: str, command: str, name: str) -> None:
    names = tuple(n for n in REQUIRED[version][command] if n != name)
    if (version, command) == ("1.0", "UNSUBSCRIBE"):
        # 1.0 takes a destination instead of an id; only both missing is refused.
        assert one(server("1.0"), _frame_bytes(command, ("destination",))).command == command
    err = refused(receiver(command, version), _frame_bytes(command, names), "missing header")
    assert name in err.detail
    assert err.receipt == "r1"


# --------------------------------------------------------------- versions and state


@pytest.mark.parametrize(
    ("accept", "supported", "expected"),
    [
        (None, VERSIONS, "1.0"),
        ("1.0", VERSIONS, "1.0"),
        ("1.1", VERSIONS, "1.1"),
        ("1.2", VERSIONS, "1.2"),
        ("1.0,1.1,1.2", VERSIONS, "1.2"),
        ("1.2,1.0", VERSIONS, "1.2"),
        ("1.0,1.1,2.0", VERSIONS, "1.1"),
        (" 1.0 , 1.1 ", VERSIONS, "1.1"),
        ("2.0", VERSIONS, None),
        ("", VERSIONS, None),
        ("1.2", ("1.0", "1.1"), None),
        (None, ("1.1", "1.2"), None),
        ("1.0,1.1,1.2", ("1.0", "1.1"), "1.1"),
    ],
)
def test_negotiate(accept: str | None, supported: tuple[str, ...], expected: str | None) -> None:
    assert negotiate(accept, supported) == expected


def test_negotiate_orders_versions_numerically() -> None:
    assert negotiate("1.2,1.10", ("1.2", "1.10")) == "1.10"
    assert negotiate("x,1.0", ("x", "1.0")) == "1.0"  # names that are not numbers rank last


def test_server_version_is_set_by_the_connected_it_sends() -> None:
    conn = server(None)
    assert conn.version is None
    assert conn.send(Frame.build("CONNECTED", version="1.1", heart_beat="0,0")) == (
        b"CONNECTED\nversion:1.1\nheart-beat:0,0\n\n\x00"
    )
    assert status(conn) == ("1.1", State.CONNECTED)
    with pytest.raises(ValueError, match="twice"):
        conn.send(Frame.build("CONNECTED", version="1.1"))


def test_connected_without_version_means_1_0() -> None:
    conn = STOMPConnection()
    one(conn, b"CONNECT\n\n\x00")
    conn.send(Frame(command="CONNECTED"))
    assert conn.version == "1.0"
    cli = STOMPConnection(Role.CLIENT)
    one(cli, b"CONNECTED\n\n\x00")
    assert cli.version == "1.0"


def test_server_cannot_choose_a_version_the_client_did_not_offer() -> None:
    conn = STOMPConnection()
    one(conn, b"CONNECT\naccept-version:1.0,1.1\n\n\x00")
    with pytest.raises(ValueError, match="not offered"):
        conn.send(Frame.build("CONNECTED", version="1.2"))
    with pytest.raises(ValueError, match="not one of"):
        conn.send(Frame.build("CONNECTED", version="2.0"))
    assert conn.version is None


def test_client_refuses_a_version_it_did_not_offer() -> None:
    conn = STOMPConnection(Role.CLIENT)
    conn.send(Frame.build("CONNECT", {"accept-version": "1.1", "host": "h"}))
    refused(conn, b"CONNECTED\nversion:1.2\n\n\x00", "unsupported version")
    refused(STOMPConnection(Role.CLIENT), b"CONNECTED\nversion:3.0\n\n\x00", "unsupported version")


def test_disconnect_ends_the_session() -> None:
    conn = server()
    frame = one(conn, b"DISCONNECT\nreceipt:77\n\n\x00")
    assert frame.get("receipt") == "77"
    assert conn.state is State.CLOSED
    assert (
        conn.send(Frame.build("RECEIPT", {"receipt-id": "77"})) == b"RECEIPT\nreceipt-id:77\n\n\x00"
    )
    assert feed(conn, b"\n") == [HEARTBEAT]
    conn.receive_data(b"")
    assert drain(conn) == [CLOSED]
    assert conn.next_event() is CLOSED

    refused(one_disconnected(), b"SEND\ndestination:/q\n\n\x00", "unexpected frame")


def one_disconnected() -> STOMPConnection:
    conn = server()
    one(conn, b"DISCONNECT\n\n\x00")
    return conn


def test_error_ends_the_session_both_ways() -> None:
    srv = server()
    srv.send(StompError("bad", "worse").error_frame())
    assert srv.state is State.CLOSED
    refused(srv, b"SEND\ndestination:/q\n\n\x00", "unexpected frame")
    cli = client()
    one(cli, b"ERROR\nmessage:bad\n\n\x00")
    assert cli.state is State.CLOSED
    refused(cli, b"RECEIPT\nreceipt-id:1\n\n\x00", "unexpected frame")


def test_end_of_stream() -> None:
    conn = server()
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED
    conn = server()
    conn.receive_data(b"SEND\ndestination:/q\n\nabc")
    conn.receive_data(b"")
    with pytest.raises(StompError, match="truncated frame"):
        conn.next_event()
    conn = server()
    conn.receive_data(b"\r")
    conn.receive_data(b"")
    with pytest.raises(StompError, match="truncated frame"):
        conn.next_event()


def test_errors_are_sticky() -> None:
    conn = server()
    conn.receive_data(b"FOO\n")
    with pytest.raises(StompError) as first:
        conn.next_event()
    conn.receive_data(b"\n")
    with pytest.raises(StompError) as second:
        conn.next_event()
    assert second.value is first.value
    assert conn.state is State.CLOSED


def test_error_frame() -> None:
    err = StompError("missing header", "SEND requires a 'destination' header", receipt="r:1")
    assert str(err) == "missing header: SEND requires a 'destination' header"
    frame = err.error_frame()
    assert frame == Frame(
        command="ERROR",
        headers=(
            ("message", "missing header"),
            ("receipt-id", "r:1"),
            ("content-type", "text/plain"),
        ),
        body=b"SEND requires a 'destination' header",
    )
    assert server("1.2").send(frame) == (
        b"ERROR\nmessage:missing header\nreceipt-id:r\\c1\ncontent-type:text/plain\n"
        b"content-length:36\n\nSEND requires a 'destination' header\x00"
    )
    assert StompError("x").error_frame() == Frame(command="ERROR", headers=(("message", "x"),))
    assert str(StompError("x")) == "x"


def test_large_stream_crosses_buffer_compaction() -> None:
    conn = server()
    frames = [
        Frame.build("SEND", {"destination": f"/q/{i}"}, b"x" * (i % 300)) for i in range(2000)
    ]
    data = b"\n".join(encode_frame(f, "1.2") for f in frames)
    events: list[Event] = []
    for cut in range(0, len(data), 7919):
        events += feed(conn, data[cut : cut + 7919])
    assert [e for e in events if isinstance(e, Frame)] == [as_received(f) for f in frames]
    assert events.count(HEARTBEAT) == len(frames) - 1


def test_long_run_of_heartbeats_then_a_large_frame_in_one_piece() -> None:
    conn = server()
    frame = Frame.build("SEND", {"destination": "/q"}, bytes(range(256)) * 64)
    events = feed(conn, b"\n" * 70_000 + encode_frame(frame, "1.2"))
    assert events == [HEARTBEAT] * 70_000 + [as_received(frame)]


def test_large_bodies_arriving_in_pieces() -> None:
    body = bytes(range(256)) * 4000  # NULs inside: needs content-length
    frame = Frame.build("SEND", {"destination": "/q"}, body)
    text = Frame.build("SEND", {"destination": "/q"}, b"y" * 1_000_000)
    data = encode_frame(frame, "1.2") + encode_frame(text, "1.2").replace(
        b"content-length:1000000\n", b""
    )
    conn = server(max_frame_size=2_000_000)
    events: list[Event] = []
    for cut in range(0, len(data), 65000):
        events += feed(conn, data[cut : cut + 65000])
    assert events == [
        as_received(frame),
        Frame.build("SEND", {"destination": "/q"}, b"y" * 1_000_000),
    ]


# ----------------------------------------------------------------------- properties

# A rich alphabet: the characters escaping is about, NUL, controls, non-ASCII.
CHARS = st.one_of(
    st.sampled_from(":\n\r\\\x00 \t,"),
    st.characters(codec="utf-8"),
)
NAMES = st.text(CHARS, min_size=1, max_size=10)
VALUES = st.text(CHARS, max_size=16)


def fits(name: str, value: str, version: str | None) -> bool:
    """Whether header (name, value) can be sent in ``version`` (None: no escapes)."""
    if name == "content-length" or name.startswith("\x00"):
        return False
    if version == "1.2":
        return True
    if value.endswith("\r"):
        return False
    return version == "1.1" or (":" not in name and "\n" not in name + value)


@st.composite
def frames(draw: st.DrawFn, version: str, side: Role) -> Frame:
    """A frame that ``side`` may receive in a ``version`` session."""
    table = REQUIRED[version]
    commands = [c for c in table if (c in SERVER_FRAMES) == (side is Role.CLIENT)]
    command = draw(st.sampled_from(commands), label="command")
    values = VALUES.filter(lambda v: fits("x", v, version))
    headers = [(name, draw(values)) for name in table[command]]
    extra = st.tuples(NAMES, VALUES).filter(lambda pair: fits(pair[0], pair[1], version))
    headers += draw(st.lists(extra, max_size=5), label="extra")
    body = draw(st.binary(max_size=40), label="body")
    if body and draw(st.booleans(), label="explicit content-length"):
        headers.insert(draw(st.integers(0, len(headers))), ("content-length", str(len(body))))
    return Frame(command=command, headers=tuple(headers), body=body)


def as_received(frame: Frame) -> Frame:
    """``frame`` as decoded: the encoder appends a content-length when it has none."""
    if frame.body and frame.get("content-length") is None:
        return Frame(
            command=frame.command,
            headers=(*frame.headers, ("content-length", str(len(frame.body)))),
            body=frame.body,
        )
    return frame


def sender(command: str, version: str) -> STOMPConnection:
    return server(version) if command in SERVER_FRAMES else client(version)


def with_crlf(encoded: bytes) -> bytes:
    """``encoded`` with CRLF line ends in its head (which holds no other LF pair)."""
    end = encoded.index(b"\n\n") + 2
    return encoded[:end].replace(b"\n", b"\r\n") + encoded[end:]


@pytest.mark.parametrize("side", list(Role))
@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_frames_round_trip(version: str, side: Role, data: st.DataObject) -> None:
    frame = data.draw(frames(version, side))
    encoded = sender(frame.command, version).send(frame)
    assert one(receiver(frame.command, version), encoded) == as_received(frame)
    assert one(receiver(frame.command, version), with_crlf(encoded)) == as_received(frame)


@given(
    st.lists(st.tuples(NAMES, VALUES).filter(lambda pair: fits(pair[0], pair[1], None)), max_size=6)
)
def test_connect_and_connected_round_trip_unescaped(headers: list[tuple[str, str]]) -> None:
    # No accept-version: a 1.0 CONNECT, so nothing else is required of it.
    headers = [
        (name, value)
        for name, value in headers
        if name not in ("accept-version", "host", "heart-beat", "version")
    ]
    connect = Frame(command="CONNECT", headers=tuple(headers))
    assert one(STOMPConnection(), STOMPConnection(Role.CLIENT).send(connect)) == connect
    connected = Frame(command="CONNECTED", headers=tuple(headers))
    assert one(STOMPConnection(Role.CLIENT), encode_frame(connected, "1.2")) == connected


ENDS_SESSION = ("ERROR", "DISCONNECT")


def stream(version: str, side: Role) -> st.SearchStrategy[list[tuple[bytes, Event]]]:
    """Encoded frames that ``side`` may receive, interleaved with heart-beats, each
    with the event it must decode to; a frame ending the session comes last if at all."""
    beats = st.sampled_from([(b"\n", HEARTBEAT), (b"\r\n", HEARTBEAT)])
    encoded = frames(version, side).map(lambda f: (encode_frame(f, version), as_received(f)))
    middle = st.one_of(encoded.filter(lambda item: item[1].command not in ENDS_SESSION), beats)
    return st.builds(
        lambda items, last: items + last,
        st.lists(middle, min_size=1, max_size=6),
        st.lists(encoded, max_size=1),
    )


@settings(max_examples=60)
@pytest.mark.parametrize("side", list(Role))
@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_byte_at_a_time_equals_all_at_once(version: str, side: Role, data: st.DataObject) -> None:
    items = data.draw(stream(version, side))
    whole = b"".join(encoded for encoded, _ in items)
    expected = [event for _, event in items]
    command = "MESSAGE" if side is Role.CLIENT else "SEND"

    conn = receiver(command, version)
    conn.receive_data(whole)
    assert drain(conn) == expected

    conn = receiver(command, version)
    bytewise: list[Event] = []
    for i in range(len(whole)):
        conn.receive_data(whole[i : i + 1])
        bytewise += drain(conn)
    assert bytewise == expected


@settings(max_examples=60)
@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_every_strict_prefix_needs_data(version: str, data: st.DataObject) -> None:
    side = data.draw(st.sampled_from(list(Role)), label="side")
    frame = data.draw(frames(version, side))
    encoded = encode_frame(frame, version)
    for cut in range(len(encoded)):
        conn = receiver(frame.command, version)
        if cut:
            conn.receive_data(encoded[:cut])  # (receive_data(b"") would mean end of stream)
        assert conn.next_event() is NEED_DATA, cut
    conn = receiver(frame.command, version)
    conn.receive_data(encoded)
    assert conn.next_event() == as_received(frame)


def _outcome(conn: STOMPConnection, chunks: list[bytes]) -> tuple[list[Event], str | None]:
    """Events read from ``chunks`` then end of stream, and the error's message if one
    was raised. Only StompError may escape."""
    events: list[Event] = []
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            for _ in range(len(chunk) + 2):  # each event consumes at least one byte
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                events.append(event)
                if event is CLOSED:
                    return events, None
            else:
                raise AssertionError("next_event() neither needed data nor ended")
    except StompError as exc:
        return events, exc.message
    raise AssertionError("the stream ended without CLOSED or an error")


def _fresh(kind: str) -> STOMPConnection:
    limits = {"max_frame_size": 300, "max_headers": 4, "max_header_length": 24}
    if kind == "new server":
        return limited(STOMPConnection(Role.SERVER), limits)
    if kind == "new client":
        return limited(STOMPConnection(Role.CLIENT), limits)
    version = kind[-3:]
    return server(version, **limits) if kind.startswith("server") else client(version, **limits)


KINDS = ["new server", "new client"] + [
    f"{side} {v}" for side in ("server", "client") for v in VERSIONS
]


@settings(max_examples=200)
@given(st.sampled_from(KINDS), st.binary(max_size=120))
def test_garbage_only_raises_stomp_errors(kind: str, garbage: bytes) -> None:
    whole = _outcome(_fresh(kind), [garbage])
    # ... and the same error, after the same events, however the bytes arrive.
    assert _outcome(_fresh(kind), [garbage[i : i + 1] for i in range(len(garbage))]) == whole


GARBAGE_PIECES = st.sampled_from(
    [
        b"\n",
        b"\r\n",
        b"\r",
        b":",
        b"\\",
        b"\\c",
        b"\\t",
        b"\x00",
        b"\xff",
        b"SEND\n",
        b"MESSAGE\n",
        b"CONNECT\n",
        b"destination:/q\n",
        b"content-length:3\n",
        b"content-length:x\n",
        b"id:1\n",
        b"message-id:1\n",
        b"subscription:0\n",
        b"receipt-id:1\n",
        b"accept-version:1.2\n",
        b"host:h\n",
        b"k:" + b"v" * 30 + b"\n",
        b"abc",
        b"\x00\x00\x00",
    ]
)


@settings(max_examples=300)
@given(
    st.sampled_from(KINDS), st.lists(GARBAGE_PIECES | st.binary(max_size=4), max_size=14), st.data()
)
def test_plausible_garbage_only_raises_stomp_errors(
    kind: str, pieces: list[bytes], data: st.DataObject
) -> None:
    garbage = b"".join(pieces)
    whole = _outcome(_fresh(kind), [garbage])
    cuts = sorted(data.draw(st.sets(st.integers(0, len(garbage)), max_size=6), label="cuts"))
    chunks = [garbage[a:b] for a, b in zip([0, *cuts], [*cuts, len(garbage)], strict=True)]
    assert _outcome(_fresh(kind), [c for c in chunks if c]) == whole


@settings(max_examples=150)
@pytest.mark.parametrize("version", VERSIONS)
@given(data=st.data())
def test_mutated_frames_only_raise_stomp_errors(version: str, data: st.DataObject) -> None:
    side = data.draw(st.sampled_from(list(Role)), label="side")
    encoded = bytearray(encode_frame(data.draw(frames(version, side)), version))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, len(encoded) - 1), label="at")
        encoded[at] = data.draw(st.sampled_from(b"\n\r:\\\x00\xffAc0"), label="byte")
    kind = f"{'server' if side is Role.SERVER else 'client'} {version}"
    whole = _outcome(_fresh(kind), [bytes(encoded)])
    bytewise = _outcome(_fresh(kind), [bytes(encoded[i : i + 1]) for i in range(len(encoded))])
    assert bytewise == whole
