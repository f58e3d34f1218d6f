"""The ``mqtt`` bridge kind: the gateway as an MQTT 3.1.1 or 5 client of another broker.

The URL is ``mqtt://[user:password@]host[:1883]`` or ``mqtts://...[:8883]``;
targets and sources are MQTT topic names and filters. It speaks through the
gateway's own sans-I/O codec in its client role and maps fields with the MQTT
listener's mapping, so a message crosses the bridge as it crosses an MQTT
listener. docs/bridge-mqtt.md has the options and the semantics:

- outbound, a PUBLISH per message, confirmed by its PUBACK or PUBCOMP, refused by
  a reason code of 0x80 or more; never more in flight than the server's receive
  maximum (the rest wait here, in order). A message handed again on a new
  connection is a fresh PUBLISH (new packet id, DUP 0).
- inbound, one SUBSCRIBE per rule (MQTT 5: subscription identifier = rule index
  + 1, no local); a message is acknowledged once settled accepted, and left
  unacknowledged when refused, for the persistent session to bring it again.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from ..codecs import mqtt
from ..codecs.mqtt import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    MQTTConnection,
    MQTTProtocolError,
    ReasonCode,
    Role,
)
from ..core.destinations import SHARE_PREFIX
from ..core.message import Origin
from ..core.topics import InvalidFilter, check_filter, filter_matches
from ..listeners.mqtt_mapping import properties_of, to_message
from ..logging import get_logger
from .base import (
    ORIGIN_HEADER,
    Endpoint,
    InboundRule,
    Link,
    Outbound,
    Output,
    Settle,
    Upstream,
    UpstreamError,
    no_settle,
    open_stream,
)
from .mqtt_options import Options as Options  # the [bridges.mqtt] table, read by config

if TYPE_CHECKING:
    from .config import BridgeConfig

DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}
TLS_SCHEMES: Final = frozenset({"mqtts"})
READ_SIZE = 65536
# How long close() gives its DISCONNECT to be written.
CLOSE_TIMEOUT = 2.0
# The in-flight limit assumed for an MQTT 3.1.1 broker, which does not announce one
# (Mosquitto's max_inflight_messages is 20 by default).
V4_BROKER_WINDOW = 20

# CONNACK codes that retrying with the same settings cannot cure. 3.1.1: protocol
# version, identifier rejected, bad user name or password, not authorized; 5: the
# same, banned, bad authentication method.
_FATAL_CONNACK_V4: Final = frozenset({1, 2, 4, 5})
_FATAL_CONNACK_V5: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})
# SUBACK codes that retrying cannot cure: not authorized, topic filter invalid, shared
# subscriptions, subscription identifiers, wildcards not supported (3.1.1 has only 0x80).
_FATAL_SUBACK: Final = frozenset({0x87, 0x8F, 0x9E, 0xA1, 0xA2})


@dataclass(slots=True)
class _InFlight:
    tag: int
    qos: int


def _valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def _plain_filter(source: str) -> str:
    """The topic filter of a subscription, without a ``$share/GROUP/`` prefix."""
    if source.startswith(SHARE_PREFIX):
        _, _, rest = source[len(SHARE_PREFIX) :].partition("/")
        return rest
    return source


class MqttUpstream(Upstream):
    """One MQTT client connection to the upstream broker."""

    separator = "/"

    def __init__(
        self, config: BridgeConfig, options: object, link: Link, inbound: Sequence[InboundRule]
    ) -> None:
        super().__init__(config, options, link, inbound)
        if not isinstance(options, Options):
            raise TypeError("options must be gateway.bridges.mqtt.Options")
        self.options = options
        self.endpoint = Endpoint.parse(config.url, DEFAULT_PORTS, TLS_SCHEMES)
        self.client_id = options.client_id or f"gateway-bridge-{config.name}"
        self.version = options.version
        self.log = get_logger(bridge=config.name, kind="mqtt", client_id=self.client_id)
        self.origin = Origin(protocol="bridge", listener=config.name, client_id=self.client_id)
        self._codec = MQTTConnection(Role.CLIENT)
        self._stream: trio.abc.Stream | None = None
        self._connack: mqtt.ConnAck | None = None
        # Output waiting for the writer; _last_send is when it last wrote (keep-alive).
        self._output = Output(self._send)
        self._last_send = 0.0
        self._pong = trio.Event()
        # Outbound: publishes awaiting their PUBACK/PUBCOMP by packet id, and those
        # held back by the server's receive maximum.
        self._outgoing: dict[int, _InFlight] = {}
        self._held: deque[Outbound] = deque()
        self._next_id = 1
        self._subscribing: dict[int, str] = {}
        # What the CONNACK allows (MQTT 5; 3.1.1 brokers announce nothing).
        self._quota = 65535
        self._qos: int = options.qos
        self._retain_available = True
        self._max_packet: int | None = None
        self._use_sub_ids = self.version == 5
        self._keep_alive = options.keep_alive
        # Inbound QoS 2 packet ids received and not yet released: True once PUBREC sent.
        self._qos2_in: dict[int, bool] = {}
        # Inbound messages the core refused, left unacknowledged (see _settler).
        self._withheld = 0
        self._window = (
            options.receive_maximum
            if self.version == 5
            else min(options.receive_maximum, V4_BROKER_WINDOW)
        )
        self._unmatched = 0
        self._goodbye = ReasonCode.SUCCESS
        self._failure: UpstreamError | None = None
        self._run_scope: trio.CancelScope | None = None
        self._closed = False
        self._connected = False
        self._rule_indexes = frozenset(rule.index for rule in inbound)

    # -- connecting -----------------------------------------------------------

    async def open(self) -> None:
        self._check_filters()
        self._stream = await open_stream(self.config, self.endpoint)
        opts = self.options
        props = mqtt.NO_PROPERTIES
        if self.version == 5:
            props = mqtt.Properties(
                session_expiry_interval=opts.session_expiry or None,
                receive_maximum=opts.receive_maximum,
                topic_alias_maximum=0,
            )
        password = self.endpoint.password
        self._queue(
            mqtt.Connect(
                protocol_level=self.version,
                client_id=self.client_id,
                clean_start=opts.clean_start,
                keep_alive=opts.keep_alive,
                username=self.endpoint.username,
                password=password.encode() if password is not None else None,
                properties=props,
            )
        )
        await self._output.flush()
        while self._connack is None:
            await self._receive()
        connack = self._connack
        if connack.return_code:
            code = connack.return_code
            fatal = _FATAL_CONNACK_V5 if self.version == 5 else _FATAL_CONNACK_V4
            why = connack.properties.reason_string
            self.log.warning("bridge.mqtt.refused", code=code, reason=why)
            raise UpstreamError(
                f"CONNACK {code:#x}" + (f": {why}" if why else ""),
                code=code,
                retry=code not in fatal,
            )
        self._adopt(connack)
        self._connected = True
        for rule in self.inbound:
            source = rule.source
            pid = self._allocate_id()
            self._subscribing[pid] = source
            # Options byte: QoS, and in MQTT 5 no local (not allowed on a shared one).
            flags = rule.qos
            if self.version == 5 and not source.startswith(SHARE_PREFIX):
                flags |= 0x04
            sub_props = mqtt.NO_PROPERTIES
            if self._use_sub_ids:
                sub_props = mqtt.Properties(subscription_identifiers=(rule.index + 1,))
            self._queue(
                mqtt.Subscribe(
                    packet_id=pid, subscriptions=((source, flags),), properties=sub_props
                )
            )
        await self._output.flush()
        while self._subscribing:
            await self._receive()
        self.log.info(
            "bridge.mqtt.connected",
            host=self.endpoint.host,
            port=self.endpoint.port,
            version=self.version,
            session_present=connack.session_present,
            subscriptions=len(self.inbound),
            receive_maximum=self._quota,
        )

    def _check_filters(self) -> None:
        for rule in self.inbound:
            try:
                check_filter(_plain_filter(rule.source))
            except InvalidFilter as exc:
                raise UpstreamError(f"inbound {rule.source!r}: {exc}", retry=False) from None

    def _adopt(self, connack: mqtt.ConnAck) -> None:
        """Take the limits an MQTT 5 CONNACK announces."""
        props = connack.properties
        if props.receive_maximum:
            self._quota = props.receive_maximum
        if props.maximum_qos is not None:
            self._qos = min(self._qos, props.maximum_qos)
        if props.retain_available == 0:
            self._retain_available = False
        self._max_packet = props.maximum_packet_size
        if props.subscription_identifier_available == 0:
            self._use_sub_ids = False
        if props.server_keep_alive is not None:
            self._keep_alive = props.server_keep_alive

    # -- publishing -----------------------------------------------------------

    async def publish(self, batch: Sequence[Outbound]) -> None:
        now = time.time()
        written: list[int] = []
        for out in batch:
            if self._qos and (self._held or len(self._outgoing) >= self._quota):
                self._held.append(out)
            elif self._write_publish(out, now) and not self._qos:
                written.append(out.tag)
        await self._output.flush()
        for tag in written:  # QoS 0: confirmed once written
            self.link.confirmed(tag)

    def _write_publish(self, out: Outbound, now: float) -> bool:
        """Buffer ``out`` as a PUBLISH; False (and refused) if it cannot be sent."""
        message = out.message
        topic = out.target
        if not _valid_topic(topic):
            self.link.refused(out.tag, f"{topic!r} is not an MQTT topic name")
            return False
        props = mqtt.NO_PROPERTIES
        if self.version == 5:
            props = properties_of(message, now)
            user = tuple(pair for pair in props.user_properties if pair[0] != ORIGIN_HEADER)
            props = msgspec.structs.replace(
                props, user_properties=(*user, (ORIGIN_HEADER, self.config.name))
            )
        qos = self._qos
        pid = self._allocate_id() if qos else None
        packet = mqtt.Publish(
            topic=topic,
            payload=message.payload,
            qos=qos,
            retain=self.options.retain and self._retain_available and message.retain,
            packet_id=pid,
            properties=props,
        )
        try:
            data = self._codec.send(packet)
        except ValueError as exc:  # a name or value MQTT cannot encode
            self.link.refused(out.tag, f"cannot encode as MQTT: {exc}")
            return False
        if self._max_packet is not None and len(data) > self._max_packet:
            self.link.refused(
                out.tag, f"{len(data)} bytes exceed the server's maximum of {self._max_packet}"
            )
            return False
        if pid is not None:
            self._outgoing[pid] = _InFlight(out.tag, qos)
        self._output.buffer += data  # written by publish (or woken by _release_held)
        return True

    def _allocate_id(self) -> int:
        """A packet id not in use by a publish or subscribe of ours."""
        for _ in range(65535):
            pid = self._next_id
            self._next_id = pid % 65535 + 1
            if pid not in self._outgoing and pid not in self._subscribing:
                return pid
        raise UpstreamError("no free packet id")  # not reached: the quota is smaller

    def _release_held(self) -> None:
        """Send held publishes while the server's receive maximum has room."""
        if not self._held:
            return
        now = time.time()
        while self._held and len(self._outgoing) < self._quota:
            self._write_publish(self._held.popleft(), now)
        self._output.wake()

    # -- reading --------------------------------------------------------------

    async def run(self) -> None:
        if self._failure is not None:
            raise self._failure
        async with trio.open_nursery() as nursery:
            self._run_scope = nursery.cancel_scope
            nursery.start_soon(self._guarded, self._output.writer)
            if self._keep_alive:
                nursery.start_soon(self._guarded, self._pinger)
            await self._guarded(self._reader)
        raise self._failure or UpstreamError("the connection ended")

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task``; its UpstreamError ends ``run`` (unwrapped from the nursery)."""
        try:
            await task()
        except UpstreamError as exc:
            self._fail(exc)

    def _fail(self, exc: UpstreamError) -> None:
        if self._failure is None:
            self._failure = exc
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def _reader(self) -> None:
        while True:
            await self._receive()

    async def _receive(self) -> None:
        """Read once from the stream and handle every complete packet."""
        assert self._stream is not None
        try:
            data = await self._stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError(f"connection lost: {exc}") from exc
        self._codec.receive_data(data)
        try:
            while (event := self._codec.next_event()) is not NEED_DATA:
                if event is CLOSED:
                    raise UpstreamError("the server closed the connection")
                if event is PAUSED:  # only with a plain-publish hook, which is not set
                    continue
                self._handle(event)
        except MQTTProtocolError as exc:
            self._goodbye = exc.reason
            self.log.warning("bridge.mqtt.protocol_error", error=str(exc))
            raise UpstreamError(f"protocol error: {exc}", code=int(exc.reason)) from exc

    def _handle(self, packet: mqtt.Packet) -> None:
        match packet:
            case mqtt.Publish():
                self._on_publish(packet)
            case mqtt.PubAck(packet_id=pid, reason_code=code):
                self._on_ack(pid, code, 1)
            case mqtt.PubRec(packet_id=pid, reason_code=code):
                self._on_pubrec(pid, code)
            case mqtt.PubComp(packet_id=pid, reason_code=code):
                self._on_ack(pid, code, 2)
            case mqtt.PubRel(packet_id=pid):
                known = self._qos2_in.pop(pid, None) is not None
                code = 0 if known or self.version != 5 else ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
                self._queue(mqtt.PubComp(packet_id=pid, reason_code=code))
            case mqtt.PingResp():
                self._pong.set()
            case mqtt.ConnAck():
                if self._connack is not None:
                    raise MQTTProtocolError("second CONNACK", ReasonCode.PROTOCOL_ERROR)
                self._connack = packet
            case mqtt.SubAck(packet_id=pid, return_codes=codes):
                self._on_suback(pid, codes)
            case mqtt.UnsubAck():
                pass
            case mqtt.Disconnect(reason_code=code, properties=props):
                why = props.reason_string
                self.log.warning("bridge.mqtt.disconnected", code=code, reason=why)
                raise UpstreamError(
                    f"DISCONNECT {code:#x} from the server" + (f": {why}" if why else ""),
                    code=code,
                )
            case _:
                # AUTH (enhanced authentication is not built); the codec refuses the rest.
                raise MQTTProtocolError(
                    f"unexpected {type(packet).__name__.upper()}", ReasonCode.PROTOCOL_ERROR
                )

    def _on_suback(self, pid: int, codes: tuple[int, ...]) -> None:
        source = self._subscribing.pop(pid, None)
        if source is None:
            raise MQTTProtocolError(f"SUBACK for unknown packet id {pid}")
        for code in codes:
            if code >= 0x80:
                self.log.warning("bridge.mqtt.subscribe.refused", source=source, code=code)
                raise UpstreamError(
                    f"SUBSCRIBE {source!r} refused: {code:#x}",
                    code=code,
                    retry=self.version == 4 or code not in _FATAL_SUBACK,
                )

    def _on_ack(self, pid: int, code: int, qos: int) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2): the publish is done."""
        entry = self._outgoing.get(pid)
        if entry is None or entry.qos != qos:
            return  # not ours (or already refused): nothing to confirm
        del self._outgoing[pid]
        if code < 0x80:
            self.link.confirmed(entry.tag)
        else:
            kind = "PUBACK" if qos == 1 else "PUBCOMP"
            self.link.refused(entry.tag, f"{kind} {code:#x} from the upstream broker")
        self._release_held()

    def _on_pubrec(self, pid: int, code: int) -> None:
        entry = self._outgoing.get(pid)
        if entry is None or entry.qos != 2:  # not ours: release it all the same (4.3.3)
            self._queue(mqtt.PubRel(packet_id=pid, reason_code=0x92 if self.version == 5 else 0))
        elif code < 0x80:
            self._queue(mqtt.PubRel(packet_id=pid))
        else:
            del self._outgoing[pid]
            self.link.refused(entry.tag, f"PUBREC {code:#x} from the upstream broker")
            self._release_held()

    def _on_publish(self, packet: mqtt.Publish) -> None:
        topic, qos, pid = packet.topic, packet.qos, packet.packet_id
        if not topic:
            raise MQTTProtocolError(
                "topic alias, though the maximum is 0", ReasonCode.TOPIC_ALIAS_INVALID
            )
        if qos == 2 and pid in self._qos2_in:
            # The same QoS 2 message again before its PUBREL: never delivered twice.
            if self._qos2_in[pid]:
                self._queue(mqtt.PubRec(packet_id=pid))
            return
        rule = self._rule_for(topic, packet.properties.subscription_identifiers)
        if rule is None:
            # A subscription the persistent session kept from an earlier configuration.
            self._unmatched += 1
            if self._unmatched == 1:
                self.log.warning("bridge.mqtt.unmatched", topic=topic)
            self._acknowledge(qos, pid)
            return
        props, now = packet.properties, time.time()
        try:
            message = to_message(topic, packet.payload, qos, packet.retain, props, self.origin, now)
        except MQTTProtocolError as exc:  # payload format indicator on a non-UTF-8 payload
            self.log.warning("bridge.mqtt.inbound.invalid", topic=topic, error=str(exc))
            self._acknowledge(qos, pid, exc.reason)
            return
        if qos == 2:
            assert pid is not None
            self._qos2_in[pid] = False
        self.link.received(rule, topic, message, self._settler(qos, pid))

    def _rule_for(self, topic: str, sub_ids: tuple[int, ...]) -> int | None:
        """The inbound rule a message came for: its subscription identifier (MQTT 5)
        or the first rule whose filter matches."""
        if self._use_sub_ids:
            for sub_id in sub_ids:
                if sub_id - 1 in self._rule_indexes:
                    return sub_id - 1
        for rule in self.inbound:
            if filter_matches(_plain_filter(rule.source), topic):
                return rule.index
        return None

    def _acknowledge(self, qos: int, pid: int | None, code: int = 0) -> None:
        if pid is None or not qos:
            return
        code = code if self.version == 5 else 0
        if qos == 1:
            self._queue(mqtt.PubAck(packet_id=pid, reason_code=code))
        else:
            if code < 0x80:  # an error code ends the exchange: no PUBREL follows
                self._qos2_in[pid] = True
            else:
                self._qos2_in.pop(pid, None)
            self._queue(mqtt.PubRec(packet_id=pid, reason_code=code))

    def _settler(self, qos: int, pid: int | None) -> Settle:
        """The framework's ``settle`` for one inbound message.

        Accepted: PUBACK (QoS 1) or PUBREC (QoS 2; PUBCOMP follows the PUBREL).
        Refused: MQTT has no negative acknowledgement that keeps the message (a
        PUBACK with an error code drops it upstream), so it is left unacknowledged:
        the broker sends it again on the next connection of the persistent
        session. Once as many are withheld as the broker may have in flight, it
        sends nothing more: the connection is ended so that it sends them again.
        """
        if not qos or pid is None:
            return no_settle
        done = False

        def settle(accepted: bool) -> None:
            nonlocal done
            if done or self._closed:
                return
            done = True
            if accepted:
                self._acknowledge(qos, pid)
                return
            self._withheld += 1
            if self._withheld == 1:
                self.log.info("bridge.mqtt.inbound.withheld")
            if self._withheld >= self._window:
                self._fail(
                    UpstreamError(
                        f"{self._withheld} inbound messages refused by the core: "
                        "reconnecting for the broker to send them again"
                    )
                )

        return settle

    # -- writing --------------------------------------------------------------

    def _queue(self, packet: mqtt.Packet) -> None:
        """Buffer ``packet`` for the writer and wake it."""
        self._output.write(self._codec.send(packet))

    async def _send(self, data: bytes) -> None:
        """Write ``data`` (``self._output`` calls it, under its lock)."""
        assert self._stream is not None
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise UpstreamError(f"connection lost: {exc}") from exc
        self._last_send = trio.current_time()

    async def _pinger(self) -> None:
        """PINGREQ after ``keep_alive`` seconds without sending; no PINGRESP within
        another ``keep_alive`` ends the connection."""
        keep_alive = self._keep_alive
        while True:
            await trio.sleep_until(self._last_send + keep_alive)
            if trio.current_time() < self._last_send + keep_alive:
                continue
            self._pong = trio.Event()
            self._queue(mqtt.PingReq())
            self._last_send = trio.current_time()
            with trio.move_on_after(keep_alive) as waiting:
                await self._pong.wait()
            if waiting.cancelled_caught:
                self.log.warning("bridge.mqtt.keep_alive.expired", keep_alive=keep_alive)
                raise UpstreamError(f"no PINGRESP within {keep_alive} s")

    # -- closing --------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        stream = self._stream
        if stream is None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            if self._connected and self._codec.state is mqtt.State.CONNECTED:
                # Acknowledgements still buffered go first; the session expiry stays.
                code = self._goodbye if self.version == 5 else 0
                self._queue(mqtt.Disconnect(reason_code=code))
            with contextlib.suppress(UpstreamError):
                await self._output.flush()
        await trio.aclose_forcefully(stream)
        self.log.info(
            "bridge.mqtt.closed",
            in_flight=len(self._outgoing),
            held=len(self._held),
            withheld=self._withheld,
            unmatched=self._unmatched,
        )
