from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    loaded = config.load(path)
    assert loaded.source == str(path)
    assert loaded.listeners


def test_default_file_matches_the_built_in_defaults() -> None:
    loaded = config.load(CONF / "gateway.toml")
    builtin = config.default()
    assert [(item.protocol, item.bind) for item in loaded.listeners] == [
        (item.protocol, item.bind) for item in builtin.listeners
    ]
    assert loaded.gateway == builtin.gateway


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[gateway]\nbogus = 1\n", "gateway.bogus", "unknown key"),
        (
            "[[listeners]]\nprotocol = 'mqtt'\nbind = 'x:1'\nport = 3\n",
            "listeners[0].port",
            "unknown key",
        ),
        ("[[listeners]]\nprotocol = 'mqtt'\n", "listeners[0].bind", "required key is missing"),
        ("[[listeners]]\nprotocol = 'mqtt'\nbind = 1883\n", "listeners[0].bind", "expected `str`"),
        ("[[listeners]]\nprotocol = 'mqtt'\nbind = 'nohost'\n", "listeners[0].bind", "HOST:PORT"),
        (
            "[[listeners]]\nprotocol = 'mqtt'\nbind = '1.2.3.4:70000'\n",
            "listeners[0].bind",
            "out of range",
        ),
        (
            "[[listeners]]\nprotocol = 'amqp'\nbind = 'a:1'\n",
            "listeners[0].protocol",
            "invalid enum",
        ),
        (
            "[[listeners]]\nprotocol = 'http'\nbind = 'a:1'\nmqtt_path = 'mqtt'\n",
            "listeners[0].mqtt_path",
            "must start with '/'",
        ),
        (
            "[[listeners]]\nprotocol = 'http'\nbind = 'a:1'\nws_path = '/mqtt'\n",
            "listeners[0].ws_path",
            "must differ",
        ),
        (
            "[[listeners]]\nprotocol = 'http'\nbind = 'a:1'\nstomp_path = '/api/stomp'\n",
            "listeners[0].stomp_path",
            "not be under /api/",
        ),
        (
            "[[listeners]]\nprotocol = 'http'\nbind = 'a:1'\nvisibility_timeout = 0\n",
            "listeners[0].visibility_timeout",
            "more than 0",
        ),
        ("[gateway]\ndrain_timeout = 'soon'\n", "gateway.drain_timeout", "expected `float`"),
        ("[gateway]\nlog_level = 'loud'\n", "gateway.log_level", "invalid enum"),
        (
            "[[listeners]]\nprotocol = 'mqtt'\nbind = 'a:1'\n" * 2,
            "listeners[1].name",
            "duplicate",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'kafka'\nurl = 'x://h'\n",
            "bridges[0].kind",
            "invalid enum",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'amqp'\nurl = 'amqp://h'\n" * 2,
            "bridges[1].name",
            "duplicate bridge name",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'amqp'\nurl = 'http://h'\n",
            "bridges[0].url",
            "scheme must be one of amqp, amqps",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'amqp'\nurl = 'amqp://h'\n"
            "[bridges.amqp]\nprefetch = -1\n",
            "bridges[0].amqp",
            "prefetch",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'amqp'\nurl = 'amqp://h'\n[bridges.mqtt]\nqos = 1\n",
            "bridges[0].mqtt",
            "a table for kind 'mqtt' on a 'amqp' bridge",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'amqp'\nurl = 'amqp://h'\n"
            "inbound = [{ from = 'queue:' }]\n",
            "bridges[0].inbound[0].from",
            "no queue name",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'mqtt'\nurl = 'mqtt://h'\n"
            "outbound = [{ match = '$queue/q', selector = 'a = 1' }]\n",
            "bridges[0].outbound[0].selector",
            "drained whole",
        ),
        (
            "[[bridges]]\nname = 'r'\nkind = 'redis'\nurl = 'redis://h'\nmax_in_flight = 0\n",
            "bridges[0].max_in_flight",
            "at least 1",
        ),
        (
            "[[routes]]\nmatch = 'a'\nforward_to_bridge = 'up'\n",
            "routes[0].forward_to_bridge",
            "bridge 'up' is not configured",
        ),
    ],
)
def test_errors_name_the_file_key_and_problem(text: str, key: str, problem: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "site.toml")
    assert info.value.source == "site.toml"
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"site.toml: {key}: ")


def test_invalid_toml_is_reported_with_the_file() -> None:
    with pytest.raises(config.ConfigError, match=r"^bad\.toml: invalid TOML"):
        config.loads("[gateway\n", "bad.toml")


def test_missing_file_is_reported() -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load("/nonexistent/gateway.toml")


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_parse_bind(bind: str, expected: tuple[str, int]) -> None:
    assert config.parse_bind(bind) == expected


def test_listen_option_replaces_only_that_protocols_listeners() -> None:
    base = config.loads("[[listeners]]\nprotocol = 'mqtt'\nbind = '0.0.0.0:1883'\n")
    changed = config.override(
        base,
        listen=[config.parse_listen("mqtt=127.0.0.1:0")],
        data_dir="/tmp/d",
        log_level="debug",
    )
    assert [(item.protocol, item.bind) for item in changed.listeners] == [("mqtt", "127.0.0.1:0")]
    assert changed.gateway.data_dir == "/tmp/d"
    assert changed.gateway.log_level == "debug"
    assert base.listeners[0].bind == "0.0.0.0:1883"  # frozen: the original is untouched


@pytest.mark.parametrize("spec", ["mqtt", "smtp=1.2.3.4:25", "mqtt=host"])
def test_bad_listen_option(spec: str) -> None:
    with pytest.raises(config.ConfigError, match="--listen"):
        config.parse_listen(spec)


def test_config_is_frozen() -> None:
    loaded = config.default()
    with pytest.raises(AttributeError):
        loaded.gateway.data_dir = "elsewhere"  # type: ignore[misc]


def test_queue_policies_reach_the_broker() -> None:
    from gateway.app import build_broker
    from gateway.core import Overflow

    loaded = config.loads(
        """
[gateway]
max_queued_messages = 7

[[queues]]
name = "orders"
max_length = 5
overflow = "reject-publish"
max_deliveries = 3
dead_letter = "orders.dlq"
ttl = "2m"
"""
    )
    broker = build_broker(loaded)
    policy = broker.declare_queue("orders").policy
    assert policy.max_length == 5
    assert policy.overflow is Overflow.REJECT_PUBLISH
    assert policy.max_deliveries == 3
    assert policy.dead_letter == "orders.dlq"
    assert policy.ttl == 120.0
    assert broker.session_queue_policy.max_length == 7


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[queues]]\nname = '$x'\n", "queues[0].name"),
        ("[[queues]]\nname = 'a'\n[[queues]]\nname = 'a'\n", "queues[1].name"),
        ("[[queues]]\nname = 'a'\nttl = 'soon'\n", "queues[0].ttl"),
        ("[[queues]]\nname = 'a'\nttl = -1\n", "queues[0].ttl"),
        ("[[queues]]\nname = 'a'\nmax_length = 0\n", "queues[0].max_length"),
        ("[[queues]]\nname = 'a'\ndead_letter = 'a'\n", "queues[0].dead_letter"),
        ("[[queues]]\nname = 'a'\noverflow = 'drop-tail'\n", "queues[0].overflow"),
    ],
)
def test_bad_queue_settings_name_the_key(text: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "q.toml")
    assert info.value.key == key
