"""WebSocket: the upgrade, and a trio stream that carries MQTT or STOMP over it.

``WebSocketStream`` turns WebSocket data messages into a byte stream and back,
so the MQTT and STOMP handlers run unchanged over it: packets split across
messages or several in one are reassembled by their own codecs. Pings are
answered; a close from the peer is the end of the stream. When the protocol
handler ends, the close code says why: 1000 normal (reason "timeout" when the
inner protocol's connect, keep-alive or heart-beat timer ran out), 1001 going
away (shutdown), 1002 protocol error or refused CONNECT (with the error as the
reason), 1003 a text frame where MQTT needs binary, 1007 invalid UTF-8, 1009 a
message over the size limit; malformed frames get wsproto's code (1002 mostly).
What arrived before a frame that broke the rules is handled and answered first.
After its close frame the server reads on, dropping everything, until the peer
answers the close (at most CLOSE_LINGER seconds), so that closing the socket
with unread input does not reset the connection under the close frame.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WSRequest
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..core import CloseReason as CoreCloseReason
from ._serve import Connection, Handler
from .http import HTTPError, Request

READ_SIZE = 65536
CLOSE_TIMEOUT = 5.0
# How long, after our close frame, the peer has to answer it before the socket is closed.
CLOSE_LINGER = 2.0
# The peer went away, or the WebSocket is already closing: nothing more to send.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError)

MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
PROTOCOL_OF = {name: "mqtt" for name in MQTT_SUBPROTOCOLS} | {
    name: "stomp" for name in STOMP_SUBPROTOCOLS
}


def choose_subprotocol(path_protocol: str | None, offered: list[str]) -> tuple[str, str | None]:
    """(inner protocol, subprotocol to answer) for a path and the client's offer.

    ``path_protocol`` is "mqtt" or "stomp" for the protocol paths, None for the
    path that chooses by subprotocol. Raises HTTPError 400 when nothing fits.
    """
    for name in offered:
        protocol = PROTOCOL_OF.get(name.lower())
        if protocol is not None and (path_protocol is None or protocol == path_protocol):
            return protocol, name
    if not offered and path_protocol is not None:
        return path_protocol, None  # no offer at all: the path says what is spoken
    wanted = (
        MQTT_SUBPROTOCOLS
        if path_protocol == "mqtt"
        else STOMP_SUBPROTOCOLS
        if path_protocol == "stomp"
        else MQTT_SUBPROTOCOLS + STOMP_SUBPROTOCOLS
    )
    raise HTTPError(
        400,
        "unsupported_subprotocol",
        f"offered {', '.join(offered) or 'no subprotocol'}; this path speaks {', '.join(wanted)}",
    )


def offered_subprotocols(request: Request) -> list[str]:
    header = request.header("sec-websocket-protocol") or ""
    return [item.strip() for item in header.split(",") if item.strip()]


def check_handshake(request: Request, allowed_origins: tuple[str, ...]) -> None:
    """Refuse a request that is not a WebSocket handshake we can accept (RFC 6455 4.2.1)."""
    if (request.header("upgrade") or "").lower() != "websocket":
        raise HTTPError(
            426,
            "upgrade_required",
            "this path is for WebSocket: send Upgrade: websocket",
            (("Upgrade", "websocket"),),
        )
    connection = {
        token.strip().lower() for token in (request.header("connection") or "").split(",")
    }
    if "upgrade" not in connection:
        raise HTTPError(400, "bad_upgrade", "a WebSocket handshake needs Connection: Upgrade")
    if request.header("sec-websocket-version") != "13":
        raise HTTPError(
            426,
            "bad_upgrade",
            "only WebSocket version 13 is spoken",
            (("Sec-WebSocket-Version", "13"),),
        )
    if not request.header("sec-websocket-key"):
        raise HTTPError(400, "bad_upgrade", "a WebSocket handshake needs Sec-WebSocket-Key")
    origin = request.header("origin")
    if allowed_origins and origin is not None and origin not in allowed_origins:
        raise HTTPError(403, "origin_not_allowed", f"origin {origin!r} is not allowed")


class WebSocketStream(trio.abc.Stream):
    """A byte stream over an accepted WebSocket connection."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        *,
        binary_only: bool,
        max_message: int,
        log_event: Callable[..., None],
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._binary_only = binary_only
        self._max_message = max_message
        self._log = log_event
        self._send_lock = trio.StrictFIFOLock()
        self._message_size = 0
        self._closed = False
        # True once wsproto could not parse the peer's frames: nothing more is parsed.
        self._unparseable = False
        # Set when the peer broke the WebSocket rules: the close code and reason.
        self.failure: tuple[int, str] | None = None
        # True if a read was cancelled: the handler's own timer, or a stop.
        self.read_cancelled = False

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket is closed")
        payload = bytes(data)
        if self._binary_only:
            frame = self._ws.send(BytesMessage(data=payload))
        else:
            # STOMP: text frames when the bytes are UTF-8 (what browsers' STOMP
            # clients expect), binary frames for binary bodies.
            try:
                frame = self._ws.send(TextMessage(data=payload.decode("utf-8")))
            except UnicodeDecodeError:
                frame = self._ws.send(BytesMessage(data=payload))
        await self._send(frame)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.close(CloseReason.NORMAL_CLOSURE)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next data bytes; b"" once the WebSocket closed or the peer broke a rule.

        What arrived before a frame that broke the rules is still handed over: the
        packets in it are handled (and answered) before the connection closes.
        """
        while True:
            if self._ended():
                return b""
            received = bytearray()
            for event in self._ws.events():
                if isinstance(event, BytesMessage | TextMessage):
                    if not self._take(event, received):
                        break
                elif isinstance(event, Ping):
                    await self._send(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await self._answer_close(event)
                    break
            if received:
                return bytes(received)
            if self._ended():
                return b""
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except trio.Cancelled:
                # The protocol handler's timer (connect, keep-alive, heart-beat) or a stop.
                self.read_cancelled = True
                raise
            if not data:
                self._closed = True
                return b""
            self._ws.receive_data(bytes(data))

    def _ended(self) -> bool:
        return self._closed or self.failure is not None

    def _take(self, event: BytesMessage | TextMessage, received: bytearray) -> bool:
        if self._binary_only and isinstance(event, TextMessage):
            self.failure = (CloseReason.UNSUPPORTED_DATA, "MQTT is carried in binary frames")
            return False
        chunk = event.data.encode("utf-8") if isinstance(event.data, str) else event.data
        self._message_size += len(chunk)
        if self._message_size > self._max_message:
            self.failure = (
                CloseReason.MESSAGE_TOO_BIG,
                f"a message over the limit of {self._max_message} bytes",
            )
            return False
        if event.message_finished:
            self._message_size = 0
        received += chunk
        return True

    async def _answer_close(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse (bad UTF-8, bad opcode, unmasked...)
            # as a close event while the connection is still open: we are the ones closing,
            # once the handler has flushed its answers to what came before.
            self.failure = (event.code, event.reason or "malformed frame")
            self._unparseable = True
            return
        self._log("ws.closed_by_peer", code=event.code, reason=event.reason)
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            with contextlib.suppress(*_GONE):
                await self._send(self._ws.send(event.response()))
        self._closed = True

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Send a close frame (once) with ``code`` and a reason cut to the 123-byte limit."""
        self._closed = True
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return
        short = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._send(self._ws.send(CloseConnection(code=code, reason=short or None)))
        except _GONE:
            pass

    async def wait_closed(self) -> None:
        """After our close frame, read (and drop) what the peer still sends until its own
        close frame or EOF, for at most CLOSE_LINGER seconds. Closing the socket with unread
        input would reset the connection, and the peer could lose our close frame."""
        with trio.move_on_after(CLOSE_LINGER):
            while self._ws.state is not ConnectionState.CLOSED:
                try:
                    data = await self._stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                if not self._unparseable:
                    self._ws.receive_data(bytes(data))
                    for _event in self._ws.events():
                        pass  # its close frame moves the state to CLOSED

    async def aclose(self) -> None:
        await self.close()
        await self._stream.aclose()


async def serve_websocket(
    stream: trio.abc.Stream,
    conn: Connection,
    request: Request,
    trailing: bytes,
    *,
    path_protocol: str | None,
    handlers: Mapping[str, Handler],
    max_message: int,
) -> None:
    """Accept the upgrade and run the chosen protocol's handler over it.

    Raises HTTPError (and nothing is sent) when the handshake cannot be accepted.
    """
    protocol, subprotocol = choose_subprotocol(path_protocol, offered_subprotocols(request))
    ws = WSConnection(ConnectionType.SERVER)
    try:
        # wsproto (and h11 under it) check the handshake again: a Host header, which
        # HTTP/1.0 may omit, as a host name...
        ws.initiate_upgrade_connection(request.raw_headers, request.path)
        events = list(ws.events())
    except (RemoteProtocolError, h11.ProtocolError, UnicodeError) as exc:
        raise HTTPError(400, "bad_upgrade", f"not a WebSocket handshake: {exc}") from None
    if not any(isinstance(event, WSRequest) for event in events):  # pragma: no cover
        raise HTTPError(400, "bad_upgrade", "not a WebSocket handshake")
    await stream.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
    if trailing:
        ws.receive_data(trailing)
    conn.log = conn.log.bind(protocol=protocol, transport="websocket", subprotocol=subprotocol)
    conn.log.info("ws.accepted", path=request.path, origin=request.header("origin"))
    wss = WebSocketStream(
        stream,
        ws,
        binary_only=protocol == "mqtt",
        max_message=max_message,
        log_event=conn.log.info,
    )
    try:
        await handlers[protocol](wss, conn)
    finally:
        with trio.CancelScope(shield=True):
            code, reason = close_code(wss, conn)
            await wss.close(code, reason)
    await wss.wait_closed()


# Sessions that refused their peer's CONNECT stop with these reasons (mqtt_session.py,
# stomp_session.py), after their CONNACK or ERROR frame: the close says why as well.
_REFUSED_CONNECT = {
    "connect refused": "CONNECT refused",
    "version": "no common STOMP version",
}
_SHUTDOWN = ("shutdown", CoreCloseReason.SHUTDOWN)


def close_code(wss: WebSocketStream, conn: Connection) -> tuple[int, str]:
    """The close code and reason once the protocol handler has ended (logged if refused)."""
    if wss.failure is not None:
        code, reason = wss.failure
        conn.log.warning("ws.refused", code=int(code), reason=reason)
        return code, reason
    if conn.protocol_error is not None:
        return CloseReason.PROTOCOL_ERROR, conn.protocol_error
    stop = conn.stop_reason
    if isinstance(stop, str) and stop in _REFUSED_CONNECT:
        return CloseReason.PROTOCOL_ERROR, _REFUSED_CONNECT[stop]
    if stop in _SHUTDOWN:
        return CloseReason.GOING_AWAY, "server shutting down"
    if stop is None and wss.read_cancelled:
        # The handler's own timer ran out (connect, keep-alive, heart-beat): an MQTT 5
        # client got DISCONNECT 0x8D, a STOMP client an ERROR frame.
        return CloseReason.NORMAL_CLOSURE, "timeout"
    return CloseReason.NORMAL_CLOSURE, ""
