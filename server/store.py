"""The history store: one SQLite file (WAL) through sqlite-utils, shared by every agent.

Every write runs inside `write_transaction()`, which starts with BEGIN IMMEDIATE: with
deferred transactions several writer processes hit "database is locked" even with a
busy timeout (LIBRARY-NOTES).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 30_000


def open_database(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) a SQLite file in WAL mode with a busy timeout.

    The connection may be used from several threads, but only under `write_transaction`
    for writes; reads are safe at any time in WAL mode.
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                           isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    db = sqlite_utils.Database(conn)
    return db


_locks: dict[int, threading.RLock] = {}
_locks_guard = threading.Lock()


def _lock_for(db: sqlite_utils.Database) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(id(db.conn), threading.RLock())


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Run the block as one BEGIN IMMEDIATE transaction: committed on success, rolled back on error.

    Re-entrant within a thread (an inner call joins the outer transaction).
    """
    lock = _lock_for(db)
    with lock:
        if db.conn.in_transaction:
            yield db
            return
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        else:
            db.conn.execute("COMMIT")
