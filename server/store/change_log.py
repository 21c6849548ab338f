"""Which experiments changed, in order: whole-table reads kept current from the changes alone.

The read cache (server.store.read_cache) keeps an answer until `experiments` changes, then reads
the table again. For the progress chart's outline (every finished experiment: 0.16-0.25 s of
SQLite at 10^5 rows, more beside 100 agents' calls) that full pass ran after every result while
a dashboard was open, though a result changes one row or a few. Triggers now also append the id
of every inserted or updated row to `experiment_changes` (seq, experiment_id), in the same
transaction as the write, from any connection or process. `IncrementalRows` keeps a read's rows
with the log's seq it reflects; on the next read it re-reads only the rows logged since and
merges them: the chart's outline, and for the noise and the reference every leaderboard needs,
the repeated runs, the disqualified experiments and every confirmation run (their flags decoded
once per read of the row). `IncrementalGroups` does the same for aggregates by agent:
only the changed rows' agents are aggregated again (the leaderboard's per-agent totals: 52 ms
for the full GROUP BY at 10^5 rows, 0.4 ms for one agent). After one result at 10^5 rows the
leaderboard's rebuild went from 111-140 to 43-68 ms, the chart's from 360-460 to ~90 ms.

The log keeps its newest CHANGE_LOG_KEEP entries: a reader further behind (or on a file written
before the log existed) reads the table whole, as before. History is never deleted
(server.store), so a row leaves a read only when it stops matching its filter.

Two guards keep a delta read honest (both found by review, reproduced in tests/test_change_log.py):
- a reader's statements run in one read snapshot (`read_snapshot`): otherwise a large commit
  landing between the check that the log reaches back and the read of the ids could prune the
  very entries being read, and the reader would mark itself current with a change missed for
  good;
- each entry carries a random stamp, and a reader checks that the entry it stopped at is still
  the one it saw: a backup restored into the live file renumbers the log from an older point,
  and once it passed the reader's seq, a delta over another history would have been merged.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from server.store.database import read_snapshot, replace_stale_triggers

CHANGE_LOG_TABLE = "experiment_changes"
CHANGE_LOG_KEEP = 4096  # changes kept: a read further behind than this reads the table whole
MERGE_BY_SORT_FROM = 256  # more changed rows than this: merged by one sort, not one by one
ID_CHUNK = 500  # ids per `IN (...)` read (SQLite's default limit is 999 variables)

CHANGE_LOG_SQL = (
    f"CREATE TABLE IF NOT EXISTS {CHANGE_LOG_TABLE} "
    "(seq INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL, stamp TEXT)"
)
# Inside a trigger, last_insert_rowid() is the log row just written; it reverts when the
# trigger ends, so the experiment's own insert still reports the experiment's id.
_LOG_BODY = (
    f"INSERT INTO {CHANGE_LOG_TABLE} (experiment_id, stamp) "
    "VALUES (NEW.id, lower(hex(randomblob(6)))); "
    f"DELETE FROM {CHANGE_LOG_TABLE} WHERE seq <= last_insert_rowid() - {CHANGE_LOG_KEEP}; "
)
CHANGE_LOG_TRIGGERS = {
    "experiments_log_insert": "CREATE TRIGGER IF NOT EXISTS experiments_log_insert "
    f"AFTER INSERT ON experiments BEGIN {_LOG_BODY}END",
    "experiments_log_update": "CREATE TRIGGER IF NOT EXISTS experiments_log_update "
    f"AFTER UPDATE ON experiments BEGIN {_LOG_BODY}END",
}


def ensure_change_log(db: sqlite_utils.Database) -> None:
    """Create the log table and its triggers where missing, and bring an older version's (no
    stamps) up to date (inside the caller's transaction)."""
    db.execute(CHANGE_LOG_SQL)
    if "stamp" not in db.table(CHANGE_LOG_TABLE).columns_dict:
        db.execute(f"ALTER TABLE {CHANGE_LOG_TABLE} ADD COLUMN stamp TEXT")
    replace_stale_triggers(db, CHANGE_LOG_TRIGGERS)


@dataclass(frozen=True)
class LogPosition:
    """A point in the log: the seq of its newest entry (0: empty) and that entry's stamp."""

    seq: int
    stamp: str | None


def log_position(db: sqlite_utils.Database) -> LogPosition:
    """Where the log ends now."""
    row = db.execute(
        f"SELECT seq, stamp FROM {CHANGE_LOG_TABLE} ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return LogPosition(0, None) if row is None else LogPosition(int(row[0]), row[1])


def log_head(db: sqlite_utils.Database) -> int:
    """The seq of the newest logged change (0 while the log is empty)."""
    return log_position(db).seq


def changed_since(
    db: sqlite_utils.Database, since: LogPosition, head: LogPosition
) -> list[int] | None:
    """The ids of the experiments changed after `since` up to `head`, ascending; None when the
    log no longer holds `since` as it was seen (pruned, a file whose log began later, or a file
    replaced by another: a restored backup) or no longer reaches on from it. Read it in the
    same snapshot as `head` (`read_snapshot`)."""
    if since == head:
        return []
    if since.seq > 0:
        row = db.execute(
            f"SELECT stamp FROM {CHANGE_LOG_TABLE} WHERE seq = ?", [since.seq]
        ).fetchone()
        if row is None or row[0] != since.stamp:
            return None
    oldest = db.execute(
        f"SELECT MIN(seq) FROM {CHANGE_LOG_TABLE} WHERE seq > ?", [since.seq]
    ).fetchone()[0]
    if oldest is None or oldest != since.seq + 1:
        return None
    return [
        int(row[0])
        for row in db.execute(
            f"SELECT DISTINCT experiment_id FROM {CHANGE_LOG_TABLE} WHERE seq > ? AND seq <= ? "
            "ORDER BY experiment_id",
            [since.seq, head.seq],
        )
    ]


Row = tuple[Any, ...]  # a row as SQLite returned it, or an aggregate


@dataclass
class _Kept:
    position: LogPosition
    ids: list[int]
    rows: list[Any]  # what `make_row` made of each row


class IncrementalRows:
    """One read of `experiments` (a row filter, columns whose first is `id`, in id order),
    kept per parameter set and brought up to date from the change log on each call.

    `columns` and `where` may hold `?` placeholders: `columns`' are bound first, then
    `where`'s, from the `params` of each call (also the key its rows are kept under).
    `make_row` turns each row read (a tuple of `columns`) into what is kept and answered, once
    per read of that row (its JSON columns decoded, say), not on every call; what it makes is
    shared by every caller, so callers must not change it.
    """

    def __init__(
        self,
        columns: str,
        where: str,
        make_row: Callable[[Row], Any] = tuple,
        index: str | None = None,
    ) -> None:
        self.columns, self.where, self.make_row = columns, where, make_row
        self.source = "experiments" + (f" INDEXED BY {index}" if index else "")
        self._kept: dict[Hashable, _Kept] = {}
        self._lock = threading.Lock()
        self.full_reads = self.delta_reads = 0  # how each call was answered (tests, benches)

    def rows(self, db: sqlite_utils.Database, params: Sequence[object]) -> list[Any]:
        """The matching rows now, oldest id first (a fresh list the caller may keep)."""
        if db.conn.in_transaction:  # may see uncommitted rows: never kept
            return self._read_all(db, params)[1]
        key = tuple(params)
        with self._lock, read_snapshot(db):  # the head, the log and the rows: one moment
            head = log_position(db)
            kept = self._kept.get(key)
            if kept is not None and kept.position == head:
                return list(kept.rows)
            changed = None if kept is None else changed_since(db, kept.position, head)
            if kept is None or changed is None:
                kept = _Kept(head, *self._read_all(db, params))
                self.full_reads += 1
            else:
                self._merge(kept, self._read_ids(db, params, changed), changed)
                kept.position = head
                self.delta_reads += 1
            self._kept[key] = kept
            return list(kept.rows)

    def _read_all(
        self, db: sqlite_utils.Database, params: Sequence[object]
    ) -> tuple[list[int], list[Any]]:
        # Sorted here, not by ORDER BY: with it SQLite walked the table in id order, code and
        # all, instead of a covering index (the disqualified experiments: 154 -> 10 ms at 10^5).
        sql = f"SELECT {self.columns} FROM {self.source} WHERE {self.where}"
        rows = sorted(db.execute(sql, list(params)).fetchall(), key=lambda row: int(row[0]))
        return [int(row[0]) for row in rows], [self.make_row(tuple(row)) for row in rows]

    def _read_ids(
        self, db: sqlite_utils.Database, params: Sequence[object], ids: list[int]
    ) -> dict[int, Any]:
        """The rows of `ids` that match now, by id (an id missing no longer matches). The filter
        is a column of the answer, not a condition: SQLite finds the rows by id, whatever
        index the filter's columns would have tempted it to walk."""
        found: dict[int, Any] = {}
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            sql = (
                f"SELECT {self.columns}, ({self.where}) FROM experiments "
                f"WHERE id IN ({', '.join('?' for _ in chunk)})"
            )
            for *row, matches in db.execute(sql, [*params, *chunk]).fetchall():
                if matches:
                    found[int(row[0])] = self.make_row(tuple(row))
        return found

    @staticmethod
    def _merge(kept: _Kept, found: dict[int, Any], changed: list[int]) -> None:
        """Replace, insert or drop each changed row in place, keeping id order."""
        if len(changed) > MERGE_BY_SORT_FROM:
            by_id = dict(zip(kept.ids, kept.rows, strict=True))
            for experiment_id in changed:
                by_id.pop(experiment_id, None)
            by_id.update(found)
            kept.ids = sorted(by_id)
            kept.rows = [by_id[i] for i in kept.ids]
            return
        for experiment_id in changed:
            at = bisect.bisect_left(kept.ids, experiment_id)
            present = at < len(kept.ids) and kept.ids[at] == experiment_id
            if experiment_id in found and present:
                kept.rows[at] = found[experiment_id]
            elif experiment_id in found:
                kept.ids.insert(at, experiment_id)
                kept.rows.insert(at, found[experiment_id])
            elif present:
                del kept.ids[at]
                del kept.rows[at]


class IncrementalGroups:
    """Aggregates of `experiments` grouped by a column that is never NULL and that no write
    changes after the insert (an experiment's `agent`: Store.update_experiment never sets it),
    kept and brought up to date from the change log: after a change, only the groups of the
    changed rows are aggregated again.

    `aggregates` is the SELECT list after the group column; `where` filters the rows (its
    columns may change: a changed row's whole group is aggregated again).
    """

    def __init__(self, group_column: str, aggregates: str, where: str) -> None:
        self.group_column, self.aggregates, self.where = group_column, aggregates, where
        self._kept: tuple[LogPosition, dict[Any, Row]] | None = None
        self._lock = threading.Lock()
        self.full_reads = self.delta_reads = 0

    def groups(self, db: sqlite_utils.Database) -> dict[Any, Row]:
        """Each group's aggregates now, by group (a fresh dict the caller may keep)."""
        if db.conn.in_transaction:
            return self._aggregate(db, None)
        with self._lock, read_snapshot(db):  # the head, the log and the rows: one moment
            head = log_position(db)
            if self._kept is not None and self._kept[0] == head:
                return dict(self._kept[1])
            changed = None if self._kept is None else changed_since(db, self._kept[0], head)
            if self._kept is None or changed is None:
                groups = self._aggregate(db, None)
                self.full_reads += 1
            else:
                groups = dict(self._kept[1])
                touched = self._groups_of(db, changed)
                for key in touched:
                    groups.pop(key, None)
                groups.update(self._aggregate(db, touched))
                self.delta_reads += 1
            self._kept = (head, groups)
            return dict(groups)

    def _groups_of(self, db: sqlite_utils.Database, ids: list[int]) -> set[Any]:
        found: set[Any] = set()
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            found.update(
                row[0]
                for row in db.execute(
                    f"SELECT DISTINCT {self.group_column} FROM experiments "
                    f"WHERE id IN ({', '.join('?' for _ in chunk)})",
                    chunk,
                )
            )
        return found

    def _aggregate(self, db: sqlite_utils.Database, keys: set[Any] | None) -> dict[Any, Row]:
        """Every group's aggregates (`keys` None), or those of `keys` only."""
        if keys is None:
            return self._query(db, self.where, [])
        out: dict[Any, Row] = {}
        named = sorted(keys)
        for start in range(0, len(named), ID_CHUNK):
            chunk = named[start : start + ID_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            out.update(
                self._query(db, f"({self.where}) AND {self.group_column} IN ({marks})", chunk)
            )
        return out

    def _query(self, db: sqlite_utils.Database, where: str, params: list[Any]) -> dict[Any, Row]:
        sql = (
            f"SELECT {self.group_column}, {self.aggregates} FROM experiments WHERE {where} "
            f"GROUP BY {self.group_column}"
        )
        return {row[0]: tuple(row[1:]) for row in db.execute(sql, params).fetchall()}
