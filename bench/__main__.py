"""``python -m bench``: run, compare and report broker benchmarks.

    python -m bench run SCENARIO --system gateway|mosquitto|amqtt|rabbitmq-stomp|coilmq|external
    python -m bench compare [SCENARIO|PRESET ...] [--systems ...] [--reps N] [--seconds S]
    python -m bench compare durable-qos1 durable-qos1-online --systems gateway \
        gateway-memory gateway-async mosquitto mosquitto-persist     # the cost of durability
    python -m bench report [--input bench/results/latest.json]

Every run prints one JSON line; each scenario/system then prints a JSON line of medians
(``"kind": "median"``). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import scenarios as sc
from . import systems

# Where runs, comparisons and profiles go (gitignored); BENCH_RESULTS moves it (tests do).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or systems.REPO / "bench" / "results")


def _record(
    preset: str,
    scenario: str,
    system: str,
    params: sc.Params,
    rep: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    bench = "mqtt"
    if scenario in sc.STOMP_SCENARIOS:
        bench = "stomp"
    elif scenario in sc.DURABLE_SCENARIOS:
        bench = "durable"
    rec: dict[str, Any] = {
        "bench": bench,
        "kind": "run",
        "preset": preset,
        "scenario": scenario,
        "system": system,
        "rep": rep,
        "params": params.relevant(scenario),
    }
    snapshot = getattr(args, "gateway_snapshot", None)
    if systems.is_gateway(system):
        rec["gateway_revision"] = snapshot[1] if snapshot else systems.gateway_revision()
    quiet = getattr(args, "quiet", None)
    if quiet is not None:
        rec["quiet_wait_s"], rec["quiet_pct"] = systems.wait_quiet(quiet, args.quiet_timeout)
    started = time.monotonic()
    profile = getattr(args, "profile", None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        with systems.started(
            system,
            host=getattr(args, "host", "127.0.0.1"),
            port=getattr(args, "port", None),
            pid=getattr(args, "pid", None),
            profile=profile,
            profile_out=RESULTS / f"profile-{preset}-{stamp}-rep{rep}",
            gateway_src=snapshot[0] if snapshot else None,
            max_queued=sc.max_queued(scenario),
        ) as broker:
            rec["broker_pid"] = broker.pid
            rec["port"] = broker.port
            if broker.settings:
                rec["settings"] = broker.settings
            rec.update(sc.run_one(scenario, params, broker))
            if not broker.alive():
                rec["error"] = f"{system} exited during the run: {broker.log_tail(5)}"
            profile_path = broker.profile
        if profile_path is not None:
            rec["profile"] = str(profile_path)
    except Exception as exc:  # one failed run is a result, not the end of a comparison
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["elapsed_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(rec), flush=True)
    return rec


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = [
        "seconds", "warmup", "drain", "publishers", "subscribers", "qos", "payload", "window",
        "rate", "subscriptions", "sub_connections", "connections", "procs", "prefetch",
        "heartbeat", "lead",
    ]  # fmt: skip
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "open_loop", None) is not None:
        out["open_loop"] = args.open_loop
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--seconds", type=float, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, help="seconds before measuring (default 1)")
    p.add_argument("--drain", type=float, help="longest wait for stragglers (default 60)")


def cmd_run(args: argparse.Namespace) -> int:
    name = args.scenario
    if name in sc.SCENARIOS:
        scenario, fixed = name, {}
    elif name in sc.PRESETS:
        scenario, fixed = sc.PRESETS[name]
    else:
        known = ", ".join(dict.fromkeys([*sc.SCENARIOS, *sc.PRESETS]))
        print(f"unknown scenario {name!r}; known: {known}", file=sys.stderr)
        return 2
    preset = name
    if not sc.supports(scenario, args.system):
        print(f"{scenario} is not run on {args.system} (n/a)", file=sys.stderr)
        return 2
    params = sc.params_for(scenario, fixed, _overrides(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = [
        _record(preset, scenario, args.system, params, rep, args) for rep in range(1, args.reps + 1)
    ]
    median = sc.median_record(runs)
    print(json.dumps(median), flush=True)
    with (RESULTS / "runs.jsonl").open("a") as fh:
        for rec in [*runs, median]:
            fh.write(json.dumps(rec) + "\n")
    return 0 if median["failed"] < len(runs) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from . import report

    presets = sc.expand(args.names)
    overrides = _overrides(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = RESULTS / f"compare-{stamp}.json"
    # Every gateway run of the comparison runs this copy of gateway/, not the work tree,
    # which someone may be editing meanwhile.
    args.gateway_snapshot = (
        systems.snapshot_gateway(args.gateway_rev)
        if any(systems.is_gateway(s) for s in args.systems)
        else None
    )
    try:
        return _compare(args, presets, overrides, out_path, report)
    finally:
        if args.gateway_snapshot:
            shutil.rmtree(args.gateway_snapshot[0], ignore_errors=True)


def _compare(
    args: argparse.Namespace,
    presets: list[str],
    overrides: dict[str, Any],
    out_path: Path,
    report: Any,
) -> int:
    doc: dict[str, Any] = {
        "command": "python -m bench compare " + shlex.join(args.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "reps": args.reps,
        "systems": args.systems,
        "presets": presets,
        "overrides": overrides,
        "versions": systems.versions(args.gateway_snapshot, tuple(args.systems)),
        "machine": systems.machine(),
        "runs": [],
        "medians": [],
    }

    def runs_on(preset: str) -> list[str]:
        return [s for s in args.systems if sc.supports(sc.PRESETS[preset][0], s)]

    total = sum(len(runs_on(p)) for p in presets) * args.reps
    n = 0
    t_start = time.monotonic()
    for preset in presets:
        scenario, fixed = sc.PRESETS[preset]
        params = sc.params_for(scenario, fixed, overrides)
        on = runs_on(preset)  # the others are n/a (no STOMP on Mosquitto, amqtt; ...)
        by_system: dict[str, list[dict[str, Any]]] = {s: [] for s in on}
        for rep in range(1, args.reps + 1):
            for system in on:  # interleaved, so drift hits every system alike
                n += 1
                print(f"[{n}/{total}] {preset} on {system}, rep {rep}", file=sys.stderr)
                rec = _record(preset, scenario, system, params, rep, args)
                by_system[system].append(rec)
                doc["runs"].append(rec)
        for system in on:
            median = sc.median_record(by_system[system])
            print(json.dumps(median), flush=True)
            doc["medians"].append(median)
        doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
        out_path.write_text(json.dumps(doc, indent=1))
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    out_path.write_text(json.dumps(doc, indent=1))
    # The report reads the latest MQTT, STOMP and durability comparisons: a STOMP-only
    # comparison does not replace the MQTT figures, nor a durability one either.
    latest = []
    if any(p in sc.MQTT_PRESETS for p in presets):
        latest.append(RESULTS / "latest.json")
    if any(p in sc.STOMP_PRESETS for p in presets):
        latest.append(RESULTS / "latest-stomp.json")
    if any(p in sc.DURABLE_PRESETS for p in presets):
        latest.append(RESULTS / "latest-durable.json")
    for path in latest:
        path.write_text(json.dumps(doc, indent=1))
    print(report.text_tables(doc))
    print(f"results: {out_path} (and {', '.join(map(str, latest))})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    source = Path(args.input)
    if not source.exists():
        print(f"{source} not found: run `python -m bench compare` first", file=sys.stderr)
        return 1
    doc = json.loads(source.read_text())
    stomp_source = Path(args.stomp_input)
    stomp_doc = json.loads(stomp_source.read_text()) if stomp_source.exists() else None
    durable_source = Path(args.durable_input)
    durable_doc = json.loads(durable_source.read_text()) if durable_source.exists() else None
    md, png = report.write(
        doc, Path(args.out), source, stomp_doc, stomp_source, durable_doc, durable_source
    )
    print(f"wrote {md} and {png}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one scenario (or preset) on one system")
    run.add_argument("scenario", help=f"one of {', '.join([*sc.SCENARIOS, *sc.PRESETS])}")
    run.add_argument(
        "--system",
        required=True,
        choices=[
            *systems.SYSTEMS,
            *systems.DURABLE_SYSTEMS,
            *systems.STOMP_SYSTEMS,
            *systems.EXTERNAL_SYSTEMS,
            "external",
        ],
    )
    _add_common(run)
    run.add_argument("--publishers", type=int)
    run.add_argument("--subscribers", type=int)
    run.add_argument("--qos", type=int, choices=[0, 1, 2])
    run.add_argument("--payload", type=int, help="payload bytes (>= 8: the timestamp)")
    run.add_argument("--window", type=int, help="closed-loop lead / in-flight window")
    run.add_argument("--open-loop", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument("--rate", type=float, help="latency: messages per second")
    run.add_argument("--subscriptions", type=int, help="wildcard: total subscriptions")
    run.add_argument("--sub-connections", type=int, help="wildcard: subscriber connections")
    run.add_argument("--connections", type=int, help="idle: connections to open")
    run.add_argument("--procs", type=int, help="idle: generator processes")
    run.add_argument("--prefetch", type=int, help="stomp-queue: the consumer's prefetch-count")
    run.add_argument(
        "--lead", type=int, help="durable-qos1-online: most messages ahead of the subscriber"
    )
    run.add_argument(
        "--heartbeat",
        type=int,
        help="STOMP: offer heart-beat:MS,0 and send EOLs at the negotiated interval (default 0)",
    )
    run.add_argument("--host", default="127.0.0.1", help="external: broker host")
    run.add_argument("--port", type=int, help="external: broker port")
    run.add_argument("--pid", type=int, help="external: broker PID, to read its CPU and RSS")
    run.add_argument(
        "--profile",
        choices=["py-spy", "pyinstrument"],
        help="gateway only: run it under a profiler; output in bench/results/",
    )
    run.set_defaults(func=cmd_run)

    cmp = sub.add_parser("compare", help="scenarios on each system in turn, with ratios")
    cmp.add_argument("names", nargs="*", help="scenarios or presets (default: all)")
    cmp.add_argument("--systems", nargs="+", default=list(systems.SYSTEMS))
    cmp.add_argument(
        "--quiet",
        type=float,
        metavar="PCT",
        help="before each run, wait until the machine uses less than PCT %% of a core "
        "(a machine shared with other work; see --quiet-timeout)",
    )
    cmp.add_argument(
        "--quiet-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="the longest wait for --quiet, per run (default 120)",
    )
    cmp.add_argument(
        "--gateway-rev",
        metavar="REV",
        help="run gateway/ as committed in this git revision (default: the work tree as it is)",
    )
    _add_common(cmp)
    cmp.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="write docs/benchmarks.md and .png from a compare")
    rep.add_argument("--input", default=str(RESULTS / "latest.json"))
    rep.add_argument(
        "--stomp-input",
        default=str(RESULTS / "latest-stomp.json"),
        help="the STOMP comparison (its rows are added when the file exists)",
    )
    rep.add_argument(
        "--durable-input",
        default=str(RESULTS / "latest-durable.json"),
        help="the durability comparison (its section is added when the file exists)",
    )
    rep.add_argument("--out", default=str(systems.REPO / "docs" / "benchmarks.md"))
    rep.set_defaults(func=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv[1:]
    # Brokers and idle holders inherit this: thousands of sockets need more descriptors.
    from .loadgen import raise_nofile

    raise_nofile(systems.BROKER_NOFILE)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
