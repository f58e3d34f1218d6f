"""The OpenAPI 3.1 description of the HTTP API, served at /api/v1/openapi.json.

Written by hand, next to the route table it describes; tests/listeners/
test_openapi.py checks that every route is described with the statuses its
endpoint answers, and nothing else is.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

_ERROR = {"$ref": "#/components/responses/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERROR for status in statuses}


_MSG_HEADERS: list[dict[str, Any]] = [
    {
        "name": "X-Msg-Priority",
        "in": "header",
        "schema": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    {
        "name": "X-Msg-Expiry",
        "in": "header",
        "description": "seconds from now",
        "schema": {"type": "number"},
    },
    {"name": "X-Msg-Correlation-Id", "in": "header", "schema": {"type": "string"}},
    {
        "name": "X-Msg-Reply-To",
        "in": "header",
        "description": "a topic, or $queue/NAME",
        "schema": {"type": "string"},
    },
    {"name": "X-Msg-Persistent", "in": "header", "schema": {"type": "boolean", "default": True}},
    {"name": "X-Msg-Retain", "in": "header", "schema": {"type": "boolean", "default": False}},
]

_PUBLISHED = {
    "202": {
        "description": "handed to the core",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Published"}}},
    },
    "201": {
        "description": "handed to the store (with ack=stored)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Published"}}},
    },
}

_PUBLISH_PARAMS = [
    *_MSG_HEADERS,
    {"name": "ack", "in": "query", "schema": {"enum": ["stored"]}},
]

_BODY = {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}

_SELECTOR = {
    "name": "selector",
    "in": "query",
    "description": "a JMS message selector (docs/selectors.md), URL-encoded: only the "
    "messages it matches; a bad one is 400 bad_selector with the error's position",
    "schema": {"type": "string", "maxLength": 4096},
    "example": "site = 'lyon' AND temp > 30",
}


def _publish(target: str, name: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"Publish the body to a {target}",
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}},
                *_PUBLISH_PARAMS,
            ],
            "requestBody": _BODY,
            # A topic may be reserved (403); a queue may not exist (404).
            "responses": {
                **_PUBLISHED,
                **_errors(400, 403 if target == "topic" else 404, 413, 429, 503),
            },
        }
    }


def _queue_param() -> dict[str, Any]:
    return {"name": "queue", "in": "path", "required": True, "schema": {"type": "string"}}


_IDS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["ids"],
                "properties": {"ids": {"type": "array", "items": {"type": "string"}}},
            }
        }
    },
}


def _webhook() -> dict[str, Any]:
    return {
        "post": {
            "summary": "Receive a webhook: verify its signature, publish its body once",
            "description": (
                "Configured in [[webhooks]] (docs/http.md, Webhooks). The signature "
                "(X-Hub-Signature-256, Stripe-Signature or a configured header) is an "
                "HMAC-SHA256 of the body with the webhook's secret; a redelivery with an "
                "idempotency key already seen within the window is answered 200 and not "
                "published again."
            ),
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "X-Hub-Signature-256", "in": "header", "schema": {"type": "string"}},
                {"name": "Stripe-Signature", "in": "header", "schema": {"type": "string"}},
                {"name": "X-GitHub-Delivery", "in": "header", "schema": {"type": "string"}},
                {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                *_MSG_HEADERS,
            ],
            "requestBody": _BODY,
            "responses": {
                "202": {
                    "description": "verified and handed to the core",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Published"}}
                    },
                },
                "200": {
                    "description": "a duplicate within the window: not published again",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Duplicate"}}
                    },
                },
                **_errors(400, 401, 404, 413, 503),
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    document = _base_document()
    # The operations pages (metrics, dashboard) and the admin API describe their own routes.
    from .http_admin import admin_paths
    from .http_dashboard import dashboard_paths
    from .http_ops import ops_paths

    document["paths"].update(ops_paths())
    document["paths"].update(dashboard_paths())
    document["paths"].update(admin_paths())
    return document


def _base_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway HTTP API",
            "version": __version__,
            "description": "Publish, consume and request/reply over HTTP (docs/http.md).",
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "The process is up",
                    "responses": {"200": {"description": "up"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Listeners bound and the store open",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready; the body says what is missing"},
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "the OpenAPI document"},
                        **_errors(429),
                    },
                }
            },
            "/api/v1/messages": {
                "post": {
                    "summary": "Publish many messages: a JSON array or NDJSON of BatchItem",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/BatchItem"},
                                }
                            },
                            "application/x-ndjson": {
                                "schema": {"$ref": "#/components/schemas/BatchItem"}
                            },
                        },
                    },
                    "responses": {
                        "202": {"description": "every message accepted"},
                        "207": {"description": "some accepted, some refused (see results)"},
                        **_errors(400, 403, 404, 413, 415, 429, 503),
                    },
                }
            },
            "/api/v1/topics/{topic}": _publish("topic", "topic"),
            "/api/v1/topics/{filter}/events": {
                "get": {
                    "summary": "Server-Sent Events for a topic filter (URL-encoded; + and #)",
                    "parameters": [
                        {
                            "name": "filter",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        _SELECTOR,
                    ],
                    "responses": {
                        "200": {
                            "description": "an event stream; each event's data is a Message",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 429),
                    },
                }
            },
            "/api/v1/queues/{queue}": _publish("queue", "queue"),
            "/api/v1/queues/{queue}/messages": {
                "get": {
                    "summary": "Pull up to max messages, waiting up to wait seconds (long poll)",
                    "parameters": [
                        _queue_param(),
                        {"name": "max", "in": "query", "schema": {"type": "integer"}},
                        {"name": "wait", "in": "query", "schema": {"type": "number"}},
                        {"name": "visibility", "in": "query", "schema": {"type": "number"}},
                        _SELECTOR,
                    ],
                    "responses": {
                        "200": {
                            "description": "the messages (possibly none)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "messages": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Message"},
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(400, 404, 429),
                    },
                }
            },
            "/api/v1/queues/{queue}/ack": {
                "post": {
                    "summary": "Acknowledge pulled messages by delivery id",
                    "parameters": [_queue_param()],
                    "requestBody": _IDS_BODY,
                    "responses": {
                        "200": {"description": "acked count and ids not outstanding"},
                        **_errors(400, 429),
                    },
                }
            },
            "/api/v1/queues/{queue}/release": {
                "post": {
                    "summary": "Return pulled messages to the queue now",
                    "parameters": [_queue_param()],
                    "requestBody": _IDS_BODY,
                    "responses": {
                        "200": {"description": "released count and ids not outstanding"},
                        **_errors(400, 429),
                    },
                }
            },
            "/api/v1/request/{destination}": {
                "post": {
                    "summary": "Publish with a reply destination and wait for the reply",
                    "parameters": [
                        {
                            "name": "destination",
                            "in": "path",
                            "required": True,
                            "description": "a topic, or $queue/NAME (URL-encoded)",
                            "schema": {"type": "string"},
                        },
                        {"name": "timeout", "in": "query", "schema": {"type": "number"}},
                        *_MSG_HEADERS,
                    ],
                    "requestBody": _BODY,
                    "responses": {
                        "200": {"description": "the reply's payload, its fields as X-Msg-*"},
                        **_errors(400, 403, 404, 413, 429, 503, 504),
                    },
                }
            },
            "/hooks/{name}": _webhook(),
        },
        "components": {
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "stable code"},
                        "message": {"type": "string"},
                    },
                },
                "Published": {
                    "type": "object",
                    "required": ["id", "routed"],
                    "properties": {
                        "id": {"type": "string"},
                        "routed": {"type": "integer"},
                        "stored": {"type": "boolean"},
                        "durable": {"type": "boolean"},
                    },
                },
                "Duplicate": {
                    "type": "object",
                    "required": ["duplicate", "id"],
                    "properties": {
                        "duplicate": {"const": True},
                        "id": {"type": "string", "description": "the first delivery's message"},
                    },
                },
                "BatchItem": {
                    "type": "object",
                    "properties": {
                        "topic": {"type": "string"},
                        "queue": {"type": "string"},
                        "payload": {"type": "string"},
                        "payload_base64": {"type": "string"},
                        "content_type": {"type": "string"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "priority": {"type": "integer"},
                        "expiry": {"type": "number"},
                        "correlation_id": {"type": "string"},
                        "reply_to": {"type": "string"},
                        "persistent": {"type": "boolean"},
                        "retain": {"type": "boolean"},
                    },
                },
                "Message": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "delivery id (pull only)"},
                        "message_id": {"type": "string"},
                        "destination": {"type": "string"},
                        "payload": {"type": "string"},
                        "encoding": {"enum": ["base64"]},
                        "content_type": {"type": "string"},
                        "headers": {"type": "object"},
                        "correlation_id": {"type": "string"},
                        "reply_to": {"type": "string"},
                        "priority": {"type": "integer"},
                        "persistent": {"type": "boolean"},
                        "expires_at": {"type": "number"},
                        "timestamp": {"type": "number"},
                        "redelivered": {"type": "boolean"},
                        "delivery_count": {"type": "integer"},
                    },
                },
            },
        },
    }
