"""The broker benchmark harness runs end to end against the gateway (tiny parameters;
nothing about speed is asserted). Needs neither Mosquitto nor amqtt; the coilmq run is
skipped when its venv (bench/.venv-coilmq, `make bench-deps`) is missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from bench import loadgen, mqttwire, report, scenarios, stompwire, systems

REPO = Path(__file__).resolve().parent.parent


def bench_run(
    tmp_path: Path, scenario: str, system: str, *argv: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``python -m bench run SCENARIO --system SYSTEM`` once, for a second after half a
    second's warm-up, with ``argv``; its JSON records and its one run record."""
    tiny = ("--reps", "1", "--seconds", "1", "--warmup", "0.5")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "run", scenario, "--system", system, *tiny, *argv],
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
    records, run = bench_run(tmp_path, "fanin", "gateway", "--publishers", "2", "--drain", "5")
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
    _, run = bench_run(tmp_path, "stomp-fanin", "gateway", "--drain", "5")
    assert (run["bench"], run["scenario"], run["system"]) == ("stomp", "stomp-fanin", "gateway")
    assert run["msgs_per_cpu_s"] > 0
    assert run["received"] + run["lost"] == run["expected"] == run["sent"] > 0


def test_stomp_fanin_4k_on_coilmq_prints_a_json_line(tmp_path: Path) -> None:
    if not systems.coilmq_bin().exists():
        why = "no bench/.venv-coilmq: run `make bench-coilmq`"
        if os.environ.get("GATEWAY_TEST_REQUIRE_UPSTREAMS") == "1":
            pytest.fail(why)  # CI installs it: never a silent skip there
        pytest.skip(why)
    _, run = bench_run(tmp_path, "stomp-fanin-4k", "coilmq", "--drain", "5")
    assert (run["preset"], run["system"], run["params"]["window"]) == (
        "stomp-fanin-4k",
        "coilmq",
        35,
    )
    assert run["msgs_per_cpu_s"] > 0
    assert run["received"] == run["expected"] == run["sent"] > 0


def test_the_4k_presets_keep_coilmqs_read_size() -> None:
    """coilmq's parser fails on a frame split between two 4,096-byte reads: the -4k
    presets keep the SEND frames in flight on a connection within one read."""
    queue = {"durable": "false", "auto-delete": "true", "exclusive": "false"}
    frames = {
        "stomp-fanin-4k": stompwire.send("/topic/bench", stompwire.payload(64)),
        "stomp-queue-4k": stompwire.send("/queue/bench-0123456789ab", stompwire.payload(64), queue),
    }
    for preset, frame in frames.items():
        scenario, fixed = scenarios.PRESETS[preset]
        params = scenarios.params_for(scenario, fixed, {})
        assert params.window * len(frame) <= scenarios.COILMQ_READ
        assert (params.window + 1) * len(frame) > scenarios.COILMQ_READ  # no smaller than need be


def test_coilmq_runs_the_stomp_scenarios_only() -> None:
    assert scenarios.supports("stomp-fanin", "coilmq")
    assert scenarios.supports("stomp-queue", "coilmq")
    assert not scenarios.supports("mqtt-to-stomp", "coilmq")
    assert not scenarios.supports("fanin", "coilmq")
    assert scenarios.supports("stomp-fanin", "gateway")
    assert not scenarios.supports("qos2", "rabbitmq-stomp")


@pytest.mark.parametrize(
    ("connected", "cx", "interval"),
    [
        (b"CONNECTED\nversion:1.2\nheart-beat:100,100\n\n", 0, 0),  # coilmq's answer to 0,0
        (b"CONNECTED\nversion:1.2\nheart-beat:100,1000\n\n", 500, 1000),
        (b"CONNECTED\nversion:1.2\nheart-beat:0,300\n\n", 500, 500),
        (b"CONNECTED\nversion:1.2\nheart-beat:100,0\n\n", 500, 0),
        (b"CONNECTED\nversion:1.2\n\n", 500, 0),
    ],
)
def test_client_heartbeat_is_what_connect_and_connected_negotiate(
    connected: bytes, cx: int, interval: int
) -> None:
    assert stompwire.client_heartbeat_ms(connected, cx) == interval


def test_heartbeat_timer_sends_an_eol_only_when_idle_for_the_interval() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        beat = loadgen.Heartbeat(a, 20)
        beat.tick(loadgen.now_ns())
        with pytest.raises(BlockingIOError):
            b.recv(10)
        time.sleep(0.03)
        beat.wrote(loadgen.now_ns())  # something was written: not idle
        beat.tick(loadgen.now_ns())
        with pytest.raises(BlockingIOError):
            b.recv(10)
        time.sleep(0.03)
        beat.tick(loadgen.now_ns())
        assert b.recv(10) == b"\n"
        assert beat.sent == 1
        off = loadgen.Heartbeat(a, 0)  # heart-beat:0,0
        off.tick(loadgen.now_ns() + 10**12)
        assert off.sent == 0


def test_scan_collects_ack_ids_or_message_ids() -> None:
    def message(i: int) -> bytes:
        headers = {"destination": "/q", "message-id": f"m{i}", "content-length": "64"}
        return stompwire.frame("MESSAGE", {**headers, "ack": f"a{i}"}, stompwire.payload(64))

    buf = b"".join(message(i) for i in range(3))
    by_ack: list[bytes] = []
    by_id: list[bytes] = []
    assert stompwire.scan(buf, 0, by_ack)[:2] == (len(buf), 3)
    assert stompwire.scan(buf, 0, by_id, None, b"\nmessage-id:")[:2] == (len(buf), 3)
    assert (by_ack, by_id) == ([b"a0", b"a1", b"a2"], [b"m0", b"m1", b"m2"])
    assert stompwire.ack_message_id(b"0")(b"m1") == b"ACK\nid:0\nmessage-id:m1\n\n\x00"


def test_stomp_table_has_a_ratio_per_other_system() -> None:
    def med(preset: str, system: str, per_cpu: float, failed: int = 0) -> dict[str, Any]:
        return {
            "preset": preset,
            "system": system,
            "msgs_per_s": per_cpu / 2,
            "msgs_per_cpu_s": per_cpu,
            "failed": failed,
            "reps": 3,
        }

    doc = {
        "systems": ["gateway", "rabbitmq-stomp", "coilmq"],
        "presets": ["stomp-fanin", "stomp-fanin-4k", "mqtt-to-stomp"],
        "medians": [
            med("stomp-fanin", "gateway", 100_000),
            med("stomp-fanin", "rabbitmq-stomp", 25_000),
            {**med("stomp-fanin", "coilmq", 0), "msgs_per_cpu_s": None, "failed": 3},
            med("stomp-fanin-4k", "gateway", 80_000),
            med("stomp-fanin-4k", "rabbitmq-stomp", 20_000),
            med("stomp-fanin-4k", "coilmq", 40_000),
            med("mqtt-to-stomp", "gateway", 110_000),
        ],
    }
    lines = report.stomp_table(doc).splitlines()
    assert "gw/RabbitMQ per CPU s | gw/coilmq per CPU s" in lines[0]
    assert lines[3].startswith("| stomp-fanin-4k |")
    assert "| 4x | 2x |" in lines[3]
    assert "n/a" in lines[4]  # mqtt-to-stomp: the gateway only
    target = report.stomp_target(doc)
    assert "`stomp-fanin`: coilmq failed every run" in target
    assert "`stomp-fanin-4k`: gateway / coilmq = **2x** per broker CPU second (met;" in target


@pytest.mark.parametrize("system", ["gateway", "rabbitmq-stomp", "coilmq"])
def test_stomp_queue_4k_specs_per_system(system: str) -> None:
    """The same load everywhere; coilmq gets its FQDN as host, ack:client (its one
    acknowledged mode) and ACKs by message-id. Nothing else differs."""
    scenario, fixed = scenarios.PRESETS["stomp-queue-4k"]
    params = scenarios.params_for(scenario, fixed, {})
    host = "broker.example" if system == "coilmq" else "/"
    broker = systems.Running(system, "127.0.0.1", 1, None, stomp_port=2, stomp_host=host)
    specs, copies = scenarios.stomp_specs(scenario, params, broker)
    sub, pub = specs
    assert isinstance(sub, loadgen.SubSpec)
    assert isinstance(pub, loadgen.PubSpec)
    assert (copies, params.prefetch, pub.window, sub.prefetch) == (1, 1, 23, 1)
    assert sub.stomp_host == pub.stomp_host == host
    assert (sub.heartbeat, pub.heartbeat) == (0, 0)
    coilmq = system == "coilmq"
    assert sub.ack == ("client" if coilmq else "client-individual")
    assert sub.ack_by == ("message-id" if coilmq else "ack")


# ---------------------------------------------------------------------------- durability


def test_durable_qos1_on_the_gateway_loses_nothing(tmp_path: Path) -> None:
    """The subscriber's session is away while the gateway (mode sync, a fresh data
    directory) acknowledges; every acknowledged message reaches it when it returns."""
    _, run = bench_run(tmp_path, "durable-qos1", "gateway", "--drain", "10")
    assert (run["bench"], run["settings"]["durability"]) == ("durable", "default (sync)")
    assert run["settings"]["data_dir"].startswith(tempfile.gettempdir())
    assert run["acked"] > 0
    assert run["session_present"] is True
    assert run["delivered_per_s"] == 0  # away while publishing
    assert run["lost"] == 0
    assert run["received_distinct"] == run["acked"] == run["expected"]
    assert run["msgs_per_s"] > 0
    assert run["msgs_per_cpu_s"] > 0
    assert 0 < run["puback_p50_ms"] <= run["puback_p99_ms"]
    assert run["store_mb"] > 0  # written to the store


def test_durable_qos1_online_on_gateway_memory(tmp_path: Path) -> None:
    _, run = bench_run(tmp_path, "durable-qos1-online", "gateway-memory", "--drain", "10")
    assert run["settings"]["durability"] == "memory"
    assert run["params"]["lead"] == 1000
    assert run["lost"] == 0
    assert run["delivered_per_s"] > 0
    assert run["received_distinct"] >= run["acked"] > 0


def test_tracked_publishes_carry_their_sequence_numbers() -> None:
    heads, pad = mqttwire.tracked_frames("bench/durable", 64)
    seqs = [5, (3 << mqttwire.SEQ_SHIFT) | 7, 65536]
    frames = b"".join(
        heads[pid] + mqttwire.seq_pack(seq) + pad
        for pid, seq in zip((1, 2, 65535), seqs, strict=True)
    )
    counts = [0] * 16
    replies = bytearray()
    assert mqttwire.scan(frames, 0, counts, mqttwire.SUB_REPLIES_QOS1, replies) == len(frames)
    assert counts[mqttwire.PUBLISH] == 3
    assert replies == b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02" + b"\x40\x02\xff\xff"
    assert mqttwire.publish_stamps(frames, 0, len(frames)) == seqs
    assert len(heads[1]) + 8 + len(pad) == len(
        mqttwire.publish("bench/durable", pad + bytes(8), qos=1, packet_id=1)
    )


def test_puback_ids_keeps_an_incomplete_frame_for_the_next_read() -> None:
    buf = b"\x40\x02\x00\x01" + b"\x40\x02\xff\xfe" + b"\xd0\x00" + b"\x40\x02\x00"
    ids: list[int] = []
    pos, other = mqttwire.puback_ids(buf, 0, ids)
    assert (ids, other, buf[pos:]) == ([1, 65534], 1, b"\x40\x02\x00")


def test_loss_is_acknowledged_and_not_received() -> None:
    acked: dict[int, bytearray] = {}
    received: dict[int, bytearray] = {}
    for n in range(100):
        loadgen.mark(acked, n)
        loadgen.mark(acked, (1 << mqttwire.SEQ_SHIFT) | n)
        if n not in (7, 99):
            loadgen.mark(received, n)
        loadgen.mark(received, (1 << mqttwire.SEQ_SHIFT) | n)
    loadgen.mark(received, 500)  # received and never acknowledged: not a loss
    frozen = {k: bytes(v) for k, v in acked.items()}
    got = {k: bytes(v) for k, v in received.items()}
    assert scenarios._popcount_missing(frozen, got) == 2
    assert scenarios._popcount(got) == 199


def test_durability_tables_and_target() -> None:
    def med(system: str, rate: float, per_cpu: float, p50: float) -> dict[str, Any]:
        return {
            "preset": "durable-qos1",
            "system": system,
            "msgs_per_s": rate,
            "msgs_per_cpu_s": per_cpu,
            "puback_p50_ms": p50,
            "puback_p99_ms": p50 * 4,
            "failed": 0,
            "reps": 3,
        }

    doc = {
        "systems": ["gateway", "gateway-memory", "mosquitto-persist", "rabbitmq-mqtt"],
        "presets": ["durable-qos1"],
        "medians": [
            med("gateway", 40_000, 50_000, 2.0),
            med("gateway-memory", 120_000, 150_000, 0.5),
            med("mosquitto-persist", 80_000, 100_000, 1.0),
            med("rabbitmq-mqtt", 5_000, 5_000, 10.0),
        ],
        "runs": [
            {"preset": "durable-qos1", "system": s, "lost": lost, "expected": 1000}
            for s, lost in [("gateway", 0)] * 3 + [("rabbitmq-mqtt", 1)]
        ],
    }
    table = report.durable_table(doc)
    assert (
        "| `durable-qos1` | gateway (sync, the default) | 40,000 | 50,000 | 2 | 8 | 0 of 3,000 |"
        in table
    )
    ratios = report.durable_ratios(doc).splitlines()
    assert "| `durable-qos1` | gateway / gateway-memory | 0.333x | 0.333x | 4x | 4x |" in ratios
    assert "| `durable-qos1` | gateway / mosquitto-persist | 0.5x | 0.5x | 2x | 2x |" in ratios
    target = report.durable_target(doc)
    assert "lost **0** of 3,000" in target
    assert "**22.7x** (met;" in target  # 50,000 / 2,200
    assert "RabbitMQ lost 1 of 1,000): **10x** per broker CPU second (met)" in target
