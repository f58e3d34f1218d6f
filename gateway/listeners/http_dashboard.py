"""The dashboard at /dashboard: static files served by the HTTP listener (docs/dashboard.md).

The page (gateway/ops/dashboard/, shipped as package data) is plain HTML, CSS and
JavaScript with no build step and nothing fetched from elsewhere: it polls the admin
API (/api/v1/admin/, which authenticates) from the browser and draws what it reads.
The files themselves hold nothing secret and are served to anyone, unless
``[gateway] dashboard = false``, which answers 404.

Every file is answered with ``Cache-Control: no-cache`` (a new gateway version is
picked up on reload) and a Content-Security-Policy that allows only this origin's
script, style, images and API: no inline script or style, no frames, no forms posted
anywhere.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..config import ListenerConfig
from .http import HTTPError, Request, Response
from .http_api import Route

if TYPE_CHECKING:
    from .http_api import HTTPService

INDEX = "index.html"
# The files the dashboard is made of, and their content types; nothing else is served.
ASSETS: dict[str, str] = {
    INDEX: "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-cache"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of one of ASSETS (read once: package data does not change while running)."""
    return resources.files("gateway.ops").joinpath("dashboard", name).read_bytes()


def _serve(service: HTTPService, name: str) -> Response:
    if not service.config.gateway.dashboard:
        raise HTTPError(
            404, "not_found", "the dashboard is turned off ([gateway] dashboard = false)"
        )
    content_type = ASSETS.get(name)
    if content_type is None:
        raise HTTPError(404, "not_found", f"the dashboard has no file {name!r}")
    return Response(200, asset(name), content_type=content_type, headers=list(HEADERS))


async def dashboard_page(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    return _serve(service, INDEX)


async def dashboard_file(
    service: HTTPService, listener: ListenerConfig, request: Request
) -> Response:
    return _serve(service, request.params["file"])


DASHBOARD_ROUTES: tuple[Route, ...] = (
    Route("GET", "/dashboard", dashboard_page, "The live dashboard"),
    Route("GET", "/dashboard/{file}", dashboard_file, "One of the dashboard's files"),
)

_NOT_FOUND = {"$ref": "#/components/responses/Error"}


def dashboard_paths() -> dict[str, Any]:
    """The OpenAPI paths of DASHBOARD_ROUTES."""
    headers = {
        "Cache-Control": {"schema": {"const": "no-cache"}},
        "Content-Security-Policy": {"schema": {"const": CONTENT_SECURITY_POLICY}},
    }
    return {
        "/dashboard": {
            "get": {
                "summary": "The live dashboard: an HTML page that polls the admin API "
                "(docs/dashboard.md); also at /dashboard/",
                "responses": {
                    "200": {
                        "description": "the page",
                        "headers": headers,
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "404": _NOT_FOUND,
                },
            }
        },
        "/dashboard/{file}": {
            "get": {
                "summary": "One of the dashboard's files (its script, style sheet and icon)",
                "parameters": [
                    {
                        "name": "file",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": sorted(ASSETS)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file, with the content type of its kind",
                        "headers": headers,
                        "content": {
                            content_type.partition(";")[0]: {"schema": {"type": "string"}}
                            for content_type in ASSETS.values()
                        },
                    },
                    "404": _NOT_FOUND,
                },
            }
        },
    }
