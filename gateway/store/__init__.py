"""Durability: the store interface the core persists through, and its implementations.

Will hold durable queue contents, persistent sessions, in-flight QoS state,
retained messages and bridge outboxes, with an in-memory implementation and an
embedded SQLite (WAL, group commit, off the Trio thread) one. Nothing above
this package touches SQL.
"""
