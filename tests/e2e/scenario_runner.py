"""Run interop scenarios twice against one server and say whether they are stable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

Scenario = Callable[[], Awaitable[list[Any]]]


async def check_stability(
    scenarios: Mapping[str, Scenario], names: Sequence[str], limit: float
) -> int:
    """Print each scenario's transcript; returns 1 if any differed between two runs."""
    status = 0
    for name in names or list(scenarios):
        start = trio.current_time()
        with trio.fail_after(limit):
            first = await scenarios[name]()
            second = await scenarios[name]()
        took = trio.current_time() - start
        stable = first == second
        status |= not stable
        print(f"{name}: {'stable' if stable else 'UNSTABLE'} ({took:.1f}s for two runs)")
        for step, observed in first:
            print(f"    {step}: {observed!r}")
        if not stable:
            for a, b in zip(first, second, strict=False):
                if a != b:
                    print(f"  ! {a!r}\n  ! {b!r}")
    return status
