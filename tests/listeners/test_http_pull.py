"""Queue pull over HTTP: long polls, ack, release, the visibility timeout, dead-lettering, and
HTTP pullers sharing a queue with a STOMP consumer.

The gateway's ticker returns timed-out messages once a second, so visibility timeouts here
are fractions of a second and the waits allow for one tick.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, make_http_config, running_gateway
from tests.listeners.test_http_wire import Reply, curl, wait_until
from tests.stomp_client import Stomp


async def publish(port: int, queue: str, body: bytes, **headers: str) -> None:
    reply = await curl(port, "POST", f"/api/v1/queues/{queue}", body, headers)
    assert reply.status == 202, reply


async def pull(port: int, queue: str, query: str = "") -> list[dict[str, Any]]:
    reply = await curl(port, "GET", f"/api/v1/queues/{queue}/messages{query}")
    assert reply.status == 200, reply
    messages: list[dict[str, Any]] = reply.json()["messages"]
    return messages


async def settle(port: int, queue: str, verb: str, ids: list[str]) -> dict[str, Any]:
    body = json.dumps({"ids": ids}).encode()
    reply = await curl(
        port,
        "POST",
        f"/api/v1/queues/{queue}/{verb}",
        body,
        {"Content-Type": "application/json"},
    )
    assert reply.status == 200, reply
    result: dict[str, Any] = reply.json()
    return result


async def test_long_poll_waits_for_a_message(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        # Nothing there and no wait: an empty answer at once.
        assert await pull(port, "lp") == []
        got: list[list[dict[str, Any]]] = []
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                got.append(await pull(port, "lp", "?wait=10&max=5"))

            started = trio.current_time()
            nursery.start_soon(poll)
            await trio.sleep(0.3)
            assert not got  # still waiting
            await publish(port, "lp", b"late", **{"Content-Type": "text/plain"})
        assert trio.current_time() - started < 5
        (message,) = got[0]
        assert message["payload"] == "late"
        assert message["destination"] == "$queue/lp"
        assert message["content_type"] == "text/plain"
        assert message["redelivered"] is False
        assert message["delivery_count"] == 1
        assert message["id"]
        # A poll that times out answers an empty list after its wait.
        started = trio.current_time()
        assert await pull(port, "lp", "?wait=0.3") == []
        assert trio.current_time() - started >= 0.3


async def test_pull_up_to_max_in_order_and_ack_removes(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        for i in range(5):
            await publish(port, "batchq", str(i).encode())
        first = await pull(port, "batchq", "?max=3")
        assert [m["payload"] for m in first] == ["0", "1", "2"]
        rest = await pull(port, "batchq", "?max=10")
        assert [m["payload"] for m in rest] == ["3", "4"]
        result = await settle(port, "batchq", "ack", [m["id"] for m in first + rest])
        assert result == {"acked": 5, "unknown": []}
        assert http_gateway.broker.queue_stats("batchq").depth == 0
        # Acked: gone for good, even after the visibility timeout; acking again is unknown.
        await trio.sleep(1.2)
        assert await pull(port, "batchq") == []
        again = await settle(port, "batchq", "ack", [first[0]["id"], "no-such-id"])
        assert again == {"acked": 0, "unknown": [first[0]["id"], "no-such-id"]}


async def test_unacked_message_returns_after_the_visibility_timeout(
    http_gateway: Gateway,
) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        await publish(port, "vis", b"again")
        (first,) = await pull(port, "vis", "?visibility=0.2")
        # Invisible to the next pull until it times out.
        assert await pull(port, "vis") == []
        (second,) = await pull(port, "vis", "?wait=3")
        assert second["message_id"] == first["message_id"]
        assert second["id"] != first["id"]
        assert second["redelivered"] is True
        assert second["delivery_count"] == 2
        # The first delivery id timed out: acking it is unknown, the new one works.
        result = await settle(port, "vis", "ack", [first["id"], second["id"]])
        assert result == {"acked": 1, "unknown": [first["id"]]}


async def test_release_returns_a_message_at_once(http_gateway: Gateway) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        await publish(port, "rel", b"back")
        (first,) = await pull(port, "rel", "?visibility=300")
        result = await settle(port, "rel", "release", [first["id"], "bogus"])
        assert result == {"released": 1, "unknown": ["bogus"]}
        (second,) = await pull(port, "rel")
        assert second["payload"] == "back"
        assert second["redelivered"] is True
        assert second["delivery_count"] == 2
        assert (await settle(port, "rel", "ack", [second["id"]]))["acked"] == 1


async def test_ack_on_a_queue_never_pulled_reports_every_id_unknown(
    http_gateway: Gateway,
) -> None:
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        result = await settle(port, "never", "ack", ["a", "b"])
        assert result == {"acked": 0, "unknown": ["a", "b"]}
        result = await settle(port, "never", "release", ["c"])
        assert result == {"released": 0, "unknown": ["c"]}


async def test_max_deliveries_dead_letters_pulled_messages(http_gateway: Gateway) -> None:
    """Queue "jobs" (tests/conftest.py HTTP_QUEUES) allows two deliveries, then "jobs.dlq"."""
    port = http_gateway.port("http")
    with trio.fail_after(NET_TIMEOUT):
        await publish(port, "jobs", b"poison", **{"X-Msg-Attempt": "x"})
        (one,) = await pull(port, "jobs", "?visibility=0.1")
        assert one["delivery_count"] == 1
        (two,) = await pull(port, "jobs", "?wait=3&visibility=0.1")
        assert two["delivery_count"] == 2
        # Not acked a second time: dead-lettered, not delivered again.
        dead = await pull(port, "jobs.dlq", "?wait=3")
        assert [m["payload"] for m in dead] == ["poison"]
        assert dead[0]["headers"]["attempt"] == "x"
        assert await pull(port, "jobs") == []
        # Releasing past max_deliveries dead-letters too.
        await publish(port, "jobs", b"released")
        (one,) = await pull(port, "jobs")
        await settle(port, "jobs", "release", [one["id"]])
        (two,) = await pull(port, "jobs")
        assert two["delivery_count"] == 2
        await settle(port, "jobs", "release", [two["id"]])
        assert [m["payload"] for m in await pull(port, "jobs.dlq", "?wait=3")] == ["released"]


async def test_http_pullers_share_a_queue_with_a_stomp_consumer(
    http_gateway: Gateway,
) -> None:
    port = http_gateway.port("http")
    stomp = Stomp(http_gateway.port("stomp"))
    with trio.fail_after(NET_TIMEOUT):
        await stomp.connect()
        try:
            await stomp.subscribe("/queue/shared", ack="client-individual")
            got: list[dict[str, Any]] = []
            async with trio.open_nursery() as nursery:

                async def poll() -> None:
                    got.extend(await pull(port, "shared", "?wait=5&max=10"))

                nursery.start_soon(poll)
                service = http_gateway.http
                await wait_until(
                    lambda: "shared" in service.pulls and service.pulls["shared"].writable()
                )
                for i in range(4):
                    await publish(port, "shared", str(i).encode())
            # Each message went to one consumer: the waiting poll took its share.
            assert got
            via_stomp = await stomp.get_many(4 - len(got))
            assert sorted([m["payload"] for m in got] + [m.text for m in via_stomp]) == [
                "0",
                "1",
                "2",
                "3",
            ]
            assert not stomp.pending()
            # The STOMP consumer goes away without acknowledging: HTTP pullers get its share.
            await stomp.close()
            back = await pull(port, "shared", "?wait=3&max=10")
            assert sorted(m["payload"] for m in back) == sorted(m.text for m in via_stomp)
            assert all(m["redelivered"] for m in back)
        finally:
            await stomp.close()


@pytest.mark.parametrize(
    "query",
    ["?max=0", "?max=101", "?max=x", "?wait=-1", "?wait=21", "?visibility=0", "?visibility=a"],
)
async def test_bad_pull_parameters_are_400(http_gateway: Gateway, query: str) -> None:
    with trio.fail_after(NET_TIMEOUT):
        reply = await curl(http_gateway.port("http"), "GET", f"/api/v1/queues/q/messages{query}")
        assert (reply.status, reply.error) == (400, "bad_parameter"), query


@pytest.mark.parametrize("body", [b"", b"{}", b'{"ids": "a"}', b"[1, 2]", b"not json"])
async def test_bad_ack_body_is_400(http_gateway: Gateway, body: bytes) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for verb in ("ack", "release"):
            reply: Reply = await curl(
                http_gateway.port("http"), "POST", f"/api/v1/queues/q/{verb}", body
            )
            assert (reply.status, reply.error) == (400, "bad_json"), (verb, body)


async def test_bad_and_unknown_queue_names(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = make_http_config(tmp_path, gateway={"auto_create_queues": False})
    async with running_gateway(nursery, config) as gw:
        port = gw.port("http")
        with trio.fail_after(NET_TIMEOUT):
            reply = await curl(port, "GET", "/api/v1/queues/nope/messages")
            assert (reply.status, reply.error) == (404, "unknown_queue")
            assert "nope" not in gw.broker.queues
            # A configured queue exists without auto-creation.
            assert await pull(port, "jobs") == []
            reply = await curl(port, "GET", "/api/v1/queues/%24sys/messages")
            assert (reply.status, reply.error) == (400, "bad_destination")


async def test_idle_pull_consumers_are_ended_and_the_queue_keeps_its_messages(
    http_gateway: Gateway,
) -> None:
    """One pull consumer exists per queue and selector used; once nothing is handed out
    and nobody pulled for a minute it ends, so a selector used once does not stay
    attached to the queue. A later pull makes a new one."""
    port = http_gateway.port("http")
    service = http_gateway.http
    with trio.fail_after(NET_TIMEOUT):
        assert await pull(port, "idle", "?selector=colour%20%3D%20%27red%27") == []
        [held] = await _pull_one(port)
        assert len(service.pulls) == 2
        now = trio.current_time()
        service.tick(now + 30)  # not idle for long enough yet
        assert len(service.pulls) == 2
        service.tick(now + 61)
        # The selector's consumer is gone; the plain one still has a message out.
        assert list(service.pulls) == ["idle"]
        assert not any(
            client_id.startswith("$http/pull/idle?") for client_id in http_gateway.broker.sessions
        )
        await settle(port, "idle", "ack", [held["id"]])
        service.tick(now + 200)
        assert service.pulls == {}
        await publish(port, "idle", b"later")
        assert [m["payload"] for m in await pull(port, "idle")] == ["later"]


async def _pull_one(port: int) -> list[dict[str, Any]]:
    await publish(port, "idle", b"first")
    return await pull(port, "idle", "?visibility=600")  # still out after the ticks below
