"""Publish-to-buffer cost: one publish through the core into N subscribers' output buffers.

Each subscriber is the real MQTT session adapter whose ``send`` appends to a
bytearray, as the connection's outbox does, so the figure covers routing,
queueing and encoding but no socket. Run:

    .venv/bin/python bench/publish_cost.py [--subscribers 1 10 1000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.codecs.mqtt import MQTTConnection
from gateway.config import ListenerConfig
from gateway.core import Broker, Message, SubscribeOptions
from gateway.listeners.mqtt_session import MQTTSession

LISTENER = ListenerConfig(protocol="mqtt", bind="127.0.0.1:0")


def measure(subscribers: int, seconds: float, qos: int) -> dict[str, float]:
    broker = Broker()
    buffers = []
    for i in range(subscribers):
        buf = bytearray()
        buffers.append(buf)
        codec = MQTTConnection()
        adapter = MQTTSession(broker, codec, buf.extend, lambda _reason: None, config=LISTENER)
        session, _ = broker.open_session(f"sub-{i}", adapter)
        adapter.session = session
        # Half exact filters, half wildcards: both must route to every subscriber.
        broker.subscribe(
            session, "site/1/device/7/temp" if i % 2 else "site/+/device/#", SubscribeOptions(qos=0)
        )
    message_args = {"destination": "site/1/device/7/temp", "payload": b"x" * 64, "qos": qos}
    publishes = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            broker.publish(Message(**message_args))  # type: ignore[arg-type]
        publishes += 100
        for buf in buffers:
            buf.clear()
    elapsed = time.perf_counter() - start
    return {
        "subscribers": subscribers,
        "publishes_per_s": publishes / elapsed,
        "deliveries_per_s": publishes * subscribers / elapsed,
        "us_per_publish": elapsed / publishes * 1e6,
        "us_per_delivery": elapsed / (publishes * subscribers) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 10, 1000])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--qos", type=int, default=0)
    args = parser.parse_args()
    rows = [measure(n, args.seconds, args.qos) for n in args.subscribers]
    header = ("subscribers", "publish/s", "deliveries/s", "us/publish", "us/delivery")
    print(" ".join(f"{h:>12}" for h in header))
    for row in rows:
        print(
            f"{row['subscribers']:>12} {row['publishes_per_s']:>12,.0f}"
            f" {row['deliveries_per_s']:>12,.0f} {row['us_per_publish']:>12.2f}"
            f" {row['us_per_delivery']:>12.3f}"
        )
    for row in rows:
        print(json.dumps({"bench": "publish_cost", "qos": args.qos, **row}))


if __name__ == "__main__":
    main()
