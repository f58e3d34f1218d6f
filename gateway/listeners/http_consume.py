"""The HTTP API's consuming endpoints: Server-Sent Events, pull with its ack and
release, and request/reply (a temporary queue as the reply-to). Routed by
``http_api.ROUTES``; docs/http.md describes them.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import msgspec
import trio

from ..config import ListenerConfig
from ..core import (
    CloseReason,
    Delivery,
    InvalidFilter,
    Kind,
    Status,
    SubscribeOptions,
    check_filter,
)
from ..core.broker import NotAuthorized
from ..core.destinations import QUEUE_PREFIX
from ..core.routing import parse_destination
from ..core.selector import Selector, SelectorError, compile_selector
from ..core.session import TRUSTED
from . import http_mapping as mapping
from .http import ChunkWriter, HTTPError, Request, Response, json_response
from .http_publish import forbidden, refusal
from .http_pull import PullConsumer, ReplySink

if TYPE_CHECKING:
    from .http_api import HTTPService

# Request/reply: the longest wait a caller may ask for, and the default.
MAX_REQUEST_TIMEOUT = 300.0
DEFAULT_REQUEST_TIMEOUT = 30.0
# Pull: the most messages one request may take.
MAX_PULL = 100
# SSE: bytes a slow reader may fall behind before its QoS 0 events are dropped.
SSE_HIGH_WATER = 1 << 20


class _AckBody(msgspec.Struct):
    ids: list[str]


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
        raise forbidden(exc) from None
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
    kind, name = parse_destination(request.params["destination"])
    service.check_destination(kind, name)
    timeout = _query_number(request, "timeout", DEFAULT_REQUEST_TIMEOUT, 0.001, MAX_REQUEST_TIMEOUT)
    broker = service.broker
    identity = service.identity_of(request)
    try:  # before telling whether anything consumes it
        target = QUEUE_PREFIX + name if kind is Kind.QUEUE else name
        broker.require(identity, "publish", target, request.conn.peer)
    except NotAuthorized as exc:
        raise forbidden(exc) from None
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
        fields["reply_to"] = QUEUE_PREFIX + reply_queue
        correlation = fields.setdefault("correlation_id", secrets.token_hex(8))
        message = mapping.build_message(
            kind, name, request.body, fields, service.origin(listener, request)
        )
        request.conn.messages_in += 1
        result = broker.publish(message, identity=identity)
        if result.status is Status.REFUSED:
            raise refusal(result)
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
