"""SQLite connections for the record: WAL, a busy timeout, one connection per thread, and
`write_transaction`, the one way to write.

Every write runs inside `write_transaction()`, which starts with BEGIN IMMEDIATE: with
deferred transactions several writer processes hit "database is locked" even with a
busy timeout (measured: 22-42 of 240 writes from 6 processes failed; with BEGIN IMMEDIATE, none).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

BUSY_TIMEOUT_MS = 30_000


def utc_now(later: timedelta = timedelta(0)) -> str:
    """An ISO-8601 UTC timestamp (milliseconds), as stored in every table: now, or `later`."""
    return (datetime.now(UTC) + later).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_database(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) a SQLite file in WAL mode with a busy timeout.

    The connection may be shared by threads; writes go through `write_transaction`.
    """
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return sqlite_utils.Database(conn)


_locks: dict[int, threading.RLock] = {}
_locks_guard = threading.Lock()


def _lock_for(db: sqlite_utils.Database) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(id(db.conn), threading.RLock())


@contextmanager
def _transaction(db: sqlite_utils.Database, begin: str) -> Iterator[sqlite_utils.Database]:
    """The block as one transaction opened by `begin`: committed on success, rolled back on
    error; joins a transaction already open; other threads sharing the connection wait."""
    with _lock_for(db):
        if db.conn.in_transaction:
            yield db
            return
        db.conn.execute(begin)
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise
        else:
            if db.conn.in_transaction:
                db.conn.execute("COMMIT")


def write_transaction(db: sqlite_utils.Database) -> AbstractContextManager[sqlite_utils.Database]:
    """Run the block as one BEGIN IMMEDIATE transaction: committed on success, rolled back on error.

    Re-entrant within a thread (an inner call joins the outer transaction); other threads
    sharing the connection wait their turn.
    """
    return _transaction(db, "BEGIN IMMEDIATE")


def read_snapshot(db: sqlite_utils.Database) -> AbstractContextManager[sqlite_utils.Database]:
    """Run the block's reads as one deferred transaction: every SELECT in it sees the file as
    of its first one (WAL), whatever other connections or processes commit meanwhile. Outside
    one, each statement sees its own moment. Joins a transaction already open."""
    return _transaction(db, "BEGIN")


def stale_triggers(db: sqlite_utils.Database, wanted: dict[str, str]) -> list[str]:
    """The triggers of `wanted` (name: `CREATE TRIGGER IF NOT EXISTS ...`) that are missing or
    whose stored SQL differs (an older version's body). SQLite stores the statement without
    its IF NOT EXISTS."""
    stored = dict(
        db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    )
    return [
        name
        for name, sql in wanted.items()
        if stored.get(name) != sql.replace(" IF NOT EXISTS", "", 1)
    ]


def replace_stale_triggers(db: sqlite_utils.Database, wanted: dict[str, str]) -> None:
    """Create the missing triggers of `wanted` and replace the stale ones, inside the caller's
    transaction."""
    for name in stale_triggers(db, wanted):
        db.execute(f"DROP TRIGGER IF EXISTS [{name}]")
        db.execute(wanted[name])


class ThreadLocalDatabase:
    """One sqlite-utils Database per thread over the same file, behind one object.

    sqlite-utils 4 wraps reads in SAVEPOINTs: two threads sharing one connection break each
    other's transactions. Each thread (MCP worker threads, the scheduler, the web server)
    gets its own connection; WAL and BEGIN IMMEDIATE keep them consistent.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()

    def get(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = open_database(self._path)
            self._local.db = db
        return db

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)
