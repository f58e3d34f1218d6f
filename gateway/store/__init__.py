"""Durability: the store interface the core persists through, and its implementations.

``base.Store`` is what the core needs persisted (queue contents, sessions,
retained messages); ``memory.MemoryStore`` is the in-memory reference
implementation. The embedded SQLite store (WAL, group commit, off the Trio
thread) comes with the durability work. Nothing above this package touches SQL.
"""

from .base import SessionState, Snapshot, Store, StoredEntry
from .memory import MemoryStore

__all__ = ["MemoryStore", "SessionState", "Snapshot", "Store", "StoredEntry"]
