"""Limits end to end (docs/security.md, "Limits"): a connection flood from one address
is capped, connections per second per address are capped, authentication brute force
is slowed, a publisher over its rate gets the protocol's refusal or is slowed down, and
subscriptions past the maximum are refused; every refusal is counted."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho
import trio

from gateway import config as config_mod
from gateway.codecs import mqtt
from gateway.codecs.mqtt import ReasonCode
from gateway.listeners.limits import (
    AUTH_DELAYED,
    CONNECTION_RATE_PER_IP,
    MAX_CONNECTIONS_PER_IP,
    MAX_SUBSCRIPTIONS,
    MESSAGE_RATE,
    RATE_THROTTLED,
)
from tests.conftest import NET_TIMEOUT, gateway_toml, listener_port, listeners_toml, running_gateway
from tests.e2e.test_auth_http import curl
from tests.e2e.test_auth_mqtt import auth_config
from tests.paho import Paho
from tests.rawmqtt import RawClient
from tests.stomp_client import RawStomp

V5 = paho.MQTTv5


def limits_config(tmp_path: os.PathLike[str], **limits: object) -> config_mod.Config:
    """An MQTT and a STOMP listener (named "mqtt" and "stomp") with the same limits."""
    keys = "".join(f"{key} = {value!r}\n" for key, value in limits.items())
    text = gateway_toml(tmp_path, durability="memory", sys_interval=0)
    text += listeners_toml("mqtt") + keys + listeners_toml("stomp") + keys
    return config_mod.loads(text, "test.toml")


async def try_connect(port: int, client_id: str, **fields: Any) -> RawClient | None:
    """A connected raw MQTT client, or None if the server closed the connection."""
    client = await RawClient.open(port)
    try:
        await client.send(mqtt.Connect(client_id=client_id, **fields))
        ack = await client.receive()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        ack = None
    if ack is None:
        await client.aclose()
        return None
    assert isinstance(ack, mqtt.ConnAck), ack
    assert ack.return_code == 0, ack
    return client


async def test_connection_flood_from_one_ip_is_capped(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = limits_config(tmp_path, max_connections_per_ip=5)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "mqtt")
        with trio.fail_after(NET_TIMEOUT):
            streams = [await RawClient.open(port) for _ in range(12)]
            admitted: list[RawClient] = []
            for i, client in enumerate(streams):
                try:
                    await client.send(mqtt.Connect(client_id=f"flood-{i}"))
                    ack = await client.receive()
                except trio.BrokenResourceError:
                    ack = None
                if ack is None:
                    await client.aclose()
                else:
                    admitted.append(client)
            assert len(admitted) == 5
            assert gw.broker.stats.limited[MAX_CONNECTIONS_PER_IP] == 7
            # One leaves: the address may connect once more.
            await admitted.pop().aclose()
            again = None
            while again is None:
                again = await try_connect(port, "again")
                if again is None:
                    await trio.sleep(0.05)
            admitted.append(again)
            assert await try_connect(port, "one-too-many") is None
            for client in admitted:
                await client.aclose()


async def test_connection_rate_per_ip(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> None:
    config = limits_config(tmp_path, connection_rate_per_ip=0.5, connection_burst_per_ip=3)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "mqtt")
        with trio.fail_after(NET_TIMEOUT):
            outcomes = []
            for i in range(6):
                client = await try_connect(port, f"rate-{i}")
                outcomes.append(client is not None)
                if client is not None:
                    await client.aclose()
            assert outcomes == [True, True, True, False, False, False]
            assert gw.broker.stats.limited[CONNECTION_RATE_PER_IP] == 3
            # The STOMP listener counts its own connections.
            stomp = await RawStomp.open(listener_port(gw, "stomp"))
            assert (await stomp.connect()).command == "CONNECTED"
            await stomp.aclose()


async def test_authentication_brute_force_is_slowed(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    """Each CONNECT refused for its authentication counts against the address; past
    auth_failures_allowed, every further attempt waits twice as long as the one before
    for its answer."""
    config = limits_config(
        tmp_path, auth_failures_allowed=2, auth_failure_delay=0.2, auth_failure_max_delay=1.0
    )
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "mqtt")
        with trio.fail_after(NET_TIMEOUT * 2):
            waits = []
            bad = mqtt.Properties(authentication_method="NO-SUCH-MECHANISM")
            for i in range(6):
                client = await RawClient.open(port)
                started = trio.current_time()
                await client.send(
                    mqtt.Connect(client_id=f"guess-{i}", protocol_level=5, properties=bad)
                )
                ack = await client.receive()
                waits.append(trio.current_time() - started)
                assert isinstance(ack, mqtt.ConnAck)
                assert ack.return_code >= 0x80
                await client.aclose()
            assert max(waits[:2]) < 0.15
            for wait, expected in zip(waits[2:], (0.2, 0.4, 0.8, 1.0), strict=True):
                assert expected - 0.02 <= wait < expected + 0.5, waits
            assert gw.broker.stats.limited[AUTH_DELAYED] == 4
            # Any attempt from the address waits, until the window has passed.
            started = trio.current_time()
            ok = await try_connect(port, "honest")
            assert ok is not None
            assert trio.current_time() - started >= 0.98
            await ok.aclose()


async def test_rate_limited_mqtt5_publisher_gets_quota_exceeded(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = limits_config(tmp_path, max_message_rate=5.0)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "mqtt")
        with trio.fail_after(NET_TIMEOUT):
            pub = Paho(port, "fast", protocol=V5)
            await pub.connect()
            reasons = [await pub.publish("r/1", b"x", qos=1) for _ in range(20)]
            refused = reasons.count(ReasonCode.QUOTA_EXCEEDED)
            assert refused >= 10, reasons
            assert set(reasons) <= {0, ReasonCode.NO_MATCHING_SUBSCRIBERS, 0x97}
            assert reasons[0] != ReasonCode.QUOTA_EXCEEDED
            assert gw.broker.stats.limited[MESSAGE_RATE] == refused
            await pub.close()


async def test_mqtt311_publisher_over_the_rate_is_slowed_down(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    """No negative acknowledgement in 3.1.1 (nor any for QoS 0): the gateway stops
    reading the connection until it is back within max_message_rate."""
    config = limits_config(tmp_path, max_message_rate=10.0)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "mqtt")
        with trio.fail_after(NET_TIMEOUT):
            sub = Paho(port, "sub")
            await sub.connect()
            await sub.subscribe("slow/#")
            client = await try_connect(port, "burst", protocol_level=4)
            assert client is not None
            started = trio.current_time()
            await client.send(*(mqtt.Publish(topic="slow/t", payload=b"%d" % i) for i in range(30)))
            await trio.sleep(0.05)
            await client.send(mqtt.PingReq())
            assert isinstance(await client.receive(), mqtt.PingResp)
            # 30 messages with a burst of 10 at 10 a second: about two seconds.
            assert trio.current_time() - started >= 1.7
            got = [(await sub.get()).payload for _ in range(30)]
            assert got == [b"%d" % i for i in range(30)]  # slowed, not dropped
            assert gw.broker.stats.limited[RATE_THROTTLED] >= 1
            await client.aclose()
            await sub.close()


async def test_stomp_sender_over_the_rate_is_slowed_down(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    config = limits_config(tmp_path, max_message_rate=10.0)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "stomp")
        with trio.fail_after(NET_TIMEOUT):
            stomp = await RawStomp.open(port)
            assert (await stomp.connect()).command == "CONNECTED"
            started = trio.current_time()
            send = b"SEND\ndestination:/topic/slow\n\nx\x00"
            await stomp.send(send * 30)
            await trio.sleep(0.05)
            await stomp.send(b"SEND\ndestination:/topic/slow\nreceipt:r\n\nx\x00")
            receipt = await stomp.frame()
            assert receipt.command == "RECEIPT"
            assert trio.current_time() - started >= 1.7
            assert gw.broker.stats.limited[RATE_THROTTLED] >= 1
            assert gw.broker.stats.published == 31
            await stomp.aclose()


async def test_max_subscriptions(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> None:
    config = limits_config(tmp_path, max_subscriptions=2)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "mqtt")
        with trio.fail_after(NET_TIMEOUT):
            v5 = Paho(port, "subs-5", protocol=V5)
            await v5.connect()
            codes = [await v5.subscribe(topic, qos=1) for topic in ("a", "b", "c")]
            assert [[getattr(c, "value", c) for c in got] for got in codes] == [[1], [1], [0x97]]
            await v5.close()
            v3 = Paho(port, "subs-3")
            await v3.connect()
            codes = [await v3.subscribe(topic, qos=1) for topic in ("a", "b", "c")]
            assert [[getattr(c, "value", c) for c in got] for got in codes] == [[1], [1], [0x80]]
            await v3.close()
            stomp = await RawStomp.open(listener_port(gw, "stomp"))
            assert (await stomp.connect()).command == "CONNECTED"
            for i in range(3):
                await stomp.send(f"SUBSCRIBE\nid:{i}\ndestination:/topic/t{i}\n\n\x00".encode())
            error = await stomp.frame()
            assert error.command == "ERROR"
            assert error.get("message") == "too many subscriptions"
            assert await stomp.closed()
            await stomp.aclose()
            assert gw.broker.stats.limited[MAX_SUBSCRIPTIONS] == 3


async def test_password_guessing_is_slowed_on_stomp_and_mqtt(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Wrong passwords (a users file) over STOMP and MQTT 3.1.1: the listener's throttle
    delays each attempt from the address once it is past auth_failures_allowed."""
    base = auth_config(tmp_path)
    throttled = tuple(
        msgspec.structs.replace(
            listener, auth_failures_allowed=1, auth_failure_delay=0.3, auth_failure_max_delay=1.0
        )
        for listener in base.listeners
    )
    config = msgspec.structs.replace(base, listeners=throttled)
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT * 2):
            waits = []
            for _ in range(4):
                stomp = await RawStomp.open(listener_port(gw, "stomp"))
                started = trio.current_time()
                answer = await stomp.connect(login="alice", passcode="guess")
                waits.append(trio.current_time() - started)
                assert answer.command == "ERROR"
                assert answer.get("message") == "authentication failed"
                await stomp.aclose()
            assert waits[0] < 0.25
            for wait, expected in zip(waits[1:], (0.3, 0.6, 1.0), strict=True):
                assert expected - 0.02 <= wait < expected + 0.5, waits
            # The MQTT listener keeps its own count.
            mqtt_waits = []
            for _ in range(3):
                client = await RawClient.open(listener_port(gw, "mqtt"))
                started = trio.current_time()
                await client.send(
                    mqtt.Connect(client_id="c", protocol_level=4, username="bob", password=b"x")
                )
                ack = await client.receive()
                mqtt_waits.append(trio.current_time() - started)
                assert isinstance(ack, mqtt.ConnAck)
                assert ack.return_code == mqtt.ConnectReturnCode.BAD_USER_NAME_OR_PASSWORD
                await client.aclose()
            assert mqtt_waits[0] < 0.25
            assert mqtt_waits[1] >= 0.28
            assert mqtt_waits[2] >= 0.58
            assert gw.broker.stats.limited[AUTH_DELAYED] == 5


async def test_http_credential_guessing_is_slowed(nursery: trio.Nursery, tmp_path: Path) -> None:
    """/api/ requests whose credentials are refused (401) count against the address;
    past auth_failures_allowed, each request with credentials waits before its answer."""
    base = auth_config(tmp_path)
    throttled = tuple(
        msgspec.structs.replace(
            listener, auth_failures_allowed=1, auth_failure_delay=0.3, auth_failure_max_delay=1.0
        )
        for listener in base.listeners
    )
    config = msgspec.structs.replace(base, listeners=throttled)
    async with running_gateway(nursery, config) as gw:
        port = listener_port(gw, "http")
        wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:guess").decode()}
        waits = []
        for _ in range(3):
            started = trio.current_time()
            reply = await curl(port, "POST", "/api/v1/topics/limits/http", b"x", wrong)
            waits.append(trio.current_time() - started)
            assert reply.status == 401
        assert waits[1] >= 0.28
        assert waits[2] >= 0.58
        assert gw.broker.stats.limited[AUTH_DELAYED] == 2
