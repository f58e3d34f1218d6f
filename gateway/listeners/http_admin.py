"""The admin API under /api/v1/admin/ (docs/operations.md): authenticated, admin role."""

from __future__ import annotations

from typing import Any

from .http_api import Route

ADMIN_ROUTES: tuple[Route, ...] = ()


def admin_paths() -> dict[str, Any]:
    """The OpenAPI paths of ADMIN_ROUTES."""
    return {}
