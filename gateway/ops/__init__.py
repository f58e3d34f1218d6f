"""Operations: what the gateway shows about itself.

``metrics``: the Prometheus collector behind GET /metrics (docs/metrics.md);
``dashboard/``: the operations page's static files (listeners/http_dashboard.py).
"""
