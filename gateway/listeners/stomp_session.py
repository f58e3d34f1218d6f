"""The STOMP session adapter: frames in, core calls out; deliveries in, MESSAGE frames out.

No I/O: the listener feeds it frames and gives it ``send`` (append bytes to the
connection's output) and ``stop`` (end the connection). The core keeps delivery
state; this adapter keeps STOMP's ids for it (subscription ids, ack ids) and the
open transactions, which die with the connection.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import __version__
from ..auth.acl import NOT_AUTHORIZED, Principal
from ..codecs.stomp import Frame, STOMPConnection, StompError, negotiate, parse_heartbeat
from ..config import ListenerConfig
from ..core import (
    Broker,
    CloseReason,
    Delivery,
    InvalidFilter,
    Kind,
    Origin,
    Session,
    SubscribeOptions,
    check_filter,
)
from ..core.broker import NotAuthorized
from ..core.selector import Selector, SelectorError, compile_selector
from ..core.stats import SAMPLE_MASK, Traffic
from ..logging import get_logger
from .authn import ConnAuth, over_user_limit, stomp_connect
from .limits import MAX_SUBSCRIPTIONS, subscription_limit
from .stomp_mapping import TEMP_QUEUE, message_headers, parse_destination, to_message

ACK_MODES = ("auto", "client", "client-individual")
# Spellings of a subscription's flow-control window, RabbitMQ's first.
PREFETCH_HEADERS = ("prefetch-count", "activemq.prefetchSize")
MAX_TRANSACTIONS = 16
MAX_TRANSACTION_FRAMES = 10_000
MAX_TRANSACTION_BYTES = 16 * 1024 * 1024
DURABLE_PREFIX = "$durable/"
_session_ids = itertools.count(1)


@dataclass(slots=True, eq=False)
class Subscription:
    id: str
    destination: str
    ack: str
    number: int
    queue: str | None = None  # a core queue name, for /queue, /temp-queue and durable ones
    topic_filter: str | None = None  # a core topic filter, for plain /topic subscriptions
    unacked: dict[int, Delivery] = field(default_factory=dict)
    selector: Selector | None = None


def _selector(text: str | None) -> Selector | None:
    """The compiled ``selector`` header; a bad one is refused with its position."""
    if text is None or not text.strip():
        return None
    try:
        return compile_selector(text)
    except SelectorError as exc:
        raise StompError("bad selector", str(exc)) from None


class STOMPSession:
    """One STOMP connection's protocol state; implements the core's ``Sink``."""

    __slots__ = (
        "_ack_ids",
        "_by_number",
        "_by_queue",
        "_temp",
        "_transaction_bytes",
        "_writable",
        "auth",
        "broker",
        "client_id",
        "clock",
        "codec",
        "config",
        "expect_every",
        "graceful",
        "identity",
        "log",
        "on_connected",
        "origin",
        "send",
        "send_every",
        "session",
        "stop",
        "subscriptions",
        "traffic",
        "transactions",
        "version",
    )

    def __init__(
        self,
        broker: Broker,
        codec: STOMPConnection,
        send: Callable[[bytes], None],
        stop: Callable[[object], None],
        *,
        config: ListenerConfig,
        writable: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.codec = codec
        self.send = send
        self.stop = stop
        self.config = config
        self._writable = writable
        self.clock = clock
        self.log = get_logger()
        # Authentication (listeners/authn.py); None: none, the client is anonymous.
        self.auth: ConnAuth | None = None
        self.session: Session | None = None
        # Who the client is (None: anonymous), set by authentication before CONNECT is
        # handled; the core checks its sends and subscriptions (docs/security.md).
        self.identity: Principal | None = None
        self.version = "1.0"
        self.origin = Origin(protocol="stomp", listener=config.label)
        self.subscriptions: dict[str, Subscription] = {}
        self._by_number: dict[int, Subscription] = {}
        self._by_queue: dict[str, Subscription] = {}
        self._ack_ids = itertools.count(1)
        self._temp: dict[str, str] = {}
        self.transactions: dict[str, list[Frame]] = {}
        self._transaction_bytes: dict[str, int] = {}
        self.graceful = False
        self.client_id: str | None = None
        # The listener's hook to start heart-beating once CONNECTED is sent.
        self.on_connected: Callable[[], None] | None = None
        # Heart-beat periods in seconds once negotiated (0 = none).
        self.send_every = 0.0
        self.expect_every = 0.0
        # Deliveries sent (the listener's Connection, for metrics; it counts SENDs).
        self.traffic = Traffic()

    @property
    def connected(self) -> bool:
        return self.session is not None

    # -- frames from the client -------------------------------------------------

    def handle(self, frame: Frame) -> None:
        try:
            self._handle(frame)
        except StompError as exc:
            if exc.receipt is None:
                exc.receipt = frame.get("receipt")  # the ERROR answers it (spec 1.2 "ERROR")
            raise

    def _handle(self, frame: Frame) -> None:
        command = frame.command
        if command in ("CONNECT", "STOMP"):
            self._on_connect(frame)
            return
        transaction = frame.get("transaction")
        if transaction is not None and command in ("SEND", "ACK", "NACK"):
            self._in_transaction(transaction, frame)
        elif command == "SEND":
            self._on_send(frame)
        elif command == "SUBSCRIBE":
            self._on_subscribe(frame)
        elif command == "UNSUBSCRIBE":
            self._on_unsubscribe(frame)
        elif command in ("ACK", "NACK"):
            self._on_ack(frame, positive=command == "ACK")
        elif command == "BEGIN":
            self._on_begin(frame)
        elif command == "COMMIT":
            for queued in self._end_transaction(frame):
                self.handle(_without_transaction(queued))
        elif command == "ABORT":
            self._end_transaction(frame)
        elif command == "DISCONNECT":
            self.graceful = True
            self.log.info("stomp.disconnect")
        self._receipt(frame)

    def _receipt(self, frame: Frame) -> None:
        receipt = frame.get("receipt")
        if receipt is not None:
            # A receipt for a persistent SEND says the message is safe: it waits for
            # the store's commit (durability mode sync); receipts stay in order.
            self.broker.when_durable(lambda ok: self._send_receipt(receipt, ok), self.origin)

    def _send_receipt(self, receipt: str, ok: bool) -> None:
        try:
            if ok:
                frame = Frame(command="RECEIPT", headers=(("receipt-id", receipt),))
                self.send(self.codec.send(frame))
                return
            self.log.error("stomp.not_stored", receipt=receipt)
            error = StompError(
                "message not stored", "the store could not write; send it again", receipt=receipt
            )
            self.send(self.codec.send(error.error_frame()))
        except ValueError:
            return  # the connection ended meanwhile: nothing more to send
        self.stop("store failure")

    def _on_connect(self, frame: Frame) -> None:
        version = negotiate(frame.get("accept-version"))
        if version is None:
            error = Frame(
                command="ERROR",
                headers=(
                    ("version", "1.0,1.1,1.2"),
                    ("message", "no common protocol version"),
                    ("content-type", "text/plain"),
                ),
                body=b"Supported STOMP versions are 1.0, 1.1 and 1.2.",
            )
            self.send(self.codec.send(error))
            self.log.info("stomp.connect.rejected", reason="version")
            self.stop("version")
            return
        self.version = version
        self.client_id = frame.get("client-id")
        sasl_headers: tuple[tuple[str, str], ...] = ()
        if self.auth is not None:
            # StompError("authentication failed", or "sasl-continue") answers ERROR and closes.
            self.identity, sasl_headers = stomp_connect(self.auth, frame, self.client_id or "")
        client_send, client_want = parse_heartbeat(frame.get("heart-beat"))
        ours = int(self.config.heartbeat * 1000)
        server_send = max(ours, client_want) if client_want and ours else 0
        server_want = max(ours, client_send) if client_send and ours else 0
        self.send_every = server_send / 1000
        self.expect_every = server_want / 1000
        if over_user_limit(self.broker, self.identity, ""):
            raise StompError("too many connections", "the user's max_connections is reached")
        session_id = f"stomp-{next(_session_ids)}-{uuid.uuid4().hex[:8]}"
        self.origin = Origin(protocol="stomp", listener=self.config.label, client_id=session_id)
        self.log = self.log.bind(client_id=session_id)
        self.session, _ = self.broker.open_session(
            session_id, self, clean=True, expiry=0.0, identity=self.identity
        )
        connected = Frame(
            command="CONNECTED",
            headers=(
                ("version", version),
                ("server", f"gateway/{__version__}"),
                ("session", session_id),
                ("heart-beat", f"{server_send},{server_want}"),
                *sasl_headers,
            ),
        )
        self.send(self.codec.send(connected))
        self.log.info(
            "stomp.connect.accepted", version=version, heart_beat=f"{server_send},{server_want}"
        )
        if self.on_connected is not None:
            self.on_connected()

    def _resolve(self, destination: str) -> tuple[Kind, str]:
        kind, name = parse_destination(destination)
        if destination.startswith(TEMP_QUEUE):
            return Kind.QUEUE, self._temp_queue(name)
        return kind, name

    def _temp_queue(self, name: str) -> str:
        real = self._temp.get(name)
        if real is None:
            assert self.session is not None
            real = self._temp[name] = self.broker.temporary_queue(self.session)
        return real

    def _on_send(self, frame: Frame) -> None:
        destination = frame.get("destination", "")
        kind, name = self._resolve(destination)
        if kind is Kind.QUEUE and name.startswith("$") and name not in self.broker.queues:
            raise StompError("unknown destination", f"{destination!r} does not exist")
        reply_to = frame.get("reply-to")
        if reply_to is not None and reply_to.startswith(TEMP_QUEUE):
            # A reply address others can use: the temporary queue's own name. The
            # sender gets its replies without subscribing, as with RabbitMQ.
            real = self._temp_queue(reply_to[len(TEMP_QUEUE) :])
            if real not in self._by_queue and reply_to not in self.subscriptions:
                sub = Subscription(
                    id=reply_to, destination=reply_to, ack="auto", number=self._next_number()
                )
                sub.queue = real
                self._attach(sub)
            reply_to = "/queue/" + real
        message = to_message(frame, kind, name, self.origin, self.clock(), reply_to)
        assert self.session is not None
        result = self.broker.publish(message, identity=self.session.identity)
        if result.reason == NOT_AUTHORIZED:  # logged by the core (acl.denied)
            raise StompError(
                "not authorized",
                f"{destination}: sending here is not allowed",
                receipt=frame.get("receipt"),
            )
        if not result.accepted:
            raise StompError(
                "message refused",
                f"{destination}: {result.reason}",
                receipt=frame.get("receipt"),
            )

    def _on_subscribe(self, frame: Frame) -> None:
        session = self.session
        assert session is not None
        sub_id = frame.get("id") or frame.get("destination", "")
        if sub_id in self.subscriptions:
            raise StompError("duplicate subscription", f"subscription id {sub_id!r} is in use")
        limit = subscription_limit(self.identity, self.config.max_subscriptions)
        if limit and len(self.subscriptions) >= limit:
            self.broker.stats.limited[MAX_SUBSCRIPTIONS] += 1
            raise StompError(
                "too many subscriptions", f"at most {limit} per session (max_subscriptions)"
            )
        selector = _selector(frame.get("selector"))
        ack = frame.get("ack", "auto")
        if ack not in ACK_MODES:
            raise StompError("bad ack mode", f"ack:{ack}; use one of {', '.join(ACK_MODES)}")
        destination = frame.get("destination", "")
        kind, name = self._resolve(destination)
        window = self._prefetch(frame)
        number = self._next_number()
        sub = Subscription(
            id=sub_id, destination=destination, ack=ack, number=number, selector=selector
        )
        durable = self._durable_name(frame, kind)
        if durable is not None and selector is not None:
            raise StompError(
                "bad selector", "selectors on durable subscriptions are not supported yet"
            )
        try:
            if kind is Kind.QUEUE or durable is not None:
                if durable is not None:
                    # Checked before the subscription exists: it fills while nobody reads.
                    self._require_subscribe(name, destination)
                    self.broker.durable_subscription(durable, name)
                    name = durable
                if name in self._by_queue:
                    raise StompError("duplicate subscription", f"already on {destination}")
                sub.queue = name
            else:
                check_filter(name)
                sub.topic_filter = name
        except InvalidFilter as exc:
            raise StompError("bad destination", f"{destination}: {exc}") from None
        self._attach(sub, window)

    def _attach(self, sub: Subscription, window: int = 65535) -> None:
        """Register ``sub`` first: the core may deliver what waits as soon as it is attached."""
        session = self.session
        assert session is not None
        self.subscriptions[sub.id] = sub
        self._by_number[sub.number] = sub
        qos = 0 if sub.ack == "auto" else 1
        try:
            if sub.queue is not None:
                self._by_queue[sub.queue] = sub
                self.broker.consume(
                    session,
                    sub.queue,
                    qos=qos,
                    window=window,
                    ack_all=qos == 1,
                    selector=sub.selector,
                )
            elif sub.topic_filter is not None:
                options = SubscribeOptions(
                    qos=qos, subscription_id=sub.number, selector=sub.selector
                )
                self.broker.subscribe(session, sub.topic_filter, options)
        except NotAuthorized:  # logged by the core (acl.denied)
            del self.subscriptions[sub.id]
            del self._by_number[sub.number]
            if sub.queue is not None:
                del self._by_queue[sub.queue]
            raise StompError(
                "not authorized", f"{sub.destination}: subscribing here is not allowed"
            ) from None

    def _require_subscribe(self, topic_filter: str, destination: str) -> None:
        session = self.session
        assert session is not None
        check_filter(topic_filter)  # a bad filter is a bad destination, not a refusal
        try:
            self.broker.require(
                session.identity, "subscribe", topic_filter, session.client_id, whole=True
            )
        except NotAuthorized:
            raise StompError(
                "not authorized", f"{destination}: subscribing here is not allowed"
            ) from None

    def _next_number(self) -> int:
        number = len(self._by_number) + 1
        while number in self._by_number:
            number += 1
        return number

    def _durable_name(self, frame: Frame, kind: Kind) -> str | None:
        """A durable topic subscription's core queue, from RabbitMQ's or ActiveMQ's headers."""
        if kind is not Kind.TOPIC:
            return None
        name = frame.get("activemq.subscriptionName")
        durable = frame.get("durable", frame.get("persistent", "")) == "true"
        if name is None and durable and frame.get("auto-delete", "false") != "true":
            name = frame.get("id")
        if name is None:
            return None
        # Named by the client's id when it gives one (ActiveMQ: on SUBSCRIBE or CONNECT),
        # else by the subscription name alone (RabbitMQ), so a reconnecting client finds it.
        owner = frame.get("client-id") or self.client_id or "-"
        return f"{DURABLE_PREFIX}{owner}/{name}"

    def _prefetch(self, frame: Frame) -> int:
        for header in PREFETCH_HEADERS:
            raw = frame.get(header)
            if raw is not None:
                try:
                    value = int(raw)
                except ValueError:
                    raise StompError(f"bad {header}", f"{header}:{raw} is not an integer") from None
                return value if value > 0 else 65535
        return 65535

    def _on_unsubscribe(self, frame: Frame) -> None:
        session = self.session
        assert session is not None
        sub_id = frame.get("id") or frame.get("destination", "")
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            raise StompError("unknown subscription", f"no subscription with id {sub_id!r}")
        del self._by_number[sub.number]
        if sub.queue is not None:
            del self._by_queue[sub.queue]
            self.broker.cancel(session, sub.queue)
            if sub.queue.startswith(DURABLE_PREFIX) and frame.get("durable") != "false":
                # UNSUBSCRIBE of a durable subscription ends it (JMS unsubscribe).
                self.broker.drop_durable_subscription(sub.queue)
        elif sub.topic_filter is not None:
            self.broker.unsubscribe(session, sub.topic_filter)

    def _on_ack(self, frame: Frame, *, positive: bool) -> None:
        raw = frame.get("id") if self.version == "1.2" else frame.get("message-id")
        try:
            ack_id = int(raw or "")
        except ValueError:
            raise StompError("unknown ack id", f"{raw!r} was not sent by this server") from None
        sub = self._owner(ack_id, frame.get("subscription"))
        if sub is None:
            return  # already settled (or an auto-acked message): nothing left to do
        # client mode acknowledges cumulatively; client-individual one message
        settled = [i for i in sub.unacked if i <= ack_id] if sub.ack == "client" else [ack_id]
        for i in settled:
            delivery = sub.unacked.pop(i)
            if positive:
                self.broker.ack(delivery)
            else:
                self.broker.nack(delivery, requeue=True)

    def _owner(self, ack_id: int, sub_id: str | None) -> Subscription | None:
        if sub_id is not None:
            sub = self.subscriptions.get(sub_id)
            return sub if sub is not None and ack_id in sub.unacked else None
        for sub in self.subscriptions.values():
            if ack_id in sub.unacked:
                return sub
        return None

    def _on_begin(self, frame: Frame) -> None:
        name = frame.get("transaction", "")
        if name in self.transactions:
            raise StompError("transaction already started", f"transaction {name!r} is open")
        if len(self.transactions) >= MAX_TRANSACTIONS:
            raise StompError("too many transactions", f"at most {MAX_TRANSACTIONS} at once")
        self.transactions[name] = []

    def _in_transaction(self, name: str, frame: Frame) -> None:
        queued = self.transactions.get(name)
        if queued is None:
            raise StompError("unknown transaction", f"transaction {name!r} was not begun")
        if len(queued) >= MAX_TRANSACTION_FRAMES:
            raise StompError("transaction too large", f"at most {MAX_TRANSACTION_FRAMES} frames")
        size = self._transaction_bytes.get(name, 0) + len(frame.body)
        if size > MAX_TRANSACTION_BYTES:
            raise StompError("transaction too large", f"at most {MAX_TRANSACTION_BYTES} bytes")
        self._transaction_bytes[name] = size
        queued.append(frame)
        self._receipt(frame)

    def _end_transaction(self, frame: Frame) -> list[Frame]:
        name = frame.get("transaction", "")
        queued = self.transactions.pop(name, None)
        self._transaction_bytes.pop(name, None)
        if queued is None:
            raise StompError("unknown transaction", f"transaction {name!r} was not begun")
        return queued

    # -- the core's Sink ----------------------------------------------------------

    def deliver(self, delivery: Delivery, qos: int) -> None:
        consumer = delivery.consumer
        assert consumer is not None
        if consumer.queue.name in self._by_queue:
            subs = [self._by_queue[consumer.queue.name]]
        else:
            subs = [self._by_number[n] for n in delivery.subscription_ids if n in self._by_number]
            if len(subs) > 1:
                # Overlapping subscriptions: the core delivers once if any selector matches;
                # each subscription gets a MESSAGE only if its own selector does.
                message = delivery.message
                subs = [s for s in subs if s.selector is None or s.selector.matches(message)]
        for sub in subs:
            ack_id = next(self._ack_ids)
            headers = [("subscription", sub.id), ("message-id", str(ack_id))]
            if sub.ack != "auto":
                if self.version == "1.2":
                    headers.append(("ack", str(ack_id)))
                if qos:
                    sub.unacked[ack_id] = delivery
            headers.append(("redelivered", "true" if delivery.redelivered else "false"))
            headers.append(("x-delivery-count", str(delivery.count)))
            headers.extend(message_headers(delivery.message, self.version))
            frame = Frame(command="MESSAGE", headers=tuple(headers), body=delivery.message.payload)
            self.send(self.codec.send(frame))
            traffic = self.traffic
            traffic.messages_out = sent = traffic.messages_out + 1
            if not sent & SAMPLE_MASK:
                self.broker.stats.latency.observe(self.clock() - delivery.message.timestamp)

    def writable(self) -> bool:
        return self._writable()

    def close(self, reason: CloseReason) -> None:
        self.stop(reason)

    def connection_ended(self) -> None:
        """The connection is gone: open transactions are discarded, unacked messages return."""
        self.transactions.clear()
        self._transaction_bytes.clear()
        if self.session is not None:
            session, self.session = self.session, None
            self.broker.detach(session, graceful=self.graceful)

    def resume(self) -> None:
        if self.session is not None:
            self.broker.resume(self.session)


def _without_transaction(frame: Frame) -> Frame:
    headers = tuple((k, v) for k, v in frame.headers if k not in ("transaction", "receipt"))
    return Frame(command=frame.command, headers=headers, body=frame.body)
