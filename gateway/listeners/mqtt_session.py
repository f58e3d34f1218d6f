"""The MQTT session adapter: codec events in, core calls out; deliveries in, bytes out.

It performs no I/O. The listener feeds it packets and gives it two callbacks:
``send`` (append bytes to the connection's outbound buffer) and ``stop`` (end
the connection). That makes the whole protocol state testable without a socket.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ..codecs import mqtt
from ..codecs.mqtt import ConnectReturnCode, MQTTProtocolError, ReasonCode
from ..core import (
    NEVER,
    Broker,
    CloseReason,
    Delivery,
    InvalidFilter,
    Kind,
    Message,
    Origin,
    Session,
    SubscribeOptions,
    Will,
)
from ..logging import get_logger

# Highest QoS granted to subscriptions until QoS 1/2 delivery exists.
MAX_QOS = 0
# Topics under this prefix address core queues: publish to `$queue/jobs` enqueues,
# subscribing to it joins the queue's competing consumers.
QUEUE_PREFIX = "$queue/"
SUBACK_FAILURE = 0x80

# Fan-out hands every subscriber the same Message in turn, so remembering the
# last encoding makes it one encode per publish instead of one per subscriber.
_last_encoded: tuple[Message, bool, bytes] | None = None


def _encode_qos0(message: Message, retain: bool) -> bytes:
    global _last_encoded
    last = _last_encoded
    if last is not None and last[0] is message and last[1] is retain:
        return last[2]
    data = mqtt.encode_publish(
        mqtt.Publish(topic=message.destination, payload=message.payload, retain=retain)
    )
    _last_encoded = (message, retain, data)
    return data


class MQTTSession:
    """Implements the core's ``Sink`` for one MQTT connection."""

    def __init__(
        self,
        broker: Broker,
        send: Callable[[bytes], None],
        stop: Callable[[object], None],
        *,
        listener: str = "",
        writable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.broker = broker
        self.send = send
        self.stop = stop
        self.listener = listener
        self._writable = writable
        self.log = get_logger()
        self.session: Session | None = None
        self.client_id = ""
        self.keep_alive = 0
        self.origin = Origin(protocol="mqtt", listener=listener)
        self._graceful = False
        self._awaiting_rel: set[int] = set()

    # -- packets from the client -------------------------------------------------

    def handle(self, packet: mqtt.Packet) -> None:
        match packet:
            case mqtt.Publish():
                self._on_publish(packet)
            case mqtt.PubRel(packet_id=pid):
                self._awaiting_rel.discard(pid)
                self.send(mqtt.encode_packet(mqtt.PubComp(packet_id=pid)))
            case mqtt.Subscribe():
                self._on_subscribe(packet)
            case mqtt.Unsubscribe(packet_id=pid, topic_filters=filters):
                assert self.session is not None
                for topic_filter in filters:
                    if topic_filter.startswith(QUEUE_PREFIX):
                        self.broker.cancel(self.session, topic_filter[len(QUEUE_PREFIX) :])
                    else:
                        self.broker.unsubscribe(self.session, topic_filter)
                self.send(mqtt.encode_packet(mqtt.UnsubAck(packet_id=pid)))
            case mqtt.PingReq():
                self.send(b"\xd0\x00")
            case mqtt.Disconnect():
                # A normal disconnect discards the will (3.1.2.5).
                self._graceful = True
                self.log.info("mqtt.disconnect")
            case mqtt.Connect():
                self._on_connect(packet)
            case mqtt.PubAck() | mqtt.PubRec() | mqtt.PubComp():
                # Only answers to QoS 1/2 deliveries, which are not granted yet.
                raise MQTTProtocolError(
                    f"{type(packet).__name__} for a delivery never sent", ReasonCode.PROTOCOL_ERROR
                )
            case mqtt.ConnAck() | mqtt.SubAck() | mqtt.UnsubAck() | mqtt.PingResp():
                raise AssertionError("the codec refuses server-to-client packets")

    def _on_connect(self, packet: mqtt.Connect) -> None:
        client_id = packet.client_id
        if not client_id:
            if not packet.clean_start or packet.protocol_level == 3:
                self._refuse(
                    ConnectReturnCode.IDENTIFIER_REJECTED, "empty client id needs clean session"
                )
                return
            client_id = f"auto-{uuid.uuid4().hex}"
        self.client_id = client_id
        self.keep_alive = packet.keep_alive
        self.origin = Origin(protocol="mqtt", listener=self.listener, client_id=client_id)
        self.log = self.log.bind(client_id=client_id)
        will = None
        if packet.will is not None:
            will = Will(
                message=self._message(
                    packet.will.topic, packet.will.payload, packet.will.qos, packet.will.retain
                )
            )
        self.session, present = self.broker.open_session(
            client_id,
            self,
            clean=packet.clean_start,
            expiry=0.0 if packet.clean_start else NEVER,
            will=will,
        )
        self.send(mqtt.encode_packet(mqtt.ConnAck(session_present=present, return_code=0)))
        self.log.info(
            "mqtt.connect.accepted",
            protocol_level=packet.protocol_level,
            clean_start=packet.clean_start,
            keep_alive=packet.keep_alive,
            session_present=present,
        )

    def _refuse(self, code: ConnectReturnCode, why: str) -> None:
        self.send(mqtt.encode_packet(mqtt.ConnAck(return_code=code)))
        self.log.info("mqtt.connect.rejected", return_code=int(code), reason=why)
        self.stop("connect refused")

    def _message(self, topic: str, payload: bytes, qos: int, retain: bool) -> Message:
        if topic.startswith(QUEUE_PREFIX) and len(topic) > len(QUEUE_PREFIX):
            return Message(
                destination=topic[len(QUEUE_PREFIX) :],
                kind=Kind.QUEUE,
                payload=payload,
                qos=qos,
                origin=self.origin,
            )
        return Message(
            destination=topic, payload=payload, qos=qos, retain=retain, origin=self.origin
        )

    def _on_publish(self, packet: mqtt.Publish) -> None:
        qos = packet.qos
        if qos == 2 and packet.packet_id in self._awaiting_rel:
            # A resent QoS 2 PUBLISH before PUBREL: deliver once (4.3.3).
            self.send(mqtt.encode_packet(mqtt.PubRec(packet_id=packet.packet_id)))
            return
        result = self.broker.publish(
            self._message(packet.topic, packet.payload, qos, packet.retain)
        )
        if not result.accepted:
            # 3.1.1 has no negative acknowledgement: the refusal is logged, never silent.
            self.log.warning(
                "mqtt.publish.refused", topic=packet.topic, reason=result.reason, qos=qos
            )
        if qos == 1:
            assert packet.packet_id is not None
            self.send(mqtt.encode_packet(mqtt.PubAck(packet_id=packet.packet_id)))
        elif qos == 2:
            assert packet.packet_id is not None
            self._awaiting_rel.add(packet.packet_id)
            self.send(mqtt.encode_packet(mqtt.PubRec(packet_id=packet.packet_id)))

    def _on_subscribe(self, packet: mqtt.Subscribe) -> None:
        session = self.session
        assert session is not None
        codes = []
        for topic_filter, qos in packet.subscriptions:
            granted = min(qos, MAX_QOS)
            try:
                if topic_filter.startswith(QUEUE_PREFIX) and len(topic_filter) > len(QUEUE_PREFIX):
                    self.broker.consume(session, topic_filter[len(QUEUE_PREFIX) :], qos=granted)
                else:
                    self.broker.subscribe(session, topic_filter, SubscribeOptions(qos=granted))
            except InvalidFilter as exc:
                self.log.info("mqtt.subscribe.refused", topic_filter=topic_filter, reason=str(exc))
                granted = SUBACK_FAILURE
            codes.append(granted)
        self.send(
            mqtt.encode_packet(mqtt.SubAck(packet_id=packet.packet_id, return_codes=tuple(codes)))
        )

    # -- the core's Sink -----------------------------------------------------------

    def deliver(self, delivery: Delivery, qos: int) -> None:
        message = delivery.message
        if message.kind is Kind.QUEUE:
            topic = QUEUE_PREFIX + message.destination
            self.send(mqtt.encode_publish(mqtt.Publish(topic=topic, payload=message.payload)))
        else:
            self.send(_encode_qos0(message, delivery.retain))

    def writable(self) -> bool:
        return self._writable()

    def close(self, reason: CloseReason) -> None:
        self.log.info("mqtt.session.closed_by_core", reason=reason.value)
        self.stop(reason)

    # -- end of the connection -----------------------------------------------------

    def connection_ended(self) -> None:
        """The connection is gone: the core publishes the will unless DISCONNECT discarded it."""
        if self.session is None:
            return
        session, self.session = self.session, None
        if session.sink is self:
            self.broker.detach(session, graceful=self._graceful)

    def resume(self) -> None:
        """The outbound buffer drained: let the core send what it held back."""
        if self.session is not None and self.session.sink is self:
            self.broker.resume(self.session)
