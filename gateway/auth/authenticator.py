"""The one entry point the listeners call: passwords, tokens, SASL, anonymous.

Every decision is logged once, as ``auth.success`` or ``auth.failure`` with the
user, the mechanism, the peer and the client id (and on failure the reason and
a detail for the operator) — never a password, a token or a SASL message.

All methods are synchronous and cheap except a password check, which derives
SCRAM keys (PBKDF2, about a millisecond or two at 4096 iterations); the users
file is looked at (``UserStore.reload_if_changed``) at most once a second, on
the next authentication.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import rsa

from ..config import AuthConfig, Config, ConfigError
from ..logging import get_logger
from .identity import NO_LIMITS, AuthError, AuthFailure, Identity
from .sasl import (
    ALL_MECHANISMS,
    Challenge,
    ExternalExchange,
    Failure,
    PlainExchange,
    SaslExchange,
    SaslStep,
    ScramExchange,
    Success,
)
from .tokens import Claims, JwtVerifier, KeyFileError, TokenError, load_public_key, looks_like_jwt
from .users import SCRAM_MECHANISMS, Users, UserStore

_NO_USERS = Users()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for names."""
    host = host.strip("[]").partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _jwt_verifier(
    config: AuthConfig, source: str, environ: Mapping[str, str], clock: Callable[[], float]
) -> JwtVerifier | None:
    jwt = config.jwt
    if not jwt.enabled:
        return None
    secret = jwt.hs256_secret
    if jwt.hs256_secret_env is not None:
        secret = environ.get(jwt.hs256_secret_env) or None
        if secret is None:
            raise ConfigError(
                source,
                "auth.jwt.hs256_secret_env",
                f"environment variable {jwt.hs256_secret_env!r} is not set",
            )
    rs256 = es256 = None
    for field, alg in (("rs256_public_key", "RS256"), ("es256_public_key", "ES256")):
        path = getattr(jwt, field)
        if path is None:
            continue
        try:
            key = load_public_key(path, alg)
        except KeyFileError as exc:
            raise ConfigError(source, f"auth.jwt.{field}", f"{path}: {exc}") from None
        if isinstance(key, rsa.RSAPublicKey):
            rs256 = key
        else:
            es256 = key
    try:
        return JwtVerifier(
            hs256_secret=None if secret is None else secret.encode(),
            rs256_key=rs256,
            es256_key=es256,
            audience=jwt.audience,
            issuer=jwt.issuer,
            leeway=jwt.leeway,
            groups_claim=jwt.groups_claim,
            acl_claim=jwt.acl_claim,
            clock=clock,
        )
    except ValueError as exc:
        raise ConfigError(source, "auth.jwt.hs256_secret", str(exc)) from None


class Authenticator:
    """Decides who a client is. Build one per gateway (``from_config``) and share it.

    ``users`` is None without a users file (then only tokens and anonymous
    clients get in); ``clock`` is wall-clock time, for token expiry.
    """

    def __init__(
        self,
        config: AuthConfig,
        users: UserStore | None,
        *,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] = os.environ,
        source: str = "<config>",
    ) -> None:
        self.config = config
        self.store = users
        self.jwt = _jwt_verifier(config, source, environ, clock)
        self._log = get_logger()
        # Refused authentications per (mechanism, reason), for the metrics.
        self.failures: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_config(
        cls, config: Config, *, clock: Callable[[], float] = time.time
    ) -> Authenticator:
        """The authenticator of a loaded configuration; ConfigError (UsersFileError
        for the users file) if a file it names cannot be used."""
        auth = config.auth
        store = UserStore(auth.users_file) if auth.users_file is not None else None
        return cls(auth, store, clock=clock, source=config.source)

    # ---- what is offered ------------------------------------------------------------

    @property
    def users(self) -> Users:
        """The users in force, after a look at the file if a second has passed."""
        if self.store is None:
            return _NO_USERS
        self.store.reload_if_changed()
        return self.store.users

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms enabled, strongest first: SCRAM and PLAIN with a
        users file (PLAIN also with JWT: the token is the password), EXTERNAL
        when the users file maps certificate names. A listener without client
        certificates should leave EXTERNAL out of what it offers."""
        users = self.users
        enabled: set[str] = set()
        if self.store is not None:
            enabled.update(SCRAM_MECHANISMS)
            enabled.add("PLAIN")
            if users.has_certificates:
                enabled.add("EXTERNAL")
        if self.jwt is not None:
            enabled.add("PLAIN")
        return tuple(m for m in ALL_MECHANISMS if m in enabled)

    def log_startup(self) -> None:
        """Say at start who may connect (``auth.config``, and ``auth.anonymous``)."""
        mode = self.config.anonymous
        self._log.info(
            "auth.config",
            anonymous=mode,
            users_file=self.config.users_file,
            users=len(self.users.records),
            mechanisms=list(self.mechanisms()),
            jwt_algorithms=list(self.jwt.algorithms) if self.jwt else [],
        )
        if mode == "loopback":
            self._log.info(
                "auth.anonymous",
                message="anonymous clients are accepted from loopback addresses only "
                "(auth.anonymous = 'loopback'); others need credentials",
            )
        elif mode == "allow":
            self._log.warning(
                "auth.anonymous",
                message="anonymous clients are accepted from any address "
                "(auth.anonymous = 'allow')",
            )

    # ---- deciding -------------------------------------------------------------------

    def anonymous(self, peer_host: str, *, client_id: str = "") -> Identity:
        """A client that gave no credentials: admitted if ``auth.anonymous`` allows
        it from ``peer_host``, else AuthError(NOT_AUTHORIZED)."""
        mode = self.config.anonymous
        if mode == "allow" or (mode == "loopback" and is_loopback(peer_host)):
            identity = Identity(user=None, via="anonymous")
            self._success(identity, peer_host, client_id)
            return identity
        detail = "anonymous access is off" if mode == "deny" else "anonymous only from loopback"
        error = AuthError(AuthFailure.NOT_AUTHORIZED, detail)
        self._failure(error, None, "anonymous", peer_host, client_id)
        raise error

    def password(
        self, user: str | None, password: bytes, *, peer_host: str, client_id: str = ""
    ) -> Identity:
        """A user name and password (MQTT CONNECT, STOMP login/passcode, HTTP Basic).

        A password that looks like a JWT is tried as a token when ``user`` is
        empty or None (then it must be one) or equal to the token's ``sub``; a
        named user whose "token" does not verify is checked as a password.
        Raises AuthError(BAD_CREDENTIALS), the same for unknown users and wrong
        passwords.
        """
        user = user or None
        try:
            identity = self._check_password(user, password, via="password")
        except AuthError as exc:
            self._failure(exc, user, "password", peer_host, client_id)
            raise
        self._success(identity, peer_host, client_id)
        return identity

    def bearer(self, token: str, *, peer_host: str = "", client_id: str = "") -> Identity:
        """An HTTP ``Authorization: Bearer`` token; AuthError(BAD_CREDENTIALS) if bad."""
        try:
            if self.jwt is None:
                raise AuthError(AuthFailure.BAD_CREDENTIALS, "no JWT key is configured")
            identity = self._token_identity(self._verify(token))
        except AuthError as exc:
            self._failure(exc, None, "JWT", peer_host, client_id)
            raise
        self._success(identity, peer_host, client_id)
        return identity

    def start(
        self,
        mechanism: str,
        *,
        peer_host: str,
        peer_cert_names: tuple[str, ...] = (),
        client_id: str = "",
    ) -> SaslExchange:
        """A SASL exchange for ``mechanism``. ``peer_cert_names`` are the verified
        client certificate's subject CN and SAN values (for EXTERNAL). A mechanism
        that is not enabled gives an exchange whose first step is a
        Failure(BAD_MECHANISM), so a listener has one path."""
        inner: SaslExchange
        if mechanism not in self.mechanisms():
            inner = _Refused(mechanism)
        elif mechanism == "PLAIN":
            inner = PlainExchange(lambda user, pw: self._check_password(user, pw, via="PLAIN"))
        elif mechanism == "EXTERNAL":
            inner = ExternalExchange(self.users, peer_cert_names)
        else:
            inner = ScramExchange(mechanism, self.users)
        return _Audited(inner, self, peer_host, client_id)

    # ---- internals ------------------------------------------------------------------

    def _verify(self, token: str) -> Claims:
        assert self.jwt is not None
        try:
            return self.jwt.verify(token)
        except TokenError as exc:
            raise AuthError(AuthFailure.BAD_CREDENTIALS, f"token: {exc}") from None

    def _token_identity(self, claims: Claims) -> Identity:
        record = self.users.get(claims.subject)
        return Identity(
            user=claims.subject,
            groups=claims.groups,
            via="JWT",
            acl=claims.acl,
            limits=record.limits if record is not None else NO_LIMITS,
        )

    def _check_password(self, user: str | None, password: bytes, *, via: str) -> Identity:
        token_problem = ""
        if self.jwt is not None and password[:3] == b"eyJ":
            token = password.decode("ascii", errors="replace")
            if looks_like_jwt(token):
                try:
                    claims = self._verify(token)
                except AuthError as exc:
                    token_problem = exc.detail
                else:
                    if user is None or user == claims.subject:
                        return self._token_identity(claims)
                    token_problem = "token: its sub is not the user"
        if user is None:
            raise AuthError(AuthFailure.BAD_CREDENTIALS, token_problem or "no user name")
        users = self.users
        record = users.check_password(user, password)
        if record is None:
            known = users.get(user)
            detail = "unknown user" if known is None else "wrong password"
            raise AuthError(AuthFailure.BAD_CREDENTIALS, token_problem or detail)
        return record.identity(via)

    def _success(self, identity: Identity, peer: str, client_id: str) -> None:
        self._log.info(
            "auth.success",
            user=identity.user,
            groups=list(identity.groups),
            mechanism=identity.via,
            peer=peer,
            client_id=client_id,
        )

    def _failure(
        self, error: AuthError, user: str | None, mechanism: str, peer: str, client_id: str
    ) -> None:
        self.failures[mechanism, str(error.reason)] += 1
        self._log.warning(
            "auth.failure",
            user=user,
            mechanism=mechanism,
            peer=peer,
            client_id=client_id,
            reason=str(error.reason),
            detail=error.detail,
        )


class _Refused(SaslExchange):
    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.user = None

    def step(self, data: bytes) -> SaslStep:
        return Failure(AuthFailure.BAD_MECHANISM, f"mechanism {self.mechanism!r} is not enabled")


class _Audited(SaslExchange):
    """Logs the end of an exchange once."""

    def __init__(self, inner: SaslExchange, auth: Authenticator, peer: str, client_id: str) -> None:
        self.mechanism = inner.mechanism
        self.user = inner.user
        self._inner = inner
        self._auth = auth
        self._peer = peer
        self._client_id = client_id
        self._logged = False

    def step(self, data: bytes) -> SaslStep:
        result = self._inner.step(data)
        self.user = self._inner.user
        if self._logged or isinstance(result, Challenge):
            return result
        self._logged = True
        if isinstance(result, Success):
            self._auth._success(result.identity, self._peer, self._client_id)
        else:
            error = AuthError(result.reason, result.detail)
            self._auth._failure(error, self.user, self.mechanism, self._peer, self._client_id)
        return result
