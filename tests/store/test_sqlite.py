"""The SQLite store on its own: batches, coalescing, reference counting, round trips
through close and reopen, the commit barrier, disk full, and the checks at open."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

from gateway.core.headers import Headers
from gateway.core.message import Kind, Message, Origin
from gateway.store import sqlite as sqlite_mod
from gateway.store.base import SessionState, StoredEntry, StoredSubscription
from gateway.store.sqlite import SQLiteStore, StoreError, run_writer


def msg(payload: bytes = b"x", qos: int = 1, topic: str = "t") -> Message:
    return Message(destination=topic, payload=payload, qos=qos)


def entry(message: Message, **fields: object) -> StoredEntry:
    return StoredEntry(message_id=message.message_id, qos=message.qos, **fields)  # type: ignore[arg-type]


def open_store(path: Path, **kwargs: object) -> SQLiteStore:
    store = SQLiteStore(path)
    store.open(**kwargs)  # type: ignore[arg-type]
    return store


def flush(store: SQLiteStore) -> None:
    """What the writer does, on this thread: commit the current batch and settle it."""
    batch = store.take_batch()
    if batch is not None:
        store.commit(batch)
        store.committed(batch, ok=True)


def rows(store: SQLiteStore, sql: str) -> list[tuple[object, ...]]:
    """Read through a connection of its own: only what is committed is seen."""
    db = sqlite3.connect(store.path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def until(condition: Callable[[], object]) -> None:
    """Poll ``condition`` (the writer works in a thread: nothing to wait on) for 10 s."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def reopen(store: SQLiteStore) -> SQLiteStore:
    store.close()
    return open_store(store.dir)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path / "data")
    yield s
    s.close()


# -- batches -------------------------------------------------------------------------------


def test_enqueued_and_removed_in_one_batch_never_reaches_the_disk(store: SQLiteStore) -> None:
    m = msg()
    store.enqueue("q", m, entry(m), wait=True)
    store.remove("q", m.message_id)
    flush(store)
    assert store.stats.entries_cancelled == 1
    assert store.stats.entries_written == 0
    assert rows(store, "SELECT * FROM entries") == []
    assert rows(store, "SELECT id FROM messages") == []


def test_an_entry_removed_after_its_commit_is_deleted(store: SQLiteStore) -> None:
    m = msg()
    store.enqueue("q", m, entry(m), wait=True)
    flush(store)
    assert rows(store, "SELECT queue, message_id FROM entries") == [("q", m.message_id)]
    store.remove("q", m.message_id)
    flush(store)
    assert store.stats.entries_cancelled == 0
    assert rows(store, "SELECT * FROM entries") == []
    assert rows(store, "SELECT * FROM messages") == []


def test_a_message_in_three_queues_is_stored_once_and_deleted_with_the_last(
    store: SQLiteStore,
) -> None:
    m = msg(b"shared")
    for queue in ("a", "b", "c"):
        store.enqueue(queue, m, entry(m), wait=True)
    flush(store)
    assert rows(store, "SELECT id FROM messages") == [(m.message_id,)]
    assert rows(store, "SELECT count(*) FROM entries") == [(3,)]
    store.remove("a", m.message_id)
    flush(store)
    store.remove("b", m.message_id)
    flush(store)
    assert rows(store, "SELECT id FROM messages") == [(m.message_id,)]
    store.remove("c", m.message_id)
    flush(store)
    assert rows(store, "SELECT * FROM messages") == []


def test_drop_queue_keeps_messages_other_queues_hold(store: SQLiteStore) -> None:
    shared, own = msg(b"shared"), msg(b"own")
    store.enqueue("a", shared, entry(shared), wait=True)
    store.enqueue("a", own, entry(own), wait=True)
    store.enqueue("b", shared, entry(shared), wait=True)
    flush(store)
    store.drop_queue("a")
    flush(store)
    assert rows(store, "SELECT queue, message_id FROM entries") == [("b", shared.message_id)]
    assert rows(store, "SELECT id FROM messages") == [(shared.message_id,)]


def test_updates_of_count_packet_id_and_stage_are_written(store: SQLiteStore) -> None:
    fresh, stored = msg(b"fresh"), msg(b"stored", qos=2)
    store.enqueue("q", stored, entry(stored), wait=True)
    flush(store)
    # Committed earlier: an UPDATE of the row. Enqueued in this batch: one INSERT, updated.
    store.update("q", entry(stored, count=1, wire_id=7, stage=1))
    store.enqueue("q", fresh, entry(fresh), wait=True)
    store.update("q", entry(fresh, count=2, wire_id=8, retain=True, subscription_ids=(3, 4)))
    flush(store)
    store = reopen(store)
    try:
        got = {e.message_id: e for e in store.load().queues["q"]}
    finally:
        store.close()
    assert got[stored.message_id] == entry(stored, count=1, wire_id=7, stage=1)
    assert got[fresh.message_id] == entry(
        fresh, count=2, wire_id=8, retain=True, subscription_ids=(3, 4)
    )


def test_queue_entries_come_back_in_their_order(store: SQLiteStore) -> None:
    messages = [msg(bytes([i])) for i in range(5)]
    for m in messages[:3]:
        store.enqueue("q", m, entry(m), wait=True)
    flush(store)
    for m in messages[3:]:
        store.enqueue("q", m, entry(m), wait=True)
    store.remove("q", messages[1].message_id)
    flush(store)
    store = reopen(store)
    try:
        snapshot = store.load()
    finally:
        store.close()
    order = [e.message_id for e in snapshot.queues["q"]]
    assert order == [m.message_id for i, m in enumerate(messages) if i != 1]


def test_messages_round_trip_with_every_field(store: SQLiteStore) -> None:
    m = Message(
        destination="orders",
        payload=b"\x00\xffbody",
        kind=Kind.QUEUE,
        headers=Headers((("a", "1"), ("a", "2"), ("b", "x"))),
        qos=2,
        retain=True,
        priority=7,
        expiry=2e9,
        content_type="application/json",
        text=True,
        correlation_id=b"corr",
        reply_to="$queue/replies",
        origin=Origin(protocol="stomp", listener="stomp", client_id="c1"),
    )
    store.enqueue("orders", m, entry(m), wait=True)
    flush(store)
    store = reopen(store)
    try:
        back = store.load().messages[m.message_id]
    finally:
        store.close()
    assert back == m
    assert back.headers.pairs == (("a", "1"), ("a", "2"), ("b", "x"))  # type: ignore[attr-defined]


def test_sessions_incomplete_retained_and_durable_subscriptions_round_trip(
    store: SQLiteStore,
) -> None:
    subs = (
        StoredSubscription(topic_filter="a/+", qos=1, no_local=True, subscription_id=5),
        StoredSubscription(
            topic_filter="$share/g/b", qos=2, retain_as_published=True, retain_handling=1
        ),
    )
    store.save_session(SessionState(client_id="dev", expiry=math.inf, subscriptions=subs))
    store.save_session(SessionState(client_id="gone", expiry=60))
    store.add_incomplete("dev", 9)
    store.add_incomplete("dev", 10)
    store.add_incomplete("gone", 3)
    kept, cleared = msg(b"on", topic="status/1"), msg(b"off", topic="status/2")
    store.set_retained(kept)
    store.set_retained(cleared)
    store.save_durable_subscription("sub-1", "news/#")
    store.save_durable_subscription("sub-2", "old/#")
    flush(store)
    store.remove_incomplete("dev", 10)
    store.delete_session("gone")
    store.clear_retained("status/2")
    store.delete_durable_subscription("sub-2")
    flush(store)
    store = reopen(store)
    try:
        snapshot = store.load()
    finally:
        store.close()
    assert snapshot.sessions == {
        "dev": SessionState(client_id="dev", expiry=math.inf, subscriptions=subs)
    }
    assert snapshot.incomplete == {"dev": {9}}
    assert snapshot.retained == {"status/1": kept}
    assert snapshot.durable_subscriptions == {"sub-1": "news/#"}


def test_a_session_deleted_and_saved_again_in_one_batch_keeps_its_new_state(
    store: SQLiteStore,
) -> None:
    store.save_session(SessionState(client_id="dev", expiry=60))
    store.add_incomplete("dev", 1)
    flush(store)
    store.delete_session("dev")
    store.save_session(SessionState(client_id="dev", expiry=30))
    store.add_incomplete("dev", 2)
    flush(store)
    store = reopen(store)
    try:
        snapshot = store.load()
    finally:
        store.close()
    assert snapshot.sessions["dev"].expiry == 30
    assert snapshot.incomplete == {"dev": {2}}


# -- the commit barrier --------------------------------------------------------------------


def test_sync_acknowledgements_wait_for_the_commit(store: SQLiteStore) -> None:
    m = msg()
    store.enqueue("q", m, entry(m), wait=True)
    outcome: list[bool] = []
    store.when_durable(outcome.append)
    assert outcome == []
    batch = store.take_batch()
    assert batch is not None
    # Recorded while that batch commits: waits for it too (acknowledgements stay in order).
    store.when_durable(outcome.append)
    store.commit(batch)
    assert outcome == []
    store.committed(batch, ok=True)
    assert outcome == [True]
    flush(store)
    assert outcome == [True, True]


def test_async_acknowledgements_do_not_wait(store: SQLiteStore) -> None:
    m = msg()
    store.enqueue("q", m, entry(m), wait=False)
    outcome: list[bool] = []
    store.when_durable(outcome.append)
    assert outcome == [True]
    assert rows(store, "SELECT * FROM entries") == []  # the commit comes later
    flush(store)
    assert rows(store, "SELECT count(*) FROM entries") == [(1,)]


def test_nothing_recorded_means_nothing_to_wait_for(store: SQLiteStore) -> None:
    outcome: list[bool] = []
    store.when_durable(outcome.append)
    assert outcome == [True]
    assert store.take_batch() is None


def test_an_inbound_qos2_message_held_waits_for_the_commit(store: SQLiteStore) -> None:
    store.add_incomplete("dev", 4)
    outcome: list[bool] = []
    store.when_durable(outcome.append)
    assert outcome == []
    flush(store)
    assert outcome == [True]


async def test_run_writer_commits_and_calls_back_in_order(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        outcome: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_writer, store, _Log())
            await trio.lowlevel.checkpoint()
            for i in range(50):
                m = msg(bytes([i]))
                store.enqueue("q", m, entry(m), wait=True)
                store.when_durable(lambda ok, i=i: outcome.append(i) if ok else None)
                if i % 7 == 0:
                    await trio.lowlevel.checkpoint()
            await until(lambda: len(outcome) == 50)
            nursery.cancel_scope.cancel()
        assert outcome == list(range(50))
        assert rows(store, "SELECT count(*) FROM entries") == [(50,)]
        # Group commit: fewer transactions than messages.
        assert store.stats.commits < 50
    finally:
        store.close()


async def test_a_batch_taken_as_the_writer_is_cancelled_is_written_at_close(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    outcome: list[bool] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_writer, store, _Log())
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for a change
        m = msg()
        store.enqueue("q", m, entry(m), wait=True)
        store.when_durable(outcome.append)
        # The writer wakes up, takes the batch, and is cancelled before its thread runs.
        nursery.cancel_scope.cancel()
    assert outcome == []
    assert store.close() is True
    assert outcome == [True]
    assert rows(store, "SELECT message_id FROM entries") == [(m.message_id,)]


# -- disk full -----------------------------------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def error(self, event: str, **fields: object) -> None:
        self.events.append(event)

    def warning(self, event: str, **fields: object) -> None:
        self.events.append(event)


async def _fill(store: SQLiteStore, queue: str = "q") -> tuple[list[Message], Message]:
    """Enqueue 2 kB messages until a commit fails; returns those stored and the refused one."""
    stored: list[Message] = []
    while True:
        m = msg(os.urandom(2000))
        store.enqueue(queue, m, entry(m), wait=True)
        outcome: list[bool] = []
        store.when_durable(outcome.append)
        await until(lambda: outcome)  # noqa: B023  (awaited within the iteration)
        if not outcome[0]:
            return stored, m
        stored.append(m)


async def test_disk_full_refuses_then_recovers_once_acks_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "RETRY_INTERVAL", 0.05)
    store = open_store(tmp_path, max_bytes=65536)
    log = _Log()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_writer, store, log)
            stored, refused = await _fill(store)
            assert stored
            assert not store.available
            assert "full" in (store.last_error or "")
            assert log.events == ["store.commit_failed"]
            # Still full, and still refusing: the retries fail quietly (logged once).
            await trio.sleep(0.2)
            assert not store.available
            assert log.events == ["store.commit_failed"]
            # The consumer acknowledges what it had: the space is reused, the failed
            # batch (still held) is written with those deletions, traffic resumes.
            for m in stored:
                store.remove("q", m.message_id)
            await until(lambda: store.available)
            assert log.events == ["store.commit_failed", "store.commit_recovered"]
            m = msg(b"after")
            store.enqueue("q", m, entry(m), wait=True)
            outcome: list[bool] = []
            store.when_durable(outcome.append)
            await until(lambda: outcome)
            assert outcome == [True]
            nursery.cancel_scope.cancel()
        ids = {row[0] for row in rows(store, "SELECT message_id FROM entries")}
        # The message whose commit failed was kept (its publisher was told to resend,
        # but it is still in the queue in memory): it is on disk now.
        assert ids == {refused.message_id, m.message_id}
    finally:
        store.close()


async def test_a_refused_message_acked_while_the_disk_is_full_never_reaches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "RETRY_INTERVAL", 0.05)
    store = open_store(tmp_path, max_bytes=65536)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_writer, store, _Log())
            stored, refused = await _fill(store)
            cancelled = store.stats.entries_cancelled
            store.remove("q", refused.message_id)
            store.remove("q", stored[0].message_id)
            await until(lambda: store.available)
            nursery.cancel_scope.cancel()
        assert store.stats.entries_cancelled == cancelled + 1
        ids = {row[0] for row in rows(store, "SELECT message_id FROM entries")}
        assert ids == {m.message_id for m in stored[1:]}
    finally:
        store.close()


async def test_a_batch_that_failed_is_written_at_close(tmp_path: Path) -> None:
    store = open_store(tmp_path, max_bytes=65536)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_writer, store, _Log())
        stored, refused = await _fill(store)
        store.remove("q", stored[0].message_id)
        store.save_session(SessionState(client_id="dev", expiry=60))
        nursery.cancel_scope.cancel()  # stopping before the retry
    store = reopen(store)
    try:
        snapshot = store.load()
    finally:
        store.close()
    assert "dev" in snapshot.sessions
    ids = {e.message_id for e in snapshot.queues["q"]}
    assert ids == {m.message_id for m in stored[1:]} | {refused.message_id}


def test_close_reports_a_last_commit_that_failed(tmp_path: Path) -> None:
    store = open_store(tmp_path, max_bytes=65536)
    for _ in range(40):  # 80 kB in one batch: more than the store may hold
        m = msg(os.urandom(2000))
        store.enqueue("q", m, entry(m), wait=True)
    taken: list[bool] = []
    store.when_durable(taken.append)
    assert store.take_callbacks() == [taken.append]  # the gateway runs them itself
    outcome: list[bool] = []
    store.when_durable(outcome.append)
    assert store.close() is False
    assert outcome == [False]
    assert taken == []
    assert "full" in (store.last_error or "")


async def test_space_freed_by_acks_goes_back_to_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "RECLAIM_MIN_PAGES", 64)
    monkeypatch.setattr(sqlite_mod, "RECLAIM_STEP", 16)
    store = open_store(tmp_path)
    try:
        backlog = [msg(os.urandom(3000)) for _ in range(300)]
        for m in backlog:
            store.enqueue("q", m, entry(m), wait=True)
        flush(store)
        [(full,)] = rows(store, "PRAGMA page_count")
        assert full > 300
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_writer, store, _Log())
            for m in backlog:  # the backlog drains
                store.remove("q", m.message_id)
            # The writer gives the pages back a step at a time, also while idle.
            await until(lambda: rows(store, "PRAGMA page_count")[0][0] <= full // 4)
            nursery.cancel_scope.cancel()
        assert store.stats.pages_reclaimed > full // 2
    finally:
        store.close()


def test_a_database_without_incremental_vacuum_keeps_its_free_pages(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "gateway.db")  # as made by another build: no auto-vacuum
    db.executescript(sqlite_mod._SCHEMA + f"PRAGMA user_version={sqlite_mod.SCHEMA_VERSION};")
    db.close()
    store = open_store(tmp_path)
    try:
        backlog = [msg(os.urandom(3000)) for _ in range(1500)]
        for m in backlog:
            store.enqueue("q", m, entry(m), wait=True)
        flush(store)
        for m in backlog:
            store.remove("q", m.message_id)
        flush(store)
        assert store.reclaim_due is False  # nothing the idle writer would spin on
        assert store.stats.pages_reclaimed == 0
    finally:
        store.close()


# -- safety at open ------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_one_store_per_data_directory(tmp_path: Path) -> None:
    first = open_store(tmp_path)
    try:
        with pytest.raises(StoreError, match="in use by another gateway") as info:
            open_store(tmp_path)
        assert str(tmp_path) in str(info.value)
        assert f"pid {os.getpid()}" in str(info.value)
    finally:
        first.close()
    open_store(tmp_path).close()  # released on close


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "gateway.db")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    before = _digest(tmp_path / "gateway.db")
    with pytest.raises(StoreError, match="newer gateway") as info:
        open_store(tmp_path)
    assert str(tmp_path / "gateway.db") in str(info.value)
    assert _digest(tmp_path / "gateway.db") == before
    open_store(tmp_path.parent / "elsewhere").close()  # the lock was let go: no leak


def _written(path: Path) -> Path:
    store = open_store(path)
    for i in range(200):
        m = msg(bytes([i % 256]) * 300)
        store.enqueue("q", m, entry(m), wait=True)
    store.save_session(SessionState(client_id="dev", expiry=60))
    store.set_retained(msg(b"r" * 500, topic="r/1"))
    flush(store)
    store.close()
    return path / "gateway.db"


def _open_and_load(path: Path) -> None:
    store = open_store(path)
    try:
        store.load()
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "truncated-page", "header", "data"])
def test_a_damaged_database_is_refused_and_left_as_it_is(tmp_path: Path, damage: str) -> None:
    db = _written(tmp_path)
    data = bytearray(db.read_bytes())
    if damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "truncated-page":
        data = data[:-100]
    elif damage == "header":
        data[100:108] = bytes(b ^ 0xFF for b in data[100:108])  # page 1's b-tree header
    else:
        # Bytes inside a stored message (structure intact: only the checksum can tell).
        at = data.index(bytes([7]) * 300) + 100
        data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    db.write_bytes(bytes(data))
    before = _digest(db)
    with pytest.raises(StoreError) as info:
        _open_and_load(tmp_path)
    assert str(db) in str(info.value)
    assert "left as it is" in str(info.value)
    assert _digest(db) == before
    # Refusing let the directory go: nothing holds the lock.
    os.rename(db, tmp_path / "damaged.db")
    open_store(tmp_path).close()


def test_an_empty_directory_starts_empty(tmp_path: Path) -> None:
    store = open_store(tmp_path / "new")
    try:
        snapshot = store.load()
    finally:
        store.close()
    assert (snapshot.queues, snapshot.sessions, snapshot.messages) == ({}, {}, {})
