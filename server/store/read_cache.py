"""Answers of the record's whole-table reads, kept until the `experiments` table changes.

The leaderboard, the briefing and the dashboard read aggregates over every experiment (the
noise's repeated runs, each improvement's confirmations, per-agent totals, the chart's points);
at 100,000 experiments each costs 20 ms to 2 s, and every agent asks for them. They depend on
`experiments` alone, so each answer is kept with the table's change counter (`meta` key
`experiments_changes`, bumped by a trigger on every insert and update, committed or rolled
back with the write itself, from any connection or process) and served again while the counter
is unchanged. Reads inside a write transaction bypass the cache (they may see uncommitted rows).
Callers get fresh lists and row dicts, never the kept ones (see `_copy`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import sqlite_utils

CHANGES_KEY = "experiments_changes"
MAX_ENTRIES = 64  # distinct queries kept (a handful of settings); the oldest go first

T = TypeVar("T")

CHANGE_TRIGGERS = {
    "experiments_changes_insert": "CREATE TRIGGER IF NOT EXISTS experiments_changes_insert "
    "AFTER INSERT ON experiments BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
    f"WHERE key = '{CHANGES_KEY}'; END",
    "experiments_changes_update": "CREATE TRIGGER IF NOT EXISTS experiments_changes_update "
    "AFTER UPDATE ON experiments BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
    f"WHERE key = '{CHANGES_KEY}'; END",
}


def ensure_change_counter(db: sqlite_utils.Database) -> None:
    """Create the counter row and its triggers where missing (inside the caller's transaction)."""
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", [CHANGES_KEY])
    for sql in CHANGE_TRIGGERS.values():
        db.execute(sql)


def experiments_changes(db: sqlite_utils.Database) -> str | None:
    """The change counter of `experiments` (None on a store without one)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", [CHANGES_KEY]).fetchone()
    return None if row is None else str(row[0])


def _copy(value: Any) -> Any:
    """A fresh list (of fresh row dicts) or dict (of fresh such lists: confirmation_runs_of's
    runs by experiment): a caller may add, drop or change rows and their keys without touching
    ours. Values inside a row (decoded flag lists) are shared: no caller changes them. A full
    deep copy cost more than the query (3 s for the chart's 10^5 rows)."""
    if isinstance(value, list):
        return [dict(v) if isinstance(v, dict) else v for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


class ReadCache:
    """Kept answers by (query, arguments), valid for one value of the change counter.

    One computation per key at a time: when a change makes an answer stale, the first caller
    rebuilds it and the others wait for that answer instead of each rebuilding it too (with 100
    agents' calls in worker threads, every change set off dozens of identical ~1 s rebuilds).
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def _fresh(self, key: Hashable, version: str) -> tuple[bool, Any]:
        """(True, the kept answer) if it was computed at `version` or later, else (False, None)."""
        with self._lock:
            kept = self._entries.get(key)
        if kept is not None and _not_older(kept[0], version):
            return True, kept[1]
        return False, None

    def get(self, db: sqlite_utils.Database, key: Hashable, compute: Callable[[], T]) -> T:
        """The kept answer of `key` while `experiments` is unchanged, else `compute()` (kept)."""
        if db.conn.in_transaction:
            return compute()
        version = experiments_changes(db)  # read first: a change during compute() is not hidden
        if version is None:
            return compute()
        found, value = self._fresh(key, version)
        if found:
            return _copy(value)
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one rebuild per key; the others wait for it, then use its answer
            found, value = self._fresh(key, version)
            if found:
                return _copy(value)
            value = compute()
            with self._lock:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.pop(next(iter(self._entries)))
                self._entries[key] = (version, value)
        return _copy(value)


def _not_older(kept: str, wanted: str) -> bool:
    """Whether an answer computed at counter value `kept` serves a reader who saw `wanted`:
    the same value, or a later one (computed from a state at least as new as the reader's)."""
    try:
        return int(kept) >= int(wanted)
    except ValueError:
        return kept == wanted
