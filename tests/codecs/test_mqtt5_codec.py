"""The sans-I/O MQTT codec speaking MQTT 5.0: spec examples, properties and protocol rules."""

from __future__ import annotations

import typing
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs.mqtt import (
    CLOSED,
    NEED_DATA,
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MQTTConnection,
    MQTTProtocolError,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    Properties,
    PropertyId,
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
    encode_publish,
)
from gateway.codecs.mqtt.connection import Event
from gateway.codecs.mqtt.properties import SCOPES, WILL_SCOPE, Scope
from gateway.codecs.mqtt.serialize import REASON_CODES, decode_packet
from gateway.codecs.mqtt.wire import encode_varint

from .test_mqtt_codec import (
    decode_error,
    drain,
    frame,
    packet_ids,
    payloads,
    qoses,
    string,
    texts,
    topic_filters,
    topic_names,
)

MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL_ERROR = ReasonCode.PROTOCOL_ERROR
METHOD = "SCRAM-SHA-256"
# The CONNECT behind the helpers: it names an authentication method (so AUTH may
# follow) and a session expiry (so a client's DISCONNECT may change it).
CONNECT5 = Connect(
    client_id="c",
    protocol_level=5,
    properties=Properties(session_expiry_interval=60, authentication_method=METHOD),
)
CONNACK5 = ConnAck()


# --------------------------------------------------------------------------- helpers


def server5(connect: Connect = CONNECT5, **kwargs: int) -> MQTTConnection:
    """A server-side connection that has already received an MQTT 5 CONNECT."""
    conn = MQTTConnection(Role.SERVER, **kwargs)
    conn.receive_data(encode_packet(connect))
    assert conn.next_event() == connect
    assert conn.protocol_level == 5
    return conn


def client5_connecting(connect: Connect = CONNECT5) -> MQTTConnection:
    """A client-side connection that has sent an MQTT 5 CONNECT, awaiting CONNACK."""
    conn = MQTTConnection(Role.CLIENT)
    conn.send(connect)
    assert conn.protocol_level == 5
    return conn


def client5(connect: Connect = CONNECT5) -> MQTTConnection:
    """A client-side connection that has sent an MQTT 5 CONNECT and received CONNACK."""
    conn = client5_connecting(connect)
    conn.receive_data(encode_packet(CONNACK5, 5))
    assert conn.next_event() == CONNACK5
    return conn


def receiver5_for(packet: Packet) -> MQTTConnection:
    """A connection in a state where ``packet`` is the next legal packet to receive."""
    match packet:
        case Connect():
            return MQTTConnection(Role.SERVER)
        case ConnAck():
            return client5_connecting()
        case SubAck() | UnsubAck() | PingResp():
            return client5()
        case Publish() if packet.properties.subscription_identifiers:
            return client5()  # only a server sends subscription identifiers
        case _:
            return server5()


def props_block(*properties: bytes) -> bytes:
    """A property block: length, then the given encoded properties."""
    body = b"".join(properties)
    return encode_varint(len(body)) + body


def prop(ident: int, value: bytes) -> bytes:
    return bytes((ident,)) + value


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def publish5(topic: bytes, block: bytes, payload: bytes = b"hi") -> bytes:
    """A QoS 0 MQTT 5 PUBLISH with the given raw topic and property block."""
    return frame(0x30, string(topic) + block + payload)


# --------------------------------------------------------------- examples from the spec


def test_connect_with_properties_will_properties_and_password_only_decodes() -> None:
    data = (
        b"\x10\x36"  # CONNECT, remaining length 54
        b"\x00\x04MQTT\x05"  # protocol name and level 5
        b"\x4e"  # password (no user name: allowed in 5), will QoS 1, will, clean start
        b"\x00\x3c"  # keep alive 60 s
        b"\x08"  # property length 8
        b"\x11\x00\x00\x00\x78"  # session expiry interval 120 s
        b"\x21\x00\x0a"  # receive maximum 10
        b"\x00\x03abc"  # client id
        b"\x0c"  # will property length 12
        b"\x18\x00\x00\x00\x05"  # will delay interval 5 s
        b"\x03\x00\x04text"  # content type
        b"\x00\x06will/t\x00\x03bye"  # will topic and message
        b"\x00\x02pw"  # password
    )
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(data)
    assert conn.next_event() == Connect(
        protocol_level=5,
        client_id="abc",
        keep_alive=60,
        password=b"pw",
        will=Will(
            topic="will/t",
            payload=b"bye",
            qos=1,
            properties=Properties(will_delay_interval=5, content_type="text"),
        ),
        properties=Properties(session_expiry_interval=120, receive_maximum=10),
    )
    assert conn.next_event() is NEED_DATA
    assert conn.protocol_level == 5


def test_password_without_user_name_is_still_refused_in_3_1_1() -> None:
    data = frame(0x10, string(b"MQTT") + b"\x04\x42\x00\x00" + string(b"c") + string(b"pw"))
    err = decode_error(MQTTConnection(Role.SERVER), data)
    assert err.reason is MALFORMED
    assert "password" in str(err)


def test_connack_with_properties_decodes() -> None:
    data = b"\x20\x0c\x01\x00\x09\x24\x01\x12\x00\x04c-42"
    conn = client5_connecting()
    conn.receive_data(data)
    assert conn.next_event() == ConnAck(
        session_present=True,
        properties=Properties(maximum_qos=1, assigned_client_identifier="c-42"),
    )


@pytest.mark.parametrize(
    ("data", "packet"),
    [
        pytest.param(
            b"\x30\x08\x00\x03a/b\x00hi", Publish(topic="a/b", payload=b"hi"), id="qos0-no-props"
        ),
        pytest.param(
            b"\x32\x0f\x00\x03a/b\x00\x0a\x05\x02\x00\x00\x00\x1ehi",
            Publish(
                topic="a/b",
                payload=b"hi",
                qos=1,
                packet_id=10,
                properties=Properties(message_expiry_interval=30),
            ),
            id="qos1-expiry",
        ),
        pytest.param(
            b"\x30\x08\x00\x00\x03\x23\x00\x07hi",
            Publish(topic="", payload=b"hi", properties=Properties(topic_alias=7)),
            id="empty-topic-with-alias",
        ),
    ],
)
def test_publish_round_trips(data: bytes, packet: Publish) -> None:
    assert client5_connecting().send(packet) == data
    conn = server5()
    conn.receive_data(data)
    assert conn.next_event() == packet


@pytest.mark.parametrize(
    ("data", "packet"),
    [
        pytest.param(b"\x40\x02\x00\x01", PubAck(packet_id=1), id="length-2"),
        pytest.param(b"\x40\x03\x00\x01\x10", PubAck(packet_id=1, reason_code=0x10), id="length-3"),
        pytest.param(
            b"\x40\x07\x00\x01\x97\x03\x1f\x00\x00",
            PubAck(packet_id=1, reason_code=0x97, properties=Properties(reason_string="")),
            id="full",
        ),
    ],
)
def test_puback_uses_the_shortest_form(data: bytes, packet: PubAck) -> None:
    assert encode_packet(packet, 5) == data
    conn = server5()
    conn.receive_data(data)
    assert conn.next_event() == packet


@pytest.mark.parametrize("type_byte", [0x40, 0x50, 0x62, 0x70])
def test_short_forms_of_puback_family_decode_as_success(type_byte: int) -> None:
    conn = server5()
    # Remaining length 2 (no reason code), then 4 (reason code and an empty property block).
    conn.receive_data(frame(type_byte, b"\x00\x05") + frame(type_byte, b"\x00\x06\x00\x00"))
    first, second = drain(conn)
    assert (first.packet_id, first.reason_code, first.properties) == (5, 0, NO_PROPERTIES)  # type: ignore[union-attr]
    assert (second.packet_id, second.reason_code) == (6, 0)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "packet"),
    [
        pytest.param(b"\xe0\x00", Disconnect(), id="length-0"),
        pytest.param(b"\xe0\x01\x04", Disconnect(reason_code=4), id="length-1"),
        pytest.param(
            b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00",
            Disconnect(properties=Properties(session_expiry_interval=0)),
            id="session-expiry",
        ),
    ],
)
def test_disconnect_forms(data: bytes, packet: Disconnect) -> None:
    assert encode_packet(packet, 5) == data
    conn = server5()
    conn.receive_data(data)
    assert conn.next_event() == packet
    assert conn.state is State.CLOSED


def test_disconnect_with_reason_code_and_empty_properties_decodes() -> None:
    conn = server5()
    conn.receive_data(b"\xe0\x02\x04\x00")
    assert conn.next_event() == Disconnect(reason_code=ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)


def test_subscribe_with_options_and_subscription_identifier_decodes() -> None:
    # Options: QoS 1 + no local + retain as published + retain handling 2 = 0x2d.
    data = frame(0x82, b"\x00\x01\x02\x0b\x2a" + string(b"a/+") + b"\x2d" + string(b"#") + b"\x00")
    conn = server5()
    conn.receive_data(data)
    assert conn.next_event() == Subscribe(
        packet_id=1,
        subscriptions=(("a/+", 0x2D), ("#", 0)),
        properties=Properties(subscription_identifiers=(42,)),
    )


def test_suback_and_unsuback_carry_reason_codes() -> None:
    conn = client5()
    conn.receive_data(b"\x90\x05\x00\x07\x00\x01\x8f" + b"\xb0\x05\x00\x08\x00\x11\x00")
    assert drain(conn) == [
        SubAck(packet_id=7, return_codes=(1, 0x8F)),
        UnsubAck(packet_id=8, reason_codes=(0x11, 0)),
    ]


def test_auth_exchange_before_connack() -> None:
    challenge = Auth(
        reason_code=ReasonCode.CONTINUE_AUTHENTICATION,
        properties=Properties(authentication_method=METHOD, authentication_data=b"nonce"),
    )
    server = server5()
    data = server.send(challenge)
    assert data == (
        b"\xf0\x1a\x18\x18\x15\x00\x0dSCRAM-SHA-256\x16\x00\x05nonce"  # reason, properties
    )
    client = client5_connecting()
    client.receive_data(data + encode_packet(CONNACK5, 5))
    assert drain(client) == [challenge, CONNACK5]
    assert client.state is State.CONNECTED


def test_auth_with_remaining_length_0_is_success() -> None:
    conn = server5()
    conn.receive_data(b"\xf0\x00")
    assert conn.next_event() == Auth()
    assert encode_packet(Auth(), 5) == b"\xf0\x00"


def test_auth_with_a_reason_code_keeps_its_property_length() -> None:
    # The spec lets AUTH drop both fields, never the property length alone.
    assert encode_packet(Auth(reason_code=0x19), 5) == b"\xf0\x02\x19\x00"


# ------------------------------------------------------------------------------ tables


def test_reason_codes_cover_the_spec_table() -> None:
    assert {int(code) for code in ReasonCode} == {
        0x00, 0x01, 0x02, 0x04, 0x10, 0x11, 0x18, 0x19, *range(0x80, 0xA3)
    }  # fmt: skip
    # 0x00 has three spec names, one member.
    assert ReasonCode["NORMAL_DISCONNECTION"] is ReasonCode["GRANTED_QOS_0"] is ReasonCode(0)
    assert ReasonCode(0x8A).name == "BANNED"
    assert ReasonCode(0xA2).name == "WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED"


def test_reason_codes_per_packet_type_follow_the_spec() -> None:
    assert REASON_CODES[PacketType.PUBREL] == {0x00, 0x92}
    assert REASON_CODES[PacketType.AUTH] == {0x00, 0x18, 0x19}
    assert REASON_CODES[PacketType.PUBACK] == {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}
    assert REASON_CODES[PacketType.UNSUBACK] == {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}
    assert 0x8B in REASON_CODES[PacketType.DISCONNECT]
    assert 0x8B not in REASON_CODES[PacketType.CONNACK]
    assert 0x84 in REASON_CODES[PacketType.CONNACK]
    assert 0x84 not in REASON_CODES[PacketType.DISCONNECT]
    assert {0x91, 0x92} & REASON_CODES[PacketType.DISCONNECT] == set()


def test_property_scopes_follow_the_spec() -> None:
    assert WILL_SCOPE.allowed == {0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26}
    assert SCOPES[PacketType.PUBLISH].allowed == {0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26}
    assert SCOPES[PacketType.PUBACK].allowed == {0x1F, 0x26}
    assert SCOPES[PacketType.UNSUBSCRIBE].allowed == {0x26}
    assert SCOPES[PacketType.AUTH].allowed == {0x15, 0x16, 0x1F, 0x26}
    assert len(SCOPES[PacketType.CONNACK].allowed) == 17
    assert set(SCOPES) == set(PacketType) - {PacketType.PINGREQ, PacketType.PINGRESP}


# ------------------------------------------------------------------------- strategies

_FLAG = st.integers(0, 1)
_U16 = st.integers(0, 0xFFFF)
_U32 = st.integers(0, 0xFFFF_FFFF)
_SUBSCRIPTION_IDS = st.integers(1, 268_435_455)

PROPERTY_VALUES: dict[str, st.SearchStrategy[typing.Any]] = {
    "payload_format_indicator": _FLAG,
    "message_expiry_interval": _U32,
    "content_type": texts,
    "response_topic": topic_names,
    "correlation_data": payloads,
    "subscription_identifiers": st.lists(_SUBSCRIPTION_IDS, min_size=1, max_size=3).map(tuple),
    "session_expiry_interval": _U32,
    "assigned_client_identifier": texts,
    "server_keep_alive": _U16,
    "authentication_method": texts,
    "authentication_data": payloads,
    "request_problem_information": _FLAG,
    "will_delay_interval": _U32,
    "request_response_information": _FLAG,
    "response_information": texts,
    "server_reference": texts,
    "reason_string": texts,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": _U16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": _FLAG,
    "retain_available": _FLAG,
    "user_properties": st.lists(st.tuples(texts, texts), min_size=1, max_size=3).map(tuple),
    "maximum_packet_size": st.integers(1, 0xFFFF_FFFF),
    "wildcard_subscription_available": _FLAG,
    "subscription_identifier_available": _FLAG,
    "shared_subscription_available": _FLAG,
}


def field_name(ident: int) -> str:
    """The Properties field for a property identifier."""
    plural = {
        PropertyId.SUBSCRIPTION_IDENTIFIER: "subscription_identifiers",
        PropertyId.USER_PROPERTY: "user_properties",
    }
    return plural.get(PropertyId(ident), PropertyId(ident).name.lower())


def properties(
    scope: Scope, *, exclude: tuple[str, ...] = (), **fixed: st.SearchStrategy[typing.Any]
) -> st.SearchStrategy[Properties]:
    """Random properties of those ``scope`` allows; ``fixed`` ones are always present."""
    names = {field_name(ident) for ident in scope.allowed} - set(exclude) - set(fixed)
    optional = {name: PROPERTY_VALUES[name] for name in sorted(names)}
    return st.fixed_dictionaries(fixed, optional=optional).map(lambda d: Properties(**d))


def reasons(ptype: PacketType) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted(REASON_CODES[ptype]))


def _connect_properties(props: Properties) -> Properties:
    # Authentication data needs an authentication method (3.1.2.11.10).
    if props.authentication_method is None:
        return msgspec.structs.replace(props, authentication_data=None)
    return props


wills5 = st.builds(
    Will,
    topic=topic_names,
    payload=payloads,
    qos=qoses,
    retain=st.booleans(),
    properties=properties(WILL_SCOPE),
)


@st.composite
def connects5(draw: st.DrawFn) -> Connect:
    return Connect(
        protocol_name="MQTT",
        protocol_level=5,
        client_id=draw(texts),
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 65535)),
        username=draw(st.none() | texts),
        password=draw(st.none() | payloads),  # MQTT 5 allows a password alone
        will=draw(st.none() | wills5),
        properties=_connect_properties(draw(properties(SCOPES[PacketType.CONNECT]))),
    )


@st.composite
def connacks5(draw: st.DrawFn) -> ConnAck:
    code = draw(reasons(PacketType.CONNACK))
    return ConnAck(
        session_present=code == 0 and draw(st.booleans()),
        return_code=code,
        properties=draw(properties(SCOPES[PacketType.CONNACK])),
    )


def publishes5(*, from_server: bool) -> st.SearchStrategy[Publish]:
    # Only a server sends subscription identifiers in PUBLISH (3.3.4).
    exclude = () if from_server else ("subscription_identifiers",)

    @st.composite
    def build(draw: st.DrawFn) -> Publish:
        qos = draw(qoses)
        props = draw(properties(SCOPES[PacketType.PUBLISH], exclude=exclude))
        # With a Topic Alias, the topic name may be left empty (3.3.2.1).
        topic = draw(topic_names if props.topic_alias is None else st.just("") | topic_names)
        return Publish(
            topic=topic,
            payload=draw(payloads),
            qos=qos,
            retain=draw(st.booleans()),
            dup=qos > 0 and draw(st.booleans()),
            packet_id=draw(packet_ids) if qos else None,
            properties=props,
        )

    return build()


def _options(qos: int, no_local: int, as_published: int, handling: int) -> int:
    return qos | no_local << 2 | as_published << 3 | handling << 4


def _no_local_off_for_shares(subs: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    return tuple((f, o & ~4 if f.startswith("$share/") else o) for f, o in subs)


subscription_options = st.builds(_options, qoses, _FLAG, _FLAG, st.integers(0, 2))


def _acks(cls: type[PubAck | PubRec | PubRel | PubComp]) -> st.SearchStrategy[Packet]:
    ptype = PacketType[cls.__name__.upper()]
    return st.builds(
        cls, packet_id=packet_ids, reason_code=reasons(ptype), properties=properties(SCOPES[ptype])
    )


def disconnects5(*, from_server: bool) -> st.SearchStrategy[Packet]:
    # The server never sends a session expiry interval in DISCONNECT [MQTT-3.14.2-2].
    exclude = ("session_expiry_interval",) if from_server else ()
    return st.builds(
        Disconnect,
        reason_code=reasons(PacketType.DISCONNECT),
        properties=properties(SCOPES[PacketType.DISCONNECT], exclude=exclude),
    )


auths = st.builds(
    Auth,
    reason_code=reasons(PacketType.AUTH),
    # AUTH keeps to the method CONNECT named.
    properties=properties(SCOPES[PacketType.AUTH], exclude=("authentication_method",))
    | properties(SCOPES[PacketType.AUTH], authentication_method=st.just(METHOD)),
)

STRATEGIES5: dict[type, st.SearchStrategy[Packet]] = {
    Connect: connects5(),
    ConnAck: connacks5(),
    Publish: publishes5(from_server=True),
    PubAck: _acks(PubAck),
    PubRec: _acks(PubRec),
    PubRel: _acks(PubRel),
    PubComp: _acks(PubComp),
    Subscribe: st.builds(
        Subscribe,
        packet_id=packet_ids,
        subscriptions=st.lists(
            st.tuples(topic_filters, subscription_options), min_size=1, max_size=4
        ).map(_no_local_off_for_shares),
        properties=properties(
            SCOPES[PacketType.SUBSCRIBE],
            exclude=("subscription_identifiers",),
        )
        | properties(
            SCOPES[PacketType.SUBSCRIBE],
            subscription_identifiers=_SUBSCRIPTION_IDS.map(lambda i: (i,)),
        ),
    ),
    SubAck: st.builds(
        SubAck,
        packet_id=packet_ids,
        return_codes=st.lists(reasons(PacketType.SUBACK), min_size=1, max_size=4).map(tuple),
        properties=properties(SCOPES[PacketType.SUBACK]),
    ),
    Unsubscribe: st.builds(
        Unsubscribe,
        packet_id=packet_ids,
        topic_filters=st.lists(topic_filters, min_size=1, max_size=4).map(tuple),
        properties=properties(SCOPES[PacketType.UNSUBSCRIBE]),
    ),
    UnsubAck: st.builds(
        UnsubAck,
        packet_id=packet_ids,
        reason_codes=st.lists(reasons(PacketType.UNSUBACK), min_size=1, max_size=4).map(tuple),
        properties=properties(SCOPES[PacketType.UNSUBACK]),
    ),
    PingReq: st.just(PingReq()),
    PingResp: st.just(PingResp()),
    Disconnect: disconnects5(from_server=False),
    Auth: auths,
}
_BOTH_WAYS = (PubAck, PubRec, PubRel, PubComp, Auth)
client_packets5 = st.one_of(
    publishes5(from_server=False),
    *(STRATEGIES5[t] for t in (*_BOTH_WAYS, Subscribe, Unsubscribe, PingReq, Disconnect)),
)
server_packets5 = st.one_of(
    publishes5(from_server=True),
    disconnects5(from_server=True),
    *(STRATEGIES5[t] for t in (*_BOTH_WAYS, SubAck, UnsubAck, PingResp)),
)
any_packets5 = st.one_of(*STRATEGIES5.values())


def test_strategies_cover_every_packet_type() -> None:
    assert set(STRATEGIES5) == set(typing.get_args(Packet))


def test_property_strategies_cover_every_property() -> None:
    assert set(PROPERTY_VALUES) == {f.name for f in msgspec.structs.fields(Properties)}
    assert {field_name(ident) for ident in PropertyId} == set(PROPERTY_VALUES)


# ------------------------------------------------------------------------- properties


@given(STRATEGIES5[Connect])
def test_connect_round_trips_client_to_server(packet: Connect) -> None:
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(MQTTConnection(Role.CLIENT).send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(STRATEGIES5[ConnAck])
def test_connack_round_trips_server_to_client(packet: ConnAck) -> None:
    conn = client5_connecting()
    conn.receive_data(server5().send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(client_packets5)
def test_client_packets_round_trip_after_connect(packet: Packet) -> None:
    conn = server5()
    conn.receive_data(client5().send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(server_packets5)
def test_server_packets_round_trip_after_connack(packet: Packet) -> None:
    conn = client5()
    conn.receive_data(server5().send(packet))
    assert conn.next_event() == packet
    assert conn.next_event() is NEED_DATA


@given(any_packets5)
def test_every_strict_prefix_needs_data(packet: Packet) -> None:
    data = encode_packet(packet, 5)
    assert receiver5_for(packet).next_event() is NEED_DATA  # the empty prefix
    for cut in range(1, len(data)):
        conn = receiver5_for(packet)
        conn.receive_data(data[:cut])
        assert conn.next_event() is NEED_DATA, cut


@given(any_packets5)
def test_decoding_with_the_right_version_inverts_encoding(packet: Packet) -> None:
    data = encode_packet(packet, 5)
    body_start = 2 + next(i for i, b in enumerate(data[1:]) if not b & 0x80)
    assert decode_packet(data[0], data[body_start:], 5) == packet


def _bytewise_matches_bulk(
    make: Callable[[], MQTTConnection], packets: list[Packet], *, eof: bool = True
) -> None:
    data = b"".join(encode_packet(p, 5) for p in packets)
    expected: list[Event] = [*packets, CLOSED]

    bulk = make()
    bulk.receive_data(data)
    bulk.receive_data(b"")
    assert drain(bulk) == expected

    bytewise = make()
    events: list[Event] = []
    for i in range(len(data)):
        bytewise.receive_data(data[i : i + 1])
        events += drain(bytewise)
    bytewise.receive_data(b"")
    events += drain(bytewise)
    assert events == expected


def _for_helpers(connect: Connect) -> Connect:
    """``connect`` with the method and session expiry the generated packets rely on."""
    props = msgspec.structs.replace(
        connect.properties, authentication_method=METHOD, session_expiry_interval=60
    )
    return msgspec.structs.replace(connect, properties=props)


@settings(max_examples=50)
@given(
    connects5().map(_for_helpers),
    st.lists(client_packets5.filter(lambda p: not isinstance(p, Disconnect)), max_size=5),
    st.none() | STRATEGIES5[Disconnect],
)
def test_client_stream_byte_by_byte_matches_all_at_once(
    connect: Connect, packets: list[Packet], disconnect: Packet | None
) -> None:
    stream = [connect, *packets] + ([disconnect] if disconnect else [])
    _bytewise_matches_bulk(lambda: MQTTConnection(Role.SERVER), stream)


@settings(max_examples=50)
@given(STRATEGIES5[ConnAck], st.lists(server_packets5, max_size=5))
def test_server_stream_byte_by_byte_matches_all_at_once(
    connack: ConnAck, packets: list[Packet]
) -> None:
    # A server's DISCONNECT ends the stream: nothing may follow it.
    cut = next((i + 1 for i, p in enumerate(packets) if isinstance(p, Disconnect)), len(packets))
    _bytewise_matches_bulk(client5_connecting, [connack, *packets[:cut]])


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
@given(st.binary(max_size=200))
def test_garbage_after_a_v5_connect_only_raises_protocol_errors(garbage: bytes) -> None:
    err = _feed_garbage(server5(), garbage)
    assert err is None or isinstance(err.reason, ReasonCode)


@settings(max_examples=300)
@given(st.integers(0, 255), st.binary(max_size=100), st.sampled_from(Role))
def test_random_bodies_behind_valid_headers_only_raise_protocol_errors(
    type_byte: int, body: bytes, role: Role
) -> None:
    conn = server5() if role is Role.SERVER else client5()
    err = _feed_garbage(conn, frame(type_byte, body))
    assert err is None or isinstance(err.reason, ReasonCode)


@settings(max_examples=300)
@given(st.binary(max_size=60), st.sampled_from(sorted(set(PacketType) - {PacketType.PINGREQ})))
def test_random_property_blocks_only_raise_protocol_errors(block: bytes, ptype: PacketType) -> None:
    # A valid packet head, then a well-sized property block of random bytes.
    heads = {
        PacketType.CONNECT: b"\x00\x04MQTT\x05\x02\x00\x00",
        PacketType.PUBLISH: string(b"t"),
        PacketType.SUBSCRIBE: b"\x00\x01",
        PacketType.UNSUBSCRIBE: b"\x00\x01",
        PacketType.DISCONNECT: b"\x00",
    }
    flags = {PacketType.SUBSCRIBE: 2, PacketType.UNSUBSCRIBE: 2, PacketType.PUBREL: 2}
    head = heads.get(ptype, b"\x00\x01\x00")
    body = head + encode_varint(len(block)) + block
    type_byte = ptype << 4 | flags.get(ptype, 0)
    conn = MQTTConnection(Role.SERVER) if ptype is PacketType.CONNECT else server5()
    err = _feed_garbage(conn, bytes((type_byte,)) + encode_varint(len(body)) + body)
    assert err is None or isinstance(err.reason, ReasonCode)


# ------------------------------------------------------------------- property rules


def test_user_properties_may_repeat_and_keep_their_order() -> None:
    pairs = (("k", "1"), ("k", "2"), ("a", ""))
    block = props_block(*(prop(0x26, string(k.encode()) + string(v.encode())) for k, v in pairs))
    conn = server5()
    conn.receive_data(publish5(b"t", block))
    event = conn.next_event()
    assert isinstance(event, Publish)
    assert event.properties.user_properties == pairs


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(props_block(prop(0x03, string(b"a")), prop(0x03, string(b"b"))), id="content"),
        pytest.param(props_block(prop(0x02, u32(1)), prop(0x02, u32(1))), id="expiry"),
        pytest.param(props_block(prop(0x23, u16(1)), prop(0x23, u16(2))), id="topic-alias"),
    ],
)
def test_duplicate_property_is_a_protocol_error(block: bytes) -> None:
    err = decode_error(server5(), publish5(b"t", block))
    assert err.reason is PROTOCOL_ERROR
    assert "repeated" in str(err)


def test_duplicate_receive_maximum_in_connect_is_a_protocol_error() -> None:
    block = props_block(prop(0x21, u16(5)), prop(0x21, u16(5)))
    body = string(b"MQTT") + b"\x05\x02\x00\x00" + block + string(b"c")
    err = decode_error(MQTTConnection(Role.SERVER), frame(0x10, body))
    assert err.reason is PROTOCOL_ERROR


def test_subscription_identifiers_may_repeat_in_publish_from_the_server() -> None:
    block = props_block(prop(0x0B, b"\x01"), prop(0x0B, b"\x80\x01"))
    conn = client5()
    conn.receive_data(publish5(b"t", block))
    event = conn.next_event()
    assert isinstance(event, Publish)
    assert event.properties.subscription_identifiers == (1, 128)


def test_subscription_identifier_in_publish_from_a_client_is_a_protocol_error() -> None:
    err = decode_error(server5(), publish5(b"t", props_block(prop(0x0B, b"\x01"))))
    assert err.reason is PROTOCOL_ERROR


def test_two_subscription_identifiers_in_subscribe_are_a_protocol_error() -> None:
    block = props_block(prop(0x0B, b"\x01"), prop(0x0B, b"\x02"))
    err = decode_error(server5(), frame(0x82, b"\x00\x01" + block + string(b"a") + b"\x00"))
    assert err.reason is PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("block", "message"),
    [
        pytest.param(props_block(prop(0x18, u32(1))), "will delay", id="will-delay"),
        pytest.param(props_block(prop(0x11, u32(1))), "session expiry", id="session-expiry"),
        pytest.param(props_block(prop(0x21, u16(1))), "receive maximum", id="receive-maximum"),
        pytest.param(props_block(prop(0x7F, b"")), "unknown", id="unknown-0x7f"),
        pytest.param(props_block(prop(0x00, b"")), "unknown", id="unknown-0x00"),
        pytest.param(props_block(b"\x81\x01"), "unknown", id="two-byte-identifier"),
    ],
)
def test_property_not_allowed_in_publish_is_malformed(block: bytes, message: str) -> None:
    err = decode_error(server5(), publish5(b"t", block))
    assert err.reason is MALFORMED
    assert message in str(err)


def test_topic_alias_in_connect_is_malformed() -> None:
    body = string(b"MQTT") + b"\x05\x02\x00\x00" + props_block(prop(0x23, u16(1))) + string(b"c")
    err = decode_error(MQTTConnection(Role.SERVER), frame(0x10, body))
    assert err.reason is MALFORMED
    assert err.protocol_level == 5


def test_content_type_in_will_properties_is_allowed_but_not_topic_alias() -> None:
    def connect(will_block: bytes) -> bytes:
        body = (
            string(b"MQTT")
            + b"\x05\x06\x00\x00\x00"
            + string(b"c")
            + will_block
            + string(b"w")
            + string(b"")
        )
        return frame(0x10, body)

    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(connect(props_block(prop(0x03, string(b"json")))))
    event = conn.next_event()
    assert isinstance(event, Connect)
    assert event.will is not None
    assert event.will.properties == Properties(content_type="json")

    err = decode_error(MQTTConnection(Role.SERVER), connect(props_block(prop(0x23, u16(1)))))
    assert err.reason is MALFORMED


def _connect_with(*properties: bytes) -> bytes:
    body = string(b"MQTT") + b"\x05\x02\x00\x00" + props_block(*properties) + string(b"c")
    return frame(0x10, body)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_connect_with(prop(0x21, u16(0))), id="receive-maximum-0"),
        pytest.param(_connect_with(prop(0x27, u32(0))), id="maximum-packet-size-0"),
        pytest.param(_connect_with(prop(0x17, b"\x02")), id="request-problem-information-2"),
        pytest.param(_connect_with(prop(0x19, b"\x02")), id="request-response-information-2"),
        pytest.param(_connect_with(prop(0x16, string(b"x"))), id="auth-data-without-method"),
    ],
)
def test_bad_connect_property_value_is_a_protocol_error(data: bytes) -> None:
    conn = MQTTConnection(Role.SERVER)
    err = decode_error(conn, data)
    assert err.reason is PROTOCOL_ERROR
    assert err.connack_code is None
    # The level was read: send() now answers in MQTT 5.
    assert err.protocol_level == 5
    assert conn.protocol_level == 5
    assert conn.send(ConnAck(return_code=err.reason)) == b"\x20\x03\x00\x82\x00"


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(props_block(prop(0x23, u16(0))), id="topic-alias-0"),
        pytest.param(props_block(prop(0x0B, b"\x00")), id="subscription-identifier-0"),
        pytest.param(props_block(prop(0x01, b"\x02")), id="payload-format-2"),
        pytest.param(props_block(prop(0x08, string(b"a/#"))), id="response-topic-wildcard"),
        pytest.param(props_block(prop(0x08, string(b""))), id="response-topic-empty"),
    ],
)
def test_bad_publish_property_value_is_a_protocol_error(block: bytes) -> None:
    err = decode_error(client5(), publish5(b"t", block))
    assert err.reason is PROTOCOL_ERROR


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(props_block(prop(0x24, b"\x02")), id="maximum-qos-2"),
        pytest.param(props_block(prop(0x25, b"\x02")), id="retain-available-2"),
        pytest.param(props_block(prop(0x28, b"\x02")), id="wildcard-available-2"),
        pytest.param(props_block(prop(0x29, b"\x02")), id="subscription-ids-available-2"),
        pytest.param(props_block(prop(0x2A, b"\x02")), id="shared-available-2"),
    ],
)
def test_bad_connack_property_value_is_a_protocol_error(block: bytes) -> None:
    err = decode_error(client5_connecting(), frame(0x20, b"\x00\x00" + block))
    assert err.reason is PROTOCOL_ERROR


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\x05\x02\x00\x00", id="length-past-the-end"),
        pytest.param(b"\x02\x02\x00", id="value-past-the-block"),
        pytest.param(b"\x03\x26\x00\x01", id="string-pair-cut"),
        pytest.param(b"\x80\x80\x80\x80\x01", id="five-byte-length"),
        pytest.param(b"\x04\x03\x00\x02\xff", id="bad-utf8"),
    ],
)
def test_broken_property_block_is_malformed(block: bytes) -> None:
    err = decode_error(server5(), publish5(b"t", block, payload=b""))
    assert err.reason is MALFORMED


# ---------------------------------------------------------------------- packet rules


def test_empty_topic_without_topic_alias_is_a_protocol_error() -> None:
    err = decode_error(server5(), publish5(b"", b"\x00"))
    assert err.reason is PROTOCOL_ERROR
    assert "topic alias" in str(err)


def test_empty_topic_with_topic_alias_comes_out_empty_for_the_listener() -> None:
    conn = server5()
    conn.receive_data(publish5(b"", props_block(prop(0x23, u16(3)))))
    assert conn.next_event() == Publish(
        topic="", payload=b"hi", properties=Properties(topic_alias=3)
    )


def test_empty_topic_stays_invalid_in_3_1_1_whatever_follows() -> None:
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(encode_packet(Connect(client_id="c")))
    conn.next_event()
    err = decode_error(conn, publish5(b"", props_block(prop(0x23, u16(3)))))
    assert err.reason is ReasonCode.TOPIC_NAME_INVALID


def test_wildcard_topic_with_alias_is_still_invalid() -> None:
    err = decode_error(server5(), publish5(b"a/+", props_block(prop(0x23, u16(3)))))
    assert err.reason is ReasonCode.TOPIC_NAME_INVALID


def _subscribe(options: int, topic_filter: bytes = b"a/b") -> bytes:
    return frame(0x82, b"\x00\x01\x00" + string(topic_filter) + bytes((options,)))


@pytest.mark.parametrize("options", [0x40, 0x80, 0xC0, 0x41])
def test_reserved_subscription_option_bits_are_malformed(options: int) -> None:
    err = decode_error(server5(), _subscribe(options))
    assert err.reason is MALFORMED


@pytest.mark.parametrize(
    ("options", "topic_filter"),
    [
        pytest.param(0x30, b"a/b", id="retain-handling-3"),
        pytest.param(0x03, b"a/b", id="qos-3"),
        pytest.param(0x04, b"$share/g/a/b", id="no-local-on-shared"),
    ],
)
def test_forbidden_subscription_options_are_protocol_errors(
    options: int, topic_filter: bytes
) -> None:
    err = decode_error(server5(), _subscribe(options, topic_filter))
    assert err.reason is PROTOCOL_ERROR


def test_all_subscription_options_decode() -> None:
    conn = server5()
    conn.receive_data(_subscribe(0x2E) + _subscribe(0x04, b"$shared/x"))
    assert [p.subscriptions for p in drain(conn)] == [  # type: ignore[union-attr]
        (("a/b", 0x2E),),
        (("$shared/x", 0x04),),
    ]


def test_subscription_options_beyond_qos_stay_malformed_in_3_1_1() -> None:
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(encode_packet(Connect(client_id="c")))
    conn.next_event()
    err = decode_error(conn, frame(0x82, b"\x00\x01" + string(b"a") + b"\x04"))
    assert err.reason is MALFORMED


@pytest.mark.parametrize(
    ("receiver", "data"),
    [
        pytest.param(server5, b"\x40\x03\x00\x01\x92", id="puback-0x92"),
        pytest.param(server5, b"\x50\x03\x00\x01\x04", id="pubrec-0x04"),
        pytest.param(server5, b"\x62\x03\x00\x01\x10", id="pubrel-0x10"),
        pytest.param(server5, b"\x70\x03\x00\x01\x80", id="pubcomp-0x80"),
        pytest.param(server5, b"\xe0\x01\x84", id="disconnect-0x84"),
        pytest.param(server5, b"\xe0\x01\x91", id="disconnect-0x91"),
        pytest.param(server5, b"\xf0\x02\x01\x00", id="auth-0x01"),
        pytest.param(client5, b"\x90\x04\x00\x01\x00\x84", id="suback-0x84"),
        pytest.param(client5, b"\xb0\x04\x00\x01\x00\x01", id="unsuback-0x01"),
        pytest.param(client5_connecting, b"\x20\x03\x00\x8b\x00", id="connack-0x8b"),
    ],
)
def test_reason_code_not_valid_for_the_packet_type_is_a_protocol_error(
    receiver: Callable[[], MQTTConnection], data: bytes
) -> None:
    err = decode_error(receiver(), data)
    assert err.reason is PROTOCOL_ERROR
    assert "reason code" in str(err)


@pytest.mark.parametrize("data", [b"\x90\x03\x00\x01\x00", b"\xb0\x03\x00\x01\x00"])
def test_suback_or_unsuback_without_reason_codes_is_a_protocol_error(data: bytes) -> None:
    err = decode_error(client5(), data)
    assert err.reason is PROTOCOL_ERROR


def test_connack_with_session_present_and_an_error_is_a_protocol_error() -> None:
    err = decode_error(client5_connecting(), b"\x20\x03\x01\x87\x00")
    assert err.reason is PROTOCOL_ERROR


def test_connack_without_property_length_is_malformed() -> None:
    err = decode_error(client5_connecting(), b"\x20\x02\x00\x00")
    assert err.reason is MALFORMED


def test_level_5_connect_is_accepted_and_switches_the_connection() -> None:
    body = string(b"MQTT") + b"\x05\x02\x00\x00\x00" + string(b"c")
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(frame(0x10, body))
    assert conn.next_event() == Connect(protocol_level=5, client_id="c")
    assert conn.protocol_level == 5
    assert conn.send(PubAck(packet_id=1, reason_code=0x10)) == b"\x40\x03\x00\x01\x10"


def test_mqisdp_with_level_5_is_refused_as_unsupported() -> None:
    body = string(b"MQIsdp") + b"\x05\x02\x00\x00\x00" + string(b"c")
    err = decode_error(MQTTConnection(Role.SERVER), frame(0x10, body))
    assert err.connack_code is ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION
    assert err.reason is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


# ------------------------------------------------------------- direction and ordering


def test_auth_in_3_1_1_is_a_protocol_error() -> None:
    conn = MQTTConnection(Role.SERVER)
    conn.receive_data(encode_packet(Connect(client_id="c")))
    conn.next_event()
    err = decode_error(conn, b"\xf0\x00")
    assert err.reason is PROTOCOL_ERROR
    with pytest.raises(ValueError, match="MQTT 5"):
        encode_packet(Auth())


def test_auth_without_a_method_in_connect_is_a_protocol_error() -> None:
    err = decode_error(server5(Connect(client_id="c", protocol_level=5)), b"\xf0\x00")
    assert err.reason is PROTOCOL_ERROR


def test_auth_with_another_method_is_a_protocol_error() -> None:
    data = encode_packet(
        Auth(reason_code=0x19, properties=Properties(authentication_method="X")), 5
    )
    err = decode_error(server5(), data)
    assert err.reason is PROTOCOL_ERROR


def test_auth_before_connack_needs_a_method_in_the_clients_connect() -> None:
    err = decode_error(client5_connecting(Connect(client_id="c", protocol_level=5)), b"\xf0\x00")
    assert err.reason is PROTOCOL_ERROR


def test_disconnect_from_the_server_is_accepted_in_5_only() -> None:
    conn = client5()
    conn.receive_data(b"\xe0\x01\x8b")
    assert conn.next_event() == Disconnect(reason_code=ReasonCode.SERVER_SHUTTING_DOWN)
    assert conn.state is State.CLOSED

    v4 = MQTTConnection(Role.CLIENT)
    v4.receive_data(encode_packet(ConnAck()))
    v4.next_event()
    assert decode_error(v4, b"\xe0\x00").reason is PROTOCOL_ERROR


def test_session_expiry_in_disconnect_from_the_server_is_a_protocol_error() -> None:
    data = encode_packet(Disconnect(properties=Properties(session_expiry_interval=5)), 5)
    assert decode_error(client5(), data).reason is PROTOCOL_ERROR


def test_client_cannot_set_a_session_expiry_after_connecting_with_none() -> None:
    data = encode_packet(Disconnect(properties=Properties(session_expiry_interval=5)), 5)
    err = decode_error(server5(Connect(client_id="c", protocol_level=5)), data)
    assert err.reason is PROTOCOL_ERROR
    # Zero keeps it as it was: allowed.
    conn = server5(Connect(client_id="c", protocol_level=5))
    conn.receive_data(
        encode_packet(Disconnect(properties=Properties(session_expiry_interval=0)), 5)
    )
    assert isinstance(conn.next_event(), Disconnect)


def test_server_sends_disconnect_with_a_reason_in_5_and_nothing_in_3_1_1() -> None:
    conn = server5()
    assert conn.send(Disconnect(reason_code=ReasonCode.SESSION_TAKEN_OVER)) == b"\xe0\x01\x8e"
    assert conn.state is State.CLOSED

    v4 = MQTTConnection(Role.SERVER)
    v4.receive_data(encode_packet(Connect(client_id="c")))
    v4.next_event()
    assert v4.send(Disconnect(reason_code=ReasonCode.SESSION_TAKEN_OVER)) == b""
    assert v4.state is State.CLOSED


def test_client_learns_its_level_from_the_connect_it_sends() -> None:
    conn = MQTTConnection(Role.CLIENT)
    assert conn.protocol_level == 4
    conn.send(Connect(client_id="c", protocol_level=5))
    assert conn.protocol_level == 5
    conn.receive_data(b"\x20\x03\x00\x00\x00")
    assert conn.next_event() == ConnAck()


# ------------------------------------------------------------------------- encoding


def test_3_1_1_encoding_leaves_out_what_it_cannot_carry() -> None:
    props = Properties(reason_string="why")
    assert encode_packet(PubAck(packet_id=1, reason_code=0x10, properties=props)) == (
        b"\x40\x02\x00\x01"
    )
    assert encode_packet(UnsubAck(packet_id=1, reason_codes=(0,))) == b"\xb0\x02\x00\x01"
    assert encode_packet(Disconnect(reason_code=0x04)) == b"\xe0\x00"
    publish = Publish(topic="t", payload=b"", properties=Properties(topic_alias=1))
    assert encode_publish(publish) == b"\x30\x03\x00\x01t"


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(PubAck(packet_id=1, reason_code=0x92), id="bad-reason"),
        pytest.param(Disconnect(reason_code=0x84), id="bad-disconnect-reason"),
        pytest.param(UnsubAck(packet_id=1), id="unsuback-without-reason-codes"),
        pytest.param(ConnAck(session_present=True, return_code=0x80), id="present-and-refused"),
        pytest.param(
            Publish(topic="t", payload=b"", properties=Properties(receive_maximum=1)),
            id="property-not-allowed",
        ),
        pytest.param(
            Publish(topic="t", payload=b"", properties=Properties(topic_alias=0)),
            id="topic-alias-0",
        ),
        pytest.param(
            Subscribe(
                packet_id=1,
                subscriptions=(("a", 0),),
                properties=Properties(subscription_identifiers=(1, 2)),
            ),
            id="two-subscription-ids",
        ),
        pytest.param(
            Publish(topic="t", payload=b"", properties=Properties(message_expiry_interval=-1)),
            id="negative-four-byte",
        ),
    ],
)
def test_encoding_a_packet_the_peer_must_refuse_raises(packet: Packet) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        encode_packet(packet, 5)
