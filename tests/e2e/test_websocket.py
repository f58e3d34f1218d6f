"""MQTT and STOMP over WebSocket with the clients users have: paho-mqtt's websockets
transport and stomp.py's WebSocket connection (websocket-client underneath).

Each test runs one gateway with an http listener (WebSocket on /mqtt, /stomp and /ws) and
plain TCP mqtt and stomp listeners, and checks that WebSocket clients and TCP clients
exchange messages both ways with their properties and headers (as in
test_cross_protocol.py), QoS 1 acknowledgements, and 1 MB messages intact.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
import pytest
import stomp
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, gateway_toml, listeners_toml, running_gateway
from tests.paho import Paho, properties_dict
from tests.stomp_client import WAIT, Stomp, _Collector

V311, V5 = paho.MQTTv311, paho.MQTTv5
MB = 1024 * 1024


def ws_config(tmp_path: os.PathLike[str]) -> config_mod.Config:
    """An http listener plus mqtt and stomp listeners, all on ephemeral loopback ports."""
    text = gateway_toml(tmp_path) + listeners_toml("http", "mqtt", "stomp")
    return config_mod.loads(text, "test.toml")


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: os.PathLike[str]) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, ws_config(tmp_path)) as gateway:
        yield gateway


class WSPaho(Paho):
    """paho-mqtt with transport="websockets" (it always offers the subprotocol `mqtt`)."""

    def __init__(self, port: int, client_id: str, *, path: str = "/mqtt", **kwargs: Any):
        super().__init__(port, client_id, **kwargs)
        self.client.transport = "websockets"
        self.client.ws_set_options(path=path)


class WSStomp(Stomp):
    """stomp.py's WSStompConnection (STOMP 1.2), offering ``subprotocol`` if given;
    ``binary`` sends binary WebSocket messages instead of text."""

    def __init__(
        self,
        port: int,
        *,
        path: str = "/stomp",
        subprotocol: str | None = "v12.stomp",
        binary: bool = False,
    ) -> None:
        super().__init__(port, "1.2")
        header = {"Sec-WebSocket-Protocol": subprotocol} if subprotocol else None
        self.conn = stomp.WSStompConnection(
            [("127.0.0.1", port)],
            ws_path=path,
            header=header,
            binary_mode=binary,
            auto_decode=False,
            reconnect_attempts_max=1,
            try_loopback_connect=False,
            timeout=WAIT,
            vhost=None,
        )
        self.conn.set_listener("collector", _Collector(self))


async def _connected(client: Paho | Stomp) -> Any:
    with trio.fail_after(NET_TIMEOUT):
        return await client.connect()


async def _close(*clients: Paho | Stomp) -> None:
    with trio.fail_after(NET_TIMEOUT):
        for client in clients:
            await client.close()


# -- MQTT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/mqtt", "/ws"])
@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])
async def test_paho_over_websocket_exchanges_with_tcp_clients(
    gw: Gateway, path: str, version: int
) -> None:
    """QoS 1 both ways between a WebSocket and a TCP paho client, acknowledged; a TCP STOMP
    subscriber sees the WebSocket client's message too."""
    ws = WSPaho(gw.port("http"), f"ws-{version}-{path[1:]}", path=path, protocol=version)
    tcp = Paho(gw.port("mqtt"), f"tcp-{version}-{path[1:]}", protocol=version)
    watcher = Stomp(gw.port("stomp"))
    assert (await _connected(ws)).value == 0
    await _connected(tcp)
    await _connected(watcher)
    with trio.fail_after(NET_TIMEOUT):
        assert [int(code.value) for code in await ws.subscribe("to-ws/#", qos=1)] == [1]
        await tcp.subscribe("to-tcp/#", qos=1)
        await watcher.subscribe("/topic/to-tcp.#", id="w")

        assert await tcp.publish("to-ws/a", b"from tcp", qos=1) == 0
        got = await ws.get()
        assert (got.topic, got.payload, got.qos) == ("to-ws/a", b"from tcp", 1)

        assert await ws.publish("to-tcp/b", b"from ws", qos=1) == 0
        got = await tcp.get()
        assert (got.topic, got.payload, got.qos) == ("to-tcp/b", b"from ws", 1)
        seen = await watcher.get()
        assert (seen.get("destination"), seen.body) == ("/topic/to-tcp.b", b"from ws")
        assert seen.get("persistent") == "true"
    await _close(ws, tcp, watcher)


async def test_mqtt5_properties_survive_websocket_both_ways(gw: Gateway) -> None:
    props = {
        "UserProperty": [("tenant", "acme"), ("trace-id", "t-1")],
        "ContentType": "application/json",
        "CorrelationData": b"corr-9",
        "ResponseTopic": "replies/x",
        "PayloadFormatIndicator": 1,
        "MessageExpiryInterval": 300,
    }
    ws = WSPaho(gw.port("http"), "ws-props", protocol=V5)
    tcp = Paho(gw.port("mqtt"), "tcp-props", protocol=V5)
    watcher = Stomp(gw.port("stomp"))
    for client in (ws, tcp, watcher):
        await _connected(client)
    with trio.fail_after(NET_TIMEOUT):
        await ws.subscribe("p/ws", qos=1)
        await tcp.subscribe("p/tcp", qos=1)
        await watcher.subscribe("/topic/p.tcp", id="w")
        for sender, receiver, topic in ((tcp, ws, "p/ws"), (ws, tcp, "p/tcp")):
            assert await sender.publish(topic, b'{"n": 1}', qos=1, properties=props) == 0
            got = await receiver.get()
            assert got.payload == b'{"n": 1}'
            received = properties_dict(got.properties)
            for name in ("UserProperty", "ContentType", "CorrelationData", "ResponseTopic"):
                assert received[name] == props[name], name
            assert received["PayloadFormatIndicator"] == 1
            assert 0 < received["MessageExpiryInterval"] <= 300
        seen = await watcher.get()
        assert seen.get("tenant") == "acme"
        assert seen.get("trace-id") == "t-1"
        assert seen.get("content-type") == "application/json"
        assert seen.get("correlation-id") == "corr-9"
        assert seen.get("reply-to") == "/topic/replies.x"
    await _close(ws, tcp, watcher)


async def test_one_megabyte_mqtt_message_over_websocket_arrives_intact(gw: Gateway) -> None:
    payload = random.Random(7).randbytes(MB)
    sender = WSPaho(gw.port("http"), "big-sender", path="/ws", protocol=V5)
    ws_sub = WSPaho(gw.port("http"), "big-ws", protocol=V311)
    tcp_sub = Paho(gw.port("mqtt"), "big-tcp", protocol=V5)
    stomp_sub = WSStomp(gw.port("http"))
    for client in (sender, ws_sub, tcp_sub, stomp_sub):
        await _connected(client)
    with trio.fail_after(NET_TIMEOUT):
        await ws_sub.subscribe("big", qos=1)
        await tcp_sub.subscribe("big", qos=1)
        await stomp_sub.subscribe("/topic/big", id="big")
        assert await sender.publish("big", payload, qos=1) == 0
        for sub in (ws_sub, tcp_sub):
            got = await sub.get()
            assert got.payload == payload
        # Not UTF-8: a binary WebSocket message to the STOMP client.
        assert (await stomp_sub.get()).body == payload
    await _close(sender, ws_sub, tcp_sub, stomp_sub)


async def test_paho_over_websocket_hears_why_the_server_shuts_down(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    gw = Gateway(ws_config(tmp_path))
    with trio.fail_after(NET_TIMEOUT):
        await nursery.start(gw.run)
    client = WSPaho(gw.port("http"), "leaving", protocol=V5)
    await _connected(client)
    gw.stop()
    with trio.fail_after(NET_TIMEOUT):
        await gw.stopped.wait()
        assert await trio.to_thread.run_sync(client.disconnected.wait, WAIT)
    assert client.disconnect_reason.value == 0x8B  # Server shutting down
    await _close(client)


# -- STOMP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "subprotocol"),
    [("/stomp", None), ("/stomp", "v12.stomp"), ("/ws", "v12.stomp"), ("/ws", "v11.stomp")],
)
async def test_stomp_over_websocket_exchanges_with_tcp_clients(
    gw: Gateway, path: str, subprotocol: str | None
) -> None:
    """Headers both ways between stomp.py over WebSocket and TCP MQTT 5 / STOMP clients;
    a queue message acknowledged over WebSocket."""
    ws = WSStomp(gw.port("http"), path=path, subprotocol=subprotocol)
    mqtt5 = Paho(gw.port("mqtt"), f"mqtt-{path[1:]}-{subprotocol}", protocol=V5)
    tcp = Stomp(gw.port("stomp"))
    connected = await _connected(ws)
    assert connected.headers["version"] == "1.2"
    await _connected(mqtt5)
    await _connected(tcp)
    with trio.fail_after(NET_TIMEOUT):
        await ws.subscribe("/topic/to-ws.#", id="t")
        await ws.subscribe("/queue/work", id="q", ack="client-individual")
        await mqtt5.subscribe("to-mqtt/#", qos=1)

        await mqtt5.publish(
            "to-ws/a",
            b"from mqtt",
            qos=1,
            properties={"UserProperty": [("tenant", "acme")], "ContentType": "text/plain"},
        )
        got = await ws.get()
        assert (got.get("destination"), got.body) == ("/topic/to-ws.a", b"from mqtt")
        assert (got.get("tenant"), got.get("content-type")) == ("acme", "text/plain")

        receipt = await ws.send("/topic/to-mqtt.b", "from ws", {"tenant": "acme", "n": "2"})
        assert receipt is not None
        got_mqtt = await mqtt5.get()
        assert (got_mqtt.topic, got_mqtt.payload) == ("to-mqtt/b", b"from ws")
        user = properties_dict(got_mqtt.properties)["UserProperty"]
        assert ("tenant", "acme") in user
        assert ("n", "2") in user

        await tcp.send("/queue/work", "job", {"persistent": "true", "job-id": "j1"})
        job = await ws.get()
        assert (job.body, job.get("job-id")) == (b"job", "j1")
        await ws.ack(job)
    await _close(ws, mqtt5, tcp)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_one_megabyte_stomp_message_over_websocket_arrives_intact(
    gw: Gateway, binary: bool
) -> None:
    """A 1 MB body between two stomp.py WebSocket clients and to a TCP client: text (sent in
    text messages) and binary (sent in binary messages, as text would not be UTF-8)."""
    rng = random.Random(11)
    body = (
        rng.randbytes(MB)
        if binary
        else "".join(rng.choice("abcdefé€") for _ in range(MB // 2)).encode()
    )
    sender = WSStomp(gw.port("http"), path="/ws", binary=binary)
    ws_sub = WSStomp(gw.port("http"))
    tcp_sub = Stomp(gw.port("stomp"))
    mqtt_sub = WSPaho(gw.port("http"), "big-stomp-mqtt", protocol=V5)
    for client in (sender, ws_sub, tcp_sub, mqtt_sub):
        await _connected(client)
    with trio.fail_after(NET_TIMEOUT):
        await ws_sub.subscribe("/topic/big", id="1")
        await tcp_sub.subscribe("/topic/big", id="1")
        await mqtt_sub.subscribe("big", qos=1)
        await sender.send("/topic/big", body, {"content-type": "application/octet-stream"})
        for sub in (ws_sub, tcp_sub):
            got = await sub.get()
            assert got.body == body
            assert got.get("content-length") == str(len(body))
        assert (await mqtt_sub.get()).payload == body
    await _close(sender, ws_sub, tcp_sub, mqtt_sub)
