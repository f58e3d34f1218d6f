"""SASL mechanisms, password checks and anonymous access through the Authenticator,
driven as the listeners will: bytes in, steps out; SCRAM by scramp's own client."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import scramp  # type: ignore[import-untyped]
from structlog.testing import capture_logs

from gateway.auth import (
    Authenticator,
    AuthError,
    AuthFailure,
    Challenge,
    Failure,
    Identity,
    SaslExchange,
    Success,
    UserRecord,
    UserStore,
    is_loopback,
)
from gateway.auth.users import Users, save_users, with_password
from gateway.config import AuthConfig

SECRETS = ("pw-alice", "pw-bob")


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    """alice (both SCRAM keys), bob (SCRAM-SHA-256 only), carol (a certificate, no password)."""
    path = tmp_path / "users.toml"
    users = with_password(Users(), "alice", "pw-alice", groups=("ops",))
    users = with_password(users, "bob", "pw-bob")
    bob = users.records["bob"]
    bob = replace(bob, credentials={"SCRAM-SHA-256": bob.credentials["SCRAM-SHA-256"]})
    carol = UserRecord(name="carol", groups=("devices",), certificate="carol.example.com")
    users = Users(
        records={**users.records, "bob": bob, "carol": carol},
        certificates={"spare.example.com": "carol"},
    )
    save_users(path, users)
    return path


@pytest.fixture
def auth(users_file: Path) -> Authenticator:
    return Authenticator(AuthConfig(users_file=str(users_file)), UserStore(users_file))


def run_scram(
    exchange: SaslExchange, mechanism: str, user: str, password: str
) -> tuple[list[Any], Any]:
    """Drive a whole exchange with scramp's client; the steps, and the client."""
    client = scramp.ScramClient([mechanism], user, password)
    steps: list[Any] = [exchange.step(client.get_client_first().encode())]
    assert isinstance(steps[0], Challenge)
    client.set_server_first(steps[0].data.decode())
    steps.append(exchange.step(client.get_client_final().encode()))
    return steps, client


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_full_exchange_with_scramps_client(auth: Authenticator, mechanism: str) -> None:
    exchange = auth.start(mechanism, peer_host="10.0.0.5", client_id="c1")
    assert exchange.mechanism == mechanism
    steps, client = run_scram(exchange, mechanism, "alice", "pw-alice")
    final = steps[-1]
    assert isinstance(final, Success)
    client.set_server_final(final.data.decode())  # the client checks the server's signature
    assert final.identity == Identity(user="alice", groups=("ops",), via=mechanism)
    assert exchange.user == "alice"
    assert isinstance(exchange.step(b"more"), Failure)  # over


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_wrong_password_and_unknown_user_fail_alike(
    auth: Authenticator, mechanism: str
) -> None:
    results = []
    for user, password in (("alice", "wrong"), ("nobody", "pw-alice")):
        steps, _ = run_scram(auth.start(mechanism, peer_host="h"), mechanism, user, password)
        assert isinstance(steps[0], Challenge)  # an unknown user still gets a salt
        assert isinstance(steps[-1], Failure)
        results.append(steps[-1])
    assert [r.reason for r in results] == [AuthFailure.BAD_CREDENTIALS] * 2
    assert [r.detail for r in results] == ["wrong password", "unknown user"]


def test_scram_without_an_initial_response_asks_for_it(auth: Authenticator) -> None:
    exchange = auth.start("SCRAM-SHA-256", peer_host="h")
    assert exchange.step(b"") == Challenge(b"")
    steps, _ = run_scram(exchange, "SCRAM-SHA-256", "alice", "pw-alice")
    assert isinstance(steps[-1], Success)


@pytest.mark.parametrize(
    "message", [b"garbage", b"n,,n=alice", b"p=tls-unique,,n=alice,r=abc", b"\xff", b"x" * 20000]
)
def test_scram_malformed_messages_fail_without_raising(auth: Authenticator, message: bytes) -> None:
    step = auth.start("SCRAM-SHA-256", peer_host="h").step(message)
    assert isinstance(step, Failure)
    assert step.reason is AuthFailure.MALFORMED


def test_scram_final_message_garbage(auth: Authenticator) -> None:
    exchange = auth.start("SCRAM-SHA-256", peer_host="h")
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "pw-alice")
    assert isinstance(exchange.step(client.get_client_first().encode()), Challenge)
    step = exchange.step(b"c=biws,r=not-the-nonce,p=AAAA")
    assert isinstance(step, Failure)


def test_plain_good_bad_and_unknown(auth: Authenticator) -> None:
    good = auth.start("PLAIN", peer_host="h").step(b"\0alice\0pw-alice")
    assert isinstance(good, Success)
    assert good.identity == Identity(user="alice", groups=("ops",), via="PLAIN")
    bad = auth.start("PLAIN", peer_host="h").step(b"\0alice\0nope")
    unknown = auth.start("PLAIN", peer_host="h").step(b"\0nobody\0pw-alice")
    assert isinstance(bad, Failure)
    assert isinstance(unknown, Failure)
    assert bad.reason == unknown.reason == AuthFailure.BAD_CREDENTIALS


def test_plain_in_a_second_message_and_with_its_authzid(auth: Authenticator) -> None:
    exchange = auth.start("PLAIN", peer_host="h")
    assert exchange.step(b"") == Challenge(b"")
    assert isinstance(exchange.step(b"alice\0alice\0pw-alice"), Success)
    other = auth.start("PLAIN", peer_host="h").step(b"bob\0alice\0pw-alice")
    assert other == Failure(AuthFailure.NOT_AUTHORIZED, "authzid differs from the user")


@pytest.mark.parametrize("message", [b"alice\0pw", b"\0\0pw", b"a\0b\0c\0d", b"\0\xff\0pw"])
def test_plain_malformed(auth: Authenticator, message: bytes) -> None:
    step = auth.start("PLAIN", peer_host="h").step(message)
    assert isinstance(step, Failure)
    assert step.reason is AuthFailure.MALFORMED


def test_password_good_bad_unknown_have_the_same_shape(auth: Authenticator) -> None:
    identity = auth.password("alice", b"pw-alice", peer_host="h", client_id="c")
    assert identity == Identity(user="alice", groups=("ops",), via="password")
    errors = []
    for user, password in (
        ("alice", b"nope"),
        ("nobody", b"pw-alice"),
        ("carol", b""),
        (None, b"x"),
    ):
        with pytest.raises(AuthError) as info:
            auth.password(user, password, peer_host="h")
        errors.append(info.value)
    assert {e.reason for e in errors} == {AuthFailure.BAD_CREDENTIALS}
    assert "nope" not in str(errors[0])


def test_external_maps_certificate_names_to_users(auth: Authenticator) -> None:
    names = ("CN=x", "carol.example.com")
    step = auth.start("EXTERNAL", peer_host="h", peer_cert_names=names).step(b"")
    assert step == Success(Identity(user="carol", groups=("devices",), via="EXTERNAL"))
    step = auth.start("EXTERNAL", peer_host="h", peer_cert_names=("spare.example.com",)).step(
        b"carol"
    )
    assert isinstance(step, Success)
    refused = [
        auth.start("EXTERNAL", peer_host="h", peer_cert_names=("carol.example.com",)).step(b"bob"),
        auth.start("EXTERNAL", peer_host="h", peer_cert_names=("who.example.com",)).step(b""),
        auth.start("EXTERNAL", peer_host="h").step(b""),
    ]
    assert all(isinstance(s, Failure) and s.reason is AuthFailure.NOT_AUTHORIZED for s in refused)


def test_mechanisms_follow_the_configuration(users_file: Path, tmp_path: Path) -> None:
    auth = Authenticator(AuthConfig(users_file=str(users_file)), UserStore(users_file))
    assert auth.mechanisms() == ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "EXTERNAL")
    plain = tmp_path / "plain.toml"
    save_users(plain, with_password(Users(), "u", "pw"))
    auth = Authenticator(AuthConfig(users_file=str(plain)), UserStore(plain))
    assert auth.mechanisms() == ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
    nobody = Authenticator(AuthConfig(), None)
    assert nobody.mechanisms() == ()
    step = nobody.start("PLAIN", peer_host="h").step(b"\0u\0pw")
    assert step == Failure(AuthFailure.BAD_MECHANISM, "mechanism 'PLAIN' is not enabled")
    assert isinstance(auth.start("EXTERNAL", peer_host="h").step(b""), Failure)
    assert isinstance(auth.start("DIGEST-MD5", peer_host="h").step(b""), Failure)


@pytest.mark.parametrize(
    ("mode", "host", "admitted"),
    [
        ("loopback", "127.0.0.1", True),
        ("loopback", "127.1.2.3", True),
        ("loopback", "::1", True),
        ("loopback", "[::1]", True),
        ("loopback", "::ffff:127.0.0.1", True),
        ("loopback", "10.0.0.1", False),
        ("loopback", "::ffff:10.0.0.1", False),
        ("loopback", "localhost", False),
        ("allow", "203.0.113.9", True),
        ("deny", "127.0.0.1", False),
    ],
)
def test_anonymous(mode: Any, host: str, admitted: bool) -> None:
    auth = Authenticator(AuthConfig(anonymous=mode), None)
    if admitted:
        assert auth.anonymous(host) == Identity(user=None, via="anonymous")
    else:
        with pytest.raises(AuthError) as info:
            auth.anonymous(host)
        assert info.value.reason is AuthFailure.NOT_AUTHORIZED
    assert is_loopback(host) == (
        host not in ("10.0.0.1", "::ffff:10.0.0.1", "localhost", "203.0.113.9")
    )


def test_start_up_says_who_may_connect(auth: Authenticator) -> None:
    with capture_logs() as logs:
        auth.log_startup()
        Authenticator(AuthConfig(anonymous="allow"), None).log_startup()
    assert logs[0]["event"] == "auth.config"
    assert logs[0]["anonymous"] == "loopback"
    assert logs[0]["users"] == 3
    assert "loopback addresses only" in logs[1]["message"]
    assert logs[3]["log_level"] == "warning"
    assert "any address" in logs[3]["message"]


def test_audit_events_name_user_mechanism_peer_client_and_never_the_secret(
    auth: Authenticator,
) -> None:
    with capture_logs() as logs:
        auth.password("alice", b"pw-alice", peer_host="192.0.2.1", client_id="dev-1")
        with pytest.raises(AuthError):
            auth.password("alice", b"pw-bob", peer_host="192.0.2.1", client_id="dev-1")
        run_scram(
            auth.start("SCRAM-SHA-256", peer_host="192.0.2.2"), "SCRAM-SHA-256", "bob", "pw-bob"
        )
        auth.start("PLAIN", peer_host="192.0.2.3", client_id="x").step(b"\0bob\0pw-alice")
        with pytest.raises(AuthError):
            auth.anonymous("192.0.2.4")
    events = [(e["event"], e["user"], e["mechanism"], e["peer"]) for e in logs]
    assert events == [
        ("auth.success", "alice", "password", "192.0.2.1"),
        ("auth.failure", "alice", "password", "192.0.2.1"),
        ("auth.success", "bob", "SCRAM-SHA-256", "192.0.2.2"),
        ("auth.failure", "bob", "PLAIN", "192.0.2.3"),
        ("auth.failure", None, "anonymous", "192.0.2.4"),
    ]
    assert logs[0]["client_id"] == "dev-1"
    assert logs[1]["reason"] == "bad-credentials"
    assert logs[1]["detail"] == "wrong password"
    text = repr(logs)
    for secret in SECRETS:
        assert secret not in text


def test_a_changed_users_file_is_used_after_a_second(users_file: Path) -> None:
    now = [0.0]
    store = UserStore(users_file, clock=lambda: now[0])
    auth = Authenticator(AuthConfig(users_file=str(users_file)), store)
    save_users(users_file, with_password(store.users, "alice", "renewed"))
    now[0] = 2.0
    assert auth.password("alice", b"renewed", peer_host="h").user == "alice"
    with pytest.raises(AuthError):
        auth.password("alice", b"pw-alice", peer_host="h")
