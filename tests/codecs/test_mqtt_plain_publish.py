"""The codec's QoS 0 fast path (``MQTTConnection.on_plain_publish``) against its events.

Whatever bytes arrive, split however, a server codec with the fast path must yield
exactly what it yields without it: the same PUBLISHes in the same order (handed to the
callback instead of returned), the same other events, the same error at the same point.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.mqtt import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    Connect,
    Disconnect,
    MQTTConnection,
    MQTTProtocolError,
    PingReq,
    Properties,
    PubAck,
    Publish,
    encode_packet,
    serialize,
)

TOPICS = ["a", "a/b", "sensor/1/temp", "ü/ñ", "x" * 300, "$SYS/load", "$queue/jobs"]

# Packets the fast path must leave to the general decoding, each refused there.
MALFORMED = [
    b"\x30\x05\x00\x03a/+",  # wildcard in a topic name
    b"\x30\x05\x00\x03a/#",
    b"\x30\x02\x00\x00",  # empty topic name
    b"\x38\x05\x00\x03abc",  # DUP on QoS 0
    b"\x36\x05\x00\x03abc",  # QoS 3
    b"\x30\x03\x00\x05a",  # topic longer than the packet
    b"\x30\x01\x00",  # no room for the topic length
    b"\x30\x80\x00",  # non-minimal remaining length
    b"\x30\x85\x00\x00\x03abc",  # non-minimal two-byte remaining length
    b"\x30\x05\x00\x03\xff\xfe\xfd",  # not UTF-8
    b"\x30\x05\x00\x03a\x00b",  # U+0000
]
MALFORMED_V5 = [
    b"\x30\x05\x00\x03abc",  # no property length
    b"\x30\x06\x00\x03abc\x05",  # property length past the end
    b"\x30\x08\x00\x03abc\x02\x23\x00",  # topic alias 0
    b"\x30\x04\x00\x00\x00x",  # empty topic without an alias
]


def connect(level: int) -> bytes:
    name = "MQIsdp" if level == 3 else "MQTT"
    return encode_packet(Connect(client_id="c", protocol_level=level, protocol_name=name))


publishes = st.builds(
    Publish,
    topic=st.sampled_from(TOPICS),
    payload=st.one_of(
        st.binary(max_size=200),
        st.integers(100, 17_000).map(lambda n: b"p" * n),  # 2- and 3-byte lengths
    ),
    retain=st.booleans(),
)
others = st.one_of(
    st.builds(PingReq),
    st.builds(
        Publish,
        topic=st.sampled_from(TOPICS),
        payload=st.binary(max_size=50),
        qos=st.sampled_from([1, 2]),
        retain=st.booleans(),
        dup=st.booleans(),
        packet_id=st.integers(1, 0xFFFF),
    ),
    st.builds(PubAck, packet_id=st.integers(1, 0xFFFF)),
)
v5_only = st.one_of(
    st.builds(
        Publish,
        topic=st.sampled_from(TOPICS),
        payload=st.binary(max_size=50),
        properties=st.sampled_from(
            [
                Properties(message_expiry_interval=10),
                Properties(user_properties=(("k", "v"),)),
                Properties(topic_alias=1),
                Properties(payload_format_indicator=1),
            ]
        ),
    ),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, bytes, list[int], int, bool, int]:
    level = draw(st.sampled_from([3, 4, 5]))
    kinds = (
        st.one_of(publishes, publishes, others, v5_only)
        if level == 5
        else (st.one_of(publishes, publishes, others))
    )
    packets = draw(st.lists(kinds, max_size=25))
    data = b"".join(encode_packet(p, level) for p in packets)
    if draw(st.booleans()):
        data += draw(st.sampled_from(MALFORMED + (MALFORMED_V5 if level == 5 else [])))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    pause_every = draw(st.integers(0, 4))
    learned = draw(st.booleans())
    limit = draw(st.sampled_from([300, 16_000, 1 << 20]))
    return level, data, cuts, pause_every, learned, limit


def run(
    level: int,
    data: bytes,
    cuts: list[int],
    *,
    fast: bool,
    pause_every: int = 0,
    limit: int = 1 << 20,
) -> tuple[list[object], object]:
    """Feed ``data`` in pieces; what the codec yields (fast-path PUBLISHes as
    ``Publish`` events) and the error it raised, if any."""
    conn = MQTTConnection(max_packet_size=limit)
    conn.receive_data(connect(level))
    assert isinstance(conn.next_event(), Connect)
    seen: list[object] = []
    calls = 0

    def plain(topic: str, payload: bytes, packet: bytes, retain: bool) -> bool:
        nonlocal calls
        calls += 1
        publish = Publish(topic=topic, payload=payload, retain=retain)
        assert packet == encode_packet(publish, level)  # the very frame, as the encoder has it
        seen.append(publish)
        return not (pause_every and calls % pause_every == 0)

    if fast:
        conn.on_plain_publish = plain
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            while (event := conn.next_event()) is not NEED_DATA:
                if event is PAUSED:
                    assert pause_every, "PAUSED unasked"
                    assert calls % pause_every == 0, "PAUSED unasked"
                    continue
                seen.append(event)
                if event is CLOSED:
                    return seen, None
    except MQTTProtocolError as exc:
        return seen, (str(exc), exc.reason)
    raise AssertionError("no CLOSED after the end of the stream")


@settings(max_examples=300, deadline=None)
@given(streams())
def test_the_fast_path_yields_what_the_events_yield(
    case: tuple[int, bytes, list[int], int, bool, int],
) -> None:
    level, data, cuts, pause_every, learned, limit = case
    if not learned:
        serialize._TOPICS.clear()  # the first PUBLISH of a topic is the general decoding's
    fast = run(level, data, cuts, fast=True, pause_every=pause_every, limit=limit)
    events = run(level, data, cuts, fast=False, limit=limit)
    assert fast == events


@pytest.mark.parametrize("level", [3, 4, 5])
def test_plain_publishes_take_the_fast_path_once_their_topic_is_known(level: int) -> None:
    conn = MQTTConnection()
    conn.receive_data(connect(level))
    assert isinstance(conn.next_event(), Connect)
    taken: list[tuple[str, bytes, bytes, bool]] = []
    conn.on_plain_publish = lambda *args: taken.append(args) is None
    serialize._TOPICS.clear()
    first = Publish(topic="t/1", payload=b"one")
    second = Publish(topic="t/1", payload=b"two" * 100, retain=True)
    with_props = Publish(topic="t/1", payload=b"3", properties=Properties(content_type="x"))
    data = [encode_packet(first, level), encode_packet(second, level)]
    if level == 5:
        data.append(encode_packet(with_props, level))
    conn.receive_data(b"".join(data) + encode_packet(PingReq(), level))
    # The first is decoded the general way, and makes the topic known.
    assert conn.next_event() == first
    # The second is handed over whole; then the codec goes on with what follows.
    if level == 5:
        assert conn.next_event() == with_props
    else:
        assert conn.next_event() == PingReq()
    assert taken == [("t/1", second.payload, data[1], True)]
    if level == 5:
        assert conn.next_event() == PingReq()
    assert conn.next_event() is NEED_DATA


def test_a_handler_that_asks_to_stop_pauses_the_codec_after_that_publish() -> None:
    conn = MQTTConnection()
    conn.receive_data(connect(4))
    assert isinstance(conn.next_event(), Connect)
    serialize._TOPICS.clear()
    conn.receive_data(encode_packet(Publish(topic="t", payload=b"0")))
    assert isinstance(conn.next_event(), Publish)  # makes "t" known
    taken: list[bytes] = []

    def stop_after_two(topic: str, payload: bytes, packet: bytes, retain: bool) -> bool:
        taken.append(payload)
        return len(taken) % 2 == 1

    conn.on_plain_publish = stop_after_two
    conn.receive_data(
        b"".join(encode_packet(Publish(topic="t", payload=b"%d" % i)) for i in range(5))
    )
    assert conn.next_event() is PAUSED
    assert taken == [b"0", b"1"]
    assert conn.next_event() is PAUSED
    assert taken == [b"0", b"1", b"2", b"3"]
    assert conn.next_event() is NEED_DATA
    assert taken == [b"0", b"1", b"2", b"3", b"4"]
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def learn(topic: str) -> None:
    raw = topic.encode()
    serialize.decode_publish(0, len(raw).to_bytes(2, "big") + raw, 4)


def test_no_fast_path_before_connect_or_after_disconnect() -> None:
    learn("a")
    conn = MQTTConnection()
    conn.on_plain_publish = lambda *args: pytest.fail("a PUBLISH out of turn was taken")
    conn.receive_data(encode_packet(Publish(topic="a", payload=b"x")))
    with pytest.raises(MQTTProtocolError, match="first packet is not CONNECT"):
        conn.next_event()
    conn = MQTTConnection()
    conn.on_plain_publish = lambda *args: pytest.fail("a PUBLISH out of turn was taken")
    conn.receive_data(connect(4) + b"\xe0\x00" + encode_packet(Publish(topic="a", payload=b"x")))
    assert isinstance(conn.next_event(), Connect)
    assert isinstance(conn.next_event(), Disconnect)
    with pytest.raises(MQTTProtocolError, match="after DISCONNECT"):
        conn.next_event()


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x85\x00\x00\x03a/b",  # non-minimal two-byte remaining length
        b"\x38\x05\x00\x03a/b",  # DUP on QoS 0
        b"\x30\x04\x00\x03a/",  # topic longer than the packet
        b"\x30\x06\x00\x03a/b\x05",  # v5: property length past the end
        b"\x30\x05\x00\x03a/b",  # v5: no property length
    ],
)
def test_malformed_publishes_to_a_known_topic_are_refused_the_general_way(
    level: int, data: bytes
) -> None:
    learn("a/b")
    good = encode_packet(Publish(topic="a/b", payload=b"ok"), level)
    fast = run(level, good + data, [], fast=True, limit=200)
    assert fast == run(level, good + data, [], fast=False, limit=200)
    assert fast[1] is not None or level == 4  # refused (in 3.1.1 the last two are valid)


def test_the_packet_size_limit_holds_on_the_fast_path() -> None:
    learn("a/b")
    data = encode_packet(Publish(topic="a/b", payload=b"x" * 200))  # 207 bytes
    for limit in (206, 207):
        fast = run(4, data, [], fast=True, limit=limit)
        assert fast == run(4, data, [], fast=False, limit=limit)
    assert run(4, data, [], fast=True, limit=206)[1] is not None
