"""The MQTT listener over real sockets: bad input, timeouts, isolation between clients."""

from __future__ import annotations

from pathlib import Path

import trio
from structlog.testing import capture_logs

from gateway.app import Gateway
from gateway.codecs import mqtt
from tests.conftest import NET_TIMEOUT, make_config
from tests.rawmqtt import RawClient


async def _start(nursery: trio.Nursery, tmp_path: Path, **listener: object) -> Gateway:
    gw = Gateway(make_config(tmp_path, **listener))
    await nursery.start(gw.run)
    return gw


async def test_malformed_bytes_close_only_that_connection(gateway: Gateway) -> None:
    port = gateway.port("mqtt")
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        sub = await RawClient.open(port)
        await sub.connect("bystander")
        await sub.send(mqtt.Subscribe(packet_id=1, subscriptions=(("news/#", 0),)))
        assert isinstance(await sub.receive(), mqtt.SubAck)

        bad = await RawClient.open(port)
        await bad.connect("vandal")
        # A PUBLISH whose topic length runs past the packet's end.
        await bad.stream.send_all(b"\x30\x05\x00\x09abc")
        assert await bad.receive_until_closed() == []

        pub = await RawClient.open(port)
        await pub.connect("publisher")
        await pub.send(mqtt.Publish(topic="news/today", payload=b"still here"))
        got = await sub.receive()
        assert isinstance(got, mqtt.Publish)
        assert (got.topic, got.payload) == ("news/today", b"still here")
        for client in (sub, bad, pub):
            await client.aclose()
    errors = [e for e in logs if e["event"] == "mqtt.protocol_error"]
    assert len(errors) == 1
    assert errors[0]["client_id"] == "vandal"
    assert errors[0]["reason_code"] == mqtt.ReasonCode.MALFORMED_PACKET


async def test_garbage_before_connect_is_logged_and_closed(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await RawClient.open(gateway.port("mqtt"))
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await client.receive_until_closed() == []
        await client.aclose()
    assert [e["connected"] for e in logs if e["event"] == "mqtt.protocol_error"] == [False]


async def test_unsupported_protocol_level_gets_connack_1(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await RawClient.open(gateway.port("mqtt"))
        # A CONNECT for protocol level 9: 3.1.1 answers with return code 1, then closes.
        body = b"\x00\x04MQTT\x09\x02\x00\x3c\x00\x01x"
        await client.stream.send_all(b"\x10" + bytes([len(body)]) + body)
        assert await client.receive_until_closed() == [
            mqtt.ConnAck(return_code=mqtt.ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)
        ]
        await client.aclose()


async def test_second_connect_closes_the_connection(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await RawClient.open(gateway.port("mqtt"))
        await client.connect("twice")
        await client.stream.send_all(mqtt.encode_packet(mqtt.Connect(client_id="twice")))
        assert await client.receive_until_closed() == []
        await client.aclose()


async def test_empty_client_id_with_persistent_session_is_rejected(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await RawClient.open(gateway.port("mqtt"))
        ack = await client.connect("", clean_start=False)
        assert ack.return_code == mqtt.ConnectReturnCode.IDENTIFIER_REJECTED
        assert await client.receive_until_closed() == []
        await client.aclose()


async def test_client_that_never_connects_is_closed_after_the_deadline(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gw = await _start(nursery, tmp_path, connect_timeout=0.3)
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await RawClient.open(gw.port("mqtt"))
        assert await client.receive_until_closed() == []
        await client.aclose()
    assert any(e["event"] == "mqtt.connect.timeout" for e in logs)
    gw.stop()


async def test_silent_client_is_closed_after_one_and_a_half_keep_alives(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await RawClient.open(gateway.port("mqtt"))
        await client.connect("sleepy", keep_alive=1)
        start = trio.current_time()
        assert await client.receive_until_closed() == []
        assert trio.current_time() - start >= 1.5
        await client.aclose()
    assert any(e["event"] == "mqtt.keep_alive.expired" for e in logs)


async def test_oversized_packet_closes_the_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gw = await _start(nursery, tmp_path, max_packet_size=1024)
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        client = await RawClient.open(gw.port("mqtt"))
        await client.connect("big")
        # Only the header is sent: the server refuses on the declared length alone.
        await client.stream.send_all(b"\x30\xff\xff\x03")
        assert await client.receive_until_closed() == []
        await client.aclose()
    errors = [e for e in logs if e["event"] == "mqtt.protocol_error"]
    assert [e["reason_code"] for e in errors] == [mqtt.ReasonCode.PACKET_TOO_LARGE]
    gw.stop()


async def test_will_is_published_when_the_connection_drops(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        watcher = await RawClient.open(gateway.port("mqtt"))
        await watcher.connect("watcher")
        await watcher.send(mqtt.Subscribe(packet_id=1, subscriptions=(("status/#", 0),)))
        assert isinstance(await watcher.receive(), mqtt.SubAck)

        dying = await RawClient.open(gateway.port("mqtt"))
        await dying.connect("device-7", will=mqtt.Will(topic="status/device-7", payload=b"offline"))
        polite = await RawClient.open(gateway.port("mqtt"))
        await polite.connect(
            "device-8", will=mqtt.Will(topic="status/device-8", payload=b"offline")
        )
        await polite.send(mqtt.Disconnect())  # a normal DISCONNECT discards the will
        await polite.aclose()
        await dying.aclose()  # no DISCONNECT: the will goes out

        got = await watcher.receive()
        assert isinstance(got, mqtt.Publish)
        assert (got.topic, got.payload) == ("status/device-7", b"offline")
        await watcher.send(mqtt.PingReq())
        assert isinstance(await watcher.receive(), mqtt.PingResp)
        await watcher.aclose()


async def test_shutdown_drains_and_closes_connections(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gw = await _start(nursery, tmp_path)
    with trio.fail_after(NET_TIMEOUT):
        client = await RawClient.open(gw.port("mqtt"))
        await client.connect("to-be-drained")
        gw.stop()
        assert await client.receive_until_closed() == []
        await gw.stopped.wait()
        await client.aclose()
        # The listening socket is gone too.
        try:
            await trio.open_tcp_stream("127.0.0.1", gw.port("mqtt"))
        except OSError:
            pass
        else:
            raise AssertionError("the listener still accepts after stop()")


async def test_sys_topics_are_published_retained(gateway: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        client = await RawClient.open(gateway.port("mqtt"))
        await client.connect("sys-reader")
        await client.send(mqtt.Subscribe(packet_id=1, subscriptions=(("$SYS/broker/#", 0),)))
        assert isinstance(await client.receive(), mqtt.SubAck)
        seen: dict[str, bytes] = {}
        wanted = {"$SYS/broker/clients/connected", "$SYS/broker/uptime", "$SYS/broker/version"}
        while not wanted <= seen.keys():
            packet = await client.receive()
            assert isinstance(packet, mqtt.Publish)
            assert packet.retain
            seen[packet.topic] = packet.payload
        assert seen["$SYS/broker/version"].startswith(b"gateway ")
        assert int(seen["$SYS/broker/clients/connected"]) >= 0
        await client.aclose()
