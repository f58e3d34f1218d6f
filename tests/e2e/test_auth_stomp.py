"""Authentication over STOMP with stomp.py (docs/security.md, "Authentication per
protocol"): CONNECT ``login``/``passcode`` good and bad, a JWT as the passcode,
anonymous clients refused, the SASL headers (``sasl-mechanism``, ``sasl-response``),
and SCRAM over STOMP, whose challenge travels in an ERROR ``sasl-continue`` and is
answered on a new connection (``sasl-id``)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from scramp import ScramClient

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
    # The ERROR may arrive before the client waits for CONNECTED: read it either way.
    error = failure.value.error or await client.error()
    await client.close()
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
        garbage = Stomp(port)
        headers = {"sasl-mechanism": "PLAIN", "sasl-response": "not base64!"}
        assert await _refused(garbage, headers=headers) == "authentication failed"


async def _scram(port: int, password: str) -> tuple[ScramClient, dict[str, str]]:
    """SCRAM-SHA-256 over STOMP: CONNECT with the client-first message, ERROR
    sasl-continue with the challenge, CONNECT again (new connection) with sasl-id and
    the client-final message: returns the SCRAM client and the second CONNECT's headers."""
    scram = ScramClient(["SCRAM-SHA-256"], "alice", password)
    first = Stomp(port)
    headers = {
        "sasl-mechanism": "SCRAM-SHA-256",
        "sasl-response": base64.b64encode(scram.get_client_first().encode()).decode(),
    }
    with pytest.raises(StompFailure) as failure:
        await first.connect(headers=headers)
    error = failure.value.error or await first.error()
    await first.close()
    assert error.get("message") == "sasl-continue"
    scram.set_server_first(base64.b64decode(error.get("sasl-challenge") or "").decode())
    return scram, {
        "sasl-mechanism": "SCRAM-SHA-256",
        "sasl-id": error.get("sasl-id") or "",
        "sasl-response": base64.b64encode(scram.get_client_final().encode()).decode(),
    }


async def test_scram_sha_256_over_stomp(gw: Gateway) -> None:
    port = gw.port("stomp")
    with trio.fail_after(NET_TIMEOUT):
        scram, headers = await _scram(port, "wonderland")
        client = Stomp(port)
        connected = await client.connect(headers=headers)
        # The server proves it knows the key too: scramp checks its final message.
        scram.set_server_final(base64.b64decode(connected.get("sasl-final") or "").decode())
        await client.subscribe("/queue/scram", id="s")
        await client.send("/queue/scram", "over scram")
        assert (await client.get()).body == b"over scram"
        await client.disconnect()

        _, wrong = await _scram(port, "not-her-password")
        assert await _refused(Stomp(port), headers=wrong) == "authentication failed"
        # An id is good once: replaying it is refused.
        _, once = await _scram(port, "wonderland")
        replay = Stomp(port)
        await replay.connect(headers=once)
        await replay.disconnect()
        assert await _refused(Stomp(port), headers=once) == "authentication failed"
