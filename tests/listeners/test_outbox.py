"""The connection's output buffer: everything written is sent, in order, whenever written."""

from __future__ import annotations

import trio
import trio.testing

from gateway.listeners.outbox import Outbox


class SlowStream(trio.abc.SendStream):
    """Records what it is sent; each send_all takes a checkpoint, as a socket may."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(bytes(data))
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_writes_before_during_and_after_a_send_all_reach_the_stream_in_order() -> None:
    stream = SlowStream()
    outbox = Outbox()
    outbox.write(b"before-start;")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run, stream)
        await trio.testing.wait_all_tasks_blocked()
        assert b"".join(stream.sent) == b"before-start;"
        for round_ in range(5):
            # A burst: the first write wakes the writer, the others join the buffer.
            for i in range(3):
                outbox.write(b"%d.%d;" % (round_, i))
            if round_ % 2:
                # Yield once: the writer is now inside send_all with the burst taken.
                await trio.lowlevel.checkpoint()
                outbox.write(b"%d.late;" % round_)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.pending == 0
        outbox.write(b"last;")
        outbox.finish()
    expected = b"before-start;" + b"".join(
        b"%d.0;%d.1;%d.2;" % (r, r, r) + (b"%d.late;" % r if r % 2 else b"") for r in range(5)
    )
    assert b"".join(stream.sent) == expected + b"last;"
    assert outbox.written == len(expected) + len(b"last;")
