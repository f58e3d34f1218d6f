"""The limits, sans I/O with a fake clock: token buckets, per-IP connection caps and
rates, the authentication throttle's growing delay, per-connection publish rates
and the subscription cap in the MQTT session (docs/security.md, "Limits")."""

from __future__ import annotations

import pytest

from gateway.codecs import mqtt
from gateway.codecs.mqtt import ReasonCode
from gateway.config import ConfigError, loads
from gateway.core import Broker
from gateway.listeners.limits import (
    CONNECTION_RATE_PER_IP,
    DEFAULT_CONNECTIONS_PER_IP,
    MAX_CONNECTIONS_PER_IP,
    MAX_SUBSCRIPTIONS,
    MESSAGE_RATE,
    AuthDelayPolicy,
    AuthThrottle,
    ConnectionLimiter,
    RateLimit,
    TokenBucket,
    peer_ip,
    rate_limit,
)
from tests.core.fakes import Clock
from tests.listeners.mqtt_harness import Client


def test_token_bucket_refuses_past_the_burst_and_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(1, 0.5)  # one token back after half a second at 2/s
    assert not bucket.take(1, 0.5)
    assert bucket.take(1, 100.0)
    assert bucket.tokens == pytest.approx(2.0)  # refilled to the burst, not beyond


def test_forced_takes_go_into_debt_and_say_how_long_to_wait() -> None:
    bucket = TokenBucket(rate=10.0, burst=10, now=0.0)
    for _ in range(30):
        bucket.force(1, 0.0)
    assert bucket.wait(0.0) == pytest.approx(2.0)  # 20 owed at 10/s
    assert bucket.wait(1.5) == pytest.approx(0.5)
    assert bucket.wait(2.0) == 0.0


def test_rate_limit_off_is_none_and_counts_messages_and_bytes() -> None:
    assert rate_limit(0, 0, 0.0) is None
    by_count = RateLimit(message_rate=2, byte_rate=0, now=0.0)
    assert by_count.admit(10_000, 0.0)
    assert by_count.admit(10_000, 0.0)
    assert not by_count.admit(1, 0.0)
    by_bytes = RateLimit(message_rate=0, byte_rate=100, now=0.0)
    assert by_bytes.admit(60, 0.0)
    assert not by_bytes.admit(60, 0.0)
    assert by_bytes.admit(60, 0.3)  # 40 + 30 refilled
    big = RateLimit(message_rate=0, byte_rate=100, now=0.0)
    assert big.admit(1000, 0.0)  # larger than a second's bytes: passes on a full bucket
    assert big.pause(0.0) == pytest.approx(9.0)  # and pays for it


def test_connection_limiter_caps_open_connections_per_ip() -> None:
    limiter = ConnectionLimiter(per_ip=2)
    assert limiter.admit("10.0.0.1", 0.0) is None
    assert limiter.admit("10.0.0.1", 0.0) is None
    assert limiter.admit("10.0.0.1", 0.0) == MAX_CONNECTIONS_PER_IP
    assert limiter.admit("10.0.0.2", 0.0) is None  # another address is not affected
    limiter.release("10.0.0.1")
    assert limiter.admit("10.0.0.1", 0.0) is None
    for _ in range(2):
        limiter.release("10.0.0.1")
    limiter.release("10.0.0.2")
    assert not limiter.open  # nothing kept for addresses with no connection


def test_connection_limiter_rate_per_ip_with_a_burst() -> None:
    limiter = ConnectionLimiter(per_ip=0, rate=1.0, burst=3)
    outcomes = [limiter.admit("10.0.0.1", 0.0) for _ in range(4)]
    assert outcomes == [None, None, None, CONNECTION_RATE_PER_IP]
    assert limiter.admit("10.0.0.2", 0.0) is None
    assert limiter.admit("10.0.0.1", 0.5) == CONNECTION_RATE_PER_IP
    assert limiter.admit("10.0.0.1", 1.0) is None


def test_auth_throttle_delay_grows_after_the_allowed_failures() -> None:
    throttle = AuthThrottle(AuthDelayPolicy(allowed=3, window=60, base=0.5, cap=4))
    ip = "192.0.2.7"
    now = 0.0
    delays = []
    for _ in range(8):
        delays.append(throttle.delay(ip, now))
        throttle.record_failure(ip, now)
        now += 1
    # Three free attempts, then 0.5 s doubling per failure, capped at 4 s.
    assert delays == [0, 0, 0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert throttle.delay("192.0.2.8", now) == 0  # per address
    assert throttle.failures == 8


def test_auth_throttle_forgets_after_the_window_and_on_success() -> None:
    throttle = AuthThrottle(AuthDelayPolicy(allowed=1, window=10, base=1, cap=30))
    for t in range(3):
        throttle.record_failure("a", float(t))
    assert throttle.delay("a", 3.0) == 4.0  # 1 s after the first, doubled twice
    assert throttle.delay("a", 12.5) == 0  # 10 s after the last failure
    throttle.record_failure("a", 20.0)
    throttle.record_failure("a", 21.0)
    assert throttle.delay("a", 21.0) == 2.0  # counted afresh
    throttle.record_success("a")
    assert throttle.delay("a", 21.0) == 0


def test_auth_throttle_off() -> None:
    throttle = AuthThrottle(AuthDelayPolicy(allowed=0))
    for _ in range(100):
        throttle.record_failure("a", 0.0)
    assert throttle.delay("a", 0.0) == 0


def test_peer_ip() -> None:
    assert peer_ip("127.0.0.1:5000") == "127.0.0.1"
    assert peer_ip("[::1]:5000") == "::1"
    assert peer_ip("?") == "?"


def test_limit_keys_are_checked() -> None:
    config = loads(
        '[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1:0"\n'
        "max_connections_per_ip = 5\nconnection_rate_per_ip = 2.5\nmax_message_rate = 10\n"
        "max_byte_rate = 1000\nmax_subscriptions = 3\nauth_failures_allowed = 2\n"
    )
    [listener] = config.listeners
    assert listener.max_connections_per_ip == 5
    assert listener.connection_rate_per_ip == 2.5
    assert listener.max_subscriptions == 3
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.max_message_rate"):
        loads('[[listeners]]\nprotocol = "mqtt"\nbind = "127.0.0.1:0"\nmax_message_rate = -1\n')


# -- the MQTT session ---------------------------------------------------------------


def _publish(c: Client, pid: int, qos: int = 1) -> None:
    c.send(mqtt.Publish(topic="t", payload=b"x", qos=qos, packet_id=pid if qos else None))


def test_mqtt5_publisher_over_the_message_rate_gets_quota_exceeded() -> None:
    clock = Clock()
    broker = Broker(clock=clock)
    c = Client(broker, clock, max_message_rate=2)
    assert c.connect("p", version=5).return_code == 0
    for pid in (1, 2, 3):
        _publish(c, pid)
    acks = c.received()
    assert [(a.packet_id, a.reason_code) for a in acks] == [  # type: ignore[union-attr]
        (1, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        (2, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        (3, ReasonCode.QUOTA_EXCEEDED),
    ]
    assert broker.stats.limited[MESSAGE_RATE] == 1
    assert broker.stats.published == 2
    clock.advance(1.0)
    _publish(c, 4, qos=2)
    [rec] = c.received()
    assert isinstance(rec, mqtt.PubRec)
    assert rec.reason_code < 0x80


@pytest.mark.parametrize(("version", "qos"), [(4, 1), (5, 0)])
def test_over_the_rate_without_a_refusal_the_listener_pauses_reading(
    version: int, qos: int
) -> None:
    """3.1.1 has no negative PUBACK and QoS 0 no acknowledgement at all: the message is
    taken and the connection's pause (the time it is over its rate) grows."""
    clock = Clock()
    broker = Broker(clock=clock)
    c = Client(broker, clock, max_message_rate=10)
    assert c.connect("p", version=version).return_code == 0
    for pid in range(1, 31):
        _publish(c, pid, qos=qos)
    assert broker.stats.published == 30
    limiter = c.session.limiter
    assert limiter is not None
    assert limiter.pause(clock()) == pytest.approx(2.0)
    assert broker.stats.limited[MESSAGE_RATE] == 0


def test_no_rate_limit_by_default() -> None:
    clock = Clock()
    c = Client(Broker(clock=clock), clock)
    assert c.session.limiter is None


@pytest.mark.parametrize(("version", "refused"), [(5, ReasonCode.QUOTA_EXCEEDED), (4, 0x80)])
def test_max_subscriptions_refuses_the_one_too_many(version: int, refused: int) -> None:
    clock = Clock()
    broker = Broker(clock=clock)
    c = Client(broker, clock, max_subscriptions=2)
    assert c.connect("s", version=version).return_code == 0
    c.send(mqtt.Subscribe(packet_id=1, subscriptions=(("a", 1), ("b", 1), ("c", 1))))
    [ack] = c.received()
    assert isinstance(ack, mqtt.SubAck)
    assert ack.return_codes == (1, 1, refused)
    # Subscribing again to a filter held replaces it: not one more.
    c.send(mqtt.Subscribe(packet_id=2, subscriptions=(("a", 0),)))
    [again] = c.received()
    assert again.return_codes == (0,)  # type: ignore[union-attr]
    assert broker.stats.limited[MAX_SUBSCRIPTIONS] == 1
    assert set(broker.sessions["s"].subscriptions) == {"a", "b"}


def test_refused_credentials_are_reported_to_the_throttle() -> None:
    clock = Clock()
    c = Client(Broker(clock=clock), clock)
    failures: list[bool] = []
    c.session.on_auth_failure = lambda: failures.append(True)
    ack = c.connect(
        "x", version=5, properties=mqtt.Properties(authentication_method="NOPE-NOT-KNOWN")
    )
    assert ack.return_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert failures == [True]
    c2 = Client(Broker(clock=clock), clock)
    c2.session.on_auth_failure = lambda: failures.append(False)
    assert c2.connect("", version=4, clean_start=False).return_code != 0  # not credentials
    assert failures == [True]


def test_default_per_ip_cap_spares_loopback_addresses() -> None:
    limiter = ConnectionLimiter(per_ip=None)
    for _ in range(DEFAULT_CONNECTIONS_PER_IP):
        assert limiter.admit("203.0.113.9", 0.0) is None
        assert limiter.admit("127.0.0.1", 0.0) is None
        assert limiter.admit("::1", 0.0) is None
    assert limiter.admit("203.0.113.9", 0.0) == MAX_CONNECTIONS_PER_IP
    assert limiter.admit("127.0.0.1", 0.0) is None
    assert limiter.admit("::1", 0.0) is None
    explicit = ConnectionLimiter(per_ip=1)
    assert explicit.admit("127.0.0.1", 0.0) is None
    assert explicit.admit("127.0.0.1", 0.0) == MAX_CONNECTIONS_PER_IP
