"""Answers of the record's whole-table reads, kept until the `experiments` table changes.

The leaderboard, the briefing and the dashboard read aggregates over every experiment (the
noise's repeated runs, each improvement's confirmations, per-agent totals, the chart's points);
at 100,000 experiments each costs 20 ms to 2 s, and every agent asks for them. They depend on
`experiments` alone, so each answer is kept with the table's change counter (`meta` key
`experiments_changes`, bumped by a trigger on every insert and update, committed or rolled
back with the write itself, from any connection or process) and served again while the counter
is unchanged. Reads inside a write transaction bypass the cache (they may see uncommitted rows).
Callers get fresh lists and row dicts, never the kept ones (see `_copy`).

Each bump writes a random suffix beside the count (`42.9f3c01a7e2b4`), and an answer serves
only a reader who read the very same value: a backup restored into the live file moves the
count back, and without the suffix the answers kept from the discarded history (at a count the
restored file reaches again after a few writes) would be served as current.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import sqlite_utils

from server.store.database import replace_stale_triggers

CHANGES_KEY = "experiments_changes"
MAX_ENTRIES = 64  # distinct queries kept (a handful of settings); the oldest go first

T = TypeVar("T")

# CAST takes the leading count of `count.suffix` (and of a plain count, as older files hold).
_BUMP = (
    "BEGIN UPDATE meta SET value = (CAST(value AS INTEGER) + 1) || '.' || "
    f"lower(hex(randomblob(6))) WHERE key = '{CHANGES_KEY}'; END"
)
CHANGE_TRIGGERS = {
    "experiments_changes_insert": "CREATE TRIGGER IF NOT EXISTS experiments_changes_insert "
    f"AFTER INSERT ON experiments {_BUMP}",
    "experiments_changes_update": "CREATE TRIGGER IF NOT EXISTS experiments_changes_update "
    f"AFTER UPDATE ON experiments {_BUMP}",
}


def ensure_change_counter(db: sqlite_utils.Database) -> None:
    """Create the counter row and its triggers where missing, and replace the triggers of an
    older version (inside the caller's transaction)."""
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", [CHANGES_KEY])
    replace_stale_triggers(db, CHANGE_TRIGGERS)


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
    A key's build lock lives only while someone builds or waits: some keys are one-off (a
    reference that leaves one experiment out, the confirmations of one list of ids).
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._entries: dict[Hashable, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self._building: dict[Hashable, tuple[threading.Lock, list[int]]] = {}

    def _fresh(self, key: Hashable, version: str) -> tuple[bool, Any]:
        """(True, the kept answer) if it was computed at exactly `version`, else (False, None)."""
        with self._lock:
            kept = self._entries.get(key)
        if kept is not None and kept[0] == version:
            return True, kept[1]
        return False, None

    def building_locks(self) -> int:
        """How many keys have a build under way or waited for (tests: none are left behind)."""
        with self._lock:
            return len(self._building)

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
            building, users = self._building.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with building:  # one rebuild per key; the others wait for it, then use its answer
                found, value = self._fresh(key, version)
                if not found:
                    value = compute()
                    with self._lock:
                        if key not in self._entries and len(self._entries) >= self._max_entries:
                            self._entries.pop(next(iter(self._entries)))
                        self._entries[key] = (version, value)
        finally:
            with self._lock:
                users[0] -= 1
                if users[0] == 0:
                    del self._building[key]
        return _copy(value)
