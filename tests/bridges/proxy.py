"""A TCP proxy of the tests' own between the gateway and a real upstream server, so
that a fault test can cut the link (every connection reset, new ones refused) and
restore it."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import AsyncIterator

import trio


class Proxy:
    """``tls``: a server context, to terminate TLS in front of a plain-text upstream
    (the TLS path of a bridge tested against the real server behind it)."""

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.tls = tls
        self.port = 0
        self.up = True
        self.connections = 0
        self._scopes: set[trio.CancelScope] = set()

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until ``restore``."""
        self.up = False
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        self.up = True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        if not self.up:
            await trio.aclose_forcefully(tcp)
            return
        client: trio.abc.Stream = tcp
        if self.tls is not None:
            client = trio.SSLStream(tcp, self.tls, server_side=True)
            try:
                await client.do_handshake()
            except trio.BrokenResourceError:
                await trio.aclose_forcefully(tcp)
                return
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        self.connections += 1
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, server, client, nursery.cancel_scope)
            finally:
                self._scopes.discard(scope)
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)

    @staticmethod
    async def _pipe(
        source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        scope.cancel()


@contextlib.asynccontextmanager
async def proxy_to(
    nursery: trio.Nursery, port: int, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Proxy]:
    proxy = Proxy(port, tls=tls)
    await nursery.start(proxy.serve)
    yield proxy


class ThreadedProxy:
    """A Proxy on its own thread (its own Trio loop), for tests whose gateway is another
    process and whose clients are threads: it outlives gateway restarts."""

    def __init__(self, port: int) -> None:
        self.proxy = Proxy(port)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._done: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the proxy did not start")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.proxy.serve)
            self._ready.set()
            await self._done.wait()
            nursery.cancel_scope.cancel()

    @property
    def port(self) -> int:
        return self.proxy.port

    def cut(self) -> None:
        trio.from_thread.run_sync(self.proxy.cut, trio_token=self._token)

    def restore(self) -> None:
        trio.from_thread.run_sync(self.proxy.restore, trio_token=self._token)

    def close(self) -> None:
        if self._done is not None:
            trio.from_thread.run_sync(self._done.set, trio_token=self._token)
        self._thread.join(10)
