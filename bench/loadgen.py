"""Load generator workers: one OS process per publisher, subscriber or idle-connection holder.

Started with multiprocessing's ``spawn`` by :class:`WorkerGroup`. Every worker speaks raw
MQTT 3.1.1 over a plain TCP socket with :mod:`bench.mqttwire` (STOMP workers: STOMP 1.2
with :mod:`bench.stompwire`); nothing imports the gateway.

Coordination is through shared memory (no locks: each slot has one writer):

- ``ctl[T0]``: the start time (``time.monotonic_ns``) that every worker counts from;
  ``ctl[STOP]``: set by the orchestrator when subscribers may stop reading;
  ``ctl[CHECK]``: idle holders count their still-open connections and leave;
  ``ctl[DEADLINE]``: a hard end, past which every worker leaves whatever it is doing;
  ``ctl[RESUME]``: offline subscribers (``SubSpec.offline``) reconnect to their session.
- ``counters[i]``: worker ``i``'s running figure (publishes written, PUBLISH frames
  received, or connections held), read by the orchestrator and by closed-loop publishers;
  ``acked[i]``: a tracked publisher's PUBACKs.
- ``state[i]``: 0 starting, 1 ready, 2 done (idle: all connections opened; tracked
  publishers: their last PUBACK is in), 3 (offline subscribers) reconnected, -1 failed.

Publishers send for ``warmup + seconds`` after ``T0`` and stop by themselves; closed-loop
publishers also keep the messages published but not yet received by every subscriber
under ``window`` (per subscriber copy), so the figure is a sustained rate rather than a
queue filling up; open-loop ones (``flood``) do not.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import resource
import select
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import RawArray
from typing import Any

from . import mqttwire as w
from . import stompwire as sw

T0, STOP, CHECK, DEADLINE, RESUME = 0, 1, 2, 3, 4
RECV_SIZE = 1 << 18
MAX_SAMPLES = 200_000
STALL_NS = 500_000_000  # a closed-loop publisher writes off a gap that has not moved for this
# A reader that got less than COALESCE_BELOW bytes sleeps this long before reading again,
# so that a broker writing frame by frame does not cost the generator a wake-up per frame.
# (Not in the latency scenario.) QoS 1/2 readers have answered before they sleep.
COALESCE_BELOW = 16384
SUB_COALESCE = {0: 0.002, 1: 0.0002, 2: 0.0002}
PUB_COALESCE = 0.0002
STOMP_VHOST = "/"  # the CONNECT host header (RabbitMQ's virtual host); coilmq: its FQDN


@dataclass(frozen=True)
class PubSpec:
    host: str
    port: int
    client_id: str
    topics: tuple[str, ...]
    qos: int = 0
    payload_size: int = 64
    window: int = 5000  # closed loop: unreceived publishes per copy; QoS 1/2: also unacked
    open_loop: bool = False
    rate: float = 0.0  # messages per second; 0 = as fast as allowed
    copies: int = 1  # deliveries expected per publish (for the closed-loop lead)
    batch_bytes: int = 65536
    warmup: float = 1.0
    seconds: float = 5.0
    kind: str = "pub"
    proto: str = "mqtt"  # "stomp": topics[0] is the destination; SEND frames
    stomp_headers: tuple[tuple[str, str], ...] = ()  # extra SEND headers
    stomp_host: str = STOMP_VHOST  # the CONNECT host header
    heartbeat: int = 0  # STOMP: the client's heart-beat offer cx, ms (cy is always 0)
    # Tracked QoS 1 (durability scenarios): each payload starts with a sequence number
    # (``pub_no`` in its top bits), each PUBLISH is time-stamped and its PUBACK matched by
    # packet id; ``lead`` bounds the messages not yet received (0: ``window``), unless
    # ``open_loop`` (then only ``window`` unacknowledged publishes bound it).
    track: bool = False
    pub_no: int = 0
    lead: int = 0


@dataclass(frozen=True)
class SubSpec:
    host: str
    port: int
    client_id: str
    filters: tuple[str, ...]
    qos: int = 0
    sample: str = "first"  # latency samples: "first" frame of each read, "all", "none"
    warmup: float = 1.0
    seconds: float = 5.0
    kind: str = "sub"
    proto: str = "mqtt"  # "stomp": filters[0] is the destination
    ack: str = "auto"  # STOMP: auto or client-individual (ACK each MESSAGE)
    prefetch: int = 0  # STOMP: prefetch-count (0: not sent)
    stomp_headers: tuple[tuple[str, str], ...] = ()  # extra SUBSCRIBE headers
    stomp_host: str = STOMP_VHOST  # the CONNECT host header
    heartbeat: int = 0  # STOMP: the client's heart-beat offer cx, ms (cy is always 0)
    # STOMP ACKs: "ack" (1.2: id = the MESSAGE's ack header) or "message-id" (coilmq,
    # whose MESSAGE has no ack header: id = the subscription, plus message-id)
    ack_by: str = "ack"
    # MQTT sessions: clean session 0 (``clean=False``) keeps the session across connections;
    # ``offline``: subscribe, DISCONNECT, and reconnect (clean session 0) at ``ctl[RESUME]``;
    # ``seqs``: record the sequence numbers of tracked publishes (``PubSpec.track``).
    clean: bool = True
    offline: bool = False
    seqs: bool = False
    discard: bool = False  # at the end, connect with clean session 1: the session is gone


@dataclass(frozen=True)
class IdleSpec:
    host: str
    port: int
    client_prefix: str
    count: int
    wave: int = 32  # connections in flight per holder: stays under a listen backlog of 100
    # Loopback source addresses, used in turn: the kernel's search for a free ephemeral
    # port slows down as one address's ports fill up (past ~14,000 connections).
    sources: tuple[str, ...] = ()
    kind: str = "idle"


Spec = PubSpec | SubSpec | IdleSpec


@dataclass
class Shared:
    ctl: Any
    counters: Any
    state: Any
    go: Any
    results: Any
    acked: Any = None
    pub_slots: tuple[int, ...] = ()
    sub_slots: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- helpers


def now_ns() -> int:
    return time.monotonic_ns()


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit to ``want`` if it can; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    for new_hard in (max(hard, want), hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_frame(sock: socket.socket, buf: bytearray, deadline: float) -> tuple[int, bytes]:
    """Read one whole frame (slow path, for CONNACK/SUBACK): (first byte, body)."""
    while True:
        if len(buf) >= 2:
            rl, mult, i = 0, 1, 1
            while i < len(buf):
                b = buf[i]
                rl += (b & 0x7F) * mult
                mult <<= 7
                i += 1
                if not b & 0x80:
                    if len(buf) >= i + rl:
                        first, body = buf[0], bytes(buf[i : i + rl])
                        del buf[: i + rl]
                        return first, body
                    break
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerError("timed out waiting for the broker")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError as exc:
            raise WorkerError("timed out waiting for the broker") from exc
        if not data:
            raise WorkerError("broker closed the connection")
        buf += data


def mqtt_connect(host: str, port: int, client_id: str, timeout: float = 30.0) -> socket.socket:
    return mqtt_session(host, port, client_id, True, timeout)[0]


def mqtt_session(
    host: str, port: int, client_id: str, clean: bool, timeout: float = 30.0
) -> tuple[socket.socket, bool, bytes]:
    """Connect with clean session ``clean``: (socket, CONNACK's session present flag, what
    arrived after the CONNACK: a resumed session's first messages may share its read)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(w.connect(client_id, clean=clean))
    buf = bytearray()
    first, body = read_frame(sock, buf, time.monotonic() + timeout)
    if first >> 4 != w.CONNACK or len(body) < 2 or body[1] != 0:
        sock.close()
        raise WorkerError(f"CONNACK refused: {first:#x} {body.hex()}")
    return sock, bool(body[0] & 1), bytes(buf)


def mqtt_subscribe(sock: socket.socket, filters: Sequence[str], qos: int, timeout: float) -> None:
    """Subscribe in packets of 50 filters, pipelined; every SUBACK must grant them."""
    packets = [
        w.subscribe(1 + n // 50, [(f, qos) for f in filters[n : n + 50]])
        for n in range(0, len(filters), 50)
    ]
    sock.sendall(b"".join(packets))
    buf = bytearray()
    deadline = time.monotonic() + timeout
    for _ in packets:
        first, body = read_frame(sock, buf, deadline)
        if first >> 4 != w.SUBACK:
            raise WorkerError(f"expected SUBACK, got packet type {first >> 4}")
        if any(code == 0x80 for code in body[2:]):
            raise WorkerError("SUBACK refused a subscription")


def _alive(sh: Shared, deadline_ns: int) -> bool:
    return now_ns() < deadline_ns and os.getppid() != 1


def _wait_go(sh: Shared, beat: Heartbeat | None = None) -> int:
    if beat is None or not beat.interval:
        if not sh.go.wait(timeout=120):
            raise WorkerError("never told to start")
    else:  # STOMP with heart-beats: keep the connection alive while the others get ready
        give_up = now_ns() + 120_000_000_000
        while not sh.go.wait(timeout=beat.interval / 4e9):
            if now_ns() > give_up:
                raise WorkerError("never told to start")
            beat.tick(now_ns())
    t0 = int(sh.ctl[T0])
    delay = (t0 - now_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)
    return t0


# ---------------------------------------------------------------------------- publisher


def _frames(spec: PubSpec) -> tuple[bytes, int, int]:
    """(frames, frame length, frames per batch). QoS 0: one batch cycling the topics;
    QoS 1/2: a ring of 65,535 frames with packet ids 1..65535 (sliced, never re-encoded)."""
    body = w.payload(spec.payload_size)
    if spec.qos and spec.window > 65000:
        raise WorkerError("a QoS 1/2 window must leave packet identifiers free (<= 65000)")
    if spec.qos:
        frames = [
            w.publish(spec.topics[0], body, qos=spec.qos, packet_id=i) for i in range(1, 65536)
        ]
    else:
        one = [w.publish(t, body) for t in spec.topics]
        n = max(len(one), spec.batch_bytes // len(one[0]))
        frames = [one[i % len(one)] for i in range(n)]
    size = len(frames[0])
    if any(len(f) != size for f in frames):
        raise WorkerError("published frames must all have one length")
    per_batch = max(1, spec.batch_bytes // size)
    if not spec.open_loop:
        per_batch = min(per_batch, max(1, spec.window // 2))
    return b"".join(frames), size, per_batch


def run_publisher(index: int, spec: PubSpec, sh: Shared) -> dict[str, Any]:
    frames, size, per_batch = _frames(spec)
    ring = len(frames) // size
    sock = mqtt_connect(spec.host, spec.port, spec.client_id)
    sh.state[index] = 1
    t0 = _wait_go(sh)
    end = t0 + int((spec.warmup + spec.seconds) * 1e9)
    hard = int(sh.ctl[DEADLINE])
    sock.setblocking(False)
    replies = w.PUB_REPLIES_QOS2 if spec.qos == 2 else w.NO_REPLIES
    done_type = {0: None, 1: w.PUBACK, 2: w.PUBCOMP}[spec.qos]
    out: deque[list[Any]] = deque()  # [memoryview, publishes in it, bytes written]
    queued = done = 0
    counts = [0] * 16
    tail = b""
    allowance = 0
    last_recv, stalled_since = -1, 0
    min_send = 1 if spec.rate else max(1, min(per_batch, spec.window // 8))
    blocked_on = ""
    while True:
        now = now_ns()
        if now >= end or not _alive(sh, hard):
            break
        pending_pub = any(item[1] for item in out)
        blocked_on = ""
        if not pending_pub:
            allowed = per_batch
            if spec.rate:
                allowed = min(allowed, int((now - t0) * spec.rate / 1e9) + 1 - queued)
            if spec.qos:
                allowed = min(allowed, spec.window - (queued - done))
                if allowed < min_send:
                    blocked_on = "acks"
            if not spec.open_loop and not blocked_on:
                sent_all = sum(sh.counters[i] for i in sh.pub_slots)
                recv_all = sum(sh.counters[i] for i in sh.sub_slots)
                lead = sent_all * spec.copies - recv_all - allowance
                room = (spec.window * spec.copies - lead) // max(1, spec.copies)
                if room < min_send:
                    blocked_on = "lead"
                    if recv_all != last_recv:
                        last_recv, stalled_since = recv_all, now
                    elif now - stalled_since > STALL_NS:
                        allowance += lead  # lost on the way: stop waiting for them
                        stalled_since = now
                allowed = min(allowed, room)
            if not blocked_on and allowed >= min_send:
                start = (queued % ring) * size if spec.qos else 0
                chunk = frames[start : start + allowed * size]
                if len(chunk) < allowed * size:  # the ring wrapped
                    chunk += frames[: allowed * size - len(chunk)]
                out.append([memoryview(w.stamp(chunk, now_ns())), allowed, 0])
                queued += allowed
                sh.counters[index] = queued
        if spec.rate and not out:
            timeout = max(0.0, (t0 + (queued + 0.0) * 1e9 / spec.rate - now_ns()) / 1e9)
        elif blocked_on == "lead":
            timeout = 0.002
        else:
            timeout = 0.05
        readable, writable, _ = select.select([sock], [sock] if out else [], [], timeout)
        if writable:
            _write(sock, out)
        if readable:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise WorkerError("broker closed the publisher's connection")
            buf = tail + data if tail else data
            replies_out = bytearray()
            pos = w.scan(buf, 0, counts, replies, replies_out)
            tail = buf[pos:]
            if done_type is not None:
                done = counts[done_type]
            if replies_out:
                out.append([memoryview(bytes(replies_out)), 0, 0])
            if len(data) < COALESCE_BELOW and not spec.rate:
                time.sleep(PUB_COALESCE)
    # Publishing time is over: flush what was queued (briefly), then count what never left.
    flush_until = now_ns() + 2_000_000_000
    sock.setblocking(False)
    while out and now_ns() < flush_until:
        select.select([], [sock], [], 0.05)
        _write(sock, out)
    unsent = 0
    for _view, pubs, written in out:
        if pubs:
            unsent += pubs - written // size
    queued -= unsent
    sh.counters[index] = queued
    sh.state[index] = 2  # done publishing: the orchestrator now reads the final count
    # Keep the connection, still answering the broker (QoS 2: a PUBREL for each PUBREC),
    # until the subscribers are done: a broker may drop what a publisher sent just before
    # it disconnects, and that is not what is measured.
    while not sh.ctl[STOP] and _alive(sh, hard):
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        data = sock.recv(RECV_SIZE)
        if not data:
            break
        buf = tail + data if tail else data
        replies_out = bytearray()
        pos = w.scan(buf, 0, counts, replies, replies_out)
        tail = buf[pos:]
        if done_type is not None:
            done = counts[done_type]
        if replies_out:
            with contextlib.suppress(OSError):
                sock.settimeout(2.0)
                sock.sendall(replies_out)
                sock.setblocking(False)
    _close(sock)
    return {"sent": queued, "acked": done if spec.qos else None, "written_off": allowance}


def _write(sock: socket.socket, out: deque[list[Any]]) -> None:
    while out:
        item = out[0]
        view = item[0]
        try:
            n = sock.send(view[item[2] :])
        except BlockingIOError:
            return
        item[2] += n
        if item[2] < len(view):
            return
        out.popleft()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(True)
        sock.settimeout(1.0)
        sock.sendall(w.DISCONNECT_PACKET)
    sock.close()


# ---------------------------------------------------------------------------- tracked QoS 1

ACK_WAIT_NS = 10_000_000_000  # after publishing: the longest wait for the last PUBACKs
MAX_ACK_SAMPLES = 4_000_000


def mark(bits: dict[int, bytearray], seq: int) -> None:
    """Set ``seq``'s bit: one bitmap per publisher (the sequence number's top bits)."""
    owner, n = seq >> w.SEQ_SHIFT, seq & w.SEQ_MASK
    b = bits.get(owner)
    if b is None:
        b = bits[owner] = bytearray()
    i = n >> 3
    if i >= len(b):
        b.extend(bytes(max(i + 1 - len(b), 8192)))
    b[i] |= 1 << (n & 7)


def run_tracked_publisher(index: int, spec: PubSpec, sh: Shared) -> dict[str, Any]:
    """QoS 1 with every message accounted for: each payload starts with its sequence
    number, each PUBLISH is time-stamped when written and its PUBACK matched by packet id
    (publish-to-PUBACK latency; the set of acknowledged sequence numbers). At most
    ``window`` publishes are unacknowledged, and unless ``open_loop``, at most ``lead``
    (or ``window``) ahead of the subscribers."""
    if spec.qos != 1 or not 0 < spec.window <= 65000:
        raise WorkerError("tracked publishing is QoS 1 with a window of 1..65000")
    heads, pad = w.tracked_frames(spec.topics[0], spec.payload_size)
    size = len(heads[1]) + 8 + len(pad)
    per_batch = max(1, min(spec.window, spec.batch_bytes // size))
    sock = mqtt_connect(spec.host, spec.port, spec.client_id)
    sh.state[index] = 1
    t0 = _wait_go(sh)
    win_start = t0 + int(spec.warmup * 1e9)
    end = win_start + int(spec.seconds * 1e9)
    hard = int(sh.ctl[DEADLINE])
    sock.setblocking(False)
    base = spec.pub_no << w.SEQ_SHIFT
    sent_at = [0] * 65536  # by packet id: when its PUBLISH was written (0: not in flight)
    seq_of = [0] * 65536
    acked_bits: dict[int, bytearray] = {}
    samples = array("q")
    lead_cap = spec.lead or spec.window
    out: deque[list[Any]] = deque()
    queued = acked = unexpected = allowance = 0
    last_recv, stalled_since = -1, 0
    tail = b""
    ids: list[int] = []

    def on_data(data: bytes, t: int) -> None:
        nonlocal tail, acked, unexpected
        buf = tail + data if tail else data
        ids.clear()
        pos, other = w.puback_ids(buf, 0, ids)
        tail = buf[pos:]
        unexpected += other
        for pid in ids:
            sent = sent_at[pid]
            if not sent:
                unexpected += 1  # a PUBACK for no publish in flight
                continue
            sent_at[pid] = 0
            if win_start <= sent < end and len(samples) < MAX_ACK_SAMPLES:
                samples.append(t - sent)
            mark(acked_bits, seq_of[pid])
            acked += 1
        sh.acked[index] = acked

    while True:
        now = now_ns()
        if now >= end or not _alive(sh, hard):
            break
        on_lead = False
        if not out:
            allowed = min(per_batch, spec.window - (queued - acked))
            if not spec.open_loop and allowed >= 1:
                sent_all = sum(sh.counters[i] for i in sh.pub_slots)
                recv_all = sum(sh.counters[i] for i in sh.sub_slots)
                lead = sent_all * spec.copies - recv_all - allowance
                room = (lead_cap * spec.copies - lead) // max(1, spec.copies)
                if room < 1:
                    on_lead = True
                    if recv_all != last_recv:
                        last_recv, stalled_since = recv_all, now
                    elif now - stalled_since > STALL_NS:
                        allowance += lead
                        stalled_since = now
                allowed = min(allowed, room)
            if allowed >= 1:
                t = now_ns()
                parts: list[bytes] = []
                for k in range(queued, queued + allowed):
                    pid = k % 65535 + 1
                    sent_at[pid] = t
                    seq_of[pid] = base | k
                    parts += (heads[pid], w.seq_pack(base | k), pad)
                out.append([memoryview(b"".join(parts)), allowed, 0])
                queued += allowed
                sh.counters[index] = queued
        timeout = 0.002 if on_lead else 0.05
        readable, writable, _ = select.select([sock], [sock] if out else [], [], timeout)
        if writable:
            _write(sock, out)
        if readable:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise WorkerError("broker closed the publisher's connection")
            on_data(data, now_ns())
    flush_until = now_ns() + 2_000_000_000
    while out and now_ns() < flush_until:
        select.select([], [sock], [], 0.05)
        _write(sock, out)
    queued -= sum(pubs - written // size for _view, pubs, written in out)
    sh.counters[index] = queued
    # The last PUBACKs: what is acknowledged by now is what the broker must deliver.
    ack_until = now_ns() + ACK_WAIT_NS
    while acked < queued and now_ns() < ack_until and _alive(sh, hard):
        if select.select([sock], [], [], 0.05)[0]:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise WorkerError("broker closed the publisher's connection")
            on_data(data, now_ns())
    sh.state[index] = 2
    while not sh.ctl[STOP] and _alive(sh, hard):
        if select.select([sock], [], [], 0.05)[0]:
            data = sock.recv(RECV_SIZE)
            if not data:
                break
            on_data(data, now_ns())
    _close(sock)
    return {
        "sent": queued,
        "acked": acked,
        "acked_bits": {k: bytes(v) for k, v in acked_bits.items()},
        "ack_samples": samples,
        "unexpected": unexpected,
        "written_off": allowance,
    }


# ---------------------------------------------------------------------------- subscriber


def run_subscriber(index: int, spec: SubSpec, sh: Shared) -> dict[str, Any]:
    sock, _, _ = mqtt_session(spec.host, spec.port, spec.client_id, spec.clean)
    mqtt_subscribe(sock, spec.filters, spec.qos, timeout=120)
    if spec.offline:
        _close(sock)  # DISCONNECT: the session (clean session 0) stays, offline
    else:
        sock.settimeout(None)
    sh.state[index] = 1
    t0 = _wait_go(sh)
    win_start = t0 + int(spec.warmup * 1e9)
    win_end = win_start + int(spec.seconds * 1e9)
    hard = int(sh.ctl[DEADLINE])
    replies = {0: w.NO_REPLIES, 1: w.SUB_REPLIES_QOS1, 2: w.SUB_REPLIES_QOS2}[spec.qos]
    counts = [0] * 16
    samples: list[int] = []
    coalesce = 0.0 if spec.sample == "all" else SUB_COALESCE[spec.qos]
    tail = b""
    out = bytearray()
    closed = False
    bits: dict[int, bytearray] = {}
    present = None
    resumed = last = 0
    pending = b""
    if spec.offline:
        while not sh.ctl[RESUME] and not sh.ctl[STOP] and _alive(sh, hard):
            time.sleep(0.005)
        if sh.ctl[RESUME] and not sh.ctl[STOP]:
            sock, present, pending = mqtt_session(spec.host, spec.port, spec.client_id, False)
            sock.settimeout(None)
            resumed = now_ns()
            sh.state[index] = 3
        else:
            closed = True  # never reconnected
    while not closed and not sh.ctl[STOP] and _alive(sh, hard):
        if pending:  # frames that came with the CONNACK
            data, pending = pending, b""
        else:
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            data = sock.recv(RECV_SIZE)
            if not data:
                closed = True
                break
        t = now_ns()
        buf = tail + data if tail else data
        pos = w.scan(buf, 0, counts, replies, out)
        if spec.seqs:
            for seq in w.publish_stamps(buf, 0, pos):
                mark(bits, seq)
            last = t
        if spec.sample != "none" and win_start <= t <= win_end and len(samples) < MAX_SAMPLES:
            if spec.sample == "all":
                samples.extend(t - s for s in w.publish_stamps(buf, 0, pos))
            else:
                off = w.publish_stamp_offset(buf, 0)
                if off is not None:
                    samples.append(t - w.read_stamp(buf, off))
        tail = buf[pos:]
        sh.counters[index] = counts[w.PUBLISH]
        if out:
            sock.sendall(out)
            out.clear()
        if coalesce and len(data) < COALESCE_BELOW:
            time.sleep(coalesce)  # let a few more frames arrive: fewer, larger reads
    if not closed:
        _close(sock)
    else:
        sock.close()
    if spec.discard:  # a broker that outlives the run (RabbitMQ) keeps no queue of ours
        with contextlib.suppress(OSError, WorkerError):
            _close(mqtt_session(spec.host, spec.port, spec.client_id, True, 10.0)[0])
    result: dict[str, Any] = {
        "received": counts[w.PUBLISH],
        "samples": samples,
        "closed_by_broker": (closed and not spec.offline) or bool(resumed and closed),
    }
    if spec.seqs:
        result.update(
            seq_bits={k: bytes(v) for k, v in bits.items()},
            session_present=present,
            resumed_ns=resumed or None,
            last_ns=last or None,
        )
    return result


# ---------------------------------------------------------------------------- idle


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux


def _idle_socket(spec: IdleSpec, i: int) -> socket.socket:
    if not spec.sources:
        return socket.create_connection((spec.host, spec.port), timeout=5)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        # Pick the port at connect time, per destination, not at bind time.
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((spec.sources[i % len(spec.sources)], 0))
        s.connect((spec.host, spec.port))
    except OSError:
        s.close()
        raise
    return s


def run_idle(index: int, spec: IdleSpec, sh: Shared) -> dict[str, Any]:
    """Open ``count`` MQTT connections (CONNECT, wait CONNACK) in waves, hold them until
    told to check, then count how many the broker still holds open."""
    limit = raise_nofile(spec.count + 256)
    sh.state[index] = 1
    t0 = _wait_go(sh)
    hard = int(sh.ctl[DEADLINE])
    socks: list[socket.socket] = []
    error = None
    linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left behind
    started = now_ns()
    finished = started
    connack = b"\x20\x02\x00\x00"
    while len(socks) < spec.count and error is None and _alive(sh, hard):
        wave: list[socket.socket] = []
        try:
            for i in range(len(socks), min(spec.count, len(socks) + spec.wave)):
                s = _idle_socket(spec, i)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                wave.append(s)
                s.sendall(w.connect(f"{spec.client_prefix}-{i}"))
            for s in wave:
                got = b""
                while len(got) < 4:
                    chunk = s.recv(4 - len(got))
                    if not chunk:
                        raise WorkerError("broker closed a connection before CONNACK")
                    got += chunk
                if got != connack:
                    raise WorkerError(f"CONNACK refused: {got.hex()}")
                socks.append(s)
                sh.counters[index] = len(socks)
            finished = now_ns()
        except (OSError, WorkerError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            for s in wave:
                if s not in socks:
                    s.close()
    sh.state[index] = 2
    while not sh.ctl[CHECK] and _alive(sh, hard):
        time.sleep(0.05)
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    gone = len(poller.poll(0))
    for s in socks:
        s.close()
    return {
        "opened": len(socks),
        "held": len(socks) - gone,
        "connect_s": (finished - max(started, t0)) / 1e9,
        "error": error,
        "nofile": limit,
    }


# ---------------------------------------------------------------------------- STOMP


def _stomp_expect(
    sock: socket.socket, buf: bytes, command: bytes, timeout: float
) -> tuple[bytes, bytes]:
    """Read until one whole frame is in; it must be ``command``: (the frame, what follows)."""
    deadline = time.monotonic() + timeout
    while True:
        start = len(buf) - len(buf.lstrip(b"\r\n"))
        nul = buf.find(b"\x00", start)
        if nul >= 0:
            head = buf[start:nul]
            if not head.startswith(command + b"\n"):
                text = head[:300].decode(errors="replace")
                raise WorkerError(f"expected {command.decode()}, got: {text!r}")
            return head, buf[nul + 1 :]
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerError(f"timed out waiting for {command.decode()}")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError as exc:
            raise WorkerError(f"timed out waiting for {command.decode()}") from exc
        if not data:
            raise WorkerError("broker closed the connection")
        buf += data


class Heartbeat:
    """The client side of STOMP heart-beating: an EOL whenever nothing was written for the
    negotiated interval. ``interval`` 0 (what ``heart-beat:0,0`` negotiates with every
    broker here) makes :meth:`tick` a single comparison. Call :meth:`wrote` after writing
    and :meth:`tick` from the loop, only between whole frames (never inside one)."""

    def __init__(self, sock: socket.socket, interval_ms: int) -> None:
        self.sock = sock
        self.interval = interval_ms * 1_000_000
        self.due = now_ns() + self.interval
        self.sent = 0

    def wrote(self, now: int) -> None:
        self.due = now + self.interval

    def tick(self, now: int) -> None:
        if self.interval and now >= self.due:
            try:
                if self.sock.send(b"\n") == 1:
                    self.sent += 1
                    self.due = now + self.interval
            except BlockingIOError:
                pass  # the broker is not reading: neither would it read the EOL


def stomp_connect(
    host: str, port: int, vhost: str, heartbeat: int = 0, timeout: float = 30.0
) -> tuple[socket.socket, Heartbeat]:
    """Connect and CONNECT (offering ``heart-beat:HEARTBEAT,0``): the socket and its
    heart-beat timer, set to the interval negotiated from the CONNECTED frame."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(sw.connect(vhost, heartbeat=(heartbeat, 0)))
    head, _ = _stomp_expect(sock, b"", b"CONNECTED", timeout)
    return sock, Heartbeat(sock, sw.client_heartbeat_ms(head, heartbeat))


def _stomp_error(data: bytes) -> WorkerError:
    at = data.find(b"ERROR\n")
    return WorkerError("broker sent ERROR: " + data[at : at + 300].decode(errors="replace"))


def run_stomp_publisher(index: int, spec: PubSpec, sh: Shared) -> dict[str, Any]:
    """Closed loop like the MQTT QoS 0 publisher, with SEND frames to ``topics[0]``."""
    one = sw.send(spec.topics[0], sw.payload(spec.payload_size), dict(spec.stomp_headers))
    size = len(one)
    per_batch = max(1, spec.batch_bytes // size)
    if not spec.open_loop:
        per_batch = min(per_batch, max(1, spec.window // 2))
    batch = one * per_batch
    sock, beat = stomp_connect(spec.host, spec.port, spec.stomp_host, spec.heartbeat)
    sh.state[index] = 1
    t0 = _wait_go(sh, beat)
    end = t0 + int((spec.warmup + spec.seconds) * 1e9)
    hard = int(sh.ctl[DEADLINE])
    sock.setblocking(False)
    out: deque[list[Any]] = deque()
    queued = allowance = 0
    last_recv, stalled_since = -1, 0
    min_send = max(1, min(per_batch, spec.window // 8))
    while True:
        now = now_ns()
        if now >= end or not _alive(sh, hard):
            break
        blocked = False
        if not out:
            allowed = per_batch
            if not spec.open_loop:
                sent_all = sum(sh.counters[i] for i in sh.pub_slots)
                recv_all = sum(sh.counters[i] for i in sh.sub_slots)
                lead = sent_all * spec.copies - recv_all - allowance
                room = (spec.window * spec.copies - lead) // max(1, spec.copies)
                if room < min_send:
                    blocked = True
                    if recv_all != last_recv:
                        last_recv, stalled_since = recv_all, now
                    elif now - stalled_since > STALL_NS:
                        allowance += lead
                        stalled_since = now
                allowed = min(allowed, room)
            if not blocked and allowed >= 1:
                out.append([memoryview(sw.stamp(batch[: allowed * size], now_ns())), allowed, 0])
                queued += allowed
                sh.counters[index] = queued
        readable, writable, _ = select.select(
            [sock], [sock] if out else [], [], 0.002 if blocked else 0.05
        )
        if writable:
            _write(sock, out)
            beat.wrote(now)
        elif not out:
            beat.tick(now)
        if readable:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise WorkerError("broker closed the publisher's connection")
            if b"ERROR\n" in data:
                raise _stomp_error(data)
    flush_until = now_ns() + 2_000_000_000
    while out and now_ns() < flush_until:
        select.select([], [sock], [], 0.05)
        _write(sock, out)
    queued -= sum(pubs - written // size for _view, pubs, written in out)
    sh.counters[index] = queued
    sh.state[index] = 2
    error = None
    while not sh.ctl[STOP] and _alive(sh, hard):
        if not select.select([sock], [], [], 0.05)[0]:
            if not out:
                beat.tick(now_ns())
            continue
        data = sock.recv(RECV_SIZE)
        if not data:
            break
        if b"ERROR\n" in data:
            error = str(_stomp_error(data))
            break
    _stomp_close(sock)
    return {
        "sent": queued,
        "acked": None,
        "written_off": allowance,
        "error": error,
        "heartbeats_sent": beat.sent,
    }


def run_stomp_subscriber(index: int, spec: SubSpec, sh: Shared) -> dict[str, Any]:
    sock, beat = stomp_connect(spec.host, spec.port, spec.stomp_host, spec.heartbeat)
    sock.sendall(
        sw.subscribe(
            "0", spec.filters[0], spec.ack, spec.prefetch, "sub-0", dict(spec.stomp_headers)
        )
    )
    _head, tail = _stomp_expect(sock, b"", b"RECEIPT", 120)
    sock.settimeout(None)
    beat.wrote(now_ns())
    sh.state[index] = 1
    t0 = _wait_go(sh, beat)
    win_start = t0 + int(spec.warmup * 1e9)
    win_end = win_start + int(spec.seconds * 1e9)
    hard = int(sh.ctl[DEADLINE])
    acking = spec.ack != "auto"
    if spec.ack_by == "message-id":
        ack_header, ack_frame = b"\nmessage-id:", sw.ack_message_id(b"0")
    else:
        ack_header, ack_frame = b"\nack:", sw.ack
    acks: list[bytes] = []
    samples: list[int] = []
    coalesce = 0.0 if spec.sample == "all" else SUB_COALESCE[1 if acking else 0]
    received = 0
    closed = False
    while not sh.ctl[STOP] and _alive(sh, hard):
        if not select.select([sock], [], [], 0.1)[0]:
            beat.tick(now_ns())
            continue
        data = sock.recv(RECV_SIZE)
        if not data:
            closed = True
            break
        t = now_ns()
        buf = tail + data if tail else data
        sample = spec.sample != "none" and win_start <= t <= win_end
        stamps: list[int] | None = [] if sample and len(samples) < MAX_SAMPLES else None
        pos, n, other = sw.scan(buf, 0, acks if acking else None, stamps, ack_header)
        if other is not None and other.startswith(b"ERROR"):
            raise _stomp_error(buf)
        tail = buf[pos:]
        received += n
        sh.counters[index] = received
        if stamps:
            samples.append(t - stamps[0])
        if acks:
            sock.sendall(b"".join(ack_frame(a) for a in acks))
            acks.clear()
            beat.wrote(t)
        else:
            beat.tick(t)
        if coalesce and len(data) < COALESCE_BELOW:
            time.sleep(coalesce)
    _stomp_close(sock)
    return {
        "received": received,
        "samples": samples,
        "closed_by_broker": closed,
        "heartbeats_sent": beat.sent,
    }


def _stomp_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(True)
        sock.settimeout(1.0)
        sock.sendall(sw.DISCONNECT)
    sock.close()


# ---------------------------------------------------------------------------- processes


def _worker_main(index: int, spec: Spec, sh: Shared) -> None:
    try:
        if isinstance(spec, PubSpec):
            pub = run_stomp_publisher if spec.proto == "stomp" else run_publisher
            if spec.track:
                pub = run_tracked_publisher
            result = pub(index, spec, sh)
        elif isinstance(spec, SubSpec):
            sub = run_stomp_subscriber if spec.proto == "stomp" else run_subscriber
            result = sub(index, spec, sh)
        else:
            result = run_idle(index, spec, sh)
        result["error"] = result.get("error")
    except Exception as exc:  # reported to the orchestrator, which records it
        sh.state[index] = -1
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result.update(index=index, kind=spec.kind)
    sh.results.put(result)


class WorkerGroup:
    """Spawned worker processes for one run, with their shared counters.

    Use as a context manager: leaving it ends every process that is still there."""

    def __init__(self, specs: Sequence[Spec], hard_seconds: float) -> None:
        self.ctx = mp.get_context("spawn")
        n = len(specs)
        self.specs = list(specs)
        self.shared = Shared(
            ctl=RawArray("q", 5),
            counters=RawArray("q", n),
            acked=RawArray("q", n),
            state=RawArray("q", n),
            go=self.ctx.Event(),
            results=self.ctx.Queue(),
            pub_slots=tuple(i for i, s in enumerate(specs) if isinstance(s, PubSpec)),
            sub_slots=tuple(i for i, s in enumerate(specs) if isinstance(s, SubSpec)),
        )
        self.shared.ctl[DEADLINE] = now_ns() + int(hard_seconds * 1e9)
        self.procs = [
            self.ctx.Process(
                target=_worker_main, args=(i, s, self.shared), daemon=True, name=f"bench-{s.kind}"
            )
            for i, s in enumerate(specs)
        ]
        self.results: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> WorkerGroup:
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shared.ctl[STOP] = 1
        self.shared.ctl[CHECK] = 1
        self.shared.go.set()
        for p in self.procs:
            p.join(timeout=5)
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def counter(self, slots: Sequence[int]) -> int:
        return sum(int(self.shared.counters[i]) for i in slots)

    def wait_state(self, want: int, timeout: float, slots: Sequence[int] | None = None) -> None:
        """Wait until the given workers reach ``want`` (or fail)."""
        slots = range(len(self.procs)) if slots is None else slots
        deadline = time.monotonic() + timeout
        while True:
            self._collect(0)
            states = [int(self.shared.state[i]) for i in slots]
            failed = [i for i in slots if self.shared.state[i] == -1 or i in self._errors()]
            if failed:
                raise WorkerError(f"worker failed: {self._describe(failed[0])}")
            if all(s >= want for s in states):
                return
            dead = [i for i in slots if not self.procs[i].is_alive() and i not in self.results]
            if dead:
                self._collect(0.5)
                raise WorkerError(f"worker {self._describe(dead[0])} exited")
            if time.monotonic() > deadline:
                raise WorkerError(f"workers not ready after {timeout:.0f} s")
            time.sleep(0.02)

    def go(self, delay: float = 0.2) -> int:
        t0 = now_ns() + int(delay * 1e9)
        self.shared.ctl[T0] = t0
        self.shared.go.set()
        return t0

    def set(self, flag: int) -> None:
        self.shared.ctl[flag] = 1

    def collect(self, slots: Sequence[int], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while any(i not in self.results for i in slots) and time.monotonic() < deadline:
            self._collect(0.1)
        missing = [i for i in slots if i not in self.results]
        if missing:
            raise WorkerError(f"no result from {len(missing)} worker(s) after {timeout:.0f} s")
        return [self.results[i] for i in slots]

    def _collect(self, timeout: float) -> None:
        with contextlib.suppress(Exception):
            while True:
                item = self.shared.results.get(timeout=timeout)
                self.results[item["index"]] = item
                timeout = 0

    def _errors(self) -> set[int]:
        return {i for i, r in self.results.items() if r.get("error") and r["kind"] != "idle"}

    def _describe(self, i: int) -> str:
        err = self.results.get(i, {}).get("error")
        return f"{self.specs[i].kind}#{i}" + (f" ({err})" if err else "")
