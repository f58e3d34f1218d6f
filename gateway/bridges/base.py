"""What every bridge kind implements, and what the bridge framework gives it.

A kind (``amqp``, ``mqtt``, ``nats``, ``redis``) is one module in this package
holding an ``Options`` struct (its ``[bridges.KIND]`` table) and an ``Upstream``
subclass. The framework (``gateway.bridges.bridge``) owns everything that is the
same for every kind: the outbox (a durable core queue), the window of messages in
flight, reconnecting with backoff, rendering destinations, loop prevention and
acknowledging inbound messages once the core has them. An ``Upstream`` is one
connection: a new one is made for every (re)connect, and it never retries itself.

Confirmation contract (at-least-once): the framework hands ``publish`` messages
tagged with an integer; the upstream calls ``link.confirmed(tag)`` once the
upstream broker has taken responsibility for it (AMQP publisher confirm, MQTT
PUBACK/PUBCOMP, JetStream publish ack, Redis XADD reply), ``link.refused(tag,
reason)`` when the upstream refused it for good (unroutable, nack, error
reply: the message is dead-lettered, never retried). A message neither
confirmed nor refused when the connection ends is sent again on the next
connection, marked ``redelivered`` (duplicates are possible, never loss).
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol
from urllib.parse import unquote, urlsplit

import trio

from ..core.message import Message

if TYPE_CHECKING:
    from .config import BridgeConfig

# The header an outbound message carries upstream: the name of the bridge that sent
# it. A message arriving back on that bridge with it is a loop, and is not taken in.
ORIGIN_HEADER = "x-gateway-bridge"


class UpstreamError(Exception):
    """The upstream refused or lost the connection. ``code`` is the upstream's own
    reply code where it has one (AMQP reply-code, MQTT reason code, Redis error
    prefix); ``retry`` False means retrying with the same settings cannot help
    (wrong password, access refused): the bridge still retries, at its longest
    backoff, and reports the error."""

    def __init__(self, message: str, *, code: int | str | None = None, retry: bool = True):
        super().__init__(message)
        self.code = code
        self.retry = retry


def upstream_error_in(group: BaseExceptionGroup[BaseException]) -> UpstreamError | None:
    """The first UpstreamError in ``group`` (depth first), if any: what an
    Upstream's ``run`` raises bare when its nursery fails, since the interface
    promises an UpstreamError, not the nursery's group."""
    for error in group.exceptions:
        if isinstance(error, UpstreamError):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = upstream_error_in(error)
            if found is not None:
                return found
    return None


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to send upstream. ``target`` is the rendered destination of the
    outbound rule, in the kind's own syntax (see each kind's module docstring)."""

    tag: int
    message: Message
    target: str
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class InboundRule:
    """A ``from`` of an inbound rule, in the kind's own syntax; ``index`` is its
    position in ``inbound``, which ``Link.received`` names."""

    index: int
    source: str
    qos: int = 1


Settle = Callable[[bool], None]


def no_settle(accepted: bool) -> None:
    """The ``settle`` of an inbound message taken at most once: nothing to tell the
    upstream either way."""


class Link(Protocol):
    """What the framework gives an upstream; every method is synchronous, never
    blocks and never raises."""

    def confirmed(self, tag: int) -> None:
        """The upstream has the outbound message ``tag``."""

    def refused(self, tag: int, reason: str) -> None:
        """The upstream refused outbound ``tag`` for good; ``reason`` says why."""

    def received(self, rule: int, subject: str, message: Message, settle: Settle) -> None:
        """An inbound message for inbound rule ``rule``; ``subject`` is where it came
        from in the upstream's syntax (routing key, topic, subject, stream). The
        message's destination is ignored (the rule's ``to`` decides). The framework
        calls ``settle(True)`` once the core has accepted (and, for durable
        destinations, stored) it: then ack it upstream. ``settle(False)``: the core
        refused it; return it upstream (nack/requeue, or leave it pending)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A bridge URL taken apart: ``scheme://user:password@host:port/path``."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None
    path: str
    tls: bool

    @classmethod
    def parse(
        cls, url: str, default_ports: dict[str, int], tls_schemes: frozenset[str]
    ) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in default_ports:
            raise ValueError(f"scheme must be one of {', '.join(sorted(default_ports))}")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        return cls(
            scheme=scheme,
            host=parts.hostname,
            port=parts.port or default_ports[scheme],
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            path=unquote(parts.path),
            tls=scheme in tls_schemes,
        )


def client_tls_context(config: BridgeConfig) -> ssl.SSLContext:
    """The TLS context a bridge connects with: the system CAs or ``tls.ca``, the
    client certificate when given (AMQP EXTERNAL, mutual TLS)."""
    tls = config.tls
    context = ssl.create_default_context(cafile=tls.ca if tls is not None else None)
    if tls is not None:
        if tls.cert is not None:
            context.load_cert_chain(tls.cert, tls.key)
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return context


async def connect_tcp(endpoint: Endpoint) -> trio.SocketStream:
    """A TCP stream to ``endpoint``. Raises UpstreamError."""
    try:
        return await trio.open_tcp_stream(endpoint.host, endpoint.port)
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {endpoint.host}:{endpoint.port}: {exc}") from exc


async def start_tls(
    config: BridgeConfig, endpoint: Endpoint, tcp: trio.abc.Stream
) -> trio.SSLStream[trio.abc.Stream]:
    """TLS over ``tcp``, handshake done (``tls.server_name`` or the URL's host is the
    name checked). Raises UpstreamError, having closed ``tcp``."""
    server_name = config.tls.server_name if config.tls and config.tls.server_name else endpoint.host
    stream = trio.SSLStream(tcp, client_tls_context(config), server_hostname=server_name)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(tcp)
        raise UpstreamError(f"TLS handshake with {endpoint.host}:{endpoint.port}: {exc}") from exc
    return stream


async def open_stream(config: BridgeConfig, endpoint: Endpoint) -> trio.abc.Stream:
    """A TCP (and TLS, when the URL's scheme or ``tls`` asks) stream to ``endpoint``.
    Raises UpstreamError."""
    tcp = await connect_tcp(endpoint)
    if not (endpoint.tls or config.tls is not None):
        return tcp
    return await start_tls(config, endpoint, tcp)


class Output:
    """What a connection writes: bytes buffered by code that cannot wait
    (acknowledgements, settles, pings) and written by one writer task, all that is
    buffered in one ``send``; ``lock`` keeps writes whole, one at a time, so that
    frames never interleave."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        self.buffer = bytearray()
        self.lock = trio.Lock()
        self._send = send
        self._wake = trio.Event()

    def write(self, data: bytes) -> None:
        """Buffer ``data`` and wake the writer."""
        self.buffer += data
        self._wake.set()

    def wake(self) -> None:
        """Wake the writer for what was put in ``buffer`` directly."""
        self._wake.set()

    def take(self) -> bytes:
        """Everything buffered, and the buffer emptied (under ``lock``)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def flush(self) -> None:
        """Write everything buffered."""
        async with self.lock:
            if self.buffer:
                await self._send(self.take())

    async def writer(self) -> None:
        """The writer task: flush whenever something is buffered."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()


class Upstream(ABC):
    """One connection to an upstream broker.

    The framework calls ``open`` (within a deadline), then runs ``run`` in a task
    while calling ``publish`` from another, never with more than
    ``config.max_in_flight`` messages unconfirmed; then ``close``. Any of them
    raises UpstreamError when the connection fails; the framework then cancels
    the others and makes a new Upstream after a backoff.
    """

    # The level separator of the upstream's names: the framework turns the core's
    # "/" into it when it renders ``{topic}`` and back when it renders ``{subject}``.
    separator: ClassVar[str] = "/"

    def __init__(
        self, config: BridgeConfig, options: object, link: Link, inbound: Sequence[InboundRule]
    ) -> None:
        self.config = config
        self.link = link
        self.inbound = inbound

    @abstractmethod
    async def open(self) -> None:
        """Connect, authenticate, declare what the options declare, and start
        receiving for every inbound rule."""

    @abstractmethod
    async def publish(self, batch: Sequence[Outbound]) -> None:
        """Send ``batch`` (in order, in as few writes as possible); confirmations
        arrive later through ``link``."""

    @abstractmethod
    async def run(self) -> None:
        """Read until the connection ends (raise UpstreamError) or the task is
        cancelled: confirmations, inbound messages, heartbeats."""

    @abstractmethod
    async def close(self) -> None:
        """Say goodbye (AMQP connection.close, MQTT DISCONNECT, ...) and close the
        stream; never waits long: the framework bounds it with a deadline."""
