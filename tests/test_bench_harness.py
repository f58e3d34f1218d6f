"""The broker benchmark harness runs end to end against the gateway (tiny parameters;
nothing about speed is asserted). Needs neither Mosquitto nor amqtt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def bench_run(tmp_path: Path, *argv: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``python -m bench run ...``; its JSON records and its one run record."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "run", *argv],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in records if r["kind"] == "run"]
    assert len(runs) == 1, result.stdout
    assert "error" not in runs[0], runs[0]
    return records, runs[0]


def test_fanin_on_the_gateway_prints_a_json_line_per_run(tmp_path: Path) -> None:
    records, run = bench_run(
        tmp_path,
        "fanin",
        "--system",
        "gateway",
        "--reps",
        "1",
        "--seconds",
        "1",
        "--warmup",
        "0.5",
        "--publishers",
        "2",
        "--drain",
        "5",
    )
    assert run["scenario"] == "fanin"
    assert run["system"] == "gateway"
    assert run["params"]["publishers"] == 2
    assert run["msgs_per_cpu_s"] > 0
    assert run["msgs_per_s"] > 0
    assert run["sent"] > 0
    assert run["received"] + run["lost"] == run["expected"] == run["sent"]
    assert run["loss_pct"] is not None
    assert 0 <= run["loss_pct"] <= 100
    assert [r["kind"] for r in records] == ["run", "median"]


def test_stomp_fanin_on_the_gateway_prints_a_json_line(tmp_path: Path) -> None:
    _, run = bench_run(
        tmp_path,
        "stomp-fanin",
        "--system",
        "gateway",
        "--reps",
        "1",
        "--seconds",
        "1",
        "--warmup",
        "0.5",
        "--drain",
        "5",
    )
    assert (run["bench"], run["scenario"], run["system"]) == ("stomp", "stomp-fanin", "gateway")
    assert run["msgs_per_cpu_s"] > 0
    assert run["received"] + run["lost"] == run["expected"] == run["sent"] > 0
