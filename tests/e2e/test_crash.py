"""Crash tests: the gateway process is killed with SIGKILL mid-traffic, several times, and
restarted on the same data directory; nothing it acknowledged may be lost.

MQTT: QoS 1 and QoS 2 publishers on persistent sessions and a persistent-session subscriber
(QoS 2 subscription) that is offline part of the time. Every publish that got a successful
PUBACK (QoS 1) or PUBREC (QoS 2) reaches the subscriber at least once, QoS 2 ones exactly
once, and each publisher's messages arrive in order.

STOMP: producers SEND persistent messages with receipts to a /queue while a
client-individual consumer ACKs each; every receipted message is received at least once, in
order per producer.

"In order" for at-least-once delivery: a message may come again (a resend whose first copy
was stored before the crash, a delivery whose acknowledgement the crash cut off), so order
is judged on first arrivals: per sender, the seqs in the order each is first seen increase.

After the last run has delivered everything and stopped cleanly (SIGTERM, exit 0), the
store holds no message, no queue entry and no unfinished QoS 2 exchange.

Real clients (paho-mqtt, stomp.py) on their own threads; the gateway is a subprocess
(tests/e2e/crash_harness.py). Kill times come from a seeded random generator; the figures
and the seed are printed (``pytest -s``); CRASH_SEED=N replays a seed's kill times.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.e2e.crash_harness import (
    GatewayProcess,
    MQTTPublisher,
    MQTTSubscriber,
    StompConsumer,
    StompProducer,
    Verdict,
    check_delivery,
    wait_quiet,
    wait_until,
)

pytestmark = pytest.mark.slow

KILLS = 4
# Seconds of traffic between a (re)start and the SIGKILL.
TRAFFIC = (0.6, 1.2)
# How long the last run may take to hand over everything that was acknowledged.
DRAIN = 30.0
# Nothing more arrived for this long: late duplicates would have come by now.
QUIET = 0.5
# The session queue's drop-head limit would drop messages by policy and mask a loss.
SETTINGS = "max_queued_messages = 1000000\n"


def _seed() -> int:
    return int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))


def _report(title: str, verdicts: list[Verdict], facts: list[str]) -> str:
    lines = [f"{title}: {', '.join(facts)}"]
    for v in verdicts:
        lines.append(
            f"  {v.sender}: sent {v.sent}, acknowledged {v.acked}, received {v.received}, "
            f"lost {len(v.lost)}, duplicates {v.duplicates} ({v.flagged} marked as such), "
            f"out of order {len(v.out_of_order)}"
        )
    return "\n".join(lines)


def _assert_sound(verdicts: list[Verdict], report: str) -> None:
    for v in verdicts:
        assert not v.lost, f"{v.sender}: acknowledged and lost: {v.lost[:20]}\n{report}"
        assert not v.out_of_order, f"{v.sender}: order broken: {v.out_of_order[:10]}\n{report}"
        assert not v.unknown, f"{v.sender}: never sent: {v.unknown[:10]}\n{report}"
        assert v.acked > 0, f"{v.sender}: nothing was acknowledged\n{report}"


def _assert_store_empty(gw: GatewayProcess, report: str) -> None:
    rows = gw.stored()
    left = {table: rows.get(table) for table in ("messages", "entries", "incomplete")}
    assert left == {"messages": 0, "entries": 0, "incomplete": 0}, f"left in the store: {rows}"


def test_mqtt_acknowledged_publishes_survive_sigkill(tmp_path: Path) -> None:
    """Typical figures (2-core machine, 4 kills, 7-15 s): 25,000-35,000 publishes (about
    a third at QoS 2), every one acknowledged in the end (paho resends what was not on
    reconnect), lost 0, QoS 2 duplicates 0, QoS 1 duplicates 30-120 per publisher (the
    deliveries in flight at a crash, and resends whose first copy was stored)."""
    seed = _seed()
    rng = random.Random(seed)
    gw = GatewayProcess(tmp_path, ["mqtt"], SETTINGS)
    publishers = [
        MQTTPublisher("q1a", "crash/q1a", 1),
        MQTTPublisher("q1b", "crash/q1b", 1),
        MQTTPublisher("q2a", "crash/q2a", 2),
        MQTTPublisher("q2b", "crash/q2b", 2),
    ]
    subscriber = MQTTSubscriber("crash-sub")
    # The subscriber's presence in each run: online throughout, offline throughout,
    # leaving halfway (a clean DISCONNECT: the session stays), arriving halfway.
    presence = [("on", "on"), ("off", "off"), ("on", "off"), ("off", "on")]
    recovered: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        gw.start()
        port = gw.port("mqtt")
        assert subscriber.connect(port) is False
        subscriber.subscribe("crash/#", qos=2)
        for publisher in publishers:
            assert publisher.connect(port) is False
            publisher.start()
        for run, (first, second) in enumerate(presence):
            if run:
                recovered.append(gw.start())
                port = gw.port("mqtt")
                for publisher in publishers:
                    assert publisher.connect(port) is True, "the session did not survive"
                if first == "on":
                    assert subscriber.connect(port) is True, "the session did not survive"
            half = rng.uniform(*TRAFFIC) / 2
            time.sleep(half)
            if (first, second) == ("on", "off"):
                subscriber.disconnect()
            elif (first, second) == ("off", "on"):
                assert subscriber.connect(port) is True
            time.sleep(half)
            gw.kill()
            for client in [*publishers, subscriber]:
                client.lost()
        traffic = time.monotonic() - started
        # The last run: no new publishes; paho resends what was never acknowledged.
        for publisher in publishers:
            publisher.stop()
        recovered.append(gw.start())
        port = gw.port("mqtt")
        for publisher in publishers:
            assert publisher.connect(port) is True
        assert subscriber.connect(port) is True

        def complete() -> bool:
            got = {(a.sender, a.seq) for a in subscriber.arrivals}
            return all(p.outstanding() == 0 for p in publishers) and all(
                (p.name, seq) in got for p in publishers for seq in p.acked()
            )

        wait_until(complete, DRAIN)  # if not, the verdict says what is missing
        wait_quiet(subscriber.arrivals, QUIET, DRAIN)
        for client in [subscriber, *publishers]:
            client.close()
        assert gw.stop() == 0
    finally:
        for publisher in publishers:
            publisher.stop()
        for client in [subscriber, *publishers]:
            client.close()
        gw.close()
    elapsed = time.monotonic() - started

    arrivals = list(subscriber.arrivals)
    verdicts = [check_delivery(p.sent, p.acked(), arrivals, p.name) for p in publishers]
    report = _report(
        "MQTT",
        verdicts,
        [
            f"seed {seed}",
            f"killed {gw.kills} times",
            f"{elapsed:.1f}s ({traffic:.1f}s of traffic)",
            "recovered after each kill (messages/in flight): "
            + ", ".join(f"{r['messages']}/{r['in_flight']}" for r in recovered),
            "QoS 2 exchanges completed after a crash with PUBCOMP 0x92: "
            + str(sum(p.completed_late() for p in publishers)),
        ],
    )
    print(report)
    _assert_sound(verdicts, report)
    for publisher, verdict in zip(publishers, verdicts, strict=True):
        assert publisher.refused() == 0, report
        assert publisher.outstanding() == 0, f"{publisher.name}: exchanges left unfinished"
        if publisher.qos == 2:
            assert verdict.duplicates == 0, (
                f"{publisher.name}: QoS 2 delivered twice: {verdict.repeated[:20]}\n{report}"
            )
        qos = {a.qos for a in arrivals if a.sender == publisher.name}
        assert qos == {publisher.qos}, f"{publisher.name}: delivered at QoS {qos}"
    assert gw.kills == KILLS
    # Every restart found the five sessions, and messages the crash left behind.
    assert all(r["sessions"] == len(publishers) + 1 for r in recovered), recovered
    assert any(int(str(r["messages"])) > 0 for r in recovered), recovered
    assert gw.events("error") == []
    _assert_store_empty(gw, report)


def test_stomp_receipted_sends_survive_sigkill(tmp_path: Path) -> None:
    """Typical figures (2-core machine, 4 kills, ~5 s): 25,000-38,000 SENDs, all receipted
    but the 80 in flight at the kills (3 producers x a window of 20; the last run sends
    nothing new), lost 0, duplicates 0-125 per producer (MESSAGEs whose ACK the crash cut
    off)."""
    seed = _seed()
    rng = random.Random(seed)
    gw = GatewayProcess(tmp_path, ["stomp"], SETTINGS)
    producers = [StompProducer(f"s{i}", "/queue/crash") for i in range(3)]
    consumer = StompConsumer("consumer", "/queue/crash")
    # The consumer is away for one whole run: the queue fills, and is recovered full.
    online = [True, False, True, True]
    recovered: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        for run, present in enumerate(online):
            info = gw.start()
            if run:
                recovered.append(info)
            port = gw.port("stomp")
            for producer in producers:
                producer.connect(port)
                if not run:
                    producer.start()
            if present:
                consumer.connect(port)
                consumer.subscribe()
            time.sleep(rng.uniform(*TRAFFIC))
            gw.kill()
            for client in [*producers, consumer]:
                client.drop()
        traffic = time.monotonic() - started
        for producer in producers:
            producer.stop()
        recovered.append(gw.start())
        consumer.connect(gw.port("stomp"))
        consumer.subscribe()

        def complete() -> bool:
            got = {(a.sender, a.seq) for a in consumer.arrivals}
            return all((p.name, seq) in got for p in producers for seq in p.acked())

        wait_until(complete, DRAIN)  # if not, the verdict says what is missing
        # Stored but never receipted messages may still be coming: wait until they stop.
        wait_quiet(consumer.arrivals, QUIET, DRAIN)
        consumer.disconnect()
        assert gw.stop() == 0
    finally:
        for producer in producers:
            producer.stop()
        for client in [consumer, *producers]:
            client.drop()
        gw.close()
    elapsed = time.monotonic() - started

    arrivals = list(consumer.arrivals)
    verdicts = [check_delivery(p.sent, p.acked(), arrivals, p.name) for p in producers]
    report = _report(
        "STOMP",
        verdicts,
        [
            f"seed {seed}",
            f"killed {gw.kills} times",
            f"{elapsed:.1f}s ({traffic:.1f}s of traffic)",
            f"{consumer.acks} ACKs",
            "recovered after each kill (messages): "
            + ", ".join(str(r["messages"]) for r in recovered),
        ],
    )
    print(report)
    _assert_sound(verdicts, report)
    assert all(not p.errors for p in producers), [p.errors for p in producers]
    assert not consumer.errors, consumer.errors
    assert gw.kills == KILLS
    assert any(int(str(r["messages"])) > 0 for r in recovered), recovered
    assert gw.events("error") == []
    _assert_store_empty(gw, report)
