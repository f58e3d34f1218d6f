"""The running gateway: one broker core and the listeners that feed it."""

from __future__ import annotations

from collections.abc import Callable

import trio

from .bridges.bridge import Bridge
from .config import Config, ListenerConfig, QueueConfig, build_acl, build_router
from .core import Broker, Overflow, QueuePolicy
from .listeners import BoundAddress, StartupError, TCPServer
from .listeners._serve import Handler
from .listeners.authn import build_authenticator
from .listeners.http_api import HTTPService
from .listeners.mqtt import mqtt_handler
from .listeners.stomp import stomp_handler
from .logging import get_logger
from .store import MemoryStore, Store
from .store.sqlite import SQLiteStore, StoreError, run_writer
from .sys_topics import publish_sys

# Each is called as handler(broker, listener, authenticator).
HANDLERS: dict[str, Callable[..., Handler]] = {
    "mqtt": mqtt_handler,
    "stomp": stomp_handler,
}

# How often the core's timers run: will delays, session expiry, TTL sweeps.
TICK_INTERVAL = 1.0


def queue_policy(queue: QueueConfig) -> QueuePolicy:
    return QueuePolicy(
        max_length=queue.max_length,
        max_bytes=queue.max_bytes,
        overflow=Overflow(queue.overflow),
        max_deliveries=queue.max_deliveries,
        dead_letter=queue.dead_letter,
        ttl=queue.ttl_seconds,
        durability=queue.durability,
    )


def build_store(config: Config) -> Store:
    if config.gateway.durability == "memory" and not any(
        queue.durability not in (None, "memory") for queue in config.queues
    ):
        return MemoryStore()
    return SQLiteStore(config.gateway.data_dir, fsync=config.gateway.store_fsync)


def build_broker(config: Config, store: Store | None = None) -> Broker:
    return Broker(
        store=store,
        durability=config.gateway.durability,
        session_queue=QueuePolicy(max_length=config.gateway.max_queued_messages),
        queues=[(queue.name, queue_policy(queue)) for queue in config.queues],
        auto_create_queues=config.gateway.auto_create_queues,
        router=build_router(config),
        acl=build_acl(config),
    )


def _address(item: BoundAddress) -> str:
    return f"[{item.host}]:{item.port}" if ":" in item.host else f"{item.host}:{item.port}"


class Gateway:
    """Owns the core and the listeners; binds them all before serving any."""

    def __init__(self, config: Config, broker: Broker | None = None) -> None:
        self.config = config
        self.broker = broker if broker is not None else build_broker(config, build_store(config))
        self.bound: list[BoundAddress] = []
        self.log = get_logger()
        self.stopped = trio.Event()
        self._stop = trio.Event()
        self._servers: list[TCPServer] = []
        self._ticking = trio.CancelScope()
        self._serving = False
        self._store_open = False
        # Who may connect, for every listener (docs/security.md): built once.
        self.auth = build_authenticator(config)
        self.http = HTTPService(
            self.broker,
            config,
            self.readiness,
            {name: self._protocol_handler(name) for name in HANDLERS},
        )
        self.http.auth = self.auth
        self.http.gateway = self
        # Links to upstream brokers (docs/bridges.md); their outboxes exist from bind.
        self.bridges = {item.name: Bridge(item, self.broker) for item in config.bridges}
        self._bridging = trio.CancelScope()

    def _protocol_handler(self, protocol: str) -> Callable[[ListenerConfig], Handler]:
        def make(listener: ListenerConfig) -> Handler:
            return HANDLERS[protocol](self.broker, listener, self.auth)

        return make

    def _handler(self, listener: ListenerConfig) -> Handler:
        if listener.protocol == "http":
            return self.http.handler(listener)
        return HANDLERS[listener.protocol](self.broker, listener, self.auth)

    def readiness(self) -> dict[str, object]:
        """What /readyz reports: every listener bound and serving, the store open."""
        return {
            "ready": self._serving and not self._stop.is_set(),
            "listeners": [
                {"protocol": item.protocol, "name": item.name, "address": _address(item)}
                for item in self.bound
            ],
            "store": type(self.broker.store).__name__,
            "store_available": self.broker.store.available,
            "stopping": self._stop.is_set(),
            "bridges": {name: bridge.stats.state for name, bridge in self.bridges.items()},
        }

    def port(self, protocol: str) -> int:
        """The first bound port of ``protocol`` (tests start listeners on port 0)."""
        for item in self.bound:
            if item.protocol == protocol:
                return item.port
        raise LookupError(f"no {protocol} listener is bound")

    def stop(self) -> None:
        """Stop accepting, drain open connections within the deadline, return from run."""
        self._stop.set()

    async def bind(self) -> None:
        """Open every listening socket, or none: raises StartupError naming the one that failed."""
        if self._servers:
            return
        data_dir = trio.Path(self.config.gateway.data_dir)
        try:
            await data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"gateway.data_dir: cannot create {data_dir}: {exc.strerror}"
            ) from None
        await self._open_store()
        for bridge in self.bridges.values():
            bridge.attach()  # before any listener: from the first publish, outboxes fill
        self.auth.log_startup()
        drain = self.config.gateway.drain_timeout
        limited = self.broker.stats.limited  # connection refusals counted with the rest
        servers = [
            TCPServer(item, self._handler(item), drain, limited=limited)
            for item in self.config.listeners
        ]
        try:
            for server in servers:
                server.load_tls()  # every certificate is checked before any port opens
            for server in servers:
                self.bound.extend(await server.bind())
        except StartupError:
            for server in servers:
                server.close_sockets()
            self.bound.clear()
            await self._close_store()
            raise
        self._servers = servers
        for item in self.bound:
            self.log.info(
                "listener.bound",
                protocol=item.protocol,
                name=item.name,
                address=_address(item),
                tls=item.tls,
            )

    def reload_tls(self, reason: str = "requested") -> int:
        """Reload every TLS listener's certificate, key and CA bundle (SIGHUP); new
        connections get them, open ones keep theirs. A listener whose files fail logs
        ``tls.reload_failed`` and keeps its previous ones. Returns how many reloaded."""
        return sum(server.tls.reload(reason) for server in self._servers if server.tls)

    async def _write(self, store: SQLiteStore, scope: trio.CancelScope) -> None:
        with scope:
            await run_writer(store, self.log)

    async def _open_store(self) -> None:
        """Lock and check the data directory's store, and recover what it holds."""
        store = self.broker.store
        if not isinstance(store, SQLiteStore) or self._store_open:
            return
        started = trio.current_time()
        try:
            await trio.to_thread.run_sync(
                lambda: store.open(max_bytes=self.config.gateway.store_max_size)
            )
            snapshot = await trio.to_thread.run_sync(store.load)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self._store_open = True
        counts = self.broker.restore(snapshot)
        self.log.info(
            "store.recovered",
            path=str(store.path),
            seconds=round(trio.current_time() - started, 3),
            **counts,
        )

    async def _close_store(self) -> None:
        """Commit what is left and release the data directory (after the writer stopped)."""
        store = self.broker.store
        if isinstance(store, SQLiteStore) and self._store_open:
            self._store_open = False
            # Acknowledgements still waiting run here, on the Trio thread, not in close's.
            waiting = store.take_callbacks()
            with trio.CancelScope(shield=True):
                ok = await trio.to_thread.run_sync(store.close)
            if not ok:
                self.log.error("store.close_failed", error=store.last_error, path=str(store.path))
            for callback in waiting:
                callback(ok)

    async def _bridge_all(self) -> None:
        with self._bridging:
            async with trio.open_nursery() as nursery:
                for bridge in self.bridges.values():
                    nursery.start_soon(bridge.run)

    async def _tick(self) -> None:
        interval = self.config.gateway.sys_interval
        started = trio.current_time()
        next_sys = started
        with self._ticking:
            while True:
                now = trio.current_time()
                if interval and now >= next_sys:
                    publish_sys(self.broker, now - started)
                    next_sys = now + interval
                await trio.sleep(TICK_INTERVAL)
                self.broker.tick()
                self.http.tick(trio.current_time())

    async def run(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind (unless ``bind`` was awaited already), serve until ``stop``, then drain."""
        await self.bind()
        store = self.broker.store
        try:
            async with trio.open_nursery() as outer:
                # The store's writer outlives the listeners: their last acknowledgements
                # wait for its commits while connections drain.
                writing = trio.CancelScope()
                if isinstance(store, SQLiteStore):
                    outer.start_soon(self._write, store, writing)
                outer.start_soon(self._bridge_all)
                async with trio.open_nursery() as nursery:
                    for server in self._servers:
                        await nursery.start(server.serve)
                    nursery.start_soon(self._tick)
                    self._serving = True
                    self.log.info("gateway.started", listeners=len(self.bound))
                    task_status.started(self)
                    await self._stop.wait()
                    self.log.info(
                        "gateway.stopping", drain_timeout=self.config.gateway.drain_timeout
                    )
                    for server in self._servers:
                        server.stop_accepting()
                    self._ticking.cancel()
                # After the listeners drained: what they published is in the outboxes,
                # which the store keeps for the next start.
                self._bridging.cancel()
                writing.cancel()
        finally:
            for server in self._servers:
                server.close_sockets()
            await self._close_store()
            self.stopped.set()
        self.log.info("gateway.stopped")
