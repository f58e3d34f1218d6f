"""Durability: the store interface the core persists through, and its implementations.

``base.Store`` is what the core needs persisted (queue contents, sessions,
retained messages); ``memory.MemoryStore`` is the in-memory reference
implementation (durability mode ``memory``); ``sqlite.SQLiteStore`` is the
embedded durable store (WAL, group commit off the Trio thread; import it from
``gateway.store.sqlite``: it needs the core, which needs this package). Nothing
above this package touches SQL. See docs/durability.md.
"""

from .base import SessionState, Snapshot, Store, StoredEntry
from .memory import MemoryStore

__all__ = ["MemoryStore", "SessionState", "Snapshot", "Store", "StoredEntry"]
