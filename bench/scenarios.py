"""Scenarios: what load each run puts on a broker, and what is measured.

A *scenario* is a kind of load (``fanin``, ``idle``, ...) with default parameters; a
*preset* is a scenario with some parameters fixed (``idle-20k``, ``wildcard-100``), the
unit that ``compare`` runs and reports. Every run returns one flat dict (one JSON line).

Throughput runs: workers connect and subscribe, then all start at one instant ``T0``;
after ``warmup`` seconds the broker's CPU time, the counters and the clock are read, and
again ``seconds`` later: msg/s and messages per broker CPU second come from that window.
Publishers then stop; subscribers get until everything arrived, or nothing moved for a
while (bounded by ``drain``), and loss is counted over the whole run.

Durability runs (``durable-qos1``, ``durable-qos1-online``; :func:`run_durable`): a QoS 1
publisher whose every message carries a sequence number and whose every PUBLISH is timed
to its PUBACK, and a persistent-session subscriber (clean session 0) that is away while
the publisher runs (or online and acknowledging); loss is what was acknowledged to the
publisher and never reached the subscriber.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import loadgen as lg
from .systems import (
    MAX_QUEUED,
    MAX_QUEUED_DURABLE,
    Running,
    machine_busy_seconds,
    nofile_limit,
    process_cpu_seconds,
)

MB = 1024 * 1024


@dataclass(frozen=True)
class Params:
    seconds: float = 5.0
    warmup: float = 1.0
    drain: float = 60.0  # longest wait for stragglers after publishing stops
    publishers: int = 1
    subscribers: int = 1
    qos: int = 0
    payload: int = 64
    window: int = 5000
    open_loop: bool = False
    rate: float = 0.0
    subscriptions: int = 0  # wildcard: total subscriptions
    sub_connections: int = 4  # wildcard: subscriber connections they are spread over
    connections: int = 0  # idle
    procs: int = 2  # idle: processes holding the connections
    prefetch: int = 0  # stomp-queue: the consumer's prefetch-count (unacked messages)
    heartbeat: int = 0  # STOMP: the clients' heart-beat offer (cx, ms); 0: heart-beat:0,0
    lead: int = 0  # durable-qos1-online: most messages ahead of the subscriber (0: window)

    def relevant(self, scenario: str) -> dict[str, Any]:
        keep = {
            "idle": ("connections", "procs"),
            "latency": ("seconds", "warmup", "rate", "payload", "qos"),
        }.get(scenario)
        data = asdict(self)
        if keep is None:
            drop = {"connections", "procs", "rate"}
            if scenario != "wildcard":
                drop |= {"subscriptions", "sub_connections"}
            if scenario != "stomp-queue":
                drop.add("prefetch")
            if scenario not in STOMP_SCENARIOS or not self.heartbeat:
                drop.add("heartbeat")
            if scenario in STOMP_ONLY:
                drop.add("qos")
            if scenario not in DURABLE_SCENARIOS:
                drop.add("lead")
            return {k: v for k, v in data.items() if k not in drop}
        return {k: data[k] for k in keep}


SCENARIOS: dict[str, dict[str, Any]] = {
    "fanin": {"publishers": 4, "subscribers": 1, "qos": 0, "window": 5000},
    "fanout": {"publishers": 1, "subscribers": 10, "qos": 0, "window": 5000},
    "qos1": {"publishers": 1, "subscribers": 1, "qos": 1, "window": 1000},
    "qos2": {"publishers": 1, "subscribers": 1, "qos": 2, "window": 100},
    "latency": {"publishers": 1, "subscribers": 1, "qos": 0, "rate": 1000.0},
    "idle": {"connections": 5000, "procs": 2},
    "wildcard": {"subscriptions": 10_000, "sub_connections": 4, "publishers": 1, "window": 5000},
    "flood": {"qos": 0, "open_loop": True},
    "stomp-fanin": {"publishers": 4, "subscribers": 1, "window": 5000},
    "stomp-queue": {"publishers": 1, "subscribers": 1, "window": 1000, "prefetch": 100},
    "mqtt-to-stomp": {"publishers": 4, "subscribers": 1, "qos": 0, "window": 5000},
    "durable-qos1": {"publishers": 1, "subscribers": 1, "qos": 1, "window": 100},
    "durable-qos1-online": {
        "publishers": 1,
        "subscribers": 1,
        "qos": 1,
        "window": 100,
        "lead": 1000,
    },
}
# STOMP on both ends; MQTT publishers to a STOMP subscriber (the gateway only).
STOMP_ONLY = ("stomp-fanin", "stomp-queue")
STOMP_SCENARIOS = (*STOMP_ONLY, "mqtt-to-stomp")
# The cost of durability: a persistent-session subscriber, away (or online), QoS 1.
DURABLE_SCENARIOS = ("durable-qos1", "durable-qos1-online")

# The rows of the comparison: preset name -> (scenario, fixed parameters).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "fanin": ("fanin", {}),
    "fanout": ("fanout", {}),
    "qos1": ("qos1", {}),
    "qos2": ("qos2", {}),
    "latency": ("latency", {}),
    "wildcard-100": ("wildcard", {"subscriptions": 100}),
    "wildcard-10k": ("wildcard", {"subscriptions": 10_000}),
    "flood-qos0": ("flood", {"qos": 0}),
    "flood-qos1": ("flood", {"qos": 1}),
    "idle-5k": ("idle", {"connections": 5000}),
    "idle-20k": ("idle", {"connections": 20_000}),
    "stomp-fanin": ("stomp-fanin", {}),
    "stomp-queue": ("stomp-queue", {}),
    # At most COILMQ_READ bytes of frames in flight, for every system alike: coilmq reads
    # 4,096 bytes at a time and its parser fails on a frame split between two reads, so
    # this is the most it can take (35 x 114-byte SEND, 23 x 174-byte SEND to the queue).
    # The queue's consumer has one message unacknowledged at a time (coilmq's ack:client),
    # so its ACKs never pile up either.
    "stomp-fanin-4k": ("stomp-fanin", {"window": 35}),
    "stomp-queue-4k": ("stomp-queue", {"window": 23, "prefetch": 1}),
    "mqtt-to-stomp": ("mqtt-to-stomp", {}),
    "durable-qos1": ("durable-qos1", {}),
    # One publish at a time: the round trip alone (in sync mode, one commit each).
    "durable-qos1-w1": ("durable-qos1", {"window": 1}),
    "durable-qos1-online": ("durable-qos1-online", {}),
}
COILMQ_READ = 4096
MQTT_PRESETS = [
    p for p, (s, _) in PRESETS.items() if s not in STOMP_SCENARIOS and s not in DURABLE_SCENARIOS
]
STOMP_PRESETS = [p for p, (s, _) in PRESETS.items() if s in STOMP_SCENARIOS]
DURABLE_PRESETS = [p for p, (s, _) in PRESETS.items() if s in DURABLE_SCENARIOS]


STOMP_ONLY_SYSTEMS = ("rabbitmq-stomp", "coilmq")


def supports(scenario: str, system: str) -> bool:
    """Whether ``system`` runs ``scenario``: STOMP ones on the gateway, RabbitMQ's STOMP
    plugin and coilmq (mqtt-to-stomp on the gateway only), MQTT ones everywhere but on
    the STOMP-only brokers."""
    if system == "external":
        return True
    gateway = system.startswith("gateway")
    if scenario == "mqtt-to-stomp":
        return gateway
    if scenario in STOMP_ONLY:
        return gateway or system in STOMP_ONLY_SYSTEMS
    return system not in STOMP_ONLY_SYSTEMS


def max_queued(scenario: str) -> int:
    """The queue limit every broker gets for ``scenario``: the durability scenarios keep
    everything published while their subscriber is away."""
    return MAX_QUEUED_DURABLE if scenario in DURABLE_SCENARIOS else MAX_QUEUED


def params_for(scenario: str, fixed: dict[str, Any], overrides: dict[str, Any]) -> Params:
    values = {**SCENARIOS[scenario], **fixed, **overrides}
    if scenario == "flood":
        qos = values.get("qos", 0)
        values.setdefault("publishers", 4 if qos == 0 else 1)
        values.setdefault("subscribers", 1)
        values.setdefault("window", 60_000 if qos else 5000)
    known = {f.name for f in fields(Params)}
    return replace(Params(), **{k: v for k, v in values.items() if k in known})


def expand(names: Sequence[str]) -> list[str]:
    """Preset names from scenario or preset names (a scenario means all its presets)."""
    out: list[str] = []
    for name in names or MQTT_PRESETS:
        matches = [name] if name in PRESETS else [k for k, v in PRESETS.items() if v[0] == name]
        if not matches:
            raise SystemExit(f"unknown scenario or preset {name!r}; known: {', '.join(PRESETS)}")
        out += [m for m in matches if m not in out]
    return out


# ---------------------------------------------------------------------------- runs


def percentile(sorted_values: Sequence[int], q: float) -> float:
    idx = max(0, math.ceil(q * len(sorted_values)) - 1)
    return float(sorted_values[idx])


def _loadgen_cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(pid, reaped_children=False)
    return total


def _sleep_until(t_ns: int, group: lg.WorkerGroup, broker: Running) -> None:
    while True:
        left = (t_ns - lg.now_ns()) / 1e9
        if left <= 0:
            return
        if not broker.alive():
            raise lg.WorkerError(f"{broker.name} exited during the run:\n{broker.log_tail()}")
        failed = [i for i in range(len(group.procs)) if group.shared.state[i] == -1]
        if failed:
            group.collect(failed, 2)
            raise lg.WorkerError(f"worker failed: {group.results[failed[0]].get('error')}")
        time.sleep(min(left, 0.1))


def wait_drained(
    count: Callable[[], int], target: int, seconds: float, quiet: float
) -> tuple[int | None, float]:
    """Poll ``count`` until it reaches ``target``, stops moving for ``quiet`` seconds, or
    ``seconds`` have passed: when it last moved (lg.now_ns(), None if it never did) and the
    seconds waited, rounded to hundredths."""
    started = time.monotonic()
    last, moved, moved_ns = count(), started, None
    end = started + seconds
    while last < target and time.monotonic() < end:
        time.sleep(0.05)
        now = count()
        if now != last:
            last, moved, moved_ns = now, time.monotonic(), lg.now_ns()
        elif time.monotonic() - moved > quiet:
            break
    return moved_ns, round(seconds - max(0.0, end - time.monotonic()), 2)


def topic_space(p: Params) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Wildcard: the published topics and, per subscriber connection, its filters.

    Topics are ``site/SS/device/DD/METRIC``. The stream publishes the temperature of
    devices 00-09 of sites 00-09; each of the first (up to) 4 connections holds one
    filter matching all of those, and the remaining subscriptions (up to
    ``subscriptions``) share prefixes with the stream but match none of it: devices
    50-99, or metrics other than temperature."""
    published = tuple(
        f"site/{s:02d}/device/{d:02d}/temperature" for s in range(10) for d in range(10)
    )
    matching = ["site/+/device/+/temperature", "site/#", "+/+/device/#", "site/+/+/+/temperature"]
    n_conn = max(1, p.sub_connections)
    per_conn: list[list[str]] = [[] for _ in range(n_conn)]
    for i, f in enumerate(matching[:n_conn]):
        per_conn[i].append(f)
    rng = random.Random(1)
    metrics = ("humidity", "battery", "rssi", "status")
    seen: set[str] = set()
    i = 0
    while len(seen) < max(0, p.subscriptions - min(len(matching), n_conn)):
        s, d, m = rng.randrange(100), rng.randrange(50, 100), rng.choice(metrics)
        f = rng.choice(
            (
                f"site/{s:02d}/device/{d:02d}/{m}",
                f"site/{s:02d}/device/{d:02d}/temperature",
                f"site/{s:02d}/device/{d:02d}/#",
                f"site/{s:02d}/device/{d:02d}/+",
                f"site/{s:02d}/device/+/{m}",
                f"site/{s:02d}/+/+/{m}",
                f"site/+/device/{d:02d}/#",
            )
        )
        if f not in seen:
            seen.add(f)
            per_conn[i % n_conn].append(f)
            i += 1
    return published, [tuple(fs) for fs in per_conn]


def stomp_specs(scenario: str, p: Params, broker: Running) -> tuple[list[lg.Spec], int]:
    """STOMP runs: stomp-fanin (SEND to /topic/bench), stomp-queue (a queue of this run,
    client-individual acks) and mqtt-to-stomp (MQTT QoS 0 to a/b, STOMP /topic/a.b).

    Every broker gets the same frames except where it cannot take them: the CONNECT
    ``host`` is ``broker.stomp_host`` (``/`` but for coilmq, which wants its FQDN);
    coilmq has no ``client-individual`` mode (it delivers those as ``auto``), so its
    consumer subscribes with ``ack:client``, its one acknowledged mode (one message
    outstanding at a time, the same as ``client-individual`` with ``prefetch-count:1``),
    and, as its MESSAGE frames carry no ``ack`` header, ACKs by ``message-id`` (see
    :func:`bench.stompwire.ack_message_id`)."""
    host, port = broker.host, broker.stomp_port
    stomp: dict[str, Any] = {"stomp_host": broker.stomp_host, "heartbeat": p.heartbeat}
    if port is None:
        raise lg.WorkerError(f"{broker.name} has no STOMP listener")
    extra: tuple[tuple[str, str], ...] = ()
    if scenario == "stomp-queue":
        dest = f"/queue/bench-{uuid.uuid4().hex[:12]}"
        extra = (("durable", "false"), ("auto-delete", "true"), ("exclusive", "false"))
        ack, prefetch = "client-individual", p.prefetch
        if broker.name == "coilmq":
            ack = "client"
    else:
        dest = "/topic/a.b" if scenario == "mqtt-to-stomp" else "/topic/bench"
        ack, prefetch = "auto", 0
    subs: list[lg.Spec] = [
        lg.SubSpec(
            host,
            port,
            f"bench-sub-{i}",
            (dest,),
            0,
            "first",
            p.warmup,
            p.seconds,
            proto="stomp",
            ack=ack,
            prefetch=prefetch,
            stomp_headers=extra,
            ack_by="message-id" if broker.name == "coilmq" else "ack",
            **stomp,
        )
        for i in range(p.subscribers)
    ]
    copies = 1 if scenario == "stomp-queue" else p.subscribers
    common: dict[str, Any] = dict(
        payload_size=p.payload, window=p.window, copies=copies, warmup=p.warmup, seconds=p.seconds
    )
    pubs: list[lg.Spec] = [
        lg.PubSpec(
            host,
            port,
            f"bench-pub-{i}",
            (dest,),
            proto="stomp",
            stomp_headers=extra,
            **stomp,
            **common,
        )
        if scenario != "mqtt-to-stomp"
        else lg.PubSpec(broker.host, broker.port, f"bench-pub-{i}", ("a/b",), qos=0, **common)
        for i in range(p.publishers)
    ]
    return [*subs, *pubs], copies


def flow_specs(scenario: str, p: Params, host: str, port: int) -> tuple[list[lg.Spec], int]:
    """The workers of a throughput/latency run and the copies each publish should make."""
    topic = "bench/topic"
    sample = "all" if scenario == "latency" else "first"
    if scenario == "wildcard":
        topics, per_conn = topic_space(p)
        subs: list[lg.Spec] = [
            lg.SubSpec(host, port, f"bench-sub-{i}", filters, 0, sample, p.warmup, p.seconds)
            for i, filters in enumerate(per_conn)
        ]
        copies = min(4, len(per_conn))
    else:
        topics = (topic,)
        subs = [
            lg.SubSpec(host, port, f"bench-sub-{i}", (topic,), p.qos, sample, p.warmup, p.seconds)
            for i in range(p.subscribers)
        ]
        copies = p.subscribers
    pubs: list[lg.Spec] = [
        lg.PubSpec(
            host,
            port,
            f"bench-pub-{i}",
            topics,
            qos=p.qos,
            payload_size=p.payload,
            window=p.window,
            open_loop=p.open_loop,
            rate=p.rate / max(1, p.publishers),
            copies=copies,
            warmup=p.warmup,
            seconds=p.seconds,
        )
        for i in range(p.publishers)
    ]
    return [*subs, *pubs], copies


def run_flow(scenario: str, p: Params, broker: Running) -> dict[str, Any]:
    if scenario in STOMP_SCENARIOS:
        specs, copies = stomp_specs(scenario, p, broker)
    else:
        specs, copies = flow_specs(scenario, p, broker.host, broker.port)
    hard = 180 + p.warmup + p.seconds + p.drain
    out: dict[str, Any] = {}
    with lg.WorkerGroup(specs, hard) as g:
        pubs, subs = g.shared.pub_slots, g.shared.sub_slots
        g.wait_state(1, timeout=150)
        out["rss_start_mb"] = _mb(broker.rss_bytes())
        cpu_go = broker.cpu_seconds()
        t0 = g.go()
        _sleep_until(t0 + int(p.warmup * 1e9), g, broker)
        a = (
            lg.now_ns(),
            broker.cpu_seconds(),
            g.counter(pubs),
            g.counter(subs),
            _loadgen_cpu(g.pids),
            machine_busy_seconds(),
        )
        _sleep_until(t0 + int((p.warmup + p.seconds) * 1e9), g, broker)
        b = (
            lg.now_ns(),
            broker.cpu_seconds(),
            g.counter(pubs),
            g.counter(subs),
            _loadgen_cpu(g.pids),
            machine_busy_seconds(),
        )
        out["rss_mb"] = _mb(broker.rss_bytes())
        g.wait_state(2, timeout=30, slots=pubs)  # publishers flushed: their counts are final
        sent = g.counter(pubs)
        expected = sent * copies
        moved_ns, out["drain_s"] = wait_drained(
            lambda: g.counter(subs), expected, p.drain, quiet=2.0
        )
        t_last = b[0] if moved_ns is None else moved_ns
        cpu_end = broker.cpu_seconds()
        g.set(lg.STOP)
        sub_results = g.collect(subs, timeout=20)
        pub_results = g.collect(pubs, timeout=20)
    received = sum(int(r.get("received") or 0) for r in sub_results)
    window_s = (b[0] - a[0]) / 1e9
    delivered = b[3] - a[3]
    cpu = None if a[1] is None or b[1] is None else b[1] - a[1]
    errors = [r["error"] for r in [*pub_results, *sub_results] if r.get("error")]
    samples = sorted(s for r in sub_results for s in r.get("samples") or [])
    out.update(
        window_s=round(window_s, 3),
        copies=copies,
        sent=sent,
        expected=expected,
        received=received,
        lost=expected - received,
        loss_pct=round(100.0 * (expected - received) / expected, 3) if expected else None,
        msgs_per_s=round(delivered / window_s, 1),
        publishes_per_s=round((b[2] - a[2]) / window_s, 1),
        broker_cpu_s=None if cpu is None else round(cpu, 3),
        broker_cpu_pct=None if cpu is None else round(100 * cpu / window_s, 1),
        msgs_per_cpu_s=round(delivered / cpu, 1) if cpu else None,
        loadgen_cpu_s=round(b[4] - a[4], 3),
        # Everything else the machine did meanwhile (other people's work on a shared box,
        # the harness itself), in % of one core: a noise indicator, not part of any figure.
        other_cpu_pct=round(100 * max(0.0, b[5] - a[5] - cpu - (b[4] - a[4])) / window_s, 1)
        if cpu is not None and a[5] is not None and b[5] is not None
        else None,
        # Whole run, T0 to the last delivery (drain included): what open loop is judged by.
        overall_msgs_per_s=round(received / max(1e-9, (t_last - t0) / 1e9), 1),
        overall_msgs_per_cpu_s=round(received / (cpu_end - cpu_go), 1)
        if cpu_go is not None and cpu_end is not None and cpu_end > cpu_go
        else None,
        lat_samples=len(samples),
        lat_p50_ms=_ms(percentile(samples, 0.5)) if samples else None,
        lat_p99_ms=_ms(percentile(samples, 0.99)) if samples else None,
        lat_p999_ms=_ms(percentile(samples, 0.999)) if samples else None,
        acked=sum(int(r.get("acked") or 0) for r in pub_results) if p.qos else None,
        written_off=sum(int(r.get("written_off") or 0) for r in pub_results),
        closed_by_broker=sum(1 for r in sub_results if r.get("closed_by_broker")),
    )
    if scenario in STOMP_SCENARIOS:  # EOLs the STOMP clients sent (0 with heart-beat:0,0)
        out["heartbeats_sent"] = sum(
            int(r.get("heartbeats_sent") or 0) for r in [*pub_results, *sub_results]
        )
    if out["closed_by_broker"]:
        errors.append(f"the broker closed {out['closed_by_broker']} subscriber connection(s)")
    if errors:
        out["error"] = "; ".join(sorted(set(errors)))
    if cpu == 0:
        out["error"] = (out.get("error", "") + " broker CPU not measurable").strip()
    return out


def run_idle(p: Params, broker: Running) -> dict[str, Any]:
    n, procs = p.connections, max(1, p.procs)
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    # Sources 127.0.W.2-5 (the destination is always the broker's own address).
    loopback = broker.host.startswith("127.")
    specs: list[lg.Spec] = [
        lg.IdleSpec(
            broker.host,
            broker.port,
            f"bench-idle-{i}",
            c,
            sources=tuple(f"127.0.{i + 1}.{k}" for k in range(2, 6)) if loopback else (),
        )
        for i, c in enumerate(shares)
    ]
    budget = max(120.0, n / 50)
    with lg.WorkerGroup(specs, budget + 120) as g:
        g.wait_state(1, timeout=60)
        time.sleep(0.5)
        rss0, cpu0 = broker.rss_bytes(), broker.cpu_seconds()
        t0 = g.go(0.1)
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if all(g.shared.state[i] in (2, -1) for i in range(procs)):
                break
            if not broker.alive():
                break
            time.sleep(0.05)
        t_done = lg.now_ns()
        cpu1 = broker.cpu_seconds()
        time.sleep(2.0)  # let the broker settle before reading its memory
        rss1 = broker.rss_bytes() if broker.alive() else None
        g.set(lg.CHECK)
        results = g.collect(range(procs), timeout=60)
    opened = sum(int(r.get("opened") or 0) for r in results)
    held = sum(int(r.get("held") or 0) for r in results) if broker.alive() else 0
    connect_s = max([float(r.get("connect_s") or 0) for r in results] + [1e-9])
    errors = sorted({r["error"] for r in results if r.get("error")})
    out: dict[str, Any] = {
        "connections": n,
        "opened": opened,
        "held": held,
        "connect_s": round(connect_s, 3),
        "connects_per_s": round(opened / connect_s, 1) if opened else 0.0,
        "wall_connect_s": round((t_done - t0) / 1e9, 3),
        "rss_before_mb": _mb(rss0),
        "rss_mb": _mb(rss1),
        "rss_per_conn_kib": round((rss1 - rss0) / held / 1024, 2)
        if held and rss1 and rss0
        else None,
        "broker_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
        "cpu_us_per_connect": round((cpu1 - cpu0) / opened * 1e6, 1)
        if opened and cpu0 is not None and cpu1 is not None
        else None,
        "loadgen_nofile": min(int(r.get("nofile") or 0) for r in results),
        "broker_nofile": nofile_limit(broker.pid) if broker.pid else None,
    }
    if not broker.alive():
        errors.append(f"{broker.name} exited:\n{broker.log_tail()}")
    limit = out["broker_nofile"]
    if held < n and limit is not None and held >= limit - 64:
        errors.insert(0, f"held {held} of {n}: the broker's open-file limit is {limit}")
    if errors or held < n:
        out["error"] = "; ".join(errors) or f"broker holds {held} of {n}"
    return out


def run_one(scenario: str, p: Params, broker: Running) -> dict[str, Any]:
    if scenario == "idle":
        return run_idle(p, broker)
    if scenario in DURABLE_SCENARIOS:
        return run_durable(scenario, p, broker)
    return run_flow(scenario, p, broker)


def durable_specs(scenario: str, p: Params, host: str, port: int) -> list[lg.Spec]:
    """A persistent-session QoS 1 subscriber per ``subscribers`` (MQTT 3.1.1 clean session
    0, a client id of this run), away during publishing in ``durable-qos1``; tracked QoS 1
    publishers, bounded by ``window`` unacknowledged publishes (and, online, by ``lead``
    messages not yet received)."""
    topic = "bench/durable"
    run_id = uuid.uuid4().hex[:8]
    offline = scenario == "durable-qos1"
    subs: list[lg.Spec] = [
        lg.SubSpec(
            host,
            port,
            f"bench-durable-{run_id}-sub-{i}",
            (topic,),
            1,
            "none",
            p.warmup,
            p.seconds,
            clean=False,
            offline=offline,
            seqs=True,
            discard=True,
        )
        for i in range(p.subscribers)
    ]
    pubs: list[lg.Spec] = [
        lg.PubSpec(
            host,
            port,
            f"bench-durable-{run_id}-pub-{i}",
            (topic,),
            qos=1,
            payload_size=p.payload,
            window=p.window,
            open_loop=offline,
            copies=p.subscribers,
            warmup=p.warmup,
            seconds=p.seconds,
            track=True,
            pub_no=i,
            lead=p.lead,
        )
        for i in range(p.publishers)
    ]
    return [*subs, *pubs]


def _popcount_missing(acked: dict[int, bytes], received: dict[int, bytes]) -> int:
    """How many sequence numbers are set in ``acked`` and not in ``received``."""
    missing = 0
    for owner, bits in acked.items():
        a = int.from_bytes(bits, "little")
        r = int.from_bytes(received.get(owner, b""), "little")
        missing += (a & ~r).bit_count()
    return missing


def _popcount(bits: dict[int, bytes]) -> int:
    return sum(int.from_bytes(b, "little").bit_count() for b in bits.values())


def _dir_mb(path: Path | None) -> float | None:
    if path is None or not path.is_dir():
        return None
    total = 0
    for f in path.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file():
                total += f.stat().st_size
    return _mb(total)


def run_durable(scenario: str, p: Params, broker: Running) -> dict[str, Any]:
    """One durability run. Publishing: ``warmup`` + ``seconds``, measured over the last
    ``seconds``: PUBACKed publishes per second and per broker CPU second, publish-to-PUBACK
    percentiles (publishes written in the window). Publishers then wait for their last
    PUBACKs. ``durable-qos1``: only then does the subscriber reconnect to its session and
    drain it (measured too). Loss: acknowledged sequence numbers a subscriber never got."""
    specs = durable_specs(scenario, p, broker.host, broker.port)
    offline = scenario == "durable-qos1"
    hard = 180 + p.warmup + p.seconds + p.drain + lg.ACK_WAIT_NS / 1e9
    out: dict[str, Any] = {}
    data_dir = broker.workdir / "data" if broker.workdir else None
    with lg.WorkerGroup(specs, hard) as g:
        pubs, subs = g.shared.pub_slots, g.shared.sub_slots
        g.wait_state(1, timeout=150)
        out["rss_start_mb"] = _mb(broker.rss_bytes())
        cpu_go = broker.cpu_seconds()
        t0 = g.go()
        _sleep_until(t0 + int(p.warmup * 1e9), g, broker)

        def snap() -> tuple[Any, ...]:
            return (
                lg.now_ns(),
                broker.cpu_seconds(),
                g.counter(pubs),
                sum(int(g.shared.acked[i]) for i in pubs),
                g.counter(subs),
                _loadgen_cpu(g.pids),
                machine_busy_seconds(),
            )

        a = snap()
        _sleep_until(t0 + int((p.warmup + p.seconds) * 1e9), g, broker)
        b = snap()
        g.wait_state(2, timeout=30 + lg.ACK_WAIT_NS / 1e9, slots=pubs)  # last PUBACKs in
        out["rss_mb"] = _mb(broker.rss_bytes())
        out["store_mb"] = _dir_mb(data_dir)
        sent = g.counter(pubs)
        acked = sum(int(g.shared.acked[i]) for i in pubs)
        resumed_at = lg.now_ns()
        cpu_resume = broker.cpu_seconds()
        if offline:
            g.set(lg.RESUME)
            g.wait_state(3, timeout=60, slots=subs)
            resumed_at, cpu_resume = lg.now_ns(), broker.cpu_seconds()
        expected = sent * len(subs)
        _, out["drain_s"] = wait_drained(lambda: g.counter(subs), expected, p.drain, quiet=2.0)
        cpu_end = broker.cpu_seconds()
        g.set(lg.STOP)
        sub_results = g.collect(subs, timeout=20)
        pub_results = g.collect(pubs, timeout=20 + lg.ACK_WAIT_NS / 1e9)
    window_s = (b[0] - a[0]) / 1e9
    cpu = None if a[1] is None or b[1] is None else b[1] - a[1]
    acked_window = b[3] - a[3]
    errors = [r["error"] for r in [*pub_results, *sub_results] if r.get("error")]
    acked_bits = [r.get("acked_bits") or {} for r in pub_results]
    acked_all: dict[int, bytes] = {k: v for bits in acked_bits for k, v in bits.items()}
    acked_final = sum(int(r.get("acked") or 0) for r in pub_results)
    received = sum(int(r.get("received") or 0) for r in sub_results)
    distinct = sum(_popcount(r.get("seq_bits") or {}) for r in sub_results)
    lost = sum(_popcount_missing(acked_all, r.get("seq_bits") or {}) for r in sub_results)
    expected_acked = acked_final * len(sub_results)
    samples = sorted(s for r in pub_results for s in r.get("ack_samples") or [])
    last_ns = max((r.get("last_ns") or 0 for r in sub_results), default=0)
    drain_cpu = None if cpu_end is None or cpu_resume is None else cpu_end - cpu_resume
    drain_wall = (last_ns - resumed_at) / 1e9 if last_ns > resumed_at else None
    out.update(
        window_s=round(window_s, 3),
        copies=len(sub_results),
        sent=sent,
        acked=acked_final,
        acked_at_resume=acked,
        expected=expected_acked,
        received=received,
        received_distinct=distinct,
        duplicates=received - distinct,
        lost=lost,
        loss_pct=round(100.0 * lost / expected_acked, 3) if expected_acked else None,
        # Sent and never acknowledged (the broker owes nothing for those).
        unacked=sum(int(r.get("sent") or 0) for r in pub_results) - acked_final,
        msgs_per_s=round(acked_window / window_s, 1),
        publishes_per_s=round((b[2] - a[2]) / window_s, 1),
        delivered_per_s=round((b[4] - a[4]) / window_s, 1),
        broker_cpu_s=None if cpu is None else round(cpu, 3),
        broker_cpu_pct=None if cpu is None else round(100 * cpu / window_s, 1),
        msgs_per_cpu_s=round(acked_window / cpu, 1) if cpu else None,
        loadgen_cpu_s=round(b[5] - a[5], 3),
        other_cpu_pct=round(100 * max(0.0, b[6] - a[6] - cpu - (b[5] - a[5])) / window_s, 1)
        if cpu is not None and a[6] is not None and b[6] is not None
        else None,
        # Every acknowledged message stored and delivered: the whole run's broker CPU.
        overall_msgs_per_cpu_s=round(received / (cpu_end - cpu_go), 1)
        if cpu_go is not None and cpu_end is not None and cpu_end > cpu_go
        else None,
        puback_samples=len(samples),
        puback_p50_ms=_ms(percentile(samples, 0.5)) if samples else None,
        puback_p99_ms=_ms(percentile(samples, 0.99)) if samples else None,
        puback_p999_ms=_ms(percentile(samples, 0.999)) if samples else None,
        unexpected_frames=sum(int(r.get("unexpected") or 0) for r in pub_results),
        written_off=sum(int(r.get("written_off") or 0) for r in pub_results),
        closed_by_broker=sum(1 for r in sub_results if r.get("closed_by_broker")),
    )
    if offline:
        present = [r.get("session_present") for r in sub_results]
        out.update(
            session_present=all(present),
            drain_msgs_per_s=round(received / drain_wall, 1) if drain_wall else None,
            drain_msgs_per_cpu_s=round(received / drain_cpu, 1) if drain_cpu else None,
        )
        if not all(present):
            errors.append("the subscriber's session was not resumed (session present 0)")
    if out["closed_by_broker"]:
        errors.append(f"the broker closed {out['closed_by_broker']} subscriber connection(s)")
    if errors:
        out["error"] = "; ".join(sorted(set(errors)))
    if cpu == 0:
        out["error"] = (out.get("error", "") + " broker CPU not measurable").strip()
    return out


# ---------------------------------------------------------------------------- summaries

SUMMARY_FIELDS = (
    "msgs_per_s",
    "publishes_per_s",
    "msgs_per_cpu_s",
    "overall_msgs_per_s",
    "overall_msgs_per_cpu_s",
    "broker_cpu_pct",
    "loss_pct",
    "rss_mb",
    "lat_p50_ms",
    "lat_p99_ms",
    "lat_p999_ms",
    "loadgen_cpu_s",
    "other_cpu_pct",
    "drain_s",
    "held",
    "connects_per_s",
    "rss_per_conn_kib",
    "cpu_us_per_connect",
    "rss_before_mb",
    # durability
    "puback_p50_ms",
    "puback_p99_ms",
    "puback_p999_ms",
    "delivered_per_s",
    "drain_msgs_per_s",
    "drain_msgs_per_cpu_s",
    "store_mb",
    "lost",
    "duplicates",
)


def median_record(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures over the runs (all runs, failed ones too, so a
    broker that loses everything shows it); ``reps``/``failed`` say how many."""
    first = runs[0]
    rec: dict[str, Any] = {
        "kind": "median",
        **{k: first[k] for k in ("bench", "preset", "scenario", "system", "params")},
        "reps": len(runs),
        "failed": sum(1 for r in runs if r.get("error")),
    }
    for key in SUMMARY_FIELDS:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        rec[key] = round(statistics.median(values), 3) if values else None
    lost = [r["lost"] for r in runs if isinstance(r.get("lost"), int)]
    if lost:
        rec["lost_max"] = max(lost)  # "none lost" is a claim about every run
    errors = sorted({str(r["error"]) for r in runs if r.get("error")})
    if errors:
        rec["errors"] = errors
    return rec


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 2)


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)
