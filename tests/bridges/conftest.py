"""Helpers for driving one bridge kind's Upstream directly against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from gateway.bridges.base import Settle, Upstream
from gateway.core.message import Message

U = TypeVar("U", bound=Upstream)


@dataclass
class Received:
    rule: int
    subject: str
    message: Message
    settle: Settle


@dataclass
class RecordingLink:
    """A Link that records what the upstream reports; tests settle inbound messages
    themselves (``auto_settle`` settles each with that value at once)."""

    auto_settle: bool | None = None
    confirms: list[int] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)
    inbound: list[Received] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def confirmed(self, tag: int) -> None:
        self.confirms.append(tag)
        self._poke()

    def refused(self, tag: int, reason: str) -> None:
        self.refusals.append((tag, reason))
        self._poke()

    def received(self, rule: int, subject: str, message: Message, settle: Settle) -> None:
        self.inbound.append(Received(rule, subject, message, settle))
        if self.auto_settle is not None:
            settle(self.auto_settle)
        self._poke()

    async def wait_for(self, condition: object, seconds: float = 10.0) -> None:
        """Wait until ``condition()`` is true (re-checked after every report)."""
        assert callable(condition)
        with trio.fail_after(seconds):
            while not condition():
                await self.changed.wait()


@asynccontextmanager
async def running(
    upstream: U, *, open_within: float = 5.0, close_within: float = 5.0
) -> AsyncIterator[U]:
    """``upstream`` opened, with ``run`` in a task; on the way out the task is
    cancelled and the upstream closed, as the framework does. A single error (the
    test's own, or run's UpstreamError) comes out unwrapped from the task group."""
    try:
        with trio.fail_after(open_within):
            await upstream.open()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream.run)
                try:
                    yield upstream
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        with trio.fail_after(close_within):
            await upstream.close()
