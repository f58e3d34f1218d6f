"""JWT bearer tokens: HS256, RS256, ES256; expiry, nbf, audience, issuer; alg none and
algorithm confusion; tokens as passwords, SASL PLAIN passwords and HTTP Bearer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.auth import (
    Authenticator,
    AuthError,
    AuthFailure,
    Identity,
    JwtVerifier,
    Success,
    TokenError,
    UserStore,
    looks_like_jwt,
)
from gateway.auth.identity import Limits
from gateway.auth.users import Users, save_users, with_password
from gateway.config import AuthConfig, JwtConfig

NOW = 1_700_000_000.0
SECRET = b"s" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(header: dict[str, Any], body: dict[str, Any] | str, sign: Callable[[bytes], bytes]) -> str:
    payload = body if isinstance(body, str) else json.dumps(body)
    head = f"{b64url(json.dumps(header).encode())}.{b64url(payload.encode())}"
    return f"{head}.{b64url(sign(head.encode()))}"


def hs256(data: bytes, secret: bytes = SECRET) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def rs256(data: bytes) -> bytes:
    return RSA_KEY.sign(data, padding.PKCS1v15(), hashes.SHA256())


def es256(data: bytes) -> bytes:
    r, s = decode_dss_signature(EC_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


SIGNERS = {"HS256": hs256, "RS256": rs256, "ES256": es256}


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": NOW + 60, **extra}


def token(alg: str = "HS256", **extra: Any) -> str:
    return jws({"alg": alg, "typ": "JWT"}, claims(**extra), SIGNERS[alg])


def verifier(**kwargs: Any) -> JwtVerifier:
    defaults: dict[str, Any] = {
        "hs256_secret": SECRET,
        "rs256_key": RSA_KEY.public_key(),
        "es256_key": EC_KEY.public_key(),
        "clock": lambda: NOW,
    }
    return JwtVerifier(**{**defaults, **kwargs})


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_valid_tokens_of_each_algorithm(alg: str) -> None:
    got = verifier().verify(token(alg, groups=["ops"], acl=[{"action": "publish"}]))
    assert (got.subject, got.groups, got.algorithm) == ("alice", ("ops",), alg)
    assert got.acl == ({"action": "publish"},)
    assert got.expires == NOW + 60


@pytest.mark.parametrize(
    ("kwargs", "extra", "problem"),
    [
        ({}, {"exp": NOW - 1}, "expired"),
        ({}, {"exp": NOW}, "expired"),
        ({"leeway": 30}, {"exp": NOW - 31}, "expired"),
        ({}, {"exp": None}, "no exp"),
        ({}, {"exp": "soon"}, "not a number"),
        ({}, {"exp": True}, "not a number"),
        ({}, {"nbf": NOW + 10}, "not valid yet"),
        ({"leeway": 5}, {"nbf": NOW + 10}, "not valid yet"),
        ({"audience": "gw"}, {}, "no aud"),
        ({"audience": "gw"}, {"aud": "other"}, "another audience"),
        ({"audience": "gw"}, {"aud": ["a", "b"]}, "another audience"),
        ({"audience": "gw"}, {"aud": 3}, "not a string"),
        ({}, {"aud": "gw"}, "audience is not set"),
        ({"issuer": "https://idp"}, {}, "another issuer"),
        ({"issuer": "https://idp"}, {"iss": "https://evil"}, "another issuer"),
        ({}, {"sub": ""}, "no sub"),
        ({}, {"sub": 7}, "no sub"),
        ({}, {"groups": "ops"}, "not a list of names"),
        ({}, {"acl": {"action": "publish"}}, "not a list of objects"),
    ],
)
def test_claims_are_checked(kwargs: dict[str, Any], extra: dict[str, Any], problem: str) -> None:
    body = {key: value for key, value in claims(**extra).items() if value is not None}
    with pytest.raises(TokenError, match=problem):
        verifier(**kwargs).verify(jws({"alg": "HS256"}, body, hs256))


def test_leeway_audience_and_issuer_accept_what_they_should() -> None:
    check = verifier(leeway=30, audience="gw", issuer="https://idp")
    ok = claims(exp=NOW - 29, nbf=NOW + 29, aud=["x", "gw"], iss="https://idp")
    assert check.verify(jws({"alg": "HS256"}, ok, hs256)).subject == "alice"


@pytest.mark.parametrize(
    "bad",
    [
        # alg none, with and without a signature
        jws({"alg": "none"}, claims(), lambda _: b""),
        jws({"alg": "none"}, claims(), lambda _: b"x"),
        jws({"alg": "None"}, claims(), lambda _: b"x"),
        jws({"alg": "HS512"}, claims(), lambda d: hmac.new(SECRET, d, "sha512").digest()),
        jws({"typ": "JWT"}, claims(), hs256),
    ],
)
def test_unaccepted_algorithms_are_refused(bad: str) -> None:
    with pytest.raises(TokenError):
        verifier().verify(bad)


def test_algorithm_confusion_is_refused() -> None:
    # An HS256 token "signed" with the RSA public key (which attackers know) as the secret.
    public_pem = pem(RSA_KEY)
    forged = jws({"alg": "HS256"}, claims(), lambda d: hs256(d, public_pem))
    only_rsa = verifier(hs256_secret=None, es256_key=None)
    with pytest.raises(TokenError, match="'HS256' is not accepted"):
        only_rsa.verify(forged)
    with pytest.raises(TokenError, match="bad signature"):
        verifier().verify(forged)
    # An RS256 token verified against an EC key, and the other way round.
    with pytest.raises(TokenError, match="not accepted"):
        verifier(rs256_key=None).verify(token("RS256"))
    with pytest.raises(TokenError, match="not accepted"):
        verifier(es256_key=None).verify(token("ES256"))


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_tampered_tokens_fail_the_signature(alg: str) -> None:
    head, _, signature = token(alg).split(".")
    forged = f"{head}.{b64url(json.dumps(claims(sub='admin')).encode())}.{signature}"
    with pytest.raises(TokenError, match="bad signature"):
        verifier().verify(forged)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("abc", "three base64url segments"),
        ("a.b.c.d", "three base64url segments"),
        ("eyJ.eyJ.==", "three base64url segments"),
        ("e.e.e" + "x" * 20000, "three base64url segments"),
        (f"{b64url(b'[1]')}.e30.AA", "not a JSON object"),
        (f"{b64url(b'{')}.e30.AA", "not JSON"),
        (jws({"alg": "HS256", "crit": ["exp"]}, claims(), hs256), "crit"),
        (jws({"alg": "HS256", "typ": "JWT"}, '{"sub":"a","sub":"b","exp":1e12}', hs256), "dup"),
        (jws({"alg": "HS256"}, '{"sub":"a","exp":NaN}', hs256), "NaN"),
        (jws({"alg": "ES256"}, claims(), lambda d: es256(d)[:63]), "bad signature"),
    ],
)
def test_malformed_tokens(bad: str, problem: str) -> None:
    with pytest.raises(TokenError, match=problem):
        verifier().verify(bad)


def test_looks_like_jwt() -> None:
    assert looks_like_jwt(token())
    assert not looks_like_jwt("hunter2")
    assert not looks_like_jwt("eyJ.only-two")
    assert not looks_like_jwt("a.b.c")


def test_short_hs256_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtVerifier(hs256_secret=b"short")


# ---- through the Authenticator ------------------------------------------------------


@pytest.fixture
def auth(tmp_path: Path) -> Authenticator:
    users = tmp_path / "users.toml"
    save_users(users, with_password(Users(), "bob", "pw-bob"))
    text = users.read_text() + "limits = { max_connections = 2 }\n"
    users.write_text(text.replace("[users.bob]", "[users.alice]\n\n[users.bob]", 1))
    config = AuthConfig(
        users_file=str(users), jwt=JwtConfig(hs256_secret=SECRET.decode(), audience="gw")
    )
    return Authenticator(config, UserStore(users), clock=lambda: NOW)


def test_a_token_is_a_password_a_sasl_plain_password_and_a_bearer(auth: Authenticator) -> None:
    good = token(aud="gw", groups=["ops"], acl=[{"action": "subscribe", "pattern": "a/#"}])
    expected = Identity(
        user="alice",
        groups=("ops",),
        via="JWT",
        acl=({"action": "subscribe", "pattern": "a/#"},),
        limits=Limits(),
    )
    assert auth.password(None, good.encode(), peer_host="h") == expected
    assert auth.password("", good.encode(), peer_host="h") == expected
    assert auth.password("alice", good.encode(), peer_host="h") == expected
    assert auth.bearer(good, peer_host="h") == expected
    step = auth.start("PLAIN", peer_host="h").step(b"\0alice\0" + good.encode())
    assert step == Success(expected)
    assert "PLAIN" in auth.mechanisms()


def test_a_token_user_gets_the_limits_of_the_users_file(auth: Authenticator) -> None:
    identity = auth.bearer(token(sub="bob", aud="gw"))
    assert identity.limits == Limits(max_connections=2)
    assert identity.acl is None  # no ACL claim: only configured rules apply


def test_bad_tokens_are_bad_credentials(auth: Authenticator) -> None:
    expired = token(aud="gw", exp=NOW - 100).encode()
    for user, password in ((None, expired), ("bob", token(aud="gw").encode())):
        with pytest.raises(AuthError) as info:
            auth.password(user, password, peer_host="h")
        assert info.value.reason is AuthFailure.BAD_CREDENTIALS
    with pytest.raises(AuthError, match="expired"):
        auth.bearer(expired.decode())
    with pytest.raises(AuthError):
        auth.bearer("not a token")
    no_jwt = Authenticator(AuthConfig(), None)
    with pytest.raises(AuthError, match="no JWT key"):
        no_jwt.bearer(token())


def test_token_audit_never_logs_the_token(auth: Authenticator) -> None:
    good, bad = token(aud="gw"), token(aud="gw", exp=NOW - 100)
    with capture_logs() as logs:
        auth.bearer(good, peer_host="192.0.2.7", client_id="web")
        with pytest.raises(AuthError):
            auth.password(None, bad.encode(), peer_host="192.0.2.7")
    assert [(e["event"], e["user"], e["mechanism"]) for e in logs] == [
        ("auth.success", "alice", "JWT"),
        ("auth.failure", None, "password"),
    ]
    assert logs[1]["detail"] == "token: the token has expired"
    for part in (*good.split("."), *bad.split(".")):
        assert part not in repr(logs)


# ---- the [auth.jwt] configuration ------------------------------------------------------


def test_jwt_configuration_with_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rsa.pem").write_bytes(pem(RSA_KEY))
    (tmp_path / "ec.pem").write_bytes(pem(EC_KEY))
    monkeypatch.setenv("GW_JWT_SECRET", SECRET.decode())
    loaded = config_mod.loads(
        f"""
[auth]
anonymous = "deny"
[auth.jwt]
hs256_secret_env = "GW_JWT_SECRET"
rs256_public_key = "{tmp_path}/rsa.pem"
es256_public_key = "{tmp_path}/ec.pem"
audience = "gw"
issuer = "https://idp"
leeway = 10
"""
    )
    auth = Authenticator.from_config(loaded, clock=lambda: NOW)
    assert auth.jwt is not None
    assert auth.jwt.algorithms == ("HS256", "RS256", "ES256")
    for alg in SIGNERS:
        assert auth.bearer(token(alg, aud="gw", iss="https://idp")).user == "alice"


@pytest.mark.parametrize(
    ("jwt", "key", "problem"),
    [
        ("hs256_secret = 'short'", "auth.jwt.hs256_secret", "at least 32 bytes"),
        (
            f"hs256_secret = '{'s' * 32}'\nhs256_secret_env = 'X'",
            "auth.jwt.hs256_secret",
            "give hs256_secret or hs256_secret_env",
        ),
        ("hs256_secret_env = 'GW_TEST_UNSET_VARIABLE'", "auth.jwt.hs256_secret_env", "not set"),
        ("es256_public_key = '{tmp}/rsa.pem'", "auth.jwt.es256_public_key", "P-256"),
        ("rs256_public_key = '{tmp}/ec.pem'", "auth.jwt.rs256_public_key", "RSA public key"),
        ("rs256_public_key = '{tmp}/none.pem'", "auth.jwt.rs256_public_key", "cannot read"),
        ("rs256_public_key = '{tmp}/junk.pem'", "auth.jwt.rs256_public_key", "not a PEM"),
        (f"hs256_secret = '{'s' * 32}'\nleeway = -1", "auth.jwt.leeway", "between 0 and 3600"),
        (f"hs256_secret = '{'s' * 32}'\naudience = ''", "auth.jwt.audience", "must not be empty"),
        (f"hs256_secret = '{'s' * 32}'\nacl_claim = 'groups'", "auth.jwt.acl_claim", "differ"),
        ("algorithm = 'HS256'", "auth.jwt.algorithm", "unknown key"),
    ],
)
def test_jwt_configuration_errors(tmp_path: Path, jwt: str, key: str, problem: str) -> None:
    (tmp_path / "rsa.pem").write_bytes(pem(RSA_KEY))
    (tmp_path / "ec.pem").write_bytes(pem(EC_KEY))
    (tmp_path / "junk.pem").write_text("junk")
    text = "[auth.jwt]\n" + jwt.replace("{tmp}", str(tmp_path)) + "\n"
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.loads(text, "gw.toml")
    assert info.value.key == key
    assert problem in info.value.problem


def test_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "small.pem").write_bytes(pem(small))
    with pytest.raises(config_mod.ConfigError, match="at least 2048 bits"):
        config_mod.loads(f"[auth.jwt]\nrs256_public_key = '{tmp_path}/small.pem'\n")
