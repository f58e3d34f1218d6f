"""Operations pages on the HTTP listener: /metrics (Prometheus) and /dashboard."""

from __future__ import annotations

from typing import Any

from .http_api import Route

OPS_ROUTES: tuple[Route, ...] = ()


def ops_paths() -> dict[str, Any]:
    """The OpenAPI paths of OPS_ROUTES."""
    return {}
