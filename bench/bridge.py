"""Bridge throughput: MQTT QoS 1 -> RabbitMQ with publisher confirms.

    python -m bench.bridge [--seconds 5] [--reps 3] [--publishers 4] [--window 100]
        [--variants gateway gateway-upstream rabbitmq-mqtt] [--max-in-flight N]
        [--quiet PCT] [--gateway-rev REV] [--doc docs/benchmarks-bridge.md]
    python -m bench.bridge --from bench/results/bridge-A.json [--also bridge-B.json ...] \
        --doc docs/benchmarks-bridge.md          # no runs: write the page from saved results

N tracked QoS 1 publishers (``bench.loadgen.run_tracked_publisher``: every PUBLISH timed to
its PUBACK, at most ``window`` unacknowledged each) publish to one topic; the end state is
the same for every variant: the messages in a durable RabbitMQ queue (a fresh one per run,
bound to ``amq.topic`` with the topic's routing key), persistent.

- ``gateway``: ``python -m gateway run`` with an AMQP bridge whose outbound rule sends
  the topic to ``exchange:amq.topic/{topic}`` with publisher confirms; the device's PUBACK
  once the message is in the gateway's durable outbox (``ack = "stored"``, the default;
  the store in its default mode, sync).
- ``gateway-upstream``: the same with ``ack = "upstream"``: the PUBACK once RabbitMQ
  confirmed the message.
- ``rabbitmq-mqtt``: RabbitMQ's own MQTT plugin (127.0.0.1:21883, see bench/README.md for
  enabling it without a restart), which publishes QoS 1 to ``amq.topic`` and PUBACKs once
  the queue confirmed it.

RabbitMQ (127.0.0.1:5672, guest/guest) is already running: never started or stopped here.
Before each run a probe message goes the whole way (MQTT publish -> in the queue), so the
bridge's link is up; the queue is then purged. Measured over ``seconds`` after ``warmup``:
messages that arrived in the queue per second (``message_count`` by a passive declare, no
consumer), PUBACKs per second, publish-to-PUBACK percentiles (publishes written in the
window), and CPU: the gateway process plus RabbitMQ's ``beam.smp`` processes (the plugin:
``beam.smp`` only) per message that arrived in the queue. After publishing, the run waits
until the queue holds every acknowledged message (the ack-stored gateway's outbox drains);
``missing`` (acknowledged, never in the queue) must be 0. The queue is deleted after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.bridges.config import BridgeConfig

from . import loadgen as lg
from . import mqttwire as w
from . import scenarios as sc
from . import systems

DEFAULT_MAX_IN_FLIGHT = BridgeConfig(name="b", kind="amqp", url="amqp://h").max_in_flight

RESULTS = Path(os.environ.get("BENCH_RESULTS") or systems.REPO / "bench" / "results")
RABBIT_AMQP = ("127.0.0.1", 5672)
VARIANTS = ("gateway", "gateway-upstream", "rabbitmq-mqtt")
GATEWAY_ACK = {"gateway": "stored", "gateway-upstream": "upstream"}
PLUGIN = "rabbitmq-mqtt"
# Median fields, and the ones compared gateway/plugin.
FIELDS = (
    "msgs_per_s",
    "acked_per_s",
    "puback_p50_ms",
    "puback_p99_ms",
    "puback_p999_ms",
    "cpu_us_per_msg",
    "gateway_cpu_us_per_msg",
    "rabbit_cpu_us_per_msg",
    "gateway_cpu_pct",
    "rabbit_cpu_pct",
    "overall_msgs_per_s",
    "overall_cpu_us_per_msg",
    "backlog_at_end",
    "drain_s",
    "gateway_rss_mb",
    "loadgen_cpu_s",
    "other_cpu_pct",
)
RATIOS = ("msgs_per_s", "acked_per_s", "puback_p50_ms", "puback_p99_ms", "cpu_us_per_msg")


@dataclass(frozen=True)
class Params:
    seconds: float = 5.0
    warmup: float = 1.0
    drain: float = 60.0  # longest wait for the queue to hold every acknowledged message
    publishers: int = 4
    window: int = 100  # unacknowledged publishes per publisher
    payload: int = 64
    max_in_flight: int = 0  # the bridge's in-flight window (unconfirmed); 0: its default
    # The gateway's default window when this ran (of this tree, not of --gateway-rev's).
    default_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT


# ---------------------------------------------------------------------------- RabbitMQ


class Rabbit:
    """A pika connection to RabbitMQ for the run's queue: declare, count, purge, delete."""

    def __init__(self) -> None:
        import pika  # type: ignore[import-untyped]  # a dev dependency (the bridge tests)

        host, port = RABBIT_AMQP
        params = pika.ConnectionParameters(host, port, heartbeat=0, blocked_connection_timeout=30)
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()

    def declare(self, queue: str, key: str) -> None:
        self.channel.queue_declare(queue, durable=True, auto_delete=False)
        self.channel.queue_bind(queue, "amq.topic", routing_key=key)

    def count(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def purge(self, queue: str) -> None:
        self.channel.queue_purge(queue)

    def delete(self, queue: str) -> None:
        self.channel.queue_delete(queue)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()


def rabbitmq() -> systems.Running:
    """RabbitMQ's beam.smp processes, measured (never started or stopped)."""
    pids = systems.beam_pids()
    if not pids:
        raise systems.BrokerError("no beam.smp process: RabbitMQ is not running")
    return systems.Running("rabbitmq", *RABBIT_AMQP, pids[0], extra_pids=pids[1:])


# ---------------------------------------------------------------------------- the gateway


def gateway_config(work: Path, port: int, topic: str, ack: str, max_in_flight: int = 0) -> str:
    """The gateway of ``systems`` (its limits, the store in its default mode) with one MQTT
    listener and the AMQP bridge sending ``topic`` to amq.topic with its routing key."""
    host, amqp_port = RABBIT_AMQP
    window = f"max_in_flight = {max_in_flight}\n" if max_in_flight else ""
    return f"""[gateway]
data_dir = "{work / "data"}"
drain_timeout = 1.0
log_level = "warning"
log_format = "json"
sys_interval = 0
max_queued_messages = {systems.MAX_QUEUED}

[[listeners]]
protocol = "mqtt"
bind = "127.0.0.1:{port}"
max_inflight = {systems.MAX_INFLIGHT}

[[bridges]]
name = "rabbit"
kind = "amqp"
url = "amqp://guest:guest@{host}:{amqp_port}/"
{window}outbound = [{{ match = "{topic}", to = "exchange:amq.topic/{{topic}}", ack = "{ack}" }}]
"""


@contextlib.contextmanager
def gateway(
    ack: str, topic: str, src: Path | None, max_in_flight: int = 0
) -> Iterator[systems.Running]:
    """``python -m gateway run`` (from the snapshot ``src``, else the work tree), stopped
    and its data directory removed after."""
    work = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    port = systems.free_port()
    conf = work / "gateway.toml"
    conf.write_text(gateway_config(work, port, topic, ack, max_in_flight))
    log = work / "gateway.log"
    cmd = [systems.gateway_python(), "-m", "gateway", "run", "-c", str(conf)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work,
            env=systems._env(src),
        )
    run = systems.Running("gateway", "127.0.0.1", port, proc.pid, proc, work, log)
    run.settings = {
        "ack": ack,
        "durability": "default (sync)",
        "max_in_flight": max_in_flight or f"default ({DEFAULT_MAX_IN_FLIGHT})",
    }
    try:
        systems.wait_listening(run)
        yield run
    finally:
        systems.stop(run)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def system(
    variant: str, topic: str, src: Path | None, max_in_flight: int = 0
) -> Iterator[systems.Running | None]:
    """The MQTT endpoint of ``variant``: a gateway of ours, or the plugin (None: nothing of
    ours runs, RabbitMQ is measured alone)."""
    if variant == PLUGIN:
        host, port = systems.RABBITMQ_MQTT
        plugin = systems.Running(PLUGIN, host, port, None)
        try:
            systems.wait_listening(plugin, timeout=5)
        except systems.BrokerError as exc:
            raise systems.BrokerError(
                f"{exc}: enable RabbitMQ's MQTT plugin on {host}:{port} (bench/README.md)"
            ) from None
        yield plugin
        return
    with gateway(GATEWAY_ACK[variant], topic, src, max_in_flight) as gw:
        yield gw


def probe(host: str, port: int, topic: str, rabbit: Rabbit, queue: str) -> float:
    """One QoS 1 message the whole way, MQTT to the queue (the bridge's link is up, the
    plugin's route works); the queue is purged after. Returns the seconds it took."""
    started = time.monotonic()
    sock = lg.mqtt_connect(host, port, f"bench-bridge-probe-{uuid.uuid4().hex[:8]}")
    try:
        sock.sendall(w.publish(topic, b"probe", qos=1, packet_id=1))
        first, _ = lg.read_frame(sock, bytearray(), time.monotonic() + 30)
        if first >> 4 != w.PUBACK:
            raise lg.WorkerError(f"probe: expected PUBACK, got packet type {first >> 4}")
    finally:
        lg._close(sock)
    deadline = time.monotonic() + 30
    while rabbit.count(queue) < 1:
        if time.monotonic() > deadline:
            raise lg.WorkerError("probe: the message never reached the RabbitMQ queue")
        time.sleep(0.05)
    rabbit.purge(queue)
    return time.monotonic() - started


# ---------------------------------------------------------------------------- one run


def _cpu(run: systems.Running | None) -> float:
    return 0.0 if run is None or run.pid is None else run.cpu_seconds() or 0.0


def measure(
    variant: str, p: Params, endpoint: systems.Running, topic: str, rabbit: Rabbit, queue: str
) -> dict[str, Any]:
    """Publish for warmup + seconds; figures over the last ``seconds``; then wait for the
    queue to hold every acknowledged message."""
    beam = rabbitmq()
    gw = endpoint if endpoint.pid is not None else None
    tag = topic.rsplit("/", 2)[-2]
    specs: list[lg.Spec] = [
        lg.PubSpec(
            endpoint.host,
            endpoint.port,
            f"bench-bridge-{tag}-pub-{i}",
            (topic,),
            qos=1,
            payload_size=p.payload,
            window=p.window,
            open_loop=True,  # no subscriber: only the window of unacknowledged publishes
            warmup=p.warmup,
            seconds=p.seconds,
            track=True,
            pub_no=i,
        )
        for i in range(p.publishers)
    ]
    out: dict[str, Any] = {}
    hard = 180 + p.warmup + p.seconds + p.drain + lg.ACK_WAIT_NS / 1e9
    with lg.WorkerGroup(specs, hard) as g:
        pubs = g.shared.pub_slots

        def snap() -> tuple[Any, ...]:
            return (
                lg.now_ns(),
                _cpu(gw),
                beam.cpu_seconds() or 0.0,
                rabbit.count(queue),
                g.counter(pubs),
                sum(int(g.shared.acked[i]) for i in pubs),
                sc._loadgen_cpu(g.pids),
                systems.machine_busy_seconds(),
            )

        g.wait_state(1, timeout=150)
        go = snap()
        t0 = g.go()
        sc._sleep_until(t0 + int(p.warmup * 1e9), g, endpoint)
        a = snap()
        sc._sleep_until(t0 + int((p.warmup + p.seconds) * 1e9), g, endpoint)
        b = snap()
        out["gateway_rss_mb"] = sc._mb(gw.rss_bytes()) if gw else None
        g.wait_state(2, timeout=30 + lg.ACK_WAIT_NS / 1e9, slots=pubs)  # last PUBACKs in
        acked_total = sum(int(g.shared.acked[i]) for i in pubs)
        # The queue fills up to what was acknowledged (the ack-stored gateway's outbox
        # drains); done when it holds that many, or nothing moved for 3 s.
        sc.wait_drained(lambda: rabbit.count(queue), acked_total, p.drain, quiet=3.0)
        end = snap()
        out["drain_s"] = round((end[0] - b[0]) / 1e9, 2)
        if gw is not None and not gw.alive():
            out["error"] = f"the gateway exited during the run: {gw.log_tail(5)}"
        g.set(lg.STOP)
        results = g.collect(pubs, timeout=20 + lg.ACK_WAIT_NS / 1e9)
    window_s = (b[0] - a[0]) / 1e9
    arrived = b[3] - a[3]
    gw_cpu, rabbit_cpu = b[1] - a[1], b[2] - a[2]
    cpu = gw_cpu + rabbit_cpu
    in_queue = end[3]
    sent = sum(int(r.get("sent") or 0) for r in results)
    acked = sum(int(r.get("acked") or 0) for r in results)
    samples = sorted(s for r in results for s in r.get("ack_samples") or [])
    overall_cpu = (end[1] - go[1]) + (end[2] - go[2])
    errors = [r["error"] for r in results if r.get("error")]

    def per_msg(seconds: float, n: int) -> float | None:
        return round(seconds / n * 1e6, 2) if n > 0 else None

    out.update(
        window_s=round(window_s, 3),
        sent=sent,
        acked=acked,
        in_queue=in_queue,
        missing=max(0, acked - in_queue),  # acknowledged, never in the queue: loss
        extra=max(0, in_queue - acked),  # in the queue, never acknowledged (or twice)
        msgs_per_s=round(arrived / window_s, 1),
        acked_per_s=round((b[5] - a[5]) / window_s, 1),
        publishes_per_s=round((b[4] - a[4]) / window_s, 1),
        # Acknowledged but not yet in the queue when the window closed (the queue may count
        # a message a moment before its PUBACK reaches the publisher: 0 then).
        backlog_at_end=max(0, b[5] - b[3]),
        puback_samples=len(samples),
        puback_p50_ms=sc._ms(sc.percentile(samples, 0.5)) if samples else None,
        puback_p99_ms=sc._ms(sc.percentile(samples, 0.99)) if samples else None,
        puback_p999_ms=sc._ms(sc.percentile(samples, 0.999)) if samples else None,
        gateway_cpu_s=round(gw_cpu, 3) if gw else None,
        rabbit_cpu_s=round(rabbit_cpu, 3),
        gateway_cpu_pct=round(100 * gw_cpu / window_s, 1) if gw else None,
        rabbit_cpu_pct=round(100 * rabbit_cpu / window_s, 1),
        cpu_us_per_msg=per_msg(cpu, arrived),
        gateway_cpu_us_per_msg=per_msg(gw_cpu, arrived) if gw else None,
        rabbit_cpu_us_per_msg=per_msg(rabbit_cpu, arrived),
        # From the start to the last message in the queue (drain included).
        overall_msgs_per_s=round(in_queue / max(1e-9, (end[0] - go[0]) / 1e9), 1),
        overall_cpu_us_per_msg=per_msg(overall_cpu, in_queue),
        loadgen_cpu_s=round(b[6] - a[6], 3),
        # What the rest of the machine did meanwhile, in % of one core (noise indicator).
        other_cpu_pct=round(100 * max(0.0, b[7] - a[7] - cpu - (b[6] - a[6])) / window_s, 1)
        if a[7] is not None and b[7] is not None
        else None,
        unexpected_frames=sum(int(r.get("unexpected") or 0) for r in results),
    )
    if out["missing"]:
        errors.append(f"{out['missing']} acknowledged message(s) never reached the queue")
    if errors:
        out["error"] = "; ".join(sorted({*errors, out.get("error", "")} - {""}))
    return out


def run_one(variant: str, p: Params, rep: int, src: Path | None) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    topic = f"bench/bridge/{tag}/t"
    queue = f"bench.bridge.{tag}"
    rec: dict[str, Any] = {
        "bench": "bridge",
        "kind": "run",
        "variant": variant,
        "rep": rep,
        "params": asdict(p),
        "queue": queue,
    }
    started = time.monotonic()
    rabbit: Rabbit | None = None
    try:
        rabbit = Rabbit()
        rabbit.declare(queue, topic.replace("/", "."))
        with system(variant, topic, src, p.max_in_flight) as endpoint:
            assert endpoint is not None
            rec["port"] = endpoint.port
            if endpoint.settings:
                rec["settings"] = endpoint.settings
            rec["probe_s"] = round(probe(endpoint.host, endpoint.port, topic, rabbit, queue), 3)
            rec.update(measure(variant, p, endpoint, topic, rabbit, queue))
    except Exception as exc:  # one failed run is a result, not the end of the comparison
        rec["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if rabbit is not None:
            with contextlib.suppress(Exception):
                rabbit.delete(queue)
            rabbit.close()
    rec["elapsed_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(rec), flush=True)
    return rec


# ---------------------------------------------------------------------------- summaries


def median(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "bench": "bridge",
        "kind": "median",
        "variant": runs[0]["variant"],
        "reps": len(runs),
        "failed": sum(1 for r in runs if r.get("error")),
        "missing_max": max((int(r.get("missing") or 0) for r in runs), default=0),
    }
    for key in FIELDS:
        values = [
            r[key] for r in runs if isinstance(r.get(key), int | float) and not r.get("error")
        ]
        rec[key] = round(statistics.median(values), 3) if values else None
    errors = sorted({str(r["error"]) for r in runs if r.get("error")})
    if errors:
        rec["errors"] = errors
    return rec


def ratios(medians: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """gateway variant / plugin, for each figure of RATIOS."""
    base = medians.get(PLUGIN)
    out = []
    for variant, med in medians.items():
        if variant == PLUGIN or base is None:
            continue
        rec: dict[str, Any] = {"bench": "bridge", "kind": "ratio", "of": f"{variant}/{PLUGIN}"}
        for key in RATIOS:
            a, b = med.get(key), base.get(key)
            rec[key] = round(a / b, 3) if a and b else None
        out.append(rec)
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    v = float(value)
    text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return text + unit


LABELS = {
    "gateway": 'gateway, `ack = "stored"` (default)',
    "gateway-upstream": 'gateway, `ack = "upstream"`',
    "rabbitmq-mqtt": "RabbitMQ MQTT plugin",
}


def _window(p: dict[str, Any]) -> str:
    n = p.get("max_in_flight") or 0
    if n:
        return f"`max_in_flight = {n}`"
    # Runs saved before the default was recorded were made with the old default, 256.
    return f"the default `max_in_flight` ({p.get('default_max_in_flight', 256)})"


def tables(doc: dict[str, Any]) -> str:
    """The medians and ratios of one comparison, with its command and parameters."""
    meds = {m["variant"]: m for m in doc["medians"]}
    p = doc["params"]
    rows = []
    for variant in doc["variants"]:
        m = meds.get(variant)
        if m is None:
            continue
        gw_part = m.get("gateway_cpu_us_per_msg")
        split = f"{_fmt(gw_part)} + {_fmt(m['rabbit_cpu_us_per_msg'])}"
        flag = f" ⚠ {m['failed']}/{m['reps']} failed" if m.get("failed") else ""
        rows.append(
            f"| {LABELS.get(variant, variant)}{flag} | {_fmt(m['msgs_per_s'])} "
            f"| {_fmt(m['acked_per_s'])} | {_fmt(m['puback_p50_ms'])} "
            f"| {_fmt(m['puback_p99_ms'])} | {_fmt(m['puback_p999_ms'])} "
            f"| {_fmt(m['cpu_us_per_msg'])} | {split} "
            f"| {_fmt(m['gateway_cpu_pct'], ' %')} / {_fmt(m['rabbit_cpu_pct'], ' %')} "
            f"| {_fmt(m['backlog_at_end'])} | {_fmt(m['other_cpu_pct'], ' %')} |"
        )
    ratio_rows = [
        f"| {LABELS.get(r['of'].split('/')[0], r['of'])} | "
        + " | ".join(f"{r[k]:.2f}x" if r.get(k) else "-" for k in RATIOS)
        + " |"
        for r in doc["ratios"]
    ]
    missing = max((m.get("missing_max") or 0) for m in doc["medians"]) if doc["medians"] else 0
    header = (
        "| variant | msg/s into the queue | PUBACK/s | PUBACK p50 ms | p99 ms | p99.9 ms "
        "| CPU µs/msg | of which gateway + RabbitMQ | CPU gateway / RabbitMQ "
        "| backlog at end | other CPU |\n|" + "---|" * 11
    )
    ratio_part = (
        "Ratios, gateway / plugin (throughput: higher is better for the gateway; latency and\n"
        "CPU: lower is):\n\n"
        "| variant | msg/s | PUBACK/s | PUBACK p50 | PUBACK p99 | CPU µs/msg |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(ratio_rows) + "\n\n"
        if ratio_rows
        else ""
    )
    return f"""```sh
{doc["command"]}
```

Started {doc["started"]}, {doc["reps"]} runs per variant (interleaved), each
{_fmt(p["warmup"])} s warm-up + {_fmt(p["seconds"])} s measured; {p["publishers"]} QoS 1
publishers, at most {p["window"]} unacknowledged publishes each, {p["payload"]}-byte
payloads, one topic; the gateway's bridge with {_window(p)}; {doc["versions"].get("gateway")}.
Medians over the runs:

{header}
{chr(10).join(rows)}

{ratio_part}Acknowledged messages that never reached the queue, worst run: {missing}.
"""


# In a page written by --doc, what follows this line is kept when it is written again.
KEEP = "<!-- Written by hand from here on: `--doc` keeps it. -->"


def render(doc: dict[str, Any], extra: Sequence[dict[str, Any]] = (), command: str = "") -> str:
    """docs/benchmarks-bridge.md from one comparison (and more, each in its own section:
    the same comparison with other settings); ``command``: the one that wrote it."""
    versions = "\n".join(f"- {k}: {v}" for k, v in doc["versions"].items())
    mach = doc["machine"]
    more = "".join(
        f"\n## The same with {_window(other['params'])}\n\n{tables(other)}" for other in extra
    )
    sources = ", ".join(
        f"`{d.get('source', 'bench/results/latest-bridge.json')}`" for d in [doc, *extra]
    )
    return f"""# Bridge: MQTT QoS 1 -> RabbitMQ

What it costs to put MQTT QoS 1 messages into a RabbitMQ queue through the gateway's AMQP
bridge (publisher confirms), against RabbitMQ's own MQTT plugin doing the same job. The
end state is the same for all: the messages, persistent, in a durable RabbitMQ queue bound
to `amq.topic` with the topic's routing key. Written by `bench/bridge.py`
(`{command or "python -m bench.bridge ... --doc PATH"}`); the other benchmarks are in
[benchmarks.md](benchmarks.md).

{tables(doc)}{more}
## Method

- **gateway**: `python -m gateway run`, one MQTT listener, the store in its default
  mode (`sync`), and one bridge `kind = "amqp"` to 127.0.0.1:5672 with
  `outbound = [{{ match = "bench/bridge/TAG/t", to = "exchange:amq.topic/{{topic}}" }}]`
  (publisher confirms, `mandatory`; the outbox's defaults: `max_length` 100,000).
  `ack = "stored"` (the default) PUBACKs once the message is in the bridge's durable
  outbox; `ack = "upstream"` once RabbitMQ confirmed it. A fresh gateway and data
  directory per run.
- **rabbitmq-mqtt**: RabbitMQ's MQTT plugin on 127.0.0.1:21883 (the running node; enabled
  as in [bench/README.md](../bench/README.md)), which publishes QoS 1 messages persistent
  to `amq.topic` and PUBACKs once the queue confirmed them.
- Per run, a fresh durable queue `bench.bridge.TAG`, bound to `amq.topic` with
  `bench.bridge.TAG.t`, declared with pika, deleted after. One probe message goes the whole
  way first (MQTT -> queue: the bridge's link is up), then the queue is purged.
- **msg/s into the queue**: the queue's `message_count` (a passive `queue.declare`; no
  consumer) over the measured window: the end-to-end figure. **PUBACK/s** and the
  **PUBACK percentiles**: the publishers' own (publish-to-PUBACK by packet id, publishes
  written in the window).
- With `ack = "stored"` the gateway may acknowledge faster than the bridge hands messages
  to RabbitMQ: **backlog at end** is what was acknowledged but not yet in the queue when
  the window closed (the outbox and what is in flight). Once the outbox is past its
  high-water mark (half its `max_length`), the gateway stops reading the publishers until
  it is back under a quarter (publisher backpressure): their PUBACKs then stop for a
  second or more, which is what a p99.9 of seconds shows, and over a longer run the
  PUBACK rate comes down to the rate into the queue. After the window the run waits until
  the queue holds every acknowledged message.
- **CPU µs/msg**: CPU time (`/proc`, utime + stime) of the gateway process plus all of
  RabbitMQ's `beam.smp` processes (the plugin: `beam.smp` alone) over the window, divided
  by the messages that arrived in the queue in it. **CPU gateway / RabbitMQ**: each in %
  of one core. **other CPU**: what the rest of the machine used meanwhile (other people's
  work on this shared machine; the load generator excluded), a noise indicator. RabbitMQ
  is a shared server here, so its `beam.smp` CPU also counts whatever else it did.
- Load generator: `bench/loadgen.py`'s tracked QoS 1 publisher, one process per
  publisher, raw MQTT 3.1.1 over TCP, on the same machine.

Machine: {mach.get("nproc")} CPUs ({mach.get("cpu")}), {mach.get("memory")},
{mach.get("os")}, kernel {mach.get("kernel")}. Versions:

{versions}

Raw runs: {sources} (not committed).
"""


# ---------------------------------------------------------------------------- command


def versions(src: tuple[Path, str] | None) -> dict[str, str]:
    gw = systems._first_line(
        [systems.gateway_python(), "-m", "gateway", "version"],
        systems._env(src[0] if src else None),
    )
    host, port = systems.RABBITMQ_MQTT
    return {
        "gateway": f"{gw} (commit {src[1] if src else systems.gateway_revision()})",
        "rabbitmq": "RabbitMQ "
        + systems._first_line(["rabbitmqctl", "version"])
        + f" (already running; MQTT plugin on {host}:{port})",
        "python": systems._first_line([systems.gateway_python(), "--version"]),
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=Params.seconds)
    ap.add_argument("--warmup", type=float, default=Params.warmup)
    ap.add_argument("--drain", type=float, default=Params.drain)
    ap.add_argument("--publishers", type=int, default=Params.publishers)
    ap.add_argument("--window", type=int, default=Params.window, help="unacked per publisher")
    ap.add_argument("--payload", type=int, default=Params.payload, help="bytes (>= 8)")
    ap.add_argument(
        "--max-in-flight",
        type=int,
        default=Params.max_in_flight,
        help=f"the bridge's max_in_flight (default: the gateway's, {DEFAULT_MAX_IN_FLIGHT})",
    )
    ap.add_argument(
        "--gateway-rev", metavar="REV", help="run gateway/ as committed in REV (default: as is)"
    )
    ap.add_argument(
        "--quiet",
        type=float,
        metavar="PCT",
        help="before each run, wait (up to 120 s) until the machine uses less than PCT %% "
        "of a core",
    )
    ap.add_argument("--doc", metavar="PATH", help="write the markdown results there")
    ap.add_argument(
        "--from", dest="source", metavar="JSON", help="no runs: render a saved comparison"
    )
    ap.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="JSON",
        help="--doc: add these saved comparisons (other settings) as sections of their own",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    doc = json.loads(Path(args.source).read_text()) if args.source else compare(args, argv)
    if args.doc:
        extra = [json.loads(Path(path).read_text()) for path in args.also]
        page = Path(args.doc)
        kept = page.read_text().partition(KEEP)[2] if page.exists() else ""
        text = render(doc, extra, "python -m bench.bridge " + shlex.join(argv))
        page.write_text(text + (f"\n{KEEP}{kept}" if kept else ""))
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0 if all(m["failed"] < m["reps"] for m in doc["medians"]) else 1


def compare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    p = Params(
        args.seconds,
        args.warmup,
        args.drain,
        args.publishers,
        args.window,
        args.payload,
        args.max_in_flight,
    )
    lg.raise_nofile(4096)
    RESULTS.mkdir(parents=True, exist_ok=True)
    snapshot = None
    if any(v in GATEWAY_ACK for v in args.variants):
        snapshot = systems.snapshot_gateway(args.gateway_rev)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = RESULTS / f"bridge-{stamp}.json"
    doc: dict[str, Any] = {
        "command": "python -m bench.bridge " + shlex.join(argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "reps": args.reps,
        "variants": args.variants,
        "params": asdict(p),
        "versions": versions(snapshot),
        "machine": systems.machine(),
        "source": str(out_path.relative_to(systems.REPO))
        if out_path.is_relative_to(systems.REPO)
        else str(out_path),
        "runs": [],
        "medians": [],
        "ratios": [],
    }
    by_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    try:
        for rep in range(1, args.reps + 1):
            for variant in args.variants:  # interleaved: drift hits every variant alike
                if args.quiet is not None:
                    systems.wait_quiet(args.quiet, 120.0)
                print(f"[rep {rep}/{args.reps}] {variant}", file=sys.stderr)
                rec = run_one(variant, p, rep, snapshot[0] if snapshot else None)
                by_variant[variant].append(rec)
                doc["runs"].append(rec)
    finally:
        if snapshot:
            shutil.rmtree(snapshot[0], ignore_errors=True)
    meds = {v: median(runs) for v, runs in by_variant.items() if runs}
    doc["medians"] = list(meds.values())
    doc["ratios"] = ratios(meds)
    for rec in [*doc["medians"], *doc["ratios"]]:
        print(json.dumps(rec), flush=True)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    text = json.dumps(doc, indent=1)
    out_path.write_text(text)
    (RESULTS / "latest-bridge.json").write_text(text)
    print(f"results: {out_path}", file=sys.stderr)
    return doc


if __name__ == "__main__":
    sys.exit(main())
