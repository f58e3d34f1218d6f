"""HTTP <-> core message mapping, in one place (docs/http.md has the table).

| core            | HTTP request (publish)            | HTTP response / JSON message      |
|-----------------|-----------------------------------|-----------------------------------|
| payload         | the body                          | body / `payload` (+ `encoding`)   |
| content_type    | `Content-Type`                    | `Content-Type` / `content_type`   |
| text            | `text/*`, JSON, or `charset=`     | `payload` as text when it is      |
| qos             | `X-Msg-Persistent` (default true) | `persistent`                      |
| priority        | `X-Msg-Priority` (0-9)            | `X-Msg-Priority` / `priority`     |
| expiry          | `X-Msg-Expiry` (seconds from now) | `X-Msg-Expires-At` / `expires_at` |
| correlation_id  | `X-Msg-Correlation-Id`            | same / `correlation_id`           |
| reply_to        | `X-Msg-Reply-To`                  | same / `reply_to`                 |
| retain (topics) | `X-Msg-Retain`                    | `retain`                          |
| headers         | any other `X-Msg-NAME` -> `name`  | `X-Msg-NAME` / `headers`          |
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from typing import Any

from ..core import Headers, Kind, Message, Origin, header_pairs
from ..core.destinations import QUEUE_PREFIX
from ..core.message import is_utf8
from .http import HTTPError

PREFIX = "x-msg-"
STANDARD = frozenset(
    {"priority", "expiry", "correlation-id", "reply-to", "persistent", "retain", "expires-at"}
)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def is_text(content_type: str | None) -> bool:
    if content_type is None:
        return False
    lowered = content_type.lower()
    return (
        lowered.startswith("text/")
        or "json" in lowered.split(";")[0]
        or "charset=utf-8" in lowered.replace(" ", "")
    )


def _bool(name: str, value: str) -> bool:
    try:
        return _TRUE[value.strip().lower()]
    except KeyError:
        raise HTTPError(
            400, "bad_header", f"X-Msg-{name}: {value!r} is not true or false"
        ) from None


def _number(name: str, value: str, low: float, high: float | None) -> float:
    try:
        number = float(value)
    except ValueError:
        raise HTTPError(400, "bad_header", f"X-Msg-{name}: {value!r} is not a number") from None
    if number < low or (high is not None and number > high) or number != number:
        limit = f"{low:g}-{high:g}" if high is not None else f"at least {low:g}"
        raise HTTPError(400, "bad_header", f"X-Msg-{name}: {value!r} is out of range ({limit})")
    return number


def fields_from_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """Message fields from a request's (lower-cased) `X-Msg-*` headers and Content-Type."""
    fields: dict[str, Any] = {}
    custom: list[tuple[str, str]] = []
    for key, value in headers.items():
        if not key.startswith(PREFIX) or len(key) == len(PREFIX):
            continue
        name = key[len(PREFIX) :]
        if name not in STANDARD:
            custom.append((name, value))
        elif name == "priority":
            fields["priority"] = int(_number("Priority", value, 0, 9))
        elif name == "expiry":
            fields["expiry_in"] = _number("Expiry", value, 0, None)
        elif name == "correlation-id":
            fields["correlation_id"] = value
        elif name == "reply-to":
            fields["reply_to"] = value
        elif name == "persistent":
            fields["persistent"] = _bool("Persistent", value)
        elif name == "retain":
            fields["retain"] = _bool("Retain", value)
    if custom:
        fields["headers"] = custom
    content_type = headers.get("content-type")
    if content_type is not None:
        fields["content_type"] = content_type
    return fields


def build_message(
    kind: Kind,
    destination: str,
    payload: bytes,
    fields: Mapping[str, Any],
    origin: Origin,
    now: float | None = None,
) -> Message:
    """A core message; persistent (QoS 1) unless the caller says otherwise."""
    now = time.time() if now is None else now
    expiry_in = fields.get("expiry_in")
    correlation = fields.get("correlation_id")
    content_type = fields.get("content_type")
    custom = fields.get("headers")
    return Message(
        destination=destination,
        kind=kind,
        payload=payload,
        headers=Headers(custom) if custom else Headers(),
        qos=1 if fields.get("persistent", True) else 0,
        retain=bool(fields.get("retain", False)) and kind is Kind.TOPIC,
        priority=fields.get("priority", 4),
        expiry=None if not expiry_in else now + expiry_in,
        content_type=content_type,
        text=is_text(content_type) and is_utf8(payload),
        correlation_id=None if correlation is None else str(correlation).encode(),
        reply_to=fields.get("reply_to"),
        timestamp=now,
        origin=origin,
    )


def address(message: Message) -> str:
    """A message's destination in the neutral form (`$queue/NAME` or the topic)."""
    if message.kind is Kind.QUEUE:
        return QUEUE_PREFIX + message.destination
    return message.destination


def message_json(message: Message, **extra: Any) -> dict[str, Any]:
    """The JSON form of a message (SSE events, pulled messages)."""
    body: dict[str, Any] = {
        "message_id": str(message.message_id),
        **extra,
        "destination": address(message),
    }
    try:
        body["payload"] = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        body["payload"] = base64.b64encode(message.payload).decode("ascii")
        body["encoding"] = "base64"
    if message.content_type is not None:
        body["content_type"] = message.content_type
    if message.headers:
        first: dict[str, str] = {}
        for name, value in header_pairs(message.headers):
            first.setdefault(name, value)  # the first of a repeated name counts, as in the core
        body["headers"] = first
    if message.correlation_id is not None:
        body["correlation_id"] = message.correlation_id.decode("utf-8", "replace")
    if message.reply_to is not None:
        body["reply_to"] = message.reply_to
    body["priority"] = message.priority
    body["persistent"] = message.persistent
    if message.retain:
        body["retain"] = True
    if message.expiry is not None:
        body["expires_at"] = message.expiry
    body["timestamp"] = message.timestamp
    return body


def response_headers(message: Message) -> list[tuple[str, str]]:
    """`X-Msg-*` headers describing ``message`` when its payload is the response body."""
    headers = [
        ("X-Msg-Message-Id", str(message.message_id)),
        ("X-Msg-Destination", address(message)),
    ]
    if message.correlation_id is not None:
        correlation = message.correlation_id.decode("utf-8", "replace")
        if correlation.isprintable() and correlation.isascii():  # else HTTP cannot carry it
            headers.append(("X-Msg-Correlation-Id", correlation))
    if message.priority != 4:
        headers.append(("X-Msg-Priority", str(message.priority)))
    if message.expiry is not None:
        headers.append(("X-Msg-Expires-At", f"{message.expiry:.3f}"))
    emitted = {name.lower() for name, _ in headers}
    for name, value in header_pairs(message.headers):
        # Headers that HTTP cannot carry stay in the JSON forms only, and a header that
        # repeats a field given above (an MQTT `priority` user property) is not sent twice.
        if PREFIX + name.lower() in emitted:
            continue
        if _TOKEN.fullmatch(name) and value.isprintable() and value.isascii():
            headers.append((PREFIX + name, value))
    return headers
