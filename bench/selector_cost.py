"""Selector cost: evaluations per second of compiled selectors, what compiling costs, and
the throughput of a topic whose subscriptions have selectors.

Mode ``eval``: each case evaluates one compiled selector over a pool of distinct messages
(headers as the STOMP and MQTT listeners build them, a JSON payload), cycling through the
pool, so a JSON payload is parsed again for every message unless the case says "same
message" (the selectors of one fan-out share one parse).

Mode ``fanout``: messages from the same pool are published in-process through the Broker
to a topic with N subscriptions (100 by default), one per session, each with a different
selector (``site = 'sK'``, ``temp > K``, ``payload.temp > K``), or none for comparison; the
sessions' sinks only count deliveries (QoS 0), so the figures are routing, selector
evaluation and the core's delivery path, with no encoding or socket. Run:

    .venv/bin/python bench/selector_cost.py [--mode eval|fanout|both] [--seconds 2] [--rounds 5]
        [--cases simple complex ...] [--fanout-cases none site-eq ...] [--subscribers 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from gateway.core import Broker, CloseReason, Delivery, Headers, Message, SubscribeOptions
from gateway.core.selector import compile_selector

CASES = {
    "simple": "site = 'lyon'",
    "simple-field": "JMSPriority > 5",
    "simple-numeric-header": "temperature > 30",
    "complex": (
        "site IN ('lyon', 'paris', 'nice') AND (temperature BETWEEN 10 AND 40"
        " OR \"trace-id\" LIKE 'abc%') AND NOT redelivered AND JMSPriority >= 4"
        " AND (unit IS NULL OR unit <> 'F') AND destination LIKE 'site/%/temp'"
    ),
    "json": "payload.temperature > 30 AND payload.site = 'lyon'",
    "json-same-message": "payload.temperature > 30 AND payload.site = 'lyon'",
}
POOL = 1000
# Fan-out cases: the selector of subscription K (0 <= K < N), as a template; None: no selector.
FANOUT_CASES: dict[str, str | None] = {
    "none": None,
    "match-all": "site IS NOT NULL",  # every subscription matches: "none" plus the evaluations
    "site-eq": "site = 's{k}'",  # a message's site is one of N: one subscription matches
    "temp-gt": "temp > {k}",  # a string header as a number: about half of them match
    "json-gt": "payload.temp > {k}",  # one JSON parse per message, shared by the N selectors
}


def messages(count: int) -> list[Message]:
    sites = ("lyon", "paris", "nice", "brest")
    pool = []
    for i in range(count):
        site = sites[i % len(sites)]
        temperature = 5 + (i * 7) % 40
        headers = Headers(
            [
                ("site", site),
                ("temperature", str(temperature)),
                ("trace-id", f"abc-{i}" if i % 3 else f"xyz-{i}"),
                ("device", f"sensor-{i % 50}"),
                ("firmware", "1.4.2"),
            ]
        )
        body = {"site": site, "temperature": temperature + 0.5, "device": i % 50, "ok": True}
        pool.append(
            Message(
                destination=f"site/{i % 10}/temp",
                payload=json.dumps(body).encode(),
                headers=headers,
                priority=i % 10,
                qos=1,
                content_type="application/json",
            )
        )
    return pool


def measure(
    case: str, text: str, pool: list[Message], seconds: float, rounds: int
) -> dict[str, object]:
    start = time.perf_counter()
    for _ in range(100):
        compile_selector(text)
    compile_us = (time.perf_counter() - start) / 100 * 1e6
    matches = compile_selector(text).matches
    if case.endswith("same-message"):
        pool = [pool[0]] * len(pool)
    matched = sum(matches(message) for message in pool)
    rates = []
    for _ in range(rounds):
        evaluations = 0
        deadline = time.perf_counter() + seconds / rounds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            for message in pool:
                matches(message)
            evaluations += len(pool)
        rates.append(evaluations / (time.perf_counter() - start))
    median = statistics.median(rates)
    return {
        "case": case,
        "selector": text,
        "evaluations_per_s": round(median),
        "best_evaluations_per_s": round(max(rates)),
        "ns_per_evaluation": round(1e9 / median, 1),
        "matched": round(matched / len(pool), 3),
        "compile_us": round(compile_us, 1),
    }


class CountingSink:
    """A connection that takes everything at once and only counts (the core's Sink)."""

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, delivery: Delivery, qos: int) -> None:
        self.delivered += 1

    def writable(self) -> bool:
        return True

    def close(self, reason: CloseReason) -> None:
        pass


def fanout_messages(count: int, subscribers: int) -> list[Message]:
    """Messages to ``site/N/temp`` whose site is one of ``s0``..``s{subscribers-1}`` and
    whose temp (header and JSON field) is spread over 0..subscribers-1."""
    pool = []
    for i in range(count):
        site = f"s{i % subscribers}"
        temp = (i * 37) % subscribers
        headers = Headers([("site", site), ("temp", str(temp)), ("device", f"sensor-{i % 50}")])
        pool.append(
            Message(
                destination=f"site/{i % 10}/temp",
                payload=json.dumps({"site": site, "temp": temp, "ok": True}).encode(),
                headers=headers,
                content_type="application/json",
            )
        )
    return pool


def measure_fanout(
    case: str, subscribers: int, pool: list[Message], seconds: float, rounds: int
) -> dict[str, object]:
    template = FANOUT_CASES[case]
    broker = Broker()
    sinks = []
    for k in range(subscribers):
        sink = CountingSink()
        sinks.append(sink)
        session, _ = broker.open_session(f"sub-{k}", sink)
        selector = None if template is None else compile_selector(template.format(k=k))
        broker.subscribe(session, "site/+/temp", SubscribeOptions(qos=0, selector=selector))
    publish = broker.publish
    for message in pool:  # warm up: routes planned, code paths hot
        publish(message)
    message_rates, delivery_rates = [], []
    for _ in range(rounds):
        published = 0
        before = sum(sink.delivered for sink in sinks)
        deadline = time.perf_counter() + seconds / rounds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            for message in pool:
                publish(message)
            published += len(pool)
        elapsed = time.perf_counter() - start
        delivered = sum(sink.delivered for sink in sinks) - before
        message_rates.append(published / elapsed)
        delivery_rates.append(delivered / elapsed)
    median = statistics.median(message_rates)
    return {
        "mode": "fanout",
        "case": case,
        "selector": template,
        "subscribers": subscribers,
        "messages_per_s": round(median),
        "best_messages_per_s": round(max(message_rates)),
        "deliveries_per_s": round(statistics.median(delivery_rates)),
        "deliveries_per_message": round(statistics.median(delivery_rates) / median, 2),
        "us_per_message": round(1e6 / median, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("eval", "fanout", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=2.0, help="per case")
    parser.add_argument("--rounds", type=int, default=5, help="the median and best are reported")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument(
        "--fanout-cases", nargs="+", choices=sorted(FANOUT_CASES), default=list(FANOUT_CASES)
    )
    parser.add_argument("--subscribers", type=int, default=100, help="fan-out subscriptions")
    args = parser.parse_args()
    python = f"{platform.python_implementation()} {platform.python_version()}"
    if args.mode in ("eval", "both"):
        pool = messages(POOL)
        rows = [measure(case, CASES[case], pool, args.seconds, args.rounds) for case in args.cases]
        header = ("case", "evals/s", "best/s", "ns/eval", "matched", "compile us")
        print(f"{header[0]:>22} " + " ".join(f"{h:>12}" for h in header[1:]))
        for row in rows:
            print(
                f"{row['case']:>22} {row['evaluations_per_s']:>12,}"
                f" {row['best_evaluations_per_s']:>12,} {row['ns_per_evaluation']:>12}"
                f" {row['matched']:>12} {row['compile_us']:>12}"
            )
        for row in rows:
            print(json.dumps({"bench": "selector_cost", "python": python, **row}))
    if args.mode in ("fanout", "both"):
        pool = fanout_messages(POOL, args.subscribers)
        rows = [
            measure_fanout(case, args.subscribers, pool, args.seconds, args.rounds)
            for case in args.fanout_cases
        ]
        header = ("fan-out case", "msgs/s", "best msgs/s", "deliveries/s", "per msg", "us/msg")
        print(f"{header[0]:>22} " + " ".join(f"{h:>12}" for h in header[1:]))
        for row in rows:
            print(
                f"{row['case']:>22} {row['messages_per_s']:>12,}"
                f" {row['best_messages_per_s']:>12,} {row['deliveries_per_s']:>12,}"
                f" {row['deliveries_per_message']:>12} {row['us_per_message']:>12}"
            )
        for row in rows:
            print(json.dumps({"bench": "selector_cost", "python": python, **row}))


if __name__ == "__main__":
    main()
