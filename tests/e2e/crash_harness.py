"""Crash-test machinery: a gateway process killed with SIGKILL and restarted on the same data
directory, and real clients (paho-mqtt, stomp.py) that live through it on their own threads.

``GatewayProcess`` runs ``python -m gateway run -c FILE`` and reads its JSON log lines on a
thread. The first start binds port 0; restarts reuse the ports it got (falling back to new
ones if something else took them meanwhile), so clients reconnect to a known address.

The clients count only what the gateway acknowledged: an MQTT publish once its PUBACK (QoS 1)
or PUBCOMP (QoS 2) came back with a success code, a STOMP SEND once its RECEIPT arrived.
Receivers record every delivery in arrival order; ``check_delivery`` compares the two.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import stomp
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.paho import PubrecClient

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0
HOST = "127.0.0.1"
# A session that outlives every crash of the test (seconds).
SESSION_EXPIRY = 3600


def wait_until(ready: Callable[[], bool], within: float) -> bool:
    """Poll ``ready`` until it is true (True) or ``within`` seconds have passed (False)."""
    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_quiet(arrivals: list[Any], quiet: float, within: float) -> None:
    """Until nothing has been added to ``arrivals`` for ``quiet`` seconds."""
    deadline = time.monotonic() + within
    count, since = len(arrivals), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if len(arrivals) != count:
            count, since = len(arrivals), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


# -- the gateway process -------------------------------------------------------------------------


class GatewayProcess:
    """The gateway as an operator runs it, on ``directory``; killed and restarted at will."""

    def __init__(self, directory: Path, protocols: Iterable[str], settings: str = "") -> None:
        self.dir = directory
        self.config = directory / "gateway.toml"
        self.data = directory / "data"
        self.ports = dict.fromkeys(protocols, 0)
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.runs: list[list[dict[str, Any]]] = []  # each start's log lines
        self.other_output: list[str] = []  # anything that is not a JSON log line
        self.kills = 0
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def _write_config(self) -> None:
        text = (
            f'[gateway]\ndata_dir = "{self.data}"\nlog_format = "json"\nsys_interval = 0\n'
            f"{self.settings}\n"
        )
        for protocol, port in self.ports.items():
            text += f'\n[[listeners]]\nprotocol = "{protocol}"\nbind = "{HOST}:{port}"\n'
        self.config.write_text(text)

    def _read(self, stream: Any, lines: list[dict[str, Any]]) -> None:
        for raw in stream:
            text = raw.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            with self._cond:
                if isinstance(event, dict):
                    lines.append(event)
                else:
                    self.other_output.append(text)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def start(self) -> dict[str, Any]:
        """Start and wait until it serves; returns its ``store.recovered`` log line."""
        try:
            return self._start()
        except PortTaken:
            self.ports = dict.fromkeys(self.ports, 0)
            return self._start()

    def _start(self) -> dict[str, Any]:
        assert self.process is None, "already running"
        self._write_config()
        lines: list[dict[str, Any]] = []
        self.runs.append(lines)
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.process = process
        self._reader = threading.Thread(target=self._read, args=(process.stdout, lines))
        self._reader.start()
        with self._cond:
            started = self._cond.wait_for(
                lambda: (
                    any(e.get("event") == "gateway.started" for e in lines)
                    or process.poll() is not None
                ),
                WAIT,
            )
        if process.poll() is not None or not started:
            self._reap()
            output = [*lines, *self.other_output[-20:]]
            if process.returncode == 2 and "already in use" in json.dumps(output):
                raise PortTaken()
            raise RuntimeError(f"the gateway did not start (exit {process.returncode}): {output}")
        for event in lines:
            if event.get("event") == "listener.bound":
                self.ports[str(event["protocol"])] = int(str(event["address"]).rsplit(":", 1)[1])
        return next(e for e in lines if e.get("event") == "store.recovered")

    def port(self, protocol: str) -> int:
        return self.ports[protocol]

    def kill(self) -> None:
        """SIGKILL: no drain, no final commit, no lock released by the process itself."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self._reap()
        self.kills += 1

    def stop(self) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self._reap()

    def _reap(self) -> int:
        process, self.process = self.process, None
        assert process is not None
        try:
            code = process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if self._reader is not None:
            self._reader.join(WAIT)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()
        return code

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self._reap()

    def stored(self) -> dict[str, int]:
        """Rows per table of the store (read-only; the gateway is stopped)."""
        db = sqlite3.connect(f"file:{self.data / 'gateway.db'}?mode=ro", uri=True)
        try:
            query = "SELECT name FROM sqlite_master WHERE type='table'"
            tables = [row[0] for row in db.execute(query)]
            return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        finally:
            db.close()

    def events(self, level: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            every = [e for lines in self.runs for e in lines]
        return every if level is None else [e for e in every if e.get("level") == level]


class PortTaken(Exception):
    """The port of the previous run was taken by someone else: start again on new ones."""


# -- MQTT ------------------------------------------------------------------------------------------


def _connect_properties() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY
    return props


class MQTTClient:
    """A paho-mqtt 5 client on a persistent session (clean start off, a long expiry), its
    network loop on paho's thread. After the gateway died, ``lost`` then ``connect`` resume the
    session: paho resends what was not acknowledged (QoS 1 PUBLISH, QoS 2 PUBLISH or PUBREL)."""

    def __init__(self, client_id: str, *, max_inflight: int = 20) -> None:
        self.client_id = client_id
        self.client = PubrecClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.connected = threading.Event()
        self.session_present: list[bool] = []
        self.connects = 0
        # Held while the loop and its sockets change, and by a publisher while it publishes.
        self.lock = threading.RLock()

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self.session_present.append(bool(flags.session_present))
            self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.connected.clear()

    def connect(self, port: int) -> bool:
        """Connect (or reconnect) and wait for the CONNACK; returns the session present flag."""
        with self.lock:
            self._stop_loop()  # the previous connection's, ended with the connection
            self.client.connect(
                HOST, port, keepalive=30, clean_start=False, properties=_connect_properties()
            )
            self.client.loop_start()
        if not self.connected.wait(WAIT):
            raise TimeoutError(f"{self.client_id}: no CONNACK")
        self.connects += 1
        return self.session_present[-1]

    def _stop_loop(self) -> None:
        self.connected.clear()
        self.client.loop_stop()
        # paho leaves its wake-up socket pair (and a dead socket) open after loop_stop.
        self.client._reset_sockets()

    def disconnect(self) -> None:
        """A clean DISCONNECT: the session stays on the server."""
        with self.lock:
            self.client.disconnect()
            self._stop_loop()

    def lost(self) -> None:
        """The gateway died: wait for paho to notice, then stop its loop."""
        with self.lock:
            self._stop_loop()

    def close(self) -> None:
        with self.lock:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            self._stop_loop()


class MQTTPublisher(MQTTClient):
    """Publishes ``name:seq`` to ``topic`` at ``qos`` on its own thread, at most ``window``
    unfinished at a time, whenever connected.

    ``acked()`` is every seq the gateway took responsibility for: its PUBACK (QoS 1) or
    PUBREC (QoS 2) came back with a success code. A QoS 2 exchange then ends with the
    PUBCOMP; one whose PUBCOMP a crash cut off ends after the reconnect, with 0x92 (packet
    identifier not found) when the gateway had committed the release. (paho tells by packet
    id: ids are not reused below 65535 publishes.)"""

    def __init__(self, name: str, topic: str, qos: int, *, window: int = 20) -> None:
        super().__init__(name, max_inflight=window)
        self.name = name
        self.topic = topic
        self.qos = qos
        self.window = window
        self.sent = 0
        self._seq_of: dict[int, int] = {}
        self._done: dict[int, int] = {}  # packet id -> reason code
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client.on_publish = self._on_publish

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._done[mid] = int(reason.value) if reason is not None else 0

    def outstanding(self) -> int:
        return self.sent - len(self._done)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"publisher {self.name}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.connected.is_set() or self.outstanding() >= self.window:
                time.sleep(0.002)
                continue
            with self.lock:
                if not self.connected.is_set():
                    continue
                seq = self.sent
                payload = f"{self.name}:{seq}".encode()
                info = self.client.publish(self.topic, payload, qos=self.qos)
                self._seq_of[info.mid] = seq
                self.sent += 1
            assert self.sent < 65000, "paho would reuse packet ids"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT)

    def acked(self) -> set[int]:
        codes = self.client.pubrec_reasons if self.qos == 2 else self._done
        return {self._seq_of[mid] for mid, code in codes.items() if code < 0x80}

    def refused(self) -> int:
        """Publishes the gateway refused (a failure PUBACK or PUBREC)."""
        codes = self.client.pubrec_reasons if self.qos == 2 else self._done
        return sum(1 for code in codes.values() if code >= 0x80)

    def completed_late(self) -> int:
        """QoS 2 exchanges ended by a PUBCOMP 0x92: the PUBREL resent after a crash found the
        exchange already finished."""
        return sum(1 for code in self._done.values() if code == 0x92) if self.qos == 2 else 0


@dataclass(frozen=True)
class Arrival:
    sender: str
    seq: int
    qos: int = 1
    redelivered: bool = False


class MQTTSubscriber(MQTTClient):
    """Records every message in arrival order; paho acknowledges them (PUBACK, or PUBREC and
    PUBCOMP, passing a QoS 2 message on at the PUBREL)."""

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.arrivals: list[Arrival] = []
        self.client.on_message = self._on_message

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        sender, seq = message.payload.decode().split(":")
        self.arrivals.append(Arrival(sender, int(seq), message.qos, bool(message.dup)))

    def subscribe(self, topic_filter: str, qos: int) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic_filter, qos=qos)
        if not done.wait(WAIT):
            raise TimeoutError("no SUBACK")


# -- STOMP -----------------------------------------------------------------------------------------


class _StompListener(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self, owner: StompClient) -> None:
        self.owner = owner

    def on_connected(self, frame: Any) -> None:
        self.owner.connected.set()

    def on_receipt(self, frame: Any) -> None:
        self.owner.on_receipt(frame.headers["receipt-id"])

    def on_message(self, frame: Any) -> None:
        self.owner.on_message(frame)

    def on_error(self, frame: Any) -> None:
        self.owner.errors.append(dict(frame.headers))

    def on_disconnected(self) -> None:
        self.owner.connected.clear()


class StompClient:
    """One stomp.py 1.2 connection at a time: ``connect`` makes a new one after a crash."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn: Any = None
        self.connected = threading.Event()
        self.errors: list[dict[str, str]] = []
        self.connects = 0

    def connect(self, port: int) -> None:
        self.drop()
        conn = stomp.Connection12(
            [(HOST, port)],
            auto_decode=False,
            reconnect_attempts_max=1,
            try_loopback_connect=False,
            timeout=WAIT,
            vhost="/",
        )
        conn.set_listener("crash", _StompListener(self))
        self.connected.clear()
        conn.connect(wait=False)
        if not self.connected.wait(WAIT):
            raise TimeoutError(f"{self.name}: no CONNECTED")
        self.conn = conn
        self.connects += 1

    def drop(self) -> None:
        """Release the connection (dead after a crash) and stomp.py's receiver thread."""
        conn, self.conn = self.conn, None
        self.connected.clear()
        if conn is None:
            return
        conn.transport.running = False
        with contextlib.suppress(Exception):
            conn.transport.disconnect_socket()
        thread = getattr(conn.transport, "io_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(WAIT)

    def disconnect(self) -> None:
        """DISCONNECT with a receipt, then close."""
        conn = self.conn
        if conn is not None and self.connected.is_set():
            done = threading.Event()
            self._awaited = (f"{self.name}-bye-{self.connects}", done)
            with contextlib.suppress(Exception):
                conn.send_frame("DISCONNECT", {"receipt": self._awaited[0]})
                done.wait(WAIT)
        self.drop()

    # The receipt a call waits for (SUBSCRIBE, DISCONNECT) and the event it sets.
    _awaited: tuple[str, threading.Event] | None = None

    def on_receipt(self, receipt: str) -> None:
        pending = self._awaited
        if pending is not None and pending[0] == receipt:
            pending[1].set()

    def on_message(self, frame: Any) -> None:  # pragma: no cover - producers get none
        pass


class StompProducer(StompClient):
    """SENDs ``name:seq`` (persistent, with a receipt) to ``destination`` on its own thread,
    at most ``window`` unreceipted at a time; ``acked()`` is every seq whose RECEIPT came."""

    def __init__(self, name: str, destination: str, *, window: int = 20) -> None:
        super().__init__(name)
        self.destination = destination
        self.window = window
        self.sent = 0
        self._receipted: set[int] = set()
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_receipt(self, receipt: str) -> None:
        prefix = f"{self.name}-"
        if receipt.startswith(prefix) and receipt[len(prefix) :].isdigit():
            seq = int(receipt[len(prefix) :])
            with self._lock:
                self._receipted.add(seq)
                self._pending.discard(seq)
        else:
            super().on_receipt(receipt)

    def connect(self, port: int) -> None:
        self.drop()  # the sending thread idles until the new connection is there
        with self._lock:
            self._pending.clear()  # lost with the old connection: only new SENDs count now
        super().connect(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"producer {self.name}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = self.conn
            with self._lock:
                busy = len(self._pending) >= self.window
            if conn is None or not self.connected.is_set() or busy:
                time.sleep(0.002)
                continue
            seq = self.sent
            with self._lock:
                self._pending.add(seq)
            self.sent += 1
            try:
                conn.send(
                    self.destination,
                    f"{self.name}:{seq}".encode(),
                    headers={"persistent": "true", "receipt": f"{self.name}-{seq}"},
                )
            except Exception:  # the gateway died under us: that SEND simply is not receipted
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT)

    def acked(self) -> set[int]:
        with self._lock:
            return set(self._receipted)


class StompConsumer(StompClient):
    """Subscribes with ``ack:client-individual`` and ACKs (with a receipt) each MESSAGE after
    recording it."""

    def __init__(self, name: str, destination: str, *, prefetch: int = 100) -> None:
        super().__init__(name)
        self.destination = destination
        self.prefetch = prefetch
        self.arrivals: list[Arrival] = []
        self.acks = 0

    def subscribe(self) -> None:
        done = threading.Event()
        receipt = f"{self.name}-sub-{self.connects}"
        self._awaited = (receipt, done)
        self.conn.subscribe(
            self.destination,
            id="crash",
            ack="client-individual",
            headers={"receipt": receipt, "prefetch-count": str(self.prefetch)},
        )
        if not done.wait(WAIT):
            raise TimeoutError("no receipt for SUBSCRIBE")

    def on_message(self, frame: Any) -> None:
        sender, seq = frame.body.decode().split(":")
        redelivered = frame.headers.get("redelivered") == "true"
        self.arrivals.append(Arrival(sender, int(seq), 1, redelivered))
        conn = self.conn
        if conn is None:
            return
        ack_id = frame.headers["ack"]
        with contextlib.suppress(Exception):  # the gateway may be dying: it comes again
            conn.ack(ack_id, receipt=f"{self.name}-ack-{ack_id}")
            self.acks += 1


# -- the verdict -----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What one sender's messages became."""

    sender: str
    sent: int
    acked: int
    received: int  # distinct seqs
    lost: list[int] = field(default_factory=list)  # acknowledged, never received
    duplicates: int = 0  # arrivals after the first of the same seq
    flagged: int = 0  # of those, how many were marked (MQTT DUP, STOMP redelivered)
    repeated: list[int] = field(default_factory=list)  # the seqs that came more than once
    out_of_order: list[tuple[int, int]] = field(default_factory=list)  # (before, after) firsts
    unknown: list[int] = field(default_factory=list)  # received, never sent


def check_delivery(sent: int, acked: set[int], arrivals: list[Arrival], sender: str) -> Verdict:
    """Every acknowledged seq received at least once; first arrivals in increasing order.

    At-least-once delivery may repeat a message (a resend whose first copy was stored, a
    redelivery whose acknowledgement was lost in the crash), so "order is kept" is judged on
    first arrivals: the sequence of seqs as each is first seen must increase.
    """
    seen: set[int] = set()
    firsts: list[int] = []
    repeats: list[Arrival] = []
    for arrival in arrivals:
        if arrival.sender != sender:
            continue
        if arrival.seq in seen:
            repeats.append(arrival)
        else:
            seen.add(arrival.seq)
            firsts.append(arrival.seq)
    return Verdict(
        sender=sender,
        sent=sent,
        acked=len(acked),
        received=len(seen),
        lost=sorted(acked - seen),
        duplicates=len(repeats),
        flagged=sum(1 for a in repeats if a.redelivered),
        repeated=sorted({a.seq for a in repeats}),
        out_of_order=[(a, b) for a, b in itertools.pairwise(firsts) if b <= a],
        unknown=sorted(s for s in seen if s >= sent),
    )
