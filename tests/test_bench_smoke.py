"""The benchmark scripts still run (tiny parameters; nothing about speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "argv",
    [
        ["routing.py", "--subscriptions", "200", "--seconds", "0.02"],
        ["publish_cost.py", "--subscribers", "1", "10", "--seconds", "0.02"],
        ["selector_cost.py", "--seconds", "0.02", "--rounds", "1", "--subscribers", "10"],
    ],
    ids=lambda argv: argv[0],
)
def test_bench_script_runs_and_prints_json_lines(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert records
    assert all("bench" in record for record in records)
