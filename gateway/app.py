"""The running gateway: one broker core and the listeners that feed it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from . import config as config_mod
from .auth import Authenticator
from .auth.acl import Acl
from .auth.users import UserStore
from .bridges.bridge import Bridge
from .config import Config, ConfigError, ListenerConfig, QueueConfig, build_acl, build_router
from .core import Broker, Overflow, QueuePolicy
from .core.routing import Router
from .listeners import BoundAddress, Connection, StartupError, TCPServer
from .listeners._serve import Handler
from .listeners.authn import build_authenticator
from .listeners.http_api import HTTPService
from .listeners.mqtt import mqtt_handler
from .listeners.stomp import stomp_handler
from .listeners.webhooks import Webhook, build_webhook
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


def session_queue_policy(config: Config) -> QueuePolicy:
    """The policy of every session's queue (``[gateway] max_queued_messages``)."""
    return QueuePolicy(max_length=config.gateway.max_queued_messages)


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
        session_queue=session_queue_policy(config),
        queues=[(queue.name, queue_policy(queue)) for queue in config.queues],
        auto_create_queues=config.gateway.auto_create_queues,
        router=build_router(config),
        acl=build_acl(config),
    )


def _address(item: BoundAddress) -> str:
    return f"[{item.host}]:{item.port}" if ":" in item.host else f"{item.host}:{item.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class _ReloadPlan:
    """What a reload built and will apply (Gateway._plan_reload)."""

    auth: Authenticator | None  # a new one: [auth] changed
    users: UserStore | None  # the users file read again: [auth] unchanged
    webhooks: dict[str, Webhook]
    acl: Acl
    router: Router | None
    added: list[str]
    removed: list[str]
    changed: list[str]
    restart_required: list[str]


# [gateway] keys that only a restart applies.
_RESTART_KEYS = (
    "data_dir",
    "durability",
    "store_fsync",
    "store_max_size",
    "log_level",
    "log_format",
)


def _in_force(old: Config, new: Config) -> Config:
    """``new`` with what only a restart applies kept from ``old``: the configuration in
    force after a reload (``Gateway.config``, the admin API's view of it)."""
    kept = {key: getattr(old.gateway, key) for key in _RESTART_KEYS}
    gateway = msgspec.structs.replace(new.gateway, **kept)
    return msgspec.structs.replace(new, gateway=gateway, listeners=old.listeners)


def _restart_required(old: Config, new: Config, broker: Broker) -> list[str]:
    """The keys whose change a reload cannot apply: listeners (their sockets, protocols
    and settings), the data directory, durability, logging."""
    keys = [
        f"gateway.{key}"
        for key in _RESTART_KEYS
        if getattr(old.gateway, key) != getattr(new.gateway, key)
    ]
    before = {item.label: item for item in old.listeners}
    after = {item.label: item for item in new.listeners}
    keys += [
        f"listeners[{label!r}]"
        for label in sorted(set(before) | set(after))
        if before.get(label) != after.get(label)
    ]
    for item in new.queues:
        queue = broker.queues.get(item.name)
        if queue is not None and queue.policy.durability != item.durability:
            keys.append(f"queues[{item.name!r}].durability")
    return keys


class Gateway:
    """Owns the core and the listeners; binds them all before serving any."""

    def __init__(
        self,
        config: Config,
        broker: Broker | None = None,
        *,
        reload_config: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        # What ``reload`` reads: the file again, with the command line's overrides (cli.py).
        self.reload_config = reload_config or (lambda: config_mod.load(config.source))
        self.broker = broker if broker is not None else build_broker(config, build_store(config))
        self.bound: list[BoundAddress] = []
        self.log = get_logger()
        self.stopped = trio.Event()
        self._stop = trio.Event()
        self._servers: list[TCPServer] = []
        self._ticking = trio.CancelScope()
        self._serving = False
        self._store_open = False
        # Who may connect, for every listener (docs/security.md). Handlers read it for
        # each new connection, so that a reload can replace it.
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
        # Each bridge runs under its own cancel scope, so that a reload can stop one.
        self._bridge_nursery: trio.Nursery | None = None
        self._bridge_tasks: dict[str, tuple[trio.CancelScope, trio.Event]] = {}

    def _protocol_handler(self, protocol: str) -> Callable[[ListenerConfig], Handler]:
        def make(listener: ListenerConfig) -> Handler:
            async def handle(stream: trio.abc.Stream, conn: Connection) -> None:
                # The authenticator in force when the connection opened (reload swaps it).
                await HANDLERS[protocol](self.broker, listener, self.auth)(stream, conn)

            return handle

        return make

    def _handler(self, listener: ListenerConfig) -> Handler:
        if listener.protocol == "http":
            return self.http.handler(listener)
        return self._protocol_handler(listener.protocol)(listener)

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

    def reload(self, reason: str) -> dict[str, Any]:
        """Read the configuration again (``reload_config``) and apply what can change
        while connections stay open: users and ``[auth]``, ACLs, routes, queue policies,
        webhooks, bridges, TLS files, and a few ``[gateway]`` keys. What cannot
        (listeners, the data directory, durability) is named in ``restart_required``.

        An invalid configuration raises ConfigError, logged as ``config.reload_failed``,
        and changes nothing. Returns what changed (logged as ``config.reloaded``)."""
        try:
            new = self.reload_config()
            plan = self._plan_reload(new)
        except ConfigError as exc:
            self.log.error("config.reload_failed", reason=reason, error=str(exc))
            raise
        summary = self._apply_reload(new, plan, reason)
        self.log.info("config.reloaded", reason=reason, source=new.source, **summary)
        if summary["restart_required"]:
            self.log.warning(
                "config.restart_required", reason=reason, keys=summary["restart_required"]
            )
        return {"reason": reason, "source": new.source, **summary}

    def _plan_reload(self, new: Config) -> _ReloadPlan:
        """Everything a reload builds, before anything is applied; ConfigError if a part
        of ``new`` cannot be used (``load`` checked the rest)."""
        old = self.config
        if new.auth != old.auth:
            auth: Authenticator | None = Authenticator.from_config(new)
            users = None
        else:
            auth = None
            # The users file, read now rather than at the next second's look.
            users = None if new.auth.users_file is None else UserStore(new.auth.users_file)
        old_hooks = {item.name: item for item in old.webhooks}
        webhooks = {
            item.name: (
                self.http.webhooks[item.name]  # unchanged: keeps what it deduplicates
                if old_hooks.get(item.name) == item and item.name in self.http.webhooks
                else build_webhook(item)
            )
            for item in new.webhooks
        }
        router = build_router(new)
        old_forwards = self.broker.router.bridges if self.broker.router else frozenset()
        new_forwards = router.bridges if router else frozenset()
        current = {name: bridge.config for name, bridge in self.bridges.items()}
        wanted = {item.name: item for item in new.bridges}
        changed = sorted(
            name
            for name, item in wanted.items()
            if name in current
            and (current[name] != item or (name in old_forwards) != (name in new_forwards))
        )
        return _ReloadPlan(
            auth=auth,
            users=users,
            webhooks=webhooks,
            acl=build_acl(new),
            router=router,
            added=sorted(set(wanted) - set(current)),
            removed=sorted(set(current) - set(wanted)),
            changed=changed,
            restart_required=_restart_required(old, new, self.broker),
        )

    def _apply_reload(self, new: Config, plan: _ReloadPlan, reason: str) -> dict[str, Any]:
        broker = self.broker
        new = _in_force(self.config, new)
        self.config = new
        self.http.config = new
        # Who may connect: new connections and requests use it, open ones keep theirs.
        if plan.auth is not None:
            self.auth = plan.auth
            self.http.auth = plan.auth
        elif plan.users is not None:
            self.auth.store = plan.users
        broker.set_acl(plan.acl)
        broker.auto_create_queues = new.gateway.auto_create_queues
        broker.session_queue_policy = session_queue_policy(new)
        for queue in new.queues:
            policy = queue_policy(queue)
            existing = broker.queues.get(queue.name)
            if existing is not None:  # a queue's durability is fixed while it exists
                policy = dataclasses.replace(policy, durability=existing.policy.durability)
            broker.declare_queue(queue.name, policy)
        self.http.webhooks = plan.webhooks
        for server in self._servers:
            server.drain_timeout = new.gateway.drain_timeout
        # Routes, then the bridges' forward sinks on the new router.
        broker.router = plan.router
        for name in plan.removed:
            self._stop_bridge(name)
            self.bridges.pop(name).detach()  # its outboxes stop filling, keep their messages
        for wanted in new.bridges:
            name = wanted.name
            if name in plan.added or name in plan.changed:
                if name in plan.changed:
                    # What the new rules no longer feed; held acknowledgements stay held.
                    self.bridges[name].detach(release=False)
                bridge = Bridge(wanted, broker)
                bridge.attach()  # its outboxes fill from now on, under the new rules
                after = self._stop_bridge(name) if name in plan.changed else None
                self.bridges[name] = bridge
                self._start_bridge(bridge, after)
            elif plan.router is not None:
                self.bridges[name].attach()  # the same outboxes; the new router's sink
        # TLS files: a listener whose files fail logs tls.reload_failed and keeps its own.
        tls = self.reload_tls(reason)
        return {
            "users": len(self.auth.users.records),
            "auth_rebuilt": plan.auth is not None,
            "acl_rules": len(new.acl),
            "routes": len(new.routes),
            "queues": len(new.queues),
            "webhooks": len(new.webhooks),
            "bridges_added": plan.added,
            "bridges_removed": plan.removed,
            "bridges_changed": plan.changed,
            "tls_reloaded": tls,
            "tls_failed": sum(1 for server in self._servers if server.tls) - tls,
            "restart_required": plan.restart_required,
        }

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
            if ok:
                self.log.info("store.closed", path=str(store.path))  # the last commit is done
            else:
                self.log.error("store.close_failed", error=store.last_error, path=str(store.path))
            for callback in waiting:
                callback(ok)

    async def _bridge_all(self) -> None:
        try:
            with self._bridging:
                async with trio.open_nursery() as nursery:
                    self._bridge_nursery = nursery
                    for bridge in self.bridges.values():
                        self._start_bridge(bridge)
                    await trio.sleep_forever()
        finally:
            self._bridge_nursery = None  # a reload after the stop starts nothing
            self._bridge_tasks.clear()

    def _start_bridge(self, bridge: Bridge, after: trio.Event | None = None) -> None:
        """Run ``bridge`` in the bridges' nursery (once ``after`` is set: its predecessor
        of the same name has stopped). Before the nursery exists, ``_bridge_all`` does."""
        nursery = self._bridge_nursery
        if nursery is None:
            return
        scope, done = trio.CancelScope(), trio.Event()
        self._bridge_tasks[bridge.name] = (scope, done)
        nursery.start_soon(self._run_bridge, bridge, scope, done, after)

    async def _run_bridge(
        self, bridge: Bridge, scope: trio.CancelScope, done: trio.Event, after: trio.Event | None
    ) -> None:
        try:
            with scope:
                if after is not None:
                    await after.wait()
                await bridge.run()
        finally:
            done.set()

    def _stop_bridge(self, name: str) -> trio.Event | None:
        """Cancel the bridge's task: its link closes, what was in flight goes back to its
        outboxes, which stay (core queues, in the store). Returns the event set once it
        has stopped (None: it was not running)."""
        task = self._bridge_tasks.pop(name, None)
        if task is None:
            return None
        scope, done = task
        scope.cancel()
        return done

    async def _tick(self) -> None:
        started = trio.current_time()
        next_sys = started
        with self._ticking:
            while True:
                interval = self.config.gateway.sys_interval  # a reload may change it
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
        self.started_at = time.time()  # the admin API's uptime
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
