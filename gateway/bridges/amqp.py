"""The AMQP 0-9-1 bridge kind (RabbitMQ), over pamqp frames (docs/bridge-amqp.md).

Targets (outbound ``to``): ``exchange:NAME/ROUTING.KEY`` (``exchange:NAME`` or
``exchange:NAME/`` for an empty key), ``queue:NAME`` (the default exchange, key
NAME), or a bare routing key, which goes to ``amq.topic``.

Sources (inbound ``from``): ``queue:NAME`` consumes an existing (or declared)
queue; ``exchange:NAME/BINDING.KEY`` (or a bare binding key, on ``amq.topic``)
declares the durable queue ``gateway.<bridge>.<rule index>`` bound to it, so that
messages wait upstream while the gateway is away, and consumes that.

One connection, one channel (1) in confirm mode for publishing and consuming.
A reader (``run``) turns publisher confirms, returns and deliveries into ``Link``
calls; every write goes through one lock, so a publish, a settle and a heartbeat
never interleave their frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec
import structlog
import trio
from pamqp import commands
from pamqp.base import Frame

from . import amqp_protocol as wire
from .base import (
    ORIGIN_HEADER,
    Endpoint,
    InboundRule,
    Link,
    Outbound,
    Output,
    Upstream,
    UpstreamError,
    open_stream,
    upstream_error_in,
)
from .config import BridgeConfig

log = structlog.get_logger(__name__)

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
TLS_SCHEMES = frozenset({"amqps"})
CHANNEL = 1
# Reply codes after which reconnecting with the same settings cannot help.
_FINAL_CODES = frozenset({402, 403, 406, 530, 540})
_CLOSE_WAIT = 1.0


class _Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ExchangeDecl(_Options, frozen=True):
    name: str
    type: str = "topic"
    durable: bool = True
    auto_delete: bool = False


class QueueDecl(_Options, frozen=True):
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, str | int | bool] = {}


class BindingDecl(_Options, frozen=True):
    queue: str
    exchange: str
    routing_key: str = "#"


class Options(_Options, frozen=True):
    """The ``[bridges.amqp]`` table."""

    # None: the URL's path (``amqp://host/VHOST``, percent-encoded), else "/".
    vhost: str | None = None
    heartbeat: int = 30
    prefetch: int = 100
    mandatory: bool = True
    sasl: Literal["PLAIN", "EXTERNAL"] = "PLAIN"
    exchanges: tuple[ExchangeDecl, ...] = ()
    queues: tuple[QueueDecl, ...] = ()
    bindings: tuple[BindingDecl, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.heartbeat <= 65535:
            raise ValueError("heartbeat must be 0-65535 seconds")
        if not 0 <= self.prefetch <= 65535:
            raise ValueError("prefetch must be 0-65535")


class AmqpUpstream(Upstream):
    separator = "."

    def __init__(
        self,
        config: BridgeConfig,
        options: object,
        link: Link,
        inbound: Sequence[InboundRule],
    ) -> None:
        super().__init__(config, options, link, inbound)
        assert isinstance(options, Options)
        self.options = options
        # A bad URL is reported by open(), where the framework expects failures.
        self._url_error: str | None = None
        try:
            self.endpoint = Endpoint.parse(config.url, DEFAULT_PORTS, TLS_SCHEMES)
        except ValueError as exc:
            self._url_error = f"bad AMQP URL: {exc}"
            self.endpoint = Endpoint("amqp", "", 0, None, None, "", tls=False)
        path = self.endpoint.path[1:] if self.endpoint.path.startswith("/") else ""
        self.vhost = options.vhost if options.vhost is not None else (path or "/")
        self.log = log.bind(bridge=config.name, kind="amqp")
        self.heartbeat = 0
        self.frame_max = wire.DEFAULT_FRAME_MAX
        self.channel_max = 0
        self.server_properties: dict[str, Any] = {}
        self.blocked = False
        self._stream: trio.abc.Stream | None = None
        self._decoder = wire.Decoder()
        self._output = Output(self._write)
        self._last_sent = 0.0
        self._reading = False
        self._closed = False
        self._confirms = wire.Confirms()
        self._consumers: dict[str, int] = {}

    # --- connecting ---------------------------------------------------------------

    async def open(self) -> None:
        if self._url_error is not None:
            raise UpstreamError(self._url_error, retry=False)
        self._stream = await open_stream(self.config, self.endpoint)
        await self._send(wire.protocol_header())
        start = await self._expect(0, commands.Connection.Start)
        assert isinstance(start, commands.Connection.Start)
        self.server_properties = dict(start.server_properties or {})
        mechanism = self.options.sasl
        if mechanism not in str(start.mechanisms).split():
            raise UpstreamError(
                f"the server does not offer SASL {mechanism} (it offers {start.mechanisms})",
                retry=False,
            )
        if mechanism == "PLAIN":
            user = self.endpoint.username if self.endpoint.username is not None else "guest"
            password = self.endpoint.password if self.endpoint.password is not None else "guest"
            response = f"\0{user}\0{password}"
        else:
            response = ""  # EXTERNAL: the server takes the identity from our TLS certificate
        await self._send(
            wire.method(
                0,
                commands.Connection.StartOk(
                    client_properties=self._client_properties(),
                    mechanism=mechanism,
                    response=response,
                ),
            )
        )
        tune = await self._expect(0, commands.Connection.Tune, authenticating=True)
        assert isinstance(tune, commands.Connection.Tune)
        self._tune(tune)
        await self._send(
            wire.method(
                0,
                commands.Connection.TuneOk(
                    channel_max=self.channel_max,
                    frame_max=self.frame_max,
                    heartbeat=self.heartbeat,
                ),
            )
            + wire.method(0, commands.Connection.Open(virtual_host=self.vhost))
        )
        await self._expect(0, commands.Connection.OpenOk)
        await self._call(commands.Channel.Open(), commands.Channel.OpenOk)
        await self._call(commands.Confirm.Select(), commands.Confirm.SelectOk)
        await self._declare()
        await self._consume()
        self.log.info(
            "bridge.amqp.connected",
            host=self.endpoint.host,
            port=self.endpoint.port,
            vhost=self.vhost,
            heartbeat=self.heartbeat,
            frame_max=self.frame_max,
            consumers=len(self._consumers),
        )

    def _client_properties(self) -> dict[str, Any]:
        return {
            "product": "gateway",
            "connection_name": f"gateway bridge {self.config.name}",
            "capabilities": {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                # Makes RabbitMQ say 403 on a wrong password instead of just closing.
                "authentication_failure_close": True,
            },
        }

    def _tune(self, tune: commands.Connection.Tune) -> None:
        # 0 means "no limit": we still bound frames (and so our buffer) by our default.
        self.frame_max = min(tune.frame_max or wire.DEFAULT_FRAME_MAX, wire.DEFAULT_FRAME_MAX)
        self.channel_max = tune.channel_max or 2047
        ours, theirs = self.options.heartbeat, tune.heartbeat or 0
        self.heartbeat = 0 if ours == 0 else (ours if theirs == 0 else min(ours, theirs))
        self._decoder.frame_max = self.frame_max

    async def _declare(self) -> None:
        for exchange in self.options.exchanges:
            await self._call(
                commands.Exchange.Declare(
                    exchange=exchange.name,
                    exchange_type=exchange.type,
                    durable=exchange.durable,
                    auto_delete=exchange.auto_delete,
                ),
                commands.Exchange.DeclareOk,
            )
        for queue in self.options.queues:
            await self._call(
                commands.Queue.Declare(
                    queue=queue.name,
                    durable=queue.durable,
                    exclusive=queue.exclusive,
                    auto_delete=queue.auto_delete,
                    arguments=dict(queue.arguments),
                ),
                commands.Queue.DeclareOk,
            )
        for binding in self.options.bindings:
            await self._call(
                commands.Queue.Bind(
                    queue=binding.queue, exchange=binding.exchange, routing_key=binding.routing_key
                ),
                commands.Queue.BindOk,
            )

    async def _consume(self) -> None:
        if not self.inbound:
            return
        await self._call(
            commands.Basic.Qos(prefetch_count=self.options.prefetch), commands.Basic.QosOk
        )
        for rule in self.inbound:
            try:
                exchange, name = wire.parse_source(rule.source)
            except ValueError as exc:
                raise UpstreamError(f"inbound[{rule.index}]: {exc}", retry=False) from None
            if exchange is not None:
                key = name
                name = f"gateway.{self.config.name}.{rule.index}"
                await self._call(
                    commands.Queue.Declare(queue=name, durable=True), commands.Queue.DeclareOk
                )
                await self._call(
                    commands.Queue.Bind(queue=name, exchange=exchange, routing_key=key),
                    commands.Queue.BindOk,
                )
            consumer_tag = f"gateway.{self.config.name}.{rule.index}"
            self._consumers[consumer_tag] = rule.index
            await self._call(
                commands.Basic.Consume(queue=name, consumer_tag=consumer_tag, no_ack=False),
                commands.Basic.ConsumeOk,
            )

    async def _call(self, request: Frame, reply: type[Frame]) -> Frame:
        await self._send(wire.method(CHANNEL, request))
        return await self._expect(CHANNEL, reply)

    async def _expect(
        self, channel: int, reply: type[Frame], *, authenticating: bool = False
    ) -> Frame:
        """Read until ``reply`` arrives on ``channel``, handling whatever else comes
        first (a delivery for a consumer started a moment ago, a confirm)."""
        while True:
            event = await self._next_event(authenticating=authenticating)
            if (
                isinstance(event, wire.MethodFrame)
                and event.channel == channel
                and isinstance(event.method, reply)
            ):
                return event.method
            await self._handle(event)

    async def _next_event(self, *, authenticating: bool = False) -> wire.Event:
        assert self._stream is not None
        while True:
            try:
                event = self._decoder.next_event()
            except wire.AmqpProtocolError as exc:
                raise UpstreamError(f"AMQP framing: {exc}", code=exc.reply_code) from None
            if not isinstance(event, wire.Eof | wire._NeedData):
                return event
            if isinstance(event, wire.Eof):
                if authenticating:
                    # RabbitMQ without authentication_failure_close just hangs up.
                    raise UpstreamError(
                        "the server closed the connection after authentication: "
                        "wrong username or password?",
                        code=403,
                        retry=False,
                    )
                raise UpstreamError("the server closed the connection")
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if authenticating:
                    raise UpstreamError(
                        f"connection lost during authentication ({exc}): wrong credentials?",
                        code=403,
                        retry=False,
                    ) from exc
                raise UpstreamError(f"connection lost: {exc}") from exc
            self._decoder.receive_data(data)

    # --- writing ------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        async with self._output.lock:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Write ``data``, under the output's lock."""
        assert self._stream is not None
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamError(f"connection lost: {exc}") from exc
        self._last_sent = trio.current_time()

    def _queue_output(self, data: bytes) -> None:
        """Buffer ``data`` for run's writer (settling is synchronous)."""
        if not self._closed:
            self._output.write(data)

    async def _heartbeats(self) -> None:
        interval = self.heartbeat / 2
        while True:
            await trio.sleep_until(self._last_sent + interval)
            if trio.current_time() >= self._last_sent + interval:
                await self._send(wire.heartbeat_frame())

    # --- publishing ---------------------------------------------------------------

    async def publish(self, batch: Sequence[Outbound]) -> None:
        now = time.time()
        origin = {ORIGIN_HEADER: self.config.name}
        mandatory = self.options.mandatory
        frames: list[bytes] = []
        refused: list[tuple[int, str]] = []
        for item in batch:
            try:
                exchange, key = wire.parse_target(item.target)
                data = wire.publish_frame(CHANNEL, exchange, key, mandatory) + wire.publish_content(
                    CHANNEL, item.message, origin, now, self.frame_max
                )
            except (ValueError, TypeError) as exc:
                # Cannot be written at all: refuse it for good, not on every reconnect.
                refused.append((item.tag, f"cannot be sent over AMQP: {exc}"))
                continue
            frames.append(data)
            self._confirms.sent(item.tag, exchange, key, mandatory=mandatory)
        if frames:
            await self._send(b"".join(frames))
        for tag, reason in refused:
            self.link.refused(tag, reason)

    # --- reading ------------------------------------------------------------------

    async def run(self) -> None:
        assert self._stream is not None
        self._reading = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._output.writer)
                if self.heartbeat:
                    nursery.start_soon(self._heartbeats)
                await self._read()
        except BaseExceptionGroup as group:
            error = upstream_error_in(group)
            if error is None:
                raise
            raise error from None
        finally:
            self._reading = False

    async def _read(self) -> None:
        # Two missed heartbeat intervals: the server (or the path to it) is gone.
        silence = 2 * self.heartbeat if self.heartbeat else float("inf")
        while True:
            try:
                with trio.fail_after(silence):
                    event = await self._next_event()
            except trio.TooSlowError:
                raise UpstreamError(f"nothing heard from the server for {silence} s") from None
            await self._handle(event)

    async def _handle(self, event: wire.Event) -> None:
        match event:
            case wire.Content(method=commands.Basic.Deliver() as deliver):
                self._deliver(deliver, event.properties, event.body)
            case wire.Content(method=commands.Basic.Return() as returned):
                self._returned(returned)
            case wire.Content():
                self.log.warning("bridge.amqp.unexpected_content", method=event.method.name)
            case wire.Undecodable(method=commands.Basic.Deliver() as deliver):
                # Requeueing would bring it straight back: reject it (the queue's
                # dead-letter exchange, if any, keeps it).
                self.log.warning("bridge.amqp.undecodable", reason=event.reason)
                self._queue_output(
                    wire.method(
                        CHANNEL,
                        commands.Basic.Reject(delivery_tag=deliver.delivery_tag, requeue=False),
                    )
                )
            case wire.Undecodable(method=commands.Basic.Return() as returned):
                self._returned(returned)
            case wire.Undecodable():
                pass
            case wire.MethodFrame(method=commands.Basic.Ack() as ack):
                self._report(self._confirms.acked(ack.delivery_tag, multiple=ack.multiple))
            case wire.MethodFrame(method=commands.Basic.Nack() as nack):
                self._report(self._confirms.nacked(nack.delivery_tag, multiple=nack.multiple))
            case wire.MethodFrame(method=commands.Connection.Close() as close):
                self._closed = True
                with trio.move_on_after(_CLOSE_WAIT):
                    await self._send(wire.method(0, commands.Connection.CloseOk()))
                raise self._error("connection", close.reply_code, close.reply_text)
            case wire.MethodFrame(method=commands.Channel.Close() as close):
                if close.reply_code == 404 and close.class_id == 60 and close.method_id == 40:
                    # A publish to a missing exchange: refuse it for good, or every
                    # reconnect would send it again and fail the same way.
                    self._report(self._confirms.missing_exchange(close.reply_text))
                raise self._error(f"channel {event.channel}", close.reply_code, close.reply_text)
            case wire.MethodFrame(method=commands.Connection.Blocked() as blocked):
                self.blocked = True
                self.log.warning("bridge.amqp.blocked", reason=blocked.reason)
            case wire.MethodFrame(method=commands.Connection.Unblocked()):
                self.blocked = False
                self.log.info("bridge.amqp.unblocked")
            case wire.MethodFrame(method=commands.Basic.Cancel() as cancel):
                # The server cancelled a consumer (its queue was deleted): reconnect,
                # which declares and consumes again.
                raise UpstreamError(f"the server cancelled consumer {cancel.consumer_tag}")
            case wire.VersionMismatch(version=version):
                raise UpstreamError(
                    f"the server speaks AMQP {'.'.join(map(str, version))}, not 0-9-1",
                    retry=False,
                )
            case wire.Heartbeat():
                pass
            case _:
                self.log.debug("bridge.amqp.ignored", event=type(event).__name__)

    def _returned(self, method: commands.Basic.Return) -> None:
        if not self._confirms.returned(
            method.exchange, method.routing_key or "", f"{method.reply_code} {method.reply_text}"
        ):
            self.log.warning("bridge.amqp.unmatched_return", exchange=method.exchange)

    def _report(self, outcomes: list[tuple[int, str | None]]) -> None:
        for tag, refusal in outcomes:
            if refusal is None:
                self.link.confirmed(tag)
            else:
                self.link.refused(tag, refusal)

    def _error(self, what: str, code: int | None, text: str) -> UpstreamError:
        self.log.warning("bridge.amqp.closed_by_server", scope=what, code=code, text=text)
        return UpstreamError(
            f"the server closed the {what}: {code} {text}",
            code=code,
            retry=code not in _FINAL_CODES,
        )

    def _deliver(
        self, deliver: commands.Basic.Deliver, properties: commands.Basic.Properties, body: bytes
    ) -> None:
        if self._closed:
            # Closing: it would be requeued anyway when the connection ends.
            return
        rule = self._consumers.get(deliver.consumer_tag or "")
        if rule is None:
            self.log.warning("bridge.amqp.unknown_consumer", consumer_tag=deliver.consumer_tag)
            return
        message = wire.message_from(properties, body, time.time())
        self.link.received(
            rule, deliver.routing_key or "", message, self._settler(deliver.delivery_tag or 0)
        )

    def _settler(self, delivery_tag: int) -> Callable[[bool], None]:
        done = False

        def settle(accepted: bool) -> None:
            nonlocal done
            if done:
                return
            done = True
            if accepted:
                reply: Frame = commands.Basic.Ack(delivery_tag=delivery_tag)
            else:
                reply = commands.Basic.Nack(delivery_tag=delivery_tag, requeue=True)
            self._queue_output(wire.method(CHANNEL, reply))

        return settle

    # --- closing ------------------------------------------------------------------

    async def close(self) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            if not self._closed:
                self._closed = True
                with trio.move_on_after(_CLOSE_WAIT):
                    await self._send(
                        wire.method(
                            0,
                            commands.Connection.Close(
                                reply_code=200, reply_text="bye", class_id=0, method_id=0
                            ),
                        )
                    )
                    # Only when run is not reading: one stream has one reader.
                    if not self._reading:
                        await self._expect(0, commands.Connection.CloseOk)
        except UpstreamError:
            pass
        finally:
            self._stream = None
            await trio.aclose_forcefully(stream)
            self.log.info("bridge.amqp.closed")
