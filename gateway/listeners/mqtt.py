"""The MQTT listener: one reader and one writer per TCP connection.

The reader takes large chunks, decodes every complete packet in them and hands
each to the connection's ``MQTTSession``; all output goes through the
connection's ``Outbox``. The reader's cancel scope doubles as the connect and
keep-alive timer (1.5 times the keep-alive, spec 3.1.2.10). Before closing, an
MQTT 5 client is told why with a DISCONNECT reason code.
"""

from __future__ import annotations

import math
from enum import Enum, auto
from typing import Final

import trio

from ..auth import Authenticator
from ..codecs import mqtt
from ..codecs.mqtt import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    MQTTConnection,
    MQTTProtocolError,
    ReasonCode,
)
from ..config import ListenerConfig
from ..core import Broker, CloseReason
from ._serve import Connection, Handler, settle
from .authn import ConnAuth
from .limits import RATE_THROTTLED
from .mqtt_session import MQTTSession
from .outbox import Outbox

READ_SIZE = 65536
# How long a closing connection may take to flush what it still has to send.
CLOSE_TIMEOUT = 5.0

_STOP_REASONS = {
    CloseReason.TAKEN_OVER: ReasonCode.SESSION_TAKEN_OVER,
    CloseReason.SHUTDOWN: ReasonCode.SERVER_SHUTTING_DOWN,
    "shutdown": ReasonCode.SERVER_SHUTTING_DOWN,
    "kicked": ReasonCode.ADMINISTRATIVE_ACTION,  # the admin API (http_admin.KICKED)
}


def mqtt_handler(
    broker: Broker, config: ListenerConfig, auth: Authenticator | None = None
) -> Handler:
    async def handle(stream: trio.abc.Stream, conn: Connection) -> None:
        codec = MQTTConnection(max_packet_size=config.max_packet_size)
        outbox = Outbox()
        session = MQTTSession(
            broker, codec, outbox.write, conn.stop, config=config, writable=outbox.writable
        )
        session.log = conn.log
        session.traffic = conn
        if auth is not None:
            session.auth = ConnAuth(auth, conn)
        session.on_auth_failure = conn.auth_failed
        codec.on_plain_publish = session.publish_plain
        outbox.on_drain = session.resume
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run, stream, conn)
            try:
                await _read(stream, codec, session, conn, config)
            finally:
                reason = _STOP_REASONS.get(conn.stop_reason)
                if reason is not None:
                    # The acknowledgements already promised (waiting for the store's
                    # commit) go out before the DISCONNECT: after it a client reads nothing.
                    await settle(broker)
                    session.goodbye(reason)
                session.connection_ended()
                await settle(broker)
                outbox.finish()
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT

    return handle


async def _read(
    stream: trio.abc.Stream,
    codec: MQTTConnection,
    session: MQTTSession,
    conn: Connection,
    config: ListenerConfig,
) -> None:
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
            while (outcome := _handle_buffered(codec, session, conn)) is _Outcome.CONGESTED:
                timer.deadline = math.inf  # the client is not silent: we stopped listening
                await _wait_for_relief(session, config.backpressure_patience)
            if outcome is _Outcome.STOP:
                return
            limiter = session.limiter
            if limiter is not None and (pause := limiter.pause(session.clock())) > 0:
                # Over max_message_rate / max_byte_rate: stop reading until back within.
                conn.limited[RATE_THROTTLED] += 1
                timer.deadline = math.inf
                await trio.sleep(pause)
            if session.connected:
                conn.client_id = session.client_id  # for the admin API
                timer.deadline = (
                    trio.current_time() + 1.5 * session.keep_alive
                    if session.keep_alive
                    else math.inf
                )
    if timer.cancelled_caught and conn.stop_reason is None:
        if not session.connected:
            session.log.info("mqtt.connect.timeout", after=config.connect_timeout)
        else:
            session.log.info("mqtt.keep_alive.expired", keep_alive=session.keep_alive)
            session.goodbye(ReasonCode.KEEP_ALIVE_TIMEOUT)


class _Outcome(Enum):
    NEED_DATA = auto()
    CONGESTED = auto()
    STOP = auto()


# Enum members read through their class cost about 90 ns each on Python 3.11: the
# per-packet loop uses aliases.
_NEED_DATA_OUTCOME: Final = _Outcome.NEED_DATA
_CONGESTED: Final = _Outcome.CONGESTED
_STOP: Final = _Outcome.STOP
_CLOSED_STATE: Final = mqtt.State.CLOSED


def _handle_buffered(codec: MQTTConnection, session: MQTTSession, conn: Connection) -> _Outcome:
    """Handle every complete packet buffered, stopping early if a queue filled up."""
    try:
        while True:
            event = codec.next_event()
            if event is NEED_DATA:
                return _NEED_DATA_OUTCOME
            if event is PAUSED:  # a plain QoS 0 PUBLISH filled a queue (the hot path)
                return _STOP if conn.stop_reason is not None else _CONGESTED
            if event is CLOSED:
                session.log.info("mqtt.connection.eof", connected=session.connected)
                return _STOP
            session.handle(event)
            if conn.stop_reason is not None or codec.state is _CLOSED_STATE:
                return _STOP
            if session.congested:
                return _CONGESTED
    except MQTTProtocolError as exc:
        conn.protocol_error = str(exc)
        _refuse(exc, codec, session)
        return _STOP


async def _wait_for_relief(session: MQTTSession, patience: float) -> None:
    """Stop reading this publisher until the queues it filled drain (TCP backpressure).

    A queue that does not drain within ``patience`` seconds is marked stalled and no
    longer holds anyone back: its overflow policy takes over.
    """
    queues = [queue for queue in session.congested if queue.congested()]
    session.congested.clear()
    if not queues:
        return
    relieved = trio.Event()
    pending = len(queues)

    def one_relieved() -> None:
        nonlocal pending
        pending -= 1
        if pending <= 0:
            relieved.set()

    for queue in queues:
        queue.when_relieved(one_relieved)
    with trio.move_on_after(patience) as waiting:
        await relieved.wait()
    if waiting.cancelled_caught:
        stalled = [queue.name for queue in queues if queue.congested()]
        for queue in queues:
            if queue.congested():
                queue.mark_stalled()
        session.log.warning("mqtt.backpressure.gave_up", queues=stalled, after=patience)


def _refuse(exc: MQTTProtocolError, codec: MQTTConnection, session: MQTTSession) -> None:
    """Answer a protocol error as the spec says, log it once; the caller closes."""
    session.log.warning(
        "mqtt.protocol_error",
        error=str(exc),
        reason_code=int(exc.reason),
        connected=session.connected,
    )
    if codec.state is mqtt.State.AWAIT_CONNECT:
        # A CONNECT the server cannot accept is answered with a CONNACK code (3.1.4):
        # a 3.1.1 return code, or for MQTT 5 the reason code itself.
        if exc.protocol_level == 5:
            session.send(codec.send(mqtt.ConnAck(return_code=exc.reason)))
        elif exc.connack_code is not None:
            session.send(mqtt.encode_packet(mqtt.ConnAck(return_code=exc.connack_code)))
    else:
        session.goodbye(exc.reason)
