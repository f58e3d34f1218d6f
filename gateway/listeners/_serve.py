"""Accepting TCP connections: binding, the per-connection nursery, deadlines and logs.

One ``TCPServer`` per configured listener. It owns the listening sockets, a
handler nursery holding one task per connection, and the drain on shutdown:
stop accepting, ask every connection to finish, cancel what is left at the
deadline. A connection's failure is caught and logged in its own frame and
never reaches another connection.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..config import ListenerConfig
from ..core import Broker
from ..logging import get_logger

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


class Connection:
    """What a protocol handler gets besides its stream: identity, logger, stop control."""

    __slots__ = (
        "_reader_scope",
        "conn_id",
        "listener",
        "log",
        "peer",
        "protocol_error",
        "stop_reason",
    )

    def __init__(self, conn_id: int, peer: str, protocol: str, listener: str) -> None:
        self.conn_id = conn_id
        self.peer = peer
        self.listener = listener
        self.log = get_logger(conn_id=conn_id, protocol=protocol, peer=peer)
        self.stop_reason: Any = None
        # Set by a protocol handler that refused its peer: WebSocket closes say why.
        self.protocol_error: str | None = None
        self._reader_scope: trio.CancelScope | None = None

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
    def __init__(self, config: ListenerConfig, handler: Handler, drain_timeout: float) -> None:
        self.config = config
        self.handler = handler
        self.drain_timeout = drain_timeout
        self.log = get_logger(listener=config.label, protocol=config.protocol)
        self.connections: set[Connection] = set()
        self._listeners: list[trio.SocketListener] = []
        self._accepting = trio.CancelScope()

    async def bind(self) -> list[BoundAddress]:
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
                BoundAddress(self.config.protocol, self.config.label, sockname[0], sockname[1])
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
            if self.connections:
                self.log.info("listener.draining", connections=len(self.connections))
            for conn in list(self.connections):
                conn.stop("shutdown")
            handlers.cancel_scope.deadline = trio.current_time() + self.drain_timeout

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of file descriptors and the like: back off, keep serving.
                self.log.warning("listener.accept_failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            if len(self.connections) >= self.config.max_connections:
                self.log.warning(
                    "listener.connection_refused", reason="max_connections", peer=_peer_name(stream)
                )
                await stream.aclose()
                continue
            handlers.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.SocketStream) -> None:
        conn = Connection(
            next(_conn_ids), _peer_name(stream), self.config.protocol, self.config.label
        )
        self.connections.add(conn)
        conn.log.debug("conn.opened", listener=self.config.label)
        try:
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
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await stream.aclose()
            conn.log.debug("conn.closed")
