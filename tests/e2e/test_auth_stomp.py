"""Authentication over STOMP with stomp.py (docs/security.md, "Authentication per
protocol"): CONNECT ``login``/``passcode`` good and bad, a JWT as the passcode,
anonymous clients refused, the single-step SASL headers (``sasl-mechanism``,
``sasl-response``), and SCRAM refused over STOMP (it needs a challenge)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, running_gateway
from tests.e2e.test_auth_mqtt import auth_config, jwt
from tests.stomp_client import Stomp, StompFailure


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, auth_config(tmp_path)) as gateway:
        yield gateway


async def _refused(client: Stomp, *args: object, **kwargs: object) -> str | None:
    with pytest.raises(StompFailure) as failure:
        await client.connect(*args, **kwargs)  # type: ignore[arg-type]
    await client.close()
    error = failure.value.error
    assert error is not None
    return error.get("message")


@pytest.mark.parametrize("version", ["1.0", "1.2"])
async def test_login_passcode(gw: Gateway, version: str) -> None:
    port = gw.port("stomp")
    with trio.fail_after(NET_TIMEOUT):
        consumer = Stomp(port, version)
        await consumer.connect("alice", "wonderland")
        producer = Stomp(port, version)
        await producer.connect("bob", "builder")
        await consumer.subscribe("/queue/auth", id="1")
        await producer.send("/queue/auth", "signed in")
        assert (await consumer.get()).body == b"signed in"
        await consumer.disconnect()
        await producer.disconnect()

        assert await _refused(Stomp(port, version), "alice", "wrong") == "authentication failed"
        assert await _refused(Stomp(port, version), "nobody", "x") == "authentication failed"
        assert await _refused(Stomp(port, version)) == "authentication failed"


async def test_jwt_passcode(gw: Gateway) -> None:
    port = gw.port("stomp")
    with trio.fail_after(NET_TIMEOUT):
        client = Stomp(port)
        await client.connect("carol", jwt("carol"))
        await client.disconnect()
        expired = Stomp(port)
        assert await _refused(expired, "carol", jwt("carol", ttl=-3600)) == "authentication failed"


async def test_sasl_headers(gw: Gateway) -> None:
    port = gw.port("stomp")

    def sasl(mechanism: str, response: bytes) -> dict[str, str]:
        return {"sasl-mechanism": mechanism, "sasl-response": base64.b64encode(response).decode()}

    with trio.fail_after(NET_TIMEOUT):
        client = Stomp(port)
        await client.connect(headers=sasl("PLAIN", b"\0alice\0wonderland"))
        await client.disconnect()
        wrong = Stomp(port)
        assert await _refused(wrong, headers=sasl("PLAIN", b"\0alice\0nope")) == (
            "authentication failed"
        )
        # SCRAM needs a challenge, which STOMP's one CONNECT/CONNECTED cannot carry.
        scram = Stomp(port)
        first = b"n,,n=alice,r=abcdefghijklmnop"
        assert await _refused(scram, headers=sasl("SCRAM-SHA-256", first)) == (
            "authentication failed"
        )
        garbage = Stomp(port)
        headers = {"sasl-mechanism": "PLAIN", "sasl-response": "not base64!"}
        assert await _refused(garbage, headers=headers) == "authentication failed"
