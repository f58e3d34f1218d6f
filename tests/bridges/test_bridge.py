"""The bridge framework's own parts, without a link: outboxes, loop prevention,
destination templates, orphaned outboxes, detaching."""

from __future__ import annotations

import trio
import trio.testing

from gateway.bridges.bridge import INBOUND_RETRY_DELAY, Bridge
from gateway.bridges.config import BridgeConfig, InboundRuleConfig, OutboundRuleConfig
from gateway.core import Broker, Message, SubscribeOptions
from gateway.core.delivery import Delivery
from gateway.core.message import Origin
from gateway.core.session import TRUSTED
from tests.core.fakes import RecordingSink

DEVICE = Origin(protocol="mqtt", listener="m", client_id="dev")


def _bridge(broker: Broker, *rules: OutboundRuleConfig) -> Bridge:
    config = BridgeConfig(name="up", kind="amqp", url="amqp://127.0.0.1:1/", outbound=rules)
    bridge = Bridge(config, broker)
    bridge.attach()
    return bridge


def _publish(broker: Broker, topic: str, origin: Origin = DEVICE) -> None:
    broker.publish(Message(destination=topic, payload=b"x", qos=1, origin=origin))


def test_an_outbox_takes_what_its_rule_matches_but_never_what_the_bridge_brought_in() -> None:
    broker = Broker()
    bridge = _bridge(broker, OutboundRuleConfig(match="site/#", selector="zone = 'a'"))
    outbox = broker.queues["$bridge/up/0"]
    broker.publish(
        Message(destination="site/1", payload=b"x", qos=1, headers={"zone": "a"}, origin=DEVICE)
    )
    broker.publish(Message(destination="site/2", payload=b"x", qos=1, headers={"zone": "b"}))
    broker.publish(
        Message(
            destination="site/3", payload=b"x", qos=1, headers={"zone": "a"}, origin=bridge.origin
        )
    )
    assert [e.message.destination for e in outbox.entries()] == ["site/1"]
    assert bridge.outbox_depth == 1


def test_targets_render_topic_and_the_rest_with_the_upstreams_separator() -> None:
    broker = Broker()
    bridge = _bridge(
        broker,
        OutboundRuleConfig(match="site/#", to="exchange:amq.topic/gw.{#}"),
        OutboundRuleConfig(match="plant/+/temp", to="{topic}"),
    )
    site = Delivery(Message(destination="site/a/b", payload=b""))
    site.consumer = _consumer_of(broker, "$bridge/up/0")
    plant = Delivery(Message(destination="plant/7/temp", payload=b""))
    plant.consumer = _consumer_of(broker, "$bridge/up/1")
    assert bridge._target(site) == "exchange:amq.topic/gw.a.b"  # AMQP separates with "."
    assert bridge._target(plant) == "plant.7.temp"


def _consumer_of(broker: Broker, queue: str):  # type: ignore[no-untyped-def]
    # The bridge's own kind of session: a client may not consume an outbox.
    session, _ = broker.open_session(f"c-{queue}", RecordingSink(), identity=TRUSTED)
    return broker.consume(session, queue)


def test_outboxes_of_rules_that_are_gone_stop_filling_and_keep_their_messages() -> None:
    broker = Broker()
    old = broker.durable_subscription("$bridge/up/1", "old/#")  # rule 1 of an older config
    _publish(broker, "old/a")
    _bridge(broker, OutboundRuleConfig(match="new/#"))
    _publish(broker, "old/b")
    assert "$bridge/up/1" not in broker.durable_filters()
    assert [e.message.destination for e in old.entries()] == ["old/a"]
    assert "$bridge/up/0" in broker.durable_filters()


def test_a_detached_bridge_no_longer_fills_or_holds() -> None:
    broker = Broker()
    bridge = _bridge(broker, OutboundRuleConfig(match="a/#", ack="upstream"))
    outbox = broker.queues["$bridge/up/0"]
    assert outbox.holds is broker.holds
    results: list[bool] = []
    _publish(broker, "a/1")
    broker.when_durable(results.append, DEVICE)
    assert results == []  # held for the upstream's confirm
    bridge.detach()
    assert results == [False]  # nothing will confirm it now
    _publish(broker, "a/2")
    assert outbox.holds is None
    assert [e.message.destination for e in outbox.entries()] == ["a/1"]
    assert broker.durable_filters() == {}


async def test_an_inbound_message_the_core_refuses_goes_back_upstream_after_a_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An upstream that redelivers a returned message at once must not spin.
    broker = Broker(auto_create_queues=False)
    config = BridgeConfig(
        name="up",
        kind="amqp",
        url="amqp://127.0.0.1:1/",
        inbound=(InboundRuleConfig(source="queue:in", to="$queue/nowhere"),),
    )
    bridge = Bridge(config, broker)
    bridge.attach()
    settled: list[tuple[float, bool]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge._return_refused)
        start = trio.current_time()
        bridge.received(
            0,
            "in",
            Message(destination="", payload=b"x", qos=1),
            lambda ok: settled.append((trio.current_time() - start, ok)),
        )
        assert settled == []
        assert bridge.stats.inbound_refused == 1
        await trio.sleep(INBOUND_RETRY_DELAY * 2)
        nursery.cancel_scope.cancel()
    assert settled == [(INBOUND_RETRY_DELAY, False)]


async def test_an_inbound_message_the_core_takes_is_settled_ok() -> None:
    broker = Broker()
    config = BridgeConfig(
        name="up",
        kind="amqp",
        url="amqp://127.0.0.1:1/",
        inbound=(InboundRuleConfig(source="queue:in", to="from/{subject}"),),
    )
    bridge = Bridge(config, broker)
    bridge.attach()
    settled: list[bool] = []
    sink = RecordingSink()
    session, _ = broker.open_session("watcher", sink)
    broker.subscribe(session, "from/#", SubscribeOptions(qos=1))
    bridge.received(0, "in.a", Message(destination="", payload=b"x", qos=1), settled.append)
    assert settled == [True]  # the memory store commits at once
    (delivery,) = sink.take()
    # AMQP separates levels with ".": the routing key in.a is the topic in/a.
    assert delivery.message.destination == "from/in/a"
    assert delivery.message.origin == bridge.origin
