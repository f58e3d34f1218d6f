"""STOMP clients for Trio tests: stomp.py (the reference Python client) through threads, and a
raw trio-socket client for malformed input.

``Stomp`` wraps one ``stomp.Connection10/11/12``. Its network loop runs in stomp.py's own
threads; a listener collects MESSAGE, RECEIPT and ERROR frames in queues, and every call that
waits (for the CONNECTED frame, a receipt, a message) runs in a worker thread with a bounded
wait, so a test under ``trio.fail_after`` never hangs on a silent server. Frames are returned
as ``Received`` (command, headers, body as bytes).

Receipts are how the tests synchronise: ``send``, ``subscribe``, ``ack`` ... ask for one by
default and return once the server has processed the frame (``receipt=False`` sends without).

``RawStomp`` speaks bytes over a trio socket: ``send`` writes exactly what it is given,
``frame`` parses what comes back (counting heart-beat EOLs), ``closed`` waits for EOF.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import stomp
import trio

from tests.conftest import NET_TIMEOUT

WAIT = 5.0
VERSIONS = ("1.0", "1.1", "1.2")

_CONNECTIONS: dict[str, Any] = {
    "1.0": stomp.Connection10,
    "1.1": stomp.Connection11,
    "1.2": stomp.Connection12,
}


class StompFailure(Exception):
    """The server answered with an ERROR frame (or closed) instead of what was awaited."""

    def __init__(self, what: str, error: Received | None) -> None:
        detail = "connection closed" if error is None else f"ERROR {error.headers}"
        super().__init__(f"{what}: {detail}")
        self.error = error


@dataclass(frozen=True)
class Received:
    """One frame from the server; ``headers`` keeps the first of repeated headers."""

    command: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def _received(frame: Any) -> Received:
    body = frame.body
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode()
    return Received(frame.cmd, dict(frame.headers), body)


class _Collector(stomp.ConnectionListener):  # type: ignore[misc]
    """Called from stomp.py's receiver thread."""

    def __init__(self, owner: Stomp) -> None:
        self.owner = owner

    def on_connected(self, frame: Any) -> None:
        owner = self.owner
        with owner._cond:
            owner.connected_frame = _received(frame)
            owner._cond.notify_all()

    def on_message(self, frame: Any) -> None:
        self.owner.messages.put(_received(frame))

    def on_receipt(self, frame: Any) -> None:
        owner = self.owner
        with owner._cond:
            owner.receipts[frame.headers["receipt-id"]] = _received(frame)
            owner._cond.notify_all()

    def on_error(self, frame: Any) -> None:
        owner = self.owner
        error = _received(frame)
        owner.errors.put(error)
        with owner._cond:
            owner.last_error = error
            owner._cond.notify_all()

    def on_heartbeat(self) -> None:
        owner = self.owner
        with owner._cond:
            owner.heartbeats_received += 1
            owner._cond.notify_all()

    def on_heartbeat_timeout(self) -> None:
        self.owner.heartbeat_timeouts += 1

    def on_disconnected(self) -> None:
        owner = self.owner
        with owner._cond:
            owner.disconnected.set()
            owner._cond.notify_all()


class Stomp:
    """One stomp.py connection with its network loop in threads; every call is awaitable.

    ``version`` is "1.0", "1.1" or "1.2"; ``heartbeats`` (ms, as stomp.py takes them: what
    this client sends, what it wants) and ``vhost`` (the CONNECT's host header) apply to 1.1
    and 1.2.
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        port: int,
        version: str = "1.2",
        *,
        host: str = "127.0.0.1",
        heartbeats: tuple[int, int] = (0, 0),
        heart_beat_receive_scale: float = 1.5,
        vhost: str | None = None,
    ) -> None:
        self.version = version
        self.port = port
        kwargs: dict[str, Any] = {
            "auto_decode": False,
            "reconnect_attempts_max": 1,
            "try_loopback_connect": False,
            "timeout": WAIT,
        }
        if version != "1.0":
            # The CONNECT's host header; stomp.py sends the server's address otherwise, which
            # RabbitMQ takes for a virtual host name.
            kwargs["vhost"] = vhost
            kwargs["heartbeats"] = heartbeats
            kwargs["heart_beat_receive_scale"] = heart_beat_receive_scale
        elif heartbeats != (0, 0):
            raise ValueError("STOMP 1.0 has no heart-beats")
        self.conn = _CONNECTIONS[version]([(host, port)], **kwargs)
        self.messages: queue.Queue[Received] = queue.Queue()
        self.errors: queue.Queue[Received] = queue.Queue()
        self.receipts: dict[str, Received] = {}
        self.connected_frame: Received | None = None
        self.last_error: Received | None = None
        self.heartbeats_received = 0
        self.heartbeat_timeouts = 0
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._tag = f"c{next(self._ids)}"
        self._receipt_ids = itertools.count(1)
        self.conn.set_listener("collector", _Collector(self))

    # -- waiting -------------------------------------------------------------------------------

    def _wait_for(
        self, what: str, ready: Any, within: float = WAIT, *, fail_on_close: bool = True
    ) -> None:
        """Wait (in a worker thread) until ready() is true; StompFailure on ERROR or close."""
        with self._cond:
            errors_before = self.last_error
            ok = self._cond.wait_for(
                lambda: (
                    ready()
                    or self.last_error is not errors_before
                    or (fail_on_close and self.disconnected.is_set())
                ),
                within,
            )
            if ready():
                return
            if not ok:
                raise TimeoutError(f"{what}: nothing within {within}s")
            error = self.last_error
            raise StompFailure(what, error if error is not errors_before else None)

    def _receipt(self, rid: str, what: str, *, fail_on_close: bool = True) -> Received:
        self._wait_for(
            f"{what} (receipt {rid})", lambda: rid in self.receipts, fail_on_close=fail_on_close
        )
        return self.receipts[rid]

    def new_receipt_id(self) -> str:
        return f"{self._tag}-r{next(self._receipt_ids)}"

    async def _call(self, what: str, send: Any, receipt: bool) -> Received | None:
        """Run ``send(receipt_id_or_None)`` in a thread and wait for that receipt."""

        def run() -> Received | None:
            rid = self.new_receipt_id() if receipt else None
            send(rid)
            return None if rid is None else self._receipt(rid, what)

        return await trio.to_thread.run_sync(run)

    # -- connection ---------------------------------------------------------------------------

    def _connect(self, login: str | None, passcode: str | None, headers: Mapping[str, str]) -> None:
        self.conn.connect(login, passcode, wait=False, headers=dict(headers))
        self._wait_for("CONNECT", lambda: self.connected_frame is not None)

    async def connect(
        self,
        login: str | None = None,
        passcode: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Received:
        """CONNECT (1.0) or STOMP (1.1, 1.2) and wait for the CONNECTED frame."""
        await trio.to_thread.run_sync(self._connect, login, passcode, headers or {})
        assert self.connected_frame is not None
        return self.connected_frame

    def _disconnect(self, within: float) -> Received | None:
        if self.disconnected.is_set() or self.connected_frame is None:
            self._drop()
            return None
        rid = self.new_receipt_id()
        # Protocol.disconnect only: StompConnection.disconnect would also wait, unbounded, for
        # stomp.py's receiver thread. stomp.py closes the socket when this receipt arrives.
        self.conn.set_receipt(rid, "DISCONNECT")
        self.conn.send_frame("DISCONNECT", {"receipt": rid})
        try:
            # stomp.py reports the close before the receipt that caused it.
            receipt = self._receipt(rid, "DISCONNECT", fail_on_close=False)
        finally:
            if not self.disconnected.wait(within):
                self._drop()
        return receipt

    async def disconnect(self, within: float = WAIT) -> Received | None:
        """DISCONNECT with a receipt; returns the RECEIPT frame (None if already closed)."""
        return await trio.to_thread.run_sync(self._disconnect, within)

    def _drop(self) -> None:
        self.conn.transport.running = False
        with contextlib.suppress(Exception):
            self.conn.transport.disconnect_socket()
        thread = getattr(self.conn.transport, "io_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(WAIT)

    async def drop(self) -> None:
        """Close the TCP connection without a DISCONNECT, as a crashed client would."""
        await trio.to_thread.run_sync(self._drop)

    async def close(self) -> None:
        """Disconnect gracefully if still connected, else just release the socket."""
        try:
            await self.disconnect()
        except (StompFailure, TimeoutError):
            await self.drop()

    @property
    def connected_headers(self) -> dict[str, str]:
        """The CONNECTED frame's headers (empty before it arrived)."""
        return {} if self.connected_frame is None else self.connected_frame.headers

    def is_connected(self) -> bool:
        return bool(self.conn.is_connected()) and not self.disconnected.is_set()

    # -- frames -------------------------------------------------------------------------------

    async def subscribe(
        self,
        destination: str,
        id: str | None = None,
        ack: str = "auto",
        headers: Mapping[str, str] | None = None,
        *,
        receipt: bool = True,
    ) -> Received | None:
        """SUBSCRIBE (id defaults to the destination) and wait for its receipt."""
        sub_id = id or destination
        extra = dict(headers or {})

        def send(rid: str | None) -> None:
            if rid is not None:
                extra["receipt"] = rid
            self.conn.subscribe(destination, id=sub_id, ack=ack, headers=extra)

        return await self._call(f"SUBSCRIBE {destination}", send, receipt)

    async def unsubscribe(
        self,
        id: str,
        headers: Mapping[str, str] | None = None,
        *,
        receipt: bool = True,
    ) -> Received | None:
        extra = dict(headers or {})

        def send(rid: str | None) -> None:
            if rid is not None:
                extra["receipt"] = rid
            if self.version == "1.0":
                self.conn.unsubscribe(id=id, headers=extra)
            else:
                self.conn.unsubscribe(id, headers=extra)

        return await self._call(f"UNSUBSCRIBE {id}", send, receipt)

    async def send(
        self,
        destination: str,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
        *,
        transaction: str | None = None,
        receipt: bool = True,
    ) -> Received | None:
        """SEND and (by default) wait for its receipt."""
        extra = {k: str(v) for k, v in (headers or {}).items()}
        if transaction is not None:
            extra["transaction"] = transaction
        payload = body.encode() if isinstance(body, str) else body

        def send(rid: str | None) -> None:
            if rid is not None:
                extra["receipt"] = rid
            self.conn.send(destination, payload, headers=extra)

        return await self._call(f"SEND {destination}", send, receipt)

    def _ack_args(self, message: Received) -> tuple[Any, ...]:
        if self.version == "1.2":
            return (message.headers["ack"],)
        if self.version == "1.1":
            return (message.headers["message-id"], message.headers["subscription"])
        return (message.headers["message-id"],)

    async def ack(
        self, message: Received, *, transaction: str | None = None, receipt: bool = True
    ) -> Received | None:
        """ACK ``message`` with the headers this protocol version uses."""
        args = self._ack_args(message)

        def send(rid: str | None) -> None:
            self.conn.ack(*args, transaction=transaction, receipt=rid)

        return await self._call("ACK", send, receipt)

    async def nack(
        self, message: Received, *, transaction: str | None = None, receipt: bool = True
    ) -> Received | None:
        """NACK ``message`` (STOMP 1.1 and 1.2)."""
        if self.version == "1.0":
            raise ValueError("NACK does not exist in STOMP 1.0")
        args = self._ack_args(message)

        def send(rid: str | None) -> None:
            self.conn.nack(*args, transaction=transaction, receipt=rid)

        return await self._call("NACK", send, receipt)

    async def _transaction(self, command: str, name: str, receipt: bool) -> Received | None:
        def send(rid: str | None) -> None:
            headers = {"transaction": name}
            if rid is not None:
                headers["receipt"] = rid
            self.conn.send_frame(command, headers)

        return await self._call(f"{command} {name}", send, receipt)

    async def begin(self, name: str, *, receipt: bool = True) -> Received | None:
        return await self._transaction("BEGIN", name, receipt)

    async def commit(self, name: str, *, receipt: bool = True) -> Received | None:
        return await self._transaction("COMMIT", name, receipt)

    async def abort(self, name: str, *, receipt: bool = True) -> Received | None:
        return await self._transaction("ABORT", name, receipt)

    async def send_frame(
        self, command: str, headers: Mapping[str, str], body: bytes = b"", *, receipt: bool = True
    ) -> Received | None:
        """Any frame, through stomp.py's encoder."""
        extra = dict(headers)

        def send(rid: str | None) -> None:
            if rid is not None:
                extra["receipt"] = rid
            self.conn.send_frame(command, extra, body)

        return await self._call(command, send, receipt)

    # -- what arrived -------------------------------------------------------------------------

    async def get(self, within: float = WAIT) -> Received:
        """The next MESSAGE; queue.Empty if none arrives within that many seconds."""
        return await trio.to_thread.run_sync(lambda: self.messages.get(timeout=within))

    async def get_many(self, count: int, within: float = WAIT) -> list[Received]:
        return [await self.get(within) for _ in range(count)]

    def pending(self) -> list[Received]:
        """The MESSAGE frames received and not yet taken, without waiting."""
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    async def error(self, within: float = WAIT) -> Received:
        """The next ERROR frame; queue.Empty if none arrives in time."""
        return await trio.to_thread.run_sync(lambda: self.errors.get(timeout=within))

    async def wait_heartbeats(self, count: int, within: float = WAIT) -> None:
        """Until ``count`` heart-beats have arrived from the server since connecting."""

        def enough() -> bool:
            return self.heartbeats_received >= count

        await trio.to_thread.run_sync(self._wait_for, f"{count} heart-beats", enough, within)

    async def wait_disconnected(self, within: float = WAIT) -> bool:
        return await trio.to_thread.run_sync(self.disconnected.wait, within)


@contextlib.asynccontextmanager
async def connected_stomp(port: int, version: str = "1.2") -> AsyncIterator[Stomp]:
    """A connected stomp.py client, closed on exit (each within NET_TIMEOUT)."""
    client = Stomp(port, version)
    try:
        with trio.fail_after(NET_TIMEOUT):
            await client.connect()
        yield client
    finally:
        with trio.fail_after(NET_TIMEOUT):
            await client.close()


# -- the raw client ----------------------------------------------------------------------------


@dataclass
class RawFrame:
    command: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass
class RawStomp:
    """A byte-level STOMP client on a trio socket stream (no escaping, no checks)."""

    stream: trio.SocketStream
    buffer: bytearray = field(default_factory=bytearray)
    heartbeats: int = 0
    eof: bool = False

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawStomp:
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def connect(
        self,
        version: str = "1.2",
        heart_beat: str | None = None,
        *,
        host: str = "/",
        login: str | None = None,
        passcode: str | None = None,
    ) -> RawFrame:
        """A well-formed CONNECT; returns the answer (CONNECTED or ERROR)."""
        head = f"CONNECT\naccept-version:{version}\nhost:{host}\n"
        if heart_beat is not None:
            head += f"heart-beat:{heart_beat}\n"
        if login is not None:
            head += f"login:{login}\n"
        if passcode is not None:
            head += f"passcode:{passcode}\n"
        await self.send(head.encode() + b"\n\x00")
        return await self.frame()

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            # A reset: the server closed with input of ours still unread (what it refused).
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def frame(self) -> RawFrame:
        """The next frame (heart-beat EOLs are counted and skipped); EOFError at EOF."""
        buf = self.buffer
        while True:
            while buf[:1] in (b"\n", b"\r"):
                if buf[:2] == b"\r\n":
                    del buf[:2]
                elif buf[:1] == b"\n":
                    del buf[:1]
                else:
                    break
                self.heartbeats += 1
            end = buf.find(b"\n\n")
            if end >= 0:
                lines = bytes(buf[:end]).decode().replace("\r\n", "\n").split("\n")
                headers = [tuple(line.split(":", 1)) for line in lines[1:]]
                frame = RawFrame(lines[0], [(k, v) for k, v in headers])
                length = frame.get("content-length")
                start = end + 2
                if length is not None:
                    stop = start + int(length)
                    if len(buf) > stop:
                        frame.body = bytes(buf[start:stop])
                        del buf[: stop + 1]
                        return frame
                else:
                    nul = buf.find(b"\x00", start)
                    if nul >= 0:
                        frame.body = bytes(buf[start:nul])
                        del buf[: nul + 1]
                        return frame
            if not await self._fill():
                raise EOFError(f"connection closed; unparsed: {bytes(buf)!r}")

    async def closed(self) -> bool:
        """Read (discarding frames) until the server closes; True at EOF."""
        while await self._fill():
            pass
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()
