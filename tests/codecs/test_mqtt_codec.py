"""The sans-I/O MQTT 3.1/3.1.1 codec: spec examples, properties and protocol rules."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.mqtt import (
    CLOSED,
    NEED_DATA,
    Auth,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MQTTConnection,
    MQTTProtocolError,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Role,
    State,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode_packet,
)
from gateway.codecs.mqtt.connection import Event

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL_ERROR = ReasonCode.PROTOCOL_ERROR
CONNECT_BYTES = encode_packet(Connect(client_id="c"))
CONNACK_BYTES = encode_packet(ConnAck())


# --------------------------------------------------------------------------- helpers


def drain(conn: MQTTConnection) -> list[Event]:
    """Every event available now, ending with CLOSED if the stream ended (never NEED_DATA)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if event is CLOSED:
            return events


def server(**kwargs: int) -> MQTTConnection:
    """A server-side connection that has already received a CONNECT."""
    conn = MQTTConnection(Role.SERVER, **kwargs)
    conn.receive_data(CONNECT_BYTES)
    assert isinstance(conn.next_event(), Connect)
    return conn


def client() -> MQTTConnection:
    """A client-side connection that has already received a CONNACK."""
    conn = MQTTConnection(Role.CLIENT)
    conn.receive_data(CONNACK_BYTES)
    assert isinstance(conn.next_event(), ConnAck)
    return conn


def receiver_for(packet: Packet) -> MQTTConnection:
    """A connection in a state where ``packet`` is the next legal packet to receive."""
    match packet:
        case Connect():
            return MQTTConnection(Role.SERVER)
        case ConnAck():
            return MQTTConnection(Role.CLIENT)
        case SubAck() | UnsubAck() | PingResp():
            return client()
        case _:
            return server()


def decode_error(conn: MQTTConnection, data: bytes) -> MQTTProtocolError:
    """Feed ``data`` and return the MQTTProtocolError that reading it raises."""
    conn.receive_data(data)
    with pytest.raises(MQTTProtocolError) as info:
        drain(conn)
    return info.value


def string(raw: bytes) -> bytes:
    """An MQTT length-prefixed string from raw bytes, valid UTF-8 or not."""
    return len(raw).to_bytes(2, "big") + raw


def frame(type_byte: int, body: bytes) -> bytes:
    """A packet with a one-byte remaining length (bodies here are short)."""
    assert len(body) < 128
    return bytes((type_byte, len(body))) + body


# --------------------------------------------------------------- examples from the spec


def test_connect_with_will_username_and_password_decodes() -> None:
    data = (
        b"\x10\x26"  # CONNECT, remaining length 38
        b"\x00\x04MQTT\x04"  # protocol name and level 4
        b"\xce"  # user name, password, will QoS 1, will, clean session
        b"\x00\x3c"  # keep alive 60 s
        b"\x00\x03abc"  # client id
        b"\x00\x06will/t\x00\x03bye"  # will topic and message
        b"\x00\x04user\x00\x02pw"  # user name and password
    )
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(data)
    assert conn.next_event() == Connect(
        protocol_name="MQTT",
        protocol_level=4,
        client_id="abc",
        clean_start=True,
        keep_alive=60,
        username="user",
        password=b"pw",
        will=Will(topic="will/t", payload=b"bye", qos=1, retain=False),
    )
    assert conn.next_event() is NEED_DATA
    assert conn.state is State.CONNECTED
    assert conn.protocol_level == 4


def test_mqisdp_level_3_connect_decodes() -> None:
    data = b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x0a\x00\x02c1"
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(data)
    assert conn.next_event() == Connect(
        protocol_name="MQIsdp", protocol_level=3, client_id="c1", clean_start=True, keep_alive=10
    )
    assert conn.protocol_level == 3


@pytest.mark.parametrize(
    ("data", "packet"),
    [
        pytest.param(b"\x30\x07\x00\x03a/bhi", Publish(topic="a/b", payload=b"hi"), id="qos0"),
        pytest.param(
            b"\x32\x09\x00\x03a/b\x00\x0ahi",
            Publish(topic="a/b", payload=b"hi", qos=1, packet_id=10),
            id="qos1",
        ),
    ],
)
def test_publish_round_trips(data: bytes, packet: Publish) -> None:
    assert MQTTConnection(Role.CLIENT).send(packet) == data
    conn = server()
    conn.receive_data(data)
    assert conn.next_event() == packet


def test_subscribe_with_several_filters_decodes() -> None:
    data = b"\x82\x12\x00\x01\x00\x03a/b\x00\x00\x03c/#\x01\x00\x01+\x02"
    conn = server()
    conn.receive_data(data)
    assert conn.next_event() == Subscribe(
        packet_id=1, subscriptions=(("a/b", 0), ("c/#", 1), ("+", 2))
    )


def test_pingreq_decodes() -> None:
    conn = server()
    conn.receive_data(b"\xc0\x00")
    assert conn.next_event() == PingReq()
    assert conn.state is State.CONNECTED


def test_disconnect_decodes_and_closes() -> None:
    conn = server()
    conn.receive_data(b"\xe0\x00")
    assert conn.next_event() == Disconnect()
    assert conn.state is State.CLOSED


# ------------------------------------------------------------------------- strategies


def _chars(exclude: str) -> st.SearchStrategy[str]:
    """MQTT string characters: encodable as UTF-8 (so no surrogates), never U+0000."""
    return st.characters(codec="utf-8", exclude_characters="\x00" + exclude)


texts = st.text(_chars(""), max_size=20)
topic_names = st.text(_chars("+#"), min_size=1, max_size=20)
_levels = st.just("+") | st.text(_chars("+#/"), max_size=6)
topic_filters = st.builds(
    lambda levels, multi: "/".join(levels + ["#"] * multi),
    st.lists(_levels, max_size=4),
    st.booleans(),
).filter(bool)
packet_ids = st.integers(1, 65535)
qoses = st.integers(0, 2)
payloads = st.binary(max_size=64)

wills = st.builds(Will, topic=topic_names, payload=payloads, qos=qoses, retain=st.booleans())


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    name, level = draw(st.sampled_from([("MQTT", 4), ("MQIsdp", 3)]))
    username = draw(st.none() | texts)
    # 3.1.1 forbids a password without a user name; 3.1 allows it.
    password = None if level == 4 and username is None else draw(st.none() | payloads)
    return Connect(
        protocol_name=name,
        protocol_level=level,
        client_id=draw(texts),
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 65535)),
        username=username,
        password=password,
        will=draw(st.none() | wills),
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qoses)
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=qos > 0 and draw(st.booleans()),
        packet_id=draw(packet_ids) if qos else None,
    )


STRATEGIES: dict[type, st.SearchStrategy[Packet]] = {
    Connect: connects(),
    ConnAck: st.builds(
        ConnAck, session_present=st.booleans(), return_code=st.sampled_from(ConnectReturnCode)
    ),
    Publish: publishes(),
    PubAck: st.builds(PubAck, packet_id=packet_ids),
    PubRec: st.builds(PubRec, packet_id=packet_ids),
    PubRel: st.builds(PubRel, packet_id=packet_ids),
    PubComp: st.builds(PubComp, packet_id=packet_ids),
    Subscribe: st.builds(
        Subscribe,
        packet_id=packet_ids,
        subscriptions=st.lists(st.tuples(topic_filters, qoses), min_size=1, max_size=4).map(tuple),
    ),
    SubAck: st.builds(
        SubAck,
        packet_id=packet_ids,
        return_codes=st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple),
    ),
    Unsubscribe: st.builds(
        Unsubscribe,
        packet_id=packet_ids,
        topic_filters=st.lists(topic_filters, min_size=1, max_size=4).map(tuple),
    ),
    UnsubAck: st.builds(UnsubAck, packet_id=packet_ids),
    PingReq: st.just(PingReq()),
    PingResp: st.just(PingResp()),
    Disconnect: st.just(Disconnect()),
}
_BOTH_WAYS = (Publish, PubAck, PubRec, PubRel, PubComp)
client_packets = st.one_of(
    *(STRATEGIES[t] for t in (*_BOTH_WAYS, Subscribe, Unsubscribe, PingReq, Disconnect))
)
server_packets = st.one_of(*(STRATEGIES[t] for t in (*_BOTH_WAYS, SubAck, UnsubAck, PingResp)))
any_packets = st.one_of(*STRATEGIES.values())


def test_strategies_cover_every_packet_type() -> None:
    # AUTH exists in MQTT 5 only (test_mqtt5_codec.py).
    assert set(STRATEGIES) == set(typing.get_args(Packet)) - {Auth}


# ------------------------------------------------------------------------- properties


@given(STRATEGIES[Connect])
def test_connect_round_trips_client_to_server(packet: Connect) -> None:
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(MQTTConnection(Role.CLIENT).send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(STRATEGIES[ConnAck])
def test_connack_round_trips_server_to_client(packet: ConnAck) -> None:
    conn = MQTTConnection(Role.CLIENT)
    conn.receive_data(MQTTConnection(Role.SERVER).send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(client_packets)
def test_client_packets_round_trip_after_connect(packet: Packet) -> None:
    conn = server()
    conn.receive_data(MQTTConnection(Role.CLIENT).send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(server_packets)
def test_server_packets_round_trip_after_connack(packet: Packet) -> None:
    conn = client()
    conn.receive_data(MQTTConnection(Role.SERVER).send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(any_packets)
def test_every_strict_prefix_needs_data(packet: Packet) -> None:
    data = encode_packet(packet)
    assert receiver_for(packet).next_event() is NEED_DATA  # the empty prefix
    for cut in range(1, len(data)):
        conn = receiver_for(packet)
        conn.receive_data(data[:cut])  # (receive_data(b"") would mean end of stream)
        assert conn.next_event() is NEED_DATA, cut


@given(any_packets, st.data())
def test_eof_inside_a_packet_raises(packet: Packet, data: st.DataObject) -> None:
    encoded = encode_packet(packet)
    cut = data.draw(st.integers(1, len(encoded) - 1), label="cut")
    conn = receiver_for(packet)
    conn.receive_data(encoded[:cut])
    conn.receive_data(b"")
    with pytest.raises(MQTTProtocolError, match="stream ended inside a packet"):
        conn.next_event()


def _bytewise_matches_bulk(first: Packet, rest: list[Packet], role: Role) -> None:
    data = b"".join(encode_packet(p) for p in [first, *rest])
    expected = [first, *rest, CLOSED]

    bulk = MQTTConnection(role)
    bulk.receive_data(data)
    bulk.receive_data(b"")
    assert drain(bulk) == expected

    bytewise = MQTTConnection(role)
    events: list[Event] = []
    for i in range(len(data)):
        bytewise.receive_data(data[i : i + 1])
        events += drain(bytewise)
    bytewise.receive_data(b"")
    events += drain(bytewise)
    assert events == expected


@settings(max_examples=50)
@given(
    STRATEGIES[Connect],
    st.lists(client_packets.filter(lambda p: not isinstance(p, Disconnect)), max_size=5),
    st.booleans(),
)
def test_client_stream_byte_by_byte_matches_all_at_once(
    connect: Connect, packets: list[Packet], disconnect: bool
) -> None:
    _bytewise_matches_bulk(connect, packets + [Disconnect()] * disconnect, Role.SERVER)


@settings(max_examples=50)
@given(STRATEGIES[ConnAck], st.lists(server_packets, max_size=5))
def test_server_stream_byte_by_byte_matches_all_at_once(
    connack: ConnAck, packets: list[Packet]
) -> None:
    _bytewise_matches_bulk(connack, packets, Role.CLIENT)


def _feed_garbage(conn: MQTTConnection, data: bytes) -> MQTTProtocolError | None:
    """Read ``data`` then EOF to the end; only MQTTProtocolError may escape next_event()."""
    conn.receive_data(data)
    conn.receive_data(b"")
    try:
        for _ in range(len(data) + 2):  # each packet consumes at least 2 bytes
            if conn.next_event() is CLOSED:
                return None
    except MQTTProtocolError as exc:
        return exc
    raise AssertionError("next_event() neither returned CLOSED nor raised")


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_only_raises_protocol_errors(garbage: bytes, after_connect: bool) -> None:
    conn = server() if after_connect else MQTTConnection(Role.SERVER)
    err = _feed_garbage(conn, garbage)
    assert err is None or isinstance(err.reason, ReasonCode)


@settings(max_examples=300)
@given(st.integers(0, 255), st.binary(max_size=100), st.sampled_from(Role))
def test_random_bodies_behind_valid_headers_only_raise_protocol_errors(
    type_byte: int, body: bytes, role: Role
) -> None:
    # A well-framed packet with a random body reaches every packet-type decoder.
    conn = server() if role is Role.SERVER else client()
    err = _feed_garbage(conn, frame(type_byte, body))
    assert err is None or isinstance(err.reason, ReasonCode)


# ----------------------------------------------------------------------- ordering rules


@pytest.mark.parametrize(
    "packet",
    [PingReq(), Publish(topic="a", payload=b""), Subscribe(packet_id=1, subscriptions=(("a", 0),))],
)
def test_first_packet_other_than_connect_is_a_protocol_error(packet: Packet) -> None:
    err = decode_error(MQTTConnection(Role.SERVER), encode_packet(packet))
    assert err.reason is PROTOCOL_ERROR


def test_first_packet_other_than_connack_is_a_protocol_error_for_a_client() -> None:
    err = decode_error(MQTTConnection(Role.CLIENT), encode_packet(PingResp()))
    assert err.reason is PROTOCOL_ERROR


def test_second_connect_is_a_protocol_error() -> None:
    err = decode_error(server(), CONNECT_BYTES)
    assert err.reason is PROTOCOL_ERROR


@pytest.mark.parametrize("connected", [False, True])
def test_connack_received_by_server_is_a_protocol_error(connected: bool) -> None:
    conn = server() if connected else MQTTConnection(Role.SERVER)
    err = decode_error(conn, CONNACK_BYTES)
    assert err.reason is PROTOCOL_ERROR


@pytest.mark.parametrize(
    "packet", [SubAck(packet_id=1, return_codes=(0,)), UnsubAck(packet_id=1), PingResp()]
)
def test_server_to_client_packets_received_by_server_are_protocol_errors(packet: Packet) -> None:
    err = decode_error(server(), encode_packet(packet))
    assert err.reason is PROTOCOL_ERROR


def test_packet_after_disconnect_is_a_protocol_error() -> None:
    conn = server()
    conn.receive_data(b"\xe0\x00")
    assert conn.next_event() == Disconnect()
    err = decode_error(conn, b"\xc0\x00")
    assert err.reason is PROTOCOL_ERROR


def test_eof_between_packets_returns_closed() -> None:
    conn = server()
    conn.receive_data(b"\xc0\x00")
    conn.receive_data(b"")
    assert conn.next_event() == PingReq()
    assert conn.next_event() is CLOSED
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    "partial",
    [b"\x30", b"\x30\x80", b"\x30\x07\x00\x03a/", b"\x10\x10\x00\x06MQIsdp"],
    ids=["type-byte", "mid-length", "mid-body", "mid-connect"],
)
def test_eof_in_the_middle_of_a_packet_raises(partial: bytes) -> None:
    conn = server() if partial[0] != 0x10 else MQTTConnection(Role.SERVER)
    conn.receive_data(partial)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(MQTTProtocolError, match="stream ended inside a packet"):
        conn.next_event()


# ------------------------------------------------------------------------ size limits


@pytest.mark.parametrize(
    ("connected", "header"),
    [
        pytest.param(False, b"\x10\x80\x01", id="connect"),
        pytest.param(True, b"\x30\x80\x01", id="publish"),
        pytest.param(True, b"\x30\xff\xff\xff\x7f", id="publish-256MB"),
    ],
)
def test_oversized_packet_is_refused_from_its_fixed_header(connected: bool, header: bytes) -> None:
    conn = server(max_packet_size=100) if connected else MQTTConnection(max_packet_size=100)
    conn.receive_data(header)  # remaining length 128 (or 256 MB) > 100; no body sent
    with pytest.raises(MQTTProtocolError) as info:
        conn.next_event()
    assert info.value.reason is ReasonCode.PACKET_TOO_LARGE


def test_max_packet_size_is_inclusive_and_counts_the_fixed_header() -> None:
    data = encode_packet(Publish(topic="t", payload=b"x" * 20))
    conn = server(max_packet_size=len(data))  # the limit counts the fixed header too
    conn.receive_data(data)
    assert conn.next_event() == Publish(topic="t", payload=b"x" * 20)

    err = decode_error(server(max_packet_size=len(data) - 1), data[:2])
    assert err.reason is ReasonCode.PACKET_TOO_LARGE


def test_default_limit_accepts_the_largest_remaining_length() -> None:
    conn = server()
    conn.receive_data(b"\x30\xff\xff\xff\x7f")  # remaining length 268,435,455 (spec max)
    assert conn.next_event() is NEED_DATA


# ------------------------------------------------------------------- malformed packets


@pytest.mark.parametrize(
    "length", [b"\x80\x00", b"\xff\x00", b"\x80\x80\x00", b"\xff\xff\xff\x00"], ids=bytes.hex
)
def test_non_minimal_variable_byte_integer_is_malformed(length: bytes) -> None:
    # Each value has a shorter encoding; PINGREQ is otherwise well-formed with length 0.
    err = decode_error(server(), b"\xc0" + length)
    assert err.reason is MALFORMED
    assert "non-minimal" in str(err)


def test_five_byte_variable_byte_integer_is_malformed() -> None:
    err = decode_error(server(), b"\x30\xff\xff\xff\xff\x01")
    assert err.reason is MALFORMED
    assert "longer than 4 bytes" in str(err)


def test_reserved_packet_type_0_is_malformed() -> None:
    err = decode_error(server(), b"\x00\x00")
    assert err.reason is MALFORMED


@pytest.mark.parametrize("type_byte", [0x80, 0x81, 0x83, 0x8A])
def test_subscribe_with_wrong_fixed_header_flags_is_malformed(type_byte: int) -> None:
    good = encode_packet(Subscribe(packet_id=1, subscriptions=(("a", 0),)))
    assert good[0] == 0x82
    err = decode_error(server(), bytes((type_byte,)) + good[1:])
    assert err.reason is MALFORMED


@pytest.mark.parametrize("type_byte", [0x36, 0x37, 0x3E])
def test_publish_with_qos_3_is_malformed(type_byte: int) -> None:
    err = decode_error(server(), frame(type_byte, string(b"a/b") + b"\x00\x01hi"))
    assert err.reason is MALFORMED


@pytest.mark.parametrize("topic", ["a/+", "+", "#", "a/#", "sport/+/player"])
def test_topic_name_with_wildcard_is_invalid(topic: str) -> None:
    err = decode_error(server(), encode_packet(Publish(topic=topic, payload=b"x")))
    assert err.reason is ReasonCode.TOPIC_NAME_INVALID


def test_will_topic_with_wildcard_is_invalid() -> None:
    connect = Connect(client_id="c", will=Will(topic="a/#", payload=b""))
    err = decode_error(MQTTConnection(Role.SERVER), encode_packet(connect))
    assert err.reason is ReasonCode.TOPIC_NAME_INVALID


@pytest.mark.parametrize("topic_filter", ["a/b#", "a/#/b", "a+/b", "a/+b", "##"])
def test_misplaced_wildcard_in_subscribe_filter_is_invalid(topic_filter: str) -> None:
    packet = Subscribe(packet_id=1, subscriptions=(("ok/+", 0), (topic_filter, 0)))
    err = decode_error(server(), encode_packet(packet))
    assert err.reason is ReasonCode.TOPIC_FILTER_INVALID


@pytest.mark.parametrize("topic_filter", ["a/b#", "a+/b"])
def test_misplaced_wildcard_in_unsubscribe_filter_is_invalid(topic_filter: str) -> None:
    packet = Unsubscribe(packet_id=1, topic_filters=(topic_filter,))
    err = decode_error(server(), encode_packet(packet))
    assert err.reason is ReasonCode.TOPIC_FILTER_INVALID


BAD_STRINGS = [
    pytest.param(b"a\x00b", id="U+0000"),
    pytest.param(b"\xff", id="invalid-byte"),
    pytest.param(b"a\xc3", id="truncated-sequence"),
    pytest.param(b"\xc0\xaf", id="overlong"),
    pytest.param(b"\xed\xa0\x80", id="surrogate"),
]


@pytest.mark.parametrize("raw", BAD_STRINGS)
def test_bad_string_in_topic_name_is_malformed(raw: bytes) -> None:
    err = decode_error(server(), frame(0x30, string(raw) + b"payload"))
    assert err.reason is MALFORMED


@pytest.mark.parametrize("raw", BAD_STRINGS)
def test_bad_string_in_client_id_is_malformed(raw: bytes) -> None:
    body = string(b"MQTT") + b"\x04\x02\x00\x00" + string(raw)
    err = decode_error(MQTTConnection(Role.SERVER), frame(0x10, body))
    assert err.reason is MALFORMED


@pytest.mark.parametrize("raw", BAD_STRINGS)
def test_bad_string_in_subscribe_filter_is_malformed(raw: bytes) -> None:
    err = decode_error(server(), frame(0x82, b"\x00\x01" + string(raw) + b"\x00"))
    assert err.reason is MALFORMED


def test_connect_with_protocol_level_6_is_refused_with_unacceptable_version() -> None:
    # Level 5 is MQTT 5.0, accepted since the codec speaks it (test_mqtt5_codec.py).
    body = string(b"MQTT") + b"\x06\x02\x00\x00\x00" + string(b"c")
    err = decode_error(MQTTConnection(Role.SERVER), frame(0x10, body))
    assert err.connack_code is ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION
    assert err.reason is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
