"""Selector cost: evaluations per second of compiled selectors, and what compiling costs.

Each case evaluates one compiled selector over a pool of distinct messages (headers
as the STOMP and MQTT listeners build them, a JSON payload), cycling through the
pool, so a JSON payload is parsed again for every message unless the case says
"same message" (the selectors of one fan-out share one parse). Run:

    .venv/bin/python bench/selector_cost.py [--seconds 2] [--rounds 5] [--cases simple complex ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from gateway.core import Headers, Message
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case")
    parser.add_argument("--rounds", type=int, default=5, help="the median and best are reported")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    args = parser.parse_args()
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
    python = f"{platform.python_implementation()} {platform.python_version()}"
    for row in rows:
        print(json.dumps({"bench": "selector_cost", "python": python, **row}))


if __name__ == "__main__":
    main()
