"""The MQTT session adapter: codec events in, core calls out; deliveries in, bytes out.

It performs no I/O. The listener feeds it packets and gives it two callbacks:
``send`` (append bytes to the connection's outbound buffer) and ``stop`` (end
the connection). That makes the whole protocol state testable without a socket.
The core keeps delivery state; this adapter keeps only MQTT's ids for it
(packet ids, topic aliases).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Final

import msgspec

from ..auth.acl import NOT_AUTHORIZED, Principal
from ..codecs import mqtt
from ..codecs.mqtt import ConnectReturnCode, MQTTConnection, MQTTProtocolError, ReasonCode
from ..codecs.mqtt.serialize import REASON_CODES
from ..config import ListenerConfig
from ..core import (
    NEVER,
    Broker,
    CloseReason,
    Delivery,
    Message,
    Origin,
    Queue,
    Session,
    Status,
    Will,
)
from ..core.broker import NotAuthorized
from ..core.stats import SAMPLE_MASK, Traffic
from ..logging import get_logger
from .authn import (
    ConnAuth,
    mqtt_auth,
    mqtt_connack_properties,
    mqtt_connect,
    over_user_limit,
)
from .limits import MESSAGE_RATE, RateLimit, rate_limit
from .mqtt_mapping import NO_PROPERTIES, properties_of, to_message, topic_of
from .mqtt_subscribe import subscribe, unsubscribe

# What _publish returns when no acknowledgement may be sent (the connection closes).
_NO_ACK = -1
DISCONNECT_REASONS = REASON_CODES[mqtt.PacketType.DISCONNECT]
NEVER_EXPIRES = 0xFFFFFFFF
# An enum member read through its class costs about 90 ns on Python 3.11: per message, an alias.
_ACCEPTED: Final = Status.ACCEPTED
# CONNECT refusals that count as authentication failures (the listener's throttle).
_AUTH_REFUSALS = frozenset(
    {
        ReasonCode.BAD_USER_NAME_OR_PASSWORD,
        ReasonCode.NOT_AUTHORIZED,
        ReasonCode.BAD_AUTHENTICATION_METHOD,
    }
)
# What a client may send while its CONNECT waits for the end of an AUTH exchange.
_BEFORE_CONNACK = (mqtt.Connect, mqtt.Auth, mqtt.Disconnect)

# Fan-out hands every subscriber the same Message in turn, so remembering the
# last encoding makes it one encode per publish instead of one per subscriber:
# (message, retain flag, MQTT 5?, the PUBLISH). 3.1 and 3.1.1 encode alike.
_last_encoded: tuple[Message, bool, bool, bytes] | None = None


def _encode_plain_qos0(
    message: Message, retain: bool, version: int, clock: Callable[[], float]
) -> bytes:
    global _last_encoded
    v5 = version == 5
    last = _last_encoded
    if last is not None and last[0] is message and last[1] is retain and last[2] is v5:
        return last[3]
    if v5:
        publish = mqtt.Publish(
            topic=topic_of(message),
            payload=message.payload,
            retain=retain,
            properties=properties_of(message, clock()),
        )
        data = mqtt.encode_publish(publish, 5)
    else:
        data = mqtt.publish_bytes(topic_of(message).encode(), message.payload, retain=retain)
    _last_encoded = (message, retain, v5, data)
    return data


_last_topic: tuple[Message, bytes] | None = None


def _topic_bytes(message: Message) -> bytes:
    """The encoded topic of ``message``, once per fan-out rather than once per receiver."""
    global _last_topic
    last = _last_topic
    if last is not None and last[0] is message:
        return last[1]
    raw = topic_of(message).encode()
    _last_topic = (message, raw)
    return raw


class MQTTSession:
    """One MQTT connection's protocol state; implements the core's ``Sink``."""

    __slots__ = (
        "_aliases_in",
        "_aliases_out",
        "_client_alias_max",
        "_client_max_packet",
        "_connect_expiry",
        "_disconnect_expiry",
        "_graceful",
        "_held",
        "_inflight",
        "_next_pid",
        "auth",
        "broker",
        "client_id",
        "clock",
        "codec",
        "config",
        "congested",
        "dropped_too_large",
        "identity",
        "keep_alive",
        "limiter",
        "log",
        "on_auth_failure",
        "origin",
        "send",
        "session",
        "stop",
        "traffic",
        "version",
        "writable",
    )

    def __init__(
        self,
        broker: Broker,
        codec: MQTTConnection,
        send: Callable[[bytes], None],
        stop: Callable[[object], None],
        *,
        config: ListenerConfig,
        writable: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.codec = codec
        self.send = send
        self.stop = stop
        self.config = config
        # The connection's own check, bound directly: the core asks it per delivery.
        self.writable = writable
        self.clock = clock
        self.log = get_logger()
        # Authentication (listeners/authn.py); None: none, the client is anonymous.
        self.auth: ConnAuth | None = None
        self.session: Session | None = None
        # Who the client is (None: anonymous), set by authentication before CONNECT is
        # handled; the core checks its publishes and subscriptions (docs/security.md).
        self.identity: Principal | None = None
        self.version = 4
        self.client_id = ""
        self.keep_alive = 0
        self.origin = Origin(protocol="mqtt", listener=config.label)
        self._graceful = False
        self._connect_expiry = 0.0
        self._disconnect_expiry: float | None = None
        # Deliveries the core makes while CONNECT or SUBSCRIBE is handled wait
        # for the CONNACK or SUBACK.
        self._held: list[tuple[Delivery, int]] | None = None
        self._inflight: dict[int, Delivery] = {}
        self._next_pid = 1
        self._client_max_packet: int | None = None
        self._client_alias_max = 0
        self._aliases_in: dict[int, str] = {}
        self._aliases_out: dict[str, int] = {}
        self.dropped_too_large = 0
        # Queues past their high-water mark that this client's publishes went to:
        # the listener stops reading until they drain (publisher backpressure).
        self.congested: set[Queue] = set()
        # The connection's message and byte rates (docs/security.md, "Limits"); None: off.
        self.limiter: RateLimit | None = rate_limit(
            config.max_message_rate, config.max_byte_rate, clock()
        )
        # Called when CONNECT is refused for its credentials (the listener's
        # authentication throttle counts it against the client's address).
        self.on_auth_failure: Callable[[], None] | None = None
        # Publishes received and deliveries sent (the listener's Connection, for metrics).
        self.traffic = Traffic()

    @property
    def connected(self) -> bool:
        return self.session is not None

    # -- packets from the client ---------------------------------------------

    def handle(self, packet: mqtt.Packet) -> None:
        if self.session is None and not isinstance(packet, _BEFORE_CONNACK):
            # Only an enhanced authentication leaves a CONNECT waiting for its CONNACK.
            raise MQTTProtocolError(
                f"{type(packet).__name__.upper()} before CONNACK", ReasonCode.PROTOCOL_ERROR
            )
        match packet:
            case mqtt.Publish():
                self._on_publish(packet)
            case (
                mqtt.PubAck(packet_id=pid, reason_code=code)
                | mqtt.PubComp(packet_id=pid, reason_code=code)
            ):
                self._settle(pid, code)
            case mqtt.PubRec(packet_id=pid, reason_code=code):
                self._on_pubrec(pid, code)
            case mqtt.PubRel(packet_id=pid):
                self._on_pubrel(pid)
            case mqtt.Subscribe():
                subscribe(self, packet)
            case mqtt.Unsubscribe():
                unsubscribe(self, packet)
            case mqtt.PingReq():
                self.send(b"\xd0\x00")
            case mqtt.Disconnect():
                self._on_disconnect(packet)
            case mqtt.Connect():
                self._on_connect(packet)
            case mqtt.Auth():
                mqtt_auth(self, self.auth, packet)
            case mqtt.ConnAck() | mqtt.SubAck() | mqtt.UnsubAck() | mqtt.PingResp():
                raise AssertionError("the codec refuses server-to-client packets")

    def _on_connect(self, packet: mqtt.Connect) -> None:
        self.version = v = packet.protocol_level
        props = packet.properties
        auth = self.auth
        if auth is None:
            if props.authentication_method is not None:
                # Enhanced authentication needs an authenticator (the Gateway has one).
                self._refuse(ReasonCode.BAD_AUTHENTICATION_METHOD, "enhanced authentication")
                return
        elif not auth.admitted and not mqtt_connect(self, auth, packet):
            return  # refused, or an AUTH exchange goes on (listeners/authn.py)
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if v == 3 or (v == 4 and not packet.clean_start):
                self._refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client id")
                return
            client_id = assigned = f"auto-{uuid.uuid4().hex}"
        if client_id.startswith("$"):
            # Reserved for the gateway's own sessions (HTTP consumers, bridges).
            self._refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "client ids starting with $")
            return
        self.client_id = client_id
        self.origin = Origin(protocol="mqtt", listener=self.config.label, client_id=client_id)
        self.log = self.log.bind(client_id=client_id)
        if v == 5:
            interval = props.session_expiry_interval or 0
            expiry = NEVER if interval == NEVER_EXPIRES else float(interval)
            client_receive_max = props.receive_maximum or 65535
            self._client_max_packet = props.maximum_packet_size
            self._client_alias_max = props.topic_alias_maximum or 0
        else:
            expiry = 0.0 if packet.clean_start else NEVER
            client_receive_max = 65535
        self._connect_expiry = expiry
        server_keep_alive = None
        self.keep_alive = packet.keep_alive
        if v == 5 and (self.keep_alive == 0 or self.keep_alive > self.config.max_keep_alive):
            server_keep_alive = self.keep_alive = self.config.max_keep_alive
        will = None
        if packet.will is not None:
            w = packet.will
            message = to_message(
                w.topic, w.payload, w.qos, w.retain, w.properties, self.origin, self.clock()
            )
            will = Will(message=message, delay=float(w.properties.will_delay_interval or 0))
        if over_user_limit(self.broker, self.identity, client_id):
            self._refuse(ReasonCode.QUOTA_EXCEEDED, "the user's max_connections is reached")
            return
        self._held = []
        try:
            self.session, present = self.broker.open_session(
                client_id,
                self,
                clean=packet.clean_start,
                expiry=expiry,
                will=will,
                window=min(self.config.max_inflight, client_receive_max),
                identity=self.identity,
            )
        except NotAuthorized:
            self._held = None
            self._refuse(ReasonCode.NOT_AUTHORIZED, "will topic not authorized")
            return
        self._apply_identity_limits()
        connack_props = NO_PROPERTIES
        if v == 5:
            connack_props = mqtt.Properties(
                assigned_client_identifier=assigned,
                receive_maximum=self.config.receive_maximum,
                maximum_packet_size=self.config.max_packet_size,
                topic_alias_maximum=self.config.topic_alias_maximum,
                server_keep_alive=server_keep_alive,
            )
            connack_props = mqtt_connack_properties(self.auth, connack_props)
        self.send(self.codec.send(mqtt.ConnAck(session_present=present, properties=connack_props)))
        self._release_held()
        self.log.info(
            "mqtt.connect.accepted",
            protocol_level=v,
            clean_start=packet.clean_start,
            keep_alive=self.keep_alive,
            session_present=present,
            session_expiry=expiry,
        )

    def _refuse(self, reason: ReasonCode, why: str) -> None:
        if self.version == 5:
            code = int(reason)
        elif reason is ReasonCode.CLIENT_IDENTIFIER_NOT_VALID:
            code = ConnectReturnCode.IDENTIFIER_REJECTED
        elif reason is ReasonCode.BAD_USER_NAME_OR_PASSWORD:
            code = ConnectReturnCode.BAD_USER_NAME_OR_PASSWORD
        else:
            code = ConnectReturnCode.NOT_AUTHORIZED
        self.send(self.codec.send(mqtt.ConnAck(return_code=code)))
        self.log.info("mqtt.connect.rejected", return_code=code, reason=why)
        if reason in _AUTH_REFUSALS and self.on_auth_failure is not None:
            self.on_auth_failure()
        self.stop("connect refused")

    def _on_publish(self, packet: mqtt.Publish) -> None:
        session = self.session
        assert session is not None
        topic = packet.topic
        props = packet.properties
        alias = props.topic_alias
        if alias is not None:
            if alias > self.config.topic_alias_maximum:
                raise MQTTProtocolError(
                    f"topic alias {alias} above the maximum", ReasonCode.TOPIC_ALIAS_INVALID
                )
            if topic:
                self._aliases_in[alias] = topic
            elif (known := self._aliases_in.get(alias)) is not None:
                topic = known
            else:
                raise MQTTProtocolError(f"unknown topic alias {alias}", ReasonCode.PROTOCOL_ERROR)
        self.traffic.messages_in += 1
        qos = packet.qos
        pid = packet.packet_id
        if qos == 2:
            assert pid is not None
            if pid in session.incomplete:
                # The client resent before our PUBREC reached it: publish once (4.3.3).
                self.send(self.codec.send(mqtt.PubRec(packet_id=pid)))
                return
            if len(session.incomplete) >= self.config.receive_maximum:
                raise MQTTProtocolError(
                    "more QoS 2 publishes than receive maximum", ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
                )
        limiter = self.limiter
        if limiter is not None and not self._within_rate(limiter, qos, len(packet.payload)):
            assert pid is not None
            code = ReasonCode.QUOTA_EXCEEDED
            self.broker.when_durable(lambda _ok: self._acknowledge(qos, pid, code))
            return
        reason = self._publish(topic, packet, props)
        if qos and reason != _NO_ACK:
            assert pid is not None
            if qos == 2 and reason < 0x80:
                self.broker.hold_incomplete(session, pid)
            # The acknowledgement says the message is safe: it waits for the store's
            # commit of everything this publish recorded (durability mode sync).
            self.broker.when_durable(
                lambda ok: self._acknowledge(qos, pid, reason) if ok else self._unstored(qos, pid),
                self.origin,
            )

    def _apply_identity_limits(self) -> None:
        """The authenticated user's own publish rate (users file ``limits``) replaces
        the listener's ``max_message_rate``."""
        # The identity (set by authentication) may carry the user's own limits.
        limits = getattr(getattr(self, "identity", None), "limits", None)
        rate = getattr(limits, "publish_rate", None)
        if rate:
            self.limiter = rate_limit(float(rate), self.config.max_byte_rate, self.clock())

    def _within_rate(self, limiter: RateLimit, qos: int, size: int) -> bool:
        """False if this publish is refused for the rate: MQTT 5 at QoS 1 and 2, where
        PUBACK/PUBREC can say so. Otherwise it is taken, and if over the rate the
        listener stops reading this connection until it is back within (backpressure)."""
        now = self.clock()
        if qos and self.version == 5:
            if limiter.admit(size, now):
                return True
            self.broker.stats.limited[MESSAGE_RATE] += 1
            self.log.info("mqtt.publish.rate_limited", qos=qos)
            return False
        limiter.force(size, now)
        return True

    def _acknowledge(self, qos: int, pid: int, reason: int) -> None:
        if reason:
            packet = mqtt.PubAck if qos == 1 else mqtt.PubRec
            self.send(self.codec.send(packet(packet_id=pid, reason_code=reason)))
        else:  # the common answer, in its short form for every version
            self.send((b"\x40\x02" if qos == 1 else b"\x50\x02") + pid.to_bytes(2, "big"))

    def _unstored(self, qos: int, pid: int) -> None:
        """The store failed to commit this publish: refuse it (MQTT 5) or, with no
        negative acknowledgement in 3.1.1, close so that the client sends it again."""
        self.log.error("mqtt.publish.not_stored", packet_id=pid, qos=qos)
        session = self.session
        if qos == 2 and session is not None:
            self.broker.release_incomplete(session, pid)
        if self.version == 5:
            packet = mqtt.PubAck if qos == 1 else mqtt.PubRec
            self.send(
                self.codec.send(packet(packet_id=pid, reason_code=ReasonCode.UNSPECIFIED_ERROR))
            )
        else:
            self.stop("store failure")

    def publish_plain(self, topic: str, payload: bytes, packet: bytes, retain: bool) -> bool:
        """A plain QoS 0 PUBLISH (``MQTTConnection.on_plain_publish``): the hot path.

        Does what ``handle`` does with the same PUBLISH as an event, without building
        it. The PUBLISH as received is exactly what a subscriber of the same MQTT
        generation with the same retain flag is sent, so it primes the encoding that
        ``deliver`` reuses. Returns False once the listener should stop reading
        (a queue this publisher feeds is congested).
        """
        global _last_encoded
        if topic[0] == "$" or self.session is None:
            # $SYS refusal and $queue/ routing, or no session: the general way.
            self.handle(mqtt.Publish(topic=topic, payload=payload, retain=retain))
            return not self.congested
        self.traffic.messages_in += 1
        if self.limiter is not None:  # QoS 0 is never refused: reading pauses instead
            self.limiter.force(len(payload), self.clock())
        message = Message(
            destination=topic,
            payload=payload,
            retain=retain,
            timestamp=self.clock(),
            origin=self.origin,
        )
        _last_encoded = (message, retain, self.version == 5, packet)
        result = self.broker.publish(message, identity=self.session.identity)
        if result.congested:
            self.congested.update(result.congested)
        if result.status is not _ACCEPTED and result.reason != NOT_AUTHORIZED:
            self.log.warning("mqtt.publish.refused", topic=topic, reason=result.reason, qos=0)
        return not self.congested

    def _publish(self, topic: str, packet: mqtt.Publish, props: mqtt.Properties) -> int:
        """Hand the message to the core; returns the MQTT 5 reason code for the ack."""
        if topic.startswith("$SYS"):
            self.log.warning("mqtt.publish.refused", topic=topic, reason="$SYS is read-only")
            return ReasonCode.NOT_AUTHORIZED if self.version == 5 else 0
        message = to_message(
            topic, packet.payload, packet.qos, packet.retain, props, self.origin, self.clock()
        )
        session = self.session
        assert session is not None
        result = self.broker.publish(message, identity=session.identity)
        if result.congested:
            self.congested.update(result.congested)
        if result.reason == NOT_AUTHORIZED:
            # Logged by the core (acl.denied). 3.1.1 has no negative acknowledgement:
            # the message is dropped and acknowledged, as the specification allows.
            return ReasonCode.NOT_AUTHORIZED if self.version == 5 else 0
        if result.status is not _ACCEPTED:
            # 3.1.1 has no negative acknowledgement: the refusal is logged, never silent.
            self.log.warning(
                "mqtt.publish.refused", topic=topic, reason=result.reason, qos=packet.qos
            )
            if self.version != 5:
                if result.reason == "store-unavailable" and packet.qos:
                    # No negative acknowledgement in 3.1.1, and a PUBACK would claim the
                    # message is safe: close instead, so the client sends it again later.
                    self.stop("store unavailable")
                    return _NO_ACK
                return 0
            if result.reason == "unknown-queue":
                return ReasonCode.TOPIC_NAME_INVALID
            return ReasonCode.QUOTA_EXCEEDED
        if result.routed == 0 and self.version == 5:
            return ReasonCode.NO_MATCHING_SUBSCRIBERS
        return 0

    def _on_pubrel(self, pid: int) -> None:
        session = self.session
        assert session is not None
        if self.broker.release_incomplete(session, pid):
            code = 0
        else:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.version == 5 else 0
        # The PUBCOMP lets the client reuse the packet id: the release is committed first,
        # else after a crash the id would still be held, and a new message under it taken
        # for a resend (acknowledged, never published). The outcome does not change the
        # answer: the message was published at the PUBLISH.
        self.broker.when_durable(
            lambda _ok: self.send(self.codec.send(mqtt.PubComp(packet_id=pid, reason_code=code)))
        )

    def _release_held(self) -> None:
        held, self._held = self._held, None
        for delivery, qos in held or ():
            self.deliver(delivery, qos)

    def _on_disconnect(self, packet: mqtt.Disconnect) -> None:
        # A normal disconnect discards the will; 0x04 asks for it to be sent anyway.
        self._graceful = packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
        interval = packet.properties.session_expiry_interval
        if interval is not None:
            if self._connect_expiry == 0 and interval != 0:
                raise MQTTProtocolError(
                    "session expiry set on DISCONNECT after 0 at CONNECT", ReasonCode.PROTOCOL_ERROR
                )
            self._disconnect_expiry = NEVER if interval == NEVER_EXPIRES else float(interval)
        self.log.info("mqtt.disconnect", reason_code=packet.reason_code)

    # -- acknowledgements of our deliveries -------------------------------------

    def _settle(self, pid: int, code: int) -> None:
        delivery = self._inflight.pop(pid, None)
        if delivery is None:
            return  # an answer for a delivery already settled: nothing to do (4.3)
        if code >= 0x80:
            self.broker.nack(delivery, requeue=False)
        else:
            self.broker.ack(delivery)

    def _on_pubrec(self, pid: int, code: int) -> None:
        delivery = self._inflight.get(pid)
        if delivery is None:
            if self.version == 5:
                self.send(
                    self.codec.send(
                        mqtt.PubRel(
                            packet_id=pid, reason_code=ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
                        )
                    )
                )
            return
        if code >= 0x80:
            self._settle(pid, code)
            return
        delivery.stage = 1
        self.broker.advanced(delivery)
        self._release(pid)

    def _release(self, pid: int) -> None:
        """PUBREL once the PUBREC's step is committed (durability mode sync). At the
        PUBREL the client hands the message on and forgets it: a PUBLISH sent again
        after a crash would be a second delivery, so a restart must find the step."""
        self.broker.when_durable(lambda ok: self._send_pubrel(pid, ok))

    def _send_pubrel(self, pid: int, ok: bool) -> None:
        if ok:
            self.send(self.codec.send(mqtt.PubRel(packet_id=pid)))
        else:  # the client gets the PUBREL after it reconnects, from the step kept in memory
            self.log.error("mqtt.pubrel.not_stored", packet_id=pid)
            self.stop("store failure")

    # -- the core's Sink ---------------------------------------------------------

    def deliver(self, delivery: Delivery, qos: int) -> None:
        if self._held is not None:
            self._held.append((delivery, qos))
            return
        message = delivery.message
        traffic = self.traffic
        traffic.messages_out = sent = traffic.messages_out + 1
        if not sent & SAMPLE_MASK:
            self.broker.stats.latency.observe(self.clock() - message.timestamp)
        if qos == 0:
            v5 = self.version == 5
            if not v5 or not (delivery.subscription_ids or self._client_alias_max):
                # The encoding cache of _encode_plain_qos0, looked up in line.
                last = _last_encoded
                retain = delivery.retain
                if last is not None and last[0] is message and last[1] is retain and last[2] is v5:
                    data = last[3]
                else:
                    data = _encode_plain_qos0(message, retain, self.version, self.clock)
                if self._client_max_packet is None or self._fits(data, delivery, qos):
                    self.send(data)
                return
            self._send_publish(delivery, 0, None, dup=False)
            return
        pid = delivery.wire_id
        resend = pid is not None and self._inflight.get(pid, delivery) is delivery
        if not resend:
            pid = self._allocate_pid()
        assert pid is not None
        delivery.wire_id = pid
        self._inflight[pid] = delivery
        if resend and delivery.stage == 1:
            self._release(pid)
            return
        self._send_publish(delivery, qos, pid, dup=resend)

    def _send_publish(self, delivery: Delivery, qos: int, pid: int | None, *, dup: bool) -> None:
        message = delivery.message
        if self.version < 5:
            data = mqtt.publish_bytes(
                _topic_bytes(message),
                message.payload,
                qos=qos,
                retain=delivery.retain,
                dup=dup,
                packet_id=pid,
            )
            if self._fits(data, delivery, qos):
                self.send(data)
            return
        topic = topic_of(message)
        props = properties_of(message, self.clock(), delivery.subscription_ids)
        new_alias = 0
        alias = self._aliases_out.get(topic)
        if alias is not None:
            props = msgspec.structs.replace(props, topic_alias=alias)
        elif len(self._aliases_out) < self._client_alias_max:
            new_alias = len(self._aliases_out) + 1
            props = msgspec.structs.replace(props, topic_alias=new_alias)
        publish = mqtt.Publish(
            topic="" if alias is not None else topic,
            payload=message.payload,
            qos=qos,
            retain=delivery.retain,
            dup=dup,
            packet_id=pid,
            properties=props,
        )
        data = mqtt.encode_publish(publish, 5)
        if self._fits(data, delivery, qos):
            if new_alias:
                # Only an alias the client has actually seen may stand for the topic.
                self._aliases_out[topic] = new_alias
            self.send(data)

    def _fits(self, data: bytes, delivery: Delivery, qos: int) -> bool:
        """A message larger than the client's maximum packet size is dropped for it (3.1.2.25)."""
        limit = self._client_max_packet
        if limit is None or len(data) <= limit:
            return True
        self.dropped_too_large += 1
        self.log.info("mqtt.delivery.too_large", size=len(data), maximum=limit)
        if qos:
            pid = delivery.wire_id
            if pid is not None:
                self._inflight.pop(pid, None)
            self.broker.nack(delivery, requeue=False)
        return False

    def _allocate_pid(self) -> int:
        inflight = self._inflight
        pid = self._next_pid
        if pid in inflight:
            for _ in range(65535):
                if pid not in inflight:
                    break
                pid = pid % 65535 + 1
            else:  # pragma: no cover - the credit window keeps us far below 65535
                raise RuntimeError("no free packet identifier")
        self._next_pid = pid % 65535 + 1
        return pid

    def close(self, reason: CloseReason) -> None:
        self.log.info("mqtt.session.closed_by_core", reason=reason.value)
        self.stop(reason)

    # -- end of the connection -----------------------------------------------------

    def goodbye(self, reason: int) -> None:
        """Tell an MQTT 5 client why the server closes the connection (no-op before 5)."""
        if self.version == 5 and self.session is not None and not self._graceful:
            if reason not in DISCONNECT_REASONS:
                reason = ReasonCode.PROTOCOL_ERROR  # e.g. 0x84 belongs to CONNACK only
            self.send(self.codec.send(mqtt.Disconnect(reason_code=reason)))

    def connection_ended(self) -> None:
        """The connection is gone: the core publishes the will unless DISCONNECT discarded it."""
        if self.session is None:
            return
        session, self.session = self.session, None
        if session.sink is self:
            self.broker.detach(session, graceful=self._graceful, expiry=self._disconnect_expiry)

    def resume(self) -> None:
        """The outbound buffer drained: let the core send what it held back."""
        if self.session is not None and self.session.sink is self:
            self.broker.resume(self.session)
