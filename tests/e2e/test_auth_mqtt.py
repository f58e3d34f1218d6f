"""Authentication over MQTT with real clients (docs/security.md, "Authentication per
protocol"): paho 3.1.1 and 5 with user names and passwords, JWT as the password,
anonymous clients refused with ``anonymous = "deny"``, and MQTT 5 enhanced
authentication (SCRAM-SHA-256 through AUTH packets, driven by scramp's client over the
raw test client) with re-authentication.

The helpers here (``auth_config``, ``make_users``, ``jwt``) serve the STOMP and HTTP
tests too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import scramp  # type: ignore[import-untyped]
import trio

from gateway import config as config_mod
from gateway.app import Gateway
from gateway.auth.users import Users, save_users, with_password
from gateway.codecs import mqtt
from gateway.codecs.mqtt import ReasonCode
from tests.conftest import NET_TIMEOUT, gateway_toml, listeners_toml, running_gateway
from tests.e2e.test_tls import TLSPaho, TLSStomp
from tests.listeners.test_tls import TLSFiles, tls_table
from tests.paho import Paho
from tests.rawmqtt import RawClient
from tests.stomp_client import Stomp, StompFailure

V311, V5 = paho.MQTTv311, paho.MQTTv5
SECRET = "a shared secret of at least thirty-two bytes"
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


def make_users(path: Path, certificates: dict[str, str] | None = None) -> Path:
    """A users file with alice (group users) and bob, written as ``gateway passwd`` does;
    ``certificates`` maps certificate names to users (SASL EXTERNAL)."""
    users = Users()
    for name, password in PASSWORDS.items():
        users = with_password(users, name, password, groups=("users",) if name == "alice" else ())
    save_users(path, users)
    if certificates:
        with path.open("a") as out:
            out.write("\n[certificates]\n")
            out.writelines(f'"{cn}" = "{user}"\n' for cn, user in certificates.items())
    return path


def auth_config(
    tmp_path: Path,
    listeners: str = "",
    *,
    anonymous: str = "deny",
    certificates: dict[str, str] | None = None,
) -> config_mod.Config:
    """MQTT, STOMP and HTTP listeners named after their protocol (plus ``listeners``, TOML
    text), users alice and bob, HS256 tokens, anonymous access ``anonymous``."""
    users = make_users(tmp_path / "users.toml", certificates)
    text = (
        gateway_toml(tmp_path)
        + f"""
[auth]
users_file = "{users}"
anonymous = "{anonymous}"

[auth.jwt]
hs256_secret = "{SECRET}"
"""
    )
    text += listeners_toml("mqtt", "stomp", "http")
    return config_mod.loads(text + listeners, "test.toml")


def jwt(sub: str, *, secret: str = SECRET, ttl: float = 300, **claims: Any) -> str:
    """An HS256 token for ``sub``."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    body = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    signing = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(body)}"
    mac = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


@pytest.fixture
async def gw(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(nursery, auth_config(tmp_path)) as gateway:
        yield gateway


def _paho(gw: Gateway, client_id: str, version: int, user: str | None, pw: str | None) -> Paho:
    client = Paho(gw.port("mqtt"), client_id, protocol=version)
    if user is not None or pw is not None:
        client.client.username_pw_set(user, pw)
    return client


# -- user names and passwords ---------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])
async def test_paho_password_good_bad_and_anonymous(gw: Gateway, version: int) -> None:
    with trio.fail_after(NET_TIMEOUT):
        sub = _paho(gw, f"alice-{version}", version, "alice", "wonderland")
        assert (await sub.connect()).value == 0
        await sub.subscribe("auth/#", qos=1)
        pub = _paho(gw, f"bob-{version}", version, "bob", "builder")
        assert (await pub.connect()).value == 0
        assert await pub.publish("auth/x", b"signed in", qos=1) == 0
        got = await sub.get()
        assert (got.topic, got.payload) == ("auth/x", b"signed in")

        wrong = _paho(gw, f"eve-{version}", version, "alice", "not her password")
        assert (await wrong.connect()).value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        unknown = _paho(gw, f"nobody-{version}", version, "nobody", "wonderland")
        assert (await unknown.connect()).value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        anonymous = _paho(gw, f"anon-{version}", version, None, None)
        assert (await anonymous.connect()).value == ReasonCode.NOT_AUTHORIZED
        for client in (sub, pub, wrong, unknown, anonymous):
            await client.close()


async def test_mqtt311_return_codes(gw: Gateway) -> None:
    """The exact 3.1.1 return codes: 4 bad user name or password, 5 not authorized."""
    with trio.fail_after(NET_TIMEOUT):
        raw = await RawClient.open(gw.port("mqtt"))
        ack = await raw.connect("c1", username="alice", password=b"nope")
        assert ack.return_code == mqtt.ConnectReturnCode.BAD_USER_NAME_OR_PASSWORD
        assert await raw.receive() is None  # closed
        await raw.aclose()
        raw = await RawClient.open(gw.port("mqtt"))
        ack = await raw.connect("c2")
        assert ack.return_code == mqtt.ConnectReturnCode.NOT_AUTHORIZED
        await raw.aclose()
        raw = await RawClient.open(gw.port("mqtt"))
        ack = await raw.connect("c3", username="bob", password=b"builder")
        assert ack.return_code == 0
        await raw.aclose()


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])
async def test_jwt_as_the_password(gw: Gateway, version: int) -> None:
    with trio.fail_after(NET_TIMEOUT):
        good = _paho(gw, f"t-{version}", version, "", jwt("carol"))
        assert (await good.connect()).value == 0
        expired = _paho(gw, f"x-{version}", version, "", jwt("carol", ttl=-3600))
        assert (await expired.connect()).value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        forged = _paho(gw, f"f-{version}", version, "", jwt("carol", secret="x" * 40))
        assert (await forged.connect()).value == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        for client in (good, expired, forged):
            await client.close()


# -- MQTT 5 enhanced authentication ---------------------------------------------------------


def _v5_connect(client_id: str, method: str, data: bytes | None) -> mqtt.Connect:
    return mqtt.Connect(
        client_id=client_id,
        protocol_level=5,
        properties=mqtt.Properties(authentication_method=method, authentication_data=data),
    )


async def _scram_connect(raw: RawClient, user: str, password: str) -> tuple[Any, mqtt.Packet]:
    """CONNECT with SCRAM-SHA-256, answer the server's AUTH challenge; (client, last packet)."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    await raw.send(_v5_connect("scram", "SCRAM-SHA-256", client.get_client_first().encode()))
    challenge = await raw.receive()
    assert isinstance(challenge, mqtt.Auth), challenge
    assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
    assert challenge.properties.authentication_method == "SCRAM-SHA-256"
    assert challenge.properties.authentication_data is not None
    client.set_server_first(challenge.properties.authentication_data.decode())
    final = client.get_client_final().encode()
    await raw.send(
        mqtt.Auth(
            reason_code=ReasonCode.CONTINUE_AUTHENTICATION,
            properties=mqtt.Properties(
                authentication_method="SCRAM-SHA-256", authentication_data=final
            ),
        )
    )
    reply = await raw.receive()
    assert reply is not None
    return client, reply


async def test_scram_sha_256_enhanced_authentication(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        raw = await RawClient.open(gw.port("mqtt"))
        client, ack = await _scram_connect(raw, "alice", "wonderland")
        assert isinstance(ack, mqtt.ConnAck), ack
        assert ack.return_code == 0
        assert ack.properties.authentication_method == "SCRAM-SHA-256"
        data = ack.properties.authentication_data
        assert data is not None
        client.set_server_final(data.decode())  # the server proved it knows the keys
        # The session works: subscribe and receive what we publish.
        await raw.send(mqtt.Subscribe(packet_id=1, subscriptions=(("scram/#", 0),)))
        assert isinstance(await raw.receive(), mqtt.SubAck)

        # Re-authentication (AUTH 0x19) runs a new exchange on the open connection.
        again = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "wonderland")
        await raw.send(_reauth(ReasonCode.RE_AUTHENTICATE, again.get_client_first().encode()))
        challenge = await raw.receive()
        assert isinstance(challenge, mqtt.Auth), challenge
        assert challenge.reason_code == ReasonCode.CONTINUE_AUTHENTICATION
        assert challenge.properties.authentication_data is not None
        again.set_server_first(challenge.properties.authentication_data.decode())
        final = again.get_client_final().encode()
        await raw.send(_reauth(ReasonCode.CONTINUE_AUTHENTICATION, final))
        done = await raw.receive()
        assert isinstance(done, mqtt.Auth), done
        assert done.reason_code == ReasonCode.SUCCESS
        assert done.properties.authentication_data is not None
        again.set_server_final(done.properties.authentication_data.decode())

        # Still connected: a publish comes back through the subscription.
        await raw.send(mqtt.Publish(topic="scram/a", payload=b"after re-auth"))
        got = await raw.receive()
        assert isinstance(got, mqtt.Publish), got
        assert got.payload == b"after re-auth"

        # A re-authentication with a wrong password disconnects: 0x87 (DISCONNECT has
        # no 0x86).
        wrong = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "guess")
        await raw.send(_reauth(ReasonCode.RE_AUTHENTICATE, wrong.get_client_first().encode()))
        challenge = await raw.receive()
        assert isinstance(challenge, mqtt.Auth), challenge
        assert challenge.properties.authentication_data is not None
        wrong.set_server_first(challenge.properties.authentication_data.decode())
        await raw.send(
            _reauth(ReasonCode.CONTINUE_AUTHENTICATION, wrong.get_client_final().encode())
        )
        rest = await raw.receive_until_closed()
        assert [type(p) for p in rest] == [mqtt.Disconnect]
        assert isinstance(rest[0], mqtt.Disconnect)
        assert rest[0].reason_code == ReasonCode.NOT_AUTHORIZED
        await raw.aclose()


def _reauth(code: int, data: bytes) -> mqtt.Auth:
    return mqtt.Auth(
        reason_code=code,
        properties=mqtt.Properties(authentication_method="SCRAM-SHA-256", authentication_data=data),
    )


async def test_scram_wrong_password_and_unknown_method(gw: Gateway) -> None:
    with trio.fail_after(NET_TIMEOUT):
        raw = await RawClient.open(gw.port("mqtt"))
        _, ack = await _scram_connect(raw, "alice", "not her password")
        assert isinstance(ack, mqtt.ConnAck), ack
        assert ack.return_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
        assert await raw.receive() is None
        await raw.aclose()

        raw = await RawClient.open(gw.port("mqtt"))
        await raw.send(_v5_connect("k", "KERBEROS", None))
        ack2 = await raw.receive()
        assert isinstance(ack2, mqtt.ConnAck), ack2
        assert ack2.return_code == ReasonCode.BAD_AUTHENTICATION_METHOD
        await raw.aclose()

        # A PUBLISH while the CONNECT waits for its exchange is a protocol error.
        raw = await RawClient.open(gw.port("mqtt"))
        client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "wonderland")
        await raw.send(_v5_connect("p", "SCRAM-SHA-256", client.get_client_first().encode()))
        assert isinstance(await raw.receive(), mqtt.Auth)
        await raw.stream.send_all(
            mqtt.encode_packet(mqtt.Publish(topic="too/early", payload=b"x"), 5)
        )
        assert await raw.receive_until_closed() in ([], [mqtt.ConnAck(return_code=0x82)])
        await raw.aclose()


async def test_plain_through_enhanced_authentication(gw: Gateway) -> None:
    """PLAIN is one step: CONNECT carries it, CONNACK answers."""
    with trio.fail_after(NET_TIMEOUT):
        raw = await RawClient.open(gw.port("mqtt"))
        await raw.send(_v5_connect("plain", "PLAIN", b"\0bob\0builder"))
        ack = await raw.receive()
        assert isinstance(ack, mqtt.ConnAck), ack
        assert ack.return_code == 0
        assert ack.properties.authentication_method == "PLAIN"
        await raw.aclose()


# -- SASL EXTERNAL: a TLS client certificate -------------------------------------------------


async def test_external_with_a_client_certificate(nursery: trio.Nursery, tmp_path: Path) -> None:
    """MQTT 5 and STOMP clients presenting a trustme certificate whose CN is mapped to alice
    authenticate with EXTERNAL; an unmapped certificate is refused (0x87, STOMP ERROR)."""
    files = TLSFiles(tmp_path / "tls")
    mtls = tls_table(files, client_certs="required")
    listeners = f"""
[[listeners]]
protocol = "mqtt"
name = "mqtts"
bind = "127.0.0.1:0"
tls = {mtls}

[[listeners]]
protocol = "stomp"
name = "stomps"
bind = "127.0.0.1:0"
tls = {mtls}
"""
    config = auth_config(tmp_path, listeners, certificates={"device-1": "alice"})
    external = {"AuthenticationMethod": "EXTERNAL"}
    async with running_gateway(nursery, config) as gw:
        mqtts = next(item.port for item in gw.bound if item.name == "mqtts")
        stomps = next(item.port for item in gw.bound if item.name == "stomps")
        with trio.fail_after(NET_TIMEOUT):
            device = TLSPaho(
                mqtts, "dev", files, client_cert=files.client_files("device-1"), protocol=V5
            )
            assert (await device.connect(properties=external)).value == 0
            assert device.connack_properties.get("AuthenticationMethod") == "EXTERNAL"
            await device.close()
            stranger = TLSPaho(
                mqtts, "who", files, client_cert=files.client_files("stranger"), protocol=V5
            )
            assert (await stranger.connect(properties=external)).value == (
                ReasonCode.NOT_AUTHORIZED
            )
            await stranger.close()

            stomp = TLSStomp(stomps, files)
            cert, key = files.client_files("device-1")
            stomp.conn.set_ssl(
                for_hosts=[("127.0.0.1", stomps)],
                ca_certs=str(files.ca_file),
                cert_file=str(cert),
                key_file=str(key),
            )
            await stomp.connect(headers={"sasl-mechanism": "EXTERNAL"})
            await stomp.disconnect()


async def test_a_users_max_connections_is_enforced(nursery: trio.Nursery, tmp_path: Path) -> None:
    """alice may hold one connection (users file `limits.max_connections`): a second one
    is refused (MQTT 5 CONNACK 0x97, STOMP ERROR); taking over her own session is not."""
    config = auth_config(tmp_path)
    with (tmp_path / "users.toml").open("a") as out:
        out.write("\n[users.alice.limits]\nmax_connections = 1\n")
    async with running_gateway(nursery, config) as gw:
        with trio.fail_after(NET_TIMEOUT):
            first = _paho(gw, "alice-1", V5, "alice", "wonderland")
            assert (await first.connect()).value == 0
            second = _paho(gw, "alice-2", V5, "alice", "wonderland")
            assert (await second.connect()).value == ReasonCode.QUOTA_EXCEEDED
            bob = _paho(gw, "bob-1", V5, "bob", "builder")
            assert (await bob.connect()).value == 0  # the limit is alice's alone
            takeover = _paho(gw, "alice-1", V5, "alice", "wonderland")
            assert (await takeover.connect()).value == 0
            stomp = Stomp(gw.port("stomp"))
            with pytest.raises(StompFailure) as failure:
                await stomp.connect("alice", "wonderland")
            # The ERROR may arrive before the client waits for CONNECTED: read it either way.
            error = failure.value.error or await stomp.error()
            await stomp.close()
            assert error.get("message") == "too many connections"
            for client in (first, second, bob, takeover):
                await client.close()
