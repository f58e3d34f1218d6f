"""Graceful shutdown: SIGTERM while QoS 1 traffic is in flight (docs/operations.md,
"Shutdown and drain").

A ``python -m gateway run`` process (tests/e2e/crash_harness.py) with MQTT 5 publishers
mid-stream (QoS 1, persistent sessions), a persistent-session MQTT subscriber, and a
STOMP consumer of a queue that holds its deliveries unacknowledged. On SIGTERM the
gateway stops accepting, tells every MQTT 5 client DISCONNECT 0x8B (server shutting
down) after the PUBACKs it had promised, closes the STOMP connection, commits the store
and exits 0. After a restart nothing acknowledged is missing: the subscriber and a new
queue consumer receive every publish that got a PUBACK, and what had no PUBACK yet is
resent by paho on the resumed session.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.crash_harness import (
    GatewayProcess,
    MQTTPublisher,
    MQTTSubscriber,
    StompClient,
    StompConsumer,
    check_delivery,
    wait_quiet,
    wait_until,
)

SERVER_SHUTTING_DOWN = 0x8B
TRAFFIC = 0.8  # seconds of traffic before the SIGTERM
WITHIN = 30.0
SETTINGS = "drain_timeout = 5.0\nmax_queued_messages = 1000000\n"


class WatchedPublisher(MQTTPublisher):
    """Remembers, in the order paho's thread saw them, PUBACKs and a server DISCONNECT."""

    def __init__(self, name: str, topic: str) -> None:
        super().__init__(name, topic, 1)
        self.seen: list[tuple[str, int]] = []
        self.lock_seen = threading.Lock()
        on_publish = self.client.on_publish
        on_disconnect = self.client.on_disconnect

        def publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            with self.lock_seen:
                self.seen.append(("puback", mid))
            on_publish(client, userdata, mid, reason, props)

        def disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            with self.lock_seen:
                self.seen.append(("disconnect", int(reason.value)))
            on_disconnect(client, userdata, flags, reason, props)

        self.client.on_publish = publish
        self.client.on_disconnect = disconnect

    def disconnect_reasons(self) -> list[int]:
        return [value for kind, value in self.seen if kind == "disconnect"]

    def pubacks_after_disconnect(self) -> int:
        kinds = [kind for kind, _ in self.seen]
        if "disconnect" not in kinds:
            return 0
        return kinds[kinds.index("disconnect") :].count("puback")


class HoldingConsumer(StompClient):
    """Subscribes to a queue with client-individual acks and never acknowledges: its
    deliveries stay in flight until the connection ends."""

    def __init__(self, name: str, destination: str) -> None:
        super().__init__(name)
        self.destination = destination
        self.held = 0
        self.closed = threading.Event()

    def on_message(self, frame: Any) -> None:
        self.held += 1

    def subscribe(self) -> None:
        done = threading.Event()
        self._awaited = (f"{self.name}-sub", done)
        self.conn.subscribe(
            self.destination,
            id="hold",
            ack="client-individual",
            headers={"receipt": f"{self.name}-sub", "prefetch-count": "50"},
        )
        assert done.wait(WITHIN), "no receipt for SUBSCRIBE"


def test_sigterm_drains_in_flight_qos1_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, ["mqtt", "stomp"], SETTINGS)
    topics = [WatchedPublisher("p1", "drain/p1"), WatchedPublisher("p2", "drain/p2")]
    queued = WatchedPublisher("q1", "$queue/work")
    publishers = [*topics, queued]
    subscriber = MQTTSubscriber("drain-sub")
    holder = HoldingConsumer("holder", "/queue/work")
    consumer = StompConsumer("after", "/queue/work")
    try:
        gw.start()
        mqtt, stomp = gw.port("mqtt"), gw.port("stomp")
        assert subscriber.connect(mqtt) is False
        subscriber.subscribe("drain/#", qos=1)
        holder.connect(stomp)
        holder.subscribe()
        for publisher in publishers:
            assert publisher.connect(mqtt) is False
            publisher.start()
        assert wait_until(lambda: holder.held >= 50, WITHIN), "the holder got nothing"
        time.sleep(TRAFFIC)
        assert all(p.outstanding() > 0 or p.sent > 0 for p in publishers)
        assert gw.process is not None
        log_lines = gw.runs[0]
        assert gw.stop() == 0, gw.other_output[-20:]

        # What every client saw.
        for publisher in publishers:
            assert wait_until(lambda p=publisher: p.disconnect_reasons() != [], WITHIN)
            assert publisher.disconnect_reasons()[0] == SERVER_SHUTTING_DOWN, publisher.seen[-5:]
            assert publisher.pubacks_after_disconnect() == 0
            publisher.lost()
        assert wait_until(lambda: not holder.connected.is_set(), WITHIN)
        assert all("shutting down" in e.get("message", "") for e in holder.errors), holder.errors
        holder.drop()
        subscriber.lost()

        # The drain, step by step, in order.
        names = [str(e.get("event")) for e in log_lines]
        steps = [
            "gateway.signal",
            "gateway.stopping",
            "listener.draining",
            "listener.drained",
            "store.closed",
            "gateway.stopped",
        ]
        assert all(step in names for step in steps), names[-20:]
        assert [names.index(step) for step in steps] == sorted(names.index(s) for s in steps)
        drained = [e for e in log_lines if e.get("event") == "listener.drained"]
        assert {e["listener"] for e in drained} == {"mqtt:127.0.0.1:0", "stomp:127.0.0.1:0"}
        assert not any(e["deadline_reached"] for e in drained), drained
        assert gw.events("error") == []
        acked_before = {p.name: p.acked() for p in publishers}
        in_flight = sum(p.outstanding() for p in publishers)

        # Restart: sessions resume, paho resends what had no PUBACK.
        for publisher in publishers:
            publisher.stop()
        gw.start()
        mqtt, stomp = gw.port("mqtt"), gw.port("stomp")
        for publisher in publishers:
            assert publisher.connect(mqtt) is True, "the session did not survive"
        assert subscriber.connect(mqtt) is True
        consumer.connect(stomp)
        consumer.subscribe()

        def complete() -> bool:
            got = {(a.sender, a.seq) for a in [*subscriber.arrivals, *consumer.arrivals]}
            return all(p.outstanding() == 0 for p in publishers) and all(
                (p.name, seq) in got for p in publishers for seq in p.acked()
            )

        wait_until(complete, WITHIN)  # if not, the verdicts say what is missing
        wait_quiet(consumer.arrivals, 0.3, WITHIN)
        for client in [subscriber, *publishers]:
            client.close()
        consumer.disconnect()
        assert gw.stop() == 0
    finally:
        for publisher in publishers:
            publisher.stop()
        for client in [subscriber, *publishers]:
            client.close()
        holder.drop()
        consumer.drop()
        gw.close()

    report = f"in flight at SIGTERM: {in_flight}; sent: {[p.sent for p in publishers]}"
    for publisher in topics:
        verdict = check_delivery(
            publisher.sent, publisher.acked(), subscriber.arrivals, publisher.name
        )
        assert not verdict.lost, (
            f"{publisher.name}: acknowledged and lost {verdict.lost[:10]}; {report}"
        )
        assert acked_before[publisher.name] <= publisher.acked()
        assert publisher.outstanding() == 0
        # A publish stored twice (received again without the DUP flag of a redelivery):
        # its PUBACK had not reached the client before the DISCONNECT, so paho resent it.
        stored_twice = [
            a.seq
            for i, a in enumerate(subscriber.arrivals)
            if a.sender == publisher.name
            and not a.redelivered
            and any(b.sender == a.sender and b.seq == a.seq for b in subscriber.arrivals[:i])
        ]
        assert stored_twice == [], f"{publisher.name}: PUBACK after the DISCONNECT; {report}"
    verdict = check_delivery(queued.sent, queued.acked(), consumer.arrivals, queued.name)
    assert not verdict.lost, f"q1: acknowledged and lost {verdict.lost[:10]}; {report}"
    assert queued.outstanding() == 0
    assert all(p.refused() == 0 for p in publishers)
