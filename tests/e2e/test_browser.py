"""MQTT.js and stomp.js in headless Chromium talk to the gateway over WebSocket.

The test serves tests/e2e/browser/ (index.html, app.js and the two npm bundles, installed by
`make test` with `npm ci`) from a small loopback HTTP server, runs the gateway as a subprocess
with one `http` listener, and drives Debian's Chromium (/usr/bin/chromium) with Playwright's
sync API; Playwright never downloads a browser of its own here. MQTT.js (MQTT 5) connects to
`/mqtt`, stomp.js to `/stomp`, and a message crosses each way with its headers mapped as
docs/stomp.md and gateway/listeners/mqtt_mapping.py say: MQTT 5 user properties <-> STOMP
headers, content type <-> `content-type`, correlation data <-> `correlation-id`, QoS 1 <->
`persistent:true`, topic `a/b` <-> `/topic/a.b`.

The screenshot is saved under the test's tmp_path and copied to
tests/e2e/browser/last-screenshot.png (ignored by git) to look at.

This is a plain (not trio) test: Playwright's sync API runs its own event loop.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NET_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
BUNDLES = (
    BROWSER_DIR / "node_modules/mqtt/dist/mqtt.min.js",
    BROWSER_DIR / "node_modules/@stomp/stompjs/bundles/stomp.umd.min.js",
)
STABLE_SCREENSHOT = BROWSER_DIR / "last-screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: no QUIC, no background fetches, no component updates.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = NET_TIMEOUT * 1000
RUN_MAKE_TEST = "run `make test`, which installs it"


def _require_installed() -> Any:
    """Playwright's sync API; fails (never skips) when something `make test` installs is missing."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        pytest.fail(f"Playwright is not installed ({exc}): {RUN_MAKE_TEST} (the `test` extra)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: {RUN_MAKE_TEST} (Debian package chromium)")
    for bundle in BUNDLES:
        if not bundle.is_file():
            pytest.fail(f"{bundle} is missing: {RUN_MAKE_TEST} (npm ci in {BROWSER_DIR})")
    return sync_api


class Gateway:
    """`python -m gateway run -c CONFIG` as a subprocess; its JSON log lines read by a thread."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self._events.put(event)
        self._events.put(None)

    def wait_for(self, name: str) -> list[dict[str, Any]]:
        """The events up to and including the first ``name`` event."""
        seen: list[dict[str, Any]] = []
        while True:
            try:
                event = self._events.get(timeout=NET_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no {name} event in {NET_TIMEOUT} s; gateway log:\n{self.log()}")
            if event is None:
                pytest.fail(f"gateway exited before {name}; gateway log:\n{self.log()}")
            seen.append(event)
            if event.get("event") == name:
                return seen

    def log(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def stop(self) -> None:
        """SIGTERM, wait (kill after NET_TIMEOUT), then close the log pipe."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=NET_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        finally:
            self._reader.join(NET_TIMEOUT)
            assert self.process.stdout is not None
            self.process.stdout.close()


@contextlib.contextmanager
def running_gateway(tmp_path: Path) -> Iterator[tuple[Gateway, str]]:
    """A gateway with one `http` listener on an ephemeral loopback port: (gateway, host:port)."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "data"}"
drain_timeout = 2.0
log_format = "json"
log_level = "info"

[[listeners]]
protocol = "http"
name = "web"
bind = "127.0.0.1:0"
"""
    )
    gateway = Gateway(config)
    try:
        events = gateway.wait_for("gateway.started")
        bound = [e for e in events if e.get("event") == "listener.bound"]
        web = [e for e in bound if e.get("protocol") == "http"]
        assert len(web) == 1, f"one http listener expected, bound: {bound}"
        yield gateway, str(web[0]["address"])
    finally:
        gateway.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving_page() -> Iterator[str]:
    """tests/e2e/browser/ over HTTP on an ephemeral loopback port: the page's URL."""
    handler = functools.partial(_QuietHandler, directory=str(BROWSER_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(NET_TIMEOUT)


@contextlib.contextmanager
def browser_page(sync_api: Any, page_url: str, screenshot: Path) -> Iterator[tuple[Any, list[str]]]:
    """Chromium with the page loaded and both bundles checked: (page, console and page errors).

    A failure takes a screenshot on the way out (the test takes its own when it passes)."""
    messages: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: messages.append(f"console.{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            try:
                response = page.goto(page_url, wait_until="load")
                assert response is not None, page_url
                assert response.ok, f"{page_url}: {response.status}"
                loaded = page.evaluate("() => window.gw && window.gw.loaded()")
                assert loaded == {"mqtt": True, "stomp": True}, (loaded, messages)
                yield page, messages
            except BaseException:
                with contextlib.suppress(Exception):
                    take_screenshot(page, screenshot)
                raise
        finally:
            browser.close()


def take_screenshot(page: Any, path: Path) -> None:
    """The page as a PNG at ``path``, copied to STABLE_SCREENSHOT."""
    page.screenshot(path=str(path), full_page=True)
    shutil.copyfile(path, STABLE_SCREENSHOT)


def _wait(page: Any, sync_api: Any, expression: str, what: str, context: Callable[[], str]) -> None:
    try:
        page.wait_for_function(expression, timeout=TIMEOUT_MS)
    except sync_api.TimeoutError:
        events = page.evaluate("() => gw.state.events")
        pytest.fail(f"{what}: not within {NET_TIMEOUT} s; page events {events}\n{context()}")


@pytest.mark.slow
def test_mqttjs_and_stompjs_in_chromium_exchange_messages_with_headers(tmp_path: Path) -> None:
    sync_api = _require_installed()
    screenshot = tmp_path / "browser.png"
    with (
        running_gateway(tmp_path) as (gateway, address),
        serving_page() as page_url,
        browser_page(sync_api, page_url, screenshot) as (page, console),
    ):

        def context() -> str:
            return f"console: {console}\ngateway log:\n{gateway.log()}"

        def call(expression: str, *args: Any) -> Any:
            try:
                return page.evaluate(expression, list(args))
            except sync_api.Error as exc:
                events = page.evaluate("() => gw.state.events")
                pytest.fail(f"{expression}: {exc}\npage events {events}\n{context()}")

        connack = call(
            "([url, id, ms]) => gw.connectMqtt(url, id, ms)",
            f"ws://{address}/mqtt",
            "browser-mqttjs",
            TIMEOUT_MS,
        )
        assert connack["reasonCode"] == 0, connack
        connected = call(
            "([url, ms]) => gw.connectStomp(url, ms)", f"ws://{address}/stomp", TIMEOUT_MS
        )
        assert connected["version"] == "1.2", connected
        assert connected["server"].startswith("gateway/"), connected

        # MQTT.js (MQTT 5) -> stomp.js: user properties, content type and correlation data
        # arrive as STOMP headers; QoS 1 as persistent:true.
        call(
            "([dest, id, ms]) => gw.stompSubscribe(dest, id, ms)",
            "/topic/web.m2s",
            "m2s",
            TIMEOUT_MS,
        )
        call(
            "([t, p, q, u, c, d]) => gw.mqttPublish(t, p, q, u, c, d)",
            "web/m2s",
            '{"n": 1}',
            1,
            {"tenant": "acme", "trace-id": "t-1"},
            "application/json",
            "corr-9",
        )
        _wait(page, sync_api, "() => gw.state.stompMessages.length >= 1", "STOMP MESSAGE", context)
        [stomp_message] = page.evaluate("() => gw.state.stompMessages")
        headers = stomp_message["headers"]
        assert stomp_message["body"] == '{"n": 1}', stomp_message
        assert headers["destination"] == "/topic/web.m2s", headers
        assert headers["subscription"] == "m2s", headers
        assert headers["message-id"], headers
        assert headers["tenant"] == "acme", headers
        assert headers["trace-id"] == "t-1", headers
        assert headers["content-type"] == "application/json", headers
        assert headers["correlation-id"] == "corr-9", headers
        assert headers["persistent"] == "true", headers

        # stomp.js -> MQTT.js (MQTT 5): custom headers arrive as user properties, content-type
        # as the content type (text/* also as payload format indicator 1), persistent as QoS 1.
        granted = call("([t, q]) => gw.mqttSubscribe(t, q)", "web/s2m", 1)
        assert granted == [1], granted
        call(
            "([d, b, h]) => gw.stompSend(d, b, h)",
            "/topic/web.s2m",
            "hello mqtt",
            {
                "tenant": "acme",
                "trace-id": "t-2",
                "content-type": "text/plain",
                "correlation-id": "corr-7",
                "persistent": "true",
            },
        )
        _wait(page, sync_api, "() => gw.state.mqttMessages.length >= 1", "MQTT PUBLISH", context)
        [mqtt_message] = page.evaluate("() => gw.state.mqttMessages")
        assert mqtt_message["topic"] == "web/s2m", mqtt_message
        assert mqtt_message["payload"] == "hello mqtt", mqtt_message
        assert mqtt_message["qos"] == 1, mqtt_message
        user = [tuple(pair) for pair in mqtt_message["userProperties"]]
        assert ("tenant", "acme") in user, mqtt_message
        assert ("trace-id", "t-2") in user, mqtt_message
        assert mqtt_message["contentType"] == "text/plain", mqtt_message
        assert mqtt_message["payloadFormatIndicator"] in (1, True), mqtt_message
        assert mqtt_message["correlationData"] == "corr-7", mqtt_message

        take_screenshot(page, screenshot)
        call("() => gw.close()")
        assert not [m for m in console if m.startswith("pageerror")], console
    assert screenshot.stat().st_size > 0
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gateway.process.returncode == 0, gateway.log()
