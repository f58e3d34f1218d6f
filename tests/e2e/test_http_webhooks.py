"""Webhooks end to end: curl posts signed deliveries, MQTT and the pull API receive them.

A gateway with an MQTT and an HTTP listener on ephemeral loopback ports and four
``[[webhooks]]``: GitHub's scheme to a topic, Stripe's to a queue (its secret from
the environment), an unsigned one to a one-message queue that refuses more, and a
custom timestamped one.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import time
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.listeners.webhooks import github_signature, hmac_sha256, stripe_signature
from tests.conftest import NET_TIMEOUT, gateway_toml, listeners_toml, running_gateway
from tests.paho import Paho

GITHUB_SECRET = b"gh-secret-for-tests"
STRIPE_SECRET = b"whsec_test_secret"
CUSTOM_SECRET = b"custom-secret"
BODY = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'

CONFIG = """
[[queues]]
name = "payments"

[[queues]]
name = "tiny"
max_length = 1
overflow = "reject-publish"

[[webhooks]]
name = "github"
destination = "hooks/github"
preset = "github"
secret = "{github_secret}"
headers = {{ source = "github" }}

[[webhooks]]
name = "stripe"
destination = "$queue/payments"
preset = "stripe"
secret_env = "GATEWAY_TEST_STRIPE_SECRET"
tolerance = "5m"

[[webhooks]]
name = "open"
destination = "$queue/tiny"
preset = "none"

[[webhooks]]
name = "custom"
destination = "hooks/custom"
preset = "custom"
secret = "{custom_secret}"
signature_header = "X-Signature"
signature_format = "{{base64}}"
timestamp_header = "X-Timestamp"
tolerance = "30s"
idempotency_header = "X-Event-Id"
"""


@pytest.fixture
async def gw(
    nursery: trio.Nursery, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("GATEWAY_TEST_STRIPE_SECRET", STRIPE_SECRET.decode())
    text = gateway_toml(tmp_path) + listeners_toml("mqtt", "http")
    text += CONFIG.format(
        github_secret=GITHUB_SECRET.decode(), custom_secret=CUSTOM_SECRET.decode()
    )
    async with running_gateway(nursery, config_mod.loads(text, "webhooks.toml")) as gateway:
        yield gateway


async def curl(
    gw: Gateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with the real curl; the status and the decoded JSON body."""
    args = ["curl", "-sS", "--http1.1", "-X", method, "--max-time", str(NET_TIMEOUT)]
    args += ["-H", "Expect:", "-o", "-", "-w", "\n%{http_code}"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        args += ["--data-binary", "@-"]
    args.append(f"http://127.0.0.1:{gw.port('http')}{path}")
    with trio.fail_after(NET_TIMEOUT + 5):
        done = await trio.run_process(
            args, stdin=body or b"", capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()
    text, _, status = done.stdout.rpartition(b"\n")
    return int(status), json.loads(text) if text else None


async def subscriber(gw: Gateway, topic: str) -> Paho:
    sub = Paho(gw.port("mqtt"), "webhook-watcher", protocol=paho.MQTTv5)
    await sub.connect()
    await sub.subscribe(topic, qos=1)
    return sub


async def nothing_more(sub: Paho) -> None:
    with pytest.raises(queue.Empty):
        await sub.get(within=0.3)


def github_headers(body: bytes, delivery: str, secret: bytes = GITHUB_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": github_signature(secret, body),
    }


async def pull(gw: Gateway, name: str) -> list[dict[str, Any]]:
    status, body = await curl(gw, "GET", f"/api/v1/queues/{name}/messages?max=10")
    assert status == 200
    messages: list[dict[str, Any]] = body["messages"]
    if messages:
        ids = json.dumps({"ids": [item["id"] for item in messages]}).encode()
        assert (await curl(gw, "POST", f"/api/v1/queues/{name}/ack", ids))[0] == 200
    return messages


async def test_github_delivery_is_published_once_and_a_redelivery_is_harmless(
    gw: Gateway,
) -> None:
    with trio.fail_after(NET_TIMEOUT):
        sub = await subscriber(gw, "hooks/#")
        headers = {**github_headers(BODY, "d-1"), "X-Msg-Tenant": "acme"}
        status, first = await curl(gw, "POST", "/hooks/github", BODY, headers)
        assert (status, first["routed"]) == (202, 1)

        message = await sub.get()
        assert message.topic == "hooks/github"
        assert message.payload == BODY
        assert message.qos == 1
        props = message.properties
        assert props is not None
        assert props.ContentType == "application/json"
        assert props.PayloadFormatIndicator == 1
        assert props.UserProperty == [
            ("tenant", "acme"),
            ("source", "github"),
            ("webhook", "github"),
            ("idempotency-key", "d-1"),
        ]

        # GitHub's "Redeliver" sends the same delivery id: answered, not published again.
        status, again = await curl(gw, "POST", "/hooks/github", BODY, headers)
        assert (status, again) == (200, {"duplicate": True, "id": first["id"]})
        await nothing_more(sub)

        # Another delivery is another message.
        status, second = await curl(gw, "POST", "/hooks/github", BODY, github_headers(BODY, "d-2"))
        assert status == 202
        assert second["id"] != first["id"]
        assert (await sub.get()).payload == BODY
        await nothing_more(sub)
        await sub.close()


async def test_bad_or_missing_signature_is_401_and_nothing_is_published(gw: Gateway) -> None:
    wrong_secret = github_headers(BODY, "d-1", secret=b"not the secret")
    missing = {k: v for k, v in github_headers(BODY, "d-2").items() if "Signature" not in k}
    tampered = github_headers(BODY, "d-3")
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        sub = await subscriber(gw, "hooks/#")
        for headers, body in ((wrong_secret, BODY), (missing, BODY), (tampered, BODY + b" ")):
            status, answer = await curl(gw, "POST", "/hooks/github", body, headers)
            assert (status, answer["error"]) == (401, "bad_signature")
        await nothing_more(sub)
        # A rejected delivery id is not remembered: the genuine delivery still goes through.
        status, _ = await curl(gw, "POST", "/hooks/github", BODY, github_headers(BODY, "d-1"))
        assert status == 202
        assert (await sub.get()).payload == BODY
        await sub.close()
    refused = [entry for entry in logs if entry["event"] == "http.refused"]
    assert [entry["error"] for entry in refused] == ["bad_signature"] * 3
    logged = repr(logs)
    assert GITHUB_SECRET.decode() not in logged
    assert wrong_secret["X-Hub-Signature-256"] not in logged
    assert tampered["X-Hub-Signature-256"] not in logged


async def test_stripe_delivery_to_a_queue_stale_and_future_timestamps(gw: Gateway) -> None:
    def headers(stamp: int, event: str = "evt_1") -> dict[str, str]:
        return {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": stripe_signature(STRIPE_SECRET, BODY, stamp),
            "Idempotency-Key": event,
        }

    now = int(time.time())
    with trio.fail_after(NET_TIMEOUT):
        for stamp in (now - 600, now + 600):
            status, answer = await curl(gw, "POST", "/hooks/stripe", BODY, headers(stamp))
            assert (status, answer["error"]) == (401, "stale_timestamp")
        assert await pull(gw, "payments") == []

        status, first = await curl(gw, "POST", "/hooks/stripe", BODY, headers(now - 10))
        assert (status, first["routed"]) == (202, 1)
        # Stripe retries with a fresh timestamp and signature: still the same event.
        status, again = await curl(gw, "POST", "/hooks/stripe", BODY, headers(now))
        assert (status, again) == (200, {"duplicate": True, "id": first["id"]})

        messages = await pull(gw, "payments")
        assert len(messages) == 1
        (message,) = messages
        assert message["message_id"] == first["id"]
        assert message["destination"] == "$queue/payments"
        assert message["payload"] == BODY.decode()
        assert message["content_type"] == "application/json; charset=utf-8"
        assert message["headers"] == {"webhook": "stripe", "idempotency-key": "evt_1"}


async def test_custom_timestamped_scheme(gw: Gateway) -> None:
    def headers(stamp: int, event: str) -> dict[str, str]:
        digest = hmac_sha256(CUSTOM_SECRET, f"{stamp}.".encode() + BODY)
        return {
            "X-Signature": base64.b64encode(digest).decode(),
            "X-Timestamp": str(stamp),
            "X-Event-Id": event,
        }

    now = int(time.time())
    with trio.fail_after(NET_TIMEOUT):
        sub = await subscriber(gw, "hooks/custom")
        status, answer = await curl(gw, "POST", "/hooks/custom", BODY, headers(now - 60, "e1"))
        assert (status, answer["error"]) == (401, "stale_timestamp")
        replayed = {**headers(now - 60, "e1"), "X-Timestamp": str(now)}
        status, answer = await curl(gw, "POST", "/hooks/custom", BODY, replayed)
        assert (status, answer["error"]) == (401, "bad_signature")
        status, _ = await curl(gw, "POST", "/hooks/custom", BODY, headers(now, "e1"))
        assert status == 202
        message = await sub.get()
        assert message.payload == BODY
        assert message.properties is not None
        assert ("idempotency-key", "e1") in message.properties.UserProperty
        await nothing_more(sub)
        await sub.close()


async def test_unknown_webhook_404_wrong_method_405_bad_header_400(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        status, answer = await curl(gw, "POST", "/hooks/gitlab", BODY)
        assert (status, answer["error"]) == (404, "unknown_webhook")
        status, answer = await curl(gw, "GET", "/hooks/github")
        assert (status, answer["error"]) == (405, "method_not_allowed")
        status, answer = await curl(gw, "POST", "/hooks/open", BODY, {"X-Msg-Priority": "11"})
        assert (status, answer["error"]) == (400, "bad_header")
        status, answer = await curl(gw, "POST", "/hooks/open", BODY, {"Idempotency-Key": "k" * 256})
        assert (status, answer["error"]) == (400, "bad_header")
        assert await pull(gw, "tiny") == []


async def test_a_refused_delivery_is_503_and_its_key_is_not_remembered(gw: Gateway) -> None:
    """The queue holds one message and refuses more: the sender's retry must get through."""
    k1, k2 = {"Idempotency-Key": "k1"}, {"Idempotency-Key": "k2"}
    with trio.fail_after(NET_TIMEOUT):
        status, _ = await curl(gw, "POST", "/hooks/open", b"one", k1)
        assert status == 202
        for _ in range(2):
            status, answer = await curl(gw, "POST", "/hooks/open", b"two", k2)
            assert (status, answer["error"]) == (503, "refused")
        assert [item["payload"] for item in await pull(gw, "tiny")] == ["one"]
        status, _ = await curl(gw, "POST", "/hooks/open", b"two", k2)
        assert status == 202
        status, answer = await curl(gw, "POST", "/hooks/open", b"two", k2)
        assert (status, answer["duplicate"]) == (200, True)
        # Without a key nothing is deduplicated.
        assert [item["payload"] for item in await pull(gw, "tiny")] == ["two"]
        assert (await curl(gw, "POST", "/hooks/open", b"three"))[0] == 202
        assert [item["payload"] for item in await pull(gw, "tiny")] == ["three"]
        assert (await curl(gw, "POST", "/hooks/open", b"three"))[0] == 202
