"""Authentication on the wire: how each protocol asks ``gateway.auth.Authenticator``.

The authenticator decides (users, tokens, SASL, anonymous access) and writes the
audit log; this module only carries each protocol's credentials to it and maps
its answer back (docs/security.md, "Authentication per protocol"):

- MQTT: CONNECT user name and password, or none (anonymous); MQTT 5 enhanced
  authentication (an authentication method in CONNECT, AUTH exchanges, and
  re-authentication with AUTH 0x19).
- STOMP: CONNECT ``login``/``passcode``, or the gateway's SASL headers
  ``sasl-mechanism`` and ``sasl-response`` (base64). A mechanism with more steps
  (SCRAM) continues over new connections, since STOMP has one CONNECT and an
  ERROR ends the connection: the ERROR ``sasl-continue`` carries ``sasl-id`` and
  ``sasl-challenge``; the next CONNECT sends them back with the next response;
  CONNECTED carries the server's last message as ``sasl-final``.
- HTTP: ``Authorization: Basic`` and ``Bearer``, or none; for ``/api/`` requests
  and WebSocket upgrades.

A connection whose transport already authenticated the client (a WebSocket
upgrade that carried credentials) has ``Connection.identity`` set: its inner
CONNECT without credentials gets that identity instead of anonymous access.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import TYPE_CHECKING

import msgspec

from ..auth import (
    Authenticator,
    AuthError,
    AuthFailure,
    Challenge,
    Failure,
    Identity,
    SaslExchange,
    Success,
)
from ..codecs import mqtt
from ..codecs.mqtt import MQTTProtocolError, ReasonCode
from ..codecs.stomp import Frame, StompError
from ..config import Config, ConfigError
from ._serve import Connection, StartupError
from .http import HTTPError, Request

if TYPE_CHECKING:
    from ..core import Broker
    from .mqtt_session import MQTTSession

# MQTT 5 reason codes for each failure (3.1.1: BAD_USER_NAME_OR_PASSWORD is return
# code 4, everything else 5, see MQTTSession._refuse).
MQTT_REASONS = {
    AuthFailure.BAD_CREDENTIALS: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    AuthFailure.NOT_AUTHORIZED: ReasonCode.NOT_AUTHORIZED,
    AuthFailure.BAD_MECHANISM: ReasonCode.BAD_AUTHENTICATION_METHOD,
    AuthFailure.MALFORMED: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
}

# What an HTTP 401 offers: one header per scheme, since Chromium neither prompts for
# nor answers a Basic challenge that shares its header with another.
WWW_AUTHENTICATE: tuple[tuple[str, str], ...] = (
    ("WWW-Authenticate", 'Basic realm="gateway"'),
    ("WWW-Authenticate", "Bearer"),
)
# A script's request (the dashboard's) gets no Basic challenge: the browser would put
# its own password prompt over the page's sign-in form.
_SCRIPT_CHALLENGE: tuple[tuple[str, str], ...] = (("WWW-Authenticate", 'Bearer realm="gateway"'),)


def challenge(request: Request) -> tuple[tuple[str, str], ...]:
    """The WWW-Authenticate headers of a 401 to ``request``."""
    if (request.header("x-requested-with") or "").lower() == "xmlhttprequest":
        return _SCRIPT_CHALLENGE
    return WWW_AUTHENTICATE


def unauthorized(request: Request, message: str) -> HTTPError:
    """The 401 to ``request``: JSON error ``unauthorized`` with its WWW-Authenticate."""
    return HTTPError(401, "unauthorized", message, challenge(request))


def build_authenticator(config: Config) -> Authenticator:
    """The gateway's one authenticator; StartupError if a file it names cannot be used."""
    try:
        return Authenticator.from_config(config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None


def checks_credentials(auth: Authenticator) -> bool:
    """False when there is nothing to check credentials against (no users file, no JWT
    key): then credentials are ignored and the client is anonymous, as before
    authentication existed (and as Mosquitto does without a password file)."""
    return auth.store is not None or auth.jwt is not None


def cert_names(conn: Connection) -> tuple[str, ...]:
    """The verified client certificate's subject CN and SAN names (for EXTERNAL)."""
    ident = conn.peer_identity
    if ident is None:
        return ()
    names = [] if ident.common_name is None else [ident.common_name]
    names.extend(ident.dns_names)
    names.extend(ident.emails)
    names.extend(ident.uris)
    return tuple(names)


class ConnAuth:
    """What authenticating one connection needs: the authenticator and the peer."""

    __slots__ = (
        "admitted",
        "authenticator",
        "cert_names",
        "connack_data",
        "exchange",
        "method",
        "peer_host",
        "pending",
        "transport_identity",
    )

    def __init__(self, authenticator: Authenticator, conn: Connection) -> None:
        self.authenticator = authenticator
        self.peer_host = conn.ip
        self.cert_names = cert_names(conn)
        self.transport_identity: Identity | None = conn.identity
        # MQTT 5 enhanced authentication: the method, the exchange under way, the
        # CONNECT waiting for its end, the data its CONNACK carries.
        self.method: str | None = None
        self.exchange: SaslExchange | None = None
        self.pending: mqtt.Connect | None = None
        self.connack_data: bytes | None = None
        self.admitted = False

    def start(self, mechanism: str, client_id: str) -> SaslExchange:
        return self.authenticator.start(
            mechanism,
            peer_host=self.peer_host,
            peer_cert_names=self.cert_names,
            client_id=client_id,
        )

    def simple(self, user: str | None, password: bytes | None, client_id: str) -> Identity:
        """A user name and password, or none: the identity, or AuthError."""
        auth = self.authenticator
        if (user is not None or password is not None) and checks_credentials(auth):
            return auth.password(
                user, password or b"", peer_host=self.peer_host, client_id=client_id
            )
        if self.transport_identity is not None:
            return self.transport_identity
        return auth.anonymous(self.peer_host, client_id=client_id)


# -- MQTT -------------------------------------------------------------------------------


def mqtt_connect(session: MQTTSession, auth: ConnAuth, packet: mqtt.Connect) -> bool:
    """Authenticate a CONNECT. True: admitted (``session.identity`` set), go on with
    the CONNECT. False: refused (CONNACK sent) or an AUTH exchange goes on."""
    method = packet.properties.authentication_method
    if method is None:
        try:
            session.identity = auth.simple(packet.username, packet.password, packet.client_id)
        except AuthError as exc:
            session._refuse(MQTT_REASONS[exc.reason], f"authentication: {exc.reason}")
            return False
        auth.admitted = True
        return True
    auth.method = method
    auth.pending = packet
    auth.exchange = auth.start(method, packet.client_id)
    return _mqtt_step(session, auth, packet.properties.authentication_data or b"")


def _mqtt_step(session: MQTTSession, auth: ConnAuth, data: bytes) -> bool:
    """One step of the CONNECT's exchange: True once it succeeded."""
    assert auth.exchange is not None
    step = auth.exchange.step(data)
    if isinstance(step, Challenge):
        session.send(
            session.codec.send(_auth_packet(auth, ReasonCode.CONTINUE_AUTHENTICATION, step.data))
        )
        return False
    auth.exchange = None
    auth.pending = None
    if isinstance(step, Success):
        session.identity = step.identity
        auth.connack_data = step.data or None
        auth.admitted = True
        return True
    session._refuse(MQTT_REASONS[step.reason], f"authentication: {step.reason}")
    return False


def _auth_packet(auth: ConnAuth, reason: int, data: bytes) -> mqtt.Auth:
    return mqtt.Auth(
        reason_code=reason,
        properties=mqtt.Properties(
            authentication_method=auth.method, authentication_data=data or None
        ),
    )


def mqtt_connack_properties(auth: ConnAuth | None, props: mqtt.Properties) -> mqtt.Properties:
    """The CONNACK properties with the enhanced authentication's method and data."""
    if auth is None or auth.method is None:
        return props
    return msgspec.structs.replace(
        props, authentication_method=auth.method, authentication_data=auth.connack_data
    )


def mqtt_auth(session: MQTTSession, auth: ConnAuth | None, packet: mqtt.Auth) -> None:
    """An AUTH packet: the next step of the CONNECT's exchange, or a re-authentication
    (0x19) and its steps once connected. A failed re-authentication disconnects (0x87)."""
    if auth is None or auth.method is None:
        raise MQTTProtocolError("AUTH without an authentication method", ReasonCode.PROTOCOL_ERROR)
    data = packet.properties.authentication_data or b""
    code = packet.reason_code
    if auth.pending is not None:
        if code != ReasonCode.CONTINUE_AUTHENTICATION or auth.exchange is None:
            raise MQTTProtocolError(
                "AUTH during CONNECT must continue the authentication", ReasonCode.PROTOCOL_ERROR
            )
        pending = auth.pending
        if _mqtt_step(session, auth, data):
            session._on_connect(pending)
        return
    if not session.connected:
        raise MQTTProtocolError("AUTH after a refused CONNECT", ReasonCode.PROTOCOL_ERROR)
    if code == ReasonCode.RE_AUTHENTICATE:
        if auth.exchange is not None:
            raise MQTTProtocolError(
                "re-authentication already under way", ReasonCode.PROTOCOL_ERROR
            )
        auth.exchange = auth.start(auth.method, session.client_id)
    elif code != ReasonCode.CONTINUE_AUTHENTICATION or auth.exchange is None:
        raise MQTTProtocolError("AUTH out of order", ReasonCode.PROTOCOL_ERROR)
    step = auth.exchange.step(data)
    if isinstance(step, Challenge):
        session.send(
            session.codec.send(_auth_packet(auth, ReasonCode.CONTINUE_AUTHENTICATION, step.data))
        )
        return
    auth.exchange = None
    if isinstance(step, Success):
        previous = session.identity
        if previous is not None and previous.user != step.identity.user:
            session.log.warning(
                "mqtt.reauth.refused", reason="another user", user=step.identity.user
            )
            session.goodbye(ReasonCode.NOT_AUTHORIZED)
            session.stop("re-authentication as another user")
            return
        # The connection keeps the identity it connected with (its subscriptions were
        # authorized for it); re-authentication proves the client still holds it.
        session.send(session.codec.send(_auth_packet(auth, ReasonCode.SUCCESS, step.data)))
        session.log.info("mqtt.reauth.accepted", mechanism=auth.method)
        return
    assert isinstance(step, Failure)
    session.log.info("mqtt.reauth.failed", reason=str(step.reason))
    # DISCONNECT has no 0x86 (MQTT 5 table 3.14.2.1): not authorized says it.
    session.goodbye(ReasonCode.NOT_AUTHORIZED)
    session.stop("re-authentication failed")


def over_user_limit(broker: Broker, identity: object, client_id: str) -> bool:
    """Whether ``identity``'s user already holds its ``max_connections`` (users file)."""
    user = getattr(identity, "user", None)
    limit = getattr(getattr(identity, "limits", None), "max_connections", None)
    if not isinstance(user, str) or not isinstance(limit, int):
        return False
    return broker.user_connections(user, besides=client_id) >= limit


# -- STOMP ------------------------------------------------------------------------------


StompHeaders = tuple[tuple[str, str], ...]


def stomp_connect(auth: ConnAuth, frame: Frame, client_id: str) -> tuple[Identity, StompHeaders]:
    """The identity of a STOMP CONNECT and headers for its CONNECTED, or StompError:
    "authentication failed", or "sasl-continue" (a SASL challenge; the client
    connects again to answer it)."""
    mechanism = frame.get("sasl-mechanism")
    try:
        if mechanism:
            return _stomp_sasl(auth, mechanism, frame, client_id)
        login = frame.get("login")
        passcode = frame.get("passcode")
        identity = auth.simple(
            login if login is not None else None,
            None if passcode is None else passcode.encode(),
            client_id,
        )
        return identity, ()
    except AuthError as exc:
        raise StompError("authentication failed", str(exc.reason)) from None


class _PendingSasl:
    """SASL exchanges waiting for the client's next CONNECT: few, short-lived, and
    found only by an unguessable id."""

    TTL = 30.0
    LIMIT = 10_000

    def __init__(self) -> None:
        self._held: dict[str, tuple[SaslExchange, str, float]] = {}

    def keep(self, exchange: SaslExchange, mechanism: str) -> str:
        now = time.monotonic()
        if len(self._held) >= self.LIMIT:
            self._held = {k: v for k, v in self._held.items() if v[2] > now}
            while len(self._held) >= self.LIMIT:
                del self._held[next(iter(self._held))]
        sasl_id = secrets.token_urlsafe(18)
        self._held[sasl_id] = (exchange, mechanism, now + self.TTL)
        return sasl_id

    def take(self, sasl_id: str, mechanism: str) -> SaslExchange:
        held = self._held.pop(sasl_id, None)
        if held is None or held[2] < time.monotonic() or held[1] != mechanism:
            raise AuthError(AuthFailure.MALFORMED, "unknown or expired sasl-id")
        return held[0]


_pending = _PendingSasl()


def _stomp_sasl(
    auth: ConnAuth, mechanism: str, frame: Frame, client_id: str
) -> tuple[Identity, StompHeaders]:
    try:
        data = base64.b64decode(frame.get("sasl-response") or "", validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(AuthFailure.MALFORMED, "sasl-response is not base64") from None
    sasl_id = frame.get("sasl-id")
    if sasl_id is not None:
        exchange = _pending.take(sasl_id, mechanism)
    else:
        exchange = auth.start(mechanism, client_id)
    step = exchange.step(data)
    if isinstance(step, Success):
        final = (("sasl-final", base64.b64encode(step.data).decode()),) if step.data else ()
        return step.identity, final
    if isinstance(step, Challenge):
        continuation = _pending.keep(exchange, mechanism)
        raise StompError(
            "sasl-continue",
            "connect again with sasl-id and the next sasl-response",
            headers=(
                ("sasl-id", continuation),
                ("sasl-challenge", base64.b64encode(step.data).decode()),
            ),
        )
    raise AuthError(step.reason, step.detail)


# -- HTTP -------------------------------------------------------------------------------


def http_identity(auth: Authenticator, request: Request) -> Identity:
    """The identity of an HTTP request from its ``Authorization`` header, or AuthError."""
    host = request.conn.ip
    header = request.header("authorization")
    if header is None or not checks_credentials(auth):
        if request.conn.identity is not None:
            return request.conn.identity
        return auth.anonymous(host)
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return auth.bearer(value, peer_host=host)
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise AuthError(AuthFailure.MALFORMED, "Basic credentials are not base64") from None
        user, sep, password = decoded.partition(b":")
        if not sep:
            raise AuthError(AuthFailure.MALFORMED, "Basic credentials without ':'")
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthError(AuthFailure.MALFORMED, "the user name is not UTF-8") from None
        return auth.password(name, password, peer_host=host)
    raise AuthError(AuthFailure.BAD_MECHANISM, f"Authorization scheme {scheme!r}")
