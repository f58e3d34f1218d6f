"""Message headers: a read-only mapping that remembers repeated names and their order.

MQTT 5 user properties may repeat a name and their order matters; STOMP frames
may repeat a header (the first one counts). Lookups see the first value of a
name; ``pairs`` gives every pair as received, so a message relayed from MQTT to
MQTT keeps its user properties exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping


class Headers(Mapping[str, str]):
    __slots__ = ("_map", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs: tuple[tuple[str, str], ...] = tuple(pairs)
        self._map: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        lookup = self._map
        if lookup is None:
            lookup = {}
            for name, value in self.pairs:
                lookup.setdefault(name, value)
            self._map = lookup
        return lookup

    def __getitem__(self, name: str) -> str:
        return self._lookup()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lookup())

    def __len__(self) -> int:
        return len(self._lookup())

    def __repr__(self) -> str:
        return f"Headers({list(self.pairs)!r})"


def header_pairs(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Every (name, value) pair of ``headers``, repeats included when it has them."""
    if isinstance(headers, Headers):
        return headers.pairs
    return tuple(headers.items())
