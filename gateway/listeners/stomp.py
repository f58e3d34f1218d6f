"""The STOMP listener: one reader, one writer and one heart-beat sender per connection.

The reader decodes every complete frame of each chunk and hands it to the
connection's ``STOMPSession``. Its cancel scope is the connect deadline, then
the heart-beat deadline: a peer silent for twice the negotiated period is closed.
Errors are answered with an ERROR frame (``message`` header, explanation in the
body), logged once, and the connection is closed.
"""

from __future__ import annotations

import contextlib
import math

import trio

from ..auth import Authenticator
from ..codecs.stomp import CLOSED, NEED_DATA, Frame, STOMPConnection, StompError
from ..config import ListenerConfig
from ..core import Broker
from ._serve import Connection, Handler, settle
from .authn import ConnAuth
from .limits import RATE_THROTTLED, rate_limit
from .outbox import Outbox
from .stomp_session import STOMPSession

READ_SIZE = 65536
CLOSE_TIMEOUT = 5.0
# A peer may be this many heart-beat periods late before it is called silent.
HEARTBEAT_GRACE = 2.0


def stomp_handler(
    broker: Broker, config: ListenerConfig, auth: Authenticator | None = None
) -> Handler:
    async def handle(stream: trio.abc.Stream, conn: Connection) -> None:
        # No `host` demanded of 1.2 clients: stomp.js and others leave it out.
        codec = STOMPConnection(max_frame_size=config.max_packet_size, require_host=False)
        outbox = Outbox()
        session = STOMPSession(
            broker, codec, outbox.write, conn.stop, config=config, writable=outbox.writable
        )
        session.log = conn.log
        session.traffic = conn
        if auth is not None:
            session.auth = ConnAuth(auth, conn)
        outbox.on_drain = session.resume
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run, stream, conn)
            beating = trio.CancelScope()
            connected = trio.Event()
            session.on_connected = connected.set
            nursery.start_soon(_send_heartbeats, session, outbox, connected, beating)
            try:
                await _read(stream, codec, session, conn, config)
            finally:
                beating.cancel()
                if conn.stop_reason == "kicked":  # the admin API (http_admin.KICKED)
                    _kicked(codec, session)
                session.connection_ended()
                await settle(broker)
                outbox.finish()
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT

    return handle


async def _send_heartbeats(
    session: STOMPSession, outbox: Outbox, connected: trio.Event, scope: trio.CancelScope
) -> None:
    """Once CONNECTED is sent, write an EOL whenever a whole period passed with nothing
    else written. Checking at half-periods keeps any silence under one period."""
    with scope:
        await connected.wait()
        period = session.send_every
        if not period:
            return
        written = outbox.written
        quiet_since = trio.current_time()
        while True:
            await trio.sleep(period / 2)
            now = trio.current_time()
            if outbox.written != written:
                written = outbox.written
                quiet_since = now
            elif now - quiet_since >= period / 2:
                outbox.write(b"\n")
                written = outbox.written
                quiet_since = now


async def _read(
    stream: trio.abc.Stream,
    codec: STOMPConnection,
    session: STOMPSession,
    conn: Connection,
    config: ListenerConfig,
) -> None:
    # max_message_rate / max_byte_rate: SENDs over the rate are taken, and reading
    # pauses until the connection is back within (docs/security.md, "Limits").
    limiter = rate_limit(config.max_message_rate, config.max_byte_rate, trio.current_time())
    first = True
    with conn.reading() as timer:
        timer.deadline = trio.current_time() + config.connect_timeout
        while True:
            data = await stream.receive_some(READ_SIZE)
            conn.bytes_in += len(data)
            if first:
                first = False
                await conn.delay_first_read(timer, config.connect_timeout)
            codec.receive_data(data)
            try:
                while True:
                    event = codec.next_event()
                    if event is NEED_DATA:
                        break
                    if event is CLOSED:
                        session.log.info("stomp.connection.eof", connected=session.connected)
                        return
                    if isinstance(event, Frame):
                        if event.command == "SEND":
                            conn.messages_in += 1
                            if limiter is not None:
                                limiter.force(len(event.body), trio.current_time())
                        session.handle(event)
                        if conn.stop_reason is not None or session.graceful:
                            return
            except StompError as exc:
                conn.protocol_error = exc.message
                if exc.message == "authentication failed":
                    conn.auth_failed()
                _refuse(exc, codec, session)
                return
            if limiter is not None and (pause := limiter.pause(trio.current_time())) > 0:
                conn.limited[RATE_THROTTLED] += 1
                timer.deadline = math.inf
                await trio.sleep(pause)
            if session.connected:
                conn.client_id = session.origin.client_id  # the session id, for the admin API
                every = session.expect_every
                timer.deadline = (
                    trio.current_time() + HEARTBEAT_GRACE * every if every else math.inf
                )
    if timer.cancelled_caught and conn.stop_reason is None:
        if not session.connected:
            session.log.info("stomp.connect.timeout", after=config.connect_timeout)
        else:
            session.log.info("stomp.heartbeat.missed", period=session.expect_every)
            _refuse(
                StompError("heart-beat timeout", "no data within the heart-beat period"),
                codec,
                session,
            )


def _refuse(exc: StompError, codec: STOMPConnection, session: STOMPSession) -> None:
    """Send the ERROR frame for ``exc`` and log it once; the caller closes."""
    session.log.warning("stomp.protocol_error", error=exc.message, detail=exc.detail)
    with contextlib.suppress(ValueError):  # the session had ended: nothing more to send
        session.send(codec.send(exc.error_frame()))


def _kicked(codec: STOMPConnection, session: STOMPSession) -> None:
    """Tell a client an administrator closed its connection (the admin API's kick)."""
    with contextlib.suppress(ValueError):  # not connected: nothing to say
        session.send(codec.send(StompError("kicked by an administrator").error_frame()))
