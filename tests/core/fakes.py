"""Test doubles for the core's edges: a sink that records, a clock the test moves."""

from __future__ import annotations

from gateway.core import CloseReason, Delivery


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSink:
    """Records deliveries; ``open`` toggles writability like a connection's outbox."""

    def __init__(self, name: str = "sink") -> None:
        self.name = name
        self.got: list[tuple[Delivery, int]] = []
        self.open = True
        self.closed: CloseReason | None = None

    def deliver(self, delivery: Delivery, qos: int) -> None:
        self.got.append((delivery, qos))

    def writable(self) -> bool:
        return self.open

    def close(self, reason: CloseReason) -> None:
        self.closed = reason

    @property
    def payloads(self) -> list[bytes]:
        return [d.message.payload for d, _ in self.got]

    def take(self) -> list[Delivery]:
        got = [d for d, _ in self.got]
        self.got.clear()
        return got
