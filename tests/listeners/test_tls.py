"""TLS on the listeners, driven with Trio's own TLS client and trustme certificates: the
configuration, start-up errors naming the file, the handshake (its deadline, plain text,
minimum version, client certificates required or optional, verified against the CA), the
peer certificate on the Connection, and reloading the files (on change and on request).

``TLSFiles`` and ``tls_config`` are shared with tests/e2e/test_tls.py (real clients).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.codecs import mqtt
from gateway.listeners import Connection, StartupError
from gateway.listeners import tls as tls_mod
from tests.conftest import NET_TIMEOUT, listener_port, running_gateway
from tests.rawmqtt import RawClient

# -- certificates and configurations (also used by tests/e2e/test_tls.py) --------------------


@dataclass
class TLSFiles:
    """A CA, a server certificate for 127.0.0.1 and localhost, and where they are written:
    ``cert`` (the chain), ``key``, ``ca`` (the bundle client certificates are checked
    against, the same CA)."""

    dir: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    server: trustme.LeafCert | None = None

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.replace_server_cert()

    @property
    def cert(self) -> Path:
        return self.dir / "chain.pem"

    @property
    def key(self) -> Path:
        return self.dir / "key.pem"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    def replace_server_cert(self, **kwargs: Any) -> trustme.LeafCert:
        """A new server certificate from the same CA, written over the files."""
        self.server = self.ca.issue_cert("127.0.0.1", "localhost", **kwargs)
        # Written as deployment tools do: a new file renamed over the old one.
        for path, blob in (
            (self.cert, b"".join(pem.bytes() for pem in self.server.cert_chain_pems)),
            (self.key, self.server.private_key_pem.bytes()),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        return self.server

    def server_der(self) -> bytes:
        assert self.server is not None
        return ssl.PEM_cert_to_DER_cert(self.server.cert_chain_pems[0].bytes().decode())

    def client_files(self, name: str, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """A client certificate (CN ``name``, SANs ``name.example`` and ``name@example.com``)
        from ``ca`` (default: the trusted CA), written as (cert, key) for command-line tools."""
        leaf = (ca or self.ca).issue_cert(
            f"{name}.example", f"{name}@example.com", common_name=name
        )
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        return cert, key

    def client_context(
        self,
        *,
        cert: str | None = None,
        cert_ca: trustme.CA | None = None,
        trust: trustme.CA | None = None,
        maximum_version: ssl.TLSVersion | None = None,
    ) -> ssl.SSLContext:
        """A client context trusting ``trust`` (default: the server's CA), presenting a
        certificate with common name ``cert`` (issued by ``cert_ca``) if given."""
        ctx = ssl.create_default_context()
        (trust or self.ca).configure_trust(ctx)
        if cert is not None:
            (cert_ca or self.ca).issue_cert(
                f"{cert}.example", f"{cert}@example.com", common_name=cert
            ).configure_cert(ctx)
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
        return ctx


def tls_table(files: TLSFiles, **options: str) -> str:
    """A ``tls = {...}`` inline table for ``files``; with client_certs, the CA too."""
    items = {"cert": str(files.cert), "key": str(files.key)}
    if options.get("client_certs", "none") != "none":
        items["ca"] = str(files.ca_file)
    items.update(options)
    return "{ " + ", ".join(f'{key} = "{value}"' for key, value in items.items()) + " }"


def tls_config(
    tmp_path: Path,
    files: TLSFiles,
    listeners: dict[str, tuple[str, dict[str, str]]],
    *,
    connect_timeout: float = 5.0,
) -> config_mod.Config:
    """Listeners named as the keys of ``listeners``, each (protocol, tls options) on an
    ephemeral loopback port; tls options None means a plain listener."""
    text = f"""
[gateway]
data_dir = "{tmp_path}/data"
drain_timeout = 2.0
"""
    for name, (protocol, options) in listeners.items():
        text += f"""
[[listeners]]
name = "{name}"
protocol = "{protocol}"
bind = "127.0.0.1:0"
connect_timeout = {connect_timeout}
"""
        if options is not None:
            text += f"tls = {tls_table(files, **options)}\n"
    return config_mod.loads(text, "test.toml")


def connections(gw: Gateway, name: str) -> set[Connection]:
    """The open connections of the listener called ``name``."""
    for server in gw._servers:
        if server.config.label == name:
            return server.connections
    raise LookupError(name)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> TLSFiles:
    return TLSFiles(tmp_path / "tls")


async def open_tls(
    port: int, ctx: ssl.SSLContext, *, https_compatible: bool = False
) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection whose handshake is done (it raises if the server refused)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(
        tcp, ctx, server_hostname="127.0.0.1", https_compatible=https_compatible
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await tcp.aclose()
        raise
    return stream


async def mqtt_connect(port: int, ctx: ssl.SSLContext, client_id: str) -> RawClient:
    client = RawClient(await open_tls(port, ctx))  # type: ignore[arg-type]
    ack = await client.connect(client_id)
    assert ack.return_code == 0
    return client


async def refused(port: int, ctx: ssl.SSLContext) -> None:
    """The server refuses this client: at the handshake or (TLS 1.3: the server checks the
    client's certificate after the client has finished) at the first read."""
    try:
        stream = await open_tls(port, ctx)
    except trio.BrokenResourceError:
        return
    client = RawClient(stream)  # type: ignore[arg-type]
    try:
        await client.send(mqtt.Connect(client_id="refused"))
        assert await client.receive_until_closed() == []
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def closed_by_server(stream: trio.abc.Stream) -> bool:
    """True once the server closed: EOF, or a reset (it closed with data left unread)."""
    try:
        return await stream.receive_some() == b""
    except trio.BrokenResourceError:
        return True


def blocking_handshake(port: int, ctx: ssl.SSLContext) -> None:
    """A handshake with the standard library's blocking socket, as most clients do it: a
    failed certificate check sends the alert before closing (trio's does not flush it)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


async def wait_for_event(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    while not (found := events(logs, name)):  # noqa: ASYNC110
        await trio.sleep(0.01)
    return found[-1]


# -- configuration --------------------------------------------------------------------------


def test_tls_inline_table_is_decoded_with_defaults(tmp_path: Path, files: TLSFiles) -> None:
    config = tls_config(tmp_path, files, {"mqtts": ("mqtt", {})})
    tls = config.listeners[0].tls
    assert tls == config_mod.TLSConfig(cert=str(files.cert), key=str(files.key))
    assert (tls.ca, tls.client_certs, tls.min_version) == (None, "none", "1.2")


@pytest.mark.parametrize(
    ("tls", "key", "problem"),
    [
        ('{ cert = "c", key = "k", bogus = 1 }', "listeners[0].tls.bogus", "unknown key"),
        ('{ key = "k" }', "listeners[0].tls.cert", "required key is missing"),
        ('{ cert = "c", key = "" }', "listeners[0].tls.key", "must not be empty"),
        (
            '{ cert = "c", key = "k", client_certs = "required" }',
            "listeners[0].tls.ca",
            "required with client_certs = 'required'",
        ),
        (
            '{ cert = "c", key = "k", ca = "a" }',
            "listeners[0].tls.client_certs",
            "client certificates are not asked for",
        ),
        (
            '{ cert = "c", key = "k", client_certs = "maybe", ca = "a" }',
            "listeners[0].tls.client_certs",
            "invalid enum value 'maybe'",
        ),
        (
            '{ cert = "c", key = "k", min_version = "1.1" }',
            "listeners[0].tls.min_version",
            "invalid enum value '1.1'",
        ),
        ('{ cert = "c", key = "k", min_version = 1.3 }', "listeners[0].tls.min_version", "str"),
        ('"yes"', "listeners[0].tls", "expected `object"),
    ],
)
def test_tls_config_errors_name_the_key(tls: str, key: str, problem: str) -> None:
    text = f'[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1:0"\ntls = {tls}\n'
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(text, "site.toml")
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"site.toml: {key}: ")


# -- start-up errors ------------------------------------------------------------------------


def _break(files: TLSFiles, what: str) -> tuple[str, Path]:
    """Spoil one file; returns (the field the error names, the file)."""
    other = trustme.CA().issue_cert("127.0.0.1")
    if what == "missing cert":
        files.cert.unlink()
        return "cert", files.cert
    if what == "cert is a directory":
        files.cert.unlink()
        files.cert.mkdir()
        return "cert", files.cert
    if what == "cert not PEM":
        files.cert.write_bytes(b"not a certificate\n")
        return "cert", files.cert
    if what == "key of another certificate":
        other.private_key_pem.write_to_path(files.key)
        return "key", files.key
    if what == "key is a certificate":
        other.cert_chain_pems[0].write_to_path(files.key)
        return "key", files.key
    if what == "missing key":
        files.key.unlink()
        return "key", files.key
    if what == "bad CA":
        files.ca_file.write_bytes(
            b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"
        )
        return "ca", files.ca_file
    if what == "missing CA":
        files.ca_file.unlink()
        return "ca", files.ca_file
    raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "problem"),
    [
        ("missing cert", "no such file"),
        ("cert is a directory", "cannot read: Is a directory"),
        ("cert not PEM", "no PEM certificate in it"),
        ("key of another certificate", "does not match the certificate"),
        ("key is a certificate", "no PEM private key in it"),
        ("missing key", "no such file"),
        ("bad CA", "no PEM certificate in it"),
        ("missing CA", "no such file"),
    ],
)
async def test_unusable_files_stop_the_start_naming_listener_and_file(
    tmp_path: Path, files: TLSFiles, what: str, problem: str
) -> None:
    config = tls_config(
        tmp_path,
        files,
        {"plain": ("mqtt", None), "secure": ("stomp", {"client_certs": "optional"})},  # type: ignore[dict-item]
    )
    field_name, path = _break(files, what)
    gw = Gateway(config)
    with trio.fail_after(NET_TIMEOUT), pytest.raises(StartupError) as info:
        await gw.bind()
    assert str(info.value).startswith(f"listener 'secure': tls.{field_name}: {path}: {problem}")
    assert gw.bound == []  # no port was opened, not even the plain listener's


async def test_an_encrypted_key_is_refused_not_prompted_for(
    tmp_path: Path, files: TLSFiles
) -> None:
    from cryptography.hazmat.primitives import serialization

    assert files.server is not None
    key = serialization.load_pem_private_key(files.server.private_key_pem.bytes(), None)
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    gw = Gateway(tls_config(tmp_path, files, {"mqtts": ("mqtt", {})}))
    with trio.fail_after(NET_TIMEOUT), pytest.raises(StartupError, match="the key is encrypted"):
        await gw.bind()


async def test_an_expired_certificate_starts_with_a_warning(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    files.replace_server_cert(
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
    )
    with capture_logs() as logs:
        async with running_gateway(nursery, tls_config(tmp_path, files, {"m": ("mqtt", {})})):
            pass
    [warning] = events(logs, "tls.certificate_expired")
    assert warning["not_after"].startswith("2021-01-01")


# -- the handshake --------------------------------------------------------------------------


async def test_mqtt_over_tls(nursery: trio.Nursery, tmp_path: Path, files: TLSFiles) -> None:
    config = tls_config(tmp_path, files, {"mqtts": ("mqtt", {})})
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            assert [item.tls for item in gw.bound] == [True]
            port = gw.port("mqtt")
            sub = await mqtt_connect(port, files.client_context(), "sub")
            await sub.send(mqtt.Subscribe(packet_id=1, subscriptions=(("t/#", 0),)))
            assert isinstance(await sub.receive(), mqtt.SubAck)
            pub = await mqtt_connect(port, files.client_context(), "pub")
            await pub.send(mqtt.Publish(topic="t/1", payload=b"over TLS"))
            message = await sub.receive()
            assert isinstance(message, mqtt.Publish)
            assert message.payload == b"over TLS"
            # Without client certificates the connection knows its version, not a peer.
            [conn, _] = sorted(connections(gw, "mqtts"), key=lambda c: c.conn_id)
            assert conn.tls_version == "TLSv1.3"
            assert conn.peer_cert is None
            assert conn.peer_identity is None
            await sub.aclose()
            await pub.aclose()
    [loaded] = events(logs, "tls.loaded")
    assert loaded["min_version"] == "1.2"
    assert loaded["client_certs"] == "none"


async def test_http_listener_offers_http_1_1_by_alpn(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(tmp_path, files, {"https": ("http", {})})
    with trio.fail_after(NET_TIMEOUT):
        async with running_gateway(nursery, config) as gw:
            ctx = files.client_context()
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            # HTTPS peers close without close_notify (HTTP says where bodies end).
            stream = await open_tls(gw.port("http"), ctx, https_compatible=True)
            assert stream.selected_alpn_protocol() == "http/1.1"
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            await stream.aclose()


async def test_minimum_version_1_3_refuses_a_tls_1_2_client(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(
        tmp_path, files, {"modern": ("mqtt", {"min_version": "1.3"}), "default": ("mqtt", {})}
    )
    old = files.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            with pytest.raises(trio.BrokenResourceError):
                await open_tls(listener_port(gw, "modern"), old)
            failed = await wait_for_event(logs, "tls.handshake_failed")
            # TLS 1.2 is still accepted by default.
            client = await mqtt_connect(listener_port(gw, "default"), old, "old")
            [conn] = connections(gw, "default")
            assert conn.tls_version == "TLSv1.2"
            await client.aclose()
    assert "TLS version" in failed["reason"]


@pytest.mark.parametrize(
    ("protocol", "plain", "looks_like"),
    [
        ("mqtt", b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd", "mqtt"),
        ("stomp", b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00", "stomp"),
        ("http", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "http"),
        ("mqtt", b"hello?\n", "unknown"),
    ],
)
async def test_plain_text_on_a_tls_port_is_closed_and_logged(
    nursery: trio.Nursery,
    tmp_path: Path,
    files: TLSFiles,
    protocol: str,
    plain: bytes,
    looks_like: str,
) -> None:
    config = tls_config(tmp_path, files, {"secure": (protocol, {})})
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            tcp = await trio.open_tcp_stream("127.0.0.1", gw.port(protocol))
            await tcp.send_all(plain)
            assert await tcp.receive_some() == b""  # closed (a FIN, not a reset), no answer
            await tcp.aclose()
    [failed] = events(logs, "tls.handshake_failed")
    assert failed["reason"] == "plain text on a TLS port"
    assert failed["looks_like"] == looks_like


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "partial"])
async def test_handshake_deadline_is_connect_timeout_and_never_blocks_others(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles, sent: bytes
) -> None:
    config = tls_config(tmp_path, files, {"mqtts": ("mqtt", {})}, connect_timeout=0.5)
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            port = gw.port("mqtt")
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            await stalled.send_all(sent)
            started = trio.current_time()
            # Meanwhile another client completes its handshake and CONNECT at once.
            other = await mqtt_connect(port, files.client_context(), "other")
            assert trio.current_time() - started < 0.4
            assert await stalled.receive_some() == b""
            assert 0.4 < trio.current_time() - started < 3
            await stalled.aclose()
            await other.aclose()
    [failed] = events(logs, "tls.handshake_failed")
    assert failed["reason"] == "no handshake within 0.5 s (connect_timeout)"


async def test_client_not_trusting_the_server_is_logged(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(tmp_path, files, {"mqtts": ("mqtt", {})})
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            with pytest.raises(ssl.SSLCertVerificationError):
                await trio.to_thread.run_sync(
                    blocking_handshake, gw.port("mqtt"), files.client_context(trust=trustme.CA())
                )
            failed = await wait_for_event(logs, "tls.handshake_failed")
    assert failed["reason"] == "the client does not trust the server certificate (unknown CA)"


async def test_shutdown_during_a_handshake_is_quiet(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(tmp_path, files, {"mqtts": ("mqtt", {})}, connect_timeout=30)
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            stalled = await trio.open_tcp_stream("127.0.0.1", gw.port("mqtt"))
            while not connections(gw, "mqtts"):  # noqa: ASYNC110
                await trio.sleep(0.01)
            started = trio.current_time()
        assert trio.current_time() - started < 1.5  # not the 30 s handshake deadline
        assert await stalled.receive_some() == b""
        await stalled.aclose()
    assert events(logs, "tls.handshake_failed") == []


# -- client certificates --------------------------------------------------------------------


async def test_required_client_certificates(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(tmp_path, files, {"mtls": ("mqtt", {"client_certs": "required"})})
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            port = gw.port("mqtt")
            await refused(port, files.client_context())
            missing = await wait_for_event(logs, "tls.handshake_failed")
            logs.clear()
            await refused(port, files.client_context(cert="intruder", cert_ca=trustme.CA()))
            untrusted = await wait_for_event(logs, "tls.handshake_failed")
            client = await mqtt_connect(port, files.client_context(cert="device-7"), "d7")
            [conn] = connections(gw, "mtls")
            identity = conn.peer_identity
            assert identity is not None
            assert identity.common_name == "device-7"
            assert identity.dns_names == ("device-7.example",)
            assert identity.emails == ("device-7@example.com",)
            assert len(identity.sha256) == 64
            assert conn.peer_cert is not None
            assert ("commonName", "device-7") in conn.peer_cert["subject"][-1]
            await client.aclose()
    assert missing["reason"] == "no client certificate (client_certs = 'required')"
    assert untrusted["reason"] == (
        "client certificate not trusted: unable to get local issuer certificate"
    )


async def test_optional_client_certificates(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(tmp_path, files, {"opt": ("mqtt", {"client_certs": "optional"})})
    with trio.fail_after(NET_TIMEOUT):
        async with running_gateway(nursery, config) as gw:
            port = gw.port("mqtt")
            anonymous = await mqtt_connect(port, files.client_context(), "anon")
            [conn] = connections(gw, "opt")
            assert conn.peer_cert is None
            assert conn.peer_identity is None
            await anonymous.aclose()
            with_cert = await mqtt_connect(port, files.client_context(cert="sensor-1"), "s1")
            [conn] = [c for c in connections(gw, "opt") if c.peer_identity is not None]
            assert conn.peer_identity is not None
            assert conn.peer_identity.common_name == "sensor-1"
            await with_cert.aclose()
            # A certificate that is offered must still be one the CA signed.
            await refused(port, files.client_context(cert="forged", cert_ca=trustme.CA()))


def test_peer_identity_names() -> None:
    cert = {
        "subject": ((("countryName", "FR"),), (("commonName", "svc"),)),
        "issuer": ((("commonName", "Site CA"),),),
        "serialNumber": "0A1B",
        "subjectAltName": (
            ("DNS", "svc.example"),
            ("DNS", "*.svc.example"),
            ("email", "ops@example.com"),
            ("URI", "spiffe://example/svc"),
            ("IP Address", "10.0.0.1"),
        ),
    }
    identity = tls_mod.peer_identity(cert, b"der")
    assert identity.common_name == "svc"
    assert identity.subject == (("countryName", "FR"), ("commonName", "svc"))
    assert identity.dns_names == ("svc.example", "*.svc.example")
    assert identity.emails == ("ops@example.com",)
    assert identity.uris == ("spiffe://example/svc",)
    assert identity.issuer_common_name == "Site CA"
    assert identity.serial == "0A1B"
    assert identity.sha256 == hashlib.sha256(b"der").hexdigest()


def test_tls_1_2_suites_are_forward_secret_aead(files: TLSFiles) -> None:
    tls = config_mod.TLSConfig(cert=str(files.cert), key=str(files.key))
    context = tls_mod.build_context(tls).context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    suites = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert suites
    assert all(c["name"].startswith("ECDHE-") and c["aead"] for c in suites)


@pytest.mark.parametrize(
    ("first", "guess"),
    [
        (b"\x16\x03\x01", None),
        (b"", None),
        (b"\x10", "mqtt"),
        (b"STOMP\n", "stomp"),
        (b"\nCONNECT\n", "stomp"),
        (b"POST /api", "http"),
        (b"PRI * HT", "http"),
        (b"\x80\x2e\x01", "unknown"),  # an SSLv2-style hello
    ],
)
def test_plain_text_guess(first: bytes, guess: str | None) -> None:
    assert tls_mod.plain_text_guess(first) == guess


# -- reloading ------------------------------------------------------------------------------


@pytest.fixture
def check_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are looked at on every connection instead of at most once a second."""
    monkeypatch.setattr(tls_mod, "CHECK_INTERVAL", 0.0)


async def served_cert(port: int, files: TLSFiles) -> bytes:
    stream = await open_tls(port, files.client_context())
    der = stream.getpeercert(binary_form=True)
    await stream.aclose()
    return der  # type: ignore[no-any-return]


@pytest.mark.usefixtures("check_at_once")
async def test_replaced_files_are_used_by_new_connections(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(tmp_path, files, {"mqtts": ("mqtt", {})})
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            port = gw.port("mqtt")
            first = files.server_der()
            assert await served_cert(port, files) == first
            # An open connection keeps working across the change.
            open_client = await mqtt_connect(port, files.client_context(), "stays")
            files.replace_server_cert()
            second = files.server_der()
            assert await served_cert(port, files) == second
            [reloaded] = events(logs, "tls.reloaded")
            assert reloaded["reason"] == "files changed"
            await open_client.send(mqtt.PingReq())
            assert isinstance(await open_client.receive(), mqtt.PingResp)
            # A key that does not match: logged, and the last good pair stays in use.
            trustme.CA().issue_cert("x").private_key_pem.write_to_path(files.key)
            assert await served_cert(port, files) == second
            [failed] = events(logs, "tls.reload_failed")
            assert failed["file"] == str(files.key)
            assert "does not match the certificate" in failed["error"]
            await open_client.aclose()


async def test_reload_tls_on_request(
    nursery: trio.Nursery, tmp_path: Path, files: TLSFiles
) -> None:
    config = tls_config(
        tmp_path,
        files,
        {"mqtts": ("mqtt", {}), "plain": ("mqtt", None)},  # type: ignore[dict-item]
    )
    with trio.fail_after(NET_TIMEOUT), capture_logs() as logs:
        async with running_gateway(nursery, config) as gw:
            port = listener_port(gw, "mqtts")
            files.replace_server_cert()
            assert gw.reload_tls("SIGHUP") == 1  # the plain listener has nothing to reload
            assert await served_cert(port, files) == files.server_der()
            assert events(logs, "tls.reloaded")[-1]["reason"] == "SIGHUP"
            files.cert.write_bytes(b"")
            assert gw.reload_tls("SIGHUP") == 0
            assert events(logs, "tls.reload_failed")[-1]["file"] == str(files.cert)
            assert await served_cert(port, files) == files.server_der()
