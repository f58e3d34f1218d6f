"""STOMP <-> core mapping: destinations and headers, in one place.

| core                 | STOMP                                   |
|----------------------|-----------------------------------------|
| queue `jobs`         | `/queue/jobs`                           |
| topic `a/b/c`        | `/topic/a.b.c`                          |
| filter `a/+/c`, `a/#`| `/topic/a.*.c`, `/topic/a.#`            |
| temporary queue      | `/temp-queue/NAME` (per connection)     |
| headers              | any header not listed below             |
| qos 1 / 0            | `persistent:true` / absent or false     |
| priority             | `priority` (0-9)                        |
| expiry               | `expires` (ms since the epoch; 0 never) |
| correlation_id       | `correlation-id`                        |
| reply_to             | `reply-to` (`$queue/N` <-> `/queue/N`,  |
|                      | topic `a/b` <-> `/topic/a.b`)           |
| content_type, text   | `content-type` (text/* is text)         |
"""

from __future__ import annotations

from ..codecs.stomp import Frame, StompError
from ..core import Headers, Kind, Message, Origin, header_pairs
from ..core.message import is_utf8

QUEUE = "/queue/"
TOPIC = "/topic/"
TEMP_QUEUE = "/temp-queue/"
PREFIXES = (QUEUE, TOPIC, TEMP_QUEUE)

# Headers with a meaning of their own: never copied into Message.headers.
STANDARD = frozenset(
    {
        "destination",
        "content-length",
        "content-type",
        "receipt",
        "transaction",
        "persistent",
        "priority",
        "expires",
        "correlation-id",
        "reply-to",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "x-delivery-count",
        "id",
    }
)


def parse_destination(destination: str) -> tuple[Kind, str]:
    """(kind, core name) for a STOMP destination; StompError naming the accepted prefixes."""
    for prefix in PREFIXES:
        if destination.startswith(prefix) and len(destination) > len(prefix):
            name = destination[len(prefix) :]
            if prefix == TOPIC:
                return Kind.TOPIC, name.replace(".", "/").replace("*", "+")
            return Kind.QUEUE, name
    raise StompError(
        "unknown destination",
        f"{destination!r}: destinations start with {', '.join(PREFIXES)}",
    )


def neutral_reply_to(reply_to: str) -> str:
    """A STOMP reply-to in the form every protocol shares: `$queue/NAME` or a topic name.

    MQTT responders publish to it as it is; anything that is not a STOMP queue or
    topic destination is kept verbatim."""
    if reply_to.startswith(QUEUE) and len(reply_to) > len(QUEUE):
        return "$queue/" + reply_to[len(QUEUE) :]
    if reply_to.startswith(TOPIC) and len(reply_to) > len(TOPIC):
        return reply_to[len(TOPIC) :].replace(".", "/")
    return reply_to


def stomp_reply_to(reply_to: str) -> str:
    """The STOMP destination for a neutral reply-to (the inverse of neutral_reply_to)."""
    if reply_to.startswith("$queue/"):
        return QUEUE + reply_to[len("$queue/") :]
    if reply_to.startswith("/"):
        return reply_to  # a STOMP destination of a kind we do not map: as it came
    return TOPIC + reply_to.replace("/", ".")


def stomp_destination(message: Message) -> str:
    if message.kind is Kind.QUEUE:
        return QUEUE + message.destination
    return TOPIC + message.destination.replace("/", ".")


def to_message(
    frame: Frame, kind: Kind, name: str, origin: Origin, now: float, reply_to: str | None
) -> Message:
    """A core message from a SEND frame whose destination is already resolved."""
    qos = 0
    priority = 4
    expiry = None
    content_type = None
    correlation = None
    custom: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in frame.headers:
        if key in seen:
            continue  # a repeated header: the first one counts
        seen.add(key)
        if key not in STANDARD:
            custom.append((key, value))
        elif key == "persistent":
            qos = 1 if value.lower() == "true" else 0
        elif key == "priority":
            priority = _int(value, "priority", 0, 9)
        elif key == "expires":
            ms = _int(value, "expires", 0, None)
            expiry = ms / 1000 if ms else None
        elif key == "content-type":
            content_type = value
        elif key == "correlation-id":
            correlation = value.encode()
    return Message(
        destination=name,
        kind=kind,
        payload=frame.body,
        headers=Headers(custom) if custom else Headers(),
        qos=qos,
        priority=priority,
        expiry=expiry,
        content_type=content_type,
        text=content_type is not None and content_type.startswith("text/") and is_utf8(frame.body),
        correlation_id=correlation,
        reply_to=None if reply_to is None else neutral_reply_to(reply_to),
        timestamp=now,
        origin=origin,
    )


def _int(value: str, name: str, low: int, high: int | None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise StompError(f"bad {name} header", f"{name}:{value} is not an integer") from None
    if number < low or (high is not None and number > high):
        raise StompError(f"bad {name} header", f"{name}:{value} is out of range")
    return number


def carriable(name: str, value: str, version: str) -> bool:
    """Whether STOMP ``version`` can carry this header intact: NUL ends a frame in every
    version, and 1.0 (no escapes) cannot carry LF, nor ':' in a name, nor a trailing CR."""
    if not name or "\x00" in name or "\x00" in value:
        return False
    if version == "1.2":
        return True
    if value.endswith("\r"):
        return False
    return version == "1.1" or (":" not in name and "\n" not in name and "\n" not in value)


def message_headers(message: Message, version: str = "1.2") -> list[tuple[str, str]]:
    """The headers a MESSAGE frame carries for ``message`` (after the delivery ones).

    A message header named like one of STOMP's own (``persistent``, ``reply-to``...)
    is left out rather than read as that field, and so is one the negotiated
    version cannot carry (docs/mapping.md)."""
    destination = stomp_destination(message)
    # A destination comes from clients too (an MQTT topic may hold LF, which 1.0 cannot carry).
    headers = (
        [("destination", destination)] if carriable("destination", destination, version) else []
    )
    if message.qos:
        headers.append(("persistent", "true"))
    if message.priority != 4:
        headers.append(("priority", str(message.priority)))
    if message.expiry is not None:
        headers.append(("expires", str(int(message.expiry * 1000))))
    # persistent, priority and expires are the gateway's own values; these come from clients.
    if message.correlation_id is not None:
        correlation = message.correlation_id.decode("utf-8", "replace")
        if carriable("correlation-id", correlation, version):
            headers.append(("correlation-id", correlation))
    if message.reply_to is not None:
        reply_to = stomp_reply_to(message.reply_to)
        if carriable("reply-to", reply_to, version):
            headers.append(("reply-to", reply_to))
    if message.content_type is not None and carriable(
        "content-type", message.content_type, version
    ):
        headers.append(("content-type", message.content_type))
    headers.extend(
        (name, value)
        for name, value in header_pairs(message.headers)
        if name not in STANDARD and carriable(name, value, version)
    )
    headers.append(("content-length", str(len(message.payload))))
    return headers
