"""How the store's rows hold what it keeps: messages, sessions and entries' extras as
msgpack, and a checksum (CRC-32) with each message, which ``load`` verifies."""

from __future__ import annotations

import zlib

import msgspec

from ..core.headers import Headers, header_pairs
from ..core.message import Kind, Message, Origin
from .base import SessionState, StoredSubscription


class _StoredMessage(msgspec.Struct, array_like=True, omit_defaults=True):
    destination: str
    payload: bytes
    kind: str
    headers: list[tuple[str, str]]
    qos: int
    retain: bool
    priority: int
    expiry: float | None
    content_type: str | None
    text: bool
    correlation_id: bytes | None
    reply_to: str | None
    message_id: int
    timestamp: float
    origin: tuple[str, str, str]


encode = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder(_StoredMessage).decode


def encode_message(message: Message) -> bytes:
    origin = message.origin
    return encode(
        _StoredMessage(
            destination=message.destination,
            payload=message.payload,
            kind=message.kind.value,
            headers=list(header_pairs(message.headers)),
            qos=message.qos,
            retain=message.retain,
            priority=message.priority,
            expiry=message.expiry,
            content_type=message.content_type,
            text=message.text,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
            timestamp=message.timestamp,
            origin=(origin.protocol, origin.listener, origin.client_id),
        )
    )


def decode_message(data: bytes) -> Message:
    s = _decode_message(data)
    protocol, listener, client_id = s.origin
    return Message(
        destination=s.destination,
        payload=s.payload,
        kind=Kind(s.kind),
        headers=Headers(s.headers) if s.headers else Headers(),
        qos=s.qos,
        retain=s.retain,
        priority=s.priority,
        expiry=s.expiry,
        content_type=s.content_type,
        text=s.text,
        correlation_id=s.correlation_id,
        reply_to=s.reply_to,
        message_id=s.message_id,
        timestamp=s.timestamp,
        origin=Origin(protocol=protocol, listener=listener, client_id=client_id),
    )


def with_crc(key: object, data: bytes) -> tuple[object, bytes, int]:
    """A row holding a message, with the checksum ``load`` verifies: SQLite checks
    its pages' structure (``quick_check``), not the bytes of the data in them."""
    return key, data, zlib.crc32(data)


class CorruptRow(Exception):
    pass


def checked(data: bytes, crc: int, key: object) -> bytes:
    if zlib.crc32(data) != crc:
        raise CorruptRow(f"the checksum of the stored message {key!r} does not match")
    return data


class _StoredSession(msgspec.Struct, array_like=True):
    expiry: float
    subscriptions: list[tuple[str, int, bool, bool, int, int | None]]
    # One per subscription, in the same order (absent in stores written before selectors).
    selectors: list[str | None] = []


def encode_session(state: SessionState) -> bytes:
    return encode(
        _StoredSession(
            expiry=state.expiry,
            subscriptions=[
                (
                    s.topic_filter,
                    s.qos,
                    s.no_local,
                    s.retain_as_published,
                    s.retain_handling,
                    s.subscription_id,
                )
                for s in state.subscriptions
            ],
            selectors=[s.selector for s in state.subscriptions],
        )
    )


_decode_session = msgspec.msgpack.Decoder(_StoredSession).decode


def decode_session_state(client_id: str, data: bytes) -> SessionState:
    s = _decode_session(data)
    selectors = s.selectors + [None] * (len(s.subscriptions) - len(s.selectors))
    return SessionState(
        client_id=client_id,
        expiry=s.expiry,
        subscriptions=tuple(
            StoredSubscription(
                topic_filter=f,
                qos=q,
                no_local=nl,
                retain_as_published=rap,
                retain_handling=rh,
                subscription_id=sid,
                selector=selector,
            )
            for (f, q, nl, rap, rh, sid), selector in zip(s.subscriptions, selectors, strict=True)
        ),
    )


decode_extra = msgspec.msgpack.Decoder(tuple[bool, list[int]]).decode
