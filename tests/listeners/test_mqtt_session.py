"""The MQTT session state machine over in-memory bytes, with a fake clock: no sockets."""

from __future__ import annotations

import pytest

from gateway.codecs import mqtt
from gateway.codecs.mqtt import ReasonCode
from gateway.core import Broker, Message
from gateway.store import MemoryStore
from tests.core.fakes import Clock
from tests.listeners.mqtt_harness import Client, plain_fast_path

# Every test runs twice: PUBLISHes as events, then plain QoS 0 ones on the listener's fast path.
pytestmark = pytest.mark.usefixtures(plain_fast_path.__name__)

P = mqtt.Properties


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> Broker:
    return Broker(clock=clock)


def client(broker: Broker, clock: Clock, **config: object) -> Client:
    return Client(broker, clock, **config)


def subscribe(c: Client, topic_filter: str, options: int = 1, **props: object) -> mqtt.SubAck:
    c.send(
        mqtt.Subscribe(packet_id=1, subscriptions=((topic_filter, options),), properties=P(**props))
    )  # type: ignore[arg-type]
    [ack] = c.received()
    assert isinstance(ack, mqtt.SubAck)
    return ack


def test_v5_connack_announces_the_servers_limits(broker: Broker, clock: Clock) -> None:
    c = client(broker, clock, receive_maximum=7, topic_alias_maximum=3, max_packet_size=4096)
    ack = c.connect("")
    assert ack.return_code == 0
    assert ack.properties.receive_maximum == 7
    assert ack.properties.topic_alias_maximum == 3
    assert ack.properties.maximum_packet_size == 4096
    assigned = ack.properties.assigned_client_identifier
    assert assigned is not None
    assert assigned in broker.sessions


def test_v311_empty_client_id_without_clean_session_is_rejected(
    broker: Broker, clock: Clock
) -> None:
    c = client(broker, clock)
    ack = c.connect("", version=4, clean_start=False)
    assert ack.return_code == mqtt.ConnectReturnCode.IDENTIFIER_REJECTED
    assert c.stopped


@pytest.mark.parametrize("version", [4, 5])
def test_client_ids_starting_with_dollar_are_reserved(
    broker: Broker, clock: Clock, version: int
) -> None:
    """Client ids starting with "$" name the gateway's own sessions (HTTP pull consumers): a
    client must not take one over."""
    broker.open_session("$http/pull/jobs", _NullSink(), clean=True)
    c = client(broker, clock)
    ack = c.connect("$http/pull/jobs", version=version)
    expected = (
        mqtt.ConnectReturnCode.IDENTIFIER_REJECTED
        if version == 4
        else mqtt.ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    )
    assert ack.return_code == expected
    assert c.stopped
    assert broker.sessions["$http/pull/jobs"].connected


class _NullSink:
    def deliver(self, delivery: object, qos: int) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self, reason: object) -> None:
        raise AssertionError("the internal session was taken over")


def test_qos1_delivery_is_settled_by_puback(broker: Broker, clock: Clock) -> None:
    sub, pub = client(broker, clock), client(broker, clock)
    sub.connect("sub")
    pub.connect("pub")
    assert subscribe(sub, "t", 1).return_codes == (1,)
    pub.send(mqtt.Publish(topic="t", payload=b"m", qos=1, packet_id=5))
    assert pub.received() == [mqtt.PubAck(packet_id=5)]
    [publish] = sub.received()
    assert isinstance(publish, mqtt.Publish)
    assert (publish.qos, publish.payload, publish.dup) == (1, b"m", False)
    assert publish.packet_id is not None
    assert len(broker.sessions["sub"].inflight()) == 1
    sub.send(mqtt.PubAck(packet_id=publish.packet_id))
    assert broker.sessions["sub"].inflight() == []


def test_qos2_exactly_once_both_ways(broker: Broker, clock: Clock) -> None:
    sub, pub = client(broker, clock), client(broker, clock)
    sub.connect("sub")
    pub.connect("pub")
    subscribe(sub, "t", 2)
    pub.send(mqtt.Publish(topic="t", payload=b"once", qos=2, packet_id=9))
    assert pub.received() == [mqtt.PubRec(packet_id=9)]
    # The publisher resends before seeing PUBREC: it must not be published again.
    pub.send(mqtt.Publish(topic="t", payload=b"once", qos=2, packet_id=9, dup=True))
    assert pub.received() == [mqtt.PubRec(packet_id=9)]
    pub.send(mqtt.PubRel(packet_id=9))
    assert pub.received() == [mqtt.PubComp(packet_id=9)]

    [publish] = sub.received()
    assert isinstance(publish, mqtt.Publish)
    assert publish.qos == 2
    pid = publish.packet_id
    assert pid is not None
    sub.send(mqtt.PubRec(packet_id=pid))
    assert sub.received() == [mqtt.PubRel(packet_id=pid)]
    sub.send(mqtt.PubComp(packet_id=pid))
    assert broker.sessions["sub"].inflight() == []
    assert sub.received() == []


def test_persistent_session_resumes_with_dup_resend_then_queued(
    broker: Broker, clock: Clock
) -> None:
    first = client(broker, clock)
    first.connect("dev", clean_start=False, properties=P(session_expiry_interval=3600))
    subscribe(first, "t", 1)
    pub = client(broker, clock)
    pub.connect("pub")
    pub.send(mqtt.Publish(topic="t", payload=b"1", qos=1, packet_id=1))
    [sent] = [p for p in first.received() if isinstance(p, mqtt.Publish)]
    first.drop()
    pub.send(mqtt.Publish(topic="t", payload=b"2", qos=1, packet_id=2))

    again = client(broker, clock)
    ack = again.connect("dev", clean_start=False, properties=P(session_expiry_interval=3600))
    assert ack.session_present is True
    resent, queued = again.after_connack
    assert isinstance(resent, mqtt.Publish)
    assert isinstance(queued, mqtt.Publish)
    assert (resent.payload, resent.dup, resent.packet_id) == (b"1", True, sent.packet_id)
    assert (queued.payload, queued.dup) == (b"2", False)
    assert queued.packet_id != resent.packet_id


def test_qos2_resume_after_pubrec_resends_pubrel(broker: Broker, clock: Clock) -> None:
    first = client(broker, clock)
    first.connect("dev", version=4, clean_start=False)
    subscribe(first, "t", 2)
    broker.publish(_msg("t", b"x", qos=2))
    [publish] = first.received()
    assert isinstance(publish, mqtt.Publish)
    assert publish.packet_id is not None
    first.send(mqtt.PubRec(packet_id=publish.packet_id))
    assert first.received() == [mqtt.PubRel(packet_id=publish.packet_id)]
    first.drop()
    again = client(broker, clock)
    again.connect("dev", version=4, clean_start=False)
    assert again.after_connack == [mqtt.PubRel(packet_id=publish.packet_id)]


def test_client_receive_maximum_bounds_inflight(broker: Broker, clock: Clock) -> None:
    sub = client(broker, clock)
    sub.connect("sub", properties=P(receive_maximum=2))
    subscribe(sub, "t", 1)
    for i in range(5):
        broker.publish(_msg("t", bytes([i]), qos=1))
    got = sub.received()
    assert [p.payload for p in got if isinstance(p, mqtt.Publish)] == [b"\x00", b"\x01"]
    first = got[0]
    assert isinstance(first, mqtt.Publish)
    assert first.packet_id is not None
    sub.send(mqtt.PubAck(packet_id=first.packet_id))
    assert [p.payload for p in sub.received() if isinstance(p, mqtt.Publish)] == [b"\x02"]


def test_inbound_topic_alias(broker: Broker, clock: Clock) -> None:
    sub, pub = client(broker, clock), client(broker, clock, topic_alias_maximum=2)
    sub.connect("sub")
    pub.connect("pub")
    subscribe(sub, "long/topic/name", 0)
    pub.send(mqtt.Publish(topic="long/topic/name", payload=b"a", properties=P(topic_alias=1)))
    pub.send(mqtt.Publish(topic="", payload=b"b", properties=P(topic_alias=1)))
    assert [(p.topic, p.payload) for p in sub.received() if isinstance(p, mqtt.Publish)] == [
        ("long/topic/name", b"a"),
        ("long/topic/name", b"b"),
    ]
    with pytest.raises(mqtt.MQTTProtocolError) as info:
        pub.send(mqtt.Publish(topic="x", payload=b"c", properties=P(topic_alias=3)))
    assert info.value.reason == ReasonCode.TOPIC_ALIAS_INVALID


def test_outbound_topic_alias(broker: Broker, clock: Clock) -> None:
    sub = client(broker, clock)
    sub.connect("sub", properties=P(topic_alias_maximum=5))
    subscribe(sub, "t/#", 0)
    broker.publish(_msg("t/one", b"1"))
    broker.publish(_msg("t/one", b"2"))
    first, second = sub.received()
    assert isinstance(first, mqtt.Publish)
    assert isinstance(second, mqtt.Publish)
    assert (first.topic, first.properties.topic_alias) == ("t/one", 1)
    assert (second.topic, second.properties.topic_alias) == ("", 1)


def test_message_expiry_is_decremented_and_expired_messages_are_not_sent(
    broker: Broker, clock: Clock
) -> None:
    sub = client(broker, clock)
    sub.connect("sub", clean_start=False, properties=P(session_expiry_interval=600))
    subscribe(sub, "t", 1)
    sub.drop()
    pub = client(broker, clock)
    pub.connect("pub")
    pub.send(
        mqtt.Publish(
            topic="t",
            payload=b"short",
            qos=1,
            packet_id=1,
            properties=P(message_expiry_interval=10),
        )
    )
    pub.send(
        mqtt.Publish(
            topic="t",
            payload=b"long",
            qos=1,
            packet_id=2,
            properties=P(message_expiry_interval=100),
        )
    )
    clock.advance(40)
    again = client(broker, clock)
    again.connect("sub", clean_start=False, properties=P(session_expiry_interval=600))
    [publish] = again.after_connack
    assert isinstance(publish, mqtt.Publish)
    assert publish.payload == b"long"
    assert publish.properties.message_expiry_interval == 60


def test_too_large_for_the_client_is_dropped_for_it(broker: Broker, clock: Clock) -> None:
    sub = client(broker, clock)
    sub.connect("sub", properties=P(maximum_packet_size=64))
    subscribe(sub, "t", 1)
    broker.publish(_msg("t", b"x" * 200, qos=1))
    broker.publish(_msg("t", b"small", qos=1))
    assert [p.payload for p in sub.received() if isinstance(p, mqtt.Publish)] == [b"small"]
    assert sub.session.dropped_too_large == 1


def test_properties_travel_end_to_end(broker: Broker, clock: Clock) -> None:
    requester, responder = client(broker, clock), client(broker, clock)
    requester.connect("req")
    responder.connect("resp")
    subscribe(responder, "service/time", 1, subscription_identifiers=(42,))
    props = P(
        response_topic="replies/req",
        correlation_data=b"\x01\x02",
        content_type="text/plain",
        payload_format_indicator=1,
        user_properties=(("tenant", "acme"), ("trace", "t-1")),
    )
    requester.send(
        mqtt.Publish(topic="service/time", payload=b"now?", qos=1, packet_id=3, properties=props)
    )
    [publish] = responder.received()
    assert isinstance(publish, mqtt.Publish)
    got = publish.properties
    assert got.response_topic == "replies/req"
    assert got.correlation_data == b"\x01\x02"
    assert got.content_type == "text/plain"
    assert got.payload_format_indicator == 1
    assert got.user_properties == (("tenant", "acme"), ("trace", "t-1"))
    assert got.subscription_identifiers == (42,)


def test_invalid_utf8_with_payload_format_indicator_is_refused(
    broker: Broker, clock: Clock
) -> None:
    pub = client(broker, clock)
    pub.connect("pub")
    with pytest.raises(mqtt.MQTTProtocolError) as info:
        pub.send(mqtt.Publish(topic="t", payload=b"\xff", properties=P(payload_format_indicator=1)))
    assert info.value.reason == ReasonCode.PAYLOAD_FORMAT_INVALID


def test_puback_says_no_matching_subscribers(broker: Broker, clock: Clock) -> None:
    pub = client(broker, clock)
    pub.connect("pub")
    pub.send(mqtt.Publish(topic="nobody", payload=b"", qos=1, packet_id=1))
    assert pub.received() == [
        mqtt.PubAck(packet_id=1, reason_code=ReasonCode.NO_MATCHING_SUBSCRIBERS)
    ]


def test_publishing_to_sys_is_refused(broker: Broker, clock: Clock) -> None:
    pub = client(broker, clock)
    pub.connect("pub")
    pub.send(mqtt.Publish(topic="$SYS/broker/uptime", payload=b"0", qos=1, packet_id=1))
    assert pub.received() == [mqtt.PubAck(packet_id=1, reason_code=ReasonCode.NOT_AUTHORIZED)]
    assert len(broker.retained) == 0


def test_session_expiry_cannot_be_set_on_disconnect_after_zero(
    broker: Broker, clock: Clock
) -> None:
    c = client(broker, clock)
    c.connect("c")
    with pytest.raises(mqtt.MQTTProtocolError) as info:
        c.send(mqtt.Disconnect(properties=P(session_expiry_interval=60)))
    assert info.value.reason == ReasonCode.PROTOCOL_ERROR


def test_disconnect_with_will_message_still_publishes_the_will(
    broker: Broker, clock: Clock
) -> None:
    watcher = client(broker, clock)
    watcher.connect("w")
    subscribe(watcher, "status/#", 0)
    c = client(broker, clock)
    c.connect("c", will=mqtt.Will(topic="status/c", payload=b"bye"))
    c.send(mqtt.Disconnect(reason_code=ReasonCode.DISCONNECT_WITH_WILL_MESSAGE))
    c.drop()
    assert [p.payload for p in watcher.received() if isinstance(p, mqtt.Publish)] == [b"bye"]


def test_will_delay_from_will_properties(broker: Broker, clock: Clock) -> None:
    watcher = client(broker, clock)
    watcher.connect("w")
    subscribe(watcher, "status/#", 0)
    c = client(broker, clock)
    will = mqtt.Will(topic="status/c", payload=b"bye", properties=P(will_delay_interval=5))
    c.connect("c", will=will, properties=P(session_expiry_interval=60))
    c.drop()
    broker.tick()
    assert watcher.received() == []
    clock.advance(5)
    broker.tick()
    assert [p.payload for p in watcher.received() if isinstance(p, mqtt.Publish)] == [b"bye"]


def test_no_local_on_shared_subscription_is_a_protocol_error(broker: Broker, clock: Clock) -> None:
    c = client(broker, clock)
    c.connect("c")
    with pytest.raises(mqtt.MQTTProtocolError) as info:
        subscribe(c, "$share/g/t", 1 | 4)
    assert info.value.reason == ReasonCode.PROTOCOL_ERROR


def test_retain_handling_and_retain_as_published(broker: Broker, clock: Clock) -> None:
    broker.publish(_msg("r", b"kept", retain=True))
    c = client(broker, clock)
    c.connect("c")
    subscribe(c, "r", 0 | 8 | (2 << 4))  # RAP, retain handling 2: no retained on subscribe
    assert c.received() == []
    broker.publish(_msg("r", b"live", retain=True))
    [publish] = c.received()
    assert isinstance(publish, mqtt.Publish)
    assert publish.retain is True


def test_queue_extension_over_mqtt(broker: Broker, clock: Clock) -> None:
    w1, w2, pub = client(broker, clock), client(broker, clock), client(broker, clock)
    for name, c in (("w1", w1), ("w2", w2), ("pub", pub)):
        c.connect(name)
    subscribe(w1, "$queue/jobs", 1)
    subscribe(w2, "$queue/jobs", 1)
    for i in range(4):
        pub.send(mqtt.Publish(topic="$queue/jobs", payload=bytes([i]), qos=1, packet_id=i + 1))
    got1 = [p.payload for p in w1.received() if isinstance(p, mqtt.Publish)]
    got2 = [p.payload for p in w2.received() if isinstance(p, mqtt.Publish)]
    assert sorted(got1 + got2) == [bytes([i]) for i in range(4)]
    assert got1
    assert got2


def _msg(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Message:
    return Message(destination=topic, payload=payload, qos=qos, retain=retain)


def test_publish_to_an_unknown_queue_without_auto_create_is_refused_0x90(clock: Clock) -> None:
    broker = Broker(auto_create_queues=False, clock=clock)
    c = client(broker, clock)
    c.connect("p", version=5)
    c.send(mqtt.Publish(topic="$queue/typo", payload=b"m", qos=1, packet_id=3))
    [ack] = c.received()
    assert isinstance(ack, mqtt.PubAck)
    assert ack.reason_code == mqtt.ReasonCode.TOPIC_NAME_INVALID
    assert "typo" not in broker.queues


class _FullStore(MemoryStore):
    """A store that cannot write (disk full)."""

    @property
    def available(self) -> bool:
        return False


@pytest.mark.parametrize("version", [4, 5])
def test_publish_while_the_store_cannot_write_is_never_acknowledged_as_safe(
    clock: Clock, version: int
) -> None:
    broker = Broker(store=_FullStore(), clock=clock)
    c = client(broker, clock)
    c.connect("p", version=version)
    c.send(mqtt.Publish(topic="t", payload=b"m", qos=1, packet_id=4))
    if version == 5:
        [ack] = c.received()
        assert isinstance(ack, mqtt.PubAck)
        assert ack.reason_code == mqtt.ReasonCode.QUOTA_EXCEEDED
    else:  # 3.1.1 cannot refuse: no PUBACK, the connection closes and the client resends
        assert c.received() == []
        assert c.stopped
