"""Routing micro-benchmark: TopicTrie.match on an IoT topic space.

Topics look like ``site/{s}/device/{d}/{metric}`` (100 sites x 100 devices x 5
metrics). Measured, in matches per second:

(a) with N mixed subscriptions (exact, ``+`` and ``#`` filters), a stream of
    topics that each match a few of them: once with a small hot set of topics
    answered by the match cache, once with every match a cache miss;
(b) uncached, with a fixed handful of matching subscriptions plus 100 to
    10,000 subscriptions that match nothing, to show how the walk scales.

A miss is forced honestly: each timed pass matches distinct topics, and the
cache is invalidated between passes by adding and removing a subscription,
as a real subscribe/unsubscribe would. That invalidation is not timed.

Rerun: .venv/bin/python bench/routing.py [--subscriptions N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Sequence

from gateway.core.topics import TopicTrie

SITES = 100
DEVICES = 100
METRICS = ("temperature", "humidity", "battery", "rssi", "status")
SCALING = (100, 300, 1_000, 3_000, 10_000)

Trie = TopicTrie[int, int]


def topic(site: int, device: int, metric: str) -> str:
    return f"site/{site}/device/{device}/{metric}"


def mixed_filter(rng: random.Random) -> str:
    """One subscription of a plausible mix; at 10,000 a topic matches about 4 of them."""
    s, d, m = rng.randrange(SITES), rng.randrange(DEVICES), rng.choice(METRICS)
    kind = rng.random()
    if kind < 0.70:
        return topic(s, d, m)  # one sensor
    if kind < 0.90:
        return f"site/{s}/device/{d}/#"  # one device
    if kind < 0.98:
        return f"site/{s}/device/+/{m}"  # one metric across a site
    return f"site/{s}/#"  # a site dashboard


def idle_filter(rng: random.Random) -> str:
    """A subscription that shares every prefix with the published topics but matches none:
    published topics use devices below DEVICES // 2, these only the devices above."""
    s, m = rng.randrange(SITES), rng.choice(METRICS)
    d = rng.randrange(DEVICES // 2, DEVICES)
    return rng.choice(
        [
            topic(s, d, m),
            f"site/{s}/device/{d}/#",
            f"site/{s}/device/{d}/+",
            f"site/+/device/{d}/{m}",
        ]
    )


def build(filters: Sequence[str]) -> Trie:
    trie: Trie = TopicTrie()
    for key, topic_filter in enumerate(filters):
        trie.add(topic_filter, key, key)
    return trie


def invalidate(trie: Trie) -> None:
    trie.add("bench/probe", -1, -1)
    trie.remove("bench/probe", -1)


def measure(trie: Trie, topics: Sequence[str], seconds: float, *, cached: bool) -> dict[str, float]:
    """Matches ``topics`` in passes until ``seconds`` of matching have been timed."""
    match = trie.match
    if cached:
        for t in topics:  # warm the cache: every timed match is a hit
            match(t)
    passes = hits = 0
    elapsed = 0.0
    while elapsed < seconds:
        if not cached:
            invalidate(trie)  # every topic in the pass is distinct, so each match misses
        start = time.perf_counter()
        for t in topics:
            hits += len(match(t))
        elapsed += time.perf_counter() - start
        passes += 1
    matches = passes * len(topics)
    return {
        "matches": matches,
        "seconds": round(elapsed, 3),
        "matches_per_s": round(matches / elapsed),
        "us_per_match": round(elapsed / matches * 1e6, 3),
        "hits_per_match": round(hits / matches, 2),
    }


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    widths = [max(len(str(x)) for x in [c, *(r[i] for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[object]) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(columns), rule, *(line(r) for r in rows)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--subscriptions", type=int, default=10_000, help="for part (a)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per measurement")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    records: list[dict[str, object]] = []

    print(
        f"routing benchmark: python {platform.python_version()} on {platform.machine()}, "
        f"--subscriptions {args.subscriptions} --seconds {args.seconds} --seed {args.seed}"
    )
    print(f"topics: site/{{0..{SITES - 1}}}/device/{{0..{DEVICES - 1}}}/{{{','.join(METRICS)}}}")
    print()

    # (a) Mixed subscriptions: cache hits against misses.
    trie = build([mixed_filter(rng) for _ in range(args.subscriptions)])
    every_topic = [topic(s, d, m) for s in range(SITES) for d in range(DEVICES) for m in METRICS]
    rng.shuffle(every_topic)
    hot = every_topic[:1_000]
    rows: list[list[object]] = []
    for case, topics, cached in [("cached", hot, True), ("uncached", every_topic, False)]:
        result = measure(trie, topics, args.seconds, cached=cached)
        records.append({"part": "a", "case": case, "subscriptions": len(trie), **result})
        rows.append(
            [
                case,
                len(trie),
                len(topics),
                f"{result['matches_per_s']:,}",
                result["us_per_match"],
                result["hits_per_match"],
            ]
        )
    columns = ["case", "subs", "topics", "matches/s", "us/match", "hits/match"]
    print(table("(a) mixed subscriptions", columns, rows))
    print()

    # (b) A fixed matching set (2 hits per topic) plus N subscriptions that match nothing.
    matching = [f"site/{s}/#" for s in range(SITES)]
    matching += [f"site/+/device/+/{m}" for m in METRICS]
    published = [t for t in every_topic if int(t.split("/")[3]) < DEVICES // 2]
    rows = []
    for n in SCALING:
        trie = build(matching + [idle_filter(rng) for _ in range(n)])
        result = measure(trie, published, args.seconds, cached=False)
        records.append({"part": "b", "case": "uncached", "idle_subscriptions": n, **result})
        rate = f"{result['matches_per_s']:,}"
        rows.append([n, len(trie), rate, result["us_per_match"], result["hits_per_match"]])
    columns = ["idle subs", "total subs", "matches/s", "us/match", "hits/match"]
    print(table(f"(b) uncached, {len(published)} distinct topics", columns, rows))
    print()

    for record in records:
        print(json.dumps({"bench": "routing", **record}))


if __name__ == "__main__":
    main()
