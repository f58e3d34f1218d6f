"""The embedded durable store: SQLite in WAL mode, group-committed off the Trio thread.

The core's calls (``enqueue``, ``remove``, ...) only record the change in the
current batch, in memory, coalescing as they go: a message enqueued and
removed within one batch (published and acknowledged before the commit) never
reaches the disk. ``run_writer`` is the writer: whenever a batch has changes it
hands it to a worker thread that writes it in one transaction, then runs the
``when_durable`` callbacks registered while that batch was open, in order.
Publishers' acknowledgements wait behind those callbacks, so a busy gateway
commits thousands of messages per transaction: durability costs latency, not
throughput.

Messages are stored once (``messages``) and referred to by queue entries
(``entries``); a message row is deleted in the transaction that removes its
last entry; freed pages go back to the file system a few at a time
(incremental vacuum). When a commit fails (disk full, I/O error) the batch is
kept and retried with what was recorded since; meanwhile ``available`` is False
and the core refuses persistent publishes, so publishers get refusals rather
than acknowledgements that lie.

Safety at open: a lock file (one gateway per data directory), the schema
version (a newer one is refused), the file's size, ``PRAGMA quick_check`` and,
at ``load``, a checksum per stored message: a damaged database is refused with
its path, never written to, repaired or replaced by an empty one.

Its parts: ``batch`` (the changes recorded, coalescing), ``encoding`` (what a row
holds, with its checksum), ``safety`` (the lock and the checks at open); this module
opens, commits and loads.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..core.message import Message
from ..core.stats import BATCH_BOUNDS, LATENCY_BOUNDS, Buckets
from .base import DurableCallback, SessionState, Snapshot, StoredEntry
from .batch import GONE, Batch, Gone
from .encoding import (
    CorruptRow,
    checked,
    decode_extra,
    decode_message,
    decode_session_state,
    encode,
    encode_message,
    encode_session,
    with_crc,
)
from .safety import SCHEMA_VERSION, StoreError, check, lock, unlock

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteStore",
    "StoreError",
    "decode_message",
    "encode_message",
    "run_writer",
]

DB_NAME = "gateway.db"

# How long a failed commit waits before it is tried again.
RETRY_INTERVAL = 1.0
# The write-ahead log is cut back to this size after a checkpoint.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Free pages are given back to the file system once there are this many, and more
# than a quarter of the file; at most RECLAIM_STEP of them with each commit.
RECLAIM_MIN_PAGES = 1024
RECLAIM_STEP = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    queue TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    count INTEGER NOT NULL,
    wire_id INTEGER,
    stage INTEGER NOT NULL,
    extra BLOB,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_message ON entries (message_id);
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS incomplete (
    client_id TEXT NOT NULL,
    wire_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, wire_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS durable_subscriptions (
    name TEXT PRIMARY KEY,
    topic_filter TEXT NOT NULL
);
"""


@dataclass(slots=True)
class CommitStats:
    commits: int = 0
    entries_written: int = 0
    entries_cancelled: int = 0
    failures: int = 0
    pages_reclaimed: int = 0
    # every commit's duration (seconds) and size (entries), as histograms for the metrics
    commit_seconds: Buckets = field(default_factory=lambda: Buckets(LATENCY_BOUNDS))
    batch_entries: Buckets = field(default_factory=lambda: Buckets(BATCH_BOUNDS))


class SQLiteStore:
    """The durable store. ``open`` (in a thread) before use; ``run`` as a Trio task."""

    def __init__(self, data_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / DB_NAME
        self.fsync = fsync
        self.stats = CommitStats()
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._batch = Batch()
        self._seq = 0
        self._available = True
        # Batches with callbacks handed to the writer and not yet committed.
        self._waiting = 0
        self.last_error: str | None = None
        # Set by the writer to be woken when a batch gets its first change.
        self.wakeup: Any = None
        # Free pages remain to be given back: the writer goes on when it is idle.
        self.reclaim_due = False
        self._vacuums = False

    # -- opening and closing -------------------------------------------------------------

    def open(self, *, max_bytes: int | None = None) -> None:
        """Lock the data directory, open (or create) the database, check it.

        An existing database is only read here (``load`` reads the rest): if either
        refuses it, the file is left exactly as it was."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = lock(self.dir)
        except OSError as exc:
            raise StoreError(f"cannot lock the data directory {self.dir}: {exc}") from None
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            self._unlock()
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None
        try:
            version = check(db, self.path, existed)
            if version == 0:
                # A new database. Incremental vacuum lets the writer give freed pages
                # back to the file system; it can only be chosen before any table.
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
            else:
                db.execute("PRAGMA journal_mode=WAL")  # already so: nothing is written
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            if max_bytes is not None:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count={max(16, max_bytes // page)}")
            row = db.execute("SELECT max(seq) FROM entries").fetchone()
            self._seq = (row[0] or 0) + 1
            # 2 = incremental (chosen at creation); another database keeps its pages.
            self._vacuums = db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        except StoreError:
            db.close()
            self._unlock()
            raise
        except sqlite3.Error as exc:
            db.close()
            self._unlock()
            raise StoreError(
                f"the store {self.path} is unreadable ({exc}); it was left as it is. "
                "Restore it from a backup or move it away to start empty."
            ) from None
        self._db = db

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            unlock(self._lock_fd)
            self._lock_fd = None

    def close(self) -> bool:
        """Commit what is pending and release the lock; False if that commit failed
        (what it held is lost). Callbacks still waiting get that outcome: take them
        first (``take_callbacks``) to run them on another thread than this one."""
        ok = True
        if self._db is not None:
            batch, self._batch = self._batch, Batch()
            try:
                if not batch.empty():
                    self._write(batch)
            except sqlite3.Error as exc:
                ok = False
                self.last_error = str(exc)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            for callback in batch.callbacks:
                callback(ok)
            self._db.close()
            self._db = None
        self._unlock()
        return ok

    def take_callbacks(self) -> list[DurableCallback]:
        """The ``when_durable`` callbacks not yet handed to the writer (at shutdown)."""
        callbacks, self._batch.callbacks = self._batch.callbacks, []
        return callbacks

    # -- the Store interface (called on the Trio thread; records only) --------------------

    def _changed(self) -> None:
        if self.wakeup is not None:
            self.wakeup()

    def enqueue(self, queue: str, message: Message, entry: StoredEntry, *, wait: bool) -> None:
        batch = self._batch
        key = (queue, entry.message_id)
        if batch.entries.get(key) is not GONE:  # GONE: removed then enqueued again, on disk
            batch.fresh.add(key)
        batch.entries[key] = (self._seq, entry)
        self._seq += 1
        batch.messages[entry.message_id] = message
        if wait:
            batch.wait = True
        self._changed()

    def update(self, queue: str, entry: StoredEntry, *, wait: bool = False) -> None:
        batch = self._batch
        key = (queue, entry.message_id)
        held = batch.entries.get(key)
        if isinstance(held, Gone):
            return
        seq = held[0] if held is not None else -1  # -1: keep the stored seq
        batch.entries[key] = (seq, entry)
        if wait:
            batch.wait = True
        self._changed()

    def remove(self, queue: str, message_id: int) -> None:
        batch = self._batch
        key = (queue, message_id)
        if key in batch.fresh:
            # Enqueued and removed before any commit: it never touches the disk.
            batch.fresh.discard(key)
            del batch.entries[key]
            self.stats.entries_cancelled += 1
            return
        batch.entries[key] = GONE
        self._changed()

    def drop_queue(self, queue: str) -> None:
        batch = self._batch
        for key in [k for k in batch.entries if k[0] == queue]:
            batch.fresh.discard(key)
            del batch.entries[key]
        batch.dropped_queues.append(queue)
        self._changed()

    def save_session(self, state: SessionState) -> None:
        self._batch.sessions[state.client_id] = state
        self._changed()

    def delete_session(self, client_id: str) -> None:
        batch = self._batch
        batch.sessions[client_id] = None
        for key in [k for k in batch.incomplete if k[0] == client_id]:
            del batch.incomplete[key]
        batch.incomplete[(client_id, -1)] = False  # -1: every id of the client
        self._changed()

    def add_incomplete(self, client_id: str, wire_id: int, *, wait: bool = True) -> None:
        self._batch.incomplete[(client_id, wire_id)] = True
        if wait:
            self._batch.wait = True
        self._changed()

    def remove_incomplete(self, client_id: str, wire_id: int, *, wait: bool = True) -> None:
        self._batch.incomplete[(client_id, wire_id)] = False
        if wait:  # the PUBCOMP frees the id for reuse: it waits for this
            self._batch.wait = True
        self._changed()

    def save_durable_subscription(self, name: str, topic_filter: str) -> None:
        self._batch.durable[name] = topic_filter
        self._changed()

    def delete_durable_subscription(self, name: str) -> None:
        self._batch.durable[name] = None
        self._changed()

    def set_retained(self, message: Message) -> None:
        self._batch.retained[message.destination] = message
        self._changed()

    def clear_retained(self, topic: str) -> None:
        self._batch.retained[topic] = None
        self._changed()

    def when_durable(self, callback: DurableCallback) -> None:
        batch = self._batch
        if not batch.wait and not self._waiting:
            callback(True)  # nothing an acknowledgement must wait for
            return
        batch.callbacks.append(callback)
        self._changed()

    @property
    def available(self) -> bool:
        return self._available

    # -- the writer ------------------------------------------------------------------------

    def take_batch(self) -> Batch | None:
        """The current batch for the writer (None if it is empty), and a fresh one."""
        batch = self._batch
        if batch.empty() and not batch.callbacks:
            return None
        self._batch = Batch()
        if batch.callbacks:
            self._waiting += 1
        return batch

    def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction (runs in the writer thread). Raises sqlite3.Error."""
        started = time.perf_counter()
        self._write(batch)
        elapsed = time.perf_counter() - started
        written = len(batch.entries)
        stats = self.stats
        stats.commits += 1
        stats.entries_written += written
        stats.commit_seconds.observe(elapsed)
        stats.batch_entries.observe(written)

    def committed(self, batch: Batch, ok: bool) -> None:
        """On the Trio thread after ``commit``: mark health, run the batch's callbacks."""
        if batch.callbacks:
            self._waiting -= 1
        if ok:
            self._available = True
            self.last_error = None
        for callback in batch.callbacks:
            callback(ok)

    def failed(self, error: str) -> None:
        self._available = False
        self.last_error = error
        self.stats.failures += 1

    def put_back(self, batch: Batch) -> None:
        """Keep a batch whose commit failed (after ``committed(batch, ok=False)``): it
        becomes the current batch again, with what was recorded since on top."""
        batch.callbacks.clear()
        self.stats.entries_cancelled += batch.absorb(self._batch)
        self._batch = batch

    def untake(self, batch: Batch) -> None:
        """Give back a batch taken but never written (the writer was cancelled before
        its thread ran): the current batch again, its callbacks still waiting, first."""
        if batch.callbacks:
            self._waiting -= 1
        callbacks, wait = batch.callbacks, batch.wait
        batch.callbacks = []
        self.stats.entries_cancelled += batch.absorb(self._batch)
        batch.callbacks[:0] = callbacks
        batch.wait = wait or batch.wait
        self._batch = batch

    def _write(self, batch: Batch) -> None:
        db = self._db
        assert db is not None, "the store is not open"
        db.execute("BEGIN IMMEDIATE")
        try:
            self._apply(db, batch)
            self._reclaim(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _apply(self, db: sqlite3.Connection, batch: Batch) -> None:
        for queue in batch.dropped_queues:
            gone = [
                row[0]
                for row in db.execute("SELECT message_id FROM entries WHERE queue=?", (queue,))
            ]
            db.execute("DELETE FROM entries WHERE queue=?", (queue,))
            self._collect(db, gone)
        written: set[int] = set()
        inserts = []
        updates = []
        deletes = []
        for (queue, message_id), held in batch.entries.items():
            if isinstance(held, Gone):
                deletes.append((queue, message_id))
                continue
            seq, entry = held
            extra = (
                encode((entry.retain, list(entry.subscription_ids)))
                if entry.retain or entry.subscription_ids
                else None
            )
            row = (entry.qos, entry.count, entry.wire_id, entry.stage, extra, queue, message_id)
            if seq < 0:
                updates.append(row)
            else:
                inserts.append((queue, message_id, seq, *row[:5]))
                written.add(message_id)
        if deletes:
            # First, so that the pages they free take this batch's inserts (disk full).
            db.executemany("DELETE FROM entries WHERE queue=? AND message_id=?", deletes)
            self._collect(db, [message_id for _, message_id in deletes])
        if written:
            db.executemany(
                "INSERT OR IGNORE INTO messages (id, data, crc) VALUES (?, ?, ?)",
                [with_crc(mid, encode_message(batch.messages[mid])) for mid in written],
            )
        if inserts:
            db.executemany(
                "INSERT OR REPLACE INTO entries "
                "(queue, message_id, seq, qos, count, wire_id, stage, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
        if updates:
            db.executemany(
                "UPDATE entries SET qos=?, count=?, wire_id=?, stage=?, extra=? "
                "WHERE queue=? AND message_id=?",
                updates,
            )
        for client_id, state in batch.sessions.items():
            if state is None:
                db.execute("DELETE FROM sessions WHERE client_id=?", (client_id,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO sessions (client_id, data) VALUES (?, ?)",
                    (client_id, encode_session(state)),
                )
        for (client_id, wire_id), held_now in batch.incomplete.items():
            if wire_id < 0:
                db.execute("DELETE FROM incomplete WHERE client_id=?", (client_id,))
            elif held_now:
                db.execute(
                    "INSERT OR IGNORE INTO incomplete (client_id, wire_id) VALUES (?, ?)",
                    (client_id, wire_id),
                )
            else:
                db.execute(
                    "DELETE FROM incomplete WHERE client_id=? AND wire_id=?", (client_id, wire_id)
                )
        for topic, message in batch.retained.items():
            if message is None:
                db.execute("DELETE FROM retained WHERE topic=?", (topic,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO retained (topic, data, crc) VALUES (?, ?, ?)",
                    with_crc(topic, encode_message(message)),
                )
        for name, topic_filter in batch.durable.items():
            if topic_filter is None:
                db.execute("DELETE FROM durable_subscriptions WHERE name=?", (name,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO durable_subscriptions (name, topic_filter) "
                    "VALUES (?, ?)",
                    (name, topic_filter),
                )

    def _reclaim(self, db: sqlite3.Connection) -> None:
        """Give free pages back to the file system, a few with each commit, once a
        backlog has drained: the file shrinks while traffic goes on."""
        if not self._vacuums or not self._reclaimable(db):
            return
        free: int = db.execute("PRAGMA freelist_count").fetchone()[0]
        db.execute(f"PRAGMA incremental_vacuum({RECLAIM_STEP})").fetchall()
        freed = free - db.execute("PRAGMA freelist_count").fetchone()[0]
        self.stats.pages_reclaimed += freed
        # More to give back: the writer goes on while idle (never without progress).
        self.reclaim_due = freed > 0 and self._reclaimable(db)

    @staticmethod
    def _reclaimable(db: sqlite3.Connection) -> bool:
        free: int = db.execute("PRAGMA freelist_count").fetchone()[0]
        return (
            free >= RECLAIM_MIN_PAGES and free * 4 >= db.execute("PRAGMA page_count").fetchone()[0]
        )

    def reclaim(self) -> None:
        """One reclaiming step on its own (the writer, when idle, in its thread)."""
        db = self._db
        assert db is not None, "the store is not open"
        self.reclaim_due = False
        db.execute("BEGIN IMMEDIATE")
        try:
            self._reclaim(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _collect(db: sqlite3.Connection, message_ids: list[int]) -> None:
        """Delete the messages no entry refers to any more (the reference count is 0)."""
        db.executemany(
            "DELETE FROM messages WHERE id=? AND NOT EXISTS "
            "(SELECT 1 FROM entries WHERE message_id=?)",
            [(mid, mid) for mid in set(message_ids)],
        )

    # -- recovery --------------------------------------------------------------------------

    def load(self) -> Snapshot:
        """Read everything back. Raises StoreError (naming the path) when a row cannot
        be read: damage ``quick_check`` does not see (it checks structure, not data)."""
        try:
            return self._load()
        except (
            sqlite3.DatabaseError,
            msgspec.DecodeError,
            msgspec.ValidationError,
            ValueError,
            CorruptRow,
        ) as exc:
            # Refused: close without writing anything, and let the directory go.
            if self._db is not None:
                self._db.close()
                self._db = None
            self._unlock()
            raise StoreError(
                f"the store {self.path} is corrupt (reading it failed: {exc}); it was left "
                "as it is. Restore it from a backup or move it away to start empty."
            ) from None

    def _load(self) -> Snapshot:
        db = self._db
        assert db is not None, "the store is not open"
        snapshot = Snapshot()
        for message_id, data, crc in db.execute("SELECT id, data, crc FROM messages"):
            snapshot.messages[message_id] = decode_message(checked(data, crc, message_id))
        for queue, message_id, qos, count, wire_id, stage, extra in db.execute(
            "SELECT queue, message_id, qos, count, wire_id, stage, extra "
            "FROM entries ORDER BY queue, seq"
        ):
            retain, ids = decode_extra(extra) if extra is not None else (False, [])
            snapshot.queues.setdefault(queue, []).append(
                StoredEntry(
                    message_id=message_id,
                    qos=qos,
                    count=count,
                    wire_id=wire_id,
                    stage=stage,
                    retain=retain,
                    subscription_ids=tuple(ids),
                )
            )
        for client_id, data in db.execute("SELECT client_id, data FROM sessions"):
            snapshot.sessions[client_id] = decode_session_state(client_id, data)
        for client_id, wire_id in db.execute("SELECT client_id, wire_id FROM incomplete"):
            snapshot.incomplete.setdefault(client_id, set()).add(wire_id)
        for topic, data, crc in db.execute("SELECT topic, data, crc FROM retained"):
            snapshot.retained[topic] = decode_message(checked(data, crc, topic))
        for name, topic_filter in db.execute(
            "SELECT name, topic_filter FROM durable_subscriptions"
        ):
            snapshot.durable_subscriptions[name] = topic_filter
        return snapshot


async def run_writer(store: SQLiteStore, log: Any) -> None:
    """Commit batches as they fill, one at a time, in a worker thread, until cancelled.

    While one batch commits, the next one gathers: under load every transaction
    carries everything that arrived during the previous one. A failed commit
    (disk full) refuses the acknowledgements waiting on it, marks the store
    unavailable, and is retried, merged with what was recorded since, every
    ``RETRY_INTERVAL`` until it succeeds.
    """
    import trio

    wake = trio.Event()

    def wakeup() -> None:
        wake.set()

    store.wakeup = wakeup
    failing = False
    while True:
        batch = store.take_batch()
        if batch is None:
            if store.reclaim_due:
                with contextlib.suppress(sqlite3.Error):  # only housekeeping
                    await trio.to_thread.run_sync(store.reclaim)
                continue
            await wake.wait()
            wake = trio.Event()
            continue
        try:
            await trio.to_thread.run_sync(store.commit, batch)
        except trio.Cancelled:
            # Raised only before the thread ran (it is not abandoned once started):
            # nothing of the batch is written; close() writes it with the rest.
            store.untake(batch)
            raise
        except sqlite3.Error as exc:
            store.failed(str(exc))
            if not failing:
                log.error("store.commit_failed", error=str(exc), path=str(store.path))
                failing = True
            store.committed(batch, ok=False)  # refuse who waited
            # Keep the data: the retry carries it with whatever came since (acks that
            # free space included); a shutdown meanwhile writes it in ``close``.
            store.put_back(batch)
            await trio.sleep(RETRY_INTERVAL)
            continue
        if failing:
            log.warning("store.commit_recovered", path=str(store.path))
            failing = False
        store.committed(batch, ok=True)
