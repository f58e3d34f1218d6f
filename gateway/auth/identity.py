"""Who a client is once authenticated, and the one error every way of failing raises.

Nothing here knows a wire protocol: a listener maps ``AuthFailure`` to its own
reply (MQTT reason code, STOMP ERROR frame, HTTP status).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec


class AuthFailure(enum.StrEnum):
    """Why authentication failed, as a listener needs to answer it.

    ``BAD_CREDENTIALS``: unknown user, wrong password, bad, expired or foreign
    token (MQTT 0x86 / 3.1.1 return code 4, HTTP 401). Unknown user and wrong
    password are deliberately the same failure.
    ``NOT_AUTHORIZED``: no credentials where they are required (anonymous
    refused), or a certificate that maps to no user (MQTT 0x87 / code 5, HTTP 401).
    ``BAD_MECHANISM``: a SASL mechanism that is unknown or not enabled (MQTT 0x8C).
    ``MALFORMED``: a SASL message that does not parse, or a step after the end.
    """

    BAD_CREDENTIALS = "bad-credentials"
    NOT_AUTHORIZED = "not-authorized"
    BAD_MECHANISM = "bad-mechanism"
    MALFORMED = "malformed"


class AuthError(Exception):
    """Authentication failed. ``reason`` is for the client; ``detail`` is for the
    log only (it may say "unknown user" where the client must not learn it) and
    never holds a secret."""

    def __init__(self, reason: AuthFailure, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail or str(reason)
        super().__init__(f"{reason}: {self.detail}")


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-user limits from the users file; None is "no limit of its own".

    Enforced by the listeners and the core, not here.
    """

    max_connections: int | None = None
    max_subscriptions: int | None = None
    publish_rate: float | None = None  # messages a second


NO_LIMITS = Limits()

AclRule = Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """An authenticated client (or an anonymous one).

    ``user`` is None for anonymous clients. ``via`` names how it authenticated:
    ``"anonymous"``, ``"password"`` (MQTT CONNECT, STOMP login/passcode),
    ``"JWT"`` (a bearer token, wherever it was given), or the SASL mechanism
    (``"PLAIN"``, ``"SCRAM-SHA-256"``, ``"SCRAM-SHA-512"``, ``"EXTERNAL"``).
    ``acl`` holds the rules a token carried in its ACL claim, opaque here and
    read by the ACL module: None when there was no such claim (then only the
    configured rules apply), a tuple (maybe empty) when there was.
    """

    user: str | None
    groups: tuple[str, ...] = ()
    via: str
    acl: tuple[AclRule, ...] | None = None
    limits: Limits = NO_LIMITS

    @property
    def anonymous(self) -> bool:
        return self.user is None
