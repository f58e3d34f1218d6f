"""``gateway ctl`` (docs/admin.md) as a subprocess against a running gateway: tables, --json,
kick, purge, move, and the exit codes (1: the gateway refused, 2: it cannot be reached)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, running_gateway
from tests.e2e.test_admin_api import ADMIN, PLAIN, mqtt5, publish, write_config
from tests.listeners.test_http_wire import wait_until


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = config_mod.load(write_config(tmp_path))
    async with running_gateway(nursery, config) as gateway:
        yield gateway


async def ctl(
    gw: Gateway | None,
    *args: str,
    user: tuple[str, str] | None = ADMIN,
    env: dict[str, str] | None = None,
    url: str | None = None,
) -> Run:
    """``python -m gateway ctl [--url] [--user --password] ARGS``."""
    argv = [sys.executable, "-m", "gateway", "ctl"]
    if url is None:
        assert gw is not None
        url = f"http://127.0.0.1:{gw.port('http')}"
    argv += ["--url", url]
    if user is not None:
        argv += ["--user", user[0], "--password", user[1]]
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_ADMIN")
    }
    environment.update(env or {})
    with trio.fail_after(NET_TIMEOUT):
        done: subprocess.CompletedProcess[bytes] = await trio.run_process(
            [*argv, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=environment,
        )
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def columns(table: str) -> list[dict[str, str]]:
    """The rows of an aligned table, by header (a column starts where its header does)."""
    header, *lines = table.splitlines()
    names = header.split()
    starts: list[int] = []
    for name in names:
        starts.append(header.index(name, starts[-1] + 1 if starts else 0))
    rows = []
    for line in lines:
        cells = [
            line[start : starts[i + 1] if i + 1 < len(starts) else None].strip()
            for i, start in enumerate(starts)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


async def test_queues_table_and_json(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for i in range(2):
            await publish(gw, "work", b"job-%d" % i)
        run = await ctl(gw, "queues")
        assert run.code == 0, run.err
        rows = {row["NAME"]: row for row in columns(run.out)}
        assert rows["work"]["DEPTH"] == "2"
        assert rows["jobs"]["DEAD_LETTER"] == "jobs.dlq"
        assert rows["work"]["DEAD_LETTER"] == "-"

        for argv in (("--json", "queues"), ("queues", "--json")):
            run = await ctl(gw, *argv)
            assert run.code == 0, run.err
            queues = {q["name"]: q for q in json.loads(run.out)["queues"]}
            assert queues["work"]["depth"] == 2

        run = await ctl(gw, "peek", "work", "-n", "1")
        assert run.code == 0, run.err
        [message] = columns(run.out)
        assert message["PAYLOAD"] == "job-0"


async def test_purge_and_move(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for i in range(3):
            await publish(gw, "work", b"job-%d" % i)
        run = await ctl(gw, "move", "work", "--to", "parked")
        assert (run.code, run.out.strip()) == (0, "moved 3 message(s) from work to parked")
        assert gw.broker.queues["parked"].depth == 3
        run = await ctl(gw, "purge", "parked")
        assert (run.code, run.out.strip()) == (0, "purged 3 message(s) from parked")
        assert gw.broker.queues["parked"].depth == 0


async def test_kick(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        device = await mqtt5(gw, "kick-cli")
        try:
            run = await ctl(gw, "connections")
            rows = {row["CLIENT_ID"]: row for row in columns(run.out)}
            assert rows["kick-cli"]["USER"] == "alice"
            assert rows["kick-cli"]["PROTOCOL"] == "mqtt"
            run = await ctl(gw, "kick", "kick-cli")
            assert run.code == 0, run.err
            assert run.out.strip() == f"kicked connection {rows['kick-cli']['ID']}"
            await trio.to_thread.run_sync(device.disconnected.wait, 10)
            assert device.disconnect_reason.value == 0x98
            await wait_until(lambda: "kick-cli" not in gw.broker.sessions)  # expiry 0: gone
        finally:
            await device.close()


async def test_every_reading_command_answers(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for command in (
            "overview", "connections", "sessions", "topics", "retained", "bridges", "listeners",
        ):  # fmt: skip
            run = await ctl(gw, command)
            assert run.code == 0, (command, run.err)
            assert run.out.strip(), command
        run = await ctl(gw, "listeners")
        names = {row["NAME"]: row for row in columns(run.out)}
        assert names["http"]["ADDRESS"] == f"127.0.0.1:{gw.port('http')}"
        run = await ctl(gw, "config")
        assert json.loads(run.out)["bridges"][0]["url"] == "amqp://guest:***@127.0.0.1:1/"
        run = await ctl(gw, "pause", "up")
        assert (run.code, run.out.strip()) == (0, "bridge up: paused")
        run = await ctl(gw, "resume", "up")
        assert run.code == 0
        run = await ctl(gw, "reload")
        assert (run.code, run.out.splitlines()[0]) == (0, "reloaded"), run.err


async def test_credentials_from_the_environment(gw: Gateway) -> None:
    env = {"GATEWAY_ADMIN_USER": ADMIN[0], "GATEWAY_ADMIN_PASSWORD": ADMIN[1]}
    run = await ctl(gw, "overview", user=None, env=env)
    assert run.code == 0, run.err
    assert run.out.startswith("version")


async def test_errors_exit_1_with_the_message_unreachable_2(gw: Gateway) -> None:
    run = await ctl(gw, "purge", "nope")
    assert run.code == 1
    assert run.err.strip() == "gateway ctl: 404 unknown_queue: queue 'nope' does not exist"
    assert run.out == ""
    run = await ctl(gw, "queues", user=None)
    assert (run.code, run.err.split(":")[1].strip()) == (1, "401 unauthorized")
    run = await ctl(gw, "queues", user=PLAIN)
    assert (run.code, run.err.split(":")[1].strip()) == (1, "403 forbidden")
    run = await ctl(gw, "queues", user=(ADMIN[0], "wrong"))
    assert run.code == 1
    run = await ctl(gw, "kick", "nobody")
    assert (run.code, run.err.split(":")[1].strip()) == (1, "404 not_found")
    run = await ctl(None, "queues", url="http://127.0.0.1:1")
    assert run.code == 2
    assert run.err.startswith("gateway ctl: cannot reach http://127.0.0.1:1")
