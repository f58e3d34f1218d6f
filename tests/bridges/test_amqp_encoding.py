"""The AMQP bridge's direct publish encoder writes the very bytes pamqp writes for the
same message (pamqp stays the reference: it decodes what RabbitMQ sends)."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from gateway.bridges import amqp_protocol as wire
from gateway.core import Message

NOW = 1_800_000_000.0
names = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=20)
texts = st.text(max_size=40)
short = st.text(max_size=60)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        destination=draw(st.sampled_from(["a/b", "orders"])),
        payload=draw(st.binary(max_size=3000)),
        headers=draw(st.dictionaries(names, texts, max_size=4)),
        qos=draw(st.integers(0, 2)),
        priority=draw(st.integers(0, 9)),
        expiry=draw(st.none() | st.floats(NOW - 10, NOW + 10**6)),
        content_type=draw(st.none() | short),
        correlation_id=draw(st.none() | st.binary(max_size=40)),
        reply_to=draw(st.none() | st.sampled_from(["$queue/replies", "a/b/c", "x", "$queue/", ""])),
        message_id=draw(st.integers(1, 2**62)),
        timestamp=draw(st.floats(0, 4 * 10**9)),
    )


@settings(max_examples=300, deadline=None)
@given(
    message=messages(),
    exchange=st.sampled_from(["", "amq.topic", "ex-1"]),
    key=short,
    mandatory=st.booleans(),
    frame_max=st.sampled_from([0, 4096, 131_072]),
)
def test_the_direct_encoder_writes_what_pamqp_writes(
    message: Message, exchange: str, key: str, mandatory: bool, frame_max: int
) -> None:
    origin = {"x-gateway-bridge": "up"}
    ours = wire.publish_frame(1, exchange, key, mandatory) + wire.publish_content(
        1, message, origin, NOW, frame_max
    )
    reference = wire.content(
        1,
        commands.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory),
        wire.properties_for(message, origin, NOW),
        message.payload,
        frame_max,
    )
    assert ours == reference


def test_a_short_string_over_255_bytes_is_refused() -> None:
    message = Message(destination="a", payload=b"", content_type="x" * 256)
    try:
        wire.publish_content(1, message, {}, NOW, 0)
    except wire.MappingError:
        return
    raise AssertionError("a 256-byte content type was encoded")
