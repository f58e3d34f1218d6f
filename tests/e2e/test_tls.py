"""TLS with the clients users have: paho-mqtt (over TCP and over WebSocket), mosquitto_pub,
stomp.py and curl against TLS listeners with trustme certificates; client certificates
required and optional; and the `gateway` command: a clear exit 2 for unusable files, and
SIGHUP reloading the certificate.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
import trustme
from structlog.testing import capture_logs

from gateway.app import Gateway
from tests.conftest import NET_TIMEOUT, listener_port, running_gateway
from tests.e2e.test_cli import GATEWAY, start
from tests.listeners.test_tls import TLSFiles, connections, events, tls_config, tls_table
from tests.paho import Paho
from tests.stomp_client import Stomp

V311, V5 = paho.MQTTv311, paho.MQTTv5

# Listener name -> (protocol, tls options).
LISTENERS: dict[str, tuple[str, dict[str, str]]] = {
    "mqtts": ("mqtt", {}),
    "mqtts-mtls": ("mqtt", {"client_certs": "required"}),
    "stomps": ("stomp", {}),
    "https": ("http", {"client_certs": "optional"}),
}


@pytest.fixture
def files(tmp_path: Path) -> TLSFiles:
    return TLSFiles(tmp_path / "tls")


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path, files: TLSFiles) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, tls_config(tmp_path, files, LISTENERS)) as gateway:
        yield gateway


class TLSPaho(Paho):
    """paho-mqtt with tls_set (trusting the test CA), optionally presenting a client
    certificate, optionally over WebSocket (``ws_path``)."""

    def __init__(
        self,
        port: int,
        client_id: str,
        files: TLSFiles,
        *,
        client_cert: tuple[Path, Path] | None = None,
        ws_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(port, client_id, **kwargs)
        if ws_path is not None:
            self.client.transport = "websockets"
            self.client.ws_set_options(path=ws_path)
        cert, key = client_cert or (None, None)
        self.client.tls_set(
            ca_certs=str(files.ca_file),
            certfile=None if cert is None else str(cert),
            keyfile=None if key is None else str(key),
        )


class TLSStomp(Stomp):
    """stomp.py with set_ssl, trusting the test CA."""

    def __init__(self, port: int, files: TLSFiles, version: str = "1.2") -> None:
        super().__init__(port, version)
        self.conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(files.ca_file))


async def tool(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(list(argv), check=False, capture_stdout=True, capture_stderr=True)


async def wait_for_event(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    while not (found := events(logs, name)):  # noqa: ASYNC110
        await trio.sleep(0.01)
    return found[-1]


needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None,
    reason="mosquitto-clients is not installed (make test installs it)",
)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# -- MQTT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])
async def test_paho_over_tls(gw: Gateway, files: TLSFiles, version: int) -> None:
    port = listener_port(gw, "mqtts")
    sub = TLSPaho(port, f"sub-{version}", files, protocol=version)
    pub = TLSPaho(port, f"pub-{version}", files, protocol=version)
    with trio.fail_after(NET_TIMEOUT):
        await sub.connect()
        await pub.connect()
        await sub.subscribe("tls/#", qos=1)
        assert await pub.publish("tls/a", b"secret", qos=1) == 0
        got = await sub.get()
        assert (got.topic, got.payload) == ("tls/a", b"secret")
        await sub.close()
        await pub.close()


@needs_mosquitto
async def test_mosquitto_pub_with_cafile(gw: Gateway, files: TLSFiles) -> None:
    port = listener_port(gw, "mqtts")
    sub = TLSPaho(port, "sub", files)
    with trio.fail_after(NET_TIMEOUT):
        await sub.connect()
        await sub.subscribe("cli/#", qos=1)
        argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "cli/x", "-q", "1"]
        result = await tool(*argv, "-m", "via mosquitto_pub", "--cafile", str(files.ca_file))
        assert result.returncode == 0, result.stderr
        got = await sub.get()
        assert (got.topic, got.payload) == ("cli/x", b"via mosquitto_pub")
        await sub.close()


@needs_mosquitto
async def test_required_client_certificate_with_mosquitto_pub(gw: Gateway, files: TLSFiles) -> None:
    port = listener_port(gw, "mqtts-mtls")
    cert, key = files.client_files("meter-12")
    sub = TLSPaho(port, "sub", files, client_cert=files.client_files("watcher"))
    argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "m/12", "-q", "1"]
    argv += ["--cafile", str(files.ca_file)]
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        await sub.connect()
        await sub.subscribe("m/#", qos=1)
        without = await tool(*argv, "-m", "no cert")
        assert without.returncode != 0
        failed = await wait_for_event(logs, "tls.handshake_failed")
        assert failed["reason"] == "no client certificate (client_certs = 'required')"
        # A certificate from another CA is refused too.
        bad_cert, bad_key = files.client_files("forger", ca=trustme.CA())
        forged = await tool(*argv, "-m", "forged", "--cert", str(bad_cert), "--key", str(bad_key))
        assert forged.returncode != 0
        with_cert = await tool(*argv, "-m", "signed", "--cert", str(cert), "--key", str(key))
        assert with_cert.returncode == 0, with_cert.stderr
        got = await sub.get()
        assert (got.topic, got.payload) == ("m/12", b"signed")
        await sub.close()
    reasons = [entry["reason"] for entry in events(logs, "tls.handshake_failed")]
    assert "client certificate not trusted: unable to get local issuer certificate" in reasons


# -- STOMP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.2"])
async def test_stomp_py_over_tls(gw: Gateway, files: TLSFiles, version: str) -> None:
    port = listener_port(gw, "stomps")
    consumer = TLSStomp(port, files, version)
    producer = TLSStomp(port, files, version)
    with trio.fail_after(NET_TIMEOUT):
        await consumer.connect()
        await producer.connect()
        await consumer.subscribe("/queue/tls", id="1")
        await producer.send("/queue/tls", "over TLS")
        message = await consumer.get()
        assert message.body == b"over TLS"
        await consumer.disconnect()
        await producer.disconnect()


# -- HTTPS and WSS --------------------------------------------------------------------------


@needs_curl
async def test_curl_https(gw: Gateway, files: TLSFiles) -> None:
    port = listener_port(gw, "https")
    sub = TLSPaho(listener_port(gw, "mqtts"), "sub", files)
    url = f"https://127.0.0.1:{port}/api/v1/topics/web/hook"
    curl = ["curl", "-sS", "--max-time", "10"]
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        await sub.connect()
        await sub.subscribe("web/#")
        posted = await tool(
            *curl, "--cacert", str(files.ca_file), "-w", "%{http_code}", "--data", "hi", url
        )
        assert posted.returncode == 0, posted.stderr
        assert posted.stdout.endswith(b"202")
        got = await sub.get()
        assert (got.topic, got.payload) == ("web/hook", b"hi")
        # A client certificate is optional here, and accepted when it is sent.
        cert, key = files.client_files("browser")
        health = f"https://127.0.0.1:{port}/healthz"
        with_cert = await tool(
            *curl, "--cacert", str(files.ca_file), "--cert", str(cert), "--key", str(key), health
        )
        assert with_cert.returncode == 0, with_cert.stderr
        # curl without the CA refuses the server (exit 60); plain HTTP gets closed.
        untrusting = await tool(*curl, health)
        assert untrusting.returncode == 60
        plain = await tool(*curl, f"http://127.0.0.1:{port}/healthz")
        assert plain.returncode != 0
        await sub.close()
    reasons = {(e["reason"], e.get("looks_like")) for e in events(logs, "tls.handshake_failed")}
    assert reasons == {
        ("the client does not trust the server certificate (unknown CA)", None),
        ("plain text on a TLS port", "http"),
    }


async def test_paho_over_wss_with_a_client_certificate(gw: Gateway, files: TLSFiles) -> None:
    """MQTT over WebSocket over TLS: the client certificate of the HTTPS connection is the
    one the MQTT session's Connection shows."""
    ws = TLSPaho(
        listener_port(gw, "https"),
        "wss-client",
        files,
        ws_path="/mqtt",
        client_cert=files.client_files("browser-7"),
        protocol=V5,
    )
    tcp = TLSPaho(listener_port(gw, "mqtts"), "tcp-client", files)
    with trio.fail_after(NET_TIMEOUT):
        await ws.connect()
        await tcp.connect()
        await tcp.subscribe("from-wss/#", qos=1)
        assert await ws.publish("from-wss/x", b"wss", qos=1) == 0
        got = await tcp.get()
        assert (got.topic, got.payload) == ("from-wss/x", b"wss")
        [conn] = connections(gw, "https")
        assert conn.peer_identity is not None
        assert conn.peer_identity.common_name == "browser-7"
        assert conn.peer_identity.emails == ("browser-7@example.com",)
        await ws.close()
        await tcp.close()


# -- the gateway command --------------------------------------------------------------------


def _write_config(tmp_path: Path, files: TLSFiles) -> Path:
    path = tmp_path / "secure.toml"
    path.write_text(
        f"""
[gateway]
data_dir = "{tmp_path}/data"

[[listeners]]
name = "mqtts"
protocol = "mqtt"
bind = "127.0.0.1:0"
tls = {tls_table(files)}

[[listeners]]
name = "https"
protocol = "http"
bind = "127.0.0.1:0"
tls = {tls_table(files, client_certs="required")}
"""
    )
    return path


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("mismatch", "listener 'mqtts': tls.key: {key}: does not match the certificate"),
        ("missing", "listener 'mqtts': tls.cert: {cert}: no such file"),
        ("bad ca", "listener 'https': tls.ca: {ca}: no PEM certificate in it"),
    ],
)
async def test_unusable_files_exit_2_before_any_port_opens(
    tmp_path: Path, files: TLSFiles, spoil: str, message: str
) -> None:
    config = _write_config(tmp_path, files)
    if spoil == "mismatch":
        trustme.CA().issue_cert("x").private_key_pem.write_to_path(files.key)
    elif spoil == "missing":
        files.cert.unlink()
    else:
        files.ca_file.write_text("not a CA bundle\n")
    with trio.fail_after(NET_TIMEOUT):
        result = await trio.run_process(
            [*GATEWAY, "run", "-c", str(config)],
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert result.returncode == 2
    expected = message.format(key=files.key, cert=files.cert, ca=files.ca_file)
    assert f"gateway: cannot start: {expected}" in result.stderr.decode()
    assert b"listener.bound" not in result.stdout


def _served_cert(port: int, files: TLSFiles) -> bytes:
    ctx = files.client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.slow
async def test_sighup_reloads_the_certificate(tmp_path: Path, files: TLSFiles) -> None:
    config = _write_config(tmp_path, files)
    with trio.fail_after(NET_TIMEOUT):
        gw = await start("run", "-c", str(config))
        try:
            bound = await gw.wait_for("listener.bound")
            assert (bound["name"], bound["tls"]) == ("mqtts", True)
            port = int(str(bound["address"]).rsplit(":", 1)[1])
            await gw.wait_for("gateway.started")
            first = files.server_der()
            assert await trio.to_thread.run_sync(_served_cert, port, files) == first
            # No connection comes before the signal: the signal brings the new pair in.
            files.replace_server_cert()
            gw.process.send_signal(signal.SIGHUP)
            reloaded = [await gw.wait_for("tls.reloaded"), await gw.wait_for("tls.reloaded")]
            assert {entry["listener"] for entry in reloaded} == {"mqtts", "https"}
            assert {entry["reason"] for entry in reloaded} == {"SIGHUP"}
            assert await trio.to_thread.run_sync(_served_cert, port, files) == files.server_der()
            assert files.server_der() != first
            # A SIGHUP with a broken key keeps serving the last good certificate.
            files.key.write_text("oops\n")
            gw.process.send_signal(signal.SIGHUP)
            failed = await gw.wait_for("tls.reload_failed")
            assert failed["file"] == str(files.key)
            assert failed["level"] == "error"
            assert await trio.to_thread.run_sync(_served_cert, port, files) == files.server_der()
            gw.process.send_signal(signal.SIGTERM)
            assert await gw.process.wait() == 0
        finally:
            gw.process.kill()
