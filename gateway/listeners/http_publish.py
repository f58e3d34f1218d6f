"""The HTTP API's publishing endpoints: one message to a topic or a queue, a batch
(JSON or NDJSON), and a signed webhook; and the 403/503 errors of a refused publish.
Routed by ``http_api.ROUTES``; docs/http.md describes them.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from ..auth.acl import NOT_AUTHORIZED
from ..config import ListenerConfig
from ..core import Broker, Kind, Message, Origin, PublishResult, Status
from ..core.broker import NotAuthorized
from ..core.routing import parse_destination
from ..core.session import TRUSTED
from ..store import MemoryStore
from . import http_mapping as mapping
from .http import HTTPError, Request, Response, json_response
from .webhooks import WebhookError

if TYPE_CHECKING:
    from .http_api import HTTPService

BATCH_TYPES = ("application/json", "application/x-ndjson", "application/ndjson")


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


def forbidden(exc: NotAuthorized) -> HTTPError:
    return HTTPError(403, "not_authorized", f"not authorized to {exc.action} {exc.destination}")


def refusal(result: PublishResult) -> HTTPError:
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
        raise refusal(result)
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
        error = refusal(PublishResult(Status.REFUSED, 0, reason))
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
    kind, destination = parse_destination(hook.destination)
    message = mapping.build_message(
        kind, destination, request.body, fields, service.origin(listener, request)
    )
    # The operator chose the destination and the signature vouches for the sender.
    request.conn.messages_in += 1
    result = service.broker.publish(message, identity=TRUSTED)
    if result.status is Status.REFUSED:
        raise refusal(result)
    message_id = str(message.message_id)
    if key is not None:
        hook.dedupe.remember(key, message_id)
    return json_response(202, {"id": message_id, "routed": result.routed})
