"""SASL mechanisms as sans-I/O objects, shared by every protocol.

An exchange is fed the client's messages and answers each with a step::

    exchange = authenticator.start("SCRAM-SHA-256", peer_host=..., peer_cert_names=...)
    step = exchange.step(initial_response)       # b"" when the client sent none
    while isinstance(step, Challenge):
        send(step.data); step = exchange.step(receive())
    # Success(identity, data): send data (e.g. SCRAM's server-final) with the
    # protocol's success reply; Failure(reason, detail): refuse the client.

An exchange never raises for anything the client sent; after a Success or a
Failure any further step is a Failure. Build exchanges through
``Authenticator.start``, which also writes the audit log.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import scramp  # type: ignore[import-untyped]

from .identity import AuthError, AuthFailure, Identity
from .users import SCRAM_MECHANISMS, Users

# Strongest first, as a server lists them.
ALL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "EXTERNAL")
MAX_MESSAGE = 16 * 1024  # bytes; no mechanism here needs more


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` to the client and feed its answer to ``step``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated. ``data`` (maybe empty) goes to the client with the success."""

    identity: Identity
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Failure:
    """Refused: ``reason`` is for the client's reply, ``detail`` for the log."""

    reason: AuthFailure
    detail: str = ""


SaslStep = Challenge | Success | Failure


class SaslExchange(abc.ABC):
    """One authentication exchange of one mechanism."""

    mechanism: str
    user: str | None  # the user claimed or authenticated so far, for logs

    @abc.abstractmethod
    def step(self, data: bytes) -> SaslStep:
        """Feed the client's next message (b"" for an absent initial response)."""


class _Mechanism(SaslExchange):
    """Bounds messages, turns AuthError into Failure, and ends after the outcome."""

    def __init__(self) -> None:
        self.user = None
        self._over = False
        self._steps = 0

    def step(self, data: bytes) -> SaslStep:
        if self._over:
            return Failure(AuthFailure.MALFORMED, "the exchange is over")
        self._steps += 1
        if len(data) > MAX_MESSAGE:
            result: SaslStep = Failure(AuthFailure.MALFORMED, "message too long")
        else:
            try:
                result = self._step(data)
            except AuthError as exc:
                result = Failure(exc.reason, exc.detail)
        if not isinstance(result, Challenge):
            self._over = True
        return result

    @abc.abstractmethod
    def _step(self, data: bytes) -> SaslStep: ...


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(AuthFailure.MALFORMED, f"{what} is not UTF-8") from None


class PlainExchange(_Mechanism):
    """PLAIN (RFC 4616): ``authzid NUL authcid NUL password`` in one message.

    ``verify(user, password)`` returns the identity or raises AuthError; an
    authzid other than the user is refused (no acting for another user).
    """

    mechanism = "PLAIN"

    def __init__(self, verify: Callable[[str, bytes], Identity]) -> None:
        super().__init__()
        self._verify = verify

    def _step(self, data: bytes) -> SaslStep:
        if not data and self._steps == 1:
            return Challenge(b"")  # no initial response: ask for the message
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            return Failure(AuthFailure.MALFORMED, "expected authzid NUL authcid NUL password")
        authzid, user = _text(parts[0], "authzid"), _text(parts[1], "authcid")
        self.user = user
        if authzid and authzid != user:
            return Failure(AuthFailure.NOT_AUTHORIZED, "authzid differs from the user")
        return Success(self._verify(user, parts[2]))


class ScramExchange(_Mechanism):
    """SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, 7677) without channel binding,
    driven by scramp. An unknown user gets a decoy salt and fails at the proof,
    exactly as a wrong password does."""

    def __init__(self, mechanism: str, users: Users) -> None:
        super().__init__()
        if mechanism not in SCRAM_MECHANISMS:
            raise ValueError(f"not a SCRAM mechanism: {mechanism}")
        self.mechanism = mechanism
        self._users = users
        self._server = scramp.ScramMechanism(mechanism).make_server(self._credential)

    def _credential(self, user: str) -> tuple[bytes, bytes, bytes, int]:
        self.user = user
        credential = self._users.scram_credential(user, self.mechanism)
        return (
            credential.salt,
            credential.stored_key,
            credential.server_key,
            credential.iterations,
        )

    def _step(self, data: bytes) -> SaslStep:
        if self._steps == 1 and not data:
            return Challenge(b"")  # no initial response: ask for client-first
        client_first = self._server.stage is None
        text = _text(data, "the SCRAM message")
        try:
            if client_first:
                self._server.set_client_first(text)
                return Challenge(str(self._server.get_server_first()).encode())
            self._server.set_client_final(text)
            server_final = str(self._server.get_server_final()).encode()
        except scramp.ScramException as exc:
            if exc.server_error is not None and exc.server_error.value == "invalid-proof":
                return Failure(AuthFailure.BAD_CREDENTIALS, self._why())
            return Failure(AuthFailure.MALFORMED, f"bad SCRAM message: {exc}")
        record = self._users.get(self.user)
        if record is None or self.mechanism not in record.credentials:  # a decoy matched?
            return Failure(AuthFailure.BAD_CREDENTIALS, self._why())
        return Success(record.identity(self.mechanism), server_final)

    def _why(self) -> str:
        record = self._users.get(self.user)
        if record is None:
            return "unknown user"
        if self.mechanism not in record.credentials:
            return f"the user has no {self.mechanism} credential"
        return "wrong password"


class ExternalExchange(_Mechanism):
    """EXTERNAL (RFC 4422 appendix A): the TLS client certificate's subject CN or
    a SAN, as the listener read them, maps to a user through the users file. The
    client's message is an authzid: empty, or that same user."""

    mechanism = "EXTERNAL"

    def __init__(self, users: Users, cert_names: tuple[str, ...]) -> None:
        super().__init__()
        self._users = users
        self._names = cert_names

    def _step(self, data: bytes) -> SaslStep:
        authzid = _text(data, "authzid")
        self.user = authzid or None
        if not self._names:
            return Failure(AuthFailure.NOT_AUTHORIZED, "no client certificate")
        record = self._users.certificate_user(self._names)
        if record is None:
            return Failure(AuthFailure.NOT_AUTHORIZED, "the certificate maps to no user")
        if authzid and authzid != record.name:
            return Failure(AuthFailure.NOT_AUTHORIZED, "authzid is not the certificate's user")
        self.user = record.name
        return Success(record.identity(self.mechanism))
