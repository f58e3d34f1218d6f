"""MQTT interoperability: the same scenarios against Mosquitto and the gateway, equal results.

The scenarios live in tests/e2e/mqtt_scenarios.py; each returns a normalised transcript of
what its clients observed. Mosquitto (a real 2.x server on 127.0.0.1:1883) is the reference.
"""

from __future__ import annotations

import pytest
import trio

from gateway.app import Gateway
from tests.conftest import upstream_reachable
from tests.e2e.mqtt_scenarios import SCENARIOS, cli_available

pytestmark = pytest.mark.upstream

MOSQUITTO = 1883
SCENARIO_TIMEOUT = 30


@pytest.fixture(autouse=True)
def _mosquitto() -> None:
    # Autouse, so it runs before the gateway fixture starts anything.
    upstream_reachable("127.0.0.1", MOSQUITTO)


def scenario_params() -> list[object]:
    marks = {
        "cli_clients": pytest.mark.skipif(
            not cli_available(), reason="mosquitto-clients is not installed"
        )
    }
    return [pytest.param(name, marks=marks.get(name, ()), id=name) for name in SCENARIOS]


@pytest.mark.parametrize("name", scenario_params())
async def test_gateway_matches_mosquitto(gateway: Gateway, name: str) -> None:
    scenario = SCENARIOS[name]
    with trio.fail_after(SCENARIO_TIMEOUT):
        expected = await scenario(MOSQUITTO)
    with trio.fail_after(SCENARIO_TIMEOUT):
        got = await scenario(gateway.port("mqtt"))
    assert got == expected


@pytest.mark.parametrize("name", scenario_params())
async def test_scenario_is_stable_on_mosquitto(name: str) -> None:
    # A scenario whose transcript changes from run to run against the reference server
    # would make the comparison above meaningless.
    scenario = SCENARIOS[name]
    with trio.fail_after(SCENARIO_TIMEOUT):
        first = await scenario(MOSQUITTO)
        second = await scenario(MOSQUITTO)
    assert first == second
