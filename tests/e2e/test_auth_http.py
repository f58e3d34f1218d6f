"""Authentication over HTTP with curl and paho over WebSocket (docs/security.md,
"Authentication per protocol"): ``Authorization: Basic`` and ``Bearer`` (HS256 JWT) good
and bad, 401 with ``WWW-Authenticate`` when refused, /healthz and /readyz open, and
WebSocket upgrades authenticated by their credentials or by the inner CONNECT."""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from gateway.app import Gateway
from gateway.codecs.mqtt import ReasonCode
from tests.conftest import NET_TIMEOUT, running_gateway
from tests.e2e.test_auth_mqtt import auth_config, jwt
from tests.listeners.test_http_wire import Reply
from tests.listeners.test_http_wire import curl as _curl
from tests.paho import Paho

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, auth_config(tmp_path)) as gateway:
        yield gateway


async def curl(port: int, method: str, target: str, *args: Any) -> Reply:
    # 401 is not among the statuses tests/listeners/test_openapi.py holds the document to.
    return await _curl(port, method, target, *args, check_recorded=False)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_basic_and_bearer(gw: Gateway) -> None:
    port = gw.port("http")
    target = "/api/v1/topics/auth/http"
    for headers in (basic("alice", "wonderland"), bearer(jwt("carol"))):
        reply = await curl(port, "POST", target, b"hi", headers)
        assert reply.status == 202, reply.body
    refused: list[dict[str, str] | None] = [
        basic("alice", "wrong"),
        basic("nobody", "wonderland"),
        bearer(jwt("carol", ttl=-3600)),
        bearer(jwt("carol", secret="y" * 40)),
        {"Authorization": "Digest whatever"},
        None,  # anonymous: anonymous = "deny"
    ]
    for headers in refused:
        reply = await curl(port, "POST", target, b"hi", headers)
        assert reply.status == 401, (headers, reply.body)
        assert reply.header("www-authenticate") == 'Basic realm="gateway", Bearer'
        assert reply.json()["error"] == "unauthorized"
    # curl's own -u works the same.
    reply = await curl(port, "POST", target, b"hi", None, "-u", "bob:builder")
    assert reply.status == 202


async def test_a_scripts_request_gets_no_basic_challenge(gw: Gateway) -> None:
    # The dashboard's requests: a Basic challenge would make the browser prompt over it.
    headers = {"X-Requested-With": "XMLHttpRequest"}
    reply = await curl(gw.port("http"), "POST", "/api/v1/topics/auth/http", b"hi", headers)
    assert reply.status == 401
    assert reply.header("www-authenticate") == 'Bearer realm="gateway"'


async def test_health_and_openapi_stay_open(gw: Gateway) -> None:
    port = gw.port("http")
    for target in ("/healthz", "/readyz", "/api/v1/openapi.json"):
        assert (await curl(port, "GET", target)).status == 200, target
    assert (await curl(port, "GET", "/api/v1/queues/jobs/messages")).status == 401


class WSPaho(Paho):
    def __init__(self, port: int, client_id: str, headers: dict[str, str] | None) -> None:
        super().__init__(port, client_id, protocol=paho.MQTTv5)
        self.client.transport = "websockets"
        self.client.ws_set_options(path="/mqtt", headers=headers)


async def test_websocket_upgrade_credentials(gw: Gateway) -> None:
    port = gw.port("http")
    with trio.fail_after(NET_TIMEOUT):
        # Credentials in the upgrade authenticate the WebSocket: CONNECT needs none.
        good = WSPaho(port, "ws-good", basic("alice", "wonderland"))
        assert (await good.connect()).value == 0
        await good.close()
        # Without them, the inner CONNECT authenticates (here: anonymous, refused).
        anonymous = WSPaho(port, "ws-anon", None)
        assert (await anonymous.connect()).value == ReasonCode.NOT_AUTHORIZED
        await anonymous.close()
        inner = WSPaho(port, "ws-inner", None)
        inner.client.username_pw_set("bob", "builder")
        assert (await inner.connect()).value == 0
        await inner.close()
    # Bad upgrade credentials: 401 before any WebSocket.
    headers: dict[str, Any] = {
        **basic("alice", "wrong"),
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Protocol": "mqtt",
    }
    reply = await curl(port, "GET", "/mqtt", None, headers)
    assert reply.status == 401
    assert reply.header("www-authenticate") == 'Basic realm="gateway", Bearer'
