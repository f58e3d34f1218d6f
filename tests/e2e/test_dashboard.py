"""The dashboard (/dashboard) in headless Chromium shows what the admin API reports.

The gateway runs as a subprocess with MQTT, STOMP and HTTP listeners on ephemeral loopback
ports and a users file: ``ops`` is in the admin group, ``viewer`` is not; anonymous clients
may connect from loopback but are not administrators. Debian's Chromium (/usr/bin/chromium)
is driven with Playwright's sync API, launched as tests/e2e/test_browser.py does (Playwright
never downloads a browser here).

1. Without credentials the page loads (its files are open) and the admin API answers 401:
   the page says so and offers a sign-in form; signed in as ``viewer`` it is told 403;
   signed in as ``ops`` it goes live.
2. With the admin's credentials sent by the browser (as it does once its password prompt
   was answered), while paho publishes bursts to the queue ``dash`` (which nothing consumes)
   and to a topic with a subscriber, and a STOMP client is connected: the page shows the
   queue's depth, the messages in and out and the connection count that the test reads from
   the admin API at the same moment (through the browser's own connections: the test's
   would be one more), recognises the dead-letter queue, and shows the rates. With more
   topic traffic flowing, the page at 1280x900 is saved (``UPDATE_SCREENSHOT=1``: to
   docs/dashboard.png, shown in docs/dashboard.md). Purge empties the queue, in the page
   and in the API.

This is a plain (not trio) test: Playwright's sync API runs its own event loop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.auth.users import Users, save_users, with_password
from tests.conftest import NET_TIMEOUT, listeners_toml, upstream_reachable
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, Gateway

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
ADMIN = ("ops", "correct horse battery")
VIEWER = ("viewer", "just looking")
QUEUE = "dash"
QUEUED = 24  # messages published to $queue/dash
TOPIC_BURSTS = (4, 9, 14, 10, 6, 12, 8, 5)  # messages published to dash/ticks, and delivered
VIEWPORT = {"width": 1280, "height": 900}


RABBIT = 5672


def _require_installed() -> Any:
    """Playwright's sync API; fails (never skips) when what `make test` installs is missing."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        pytest.fail(f"Playwright is not installed ({exc}): run `make test` (the `test` extra)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (Debian package chromium)")
    return sync_api


@contextlib.contextmanager
def running_gateway(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """The gateway with its three listeners: (gateway, {protocol: host:port})."""
    upstream_queue = f"gwtest-dashboard-{uuid.uuid4().hex[:8]}"
    users = Users()
    users = with_password(users, ADMIN[0], ADMIN[1], groups=("admin",))
    users = with_password(users, VIEWER[0], VIEWER[1], groups=("users",))
    save_users(tmp_path / "users.toml", users)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "data"}"
drain_timeout = 2.0
log_format = "json"
log_level = "info"
sys_interval = 0

[auth]
users_file = "{tmp_path / "users.toml"}"
anonymous = "loopback"

{listeners_toml("mqtt", "stomp", "http", http="web")}
[[queues]]
name = "{QUEUE}"

[[queues]]
name = "orders"
max_deliveries = 1
dead_letter = "orders.dlq"

[[queues]]
name = "orders.dlq"

# A bridge to the real RabbitMQ, for its row, its counters and its outbox chart; the
# upstream queue deletes itself a minute after the test.
[[bridges]]
name = "rabbit"
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:{RABBIT}/"
outbound = [{{ match = "dash/#", to = "queue:{upstream_queue}" }}]

[bridges.amqp]
queues = [{{ name = "{upstream_queue}", durable = false, arguments = {{ "x-expires" = 60000 }} }}]
"""
    )
    gateway = Gateway(config)
    try:
        events = gateway.wait_for("gateway.started")
        bound = {
            str(e["protocol"]): str(e["address"])
            for e in events
            if e.get("event") == "listener.bound"
        }
        assert set(bound) == {"mqtt", "stomp", "http"}, bound
        yield gateway, bound
    finally:
        gateway.stop()


def admin_get(address: str, path: str, user: tuple[str, str] = ADMIN) -> Any:
    """GET /api/v1/admin/PATH as ``user``: the decoded JSON body."""
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        f"http://{address}/api/v1/admin/{path}",
        headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=NET_TIMEOUT) as response:
        return json.load(response)


def wait_until(condition: Callable[[], Any], what: str, context: Callable[[], str]) -> Any:
    """Poll ``condition`` until it returns something true; fail after NET_TIMEOUT."""
    deadline = time.monotonic() + NET_TIMEOUT
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {NET_TIMEOUT} s\n{context()}")
        time.sleep(0.1)


@contextlib.contextmanager
def mqtt_client(address: str, client_id: str) -> Iterator[paho.Client]:
    host, port = address.rsplit(":", 1)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(host, int(port))
    client.loop_start()
    try:
        deadline = time.monotonic() + NET_TIMEOUT
        while not client.is_connected():
            assert time.monotonic() < deadline, "paho did not connect"
            time.sleep(0.01)
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def stomp_client(address: str) -> Iterator[socket.socket]:
    """A STOMP 1.2 connection (CONNECT answered CONNECTED), held open."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=NET_TIMEOUT)
    try:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        reply = b""
        while b"\0" not in reply:
            chunk = sock.recv(4096)
            assert chunk, f"STOMP connection closed: {reply!r}"
            reply += chunk
        assert reply.startswith(b"CONNECTED\n"), reply
        yield sock
    finally:
        with contextlib.suppress(OSError):
            sock.sendall(b"DISCONNECT\n\n\0")
        sock.close()


@contextlib.contextmanager
def browser(sync_api: Any) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def dashboard_page(
    chromium: Any, url: str, messages: list[str], credentials: tuple[str, str] | None = None
) -> Iterator[Any]:
    """A new browser context (with ``credentials`` for the browser's password prompt) with
    the dashboard loaded; console messages and page errors go to ``messages``."""
    options: dict[str, Any] = {"viewport": VIEWPORT, "locale": "en-US"}
    if credentials is not None:
        # Sent with every request, as the page does once signed in (its requests are
        # marked as a script's, so the API puts up no Basic challenge for the browser).
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        options["extra_http_headers"] = {"Authorization": f"Basic {token}"}
    context = chromium.new_context(**options)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("console", lambda m: messages.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before Purge
        response = page.goto(url, wait_until="load")
        assert response is not None, url
        assert response.ok, f"{url}: {response.status}"
        yield page
    finally:
        context.close()


def number(page: Any, selector: str) -> int | None:
    """The number shown by ``selector``: its data-value, which its text must say too (both
    read at once: the page may update between two reads)."""
    shown = page.evaluate(
        """(selector) => {
            const element = document.querySelector(selector);
            return element && [element.textContent, element.dataset.value || ""];
        }""",
        selector,
    )
    if not shown or not shown[1]:
        return None
    text, raw = shown
    assert text.replace(",", "") == raw, (selector, text, raw)
    return int(raw)


@pytest.mark.slow
@pytest.mark.upstream
def test_dashboard_shows_the_admin_api_and_purges(tmp_path: Path) -> None:
    upstream_reachable("127.0.0.1", RABBIT)
    sync_api = _require_installed()
    messages: list[str] = []
    with running_gateway(tmp_path) as (gateway, address), browser(sync_api) as chromium:
        http = address["http"]
        url = f"http://{http}/dashboard?interval=1"

        def context() -> str:
            return f"console: {messages}\ngateway log:\n{gateway.log()}"

        # 1. No credentials: 401, the page says so; a user outside the admin group: 403;
        # the admin: live.
        with dashboard_page(chromium, url, messages) as page:
            banner = page.locator("#banner")
            banner.wait_for(state="visible")
            assert page.locator("#status").get_attribute("data-state") == "auth", context()
            assert "sign in" in banner.inner_text().lower()
            page.fill("#login-user", VIEWER[0])
            page.fill("#login-password", VIEWER[1])
            page.click("#login button[type=submit]")
            page.wait_for_function(
                "() => document.querySelector('#banner-text').textContent.includes('not as an')"
            )
            page.fill("#login-user", ADMIN[0])
            page.fill("#login-password", ADMIN[1])
            page.click("#login button[type=submit]")
            page.wait_for_selector("#status[data-state=live]")
            assert banner.is_hidden()
            assert page.locator("#version").inner_text().startswith("v")

        # 2. Traffic, then the admin's browser.
        with (
            mqtt_client(address["mqtt"], "dash-publisher") as publisher,
            mqtt_client(address["mqtt"], "dash-listener") as listener,
            stomp_client(address["stomp"]),
        ):
            received: list[bytes | bytearray] = []
            subscribed = threading.Event()
            listener.on_message = lambda _c, _u, m: received.append(m.payload)
            listener.on_subscribe = lambda *_: subscribed.set()
            listener.subscribe("dash/ticks", qos=1)
            assert subscribed.wait(NET_TIMEOUT), context()
            with dashboard_page(chromium, url, messages, credentials=ADMIN) as page:
                row = f'[data-queue="{QUEUE}"]'
                page.wait_for_selector("#status[data-state=live]")
                # Traffic in bursts while the page watches, so that the rates move.
                sent = 0
                for burst in TOPIC_BURSTS:
                    for _ in range(QUEUED // len(TOPIC_BURSTS)):
                        publisher.publish(f"$queue/{QUEUE}", b"job", qos=1).wait_for_publish(
                            NET_TIMEOUT
                        )
                    for _ in range(burst):
                        publisher.publish("dash/ticks", b"tick", qos=1).wait_for_publish(
                            NET_TIMEOUT
                        )
                    sent += burst
                    time.sleep(0.6)
                wait_until(lambda: len(received) == sent, "topic deliveries", context)
                page.wait_for_selector(f"{row} .depth")

                # The page and the API agree (the page polls; wait until it caught up).
                def agree() -> dict[str, int] | None:
                    # The overview through the browser's own connections: a connection of
                    # the test's would be one more than the page saw.
                    overview = page.evaluate(
                        "() => fetch('/api/v1/admin/overview').then((r) => r.json())"
                    )
                    queues = {q["name"]: q for q in admin_get(http, "queues")["queues"]}
                    api = {
                        "depth": queues[QUEUE]["depth"],
                        "in": overview["messages_in"],
                        "out": overview["messages_out"],
                        "connections": overview["connections"]["total"],
                    }
                    shown = {
                        "depth": number(page, f"{row} .depth"),
                        "in": number(page, "#messages-in-total"),
                        "out": number(page, "#messages-out-total"),
                        "connections": number(page, "#connections-total"),
                    }
                    return api if shown == api else None

                api = wait_until(agree, "the page showing the API's numbers", context)
                assert api["depth"] == QUEUED, api
                assert api["in"] >= QUEUED + sum(TOPIC_BURSTS), api
                assert api["out"] >= sum(TOPIC_BURSTS), api
                # Two MQTT clients, one STOMP, and the browser's own HTTP connection(s).
                by_protocol = admin_get(http, "overview")["connections"]["by_protocol"]
                assert by_protocol.get("mqtt") == 2, by_protocol
                assert by_protocol.get("stomp") == 1, by_protocol
                clients = [
                    c
                    for c in admin_get(http, "connections")["connections"]
                    if c["protocol"] != "http"
                ]
                assert len(clients) == 3, clients
                for client in clients:
                    shown = page.locator(f'[data-connection="{client["id"]}"]')
                    assert shown.locator(".protocol").inner_text() == client["protocol"]
                assert page.locator("#connections td.client-id", has_text="dash-publisher").count()
                # The DLQ is recognised; an ordinary queue has no Move back.
                assert page.locator('[data-queue="orders.dlq"] button.move').is_visible()
                assert page.locator(f"{row} button.move").is_hidden()
                assert page.locator(f"{row} .consumers").inner_text() == "0"
                # The bridge: its row says what the API says once its outbox is drained.
                bridge = '[data-bridge="rabbit"]'

                def bridged() -> Any:
                    (api_bridge,) = admin_get(http, "bridges")["bridges"]
                    shown = {
                        "state": page.locator(f"{bridge} .state").inner_text(),
                        "confirmed": number(page, f"{bridge} .confirmed"),
                    }
                    wanted = {"state": api_bridge["state"], "confirmed": api_bridge["confirmed"]}
                    done = api_bridge["outbox_depth"] == 0 and api_bridge["in_flight"] == 0
                    return wanted if done and shown == wanted else None

                seen = wait_until(bridged, "the bridge row showing the API's numbers", context)
                assert seen["state"] == "up", seen
                assert seen["confirmed"] == sum(TOPIC_BURSTS), seen
                with trickle(publisher, "dash/ticks"):  # live rates in the screenshot
                    take_screenshot(page, tmp_path)
                rates = page.evaluate(
                    """() => ['in', 'out'].map(
                        (way) => document.getElementById(`messages-${way}-rate`).dataset.value
                    )"""
                )
                assert all(float(rate) >= 0 for rate in rates), rates

                # Purge: the page and the API both say 0.
                page.click(f"{row} button.purge")
                page.wait_for_function(
                    f"() => document.querySelector('{row} .depth').dataset.value === '0'"
                )
                queues = {q["name"]: q for q in admin_get(http, "queues")["queues"]}
                assert queues[QUEUE]["depth"] == 0, queues[QUEUE]
                assert f"Purged {QUEUED} messages" in page.locator("#toast").inner_text()
                assert not [m for m in messages if m.startswith("pageerror")], messages
                errors = [m for m in messages if m.startswith("console.error")]
                # The first page's 401 and 403 are logged by Chromium as failed loads.
                assert all(" 401 " in m or " 403 " in m for m in errors), errors
    assert gateway.process.returncode == 0, gateway.log()


@contextlib.contextmanager
def trickle(client: paho.Client, topic: str) -> Iterator[None]:
    """Publish to ``topic`` at a rate that rises and falls, from a thread, until exit."""
    stop = threading.Event()

    def run() -> None:
        step = 0
        while not stop.is_set():
            for _ in range(6 + round(5 * math.sin(step / 4))):
                client.publish(topic, b"tick", qos=0)
            step += 1
            stop.wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(NET_TIMEOUT)


def take_screenshot(page: Any, tmp_path: Path) -> Path:
    """The page at 1280x900, once the charts have some history, as a PNG under ``tmp_path``;
    also as docs/dashboard.png when that is missing or UPDATE_SCREENSHOT=1 is set (so that a
    test run does not rewrite a file under version control each time)."""
    page.wait_for_function("() => dashboard.state.history.length >= 18")
    path = tmp_path / "dashboard.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        shutil.copyfile(path, SCREENSHOT)
    return path
