"""The `gateway` command as a user runs it: a real subprocess, real signals, exit codes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.conftest import NET_TIMEOUT
from tests.rawmqtt import RawClient

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


class Running:
    """A gateway subprocess whose JSON log lines are read as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, object]] = []
        self._buf = b""

    async def next_event(self) -> dict[str, object]:
        assert self.process.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise EOFError(f"gateway exited; output so far: {self.lines}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        event: dict[str, object] = json.loads(line)
        self.lines.append(event)
        return event

    async def wait_for(self, name: str) -> dict[str, object]:
        while (event := await self.next_event())["event"] != name:
            pass
        return event


async def start(*args: str, cwd: Path = ROOT) -> Running:
    process = await trio.lowlevel.open_process(
        [*GATEWAY, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd
    )
    return Running(process)


@pytest.mark.slow
async def test_run_serves_mqtt_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with trio.fail_after(NET_TIMEOUT):
        gw = await start(
            "run",
            "-c",
            "conf/gateway.toml",
            "--listen",
            "mqtt=127.0.0.1:0",
            # The default STOMP port (61613) may be taken, e.g. by RabbitMQ's STOMP plugin.
            "--listen",
            "stomp=127.0.0.1:0",
            "--listen",
            "http=127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        )
        try:
            bound = await gw.wait_for("listener.bound")
            assert bound["protocol"] == "mqtt"
            assert bound["tls"] is False
            host, port = str(bound["address"]).rsplit(":", 1)
            assert host == "127.0.0.1"
            assert int(port) > 0
            await gw.wait_for("gateway.started")

            client = await RawClient.open(int(port))
            ack = await client.connect("cli-test")
            assert ack.return_code == 0
            gw.process.send_signal(signal.SIGTERM)
            await gw.wait_for("gateway.stopped")
            # The open connection was drained and closed, not left hanging.
            assert await client.receive_until_closed() == []
            await client.aclose()
            assert await gw.process.wait() == 0
        finally:
            gw.process.kill()


@pytest.mark.slow
async def test_sigint_also_stops_with_exit_0(tmp_path: Path) -> None:
    with trio.fail_after(NET_TIMEOUT):
        gw = await start(
            "run",
            "--listen",
            "mqtt=127.0.0.1:0",
            "--listen",
            "stomp=127.0.0.1:0",
            "--listen",
            "http=127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        )
        try:
            await gw.wait_for("gateway.started")
            gw.process.send_signal(signal.SIGINT)
            assert await gw.process.wait() == 0
        finally:
            gw.process.kill()


async def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1:0"\nmax_packet_sise = 10\n')
    with trio.fail_after(NET_TIMEOUT):
        for command in ("run", "check-config"):
            result = await trio.run_process(
                [*GATEWAY, command, "-c", str(bad)],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
            assert result.returncode == 2
            assert result.stdout == b""  # refused before any listener was bound
            message = result.stderr.decode()
            assert f"{bad}: listeners[0].max_packet_sise: unknown key" in message


async def test_port_in_use_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(NET_TIMEOUT):
            result = await trio.run_process(
                [
                    *GATEWAY,
                    "run",
                    "--listen",
                    f"mqtt=127.0.0.1:{port}",
                    "--listen",
                    "stomp=127.0.0.1:0",
                    "--listen",
                    "http=127.0.0.1:0",
                    "--data-dir",
                    str(tmp_path),
                ],
                check=False,
                capture_stdout=True,
                capture_stderr=True,
            )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr.decode()


async def test_check_config_and_version(tmp_path: Path) -> None:
    with trio.fail_after(NET_TIMEOUT):
        ok = await trio.run_process(
            [*GATEWAY, "check-config", "-c", "conf/gateway.toml"], cwd=ROOT, capture_stdout=True
        )
        assert b"conf/gateway.toml: OK" in ok.stdout
        version = await trio.run_process([*GATEWAY, "version"], capture_stdout=True)
        assert version.stdout.startswith(b"gateway ")
