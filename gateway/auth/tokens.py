"""JWT bearer tokens (RFC 7519, JWS compact form): HS256, RS256 and ES256.

Only algorithms with a configured key are accepted, each with its own key, so
``alg: none`` and algorithm confusion (an RSA public key used as an HMAC
secret) are refused by construction. ``exp`` is required; ``nbf`` is checked
when present; ``aud`` and ``iss`` must match when configured, and a token
naming an audience is refused when none is configured (RFC 7519 section 4.1.3).
``sub`` is the user; the groups and ACL claims are optional.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .identity import AclRule

MAX_TOKEN = 16 * 1024  # characters
MIN_HS256_SECRET = 32  # bytes (RFC 7518 section 3.2: at least the hash size)
MIN_RSA_BITS = 2048
_SEGMENT = r"[A-Za-z0-9_-]+"
_COMPACT = re.compile(rf"{_SEGMENT}\.{_SEGMENT}\.{_SEGMENT}")


class TokenError(Exception):
    """A token that is malformed, badly signed, expired or not for us. The
    message says which, never the token."""


class KeyFileError(Exception):
    """A configured public key file that cannot be used; the message says why."""


def looks_like_jwt(text: str) -> bool:
    """True for three base64url segments whose first decodes to a JSON object
    (every JWS header starts ``{"``, base64url ``eyJ``): a cheap test that a
    password is meant as a token."""
    return text.startswith("eyJ") and len(text) <= MAX_TOKEN and bool(_COMPACT.fullmatch(text))


def load_public_key(path: str | Path, alg: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The PEM public key for ``alg`` ("RS256": RSA of 2048 bits or more,
    "ES256": EC on P-256); KeyFileError otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read: {exc.strerror or exc}") from None
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise KeyFileError("not a PEM public key") from None
    if alg == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyFileError("RS256 needs an RSA public key")
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"the RSA key must have at least {MIN_RSA_BITS} bits")
        return key
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeyFileError("ES256 needs an EC public key on the P-256 curve")
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """What a verified token says."""

    subject: str
    groups: tuple[str, ...]
    acl: tuple[AclRule, ...] | None
    expires: float
    algorithm: str
    raw: Mapping[str, Any]


def _unb64url(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed token: bad base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise TokenError(f"malformed token: duplicate member {key!r}")
        result[key] = value
    return result


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            _unb64url(segment),
            object_pairs_hook=_no_duplicates,
            parse_constant=lambda name: _bad_constant(name, what),
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TokenError(f"malformed token: the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"malformed token: the {what} is not a JSON object")
    return value


def _bad_constant(name: str, what: str) -> None:
    raise TokenError(f"malformed token: {name} in the {what}")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(f"the {name} claim is not a number")
    return float(value)


class JwtVerifier:
    """Checks tokens against the configured keys and claims.

    ``clock`` returns the current time in seconds since the epoch.
    """

    def __init__(
        self,
        *,
        hs256_secret: bytes | None = None,
        rs256_key: rsa.RSAPublicKey | None = None,
        es256_key: ec.EllipticCurvePublicKey | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        groups_claim: str = "groups",
        acl_claim: str = "acl",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if hs256_secret is not None and len(hs256_secret) < MIN_HS256_SECRET:
            raise ValueError(f"the HS256 secret must be at least {MIN_HS256_SECRET} bytes")
        self._hs256_secret = hs256_secret
        self._rs256_key = rs256_key
        self._es256_key = es256_key
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.groups_claim = groups_claim
        self.acl_claim = acl_claim
        self._clock = clock

    @property
    def algorithms(self) -> tuple[str, ...]:
        keys = (
            ("HS256", self._hs256_secret),
            ("RS256", self._rs256_key),
            ("ES256", self._es256_key),
        )
        return tuple(alg for alg, key in keys if key is not None)

    def verify(self, token: str) -> Claims:
        """The token's claims, or TokenError saying what is wrong."""
        if len(token) > MAX_TOKEN or not _COMPACT.fullmatch(token):
            raise TokenError("malformed token: expected three base64url segments")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(header_b64, "header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenError("malformed token: no alg in the header")
        if "crit" in header:
            raise TokenError("the token has critical header parameters (crit)")
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        self._check_signature(alg, signing_input, _unb64url(signature_b64))
        claims = _json_object(payload_b64, "payload")
        return self._check_claims(alg, claims)

    def _check_signature(self, alg: str, signing_input: bytes, signature: bytes) -> None:
        if alg == "HS256" and self._hs256_secret is not None:
            expected = hmac.new(self._hs256_secret, signing_input, hashlib.sha256).digest()
            if not hmac.compare_digest(expected, signature):
                raise TokenError("bad signature")
            return
        try:
            if alg == "RS256" and self._rs256_key is not None:
                self._rs256_key.verify(
                    signature, signing_input, padding.PKCS1v15(), hashes.SHA256()
                )
                return
            if alg == "ES256" and self._es256_key is not None:
                if len(signature) != 64:  # JWS: r || s, 32 bytes each (RFC 7518 3.4)
                    raise TokenError("bad signature")
                r = int.from_bytes(signature[:32], "big")
                s = int.from_bytes(signature[32:], "big")
                der = encode_dss_signature(r, s)
                self._es256_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
                return
        except InvalidSignature:
            raise TokenError("bad signature") from None
        allowed = ", ".join(self.algorithms) or "none configured"
        raise TokenError(f"algorithm {alg!r} is not accepted (accepted: {allowed})")

    def _check_claims(self, alg: str, claims: dict[str, Any]) -> Claims:
        now = self._clock()
        expires = _number(claims, "exp")
        if expires is None:
            raise TokenError("the token has no exp claim")
        if now >= expires + self.leeway:
            raise TokenError("the token has expired")
        not_before = _number(claims, "nbf")
        if not_before is not None and now + self.leeway < not_before:
            raise TokenError("the token is not valid yet (nbf)")
        self._check_audience(claims.get("aud"))
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise TokenError("the token is from another issuer")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenError("the token has no sub claim")
        groups = claims.get(self.groups_claim, [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise TokenError(f"the {self.groups_claim} claim is not a list of names")
        acl: tuple[AclRule, ...] | None = None
        if self.acl_claim in claims:
            rules = claims[self.acl_claim]
            if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
                raise TokenError(f"the {self.acl_claim} claim is not a list of objects")
            acl = tuple(MappingProxyType(rule) for rule in rules)
        return Claims(
            subject=subject,
            groups=tuple(groups),
            acl=acl,
            expires=expires,
            algorithm=alg,
            raw=MappingProxyType(claims),
        )

    def _check_audience(self, aud: Any) -> None:
        if aud is None:
            if self.audience is not None:
                raise TokenError("the token has no aud claim")
            return
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise TokenError("the aud claim is not a string or a list of strings")
        if self.audience is None:
            raise TokenError("the token names an audience and auth.jwt.audience is not set")
        if self.audience not in audiences:
            raise TokenError("the token is for another audience")
