"""Operations pages on the HTTP listener: /metrics (Prometheus) and /dashboard.

GET /metrics is the Prometheus text exposition of the gateway's metrics
(gateway/ops/metrics.py, docs/metrics.md). ``[gateway] metrics`` says who may
read it: ``"open"`` anyone (as Prometheus scrapes), ``"admin"`` only identities
in ``[auth] admin_group`` (401 without credentials or with bad ones, 403 for
others), ``"off"`` nobody (404, as if there were no such page).
"""

from __future__ import annotations

from typing import Any

from ..config import ListenerConfig
from .authn import unauthorized
from .http import HTTPError, Request, Response
from .http_api import HTTPService, Route

METRICS_PATH = "/metrics"


async def metrics(service: HTTPService, listener: ListenerConfig, request: Request) -> Response:
    mode = service.config.gateway.metrics
    if mode == "off" or service.gateway is None:
        raise HTTPError(404, "not_found", f"no such endpoint: {METRICS_PATH}")
    if mode == "admin":
        await _require_admin(service, request)
    # Imported here: prometheus_client is loaded when first scraped, not at startup.
    from ..ops.metrics import CONTENT_TYPE, exposition

    return Response(200, exposition(service.gateway), content_type=CONTENT_TYPE)


async def _require_admin(service: HTTPService, request: Request) -> None:
    """Return if the request's identity is in ``[auth] admin_group``; else HTTPError 401
    (no credentials, or refused ones) or 403 (someone else)."""
    if request.header("authorization") is None:
        raise unauthorized(request, "the metrics need the credentials of an administrator")
    # Earlier authentication failures from this address: answer late.
    await request.conn.auth_pause()
    identity = service.authenticate(request)  # 401 if refused
    group = service.config.auth.admin_group
    if identity is None or group not in identity.groups:
        raise HTTPError(403, "forbidden", f"the metrics are for the group {group!r}")


OPS_ROUTES: tuple[Route, ...] = (Route("GET", METRICS_PATH, metrics, "Prometheus metrics"),)


def ops_paths() -> dict[str, Any]:
    """The OpenAPI paths of OPS_ROUTES."""
    error = {"$ref": "#/components/responses/Error"}
    return {
        METRICS_PATH: {
            "get": {
                "summary": "Prometheus metrics",
                "description": (
                    "The Prometheus text exposition of the gateway's metrics "
                    '(docs/metrics.md). [gateway] metrics: "open" (anyone), "admin" '
                    '(identities in [auth] admin_group) or "off" (404).'
                ),
                "responses": {
                    "200": {
                        "description": "the metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": error,
                    "403": error,
                    "404": error,
                },
            }
        }
    }
