"""The admin API under /api/v1/admin/ (docs/admin.md): authenticated, admin role.

Every route first checks that the request comes from an administrator: an identity
in ``[auth] admin_group``, or, when no users file is configured, an anonymous
client on a loopback address (like RabbitMQ's ``guest`` user). Anonymous requests
are otherwise answered 401 with ``WWW-Authenticate`` (a browser asks for a
password), other users 403. What the routes read and change belongs to the
``Gateway`` (``HTTPService.gateway``): its broker, listeners, bridges and config;
changes to queues and retained messages go through ``gateway.core.admin``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__
from ..auth import is_loopback
from ..config import ConfigError, ListenerConfig
from ..core import Queue, admin
from ..core.broker import SESSION_QUEUE_PREFIX, SHARE_PREFIX, TEMP_QUEUE_PREFIX
from ..core.session import NEVER
from ..core.stats import QueueSnapshot
from ._serve import Connection
from .authn import unauthorized
from .http import HTTPError, Request, Response, json_response
from .http_api import Endpoint, Route
from .http_mapping import message_json

if TYPE_CHECKING:
    from .http_api import HTTPService

PREFIX = "/api/v1/admin"
# The stop reason of a kicked connection: MQTT 5 clients get DISCONNECT 0x98
# (administrative action), STOMP clients an ERROR frame (listeners/mqtt.py, stomp.py).
KICKED = "kicked"
# Peek: messages shown by default, and at most.
PEEK_DEFAULT = 10
PEEK_MAX = 1000
# Topics by publish count, and retained messages (by topic), listed at most.
TOP_TOPICS = 100
MAX_RETAINED = 1000
REDACTED = "***"
# Keys whose values are secrets wherever they appear in the configuration.
_SECRET_KEY = re.compile(r"secret|password|passwd|passphrase|token|credential|private", re.I)
# user:password@ in a URL.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):[^/@\s]*@")
# When the gateway's own start time is not known: this module's import (at start-up).
_IMPORTED = time.time()


# -- who may ----------------------------------------------------------------------------------


def require_admin(service: HTTPService, request: Request) -> None:
    """Return if ``request`` (authenticated already) comes from an administrator;
    HTTPError 401 (anonymous) or 403 (another user) otherwise."""
    auth = service.config.auth
    identity = request.identity
    if identity is not None and identity.user is not None:
        if auth.admin_group in identity.groups:
            return
        raise HTTPError(
            403,
            "forbidden",
            f"user {identity.user!r} is not an administrator (group {auth.admin_group!r})",
        )
    if auth.users_file is None and is_loopback(request.conn.ip):
        return  # no users at all: the local operator is the administrator
    raise unauthorized(
        request,
        f"the admin API needs the credentials of a member of group {auth.admin_group!r}",
    )


def _admin(endpoint: Endpoint) -> Endpoint:
    async def checked(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
        require_admin(service, request)
        return await endpoint(service, listener, request)

    checked.__name__ = endpoint.__name__
    checked.__doc__ = endpoint.__doc__
    return checked


def _gateway(service: HTTPService) -> Any:
    gateway = service.gateway
    if gateway is None:
        raise HTTPError(503, "unavailable", "the admin API has no gateway to report on")
    return gateway


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, "bad_parameter", f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise HTTPError(400, "bad_parameter", f"{name} must be between {low} and {high}")
    return value


# -- overview ---------------------------------------------------------------------------------


def _connections(service: HTTPService) -> Iterator[Connection]:
    for server in _gateway(service)._servers:
        yield from server.connections


def _named_queues(service: HTTPService) -> list[str]:
    """Queues worth listing: named, shared and durable-subscription ones, and configured
    ones not used yet; not sessions' own queues or temporary reply queues."""
    names = {
        name
        for name in service.broker.queues
        if not name.startswith((SESSION_QUEUE_PREFIX, TEMP_QUEUE_PREFIX))
    }
    names.update(queue.name for queue in service.config.queues)
    return sorted(names)


async def overview(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    gateway = _gateway(service)
    broker = service.broker
    by_protocol: dict[str, int] = {}
    for conn in _connections(service):
        by_protocol[conn.protocol] = by_protocol.get(conn.protocol, 0) + 1
    started = getattr(gateway, "started_at", None) or _IMPORTED
    queues = []
    for name in _named_queues(service):
        body = _queue_json(service, name)
        queues.append({key: body[key] for key in ("name", "depth", "consumers")})
    return json_response(
        200,
        {
            "version": __version__,
            "uptime": round(time.time() - started, 3),
            "time": time.time(),
            "connections": {"total": sum(by_protocol.values()), "by_protocol": by_protocol},
            "messages_in": broker.stats.published,
            "messages_out": broker.delivered_total(),
            "queues": queues,
            "bridges": [_bridge_json(bridge) for bridge in gateway.bridges.values()],
            "sessions": len(broker.sessions),
        },
    )


# -- connections ------------------------------------------------------------------------------


def _connection_json(service: HTTPService, conn: Connection) -> dict[str, Any]:
    user = None
    session = service.broker.sessions.get(conn.client_id) if conn.client_id else None
    if session is not None:
        user = getattr(session.identity, "user", None)
    elif conn.identity is not None:
        user = conn.identity.user
    return {
        "id": str(conn.conn_id),
        "protocol": conn.protocol,
        "listener": conn.listener,
        "peer": conn.peer,
        "client_id": conn.client_id,
        "user": user,
        "connected_at": conn.connected_at,
        "tls": conn.tls_version is not None,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "messages_in": conn.messages_in,
        "messages_out": conn.messages_out,
    }


async def list_connections(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    conns = sorted(_connections(service), key=lambda conn: conn.conn_id)
    return json_response(200, {"connections": [_connection_json(service, c) for c in conns]})


async def get_connection(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    wanted = request.params["id"]
    for conn in _connections(service):
        if str(conn.conn_id) == wanted:
            return json_response(200, _connection_json(service, conn))
    raise HTTPError(404, "not_found", f"no connection {wanted!r}")


async def kick(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    """Close the connection with this id, or every connection of this client id."""
    wanted = request.params["id"]
    found = [
        conn
        for conn in _connections(service)
        if str(conn.conn_id) == wanted or (conn.client_id and conn.client_id == wanted)
    ]
    if not found:
        raise HTTPError(404, "not_found", f"no connection with id or client id {wanted!r}")
    by = request.identity.user if request.identity is not None else None
    for conn in found:
        conn.log.info("admin.kicked", by=by, client_id=conn.client_id or None)
        conn.stop(KICKED)
    return json_response(200, {"kicked": [str(conn.conn_id) for conn in found]})


# -- sessions ---------------------------------------------------------------------------------


async def list_sessions(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    sessions = []
    for client_id, session in sorted(service.broker.sessions.items()):
        sessions.append(
            {
                "client_id": client_id,
                "connected": session.connected,
                # Seconds the session outlives its connection; null: never expires.
                "expiry": None if session.expiry == NEVER else session.expiry,
                "subscriptions": sorted(session.subscriptions),
                # Queues it consumes (shared subscriptions are among its subscriptions).
                "queues": sorted(n for n in session.consumers if not n.startswith(SHARE_PREFIX)),
                "queued": session.queue.depth,
                "in_flight": session.in_flight(),
                "user": getattr(session.identity, "user", None),
            }
        )
    return json_response(200, {"sessions": sessions})


# -- queues -----------------------------------------------------------------------------------


def _queue_json(service: HTTPService, name: str) -> dict[str, Any]:
    broker = service.broker
    queue = broker.queues.get(name)
    if queue is not None:
        body = dataclasses.asdict(broker.queue_stats(name))
        body["dead_letter"] = queue.policy.dead_letter
        body["durable"] = queue.durable
        return body
    # Configured and not used yet: what it would be, empty.
    configured = next(q for q in service.config.queues if q.name == name)
    body = {field.name: 0 for field in dataclasses.fields(QueueSnapshot)}
    body["name"] = name
    body["dead_letter"] = configured.dead_letter
    durability = configured.durability or service.config.gateway.durability
    body["durable"] = durability != "memory"
    return body


def _queue(service: HTTPService, request: Request) -> tuple[str, Queue | None]:
    """The queue named in the path (None: configured, not used yet); 404 if unknown."""
    name = request.params["queue"]
    queue = service.broker.queues.get(name)
    if queue is None and name not in {q.name for q in service.config.queues}:
        raise HTTPError(404, "unknown_queue", f"queue {name!r} does not exist")
    return name, queue


async def list_queues(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    queues = [_queue_json(service, name) for name in _named_queues(service)]
    return json_response(200, {"queues": queues})


async def get_queue(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    name, _ = _queue(service, request)
    return json_response(200, _queue_json(service, name))


async def peek_messages(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    limit = _int_query(request, "max", PEEK_DEFAULT, 1, PEEK_MAX)
    _, queue = _queue(service, request)
    entries = [] if queue is None else admin.peek(queue, limit)
    messages = [
        message_json(entry.message, redelivered=entry.redelivered, delivery_count=entry.count)
        for entry in entries
    ]
    return json_response(200, {"messages": messages})


async def purge_queue(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    name, queue = _queue(service, request)
    purged = 0 if queue is None else admin.purge(service.broker, queue)
    request.conn.log.info("admin.purged", queue=name, purged=purged)
    return json_response(200, {"purged": purged})


async def move_queue(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    """Move ready messages to ``?to=QUEUE``, or each dead-letter back where it came from."""
    name, queue = _queue(service, request)
    to = request.query.get("to")
    if to is not None:
        if to == name:
            raise HTTPError(400, "bad_parameter", "to names the queue the messages are in")
        service.check_queue(to)
    moved, kept = (0, 0) if queue is None else admin.move(service.broker, queue, to)
    request.conn.log.info("admin.moved", queue=name, to=to, moved=moved, kept=kept)
    return json_response(200, {"moved": moved, "kept": kept})


# -- topics and retained messages -------------------------------------------------------------


async def list_topics(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    counts = service.broker.stats.topics
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_TOPICS]
    return json_response(
        200, {"topics": [{"topic": topic, "published": count} for topic, count in top]}
    )


async def list_retained(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    retained = service.broker.retained
    messages = sorted(retained, key=lambda message: message.destination)[:MAX_RETAINED]
    return json_response(
        200,
        {
            "retained": [
                {
                    "topic": message.destination,
                    "size": len(message.payload),
                    "qos": message.qos,
                    "timestamp": message.timestamp,
                }
                for message in messages
            ],
            "total": len(retained),
        },
    )


async def delete_retained(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    topic = request.params["topic"]
    if not admin.delete_retained(service.broker, topic):
        raise HTTPError(404, "not_found", f"no retained message on {topic!r}")
    request.conn.log.info("admin.retained_deleted", topic=topic)
    return json_response(200, {"deleted": topic})


# -- bridges ----------------------------------------------------------------------------------


def _bridge_json(bridge: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = bridge.snapshot()
    return snapshot


def _bridge(service: HTTPService, request: Request) -> Any:
    name = request.params["name"]
    bridge = _gateway(service).bridges.get(name)
    if bridge is None:
        raise HTTPError(404, "not_found", f"no bridge named {name!r}")
    return bridge


async def list_bridges(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    bridges = _gateway(service).bridges.values()
    return json_response(200, {"bridges": [_bridge_json(bridge) for bridge in bridges]})


async def pause_bridge(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    bridge = _bridge(service, request)
    bridge.pause()
    bridge.log.info("admin.bridge_paused")
    return json_response(200, _bridge_json(bridge))


async def resume_bridge(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    bridge = _bridge(service, request)
    bridge.resume()
    bridge.log.info("admin.bridge_resumed")
    return json_response(200, _bridge_json(bridge))


# -- listeners, configuration, reload ---------------------------------------------------------


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def list_listeners(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    gateway = _gateway(service)
    listeners = []
    for server in gateway._servers:
        label = server.config.label
        bound = [_address(b.host, b.port) for b in gateway.bound if b.name == label]
        listeners.append(
            {
                "name": label,
                "protocol": server.config.protocol,
                "address": bound[0] if bound else server.config.bind,
                "addresses": bound,
                "tls": server.config.tls is not None,
                "connections": len(server.connections),
            }
        )
    return json_response(200, {"listeners": listeners})


def redact(node: Any, key: str = "") -> Any:
    """``node`` (plain JSON data) with secrets replaced by "***": values of keys named
    like secrets, and passwords in URLs (``user:***@``)."""
    if isinstance(node, dict):
        return {name: redact(value, name) for name, value in node.items()}
    if isinstance(node, list | tuple):
        return [redact(value, key) for value in node]
    if node is not None and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(node, str):
        return _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", node)
    return node


async def get_config(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    config = msgspec.to_builtins(service.config)
    jwt = config.get("auth", {}).get("jwt", {})
    for name in list(jwt):
        if "key" in name and jwt[name] is not None:
            jwt[name] = REDACTED  # public keys too: nothing of the token checks is shown
    return json_response(200, redact(config))


async def reload(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    """Read the configuration file again and apply what can change (Gateway.reload)."""
    gateway = _gateway(service)
    user = request.identity.user if request.identity is not None else None
    try:
        result = gateway.reload(f"admin API ({user or 'local'})")
    except ConfigError as exc:
        raise HTTPError(422, "invalid_config", str(exc)) from None
    return json_response(200, {"reloaded": result})


# -- the route table and its description ------------------------------------------------------

ADMIN_ROUTES: tuple[Route, ...] = tuple(
    Route(method, PREFIX + path, _admin(endpoint), summary)
    for method, path, endpoint, summary in (
        ("GET", "/overview", overview, "Totals: connections, messages, queues, bridges"),
        ("GET", "/connections", list_connections, "Open connections"),
        ("GET", "/connections/{id}", get_connection, "One connection"),
        ("POST", "/connections/{id}/kick", kick, "Close a connection (by id or client id)"),
        ("GET", "/sessions", list_sessions, "Sessions, connected or not"),
        ("GET", "/queues", list_queues, "Queues and their counters"),
        ("GET", "/queues/{queue}", get_queue, "One queue's counters"),
        ("GET", "/queues/{queue}/messages", peek_messages, "Look at ready messages"),
        ("POST", "/queues/{queue}/purge", purge_queue, "Discard the ready messages"),
        ("POST", "/queues/{queue}/move", move_queue, "Move ready messages (dead letters back)"),
        ("GET", "/topics", list_topics, "The most published topics"),
        ("GET", "/retained", list_retained, "Retained messages"),
        ("DELETE", "/retained/{topic...}", delete_retained, "Clear a retained message"),
        ("GET", "/bridges", list_bridges, "Bridges and their state"),
        ("POST", "/bridges/{name}/pause", pause_bridge, "Disconnect a bridge and stay so"),
        ("POST", "/bridges/{name}/resume", resume_bridge, "Let a paused bridge reconnect"),
        ("GET", "/listeners", list_listeners, "Listeners, addresses and connection counts"),
        ("GET", "/config", get_config, "The configuration in force, secrets redacted"),
        ("POST", "/reload", reload, "Read the configuration file again"),
    )
)


# The statuses each route answers besides 200, 401 and 403 (tests/e2e/test_admin_api.py
# observes every one of them, and no other).
_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("GET", "/connections/{id}"): (404,),
    ("POST", "/connections/{id}/kick"): (404,),
    ("GET", "/queues/{queue}"): (404,),
    ("GET", "/queues/{queue}/messages"): (400, 404),
    ("POST", "/queues/{queue}/purge"): (404,),
    ("POST", "/queues/{queue}/move"): (400, 404),
    ("DELETE", "/retained/{topic...}"): (404,),
    ("POST", "/bridges/{name}/pause"): (404,),
    ("POST", "/bridges/{name}/resume"): (404,),
    ("POST", "/reload"): (422,),
}
_DESCRIPTIONS = {
    400: "a bad query parameter",
    401: "anonymous: credentials needed (WWW-Authenticate)",
    403: "not a member of the admin group",
    404: "no such connection, queue, retained message or bridge",
    422: "the configuration file is invalid: the configuration in force stays",
}
_QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/queues/{queue}/messages"): [
        {
            "name": "max",
            "in": "query",
            "description": f"messages shown (default {PEEK_DEFAULT})",
            "schema": {"type": "integer", "minimum": 1, "maximum": PEEK_MAX},
        }
    ],
    ("POST", "/queues/{queue}/move"): [
        {
            "name": "to",
            "in": "query",
            "description": "the destination queue; without it each dead letter goes back "
            "to its x-death-queue",
            "schema": {"type": "string"},
        }
    ],
}


def admin_paths() -> dict[str, Any]:
    """The OpenAPI paths of ADMIN_ROUTES."""
    paths: dict[str, Any] = {}
    for route in ADMIN_ROUTES:
        path = route.pattern[len(PREFIX) :]
        key = (route.method, path)
        names = re.findall(r"\{(\w+)(?:\.\.\.)?\}", path)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in names
        ]
        parameters += _QUERY.get(key, [])
        responses: dict[str, Any] = {
            "200": {"description": "done", "content": {"application/json": {}}},
        }
        for status in sorted((401, 403, *_STATUSES.get(key, ()))):
            responses[str(status)] = {
                "description": _DESCRIPTIONS[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": ["admin"],
            "responses": responses,
        }
        if parameters:
            operation["parameters"] = parameters
        openapi = re.sub(r"\{(\w+)\.\.\.\}", r"{\1}", route.pattern)
        paths.setdefault(openapi, {})[route.method.lower()] = operation
    return paths
