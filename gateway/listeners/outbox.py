"""A connection's outbound buffer and the single writer task that drains it.

Deliveries append encoded bytes without awaiting; the writer wakes when the
buffer is non-empty and sends everything gathered since in one ``send_all``,
so a burst of a thousand messages costs a handful of system calls.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..core.stats import Traffic

DEFAULT_HIGH_WATER = 1 << 20


class Outbox:
    __slots__ = (
        "_buf",
        "_finishing",
        "_wake",
        "_was_full",
        "high_water",
        "on_drain",
        "written",
    )

    def __init__(self, high_water: int = DEFAULT_HIGH_WATER) -> None:
        self.high_water = high_water
        # Called once the buffer has drained after it went past the high-water
        # mark, so that the core can send what it held back meanwhile.
        self.on_drain: Callable[[], None] | None = None
        self._was_full = False
        self.written = 0  # bytes handed to write() since the start
        self._buf = bytearray()
        self._wake = trio.Event()
        self._finishing = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def writable(self) -> bool:
        """False once the peer has fallen a high-water mark behind."""
        if len(self._buf) < self.high_water:
            return True
        self._was_full = True
        return False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        buf = self._buf
        if not buf:
            # Only the first write into an empty buffer wakes the writer: with bytes
            # already waiting it is awake, or sending and about to look again.
            self._wake.set()
        buf += data

    def finish(self) -> None:
        """Let the writer send what is buffered, then return."""
        self._finishing = True
        self._wake.set()

    async def run(self, stream: trio.abc.SendStream, traffic: Traffic | None = None) -> None:
        """Send what is written, in batches; ``traffic`` (the Connection) counts the bytes."""
        if traffic is None:
            traffic = Traffic()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._buf:
                data, self._buf = self._buf, bytearray()
                await stream.send_all(data)
                traffic.bytes_out += len(data)
                if self._was_full and self.on_drain is not None:
                    self._was_full = False
                    self.on_drain()
            if self._finishing:
                return
