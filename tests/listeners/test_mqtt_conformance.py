"""MQTT 5.0 conformance statements that bind the server, one small test each.

Each test is named after the statement it checks (``test_mqtt_3_3_1_4_...`` checks
[MQTT-3.3.1-4]); its docstring names any other statement it also checks.
docs/mqtt-conformance.md maps every statement of the spec to its tests.

The tests drive the session adapter over in-memory bytes (tests/listeners/mqtt_harness.py)
or the codec directly. A protocol error is answered as the listener answers it, with
``gateway.listeners.mqtt._refuse``; the listener then closes the connection.
"""

from __future__ import annotations

import unicodedata

import pytest

from gateway.codecs import mqtt
from gateway.codecs.mqtt import MQTTProtocolError, ReasonCode
from gateway.core import Broker, Kind, Message
from gateway.listeners.mqtt import _refuse
from tests.core.fakes import Clock
from tests.listeners.mqtt_harness import Client, plain_fast_path

# Every test runs twice: PUBLISHes as events, then plain QoS 0 ones on the listener's fast path.
pytestmark = pytest.mark.usefixtures(plain_fast_path.__name__)

P = mqtt.Properties
NO_PROPERTIES = mqtt.NO_PROPERTIES
PERSISTENT = P(session_expiry_interval=3600)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> Broker:
    return Broker(clock=clock)


# --------------------------------------------------------------------------- helpers


def connected(broker: Broker, clock: Clock, client_id: str, **fields: object) -> Client:
    """An MQTT 5 client that has connected; ``fields`` go into its CONNECT."""
    c = Client(broker, clock)
    c.connect(client_id, **fields)
    return c


def subscribe(c: Client, *subs: tuple[str, int], pid: int = 1, **props: object) -> mqtt.SubAck:
    """Subscribe; the SUBACK must be all that comes back (no retained message)."""
    ack, rest = subscribe_for(c, *subs, pid=pid, **props)
    assert rest == []
    return ack


def subscribe_for(
    c: Client, *subs: tuple[str, int], pid: int = 1, **props: object
) -> tuple[mqtt.SubAck, list[mqtt.Publish]]:
    """Subscribe; the SUBACK and the retained messages that follow it."""
    c.send(mqtt.Subscribe(packet_id=pid, subscriptions=subs, properties=P(**props)))  # type: ignore[arg-type]
    ack, *rest = c.received()
    assert isinstance(ack, mqtt.SubAck)
    assert all(isinstance(p, mqtt.Publish) for p in rest)
    return ack, rest  # type: ignore[return-value]


def publishes(c: Client) -> list[mqtt.Publish]:
    return [p for p in c.received() if isinstance(p, mqtt.Publish)]


def msg(topic: str, payload: bytes = b"x", qos: int = 0, **fields: object) -> Message:
    return Message(destination=topic, payload=payload, qos=qos, **fields)  # type: ignore[arg-type]


def string(raw: bytes) -> bytes:
    """A length-prefixed MQTT string from raw bytes, well-formed or not."""
    return len(raw).to_bytes(2, "big") + raw


def frame(type_byte: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((type_byte, len(body))) + body


def raw_connect5(flags: int = 0x02, props: bytes = b"\x00", name: bytes = b"MQTT") -> bytes:
    """An MQTT 5 CONNECT for client id "c", keep alive 0, with the given parts."""
    head = string(name) + b"\x05" + bytes((flags,)) + b"\x00\x00"
    return frame(0x10, head + props + string(b"c"))


def answer_to(c: Client, data: bytes) -> tuple[MQTTProtocolError, list[mqtt.Packet]]:
    """Feed raw bytes to the server: the protocol error they cause, and what the listener
    sends back for it before closing."""
    c.server.receive_data(data)
    with pytest.raises(MQTTProtocolError) as info:
        _handle_all(c)
    _refuse(info.value, c.server, c.session)
    return info.value, c.received()


def _handle_all(c: Client) -> None:
    c.handle_all()


def fresh(broker: Broker, clock: Clock) -> Client:
    """A client that will send raw CONNECT bytes: its own codec is told it speaks MQTT 5."""
    c = Client(broker, clock)
    c.client.send(mqtt.Connect(client_id="c", protocol_level=5))
    return c


# ---------------------------------------------------------------- 1 data representation


def test_mqtt_1_5_4_3_bom_is_not_stripped(broker: Broker, clock: Clock) -> None:
    with_bom, plain = connected(broker, clock, "bom"), connected(broker, clock, "plain")
    subscribe(with_bom, ("\ufeffa/b", 0))
    subscribe(plain, ("a/b", 0))
    pub = connected(broker, clock, "pub")
    pub.send(mqtt.Publish(topic="\ufeffa/b", payload=b"1"))
    assert [p.topic for p in publishes(with_bom)] == ["\ufeffa/b"]
    assert publishes(plain) == []


def test_mqtt_1_5_7_1_user_property_with_bad_utf8_is_malformed(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    user_property = b"\x26" + string(b"\xff") + string(b"v")
    block = bytes((len(user_property),)) + user_property
    err, answer = answer_to(c, frame(0x30, string(b"t") + block + b"payload"))
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]


# ------------------------------------------------------------- 2 control packet format


def test_mqtt_2_2_1_4_packet_ids_are_nonzero_and_unused(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-4.3.2-1], [MQTT-4.3.3-1], [MQTT-4.3.2-2] and [MQTT-4.3.3-2]."""
    sub = connected(broker, clock, "sub")
    subscribe(sub, ("t", 2))
    for i in range(4):
        broker.publish(msg("t", bytes([i]), qos=1 + i % 2))
    first = publishes(sub)
    pids = [p.packet_id for p in first]
    assert all(pids)
    assert len(set(pids)) == 4
    assert [(p.qos, p.dup) for p in first] == [(1, False), (2, False), (1, False), (2, False)]
    assert first[0].packet_id is not None
    sub.send(mqtt.PubAck(packet_id=first[0].packet_id))
    broker.publish(msg("t", b"next", qos=1))
    [after] = publishes(sub)
    assert after.packet_id not in pids[1:]
    assert after.packet_id


def test_mqtt_2_2_1_6_acks_carry_the_request_packet_id(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-3.8.4-2] and [MQTT-3.10.4-5]."""
    c = connected(broker, clock, "c")
    assert subscribe(c, ("t", 0), pid=4242).packet_id == 4242
    c.send(mqtt.Unsubscribe(packet_id=777, topic_filters=("t",)))
    [ack] = c.received()
    assert isinstance(ack, mqtt.UnsubAck)
    assert ack.packet_id == 777


# ------------------------------------------------------------------------ 3.1 CONNECT


def test_mqtt_3_1_0_2_second_connect_is_a_protocol_error(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-3.2.0-2]: the answer is a DISCONNECT, never a second CONNACK."""
    c = connected(broker, clock, "c")
    again = mqtt.encode_packet(mqtt.Connect(client_id="c", protocol_level=5))
    err, answer = answer_to(c, again)
    assert err.reason is ReasonCode.PROTOCOL_ERROR
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.PROTOCOL_ERROR)]


def test_mqtt_3_1_2_1_unknown_protocol_name_is_refused(broker: Broker, clock: Clock) -> None:
    c = fresh(broker, clock)
    err, answer = answer_to(c, raw_connect5(name=b"MQTX"))
    assert err.reason is ReasonCode.PROTOCOL_ERROR
    assert answer == []  # no CONNACK (the spec's MAY), and the listener closes
    assert broker.sessions == {}


def test_mqtt_3_1_2_3_reserved_connect_flag_is_malformed(broker: Broker, clock: Clock) -> None:
    c = fresh(broker, clock)
    err, answer = answer_to(c, raw_connect5(flags=0x03))
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.ConnAck(return_code=ReasonCode.MALFORMED_PACKET)]
    assert broker.sessions == {}


def test_mqtt_3_1_2_4_clean_start_discards_the_session(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-3.1.4-4] and [MQTT-3.2.2-2]."""
    dev = connected(broker, clock, "dev", clean_start=False, properties=PERSISTENT)
    subscribe(dev, ("t", 1))
    dev.drop()
    broker.publish(msg("t", b"queued", qos=1))
    again = Client(broker, clock)
    ack = again.connect("dev", clean_start=True, properties=PERSISTENT)
    assert ack.session_present is False
    assert again.after_connack == []
    assert broker.publish(msg("t", qos=1)).routed == 0


def test_mqtt_3_1_2_10_will_is_published_only_once(broker: Broker, clock: Clock) -> None:
    watcher = connected(broker, clock, "w")
    subscribe(watcher, ("status/#", 0))
    will = mqtt.Will(topic="status/c", payload=b"bye", properties=P(will_delay_interval=5))
    c = connected(broker, clock, "c", will=will, properties=P(session_expiry_interval=10))
    c.drop()
    clock.advance(5)
    broker.tick()
    assert [p.payload for p in publishes(watcher)] == [b"bye"]
    clock.advance(5)
    broker.tick()  # the session ends now: its will is already gone
    assert "c" not in broker.sessions
    assert publishes(watcher) == []


@pytest.mark.parametrize("retain", [False, True])
def test_mqtt_3_1_2_14_will_retain_flag_is_kept(broker: Broker, clock: Clock, retain: bool) -> None:
    """retain=True checks [MQTT-3.1.2-15]."""
    will = mqtt.Will(topic="status/c", payload=b"bye", retain=retain)
    c = connected(broker, clock, "c", will=will)
    c.drop()
    kept = broker.retained.get("status/c")
    assert (kept is not None) is retain
    _, got = subscribe_for(connected(broker, clock, "late"), ("status/#", 0))
    assert [(p.payload, p.retain) for p in got] == ([(b"bye", True)] if retain else [])


def test_mqtt_3_1_2_26_outbound_aliases_stop_at_the_clients_maximum(
    broker: Broker, clock: Clock
) -> None:
    """Also [MQTT-3.3.2-11]."""
    sub = connected(broker, clock, "sub", properties=P(topic_alias_maximum=2))
    subscribe(sub, ("t/#", 0))
    for topic in ("t/a", "t/b", "t/c", "t/a", "t/c"):
        broker.publish(msg(topic))
    got = [(p.topic, p.properties.topic_alias) for p in publishes(sub)]
    assert got == [("t/a", 1), ("t/b", 2), ("t/c", None), ("", 1), ("t/c", None)]


@pytest.mark.parametrize("maximum", [None, 0])
def test_mqtt_3_1_2_27_no_topic_aliases_without_a_maximum(
    broker: Broker, clock: Clock, maximum: int | None
) -> None:
    sub = connected(broker, clock, "sub", properties=P(topic_alias_maximum=maximum))
    subscribe(sub, ("t", 1))
    broker.publish(msg("t"))
    broker.publish(msg("t", qos=1))
    assert [(p.topic, p.properties.topic_alias) for p in publishes(sub)] == [("t", None)] * 2


@pytest.mark.parametrize("requested", [None, 0])
def test_mqtt_3_1_2_28_no_response_information_unless_requested(
    broker: Broker, clock: Clock, requested: int | None
) -> None:
    ack = Client(broker, clock).connect("c", properties=P(request_response_information=requested))
    assert ack.properties.response_information is None


def test_mqtt_3_1_2_29_no_reason_string_or_user_property_on_acks(
    broker: Broker, clock: Clock
) -> None:
    """With Request Problem Information 0, every non-PUBLISH packet goes out bare."""
    c = connected(broker, clock, "c", properties=P(request_problem_information=0))
    c.send(mqtt.Publish(topic="nobody", payload=b"", qos=1, packet_id=1))  # PUBACK 0x10
    c.send(mqtt.Publish(topic="$SYS/x", payload=b"", qos=2, packet_id=2))  # PUBREC 0x87
    c.send(mqtt.PubRel(packet_id=3))  # PUBCOMP 0x92
    c.send(mqtt.Subscribe(packet_id=4, subscriptions=(("$share/g", 0),)))  # SUBACK 0x8F
    c.send(mqtt.Unsubscribe(packet_id=5, topic_filters=("never",)))  # UNSUBACK 0x11
    c.send(mqtt.PingReq())
    got = c.received()
    assert [type(p).__name__ for p in got] == [
        "PubAck",
        "PubRec",
        "PubComp",
        "SubAck",
        "UnsubAck",
        "PingResp",
    ]
    assert [getattr(p, "properties", NO_PROPERTIES) for p in got] == [NO_PROPERTIES] * 6
    c.session.goodbye(ReasonCode.KEEP_ALIVE_TIMEOUT)
    [bye] = c.received()
    assert bye == mqtt.Disconnect(reason_code=ReasonCode.KEEP_ALIVE_TIMEOUT)


def test_mqtt_3_1_3_5_short_alphanumeric_client_ids_are_allowed(
    broker: Broker, clock: Clock
) -> None:
    for client_id in ("0", "0123456789abcdefghijkXY"):
        ack = Client(broker, clock).connect(client_id)
        assert ack.return_code == 0
        assert ack.properties.assigned_client_identifier is None
        assert client_id in broker.sessions


def test_mqtt_3_1_3_10_will_keeps_user_property_order(broker: Broker, clock: Clock) -> None:
    watcher = connected(broker, clock, "w")
    subscribe(watcher, ("status/#", 0))
    pairs = (("z", "1"), ("a", "2"), ("z", "3"))
    will = mqtt.Will(topic="status/c", payload=b"bye", properties=P(user_properties=pairs))
    connected(broker, clock, "c", will=will).drop()
    [got] = publishes(watcher)
    assert got.properties.user_properties == pairs


def test_mqtt_3_1_4_6_nothing_after_a_refused_connect_is_processed(
    broker: Broker, clock: Clock
) -> None:
    c = Client(broker, clock)
    connect = mqtt.Connect(
        client_id="c", protocol_level=5, properties=P(authentication_method="SCRAM-SHA-1")
    )
    publish = mqtt.Publish(topic="t", payload=b"sneaky", retain=True)
    c.server.receive_data(c.client.send(connect) + mqtt.encode_packet(publish, 5))
    event = c.server.next_event()
    assert isinstance(event, mqtt.Connect)
    c.session.handle(event)
    assert c.stopped  # the listener stops reading here
    assert c.server.state is mqtt.State.CLOSED
    with pytest.raises(MQTTProtocolError):  # and the codec would not hand the PUBLISH over
        c.server.next_event()
    assert len(broker.retained) == 0
    assert broker.sessions == {}


# ------------------------------------------------------------------------ 3.2 CONNACK


def test_mqtt_3_2_2_3_session_present_follows_the_stored_session(
    broker: Broker, clock: Clock
) -> None:
    first = Client(broker, clock)
    assert first.connect("dev", clean_start=False, properties=PERSISTENT).session_present is False
    first.drop()
    again = Client(broker, clock)
    assert again.connect("dev", clean_start=False, properties=PERSISTENT).session_present is True


def test_mqtt_3_2_2_6_refusing_connack_has_no_session_present(broker: Broker, clock: Clock) -> None:
    connected(broker, clock, "dev", clean_start=False, properties=PERSISTENT).drop()
    c = Client(broker, clock)
    ack = c.connect(
        "dev",
        clean_start=False,
        properties=P(session_expiry_interval=3600, authentication_method="X"),
    )
    assert ack == mqtt.ConnAck(return_code=ReasonCode.BAD_AUTHENTICATION_METHOD)


def test_mqtt_3_2_2_8_connack_reason_codes_come_from_the_table() -> None:
    """Every CONNACK goes through the encoder, which refuses codes CONNACK may not carry."""
    server = mqtt.MQTTConnection(mqtt.Role.SERVER)
    server.receive_data(mqtt.encode_packet(mqtt.Connect(client_id="c", protocol_level=5)))
    assert isinstance(server.next_event(), mqtt.Connect)
    for disconnect_only in (ReasonCode.SERVER_SHUTTING_DOWN, ReasonCode.SESSION_TAKEN_OVER):
        with pytest.raises(ValueError, match="not valid in CONNACK"):
            server.send(mqtt.ConnAck(return_code=disconnect_only))
    assert server.send(mqtt.ConnAck(return_code=ReasonCode.BANNED)) == b"\x20\x03\x00\x8a\x00"


def test_mqtt_3_2_2_16_assigned_client_ids_are_new(broker: Broker, clock: Clock) -> None:
    connected(broker, clock, "existing")
    assigned = []
    for _ in range(3):
        ack = Client(broker, clock).connect("")
        assert ack.properties.assigned_client_identifier is not None
        assigned.append(ack.properties.assigned_client_identifier)
    assert len(set(assigned)) == 3
    assert "existing" not in assigned
    assert set(assigned) <= set(broker.sessions)


def test_mqtt_3_2_2_22_the_clients_keep_alive_is_used_when_not_overridden(
    broker: Broker, clock: Clock
) -> None:
    c = Client(broker, clock, max_keep_alive=60)
    assert c.connect("c", keep_alive=30).properties.server_keep_alive is None
    assert c.session.keep_alive == 30


# ------------------------------------------------------------------------ 3.3 PUBLISH


def test_mqtt_3_3_1_3_dup_is_not_passed_on(broker: Broker, clock: Clock) -> None:
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, ("t", 1))
    pub.send(mqtt.Publish(topic="t", payload=b"m", qos=1, packet_id=1, dup=True))
    [got] = publishes(sub)
    assert (got.qos, got.dup) == (1, False)


def test_mqtt_3_3_1_4_qos3_is_malformed(broker: Broker, clock: Clock) -> None:
    c = connected(broker, clock, "c")
    err, answer = answer_to(c, frame(0x36, string(b"t") + b"\x00\x01\x00hi"))
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]


def test_mqtt_3_3_1_8_non_retained_publish_leaves_the_retained_message(
    broker: Broker, clock: Clock
) -> None:
    pub = connected(broker, clock, "pub")
    pub.send(mqtt.Publish(topic="t", payload=b"kept", retain=True))
    pub.send(mqtt.Publish(topic="t", payload=b"live"))
    pub.send(mqtt.Publish(topic="t", payload=b""))  # empty, not retained: clears nothing
    _, got = subscribe_for(connected(broker, clock, "sub"), ("t", 0))
    assert [(p.payload, p.retain) for p in got] == [(b"kept", True)]


def test_mqtt_3_3_2_7_topic_aliases_end_with_the_connection(broker: Broker, clock: Clock) -> None:
    first = connected(
        broker,
        clock,
        "c",
        clean_start=False,
        properties=P(session_expiry_interval=3600, topic_alias_maximum=5),
    )
    subscribe(first, ("t", 0))
    first.send(mqtt.Publish(topic="t", payload=b"1", properties=P(topic_alias=1)))
    assert [(p.topic, p.properties.topic_alias) for p in publishes(first)] == [("t", 1)]
    first.drop()

    again = connected(
        broker,
        clock,
        "c",
        clean_start=False,
        properties=P(session_expiry_interval=3600, topic_alias_maximum=5),
    )
    # Outbound: the server announces the topic name again before using an alias.
    broker.publish(msg("t", b"2"))
    assert [(p.topic, p.properties.topic_alias) for p in publishes(again)] == [("t", 1)]
    # Inbound: the alias the client set on its last connection is unknown now.
    with pytest.raises(MQTTProtocolError) as info:
        again.send(mqtt.Publish(topic="", payload=b"3", properties=P(topic_alias=1)))
    assert info.value.reason is ReasonCode.PROTOCOL_ERROR


def test_mqtt_3_3_2_12_every_alias_up_to_the_maximum_is_accepted(
    broker: Broker, clock: Clock
) -> None:
    sub = connected(broker, clock, "sub")
    subscribe(sub, ("t/#", 0))
    pub = Client(broker, clock, topic_alias_maximum=3)
    assert pub.connect("pub").properties.topic_alias_maximum == 3
    for alias in (1, 2, 3):
        pub.send(mqtt.Publish(topic=f"t/{alias}", payload=b"set", properties=P(topic_alias=alias)))
    for alias in (3, 2, 1):
        pub.send(mqtt.Publish(topic="", payload=b"use", properties=P(topic_alias=alias)))
    assert [p.topic for p in publishes(sub)] == ["t/1", "t/2", "t/3", "t/3", "t/2", "t/1"]


def test_mqtt_3_3_2_18_user_properties_keep_order_and_repeats(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-3.3.2-17]."""
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, ("t", 0))
    pairs = (("z", "1"), ("a", ""), ("z", "3"), ("é", "ü"))
    pub.send(mqtt.Publish(topic="t", payload=b"m", properties=P(user_properties=pairs)))
    [got] = publishes(sub)
    assert got.properties.user_properties == pairs


@pytest.mark.parametrize(
    "ident", [pytest.param(0x03, id="content-type"), pytest.param(0x08, id="response-topic")]
)
def test_mqtt_3_3_2_19_string_property_with_bad_utf8_is_malformed(
    broker: Broker, clock: Clock, ident: int
) -> None:
    """Also [MQTT-3.3.2-13] (the Response Topic): the server never takes one on to forward."""
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, ("t", 0))
    prop = bytes((ident,)) + string(b"a\xff")
    block = bytes((len(prop),)) + prop
    err, answer = answer_to(pub, frame(0x30, string(b"t") + block + b"payload"))
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]
    assert publishes(sub) == []


def test_mqtt_3_3_4_10_other_packets_flow_when_the_send_quota_is_zero(
    broker: Broker, clock: Clock
) -> None:
    """Also [MQTT-4.9.0-3]."""
    c = connected(broker, clock, "c", properties=P(receive_maximum=1))
    subscribe(c, ("t", 1))
    broker.publish(msg("t", b"1", qos=1))
    broker.publish(msg("t", b"2", qos=1))
    assert [p.payload for p in publishes(c)] == [b"1"]  # the quota is used up
    c.send(mqtt.PingReq())
    assert c.received() == [mqtt.PingResp()]
    assert subscribe(c, ("u", 0), pid=2).return_codes == (0,)
    c.send(mqtt.Publish(topic="nobody", payload=b"", qos=1, packet_id=9))
    assert c.received() == [
        mqtt.PubAck(packet_id=9, reason_code=ReasonCode.NO_MATCHING_SUBSCRIBERS)
    ]


# -------------------------------------------------------------- 3.4-3.7 acknowledgements


def test_mqtt_3_6_1_1_pubrel_with_bad_flags_is_malformed(broker: Broker, clock: Clock) -> None:
    c = connected(broker, clock, "c")
    err, answer = answer_to(c, b"\x60\x02\x00\x01")
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]


def test_mqtt_3_6_2_1_pubrec_for_an_unknown_packet_id_gets_pubrel_0x92(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    c.send(mqtt.PubRec(packet_id=99))
    assert c.received() == [
        mqtt.PubRel(packet_id=99, reason_code=ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)
    ]


def test_mqtt_3_7_2_1_pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    c.send(mqtt.PubRel(packet_id=99))
    assert c.received() == [
        mqtt.PubComp(packet_id=99, reason_code=ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)
    ]


# ----------------------------------------------------------------- 3.8-3.11 subscriptions


def test_mqtt_3_8_3_3_no_local_over_mqtt(broker: Broker, clock: Clock) -> None:
    me, you = connected(broker, clock, "me"), connected(broker, clock, "you")
    subscribe(me, ("chat", 0 | 4))
    me.send(mqtt.Publish(topic="chat", payload=b"mine"))
    you.send(mqtt.Publish(topic="chat", payload=b"theirs"))
    assert [p.payload for p in publishes(me)] == [b"theirs"]


def test_mqtt_3_8_4_3_subscribing_again_replaces_the_subscription(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    subscribe(c, ("t", 0))
    subscribe(c, ("t", 2), pid=2)
    broker.publish(msg("t", qos=2))
    assert [p.qos for p in publishes(c)] == [2]
    assert broker.subscription_count == 1


def test_mqtt_3_8_4_5_one_suback_for_several_filters(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-3.8.4-6], [MQTT-3.8.4-7], [MQTT-3.9.3-1] and [MQTT-3.9.3-2]."""
    c = connected(broker, clock, "c")
    c.send(
        mqtt.Subscribe(packet_id=3, subscriptions=(("a", 1), ("$share/g", 0), ("b", 2), ("c", 0)))
    )
    assert c.received() == [
        mqtt.SubAck(packet_id=3, return_codes=(1, ReasonCode.TOPIC_FILTER_INVALID, 2, 0))
    ]
    assert set(broker.sessions["c"].subscriptions) == {"a", "b", "c"}


def test_mqtt_3_10_1_1_unsubscribe_with_bad_flags_is_malformed(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    err, answer = answer_to(c, frame(0xA0, b"\x00\x01\x00" + string(b"t")))
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]


def test_mqtt_3_10_4_1_unsubscribe_compares_filters_exactly(broker: Broker, clock: Clock) -> None:
    c = connected(broker, clock, "c")
    subscribe(c, ("a/#", 0))
    c.send(mqtt.Unsubscribe(packet_id=2, topic_filters=("a/+", "a", "A/#")))
    assert c.received() == [
        mqtt.UnsubAck(packet_id=2, reason_codes=(ReasonCode.NO_SUBSCRIPTION_EXISTED,) * 3)
    ]
    broker.publish(msg("a/x"))
    assert len(publishes(c)) == 1
    c.send(mqtt.Unsubscribe(packet_id=3, topic_filters=("a/#",)))
    assert c.received() == [mqtt.UnsubAck(packet_id=3, reason_codes=(0,))]


@pytest.mark.parametrize("qos", [1, 2])
def test_mqtt_3_10_4_3_delivery_in_flight_completes_after_unsubscribe(
    broker: Broker, clock: Clock, qos: int
) -> None:
    """Also [MQTT-3.10.4-2]."""
    c = connected(broker, clock, "c")
    subscribe(c, ("t", qos))
    broker.publish(msg("t", b"started", qos=qos))
    [started] = publishes(c)
    pid = started.packet_id
    assert pid is not None
    c.send(mqtt.Unsubscribe(packet_id=5, topic_filters=("t",)))
    assert c.received() == [mqtt.UnsubAck(packet_id=5, reason_codes=(0,))]
    broker.publish(msg("t", b"after", qos=qos))
    assert publishes(c) == []
    if qos == 2:
        c.send(mqtt.PubRec(packet_id=pid))
        assert c.received() == [mqtt.PubRel(packet_id=pid)]
        c.send(mqtt.PubComp(packet_id=pid))
    else:
        c.send(mqtt.PubAck(packet_id=pid))
    assert broker.sessions["c"].inflight() == []


def test_mqtt_3_10_4_4_one_unsuback_for_every_unsubscribe(broker: Broker, clock: Clock) -> None:
    """Also [MQTT-3.10.4-5], [MQTT-3.10.4-6], [MQTT-3.11.3-1] and [MQTT-3.11.3-2]."""
    c = connected(broker, clock, "c")
    subscribe(c, ("a", 0))
    c.send(mqtt.Unsubscribe(packet_id=9, topic_filters=("x", "a", "y")))
    missing = ReasonCode.NO_SUBSCRIPTION_EXISTED
    assert c.received() == [mqtt.UnsubAck(packet_id=9, reason_codes=(missing, 0, missing))]
    assert broker.sessions["c"].subscriptions == {}


# --------------------------------------------------------------------- 3.14 DISCONNECT


def test_mqtt_3_14_0_1_no_disconnect_before_a_successful_connack(
    broker: Broker, clock: Clock
) -> None:
    c = fresh(broker, clock)
    c.session.goodbye(ReasonCode.SERVER_SHUTTING_DOWN)  # nothing: not connected yet
    assert c.received() == []
    bad_property = b"\x03\x21\x00\x00"  # receive maximum 0
    _, answer = answer_to(c, raw_connect5(props=bad_property))
    assert answer == [mqtt.ConnAck(return_code=ReasonCode.PROTOCOL_ERROR)]

    refused = Client(broker, clock)
    refused.connect("r", properties=P(authentication_method="X"))
    refused.session.goodbye(ReasonCode.SERVER_SHUTTING_DOWN)
    assert refused.received() == []


def test_mqtt_3_14_1_1_disconnect_with_reserved_bits_gets_0x81(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    err, answer = answer_to(c, b"\xe1\x00")
    assert err.reason is ReasonCode.MALFORMED_PACKET
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]


def test_mqtt_3_14_2_2_server_disconnect_has_no_session_expiry(
    broker: Broker, clock: Clock
) -> None:
    """Also [MQTT-3.14.2-3] and [MQTT-3.14.2-4]: no reason string, no user property."""
    c = connected(broker, clock, "c", clean_start=False, properties=PERSISTENT)
    _, answer = answer_to(c, b"\xc1\x00")  # PINGREQ with a reserved flag set
    assert answer == [mqtt.Disconnect(reason_code=ReasonCode.MALFORMED_PACKET)]
    [bye] = answer
    assert isinstance(bye, mqtt.Disconnect)
    assert bye.properties == NO_PROPERTIES


# ------------------------------------------------------------------------- 3.15 AUTH


def test_mqtt_3_15_1_1_auth_with_bad_flags_is_malformed() -> None:
    server = mqtt.MQTTConnection(mqtt.Role.SERVER)
    connect = mqtt.Connect(
        client_id="c", protocol_level=5, properties=P(authentication_method="SCRAM-SHA-1")
    )
    server.receive_data(mqtt.encode_packet(connect))
    assert server.next_event() == connect
    server.receive_data(b"\xf1\x00")
    with pytest.raises(MQTTProtocolError) as info:
        server.next_event()
    assert info.value.reason is ReasonCode.MALFORMED_PACKET


# ------------------------------------------------------------------ 4 operational behavior


def test_mqtt_4_1_0_1_session_is_kept_while_connected(broker: Broker, clock: Clock) -> None:
    c = connected(broker, clock, "c", clean_start=False, properties=P(session_expiry_interval=10))
    subscribe(c, ("t", 0))
    clock.advance(3600)
    broker.tick()
    assert "c" in broker.sessions
    broker.publish(msg("t", b"still here"))
    assert [p.payload for p in publishes(c)] == [b"still here"]


def test_mqtt_4_3_2_5_same_packet_id_after_puback_is_a_new_message(
    broker: Broker, clock: Clock
) -> None:
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, ("t", 1))
    pub.send(mqtt.Publish(topic="t", payload=b"first", qos=1, packet_id=7))
    pub.send(mqtt.Publish(topic="t", payload=b"second", qos=1, packet_id=7, dup=True))
    assert pub.received() == [mqtt.PubAck(packet_id=7)] * 2
    assert [p.payload for p in publishes(sub)] == [b"first", b"second"]


def test_mqtt_4_3_3_7_sent_qos2_message_does_not_expire(broker: Broker, clock: Clock) -> None:
    sub = connected(broker, clock, "sub", clean_start=False, properties=PERSISTENT)
    subscribe(sub, ("t", 2))
    pub = connected(broker, clock, "pub")
    pub.send(
        mqtt.Publish(
            topic="t", payload=b"m", qos=2, packet_id=1, properties=P(message_expiry_interval=10)
        )
    )
    [sent] = publishes(sub)
    sub.drop()
    clock.advance(60)
    broker.tick()
    again = Client(broker, clock)
    again.connect("sub", clean_start=False, properties=PERSISTENT)
    [resent] = again.after_connack
    assert isinstance(resent, mqtt.Publish)
    assert (resent.payload, resent.packet_id, resent.dup) == (b"m", sent.packet_id, True)


def test_mqtt_4_3_3_9_after_a_failed_pubrec_the_packet_id_is_new(
    broker: Broker, clock: Clock
) -> None:
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, ("t", 2))
    pub.send(mqtt.Publish(topic="$SYS/x", payload=b"refused", qos=2, packet_id=4))
    assert pub.received() == [mqtt.PubRec(packet_id=4, reason_code=ReasonCode.NOT_AUTHORIZED)]
    pub.send(mqtt.Publish(topic="t", payload=b"new", qos=2, packet_id=4))
    assert pub.received() == [mqtt.PubRec(packet_id=4)]
    assert [p.payload for p in publishes(sub)] == [b"new"]


def test_mqtt_4_3_3_12_after_pubcomp_the_packet_id_is_new(broker: Broker, clock: Clock) -> None:
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, ("t", 0))
    for payload in (b"one", b"two"):
        pub.send(mqtt.Publish(topic="t", payload=payload, qos=2, packet_id=9))
        pub.send(mqtt.PubRel(packet_id=9))
        assert pub.received() == [mqtt.PubRec(packet_id=9), mqtt.PubComp(packet_id=9)]
    assert [p.payload for p in publishes(sub)] == [b"one", b"two"]


def test_mqtt_4_3_3_13_qos2_flow_completes_after_the_message_expired(
    broker: Broker, clock: Clock
) -> None:
    sub = connected(broker, clock, "sub", clean_start=False, properties=PERSISTENT)
    subscribe(sub, ("t", 2))
    sub.drop()
    pub = connected(broker, clock, "pub")
    pub.send(
        mqtt.Publish(
            topic="t", payload=b"m", qos=2, packet_id=3, properties=P(message_expiry_interval=1)
        )
    )
    assert pub.received() == [mqtt.PubRec(packet_id=3)]
    clock.advance(5)
    broker.tick()
    pub.send(mqtt.PubRel(packet_id=3))
    assert pub.received() == [mqtt.PubComp(packet_id=3)]


@pytest.mark.parametrize("qos", [1, 2])
def test_mqtt_4_4_0_2_rejected_delivery_is_not_sent_again(
    broker: Broker, clock: Clock, qos: int
) -> None:
    sub = connected(broker, clock, "sub", clean_start=False, properties=PERSISTENT)
    subscribe(sub, ("t", qos))
    broker.publish(msg("t", b"m", qos=qos))
    [sent] = publishes(sub)
    assert sent.packet_id is not None
    ack = mqtt.PubAck if qos == 1 else mqtt.PubRec
    sub.send(ack(packet_id=sent.packet_id, reason_code=ReasonCode.UNSPECIFIED_ERROR))
    assert sub.received() == []  # no PUBREL after a failed PUBREC
    assert broker.sessions["sub"].inflight() == []
    sub.drop()
    again = Client(broker, clock)
    again.connect("sub", clean_start=False, properties=PERSISTENT)
    assert again.after_connack == []


def test_mqtt_4_7_3_4_topics_are_not_normalised(broker: Broker, clock: Clock) -> None:
    composed = unicodedata.normalize("NFC", "café/é")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    sub, pub = connected(broker, clock, "sub"), connected(broker, clock, "pub")
    subscribe(sub, (composed, 0))
    pub.send(mqtt.Publish(topic=decomposed, payload=b"other topic"))
    pub.send(mqtt.Publish(topic=composed, payload=b"same topic"))
    assert [(p.topic, p.payload) for p in publishes(sub)] == [(composed, b"same topic")]


def test_mqtt_4_8_2_3_shared_delivery_respects_the_granted_qos(
    broker: Broker, clock: Clock
) -> None:
    member = connected(broker, clock, "m")
    assert subscribe(member, ("$share/g/t", 0)).return_codes == (0,)
    broker.publish(msg("t", b"m", qos=2))
    assert [(p.payload, p.qos) for p in publishes(member)] == [(b"m", 0)]


def test_mqtt_4_8_2_6_rejected_shared_message_goes_to_no_other_member(
    broker: Broker, clock: Clock
) -> None:
    members = [connected(broker, clock, name) for name in ("m1", "m2")]
    for member in members:
        subscribe(member, ("$share/g/t", 1))
    broker.publish(msg("t", b"m", qos=1))
    got = [publishes(member) for member in members]
    assert sorted(len(g) for g in got) == [0, 1]
    taker, other = (0, 1) if got[0] else (1, 0)
    [sent] = got[taker]
    assert sent.packet_id is not None
    members[taker].send(mqtt.PubAck(packet_id=sent.packet_id, reason_code=0x80))
    members[taker].drop()
    assert publishes(members[other]) == []


def test_mqtt_4_12_0_1_unsupported_authentication_method_is_refused(
    broker: Broker, clock: Clock
) -> None:
    """Also [MQTT-3.2.2-7] and [MQTT-4.13.2-1]: a CONNACK of 0x80 or more, then close."""
    c = Client(broker, clock)
    ack = c.connect("c", properties=P(authentication_method="GS2-KRB5"))
    assert ack == mqtt.ConnAck(return_code=ReasonCode.BAD_AUTHENTICATION_METHOD)
    assert c.stopped
    assert c.received() == []


def test_mqtt_4_12_0_6_no_authentication_without_a_method(broker: Broker, clock: Clock) -> None:
    c = Client(broker, clock)
    ack = c.connect("c")
    assert ack.properties.authentication_method is None
    assert ack.properties.authentication_data is None
    assert c.after_connack == []


# ------------------------------------------- shared subscriptions, shared receive window


def test_mqtt_4_8_2_4_shared_qos2_delivery_is_completed_to_the_same_member(
    broker: Broker, clock: Clock
) -> None:
    persistent = {"clean_start": False, "properties": P(session_expiry_interval=300)}
    first = connected(broker, clock, "m1", **persistent)
    other = connected(broker, clock, "m2")
    subscribe(first, ("$share/g/t", 2))
    broker.publish(msg("t", b"exactly-once", qos=2))
    [sent] = publishes(first)
    assert sent.packet_id is not None
    first.send(mqtt.PubRec(packet_id=sent.packet_id))
    assert first.received() == [mqtt.PubRel(packet_id=sent.packet_id)]
    first.drop()
    subscribe(other, ("$share/g/t", 2))  # the other member must not get it
    assert publishes(other) == []
    back = Client(broker, clock)
    back.connect("m1", **persistent)  # type: ignore[arg-type]
    assert back.after_connack == [mqtt.PubRel(packet_id=sent.packet_id)]


def test_mqtt_4_8_2_5_shared_qos2_is_not_sent_elsewhere_when_the_session_ends(
    broker: Broker, clock: Clock
) -> None:
    first = connected(broker, clock, "m1")  # session expiry 0: it ends with the connection
    other = connected(broker, clock, "m2")
    subscribe(first, ("$share/g/t", 2))
    subscribe(other, ("$share/g/t", 2))
    broker.publish(msg("t", b"two", qos=2))
    broker.publish(msg("t", b"one", qos=1))
    got_first = publishes(first)
    assert [p.payload for p in got_first] == [b"two"]
    assert [p.payload for p in publishes(other)] == [b"one"]
    first.drop()
    # QoS 1 may go to another member; the QoS 2 message begun with m1 goes to nobody.
    assert publishes(other) == []
    assert broker.stats.drops["session-ended"] == 1


def test_mqtt_3_3_4_9_receive_maximum_counts_every_subscription_of_the_connection(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c", properties=P(receive_maximum=1))
    subscribe(c, ("t", 1), ("$share/g/u", 1), ("$queue/q", 1))
    broker.publish(msg("t", b"1", qos=1))
    broker.publish(msg("u", b"2", qos=1))
    broker.publish(Message(destination="q", kind=Kind.QUEUE, payload=b"3", qos=1))
    [first] = publishes(c)
    assert first.packet_id is not None
    c.send(mqtt.PubAck(packet_id=first.packet_id))
    [second] = publishes(c)
    assert second.payload != first.payload


def test_mqtt_3_3_4_3_shared_subscription_identifier_is_sent(broker: Broker, clock: Clock) -> None:
    c = connected(broker, clock, "c")
    subscribe(c, ("$share/g/t", 1), subscription_identifiers=(7,))
    broker.publish(msg("t", qos=1))
    [publish] = publishes(c)
    assert publish.properties.subscription_identifiers == (7,)


def test_mqtt_3_3_1_12_shared_retain_as_published_0_clears_retain(
    broker: Broker, clock: Clock
) -> None:
    plain = connected(broker, clock, "plain")
    rap = connected(broker, clock, "rap")
    subscribe(plain, ("$share/a/t", 0))
    subscribe(rap, ("$share/b/t", 0 | 8))
    broker.publish(msg("t", b"r", retain=True))
    assert [p.retain for p in publishes(plain)] == [False]
    assert [p.retain for p in publishes(rap)] == [True]


def test_mqtt_4_6_0_5_topic_order_is_kept_whatever_the_priority_property(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c", properties=P(receive_maximum=1))
    subscribe(c, ("t", 1))
    pub = connected(broker, clock, "pub")
    for i, priority in enumerate(["1", "1", "9"]):
        props = P(user_properties=(("priority", priority),))
        pub.send(
            mqtt.Publish(topic="t", payload=bytes([i]), qos=1, packet_id=i + 1, properties=props)
        )
    order = []
    for _ in range(3):
        [publish] = publishes(c)
        order.append(publish.payload)
        assert publish.packet_id is not None
        c.send(mqtt.PubAck(packet_id=publish.packet_id))
    assert order == [b"\x00", b"\x01", b"\x02"]


def test_mqtt_3_1_2_25_alias_of_a_dropped_message_is_not_reused(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c", properties=P(maximum_packet_size=80, topic_alias_maximum=5))
    subscribe(c, ("t/#", 0))
    broker.publish(msg("t/a", b"x" * 200))  # too large: dropped for this client
    broker.publish(msg("t/a", b"small"))
    [publish] = publishes(c)
    assert publish.topic == "t/a"  # the full topic, since the client never saw an alias for it


def test_mqtt_3_1_0_2_second_connect_gets_disconnect_protocol_error(
    broker: Broker, clock: Clock
) -> None:
    c = connected(broker, clock, "c")
    body = b"\x00\x04MQTT\x07\x02\x00\x3c\x00\x00\x00\x01x"
    c.server.receive_data(b"\x10" + bytes([len(body)]) + body)
    with pytest.raises(MQTTProtocolError) as info:
        c.server.next_event()
    _refuse(info.value, c.server, c.session)
    assert c.received() == [mqtt.Disconnect(reason_code=ReasonCode.PROTOCOL_ERROR)]


def test_mqtt_3_10_4_3_shared_delivery_in_flight_completes_after_unsubscribe(
    broker: Broker, clock: Clock
) -> None:
    leaver = connected(broker, clock, "leaver")
    stayer = connected(broker, clock, "stayer", properties=P(receive_maximum=5))
    subscribe(leaver, ("$share/g/t", 2))
    broker.publish(msg("t", b"started", qos=2))
    [sent] = publishes(leaver)
    subscribe(stayer, ("$share/g/t", 2))
    leaver.send(mqtt.Unsubscribe(packet_id=2, topic_filters=("$share/g/t",)))
    assert isinstance(leaver.received()[0], mqtt.UnsubAck)
    assert sent.packet_id is not None
    leaver.send(mqtt.PubRec(packet_id=sent.packet_id))
    assert leaver.received() == [mqtt.PubRel(packet_id=sent.packet_id)]
    leaver.send(mqtt.PubComp(packet_id=sent.packet_id))
    assert publishes(stayer) == []  # no second copy went to the other member
    assert broker.sessions["leaver"].consumers == {}
