"""The HTTP API: publish, batch, consume (SSE and pull), request/reply, health.

``HTTPService`` holds what the endpoints share across every HTTP listener of
one gateway (pull consumers, the request counter); ``HTTPService.handler``
builds one listener's connection handler. ``ROUTES`` is the route table; the
OpenAPI document (``openapi.py``) describes exactly these routes, and a test
keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from ..auth import Authenticator, AuthError, Identity
from ..auth.acl import NOT_AUTHORIZED, QUEUE_PREFIX, Principal
from ..config import Config, ListenerConfig
from ..core import (
    Broker,
    CloseReason,
    Delivery,
    InvalidFilter,
    Kind,
    Message,
    Origin,
    PublishResult,
    Status,
    SubscribeOptions,
    check_filter,
)
from ..core.broker import NotAuthorized
from ..core.selector import Selector, SelectorError, compile_selector
from ..core.session import TRUSTED
from ..store import MemoryStore
from . import http_mapping as mapping
from ._serve import Connection, Handler
from .authn import challenge, http_identity
from .http import (
    ChunkWriter,
    HTTPError,
    Request,
    Response,
    http_handler,
    json_response,
    path_params,
)
from .http_pull import PullConsumer, ReplySink
from .openapi import openapi_document
from .webhooks import WebhookError, build_webhooks
from .websocket import (
    check_handshake,
    choose_subprotocol,
    offered_subprotocols,
    serve_websocket,
)

Endpoint = Callable[["HTTPService", ListenerConfig, Request], Awaitable[Response]]

# Request/reply: the longest wait a caller may ask for, and the default.
MAX_REQUEST_TIMEOUT = 300.0
DEFAULT_REQUEST_TIMEOUT = 30.0
# Pull: the most messages one request may take.
MAX_PULL = 100
# Pull: seconds a pull consumer with nothing handed out stays after its last pull.
PULL_IDLE = 60.0
# SSE: bytes a slow reader may fall behind before its QoS 0 events are dropped.
SSE_HIGH_WATER = 1 << 20
BATCH_TYPES = ("application/json", "application/x-ndjson", "application/ndjson")
# Open to anyone, like /healthz and /readyz: it describes the API.
OPENAPI_PATH = "/api/v1/openapi.json"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    endpoint: Endpoint
    summary: str


class _BatchItem(msgspec.Struct, forbid_unknown_fields=True):
    topic: str | None = None
    queue: str | None = None
    payload: str = ""
    payload_base64: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = {}
    priority: int | None = None
    expiry: float | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    persistent: bool = True
    retain: bool = False


class _AckBody(msgspec.Struct):
    ids: list[str]


class HTTPService:
    """The HTTP API of one gateway, shared by its HTTP listeners."""

    def __init__(
        self,
        broker: Broker,
        config: Config,
        ready: Callable[[], Mapping[str, Any]],
        protocol_handlers: Mapping[str, Callable[[ListenerConfig], Handler]],
    ) -> None:
        self.broker = broker
        self.config = config
        self.ready = ready
        self.protocol_handlers = protocol_handlers
        self.pulls: dict[str, PullConsumer] = {}
        self.routes = all_routes()
        # Set by the Gateway: what the admin API and the operations pages report on.
        self.gateway: Any = None
        self._exchanges = itertools.count(1)
        self.webhooks = build_webhooks(config.webhooks)
        # Set by the Gateway; None: no authentication, every request is anonymous.
        self.auth: Authenticator | None = None

    def handler(self, listener: ListenerConfig) -> Handler:
        inner = {name: make(listener) for name, make in self.protocol_handlers.items()}
        ws_paths = {
            listener.mqtt_path: "mqtt",
            listener.stomp_path: "stomp",
            listener.ws_path: None,
        }
        ws_paths.pop("", None)

        async def route(request: Request) -> Response:
            return await self.route(listener, request)

        async def upgrade(
            stream: trio.abc.Stream, conn: Connection, request: Request, trailing: bytes
        ) -> None:
            await serve_websocket(
                stream,
                conn,
                request,
                trailing,
                path_protocol=ws_paths[request.path],
                handlers=inner,
                max_message=listener.max_packet_size,
            )

        def check_upgrade(request: Request) -> None:
            if request.method != "GET":
                raise HTTPError(
                    405, "method_not_allowed", "a WebSocket upgrade is a GET", (("Allow", "GET"),)
                )
            check_handshake(request, listener.allowed_origins)
            choose_subprotocol(ws_paths[request.path], offered_subprotocols(request))
            if request.header("authorization") is not None:
                # The upgrade's credentials authenticate the WebSocket; without them
                # the inner protocol's CONNECT does.
                request.conn.identity = self.authenticate(request)

        return http_handler(listener, route, upgrade, ws_paths.__contains__, check_upgrade)

    def authenticate(self, request: Request) -> Identity | None:
        """Who sent ``request`` (``Authorization: Basic`` or ``Bearer``, else anonymous
        if allowed), kept as ``request.identity``; HTTPError 401 if refused."""
        if self.auth is None:
            return None
        try:
            request.identity = http_identity(self.auth, request)
        except AuthError as exc:
            conn = request.conn
            if conn.auth_throttle is not None and request.header("authorization") is not None:
                # Every request refused for its credentials counts (docs/security.md, Limits).
                conn.auth_throttle.record_failure(conn.ip, trio.current_time())
            raise HTTPError(
                401,
                "unauthorized",
                f"authentication failed ({exc.reason})",
                challenge(request),
            ) from None
        return request.identity

    async def route(self, listener: ListenerConfig, request: Request) -> Response:
        if request.path.startswith("/api/") and request.path != OPENAPI_PATH:
            if request.header("authorization") is not None:
                # Earlier authentication failures from this address: answer late.
                await request.conn.auth_pause()
            self.authenticate(request)  # /healthz, /readyz and webhooks stay open
        allowed: list[str] = []
        for item in self.routes:
            params = path_params(item.pattern, request.path)
            if params is None:
                continue
            if item.method != request.method:
                allowed.append(item.method)
                continue
            request.params = params
            return await item.endpoint(self, listener, request)
        if allowed:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use {', '.join(sorted(set(allowed)))}",
                (("Allow", ", ".join(sorted(set(allowed)))),),
            )
        raise HTTPError(404, "not_found", f"no such endpoint: {request.path}")

    # -- time ----------------------------------------------------------------------

    def pulls_of(self, queue: str) -> list[PullConsumer]:
        """The pull consumers of ``queue`` (one per selector used)."""
        return [pull for pull in self.pulls.values() if pull.queue == queue]

    def tick(self, now: float) -> None:
        """Return pulled messages whose visibility timeout passed, and end pull consumers
        idle for PULL_IDLE seconds (one exists per queue and selector text used), so that
        selectors used once do not stay attached to their queue (called every second)."""
        for key, pull in list(self.pulls.items()):
            pull.expire(now)
            if pull.idle(now, PULL_IDLE):
                pull.stop()
                del self.pulls[key]

    # -- helpers -------------------------------------------------------------------

    def origin(self, listener: ListenerConfig, request: Request) -> Origin:
        return Origin(protocol="http", listener=listener.label, client_id=request.conn.peer)

    def identity_of(self, request: Request) -> Principal | None:
        """Who sent ``request`` (None: anonymous), for authorization (docs/security.md).
        ``authenticate`` sets it on /api/ requests (None without an authenticator).
        Tests replace this method on the instance to assign identities."""
        return request.identity

    def require_consume(self, request: Request, queue: str) -> None:
        """403 unless the request's identity may consume ``queue`` (pull, ack, release:
        one pull consumer serves every request, so the check is per request)."""
        try:
            self.broker.require(
                self.identity_of(request), "consume", QUEUE_PREFIX + queue, request.conn.peer
            )
        except NotAuthorized as exc:
            raise _forbidden(exc) from None

    def check_queue(self, name: str) -> None:
        if not name or (name.startswith("$") and not name.startswith("$temp/")):
            raise HTTPError(400, "bad_destination", f"{name!r} is not a queue name")
        # A temporary (reply) queue exists only while its session does: never re-created.
        auto_create = self.config.gateway.auto_create_queues and not name.startswith("$temp/")
        if not auto_create and not self.broker.knows_queue(name):
            raise HTTPError(404, "unknown_queue", f"queue {name!r} does not exist")

    def check_topic(self, name: str) -> None:
        if not name or "+" in name or "#" in name or "\0" in name:
            raise HTTPError(400, "bad_destination", f"{name!r} is not a topic name")
        if name.startswith("$"):
            raise HTTPError(
                403, "reserved_topic", f"topics starting with '$' are reserved: {name!r}"
            )

    def check_destination(self, kind: Kind, name: str) -> None:
        if kind is Kind.QUEUE:
            self.check_queue(name)
        else:
            self.check_topic(name)


def _forbidden(exc: NotAuthorized) -> HTTPError:
    return HTTPError(403, "not_authorized", f"not authorized to {exc.action} {exc.destination}")


def _refusal(result: PublishResult) -> HTTPError:
    if result.reason == NOT_AUTHORIZED:  # logged by the core (acl.denied)
        return HTTPError(403, "not_authorized", "not authorized to publish here")
    return HTTPError(
        503,
        "refused",
        f"the destination refused the message: {result.reason or 'full'}",
        (("Retry-After", "1"),),
    )


async def publish_topic(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    return await _publish_to(service, listener, request, Kind.TOPIC, request.params["topic"])


async def publish_queue(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    return await _publish_to(service, listener, request, Kind.QUEUE, request.params["queue"])


async def _publish_to(
    service: HTTPService, listener: ListenerConfig, request: Request, kind: Kind, name: str
) -> Response:
    service.check_destination(kind, name)
    fields = mapping.fields_from_headers(request.headers)
    message = mapping.build_message(
        kind, name, request.body, fields, service.origin(listener, request)
    )
    request.conn.messages_in += 1
    result = service.broker.publish(message, identity=service.identity_of(request))
    if result.status is Status.REFUSED:
        raise _refusal(result)
    body = {"id": str(message.message_id), "routed": result.routed}
    held = service.broker.holds.held(message.origin)
    # A bridge with ack = "upstream" took it: answer once the upstream confirmed.
    if held and not await _stored(service.broker, message.origin):
        raise HTTPError(
            502, "not_confirmed", "the upstream did not confirm the message; send it again"
        )
    if request.query.get("ack") == "stored":
        if not held and not await _stored(service.broker):
            raise HTTPError(
                507, "not_stored", "the store could not write the message; send it again"
            )
        durable = message.persistent and not isinstance(service.broker.store, MemoryStore)
        return json_response(201, {**body, "stored": True, "durable": durable})
    return json_response(202, body)


async def _stored(broker: Broker, origin: Origin | None = None) -> bool:
    """Wait for the store's commit of everything recorded so far; False if it failed."""
    done = trio.Event()
    outcome: list[bool] = []

    def committed(ok: bool) -> None:
        outcome.append(ok)
        done.set()

    broker.when_durable(committed, origin)
    await done.wait()
    return outcome[0]


async def publish_batch(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type not in BATCH_TYPES:
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"a batch is {' or '.join(BATCH_TYPES[:2])}, not {content_type or 'untyped'}",
        )
    try:
        if content_type == "application/json":
            items = msgspec.json.decode(request.body, type=list[_BatchItem])
        else:
            items = [
                msgspec.json.decode(line, type=_BatchItem)
                for line in request.body.splitlines()
                if line.strip()
            ]
    except msgspec.ValidationError as exc:
        raise HTTPError(400, "bad_batch", f"invalid batch item: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    origin = service.origin(listener, request)
    messages = [_batch_message(service, i, item, origin) for i, item in enumerate(items)]
    identity = service.identity_of(request)
    results: list[dict[str, object]] = []
    refused = unauthorized = 0
    request.conn.messages_in += len(messages)
    for message in messages:
        result = service.broker.publish(message, identity=identity)
        if result.status is Status.REFUSED:
            refused += 1
            unauthorized += result.reason == NOT_AUTHORIZED
            results.append(
                {"id": str(message.message_id), "status": "refused", "reason": result.reason}
            )
        else:
            results.append(
                {"id": str(message.message_id), "status": "accepted", "routed": result.routed}
            )
    body: dict[str, object] = {
        "accepted": len(messages) - refused,
        "refused": refused,
        "results": results,
    }
    if refused and refused == len(messages):
        # Nothing was accepted: an error like any other 503 (403 if the ACL refused
        # every one), with the results.
        reason = NOT_AUTHORIZED if unauthorized == refused else "every message was refused"
        error = _refusal(PublishResult(Status.REFUSED, 0, reason))
        body = {"error": error.code, "message": error.message, **body}
        response = json_response(error.status, body, list(error.headers))
        response.error = error.code
        return response
    return json_response(207 if refused else 202, body)


def _batch_message(service: HTTPService, index: int, item: _BatchItem, origin: Origin) -> Message:
    if (item.topic is None) == (item.queue is None):
        raise HTTPError(400, "bad_batch", f"item {index}: give exactly one of topic or queue")
    kind, name = (Kind.TOPIC, item.topic) if item.topic is not None else (Kind.QUEUE, item.queue)
    assert name is not None
    service.check_destination(kind, name)
    if item.payload_base64 is not None:
        try:
            payload = base64.b64decode(item.payload_base64, validate=True)
        except binascii.Error:
            raise HTTPError(
                400, "bad_batch", f"item {index}: payload_base64 is not base64"
            ) from None
    else:
        payload = item.payload.encode("utf-8")
    if item.priority is not None and not 0 <= item.priority <= 9:
        raise HTTPError(400, "bad_batch", f"item {index}: priority must be 0-9")
    if item.expiry is not None and item.expiry < 0:
        raise HTTPError(400, "bad_batch", f"item {index}: expiry must be 0 or more seconds")
    fields: dict[str, Any] = {"persistent": item.persistent, "retain": item.retain}
    for key in ("priority", "correlation_id", "reply_to", "content_type"):
        if getattr(item, key) is not None:
            fields[key] = getattr(item, key)
    if item.expiry:
        fields["expiry_in"] = item.expiry
    if item.headers:
        fields["headers"] = list(item.headers.items())
    return mapping.build_message(kind, name, payload, fields, origin)


# -- consuming ------------------------------------------------------------------------


class _EventSink:
    """An SSE subscriber's sink: formatted events wait here for the writer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.pending = 0
        self.wake = trio.Event()
        self.closed = False
        self.sent = 0  # events formatted, for the connection's messages_out

    def writable(self) -> bool:
        return self.pending < SSE_HIGH_WATER

    def deliver(self, delivery: Delivery, qos: int) -> None:
        message = delivery.message
        data = msgspec.json.encode(mapping.message_json(message))
        event = b"id: %d\nevent: message\ndata: %s\n\n" % (message.message_id, data)
        self.chunks.append(event)
        self.pending += len(event)
        self.sent += 1
        self.wake.set()

    def close(self, reason: CloseReason) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.pending = 0
        self.sent = 0
        self.wake = trio.Event()
        return data


async def topic_events(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    topic_filter = request.params["filter"]
    try:
        if "\0" in topic_filter:
            raise InvalidFilter(f"NUL in topic filter {topic_filter!r}")
        check_filter(topic_filter)
    except InvalidFilter as exc:
        raise HTTPError(400, "bad_filter", str(exc)) from None
    selector = _selector(request)
    broker = service.broker
    sink = _EventSink()
    client_id = f"$http/sse/{request.conn.conn_id}/{next(service._exchanges)}"
    session, _ = broker.open_session(
        client_id, sink, clean=True, identity=service.identity_of(request)
    )
    options = SubscribeOptions(qos=0, retain_handling=2, selector=selector)
    try:
        broker.subscribe(session, topic_filter, options)
    except NotAuthorized as exc:  # logged by the core (acl.denied)
        broker.detach(session, graceful=True)
        raise _forbidden(exc) from None
    keepalive = listener.sse_keepalive
    log = request.conn.log.bind(sse_filter=topic_filter)
    log.info("http.sse.opened")

    async def body(writer: ChunkWriter) -> None:
        try:
            await writer.write(b": subscribed to " + topic_filter.encode() + b"\n\n")
            async with trio.open_nursery() as nursery:

                async def stop_when_gone() -> None:
                    await writer.gone.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_when_gone)
                while not sink.closed:
                    with trio.move_on_after(keepalive or float("inf")):
                        await sink.wake.wait()
                    request.conn.messages_out += sink.sent
                    data = sink.take()
                    await writer.write(data or b": keep-alive\n\n")
                nursery.cancel_scope.cancel()
        finally:
            broker.detach(session, graceful=True)
            log.info("http.sse.closed")

    return Response(
        200,
        content_type="text/event-stream",
        headers=[("cache-control", "no-cache")],
        stream=body,
    )


def _selector(request: Request) -> Selector | None:
    """The ``selector`` query parameter, compiled; 400 with the position when it is bad."""
    text = request.query.get("selector")
    if text is None or not text.strip():
        return None
    try:
        return compile_selector(text)
    except SelectorError as exc:
        raise HTTPError(400, "bad_selector", str(exc)) from None


def _query_number(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HTTPError(400, "bad_parameter", f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise HTTPError(400, "bad_parameter", f"{name} must be between {low:g} and {high:g}")
    return value


async def pull_messages(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    name = request.params["queue"]
    service.check_queue(name)
    service.require_consume(request, name)
    limit = int(_query_number(request, "max", 1, 1, MAX_PULL))
    wait = _query_number(request, "wait", 0, 0, listener.max_wait)
    visibility = _query_number(request, "visibility", listener.visibility_timeout, 0.001, 12 * 3600)
    selector = _selector(request)
    key = name if selector is None else f"{name}?{selector.text}"
    pull = service.pulls.get(key)
    if pull is None:
        # Shared by every request for this queue: each one is checked (require_consume).
        pull = service.pulls[key] = PullConsumer(service.broker, name, selector, TRUSTED)
    items = await pull.pull(limit, wait, visibility)
    request.conn.messages_out += len(items)
    messages = [
        mapping.message_json(
            delivery.message,
            id=delivery_id,
            redelivered=delivery.redelivered,
            delivery_count=delivery.count,
            visible_in=visibility,
        )
        for delivery_id, delivery in items
    ]
    return json_response(200, {"messages": messages})


def _ack_ids(request: Request) -> list[str]:
    try:
        return msgspec.json.decode(request.body, type=_AckBody).ids
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HTTPError(400, "bad_json", f'expected {{"ids": ["..."]}}: {exc}') from None


async def ack_messages(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    name = request.params["queue"]
    service.require_consume(request, name)
    ids = _ack_ids(request)
    unknown = ids
    for pull in service.pulls_of(name):
        unknown = pull.ack(unknown)
    return json_response(200, {"acked": len(ids) - len(unknown), "unknown": unknown})


async def release_messages(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    name = request.params["queue"]
    service.require_consume(request, name)
    ids = _ack_ids(request)
    unknown = ids
    for pull in service.pulls_of(name):
        unknown = pull.release(unknown)
    return json_response(200, {"released": len(ids) - len(unknown), "unknown": unknown})


# -- request/reply --------------------------------------------------------------------


async def request_reply(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    kind, name = mapping.parse_destination(request.params["destination"])
    service.check_destination(kind, name)
    timeout = _query_number(request, "timeout", DEFAULT_REQUEST_TIMEOUT, 0.001, MAX_REQUEST_TIMEOUT)
    broker = service.broker
    identity = service.identity_of(request)
    try:  # before telling whether anything consumes it
        target = QUEUE_PREFIX + name if kind is Kind.QUEUE else name
        broker.require(identity, "publish", target, request.conn.peer)
    except NotAuthorized as exc:
        raise _forbidden(exc) from None
    if kind is Kind.QUEUE:
        queue = broker.queues.get(name)
        if queue is None or not queue.consumers:
            # A queue holds a request nobody consumes: refuse rather than leave it there.
            raise HTTPError(503, "no_responders", f"nothing consumes queue {name!r}")
    sink = ReplySink()
    client_id = f"$http/request/{request.conn.conn_id}/{next(service._exchanges)}"
    session, _ = broker.open_session(client_id, sink, clean=True)
    try:
        reply_queue = broker.temporary_queue(session)
        broker.consume(session, reply_queue, qos=0)
        fields = mapping.fields_from_headers(request.headers)
        fields["reply_to"] = mapping.QUEUE_PREFIX + reply_queue
        correlation = fields.setdefault("correlation_id", secrets.token_hex(8))
        message = mapping.build_message(
            kind, name, request.body, fields, service.origin(listener, request)
        )
        request.conn.messages_in += 1
        result = broker.publish(message, identity=identity)
        if result.status is Status.REFUSED:
            raise _refusal(result)
        if not result.routed:
            raise HTTPError(503, "no_responders", f"nothing is subscribed to {name!r}")
        with trio.move_on_after(timeout):
            await sink.arrived.wait()
        reply = sink.reply
        if reply is None:
            raise HTTPError(
                504, "timeout", f"no reply within {timeout:g} s (correlation id {correlation})"
            )
        return Response(
            200,
            reply.payload,
            content_type=reply.content_type or "application/octet-stream",
            headers=mapping.response_headers(reply),
        )
    finally:
        broker.detach(session, graceful=True)


# -- webhooks -------------------------------------------------------------------------


async def receive_webhook(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    """Verify a named webhook (webhooks.py), drop a redelivery, publish the body once."""
    name = request.params["name"]
    hook = service.webhooks.get(name)
    if hook is None:
        raise HTTPError(404, "unknown_webhook", f"no webhook named {name!r}")
    try:
        key = hook.check(request.headers, request.body)
    except WebhookError as exc:
        raise HTTPError(exc.status, exc.code, exc.message) from None
    if key is not None:
        original = hook.dedupe.lookup(key)
        if original is not None:
            request.conn.log.info("webhook.duplicate", webhook=name, message_id=original)
            return json_response(200, {"duplicate": True, "id": original})
    fields = mapping.fields_from_headers(request.headers)
    fields["headers"] = hook.message_headers(fields.get("headers", ()), key)
    kind, destination = mapping.parse_destination(hook.destination)
    message = mapping.build_message(
        kind, destination, request.body, fields, service.origin(listener, request)
    )
    # The operator chose the destination and the signature vouches for the sender.
    request.conn.messages_in += 1
    result = service.broker.publish(message, identity=TRUSTED)
    if result.status is Status.REFUSED:
        raise _refusal(result)
    message_id = str(message.message_id)
    if key is not None:
        hook.dedupe.remember(key, message_id)
    return json_response(202, {"id": message_id, "routed": result.routed})


# -- health and description -------------------------------------------------------------


async def healthz(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    return json_response(200, {"status": "ok"})


async def readyz(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    state = dict(service.ready())
    return json_response(200 if state.get("ready") else 503, state)


async def openapi(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    return json_response(200, openapi_document())


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "The process is up"),
    Route("GET", "/readyz", readyz, "Listeners bound and the store open"),
    Route("GET", "/api/v1/openapi.json", openapi, "This API's OpenAPI document"),
    Route("POST", "/api/v1/messages", publish_batch, "Publish many messages (JSON or NDJSON)"),
    Route("GET", "/api/v1/topics/{filter...}/events", topic_events, "Server-Sent Events"),
    Route("POST", "/api/v1/topics/{topic...}", publish_topic, "Publish to a topic"),
    Route("GET", "/api/v1/queues/{queue}/messages", pull_messages, "Pull from a queue"),
    Route("POST", "/api/v1/queues/{queue}/ack", ack_messages, "Acknowledge pulled messages"),
    Route("POST", "/api/v1/queues/{queue}/release", release_messages, "Return pulled messages"),
    Route("POST", "/api/v1/queues/{queue}", publish_queue, "Publish to a queue"),
    Route("POST", "/api/v1/request/{destination...}", request_reply, "Request/reply"),
    Route("POST", "/hooks/{name}", receive_webhook, "Receive a signed webhook"),
)


def all_routes() -> tuple[Route, ...]:
    """The whole route table: the API's, the operations pages' and the admin API's."""
    from .http_admin import ADMIN_ROUTES
    from .http_dashboard import DASHBOARD_ROUTES
    from .http_ops import OPS_ROUTES

    return (*ROUTES, *OPS_ROUTES, *DASHBOARD_ROUTES, *ADMIN_ROUTES)
