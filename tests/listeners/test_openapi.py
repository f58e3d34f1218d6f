"""The OpenAPI document at /api/v1/openapi.json is kept true.

- It has the shape of an OpenAPI 3.1 document, and every ``$ref`` resolves.
- Its operations are exactly the routes of ``http_api.all_routes()`` (a route pattern's
  ``{x...}`` is the document's ``{x}``), and each declares its path parameters.
- The statuses it declares for each route are exactly those the HTTP tests exercise
  (``EXERCISED``), and every status a test observes is declared: ``record`` in
  tests/listeners/test_http_wire.py checks each answer as it comes, and
  ``test_the_suite_observed_every_exercised_status`` checks, after a whole run of the HTTP
  tests, that the table below is what they saw.

Adding a route or an answer without describing it in openapi.py fails here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio

from gateway import __version__
from gateway.app import Gateway
from gateway.listeners import http_api
from gateway.listeners.openapi import openapi_document
from tests.conftest import NET_TIMEOUT
from tests.listeners.test_http_wire import (
    OBSERVED,
    curl,
    declared_statuses,
    openapi_path,
    record,
)

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Every status the HTTP tests make each route answer (and so what the document declares).
EXERCISED: dict[tuple[str, str], set[int]] = {
    ("GET", "/healthz"): {200},
    ("GET", "/readyz"): {200, 503},
    ("GET", "/api/v1/openapi.json"): {200, 429},
    ("POST", "/api/v1/messages"): {202, 207, 400, 403, 404, 413, 415, 429, 503},
    ("GET", "/api/v1/topics/{filter...}/events"): {200, 400, 429},
    ("POST", "/api/v1/topics/{topic...}"): {201, 202, 400, 403, 413, 429, 503},
    ("GET", "/api/v1/queues/{queue}/messages"): {200, 400, 404, 429},
    ("POST", "/api/v1/queues/{queue}/ack"): {200, 400, 429},
    ("POST", "/api/v1/queues/{queue}/release"): {200, 400, 429},
    ("POST", "/api/v1/queues/{queue}"): {201, 202, 400, 404, 413, 429, 503},
    ("POST", "/api/v1/request/{destination...}"): {200, 400, 403, 404, 413, 429, 503, 504},
}

# The test modules whose requests fill OBSERVED (they run before this one).
HTTP_TEST_MODULES = (
    "tests/e2e/test_http_api.py",
    "tests/listeners/test_http_pull.py",
    "tests/listeners/test_http_sse.py",
    "tests/listeners/test_http_wire.py",
)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), f"unresolved $ref {ref}"
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


async def test_served_document_is_the_openapi_document(http_gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(http_gateway.port("http"), "GET", "/api/v1/openapi.json")
    assert reply.status == 200
    assert reply.header("content-type") == "application/json"
    assert reply.json() == openapi_document()


def test_document_has_the_openapi_3_1_shape() -> None:
    document = openapi_document()
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"]
    assert document["info"]["version"] == __version__
    assert document["paths"]
    for ref in _refs(document):
        _resolve(document, ref)
    for (method, path), operation in _operations(document).items():
        where = f"{method} {path}"
        assert path.startswith("/"), where
        assert operation.get("summary"), where
        responses = operation["responses"]
        assert responses, where
        for status, response in responses.items():
            assert re.fullmatch(r"[1-5]\d\d", status), where
            response = _resolve(document, response["$ref"]) if "$ref" in response else response
            assert response.get("description"), (where, status)
        parameters = operation.get("parameters", [])
        for parameter in parameters:
            assert parameter["in"] in {"path", "query", "header", "cookie"}, where
            assert parameter["name"], where
            assert "schema" in parameter, (where, parameter["name"])
        seen = [(p["in"], p["name"].lower()) for p in parameters]
        assert len(seen) == len(set(seen)), f"{where}: a parameter twice"
        # Every {name} of the path is a required path parameter, and nothing else is.
        in_path = set(re.findall(r"\{(\w+)\}", path))
        declared = {p["name"] for p in parameters if p["in"] == "path"}
        assert declared == in_path, where
        assert all(p.get("required") is True for p in parameters if p["in"] == "path"), where
        if "requestBody" in operation:
            assert operation["requestBody"]["content"], where
    # Errors share one schema with the promised fields.
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message"}


def test_every_route_is_documented_and_nothing_else() -> None:
    routes = {(route.method, openapi_path(route.pattern)) for route in http_api.all_routes()}
    documented = set(_operations(openapi_document()))
    assert routes - documented == set(), "routes missing from openapi.py"
    assert documented - routes == set(), "operations in openapi.py that no route serves"
    assert len(routes) == len(http_api.all_routes()), "two routes with one method and path"


@pytest.mark.parametrize(("method", "pattern"), sorted(EXERCISED))
def test_declared_statuses_are_the_exercised_ones(method: str, pattern: str) -> None:
    assert declared_statuses(method, pattern) == EXERCISED[(method, pattern)]


def test_the_selector_parameter_is_declared_where_the_api_takes_it() -> None:
    """SSE and pull take ``selector`` (docs/http.md); nothing else does."""
    operations = _operations(openapi_document())
    taking = {
        key
        for key, operation in operations.items()
        if any(
            p["in"] == "query" and p["name"] == "selector" for p in operation.get("parameters", [])
        )
    }
    assert taking == {
        ("GET", "/api/v1/topics/{filter}/events"),
        ("GET", "/api/v1/queues/{queue}/messages"),
    }


def test_exercised_routes_exist() -> None:
    patterns = {(route.method, route.pattern) for route in http_api.all_routes()}
    assert set(EXERCISED) <= patterns


def test_the_suite_observed_every_exercised_status(request: pytest.FixtureRequest) -> None:
    """After the HTTP test modules ran in this session (a whole run, nothing deselected or
    failed), what they observed is exactly the EXERCISED table."""
    session = request.session
    index = session.items.index(request.node)
    before = {item.nodeid.split("::")[0] for item in session.items[:index]}
    ran_all = all(module in before for module in HTTP_TEST_MODULES)
    filtered = request.config.option.keyword or request.config.option.markexpr
    distributed = hasattr(request.config, "workerinput")  # pytest-xdist: tests split up
    if not ran_all or filtered or distributed or session.testsfailed:
        pytest.skip("needs a whole run of the HTTP test modules before this one")
    for key, statuses in OBSERVED.items():
        if key in EXERCISED:
            assert statuses <= EXERCISED[key], (key, statuses - EXERCISED[key])
    for key, statuses in EXERCISED.items():
        assert OBSERVED.get(key, set()) == statuses, (key, statuses - OBSERVED.get(key, set()))


def test_an_undocumented_route_or_status_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above bite: a new route, or a new answer seen by a test, without its
    description in openapi.py."""
    extra = http_api.Route("DELETE", "/api/v1/queues/{queue}", http_api.healthz, "Delete")
    monkeypatch.setattr(http_api, "ROUTES", (*http_api.all_routes(), extra))
    with pytest.raises(AssertionError, match="routes missing from openapi"):
        test_every_route_is_documented_and_nothing_else()
    monkeypatch.undo()
    before = {key: set(statuses) for key, statuses in OBSERVED.items()}
    try:
        with pytest.raises(AssertionError, match="does not declare"):
            record("POST", "/api/v1/queues/q", 418)
    finally:
        OBSERVED.clear()
        OBSERVED.update(before)
