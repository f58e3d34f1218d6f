"""The dashboard's files on the HTTP listener (gateway/listeners/http_dashboard.py).

- /dashboard, /dashboard/ and /dashboard/index.html answer the page; /dashboard/FILE the
  other known files, each with its content type, ``Cache-Control: no-cache`` and the strict
  Content-Security-Policy; any other name is 404, and so is everything with
  ``[gateway] dashboard = false``.
- The files are served without credentials even where anonymous access is denied: they hold
  nothing secret, and the admin API the page reads authenticates every request.
- The page obeys its own policy and works offline: no inline script or style, no event
  handler attributes, nothing loaded from another origin; every file it references is served
  and shipped as package data.
- The OpenAPI document declares exactly the statuses these tests observe.

The browser test (tests/e2e/test_dashboard.py) runs the page against a live admin API.
"""

from __future__ import annotations

import os
import re
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
import trio

from gateway.app import Gateway
from gateway.listeners import http_dashboard
from gateway.listeners.http_dashboard import ASSETS, CONTENT_SECURITY_POLICY
from tests.conftest import NET_TIMEOUT, make_http_config, running_gateway
from tests.e2e.test_auth_mqtt import auth_config
from tests.listeners.test_http_wire import Reply, curl, declared_statuses

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "gateway" / "ops" / "dashboard"

# What these tests make each dashboard route answer (and so what openapi.py declares).
EXERCISED: dict[tuple[str, str], set[int]] = {
    ("GET", "/dashboard"): {200, 404},
    ("GET", "/dashboard/{file}"): {200, 404},
}


async def get(port: int, target: str) -> Reply:
    """GET ``target``; its status must be one the OpenAPI document declares for its route."""
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(port, "GET", target, check_recorded=False)
    pattern = "/dashboard" if target.rstrip("/") == "/dashboard" else "/dashboard/{file}"
    assert reply.status in declared_statuses("GET", pattern), (target, reply.status)
    return reply


def packaged(name: str) -> bytes:
    return resources.files("gateway.ops").joinpath("dashboard", name).read_bytes()


def assert_dashboard_headers(reply: Reply) -> None:
    assert reply.header("cache-control") == "no-cache"
    assert reply.header("content-security-policy") == CONTENT_SECURITY_POLICY
    assert reply.header("x-content-type-options") == "nosniff"


@pytest.mark.parametrize("target", ["/dashboard", "/dashboard/", "/dashboard/index.html"])
async def test_the_page_is_served_as_html(http_gateway: Gateway, target: str) -> None:
    reply = await get(http_gateway.port("http"), target)
    assert reply.status == 200
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert_dashboard_headers(reply)
    assert reply.body == packaged("index.html")
    assert b"<title>gateway dashboard</title>" in reply.body


@pytest.mark.parametrize("name", sorted(ASSETS))
async def test_each_file_has_its_content_type(http_gateway: Gateway, name: str) -> None:
    reply = await get(http_gateway.port("http"), f"/dashboard/{name}")
    assert reply.status == 200
    assert reply.header("content-type") == ASSETS[name]
    assert_dashboard_headers(reply)
    assert reply.body == packaged(name)
    assert reply.body


def test_the_policy_is_strict() -> None:
    directives = dict(
        item.strip().split(" ", 1) for item in CONTENT_SECURITY_POLICY.split(";") if item.strip()
    )
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "img-src", "connect-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "*" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    "target",
    [
        "/dashboard/nothing.js",
        "/dashboard/INDEX.HTML",
        "/dashboard/..%2Fhttp_api.py",
        "/dashboard/..%2F..%2Fpyproject.toml",
        "/dashboard/__init__.py",
    ],
)
async def test_unknown_files_are_404(http_gateway: Gateway, target: str) -> None:
    reply = await get(http_gateway.port("http"), target)
    assert reply.status == 404
    assert reply.json()["error"] == "not_found"
    assert reply.header("content-type") == "application/json"


async def test_deeper_paths_and_other_methods_are_refused(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        deeper = await curl(port, "GET", "/dashboard/a/dashboard.js", check_recorded=False)
        posted = await curl(port, "POST", "/dashboard", b"", check_recorded=False)
    assert deeper.status == 404
    assert posted.status == 405
    assert posted.header("allow") == "GET"


async def test_dashboard_false_turns_it_off(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = make_http_config(tmp_path, gateway={"dashboard": False})
    async with running_gateway(nursery, config) as gw:
        for target in ("/dashboard", "/dashboard/", *(f"/dashboard/{name}" for name in ASSETS)):
            reply = await get(gw.port("http"), target)
            assert reply.status == 404, target
            assert reply.json()["error"] == "not_found"
            assert "dashboard = false" in reply.json()["message"]
        health = await curl(gw.port("http"), "GET", "/healthz")
        assert health.status == 200


async def test_files_need_no_credentials(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Anonymous access denied: the page still loads (the admin API it reads asks)."""
    async with running_gateway(nursery, auth_config(tmp_path, anonymous="deny")) as gw:
        for target in ("/dashboard", *(f"/dashboard/{name}" for name in ASSETS)):
            reply = await get(gw.port("http"), target)
            assert reply.status == 200, target


class _Page(HTMLParser):
    """The tags and attributes of index.html, and whether a script or style is inline."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open in ("script", "style") and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:40]}")


def test_the_page_obeys_its_own_policy() -> None:
    page = _Page()
    page.feed(packaged("index.html").decode())
    assert page.inline == []
    assert not [tag for tag, _ in page.tags if tag == "style"]
    referenced = set()
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"<{tag}> has a style attribute"
        handlers = [name for name in attrs if name.startswith("on")]
        assert handlers == [], f"<{tag}> has event handler attributes {handlers}"
        if tag == "script":
            assert attrs.get("src"), "a script without src"
        for name in ("src", "href"):
            url = attrs.get(name)
            if url:
                assert url.startswith("/dashboard/"), f"<{tag} {name}={url!r}>"
                referenced.add(url.removeprefix("/dashboard/"))
    assert referenced == set(ASSETS) - {"index.html"}


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_nothing_is_loaded_from_elsewhere(name: str) -> None:
    """No CDN, web font or remote image: the dashboard works on a closed network."""
    text = packaged(name).decode().replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text) == []
    assert "@import" not in text
    assert "url(" not in text


def test_the_files_are_shipped() -> None:
    """Every file of gateway/ops/dashboard/ is served, and the package data includes them."""
    assert {path.name for path in DASHBOARD_DIR.iterdir()} == set(ASSETS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "ops/dashboard/*" in project["tool"]["setuptools"]["package-data"]["gateway"]


@pytest.mark.parametrize(("method", "pattern"), sorted(EXERCISED))
def test_declared_statuses_are_the_exercised_ones(method: str, pattern: str) -> None:
    assert declared_statuses(method, pattern) == EXERCISED[(method, pattern)]
    assert any(
        route.method == method and route.pattern == pattern
        for route in http_dashboard.DASHBOARD_ROUTES
    )
