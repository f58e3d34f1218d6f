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
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..core.headers import Headers, header_pairs
from ..core.message import Kind, Message, Origin
from ..core.stats import BATCH_BOUNDS, LATENCY_BOUNDS, Buckets
from .base import (
    DurableCallback,
    SessionState,
    Snapshot,
    StoredEntry,
    StoredSubscription,
)

SCHEMA_VERSION = 1
DB_NAME = "gateway.db"
LOCK_NAME = "gateway.lock"
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


class StoreError(Exception):
    """The store cannot be opened; the message says why and names the path."""


# -- encoding ------------------------------------------------------------------------------


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


_encode = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder(_StoredMessage).decode


def encode_message(message: Message) -> bytes:
    origin = message.origin
    return _encode(
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


def _with_crc(key: object, data: bytes) -> tuple[object, bytes, int]:
    """A row holding a message, with the checksum ``load`` verifies: SQLite checks
    its pages' structure (``quick_check``), not the bytes of the data in them."""
    return key, data, zlib.crc32(data)


class CorruptRow(Exception):
    pass


def _checked(data: bytes, crc: int, key: object) -> bytes:
    if zlib.crc32(data) != crc:
        raise CorruptRow(f"the checksum of the stored message {key!r} does not match")
    return data


class _StoredSession(msgspec.Struct, array_like=True):
    expiry: float
    subscriptions: list[tuple[str, int, bool, bool, int, int | None]]
    # One per subscription, in the same order (absent in stores written before selectors).
    selectors: list[str | None] = []


def _encode_session(state: SessionState) -> bytes:
    return _encode(
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


def _decode_session_state(client_id: str, data: bytes) -> SessionState:
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


_decode_extra = msgspec.msgpack.Decoder(tuple[bool, list[int]]).decode


# -- the batch -----------------------------------------------------------------------------


class _Gone:
    """An entry removed in this batch: its row is deleted at commit."""


_GONE = _Gone()


@dataclass(slots=True)
class _Batch:
    """Changes recorded since the last commit, coalesced by key."""

    messages: dict[int, Message] = field(default_factory=dict)
    # (queue, message id) -> (seq, entry) to write, or _GONE to delete
    entries: dict[tuple[str, int], tuple[int, StoredEntry] | _Gone] = field(default_factory=dict)
    # keys first enqueued in this batch (not on disk): removing one cancels it
    fresh: set[tuple[str, int]] = field(default_factory=set)
    dropped_queues: list[str] = field(default_factory=list)
    sessions: dict[str, SessionState | None] = field(default_factory=dict)
    incomplete: dict[tuple[str, int], bool] = field(default_factory=dict)
    retained: dict[str, Message | None] = field(default_factory=dict)
    durable: dict[str, str | None] = field(default_factory=dict)
    callbacks: list[DurableCallback] = field(default_factory=list)
    wait: bool = False

    def empty(self) -> bool:
        return not (
            self.entries
            or self.dropped_queues
            or self.sessions
            or self.incomplete
            or self.retained
            or self.durable
        )

    def absorb(self, newer: _Batch) -> int:
        """Apply ``newer``'s changes (recorded after this batch's) on top of this one,
        as if they had been recorded into it; returns how many entries cancel out.

        A batch whose commit failed is kept this way: it is written together with
        what came after it, so the acknowledgements that followed (their removals
        free space) can make the retry fit on a full disk.
        """
        cancelled = 0
        entries, fresh = self.entries, self.fresh
        for queue in newer.dropped_queues:
            for key in [k for k in entries if k[0] == queue]:
                fresh.discard(key)
                del entries[key]
            self.dropped_queues.append(queue)
        for key, held in newer.entries.items():
            old = entries.get(key)
            if isinstance(held, _Gone):
                if key in fresh:  # written by neither: never reaches the disk
                    fresh.discard(key)
                    del entries[key]
                    cancelled += 1
                else:
                    entries[key] = held
                continue
            seq, entry = held
            if seq < 0:  # an update: keep the write this batch already has
                if isinstance(old, _Gone):
                    continue
                if old is not None:
                    seq = old[0]
            elif old is None and key in newer.fresh:
                fresh.add(key)
            entries[key] = (seq, entry)
        self.messages.update(newer.messages)
        self.sessions.update(newer.sessions)
        for key, held_now in newer.incomplete.items():
            if key[1] < 0:  # the session ended: every earlier id of it goes
                for old_key in [k for k in self.incomplete if k[0] == key[0]]:
                    del self.incomplete[old_key]
            self.incomplete.pop(key, None)  # keep the order: newer changes apply last
            self.incomplete[key] = held_now
        self.retained.update(newer.retained)
        self.durable.update(newer.durable)
        self.callbacks.extend(newer.callbacks)
        # Nobody waits for this batch's own changes any more (they were refused):
        # only the newer batch's acknowledgements wait for the commit.
        self.wait = newer.wait
        return cancelled


@dataclass(slots=True)
class CommitStats:
    commits: int = 0
    entries_written: int = 0
    entries_cancelled: int = 0
    failures: int = 0
    pages_reclaimed: int = 0
    last_batch: int = 0
    last_commit_seconds: float = 0.0
    # recent commit durations, for the benchmarks and metrics
    durations: list[float] = field(default_factory=list)
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
        self._batch = _Batch()
        self._seq = 0
        self._available = True
        # Batches with callbacks handed to the writer and not yet committed.
        self._waiting = 0
        self.max_bytes: int | None = None
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
            self._lock()
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
            version = self._check(db, existed)
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
                self.max_bytes = max_bytes
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

    def _lock(self) -> None:
        lock_path = self.dir / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"the data directory {self.dir} is in use by another gateway "
                f"(pid {holder}, lock {lock_path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def _check(self, db: sqlite3.Connection, existed: bool) -> int:
        """Refuse a database this gateway cannot use; returns its schema version."""
        try:
            version: int = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store {self.path} was written by a newer gateway (schema "
                    f"{version}; this one reads up to {SCHEMA_VERSION}); refusing to start"
                )
            if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(
                    f"{self.path} is a database with tables but no gateway schema version: "
                    "not a gateway store (or one from an unreleased build); it was left as "
                    "it is. Move it away to start empty."
                )
            if existed:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                size = self.path.stat().st_size
                if size % page:
                    raise StoreError(
                        f"the store {self.path} is corrupt (its size, {size} bytes, is not a "
                        f"whole number of {page}-byte pages: it was truncated); it was left "
                        "as it is. Restore it from a backup or move it away to start empty."
                    )
                problems = [row[0] for row in db.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"the store {self.path} is corrupt ({'; '.join(problems[:3])}); it "
                        "was left as it is. Restore it from a backup or move it away to "
                        "start empty."
                    )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the store {self.path} is not a readable database ({exc}); it was left "
                "as it is. Restore it from a backup or move it away to start empty."
            ) from None
        return version

    def close(self) -> bool:
        """Commit what is pending and release the lock; False if that commit failed
        (what it held is lost). Callbacks still waiting get that outcome: take them
        first (``take_callbacks``) to run them on another thread than this one."""
        ok = True
        if self._db is not None:
            batch, self._batch = self._batch, _Batch()
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
        if batch.entries.get(key) is _GONE:
            batch.entries[key] = (self._seq, entry)  # removed then enqueued again: rewrite
        else:
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
        if isinstance(held, _Gone):
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
        batch.entries[key] = _GONE
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

    def take_batch(self) -> _Batch | None:
        """The current batch for the writer (None if it is empty), and a fresh one."""
        batch = self._batch
        if batch.empty() and not batch.callbacks:
            return None
        self._batch = _Batch()
        if batch.callbacks:
            self._waiting += 1
        return batch

    def commit(self, batch: _Batch) -> None:
        """Write ``batch`` in one transaction (runs in the writer thread). Raises sqlite3.Error."""
        started = time.perf_counter()
        self._write(batch)
        elapsed = time.perf_counter() - started
        stats = self.stats
        stats.commits += 1
        stats.last_batch = len(batch.entries)
        stats.entries_written += len(batch.entries)
        stats.last_commit_seconds = elapsed
        stats.durations.append(elapsed)
        stats.commit_seconds.observe(elapsed)
        stats.batch_entries.observe(len(batch.entries))
        if len(stats.durations) > 1000:
            del stats.durations[:500]

    def committed(self, batch: _Batch, ok: bool) -> None:
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

    def put_back(self, batch: _Batch) -> None:
        """Keep a batch whose commit failed (after ``committed(batch, ok=False)``): it
        becomes the current batch again, with what was recorded since on top."""
        batch.callbacks.clear()
        self.stats.entries_cancelled += batch.absorb(self._batch)
        self._batch = batch

    def untake(self, batch: _Batch) -> None:
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

    def _write(self, batch: _Batch) -> None:
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

    def _apply(self, db: sqlite3.Connection, batch: _Batch) -> None:
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
            if isinstance(held, _Gone):
                deletes.append((queue, message_id))
                continue
            seq, entry = held
            extra = (
                _encode((entry.retain, list(entry.subscription_ids)))
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
                [_with_crc(mid, encode_message(batch.messages[mid])) for mid in written],
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
                    (client_id, _encode_session(state)),
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
                    _with_crc(topic, encode_message(message)),
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
            snapshot.messages[message_id] = decode_message(_checked(data, crc, message_id))
        for queue, message_id, qos, count, wire_id, stage, extra in db.execute(
            "SELECT queue, message_id, qos, count, wire_id, stage, extra "
            "FROM entries ORDER BY queue, seq"
        ):
            retain, ids = _decode_extra(extra) if extra is not None else (False, [])
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
            snapshot.sessions[client_id] = _decode_session_state(client_id, data)
        for client_id, wire_id in db.execute("SELECT client_id, wire_id FROM incomplete"):
            snapshot.incomplete.setdefault(client_id, set()).add(wire_id)
        for topic, data, crc in db.execute("SELECT topic, data, crc FROM retained"):
            snapshot.retained[topic] = decode_message(_checked(data, crc, topic))
        for name, topic_filter in db.execute(
            "SELECT name, topic_filter FROM durable_subscriptions"
        ):
            snapshot.durable_subscriptions[name] = topic_filter
        return snapshot

    def size(self) -> int:
        """Bytes on disk: the database and its write-ahead log."""
        total = 0
        for path in (self.path, self.path.with_name(DB_NAME + "-wal")):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total


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
