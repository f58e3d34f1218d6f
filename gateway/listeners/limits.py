"""Limits on what one client may take: connections, connection rate, authentication
attempts, message and byte rates, subscriptions (docs/security.md, "Limits").

Everything here is sans-I/O and takes the time as an argument, so that it can be
tested with a fake clock. The listeners hold the objects and turn their answers
into each protocol's own refusal; every refusal is counted in
``BrokerStats.limited`` (or ``TCPServer.limited``) under its reason.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

# Reasons, as logged (``listener.connection_refused``) and counted.
MAX_CONNECTIONS = "max_connections"
MAX_CONNECTIONS_PER_IP = "max_connections_per_ip"
CONNECTION_RATE_PER_IP = "connection_rate_per_ip"
MESSAGE_RATE = "message_rate"  # a publish refused (MQTT 5 QoS 1/2: 0x96)
RATE_THROTTLED = "rate_throttled"  # reading paused to keep a connection within its rates
MAX_SUBSCRIPTIONS = "max_subscriptions"
AUTH_DELAYED = "auth_delayed"  # an attempt answered late after repeated failures
AUTH_FAILURES = "auth_failures"

# Per-IP tables are pruned of idle entries once they hold this many addresses.
PRUNE_AT = 10_000
# max_connections_per_ip when it is not set: for every address but loopback ones.
DEFAULT_CONNECTIONS_PER_IP = 1000


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. ``take`` refuses what is
    not there; ``force`` takes it anyway (into debt), and ``wait`` says how long
    until the debt is paid: the way to slow a peer down rather than refuse it."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def available(self, cost: float, now: float) -> bool:
        self._refill(now)
        return self.tokens >= cost

    def take(self, cost: float, now: float) -> bool:
        if self.available(cost, now):
            self.tokens -= cost
            return True
        return False

    def force(self, cost: float, now: float) -> None:
        self._refill(now)
        self.tokens -= cost

    def wait(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 when it is not in debt)."""
        self._refill(now)
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class RateLimit:
    """A connection's message and byte rates (``max_message_rate``, ``max_byte_rate``),
    each with one second's worth as the burst. Either rate may be 0 (off)."""

    __slots__ = ("bytes", "messages")

    def __init__(self, message_rate: float, byte_rate: float, now: float) -> None:
        self.messages = TokenBucket(message_rate, message_rate, now) if message_rate else None
        self.bytes = TokenBucket(byte_rate, byte_rate, now) if byte_rate else None

    def admit(self, size: int, now: float) -> bool:
        """Take one message of ``size`` bytes if both rates allow it; False (nothing
        taken) if either is exhausted: the caller refuses the message."""
        messages, nbytes = self.messages, self.bytes
        if messages is not None and not messages.available(1, now):
            return False
        # A message larger than a whole second's bytes passes once the bucket is full.
        if nbytes is not None and not nbytes.available(min(size, nbytes.burst), now):
            return False
        if messages is not None:
            messages.tokens -= 1
        if nbytes is not None:
            nbytes.tokens -= size
        return True

    def force(self, size: int, now: float) -> None:
        """Take one message of ``size`` bytes, into debt if need be: the caller
        pauses reading for ``pause(now)`` seconds afterwards."""
        if self.messages is not None:
            self.messages.force(1, now)
        if self.bytes is not None:
            self.bytes.force(size, now)

    def pause(self, now: float) -> float:
        """How long to stop reading so that the connection is back within its rates."""
        wait = 0.0
        if self.messages is not None:
            wait = self.messages.wait(now)
        if self.bytes is not None:
            wait = max(wait, self.bytes.wait(now))
        return wait


def rate_limit(message_rate: float, byte_rate: float, now: float) -> RateLimit | None:
    """A ``RateLimit``, or None when both rates are off (the hot path checks for None)."""
    if not message_rate and not byte_rate:
        return None
    return RateLimit(message_rate, byte_rate, now)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class ConnectionLimiter:
    """One listener's per-IP connection count and rate, checked at accept.

    ``per_ip`` None is the default: ``DEFAULT_CONNECTIONS_PER_IP`` for every address
    but loopback ones (load generators, local proxies, tests); a number applies to
    every address, 0 to none. ``admit`` returns None (accepted: the caller must
    ``release`` the address when the connection ends) or the reason it is refused.
    """

    def __init__(self, per_ip: int | None, rate: float = 0.0, burst: int = 0) -> None:
        self.per_ip = DEFAULT_CONNECTIONS_PER_IP if per_ip is None else per_ip
        self.loopback_exempt = per_ip is None
        self.rate = rate
        self.burst = float(burst) if burst else max(rate, 1.0)
        self.open: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, ip: str, now: float) -> str | None:
        per_ip = self.per_ip
        over = per_ip and self.open[ip] >= per_ip
        if over and not (self.loopback_exempt and _loopback(ip)):
            return MAX_CONNECTIONS_PER_IP
        if self.rate:
            bucket = self._buckets.get(ip)
            if bucket is None:
                if len(self._buckets) >= PRUNE_AT:
                    self._prune(now)
                bucket = self._buckets[ip] = TokenBucket(self.rate, self.burst, now)
            if not bucket.take(1, now):
                return CONNECTION_RATE_PER_IP
        self.open[ip] += 1
        return None

    def release(self, ip: str) -> None:
        left = self.open[ip] - 1
        if left > 0:
            self.open[ip] = left
        else:
            del self.open[ip]

    def _prune(self, now: float) -> None:
        for ip in [ip for ip, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[ip]


@dataclass(frozen=True, slots=True)
class AuthDelayPolicy:
    """After ``allowed`` failures from one address within ``window`` seconds, each
    further attempt from it waits ``base * 2**k`` seconds (k = failures beyond
    ``allowed``, from 0), at most ``cap``, before it is answered. ``allowed`` = 0: off."""

    allowed: int = 5
    window: float = 60.0
    base: float = 1.0
    cap: float = 30.0


class _Failures:
    __slots__ = ("count", "last")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.last = now


class AuthThrottle:
    """Authentication failures per address, and the growing delay they earn.

    The listeners ask ``delay(ip, now)`` before answering a connection's
    authentication (CONNECT, STOMP CONNECT, an HTTP request with credentials) and
    sleep that long; whatever refuses credentials calls ``record_failure(ip, now)``;
    a success calls ``record_success(ip)``. A failure older than ``window`` seconds
    than the latest one is forgotten with the whole record.
    """

    def __init__(self, policy: AuthDelayPolicy) -> None:
        self.policy = policy
        self._failures: dict[str, _Failures] = {}
        self.delayed = 0  # attempts answered late
        self.failures = 0  # failures recorded

    @property
    def enabled(self) -> bool:
        return self.policy.allowed > 0

    def _current(self, ip: str, now: float) -> _Failures | None:
        record = self._failures.get(ip)
        if record is not None and now - record.last > self.policy.window:
            del self._failures[ip]
            return None
        return record

    def record_failure(self, ip: str, now: float) -> None:
        if not self.enabled:
            return
        self.failures += 1
        record = self._current(ip, now)
        if record is None:
            if len(self._failures) >= PRUNE_AT:
                self._prune(now)
            record = self._failures[ip] = _Failures(now)
        record.count += 1
        record.last = now

    def record_success(self, ip: str) -> None:
        self._failures.pop(ip, None)

    def delay(self, ip: str, now: float) -> float:
        """Seconds the next attempt from ``ip`` waits before its answer (0: none)."""
        if not self._failures:
            return 0.0
        record = self._current(ip, now)
        if record is None:
            return 0.0
        beyond = record.count - self.policy.allowed
        if beyond < 0:
            return 0.0
        policy = self.policy
        return min(policy.cap, policy.base * 2.0 ** min(beyond, 32))

    def _prune(self, now: float) -> None:
        window = self.policy.window
        for ip in [ip for ip, r in self._failures.items() if now - r.last > window]:
            del self._failures[ip]


def subscription_limit(identity: object, default: int) -> int:
    """Subscriptions a client may hold: its user's ``max_subscriptions`` (users file
    ``limits``) if its identity has one, else ``default`` (the listener's); 0 is no limit."""
    own = getattr(getattr(identity, "limits", None), "max_subscriptions", None)
    return int(own) if own is not None else default


def peer_ip(peer: str) -> str:
    """The address part of a ``Connection.peer`` ("1.2.3.4:5678", "[::1]:5678")."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    host, _, _ = peer.rpartition(":")
    return host or peer
