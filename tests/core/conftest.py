from __future__ import annotations

import pytest

from gateway.core import Broker
from tests.core.fakes import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> Broker:
    return Broker(clock=clock)
