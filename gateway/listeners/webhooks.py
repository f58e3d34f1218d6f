"""Webhook ingestion, sans-I/O: signatures, timestamps and idempotency keys.

No trio and no sockets here: a ``Webhook`` is built once from its
``WebhookConfig`` and its secret, and ``Webhook.check(headers, body)`` either
returns the request's idempotency key (or None) or raises ``WebhookError``
carrying the HTTP status and stable code to answer. Clocks are injected: the
wall clock (Unix seconds) judges signed timestamps, a monotonic clock ages the
remembered idempotency keys. The endpoint that publishes is
``http_api.receive_webhook``; docs/http.md ("Webhooks") describes the behaviour.

Every signature is an HMAC-SHA256 with the webhook's secret. Three schemes:

- ``HMACVerifier``: one header holding the signature of a signed payload, as
  GitHub's ``X-Hub-Signature-256: sha256=HEX`` of the body (preset "github"), or
  any header, format (``sha256={hex}``, ``{hex}``, ``{base64}``) and signed
  payload (``{body}``, ``{timestamp}.{body}``, ``v0:{timestamp}:{body}``) with an
  optional timestamp header (preset "custom");
- ``StripeVerifier``: ``Stripe-Signature: t=TIMESTAMP,v1=HEX[,v1=HEX...]`` over
  ``f"{t}.{body}"`` (preset "stripe");
- ``NoVerifier``: nothing to check (preset "none", which must be explicit).

Secrets and signatures never appear in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..config import ConfigError, WebhookConfig

Clock = Callable[[], float]

# The longest idempotency key accepted (Stripe's limit); longer ones are refused
# so that the remembered keys stay bounded in bytes, not only in number.
MAX_IDEMPOTENCY_KEY = 255
# Headers the gateway sets on every webhook message (config `headers` may not use them).
WEBHOOK_HEADER = "webhook"
IDEMPOTENCY_HEADER = "idempotency-key"
RESERVED_HEADERS = frozenset({WEBHOOK_HEADER, IDEMPOTENCY_HEADER})

GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
GITHUB_DELIVERY_HEADER = "X-GitHub-Delivery"
STRIPE_SIGNATURE_HEADER = "Stripe-Signature"
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_SIGNATURE_FORMAT = "{hex}"

_TIMESTAMP = re.compile(r"\d{1,15}")


class WebhookError(Exception):
    """A refused webhook request: the HTTP status, a stable code and a safe message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _bad_signature(message: str) -> WebhookError:
    return WebhookError(401, "bad_signature", message)


def hmac_sha256(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def github_signature(secret: bytes, body: bytes) -> str:
    """The value of GitHub's ``X-Hub-Signature-256`` header for ``body``."""
    return "sha256=" + hmac_sha256(secret, body).hex()


def stripe_signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The value of a ``Stripe-Signature`` header for ``body`` signed at ``timestamp``."""
    return f"t={timestamp},v1={hmac_sha256(secret, f'{timestamp}.'.encode() + body).hex()}"


def check_fresh(timestamp: int, now: float, tolerance: float) -> None:
    """Refuse a signed timestamp more than ``tolerance`` seconds from ``now``, either way."""
    skew = now - timestamp
    if skew > tolerance:
        raise WebhookError(
            401,
            "stale_timestamp",
            f"the signed timestamp is {skew:.0f} s old; the tolerance is {tolerance:g} s",
        )
    if -skew > tolerance:
        raise WebhookError(
            401,
            "stale_timestamp",
            f"the signed timestamp is {-skew:.0f} s in the future; "
            f"the tolerance is {tolerance:g} s",
        )


class Verifier(Protocol):
    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Return if the request is authentic and fresh; raise WebhookError if not.

        ``headers`` has lower-case names (as h11 gives them); ``now`` is Unix time.
        """


class NoVerifier:
    """Preset "none": every request is accepted as it is."""

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        return None


@dataclass(frozen=True, slots=True)
class SignatureFormat:
    """A header value such as ``sha256={hex}``: literal text around one encoded digest."""

    prefix: str
    suffix: str
    encoding: Literal["hex", "base64"]

    @classmethod
    def parse(cls, template: str) -> SignatureFormat:
        found = [(name, template.count("{" + name + "}")) for name in ("hex", "base64")]
        used = [(name, count) for name, count in found if count]
        if len(used) != 1 or used[0][1] != 1:
            raise ValueError("must contain exactly one {hex} or {base64}")
        encoding: Literal["hex", "base64"] = "hex" if used[0][0] == "hex" else "base64"
        prefix, _, suffix = template.partition("{" + encoding + "}")
        return cls(prefix, suffix, encoding)

    def digest(self, value: str) -> bytes | None:
        """The raw digest a header value holds, None if it does not fit the format."""
        value = value.strip()
        if not value.startswith(self.prefix) or not value.endswith(self.suffix):
            return None
        encoded = value[len(self.prefix) : len(value) - len(self.suffix)]
        try:
            if self.encoding == "hex":
                return bytes.fromhex(encoded)
            return base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            return None

    def format(self, digest: bytes) -> str:
        encoded = digest.hex() if self.encoding == "hex" else base64.b64encode(digest).decode()
        return self.prefix + encoded + self.suffix


@dataclass(frozen=True, slots=True)
class SignedPayload:
    """What is signed: the body, with text and the timestamp around it (``{timestamp}.{body}``)."""

    template: str

    def __post_init__(self) -> None:
        if self.template.count("{body}") != 1:
            raise ValueError("must contain {body} exactly once")

    @property
    def has_timestamp(self) -> bool:
        return "{timestamp}" in self.template

    def render(self, body: bytes, timestamp: str = "") -> bytes:
        before, _, after = self.template.partition("{body}")
        before = before.replace("{timestamp}", timestamp)
        after = after.replace("{timestamp}", timestamp)
        return before.encode() + body + after.encode()


class HMACVerifier:
    """One header carrying HMAC-SHA256(secret, signed payload), optionally timestamped."""

    def __init__(
        self,
        secret: bytes,
        *,
        header: str,
        signature_format: SignatureFormat,
        signed_payload: SignedPayload = SignedPayload("{body}"),
        timestamp_header: str | None = None,
        tolerance: float = 300.0,
    ) -> None:
        if signed_payload.has_timestamp != (timestamp_header is not None):
            raise ValueError("a timestamp header needs {timestamp} in the signed payload")
        self._secret = secret
        self.header = header
        self.signature_format = signature_format
        self.signed_payload = signed_payload
        self.timestamp_header = timestamp_header
        self.tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = headers.get(self.header.lower())
        if value is None:
            raise _bad_signature(f"the {self.header} header is missing")
        given = self.signature_format.digest(value)
        if given is None:
            raise _bad_signature(f"the {self.header} header is malformed")
        stamp = ""
        if self.timestamp_header is not None:
            raw = headers.get(self.timestamp_header.lower())
            if raw is None:
                raise _bad_signature(f"the {self.timestamp_header} header is missing")
            stamp = raw.strip()
            if not _TIMESTAMP.fullmatch(stamp):
                raise _bad_signature(f"the {self.timestamp_header} header is not Unix seconds")
        expected = hmac_sha256(self._secret, self.signed_payload.render(body, stamp))
        if not hmac.compare_digest(expected, given):
            raise _bad_signature(f"the {self.header} signature does not match")
        if stamp:
            check_fresh(int(stamp), now, self.tolerance)


class StripeVerifier:
    """``Stripe-Signature: t=T,v1=HEX[,v1=HEX]``, HEX = HMAC-SHA256(secret, f"{t}.{body}")."""

    header = STRIPE_SIGNATURE_HEADER

    def __init__(self, secret: bytes, *, tolerance: float = 300.0) -> None:
        self._secret = secret
        self.tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        value = headers.get(self.header.lower())
        if value is None:
            raise _bad_signature(f"the {self.header} header is missing")
        stamp: str | None = None
        candidates: list[bytes] = []
        for item in value.split(","):
            key, sep, text = item.strip().partition("=")
            if not sep:
                continue
            if key == "t" and stamp is None:
                stamp = text
            elif key == "v1":
                try:
                    candidates.append(bytes.fromhex(text))
                except ValueError:
                    continue
        if stamp is None or not _TIMESTAMP.fullmatch(stamp):
            raise _bad_signature(f"the {self.header} header has no timestamp (t=)")
        if not candidates:
            raise _bad_signature(f"the {self.header} header has no v1 signature")
        expected = hmac_sha256(self._secret, stamp.encode() + b"." + body)
        matched = False
        for candidate in candidates:  # every one is compared: no early exit to time
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise _bad_signature(f"no {self.header} v1 signature matches")
        check_fresh(int(stamp), now, self.tolerance)


class Deduplicator:
    """Idempotency keys seen within ``window`` seconds, at most ``max_entries`` of them.

    Keys are remembered in arrival order, so the oldest are forgotten first, both
    when they age past the window and when the bound is reached (``evicted``
    counts the latter: a key evicted early can be published again).
    """

    def __init__(self, window: float, max_entries: int, clock: Clock = time.monotonic) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self.evicted = 0
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, (at, _) = next(iter(seen.items()))
            if now - at < self.window:
                break
            del seen[key]

    def lookup(self, key: str) -> str | None:
        """The id of the message published with ``key`` within the window, if any."""
        self._expire(self.clock())
        entry = self._seen.get(key)
        return None if entry is None else entry[1]

    def remember(self, key: str, message_id: str) -> None:
        now = self.clock()
        self._expire(now)
        self._seen.pop(key, None)
        self._seen[key] = (now, message_id)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1


@dataclass(slots=True, kw_only=True)
class Webhook:
    """One named webhook endpoint: how to verify it, where it goes, what it remembers."""

    name: str
    destination: str
    verifier: Verifier
    dedupe: Deduplicator
    idempotency_header: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    wall_clock: Clock = field(default=time.time)

    def check(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Verify the request; its idempotency key (None without one). Raises WebhookError."""
        self.verifier.verify(headers, body, self.wall_clock())
        if self.idempotency_header is None:
            return None
        key = headers.get(self.idempotency_header.lower(), "").strip()
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise WebhookError(
                400,
                "bad_header",
                f"{self.idempotency_header} is longer than {MAX_IDEMPOTENCY_KEY} characters",
            )
        return key or None

    def message_headers(
        self, given: Iterable[tuple[str, str]], key: str | None
    ) -> list[tuple[str, str]]:
        """The message's headers: the request's X-Msg-* ones, the configured ones, then
        ``webhook`` and ``idempotency-key``; a later source replaces an earlier name."""
        ours = [*self.headers, (WEBHOOK_HEADER, self.name)]
        if key is not None:
            ours.append((IDEMPOTENCY_HEADER, key))
        taken = {name.lower() for name, _ in ours}
        return [*((n, v) for n, v in given if n.lower() not in taken), *ours]


def idempotency_header(config: WebhookConfig) -> str | None:
    """The header carrying the idempotency key: configured, else the preset's; "" is off."""
    if config.idempotency_header is not None:
        return config.idempotency_header or None
    return GITHUB_DELIVERY_HEADER if config.preset == "github" else DEFAULT_IDEMPOTENCY_HEADER


def webhook_secret(config: WebhookConfig, environ: Mapping[str, str]) -> bytes:
    """The secret as bytes (UTF-8): ``secret``, or the ``secret_env`` variable's value."""
    if config.secret is not None:
        return config.secret.encode()
    assert config.secret_env is not None  # the configuration was validated
    value = environ.get(config.secret_env, "")
    if not value:
        raise ConfigError("<environment>", config.secret_env, "is not set or empty")
    return value.encode()


def make_verifier(config: WebhookConfig, environ: Mapping[str, str]) -> Verifier:
    if config.preset == "none":
        return NoVerifier()
    secret = webhook_secret(config, environ)
    tolerance = config.tolerance_seconds
    if config.preset == "stripe":
        return StripeVerifier(secret, tolerance=tolerance)
    if config.preset == "github":
        return HMACVerifier(
            secret,
            header=GITHUB_SIGNATURE_HEADER,
            signature_format=SignatureFormat.parse("sha256={hex}"),
        )
    assert config.signature_header is not None  # required for "custom" by validation
    template = config.signed_payload or (
        "{timestamp}.{body}" if config.timestamp_header else "{body}"
    )
    return HMACVerifier(
        secret,
        header=config.signature_header,
        signature_format=SignatureFormat.parse(config.signature_format or DEFAULT_SIGNATURE_FORMAT),
        signed_payload=SignedPayload(template),
        timestamp_header=config.timestamp_header,
        tolerance=tolerance,
    )


def build_webhook(
    config: WebhookConfig,
    environ: Mapping[str, str] | None = None,
    *,
    clock: Clock = time.monotonic,
    wall_clock: Clock = time.time,
) -> Webhook:
    return Webhook(
        name=config.name,
        destination=config.destination,
        verifier=make_verifier(config, os.environ if environ is None else environ),
        dedupe=Deduplicator(config.dedupe_window_seconds, config.dedupe_max, clock),
        idempotency_header=idempotency_header(config),
        headers=tuple(config.headers.items()),
        wall_clock=wall_clock,
    )


def build_webhooks(
    configs: Iterable[WebhookConfig], environ: Mapping[str, str] | None = None
) -> dict[str, Webhook]:
    """Every configured webhook by name; secrets from the environment are read now."""
    return {config.name: build_webhook(config, environ) for config in configs}
