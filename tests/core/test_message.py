from __future__ import annotations

import pytest

from gateway.core import Message


def test_messages_are_immutable_and_get_unique_increasing_ids() -> None:
    first = Message(destination="t", payload=b"a")
    second = Message(destination="t", payload=b"b")
    assert second.message_id > first.message_id
    with pytest.raises(AttributeError):
        first.payload = b"changed"  # type: ignore[misc]
    assert first.headers == {}
    assert not first.persistent
    assert Message(destination="t", payload=b"", qos=1).persistent


@pytest.mark.parametrize("fields", [{"priority": 10}, {"priority": -1}, {"qos": 3}])
def test_out_of_range_fields_are_refused(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Message(destination="t", payload=b"", **fields)  # type: ignore[arg-type]
