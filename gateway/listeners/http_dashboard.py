"""The dashboard at /dashboard: static files served by the HTTP listener (docs/operations.md)."""

from __future__ import annotations

from typing import Any

from .http_api import Route

DASHBOARD_ROUTES: tuple[Route, ...] = ()


def dashboard_paths() -> dict[str, Any]:
    """The OpenAPI paths of DASHBOARD_ROUTES."""
    return {}
