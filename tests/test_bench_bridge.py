"""The bridge benchmark's harness (bench/bridge.py) end to end against the gateway and the
real RabbitMQ at 127.0.0.1:5672, for one second per variant: it counts what reached the
RabbitMQ queue, that count is what the publishers got PUBACKs for, and it leaves no queue
behind. Nothing about speed is asserted; RabbitMQ's MQTT plugin is not needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pika  # type: ignore[import-untyped]
import pytest

from tests.conftest import upstream_reachable

pytestmark = pytest.mark.upstream
REPO = Path(__file__).resolve().parent.parent


def test_the_bridge_bench_counts_in_rabbitmq_what_was_acknowledged(tmp_path: Path) -> None:
    upstream_reachable("127.0.0.1", 5672)
    doc = tmp_path / "bridge.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bridge",
            "--variants",
            "gateway",
            "gateway-upstream",
            "--reps",
            "1",
            "--seconds",
            "1",
            "--warmup",
            "0.3",
            "--publishers",
            "2",
            "--drain",
            "20",
            "--doc",
            str(doc),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=REPO,
        env={**os.environ, "BENCH_RESULTS": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in records if r["kind"] == "run"]
    assert [r["variant"] for r in runs] == ["gateway", "gateway-upstream"]
    for run in runs:
        assert "error" not in run, run
        assert run["in_queue"] > 0
        assert run["msgs_per_s"] > 0
        assert run["sent"] == run["acked"] == run["in_queue"]
        assert run["missing"] == run["extra"] == 0
        assert run["puback_p50_ms"] is not None
        assert run["gateway_cpu_s"] is not None
        assert run["cpu_us_per_msg"] > 0
    assert {r["variant"] for r in records if r["kind"] == "median"} == {
        "gateway",
        "gateway-upstream",
    }
    assert (tmp_path / "latest-bridge.json").exists()
    assert doc.read_text().startswith("# Bridge: MQTT QoS 1 -> RabbitMQ")

    # Every run's queue is gone.
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    try:
        for run in runs:
            channel = connection.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                channel.queue_declare(run["queue"], passive=True)
    finally:
        connection.close()
