"""The store's safety rules at open (docs/durability.md, "Safety rules"): one gateway
per data directory, no store written by a newer gateway, no damaged database.

Each refusal is a StoreError naming the path; a refused database is never written to.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1
LOCK_NAME = "gateway.lock"


class StoreError(Exception):
    """The store cannot be opened; the message says why and names the path."""


def lock(directory: Path) -> int:
    """Take the data directory (an exclusive ``flock`` on its lock file, which holds the
    owner's pid); the descriptor to ``unlock``. StoreError if another gateway holds it."""
    lock_path = directory / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StoreError(
            f"the data directory {directory} is in use by another gateway "
            f"(pid {holder}, lock {lock_path})"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check(db: sqlite3.Connection, path: Path, existed: bool) -> int:
    """Refuse a database this gateway cannot use; returns its schema version."""
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {path} was written by a newer gateway (schema "
                f"{version}; this one reads up to {SCHEMA_VERSION}); refusing to start"
            )
        if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(
                f"{path} is a database with tables but no gateway schema version: "
                "not a gateway store (or one from an unreleased build); it was left as "
                "it is. Move it away to start empty."
            )
        if existed:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            size = path.stat().st_size
            if size % page:
                raise StoreError(
                    f"the store {path} is corrupt (its size, {size} bytes, is not a "
                    f"whole number of {page}-byte pages: it was truncated); it was left "
                    "as it is. Restore it from a backup or move it away to start empty."
                )
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise StoreError(
                    f"the store {path} is corrupt ({'; '.join(problems[:3])}); it "
                    "was left as it is. Restore it from a backup or move it away to "
                    "start empty."
                )
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"the store {path} is not a readable database ({exc}); it was left "
            "as it is. Restore it from a backup or move it away to start empty."
        ) from None
    return version
