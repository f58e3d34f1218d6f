"""TLS for the listeners: contexts built from the configured files, reloaded when they
change, the server-side handshake's failure reasons, and the peer certificate's names.

``build_context`` checks every file itself (cryptography parses the chain, the key and
the CA bundle) so that an error names the file and the problem, then hands them to
``ssl``. ``TLSContextHolder`` keeps a listener's current context and replaces it when
the files change (checked at most once a second, as connections arrive) or on
``reload`` (SIGHUP); a failed reload logs why and keeps the previous context.
``_serve.TCPServer`` does the handshake, in each connection's own task.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..config import TLSConfig
from ..logging import get_logger

# How often, at most, the holder looks at the files' modification times.
CHECK_INTERVAL: Final = 1.0

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla's "intermediate" profile without
# DHE). TLS 1.3 suites are OpenSSL's, all of them AEAD.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"
# The largest certificate, key or CA file read (a CA bundle of a few hundred roots is ~250 KB).
MAX_FILE_SIZE: Final = 4 * 1024 * 1024


class TLSError(Exception):
    """A TLS file that cannot be used: ``field`` is ``cert``, ``key`` or ``ca``."""

    def __init__(self, field: str, path: str, problem: str) -> None:
        super().__init__(f"tls.{field}: {path}: {problem}")
        self.field = field
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Loaded:
    """A built context and what the log says about its certificate."""

    context: ssl.SSLContext
    subject: str
    not_after: datetime


def _read(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise TLSError(field, path, "no such file") from None
    except OSError as exc:
        raise TLSError(field, path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_SIZE:
        raise TLSError(field, path, f"larger than {MAX_FILE_SIZE} bytes")
    return data


def _public(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def build_context(tls: TLSConfig, *, alpn: tuple[str, ...] = ()) -> Loaded:
    """A server context for ``tls``; TLSError naming the file that cannot be used."""
    cert_pem = _read("cert", tls.cert)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSError("cert", tls.cert, "no PEM certificate in it") from None
    key_pem = _read("key", tls.key)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSError(
            "key", tls.key, "the key is encrypted (a passphrase is not supported)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError("key", tls.key, "no PEM private key in it") from None
    if _public(key.public_key()) != _public(chain[0].public_key()):
        raise TLSError(
            "key", tls.key, f"does not match the certificate (the first one in {tls.cert})"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(TLS12_CIPHERS)
    try:
        # A password (never used for the unencrypted key checked above) keeps OpenSSL
        # from prompting on the terminal if the file changed in between.
        ctx.load_cert_chain(tls.cert, tls.key, password=b"")
    except (ssl.SSLError, OSError) as exc:
        raise TLSError("cert", tls.cert, f"cannot load with {tls.key}: {exc}") from None
    if tls.ca is not None:
        try:
            x509.load_pem_x509_certificates(_read("ca", tls.ca))
        except ValueError:
            raise TLSError("ca", tls.ca, "no PEM certificate in it") from None
        try:
            ctx.load_verify_locations(cafile=tls.ca)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError("ca", tls.ca, f"cannot load: {exc}") from None
    ctx.verify_mode = _VERIFY[tls.client_certs]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return Loaded(ctx, chain[0].subject.rfc4514_string(), chain[0].not_valid_after_utc)


class TLSContextHolder:
    """A listener's current SSL context, rebuilt when its files change or on ``reload``."""

    def __init__(self, tls: TLSConfig, listener: str, *, alpn: tuple[str, ...] = ()) -> None:
        self.tls = tls
        self.alpn = alpn
        self.log = get_logger(listener=listener)
        self.check_interval = CHECK_INTERVAL
        self._stamp = self._files_stamp()
        loaded = build_context(tls, alpn=alpn)  # TLSError: the caller refuses to start
        self.context = loaded.context
        self._checked = time.monotonic()
        self._log_loaded("tls.loaded", loaded)

    def _files_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.tls.cert, self.tls.key, self.tls.ca):
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            stamps.append(None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _log_loaded(self, event: str, loaded: Loaded, **extra: Any) -> None:
        self.log.info(
            event,
            subject=loaded.subject,
            not_after=loaded.not_after.isoformat(),
            client_certs=self.tls.client_certs,
            min_version=self.tls.min_version,
            **extra,
        )
        if loaded.not_after < datetime.now(UTC):
            self.log.warning(
                "tls.certificate_expired",
                cert=self.tls.cert,
                not_after=loaded.not_after.isoformat(),
            )

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, rebuilt first if the files changed."""
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            stamp = self._files_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self.reload("files changed")
        return self.context

    def reload(self, reason: str = "requested") -> bool:
        """Build a new context from the files; on failure log it and keep the current one."""
        self._stamp = self._files_stamp()
        self._checked = time.monotonic()
        try:
            loaded = build_context(self.tls, alpn=self.alpn)
        except TLSError as exc:
            self.log.error(
                "tls.reload_failed",
                reason=reason,
                file=exc.path,
                error=exc.problem,
                kept="the previous certificate",
            )
            return False
        self.context = loaded.context
        self._log_loaded("tls.reloaded", loaded, reason=reason)
        return True


# -- the handshake ------------------------------------------------------------------------

_HTTP_METHODS: Final = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"PRI ")


def plain_text_guess(first: bytes) -> str | None:
    """None if ``first`` (the first bytes received) may start a TLS handshake, else what
    the peer seems to speak instead: "mqtt", "stomp", "http" or "unknown"."""
    if not first or first[0] == 0x16:  # a TLS handshake record
        return None
    if first[0] == 0x10:  # MQTT CONNECT
        return "mqtt"
    if first.lstrip(b"\r\n").startswith((b"CONNECT", b"STOMP")):
        return "stomp"
    if first.startswith(_HTTP_METHODS):
        return "http"
    return "unknown"


# OpenSSL's reason codes, as the operator would want to read them.
_REASONS: Final = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate (client_certs = 'required')",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client rejected the server certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client rejected the server certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS versions below the minimum",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common",
    "NO_SHARED_CIPHER": "no cipher in common",
    "HTTP_REQUEST": "plain text on a TLS port (http)",
    "WRONG_VERSION_NUMBER": "not a TLS handshake",
    "UNEXPECTED_EOF_WHILE_READING": "the client closed the connection during the handshake",
}


def handshake_failure(exc: BaseException) -> str:
    """Why a server handshake failed, from trio's BrokenResourceError (or its cause)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"client certificate not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLEOFError):
        return _REASONS["UNEXPECTED_EOF_WHILE_READING"]
    if isinstance(cause, ssl.SSLError):
        reason = getattr(cause, "reason", None) or ""
        if reason in _REASONS:
            return _REASONS[reason]
        return str(cause.args[1] if len(cause.args) > 1 else cause)
    if isinstance(cause, ConnectionError):
        return f"the client went away during the handshake ({type(cause).__name__})"
    return str(cause) or type(cause).__name__


# -- the peer's certificate ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a verified client certificate says: the auth layer maps it to a user."""

    subject: tuple[tuple[str, str], ...]
    common_name: str | None
    dns_names: tuple[str, ...]
    emails: tuple[str, ...]
    uris: tuple[str, ...]
    issuer_common_name: str | None
    serial: str
    sha256: str  # the DER certificate's fingerprint, lowercase hex


def _names(rdns: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(value)) for rdn in rdns or () for name, value in rdn)


def peer_identity(cert: dict[str, Any], der: bytes) -> PeerIdentity:
    """The names in ``cert`` (``SSLSocket.getpeercert()``) and the DER form's fingerprint."""
    subject = _names(cert.get("subject"))
    issuer = _names(cert.get("issuer"))
    alt: list[tuple[str, str]] = [(str(k), str(v)) for k, v in cert.get("subjectAltName", ())]

    def first(pairs: tuple[tuple[str, str], ...], name: str) -> str | None:
        return next((value for key, value in pairs if key == name), None)

    return PeerIdentity(
        subject=subject,
        common_name=first(subject, "commonName"),
        dns_names=tuple(v for k, v in alt if k == "DNS"),
        emails=tuple(v for k, v in alt if k == "email"),
        uris=tuple(v for k, v in alt if k == "URI"),
        issuer_common_name=first(issuer, "commonName"),
        serial=str(cert.get("serialNumber", "")),
        sha256=hashlib.sha256(der).hexdigest(),
    )
