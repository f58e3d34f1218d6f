from __future__ import annotations

from gateway.core import Headers, header_pairs


def test_repeated_names_keep_every_pair_and_lookups_see_the_first() -> None:
    headers = Headers([("k", "v"), ("a", "1"), ("k", "v2")])
    assert headers["k"] == "v"
    assert dict(headers) == {"k": "v", "a": "1"}
    assert len(headers) == 2
    assert header_pairs(headers) == (("k", "v"), ("a", "1"), ("k", "v2"))
    assert header_pairs({"x": "y"}) == (("x", "y"),)
    assert headers == {"k": "v", "a": "1"}
