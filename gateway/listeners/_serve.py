"""Accepting TCP connections: binding, TLS, the per-connection nursery, deadlines and logs.

One ``TCPServer`` per configured listener. It owns the listening sockets, a
handler nursery holding one task per connection, and the drain on shutdown:
stop accepting, ask every connection to finish, cancel what is left at the
deadline. A connection's failure is caught and logged in its own frame and
never reaches another connection. On a TLS listener each connection's task
first completes the handshake, within the listener's ``connect_timeout``, and
hands the protocol handler the ``trio.SSLStream``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..auth import Identity
from ..config import ListenerConfig
from ..core import Broker
from ..core.stats import Traffic
from ..logging import get_logger
from .limits import (
    AUTH_DELAYED,
    MAX_CONNECTIONS,
    AuthDelayPolicy,
    AuthThrottle,
    ConnectionLimiter,
    peer_ip,
)
from .tls import PeerIdentity, TLSContextHolder, TLSError, handshake_failure, peer_identity
from .tls import plain_text_guess as _plain_text_guess

_conn_ids = itertools.count(1)


class StartupError(Exception):
    """A listener could not bind; the message names the listener and the reason."""


@dataclass(frozen=True, slots=True)
class BoundAddress:
    protocol: str
    name: str
    host: str
    port: int
    tls: bool = False


class Connection(Traffic):
    """What a protocol handler gets besides its stream: identity, logger, stop control,
    and what it moved (``Traffic``: the handlers count bytes and messages)."""

    __slots__ = (
        "_auth_failed",
        "_reader_scope",
        "auth_throttle",
        "client_id",
        "conn_id",
        "connected_at",
        "identity",
        "ip",
        "limited",
        "listener",
        "log",
        "peer",
        "peer_cert",
        "peer_identity",
        "protocol",
        "protocol_error",
        "stop_reason",
        "tls_version",
    )

    def __init__(self, conn_id: int, peer: str, protocol: str, listener: str) -> None:
        self.conn_id = conn_id
        self.peer = peer
        self.listener = listener
        self.protocol = protocol
        # For the admin API and metrics: who is on it (set by the protocol handler once
        # known) and what it moved.
        self.client_id = ""
        self.connected_at = time.time()
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.messages_out = 0
        self.log = get_logger(conn_id=conn_id, protocol=protocol, peer=peer)
        self.stop_reason: Any = None
        # Set by a protocol handler that refused its peer: WebSocket closes say why.
        self.protocol_error: str | None = None
        self._reader_scope: trio.CancelScope | None = None
        # On a TLS listener: the negotiated version ("TLSv1.3"), and the client
        # certificate once verified against the listener's CA (None without one).
        self.tls_version: str | None = None
        self.peer_cert: dict[str, Any] | None = None
        self.peer_identity: PeerIdentity | None = None
        # Who the transport already authenticated (a WebSocket upgrade's credentials):
        # the inner CONNECT without credentials gets it (listeners/authn.py).
        self.identity: Identity | None = None
        # Limits (gateway.listeners.limits): the peer's address, the listener's
        # authentication throttle (None: off) and its refusal counters.
        self.ip = peer_ip(peer)
        self.auth_throttle: AuthThrottle | None = None
        self.limited: Counter[str] = Counter()
        self._auth_failed = False

    def auth_delay(self) -> float:
        """Seconds this connection's next authentication attempt waits before it is
        answered: what earlier failures from its address earned (0: none)."""
        throttle = self.auth_throttle
        if throttle is None:
            return 0.0
        delay = throttle.delay(self.ip, trio.current_time())
        if delay:
            throttle.delayed += 1
            self.limited[AUTH_DELAYED] += 1
            self.log.info("auth.delayed", seconds=round(delay, 3), ip=self.ip)
        return delay

    async def auth_pause(self) -> None:
        """Wait ``auth_delay()`` seconds: call before answering credentials."""
        delay = self.auth_delay()
        if delay:
            await trio.sleep(delay)

    async def delay_first_read(self, timer: trio.CancelScope, connect_timeout: float) -> None:
        """Before a stream protocol's first bytes are handled: wait ``auth_delay()``
        seconds (earlier authentication failures from this address: answer late), with
        the reader's ``timer`` lifted meanwhile and then set ``connect_timeout`` from now."""
        delay = self.auth_delay()
        if delay:
            timer.deadline = math.inf
            await trio.sleep(delay)
            timer.deadline = trio.current_time() + connect_timeout

    def auth_failed(self) -> None:
        """Authentication of this connection failed: counted against its address (once)."""
        if self.auth_throttle is not None and not self._auth_failed:
            self._auth_failed = True
            self.auth_throttle.record_failure(self.ip, trio.current_time())

    def auth_succeeded(self) -> None:
        """Authentication succeeded: the address's failures are forgotten."""
        if self.auth_throttle is not None:
            self.auth_throttle.record_success(self.ip)

    def reading(self) -> trio.CancelScope:
        """The cancel scope the handler reads under; ``stop`` cancels it."""
        self._reader_scope = trio.CancelScope()
        if self.stop_reason is not None:
            self._reader_scope.cancel()
        return self._reader_scope

    def stop(self, reason: Any) -> None:
        """Ask the handler to stop reading, flush what it has to send, and close."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._reader_scope is not None:
            self._reader_scope.cancel()


Handler = Callable[[trio.abc.Stream, Connection], Awaitable[None]]

# How long a closing connection waits for the store to commit what it acknowledges.
SETTLE_TIMEOUT = 5.0


async def settle(broker: Broker) -> None:
    """Wait until acknowledgements already promised (behind the store's commit) are
    handed to the connection's outbox, so that its last flush carries them."""
    done = trio.Event()
    broker.when_durable(lambda ok: done.set())
    with trio.move_on_after(SETTLE_TIMEOUT), trio.CancelScope(shield=True):
        await done.wait()


# How long a connection the server ends waits, after its last bytes, for the peer to close.
LINGER_TIMEOUT = 1.0


async def _linger(stream: trio.abc.Stream) -> None:
    """Send FIN and read until the peer closes too (at most ``LINGER_TIMEOUT``).

    Closing a socket with unread input sends a reset instead of a FIN, and a reset can
    make the peer's system discard what it received but its client had not read yet:
    the last acknowledgements and the DISCONNECT 0x8B of a shutdown. A TLS stream cannot
    half-close and is closed at once."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_TIMEOUT) as lingering:
        lingering.shield = True
        with contextlib.suppress(
            trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError, OSError
        ):
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


def _split_cancelled(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the trio.Cancelled part of ``exc``, the rest), either possibly None."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    if isinstance(exc, trio.Cancelled):
        return exc, None
    return None, exc


def _peer_gone(exc: BaseException) -> bool:
    """True if ``exc`` (or every leaf of an exception group) means the peer went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_peer_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | ConnectionError)


class TCPServer:
    def __init__(
        self,
        config: ListenerConfig,
        handler: Handler,
        drain_timeout: float,
        *,
        limited: Counter[str] | None = None,
        auth_throttle: AuthThrottle | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.drain_timeout = drain_timeout
        self.log = get_logger(listener=config.label, protocol=config.protocol)
        self.connections: set[Connection] = set()
        # For the metrics: connections admitted, and what the closed ones moved.
        self.accepted = 0
        self.closed = Traffic()
        # Limits: refusals counted per reason (the broker's stats.limited when the
        # gateway passes it), per-IP caps at accept, authentication failure delays.
        self.limited: Counter[str] = Counter() if limited is None else limited
        self.per_ip = ConnectionLimiter(
            config.max_connections_per_ip,
            config.connection_rate_per_ip,
            config.connection_burst_per_ip,
        )
        if auth_throttle is None and config.auth_failures_allowed:
            auth_throttle = AuthThrottle(
                AuthDelayPolicy(
                    allowed=config.auth_failures_allowed,
                    window=config.auth_failure_window,
                    base=config.auth_failure_delay,
                    cap=config.auth_failure_max_delay,
                )
            )
        self.auth_throttle = auth_throttle
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()
        self.tls: TLSContextHolder | None = None

    def load_tls(self) -> None:
        """Build the listener's SSL context from its files; StartupError naming the file."""
        if self.config.tls is None or self.tls is not None:
            return
        alpn = ("http/1.1",) if self.config.protocol == "http" else ()
        try:
            self.tls = TLSContextHolder(self.config.tls, self.config.label, alpn=alpn)
        except TLSError as exc:
            raise StartupError(f"listener {self.config.label!r}: {exc}") from None

    async def bind(self) -> list[BoundAddress]:
        self.load_tls()
        host, port = self.config.address
        try:
            self._listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
        except OSError as exc:
            why = (
                "address already in use"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror or str(exc)
            )
            raise StartupError(
                f"listener {self.config.label!r}: cannot listen on {self.config.bind}: {why}"
            ) from None
        bound = []
        for listener in self._listeners:
            sockname = listener.socket.getsockname()
            bound.append(
                BoundAddress(
                    self.config.protocol,
                    self.config.label,
                    sockname[0],
                    sockname[1],
                    tls=self.tls is not None,
                )
            )
        return bound

    def close_sockets(self) -> None:
        for listener in self._listeners:
            listener.socket.close()

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as handlers:
            try:
                with self._accepting:
                    async with trio.open_nursery() as acceptors:
                        for listener in self._listeners:
                            acceptors.start_soon(self._accept_loop, listener, handlers)
                        task_status.started()
            finally:
                self.close_sockets()
            # Drain: every connection flushes and closes; stragglers are cancelled.
            draining = len(self.connections)
            started = trio.current_time()
            if draining:
                self.log.info("listener.draining", connections=draining)
            for conn in list(self.connections):
                conn.stop("shutdown")
            handlers.cancel_scope.deadline = started + self.drain_timeout
        if draining:
            self.log.info(
                "listener.drained",
                connections=draining,
                seconds=round(trio.current_time() - started, 3),
                # True: some connection had not finished by drain_timeout and was cut.
                deadline_reached=handlers.cancel_scope.cancelled_caught,
            )

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors and the like: back off, keep serving.
                self.log.warning("listener.accept_failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            peer = _peer_name(stream)
            ip = peer_ip(peer)
            refused: str | None = None
            if len(self.connections) >= self.config.max_connections:
                refused = MAX_CONNECTIONS
            else:
                refused = self.per_ip.admit(ip, trio.current_time())
            if refused is not None:
                self.limited[refused] += 1
                self.log.warning("listener.connection_refused", reason=refused, peer=peer)
                await stream.aclose()
                continue
            self.accepted += 1
            handlers.start_soon(self._run_connection, stream, peer)

    async def _run_connection(self, tcp: trio.SocketStream, peer: str) -> None:
        conn = Connection(next(_conn_ids), peer, self.config.protocol, self.config.label)
        conn.auth_throttle = self.auth_throttle
        conn.limited = self.limited
        self.connections.add(conn)
        conn.log.debug("conn.opened", listener=self.config.label)
        # What the handler reads and writes, and what is closed at the end.
        stream: trio.abc.Stream = tcp
        try:
            if self.tls is not None:
                secured = await self._handshake(tcp, self.tls, conn)
                if secured is None:
                    return
                stream = secured
            await self.handler(stream, conn)
        except BaseException as exc:
            # Cancellation (shutdown) may arrive together with the peer's reset in one
            # group: the cancellation goes on up, everything else ends here.
            cancelled, failure = _split_cancelled(exc)
            if failure is None:
                raise
            if _peer_gone(failure):
                conn.log.info("conn.lost", error=str(failure) or type(failure).__name__)
            else:
                conn.log.error("conn.crashed", exc_info=failure)
            if cancelled is not None:
                raise cancelled from None
        finally:
            self.connections.discard(conn)
            self.closed.add(conn)
            self.per_ip.release(conn.ip)
            if conn.stop_reason is not None and self.config.protocol != "http":
                await _linger(stream)  # HTTP answers are framed: their clients need no FIN
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()
            conn.log.debug("conn.closed")

    async def _handshake(
        self, tcp: trio.SocketStream, tls: TLSContextHolder, conn: Connection
    ) -> trio.SSLStream[trio.SocketStream] | None:
        """The TLS stream once the handshake is done within ``connect_timeout``; None
        (logged as ``tls.handshake_failed``) if it failed, timed out or shutdown came."""
        stream = trio.SSLStream(
            tcp,
            tls.current(),
            server_side=True,
            # HTTP/1.1 peers close without close_notify; HTTP framing says where bodies end.
            https_compatible=self.config.protocol == "http",
        )
        timeout = self.config.connect_timeout
        failure: str | None = None
        looks_like: str | None = None
        with conn.reading() as scope:
            scope.deadline = trio.current_time() + timeout
            try:
                first = await tcp.socket.recv(8, socket.MSG_PEEK)
                looks_like = _plain_text_guess(first)
                if not first:
                    failure = "the client closed the connection before the handshake"
                elif looks_like is not None:
                    failure = "plain text on a TLS port"
                    # Take what was sent, so that the close is a FIN rather than a reset.
                    with contextlib.suppress(trio.BrokenResourceError):
                        await tcp.receive_some(65536)
                else:
                    await stream.do_handshake()
            except (trio.BrokenResourceError, OSError) as exc:
                failure = handshake_failure(exc)
        if scope.cancelled_caught:
            if conn.stop_reason is not None:
                return None  # shutdown: not the peer's failure
            failure = f"no handshake within {timeout:g} s (connect_timeout)"
        if failure is not None:
            extra = {} if looks_like is None else {"looks_like": looks_like}
            conn.log.info("tls.handshake_failed", reason=failure, **extra)
            return None
        conn.tls_version = stream.version()
        cert = stream.getpeercert()
        der = stream.getpeercert(binary_form=True)
        if cert and der:  # an empty dict: a certificate that was not verified
            conn.peer_cert = cert
            conn.peer_identity = peer_identity(cert, der)
        cipher = stream.cipher()
        conn.log.debug(
            "tls.established",
            version=conn.tls_version,
            cipher=cipher[0] if cipher else None,
            client_cn=conn.peer_identity.common_name if conn.peer_identity else None,
        )
        return stream
