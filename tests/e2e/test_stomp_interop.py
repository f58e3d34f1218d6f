"""STOMP interoperability: the same scenarios against RabbitMQ's STOMP plugin and the gateway.

The scenarios live in tests/e2e/stomp_scenarios.py; each returns a normalised transcript of
what its clients observed (its module docstring lists the differences normalised away).
RabbitMQ (127.0.0.1:61613, guest/guest, the rabbitmq_stomp plugin) is the reference.
"""

from __future__ import annotations

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import upstream_reachable
from tests.e2e.stomp_scenarios import SCENARIOS

pytestmark = pytest.mark.upstream

HOST = "127.0.0.1"
RABBITMQ_STOMP = 61613
LOGIN = PASSCODE = "guest"
SCENARIO_TIMEOUT = 60


@pytest.fixture(autouse=True)
def _rabbitmq() -> None:
    # Autouse, so it runs before the gateway fixture starts anything.
    upstream_reachable(HOST, RABBITMQ_STOMP)


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_gateway_matches_rabbitmq(stomp_gateway: Gateway, name: str) -> None:
    scenario = SCENARIOS[name]
    with trio.fail_after(SCENARIO_TIMEOUT):
        expected = await scenario(HOST, RABBITMQ_STOMP, LOGIN, PASSCODE)
    with trio.fail_after(SCENARIO_TIMEOUT):
        got = await scenario(HOST, stomp_gateway.port("stomp"), LOGIN, PASSCODE)
    assert got == expected
