"""The durable store's safety rules, end to end: one gateway per data directory,
damaged or newer databases refused at start (exit 2, the path named, the file left
alone), recovery logged with counts, and a full disk turned into refusals that
publishers of every protocol see, with traffic resuming once space comes back."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.codecs import mqtt
from gateway.codecs.mqtt import ReasonCode
from gateway.core import Message
from gateway.store import sqlite as sqlite_mod
from gateway.store.base import StoredEntry
from gateway.store.sqlite import SQLiteStore
from tests.conftest import NET_TIMEOUT, gateway_toml, listeners_toml
from tests.rawmqtt import RawClient

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml(tmp_path, sys_interval=0) + listeners_toml("mqtt"))
    return path


class Running:
    """A gateway subprocess whose JSON log lines are read as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict[str, object]] = []
        self._buf = b""

    async def wait_for(self, name: str) -> dict[str, object]:
        assert self.process.stdout is not None
        while True:
            while b"\n" not in self._buf:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise EOFError(f"gateway exited; output so far: {self.lines}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            event: dict[str, object] = json.loads(line)
            self.lines.append(event)
            if event["event"] == name:
                return event

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.process.wait()


async def start(config: Path) -> Running:
    process = await trio.lowlevel.open_process(
        [*GATEWAY, "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return Running(process)


async def run_to_exit(config: Path) -> tuple[int, str]:
    """Run the gateway expecting it to stop by itself; returns its exit code and stderr."""
    result = await trio.run_process(
        [*GATEWAY, "run", "-c", str(config)],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, result.stderr.decode()


def port_of(event: dict[str, object]) -> int:
    return int(str(event["address"]).rsplit(":", 1)[1])


# -- one gateway per data directory, recovery logged ----------------------------------------


@pytest.mark.slow
async def test_a_second_gateway_on_the_same_data_directory_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with trio.fail_after(NET_TIMEOUT):
        first = await start(config)
        try:
            recovered = await first.wait_for("store.recovered")
            assert recovered["path"] == str(tmp_path / "data" / "gateway.db")
            assert recovered["sessions"] == 0
            assert isinstance(recovered["seconds"], float | int)
            await first.wait_for("gateway.started")

            code, stderr = await run_to_exit(config)
            assert code == 2
            assert stderr.startswith("gateway: cannot start: ")
            assert f"the data directory {tmp_path / 'data'} is in use by another gateway" in stderr
            assert f"pid {first.process.pid}" in stderr
            assert stderr.count("\n") == 1  # one line, no traceback
            assert await first.stop() == 0
        finally:
            first.process.kill()
        # Released at exit: the next one starts.
        again = await start(config)
        try:
            await again.wait_for("gateway.started")
            assert await again.stop() == 0
        finally:
            again.process.kill()


@pytest.mark.slow
async def test_a_restart_logs_what_it_recovered_and_delivers_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with trio.fail_after(NET_TIMEOUT):
        first = await start(config)
        try:
            port = port_of(await first.wait_for("listener.bound"))
            await first.wait_for("gateway.started")
            client = await RawClient.open(port)
            await client.connect("producer")
            for i in range(3):
                await client.send(
                    mqtt.Publish(topic="$queue/jobs", payload=b"job %d" % i, qos=1, packet_id=i + 1)
                )
                assert await client.receive() == mqtt.PubAck(packet_id=i + 1)
            await client.aclose()
            assert await first.stop() == 0
        finally:
            first.process.kill()

        second = await start(config)
        try:
            recovered = await second.wait_for("store.recovered")
            assert (recovered["queues"], recovered["messages"]) == (1, 3)
            port = port_of(await second.wait_for("listener.bound"))
            await second.wait_for("gateway.started")
            client = await RawClient.open(port)
            await client.connect("worker")
            await client.send(mqtt.Subscribe(packet_id=1, subscriptions=(("$queue/jobs", 1),)))
            assert isinstance(await client.receive(), mqtt.SubAck)
            got = []
            for _ in range(3):
                publish = await client.receive()
                assert isinstance(publish, mqtt.Publish)
                got.append(publish.payload)
            assert got == [b"job 0", b"job 1", b"job 2"]
            await client.aclose()
            assert await second.stop() == 0
        finally:
            second.process.kill()


@pytest.mark.slow
async def test_unacknowledged_stomp_messages_come_back_redelivered(tmp_path: Path) -> None:
    config = config_mod.loads(
        gateway_toml(tmp_path, sys_interval=0) + listeners_toml("stomp"), "stomp.toml"
    )
    with trio.fail_after(NET_TIMEOUT):
        async with trio.open_nursery() as nursery:
            gw = Gateway(config)
            await nursery.start(gw.run)
            producer = await RawStomp.connect(gw.port("stomp"))
            for i in range(2):
                await producer.send(
                    "SEND",
                    {"destination": "/queue/work", "persistent": "true", "receipt": f"s{i}"},
                    b"task %d" % i,
                )
                assert (await producer.receive())[0] == "RECEIPT"
            consumer = await RawStomp.connect(gw.port("stomp"))
            await consumer.send(
                "SUBSCRIBE", {"destination": "/queue/work", "id": "1", "ack": "client-individual"}
            )
            first = await consumer.receive()
            second = await consumer.receive()
            assert first[1]["redelivered"] == "false"
            await consumer.send("ACK", {"id": first[1]["ack"], "receipt": "a1"})
            assert (await consumer.receive())[0] == "RECEIPT"
            assert second[2] == b"task 1"  # received, never acknowledged
            await producer.stream.aclose()
            await consumer.stream.aclose()
            gw.stop()

        async with trio.open_nursery() as nursery:
            gw = Gateway(config)
            await nursery.start(gw.run)
            consumer = await RawStomp.connect(gw.port("stomp"))
            await consumer.send("SUBSCRIBE", {"destination": "/queue/work", "id": "1"})
            command, headers, body = await consumer.receive()
            assert (command, body) == ("MESSAGE", b"task 1")
            assert headers["redelivered"] == "true"
            assert headers["x-delivery-count"] == "2"
            await consumer.stream.aclose()
            gw.stop()


# -- damaged and newer databases ------------------------------------------------------------


def _written_store(data: Path) -> Path:
    store = SQLiteStore(data)
    store.open()
    for i in range(100):
        m = Message(destination="jobs", payload=bytes([i]) * 300, qos=1)
        store.enqueue("jobs", m, StoredEntry(message_id=m.message_id, qos=1), wait=True)
    batch = store.take_batch()
    assert batch is not None
    store.commit(batch)
    store.committed(batch, ok=True)
    store.close()
    return data / "gateway.db"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
async def test_a_damaged_database_is_refused_with_its_path(tmp_path: Path, damage: str) -> None:
    config = write_config(tmp_path)
    db = _written_store(tmp_path / "data")
    data = bytearray(db.read_bytes())
    if damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "truncated":
        data = data[: len(data) * 2 // 3]
    else:  # bytes of a stored message: SQLite's own check does not see it
        at = data.index(bytes([42]) * 300) + 150
        data[at : at + 2] = bytes(b ^ 0x5A for b in data[at : at + 2])
    db.write_bytes(bytes(data))
    before = _digest(db)
    with trio.fail_after(NET_TIMEOUT):
        code, stderr = await run_to_exit(config)
    assert code == 2
    assert stderr.startswith("gateway: cannot start: ")
    assert str(db) in stderr
    assert "left as it is" in stderr
    assert "Traceback" not in stderr
    assert _digest(db) == before  # never repaired, replaced or emptied


@pytest.mark.slow
async def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db_path = _written_store(tmp_path / "data")
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    before = _digest(db_path)
    with trio.fail_after(NET_TIMEOUT):
        code, stderr = await run_to_exit(config)
    assert code == 2
    assert f"the store {db_path} was written by a newer gateway (schema 7" in stderr
    assert _digest(db_path) == before


# -- disk full ------------------------------------------------------------------------------


class RawStomp:
    """A bare STOMP 1.2 client: frames as bytes, no library in between."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, port: int) -> RawStomp:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.send("CONNECT", {"accept-version": "1.2", "host": "/"})
        command, _, _ = await client.receive()
        assert command == "CONNECTED"
        return client

    async def send(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        head = "".join(f"{k}:{v}\n" for k, v in headers.items())
        await self.stream.send_all(f"{command}\n{head}\n".encode() + body + b"\x00")

    async def receive(self) -> tuple[str, dict[str, str], bytes]:
        while b"\x00" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        frame, self.buf = self.buf.split(b"\x00", 1)
        head, _, body = frame.lstrip(b"\r\n").partition(b"\n\n")
        command, *lines = head.decode().split("\n")
        return command, dict(line.split(":", 1) for line in lines if line), body


async def http_post(port: int, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    await stream.send_all(request + body)
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload) if payload else {}


async def mqtt_publish(client: RawClient, pid: int, payload: bytes) -> int:
    """A QoS 1 publish to $queue/jobs; returns the PUBACK's reason code."""
    await client.send(mqtt.Publish(topic="$queue/jobs", payload=payload, qos=1, packet_id=pid))
    ack = await client.receive()
    assert isinstance(ack, mqtt.PubAck), ack
    return ack.reason_code


async def drain(port: int, count: int) -> None:
    """A worker takes ``count`` jobs and acknowledges each: their rows go, space returns."""
    worker = await RawClient.open(port)
    await worker.connect("worker", protocol_level=5)
    await worker.send(mqtt.Subscribe(packet_id=1, subscriptions=(("$queue/jobs", 1),)))
    assert isinstance(await worker.receive(), mqtt.SubAck)
    for _ in range(count):
        publish = await worker.receive()
        assert isinstance(publish, mqtt.Publish), publish
        if publish.packet_id is not None:  # QoS 0 messages need no acknowledgement
            await worker.send(mqtt.PubAck(packet_id=publish.packet_id))
    await worker.send(mqtt.Disconnect())
    await worker.aclose()


async def until_available(gw: Gateway) -> None:
    while not gw.broker.store.available:  # noqa: ASYNC110  (the writer retries on its own)
        await trio.sleep(0.05)


@pytest.mark.slow
async def test_disk_full_refuses_publishers_of_every_protocol_then_traffic_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "RETRY_INTERVAL", 0.1)
    config = config_mod.loads(
        gateway_toml(tmp_path, sys_interval=0, store_max_size=131072)
        + listeners_toml("mqtt", "stomp", "http"),
        "full.toml",
    )
    gw = Gateway(config)
    job = os.urandom(2000)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(NET_TIMEOUT * 2):
            await nursery.start(gw.run)
            mqtt_port, stomp_port, http_port = (gw.port(p) for p in ("mqtt", "stomp", "http"))

            # 1. HTTP ?ack=stored: 201 while the commits fit, then 507 for the one that fails.
            stored = 0
            while True:
                status, body = await http_post(http_port, "/api/v1/queues/jobs?ack=stored", job)
                if status != 201:
                    break
                assert body["durable"] is True
                stored += 1
            assert stored > 3
            assert status == 507
            assert body["error"] == "not_stored"
            assert not gw.broker.store.available
            assert gw.readiness()["store_available"] is False

            # 2. While the store cannot write, persistent publishes are refused at once.
            publisher = await RawClient.open(mqtt_port)
            await publisher.connect("publisher", protocol_level=5)
            assert await mqtt_publish(publisher, 1, job) == ReasonCode.QUOTA_EXCEEDED  # 0x97
            stomp = await RawStomp.connect(stomp_port)
            await stomp.send(
                "SEND", {"destination": "/queue/jobs", "persistent": "true", "receipt": "r1"}, job
            )
            command, headers, detail = await stomp.receive()
            assert command == "ERROR"
            assert headers["receipt-id"] == "r1"
            assert b"store-unavailable" in headers["message"].encode() + detail
            await stomp.stream.aclose()
            status, body = await http_post(http_port, "/api/v1/queues/jobs", job)
            assert status == 503
            assert "store-unavailable" in str(body)
            # QoS 0 / non-persistent messages never touch the disk: they still flow.
            await publisher.send(mqtt.Publish(topic="$queue/jobs", payload=b"q0", qos=0))

            # 3. A worker takes the jobs: its acks free the space, the held batch (the job
            # whose commit failed included) is written, and publishing works again.
            await drain(mqtt_port, stored + 2)  # + the 507 one, + the QoS 0 one
            await until_available(gw)
            assert await mqtt_publish(publisher, 2, job) == 0

            # 4. The same through MQTT: the publish whose commit fails gets 0x80, the
            # next ones 0x97 until space returns.
            codes = []
            pid = 3
            while not codes or codes[-1] == 0:
                codes.append(await mqtt_publish(publisher, pid, job))
                pid += 1
            assert codes[-1] == ReasonCode.UNSPECIFIED_ERROR  # 0x80
            assert await mqtt_publish(publisher, pid, job) == ReasonCode.QUOTA_EXCEEDED
            await drain(mqtt_port, len(codes) + 1)
            await until_available(gw)
            assert await mqtt_publish(publisher, pid + 1, job) == 0
            await publisher.aclose()
        gw.stop()
