"""SUBSCRIBE and UNSUBSCRIBE of an MQTT session (``MQTTSession.handle`` calls them).

A topic filter becomes a core subscription, ``$queue/NAME`` a consumer of that
queue; MQTT 5 may carry a ``selector`` user property that filters every
subscription of the packet. Retained messages the new subscriptions bring wait
in the session's held deliveries until the SUBACK is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..codecs import mqtt
from ..codecs.mqtt import MQTTProtocolError, ReasonCode
from ..core import InvalidFilter, Session, SubscribeOptions
from ..core.broker import SHARE_PREFIX, NotAuthorized
from ..core.selector import Selector, SelectorError, compile_selector
from .limits import MAX_SUBSCRIPTIONS, subscription_limit
from .mqtt_mapping import NO_PROPERTIES, queue_name

if TYPE_CHECKING:
    from .mqtt_session import MQTTSession

_V3_SUBACK_FAILURE = 0x80


def subscribe(mqtt_session: MQTTSession, packet: mqtt.Subscribe) -> None:
    """A SUBSCRIBE: each filter subscribed (or a queue consumed), then the SUBACK."""
    session = mqtt_session.session
    assert session is not None
    v5 = mqtt_session.version == 5
    ids = packet.properties.subscription_identifiers
    sub_id = ids[0] if ids else None
    codes: list[int] = []
    # MQTT 5: a user property "selector" filters every subscription of the packet.
    selector, bad_selector = None, None
    if v5:
        selector, bad_selector = _subscription_selector(packet.properties.user_properties)
    # Retained messages the new subscriptions bring follow the SUBACK.
    mqtt_session._held = []
    limit = subscription_limit(mqtt_session.identity, mqtt_session.config.max_subscriptions)
    for topic_filter, options in packet.subscriptions:
        if bad_selector is not None:
            mqtt_session.log.info(
                "mqtt.subscribe.refused", topic_filter=topic_filter, reason=bad_selector
            )
            codes.append(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)
            continue
        qos = options & 3
        no_local = bool(options & 4)
        if no_local and topic_filter.startswith(SHARE_PREFIX):
            raise MQTTProtocolError("no local on a shared subscription", ReasonCode.PROTOCOL_ERROR)
        if limit and _over_limit(session, topic_filter, limit):
            mqtt_session.broker.stats.limited[MAX_SUBSCRIPTIONS] += 1
            mqtt_session.log.info(
                "mqtt.subscribe.refused", topic_filter=topic_filter, reason=MAX_SUBSCRIPTIONS
            )
            codes.append(ReasonCode.QUOTA_EXCEEDED if v5 else _V3_SUBACK_FAILURE)
            continue
        try:
            name = queue_name(topic_filter)
            if name is not None:
                mqtt_session.broker.consume(
                    session, name, qos=qos, window=session.consumer.window, selector=selector
                )
            else:
                sub = SubscribeOptions(
                    qos=qos,
                    no_local=no_local,
                    retain_as_published=bool(options & 8),
                    retain_handling=(options >> 4) & 3 if v5 else 0,
                    subscription_id=sub_id,
                    selector=selector,
                )
                mqtt_session.broker.subscribe(session, topic_filter, sub)
            codes.append(qos)
        except InvalidFilter as exc:
            mqtt_session.log.info(
                "mqtt.subscribe.refused", topic_filter=topic_filter, reason=str(exc)
            )
            codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else _V3_SUBACK_FAILURE)
        except NotAuthorized:  # logged by the core (acl.denied)
            codes.append(ReasonCode.NOT_AUTHORIZED if v5 else _V3_SUBACK_FAILURE)
    props = NO_PROPERTIES if bad_selector is None else mqtt.Properties(reason_string=bad_selector)
    suback = mqtt.SubAck(packet_id=packet.packet_id, return_codes=tuple(codes), properties=props)
    mqtt_session.send(mqtt_session.codec.send(suback))
    mqtt_session._release_held()


def unsubscribe(mqtt_session: MQTTSession, packet: mqtt.Unsubscribe) -> None:
    """An UNSUBSCRIBE: each filter (or queue) dropped, then the UNSUBACK."""
    session = mqtt_session.session
    assert session is not None
    codes = []
    for topic_filter in packet.topic_filters:
        name = queue_name(topic_filter)
        if name is not None:
            existed = mqtt_session.broker.cancel(session, name, requeue=False)
        else:
            existed = mqtt_session.broker.unsubscribe(session, topic_filter)
        codes.append(0 if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
    reasons = tuple(codes) if mqtt_session.version == 5 else ()
    mqtt_session.send(
        mqtt_session.codec.send(mqtt.UnsubAck(packet_id=packet.packet_id, reason_codes=reasons))
    )


def _over_limit(session: Session, topic_filter: str, limit: int) -> bool:
    """True if subscribing to ``topic_filter`` would take ``session`` past ``limit``
    subscriptions (replacing one it holds does not count)."""
    name = queue_name(topic_filter)
    if topic_filter in session.subscriptions or (name is not None and name in session.consumers):
        return False
    return len(session.subscriptions) + len(session.consumers) >= limit


def _subscription_selector(
    user_properties: tuple[tuple[str, str], ...],
) -> tuple[Selector | None, str | None]:
    """(the compiled selector, None) or (None, why it was refused) from SUBSCRIBE's user
    properties; (None, None) when there is none."""
    for name, value in user_properties:
        if name == "selector":
            if not value.strip():
                return None, None
            try:
                return compile_selector(value), None
            except SelectorError as exc:
                return None, f"bad selector: {exc}"
    return None, None
