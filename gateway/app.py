"""The running gateway: one broker core and the listeners that feed it."""

from __future__ import annotations

import trio

from .config import Config
from .core import Broker
from .listeners import BoundAddress, StartupError, TCPServer
from .listeners.mqtt import mqtt_handler
from .logging import get_logger


def _address(item: BoundAddress) -> str:
    return f"[{item.host}]:{item.port}" if ":" in item.host else f"{item.host}:{item.port}"


class Gateway:
    """Owns the core and the listeners; binds them all before serving any."""

    def __init__(self, config: Config, broker: Broker | None = None) -> None:
        self.config = config
        self.broker = broker if broker is not None else Broker()
        self.bound: list[BoundAddress] = []
        self.log = get_logger()
        self.stopped = trio.Event()
        self._stop = trio.Event()
        self._servers: list[TCPServer] = []

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
        drain = self.config.gateway.drain_timeout
        servers = [
            TCPServer(item, mqtt_handler(self.broker, item), drain)
            for item in self.config.listeners
        ]
        try:
            for server in servers:
                self.bound.extend(await server.bind())
        except StartupError:
            for server in servers:
                server.close_sockets()
            self.bound.clear()
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

    async def run(
        self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind (unless ``bind`` was awaited already), serve until ``stop``, then drain."""
        await self.bind()
        try:
            async with trio.open_nursery() as nursery:
                for server in self._servers:
                    await nursery.start(server.serve)
                self.log.info("gateway.started", listeners=len(self.bound))
                task_status.started(self)
                await self._stop.wait()
                self.log.info("gateway.stopping", drain_timeout=self.config.gateway.drain_timeout)
                for server in self._servers:
                    server.stop_accepting()
        finally:
            for server in self._servers:
                server.close_sockets()
            self.stopped.set()
        self.log.info("gateway.stopped")
