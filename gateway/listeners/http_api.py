"""The HTTP API: publish, batch, consume (SSE and pull), request/reply, health.

``HTTPService`` holds what the endpoints share across every HTTP listener of
one gateway (pull consumers, the request counter); ``HTTPService.handler``
builds one listener's connection handler. ``ROUTES`` is the route table; the
OpenAPI document (``openapi.py``) describes exactly these routes, and a test
keeps the two in step. The endpoints that publish are in ``http_publish.py``,
those that consume (and request/reply) in ``http_consume.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ..auth import Authenticator, AuthError, Identity
from ..auth.acl import Principal
from ..config import Config, ListenerConfig
from ..core import Broker, Kind, Origin
from ..core.broker import NotAuthorized
from ..core.destinations import QUEUE_PREFIX
from ._serve import Connection, Handler
from .authn import http_identity, unauthorized
from .http import HTTPError, Request, Response, http_handler, json_response, path_params
from .http_consume import ack_messages, pull_messages, release_messages, request_reply, topic_events
from .http_publish import forbidden, publish_batch, publish_queue, publish_topic, receive_webhook
from .http_pull import PullConsumer
from .openapi import openapi_document
from .webhooks import build_webhooks
from .websocket import check_handshake, choose_subprotocol, offered_subprotocols, serve_websocket

Endpoint = Callable[["HTTPService", ListenerConfig, Request], Awaitable[Response]]

# Pull: seconds a pull consumer with nothing handed out stays after its last pull.
PULL_IDLE = 60.0
# Open to anyone, like /healthz and /readyz: it describes the API.
OPENAPI_PATH = "/api/v1/openapi.json"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    endpoint: Endpoint
    summary: str


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
            raise unauthorized(request, f"authentication failed ({exc.reason})") from None
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
            raise forbidden(exc) from None

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
