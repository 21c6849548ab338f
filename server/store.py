"""The history store: one SQLite file (WAL) through sqlite-utils, shared by every agent.

Every write runs inside `write_transaction()`, which starts with BEGIN IMMEDIATE: with
deferred transactions several writer processes hit "database is locked" even with a
busy timeout (LIBRARY-NOTES). Tables are named for a reader: open the file with any
SQLite tool (datasette works) and `experiments` is the whole research record.

Nothing in this module deletes an experiment: history is append-and-update only.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import sqlite_utils

BUSY_TIMEOUT_MS = 30_000
SERVER_AGENT = (
    "server"  # the name the server's own runs (baselines, drift checks) are recorded under
)
# The largest experiment or claim id the server accepts: SQLite's INTEGER is 64-bit signed, and
# no research record comes near 2**31 rows; anything larger is a malformed id, refused early.
MAX_ROW_ID = 2**31 - 1
SCHEMA_VERSION = 1

# Terminal and live states of an experiment.
QUEUED, RUNNING = "queued", "running"
OK, CRASH, TIMEOUT, INTEGRITY_FAIL, CANCELLED, INTERRUPTED = (
    "ok",
    "crash",
    "timeout",
    "integrity_fail",
    "cancelled",
    "interrupted",
)
LIVE_STATUSES = (QUEUED, RUNNING)
FINAL_STATUSES = (OK, CRASH, TIMEOUT, INTEGRITY_FAIL, CANCELLED, INTERRUPTED)

EXPERIMENT_COLUMNS: dict[str, type] = {
    "id": int,
    "agent": str,  # whose idea the code is: credited on the leaderboard, in verdicts and history
    "requested_by": str,  # who asked for this run: charged to their quota (NULL: the server's own)
    "kind": str,  # experiment | baseline | confirmation | promotion | drift_check
    "parent_id": int,  # the experiment whose code the workspace started from
    "confirms_id": int,  # for confirmation runs: the experiment being confirmed
    "status": str,
    "verdict": str,  # improved | within_noise | worse | failed (set when final)
    "description": str,
    "code_hash": str,
    "code": str,  # JSON {file name: text} of the editable files
    "diff_parent": str,
    "diff_baseline": str,
    "val_bpb": float,
    "delta_parent": float,  # improvement over the parent (positive = better)
    "delta_best": float,  # improvement over the best at the time it finished
    "metrics": str,  # JSON: everything the evaluator reported
    "train_seconds": float,
    "eval_seconds": float,
    "total_seconds": float,
    "overhead_seconds": float,
    "cpu_seconds": float,
    "cpu_share": float,
    "peak_memory_mb": float,
    "budget_seconds": float,
    "budget_kind": str,
    "device": str,
    "hardware": str,  # fingerprint: device name | torch version | threads
    "torch_version": str,
    "seed": int,
    "isolation": str,
    "flags": str,  # JSON list of contract-touching findings in the diff
    "disqualified": int,  # 1: may not count as an improvement (seed-only change, contended CPU)
    "failure_reason": str,
    "log_tail": str,
    "hashes": str,  # JSON: evaluator / tokenizer / val sha256 used for this run
    "paper_ids": str,  # JSON list of arXiv ids that motivated it
    "attempt": int,
    "retry_of": int,  # re-queued after an interruption: the interrupted experiment
    "scale": str,
    "created_at": str,
    "started_at": str,
    "finished_at": str,
}


READ_INDEXES = {
    "idx_experiments_confirms_id": "CREATE INDEX IF NOT EXISTS idx_experiments_confirms_id "
    "ON experiments(confirms_id)",
    "idx_experiments_status_val_bpb": "CREATE INDEX IF NOT EXISTS idx_experiments_status_val_bpb "
    "ON experiments(status, val_bpb)",
    # list_experiments(order='best') sorts by exactly these expressions.
    "idx_experiments_best": "CREATE INDEX IF NOT EXISTS idx_experiments_best "
    "ON experiments(val_bpb IS NULL, val_bpb, id)",
    # Every submit counts the requester's live and total runs (the quota).
    "idx_experiments_requested_by": "CREATE INDEX IF NOT EXISTS idx_experiments_requested_by "
    "ON experiments(requested_by, status)",
}


def utc_now() -> str:
    """An ISO-8601 UTC timestamp with seconds precision, as stored in every table."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Run the block as one BEGIN IMMEDIATE transaction: committed on success, rolled back on error.

    Re-entrant within a thread (an inner call joins the outer transaction); other threads
    sharing the connection wait their turn.
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
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise
        else:
            if db.conn.in_transaction:
                db.conn.execute("COMMIT")


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


class ExperimentNotFound(KeyError):
    """No experiment with that id."""


class Store:
    """The research record: agents, tokens, experiments (with full-text search), claims, baselines."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db: sqlite_utils.Database = cast(sqlite_utils.Database, ThreadLocalDatabase(self.path))
        self._create_tables()

    # ------------------------------------------------------------ schema

    def _create_tables(self) -> None:
        db = self.db
        with write_transaction(db):
            if "experiments" not in db.table_names():
                db.table("experiments").create(
                    EXPERIMENT_COLUMNS, pk="id", not_null={"agent", "status", "created_at"}
                )
                db.table("experiments").create_index(["status"])
                db.table("experiments").create_index(["agent", "id"])
                db.table("experiments").create_index(["code_hash"])
                db.table("experiments").create_index(["val_bpb"])
            if "agents" not in db.table_names():
                db.table("agents").create(
                    {
                        "name": str,
                        "created_at": str,
                        "max_queued": int,
                        "max_experiments": int,
                        "max_device_hours": float,
                        "workspace_parent_id": int,
                    },
                    pk="name",
                )
            if "tokens" not in db.table_names():
                db.table("tokens").create(
                    {
                        "token_sha256": str,
                        "agent": str,
                        "role": str,
                        "created_at": str,
                        "revoked_at": str,
                    },
                    pk="token_sha256",
                )
            if "claims" not in db.table_names():
                db.table("claims").create(
                    {
                        "id": int,
                        "agent": str,
                        "text": str,
                        "created_at": str,
                        "expires_at": str,
                        "released_at": str,
                        "released_by_experiment": int,
                    },
                    pk="id",
                )
            if "baselines" not in db.table_names():
                db.table("baselines").create(
                    {
                        "hardware": str,
                        "scale": str,
                        "budget_kind": str,
                        "budget_seconds": float,
                        "runs": int,
                        "mean": float,
                        "sd": float,
                        "values": str,
                        "experiment_ids": str,
                        "updated_at": str,
                    },
                    pk=("hardware", "scale", "budget_kind", "budget_seconds"),
                )
            if "experiment_papers" not in db.table_names():
                db.table("experiment_papers").create(
                    {"experiment_id": int, "arxiv_id": str}, pk=("experiment_id", "arxiv_id")
                )
            if "meta" not in db.table_names():
                db.table("meta").create({"key": str, "value": str}, pk="key")
                db.table("meta").insert({"key": "schema_version", "value": str(SCHEMA_VERSION)})
        self._migrate_requested_by()
        if not db.table("experiments").detect_fts():
            with write_transaction(db):
                db.table("experiments").enable_fts(
                    ["description", "diff_parent"], tokenize="porter", create_triggers=True
                )
        # Every get_history call reads the leaderboard (ok runs by val_bpb, each one's
        # confirmations). val_bpb and the filter columns sit behind the code and diff text in
        # each row, so without these indexes each of those reads scans the whole table
        # (bench/tools.py: 1.7 s at 10,000 experiments). Created on old files too.
        missing = {
            name: sql
            for name, sql in READ_INDEXES.items()
            if name not in {index.name for index in db.table("experiments").indexes}
        }
        if missing:
            with write_transaction(db):
                for sql in missing.values():
                    db.execute(sql)

    def _migrate_requested_by(self) -> None:
        """Stores written before `requested_by` existed: add the column and fill it in.

        Those stores recorded every run an agent caused under its own name (confirmations and
        promotions under the agent that asked), so `agent` is who asked, except for the
        server's own runs (baselines, drift checks), which are charged to nobody.
        """
        db = self.db
        if "requested_by" in db.table("experiments").columns_dict:
            return
        with write_transaction(db):
            db.execute("ALTER TABLE experiments ADD COLUMN requested_by TEXT")
            db.execute(
                "UPDATE experiments SET requested_by = agent "
                "WHERE agent != ? AND kind NOT IN ('baseline', 'drift_check')",
                [SERVER_AGENT],
            )

    # ------------------------------------------------------------ experiments

    def create_experiment(self, **fields: Any) -> int:
        """Insert a new experiment row (normally status `queued`) and return its id."""
        row = {k: _encode(v) for k, v in fields.items() if k in EXPERIMENT_COLUMNS and k != "id"}
        row.setdefault("status", QUEUED)
        row.setdefault("created_at", utc_now())
        row.setdefault("attempt", 1)
        with write_transaction(self.db):
            experiment_id = int(cast(int, self.db.table("experiments").insert(row).last_pk))
            for arxiv_id in fields.get("paper_ids") or []:
                self.db.table("experiment_papers").insert(
                    {"experiment_id": experiment_id, "arxiv_id": arxiv_id}, ignore=True
                )
        return experiment_id

    def update_experiment(self, experiment_id: int, **fields: Any) -> None:
        """Set some columns of one experiment (never its id, agent or creation time)."""
        row = {
            k: _encode(v)
            for k, v in fields.items()
            if k in EXPERIMENT_COLUMNS and k not in ("id", "agent", "created_at")
        }
        if not row:
            return
        with write_transaction(self.db):
            self.db.table("experiments").update(experiment_id, row)

    def transition(self, experiment_id: int, from_statuses: Sequence[str], **fields: Any) -> bool:
        """Update only if the experiment is still in one of from_statuses; True if it was.

        The compare-and-set that keeps a cancel and a finishing run from overwriting each other.
        """
        row = {
            k: _encode(v)
            for k, v in fields.items()
            if k in EXPERIMENT_COLUMNS and k not in ("id", "agent", "created_at")
        }
        assignments = ", ".join(f"[{k}] = ?" for k in row)
        marks = ", ".join("?" for _ in from_statuses)
        with write_transaction(self.db):
            cursor = self.db.execute(
                f"UPDATE experiments SET {assignments} WHERE id = ? AND status IN ({marks})",
                [*row.values(), experiment_id, *from_statuses],
            )
            return cursor.rowcount == 1

    def get_experiment(self, experiment_id: int) -> dict[str, Any]:
        """One experiment as a dict with JSON columns decoded; ExperimentNotFound if absent."""
        rows = list(self.db.query("SELECT * FROM experiments WHERE id = ?", [experiment_id]))
        if not rows:
            raise ExperimentNotFound(experiment_id)
        return _decode(rows[0])

    def experiment_exists(self, experiment_id: int) -> bool:
        return bool(list(self.db.query("SELECT 1 FROM experiments WHERE id = ?", [experiment_id])))

    def list_experiments(
        self,
        *,
        agent: str | None = None,
        requested_by: str | None = None,
        involving: str | None = None,
        status: str | Sequence[str] | None = None,
        order: str = "recent",
        query: str | None = None,
        kind: str | None = None,
        scale: str | None = None,
        limit: int = 20,
        offset: int = 0,
        columns: Sequence[str] | None = None,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Filtered, ordered rows (`recent`: newest first; `best`: lowest val_bpb first; `oldest`).

        `agent`: credited to that agent; `requested_by`: asked for (charged to) that agent;
        `involving`: either of the two.
        """
        where: list[str] = []
        params: list[Any] = []
        if agent:
            where.append("e.agent = ?")
            params.append(agent)
        if requested_by:
            where.append("e.requested_by = ?")
            params.append(requested_by)
        if involving:
            where.append("(e.agent = ? OR e.requested_by = ?)")
            params.extend([involving, involving])
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"e.status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if kind:
            where.append("e.kind = ?")
            params.append(kind)
        if scale:
            where.append("COALESCE(e.scale, 'S') = ?")
            params.append(scale)
        if before_id is not None:
            where.append("e.id < ?")
            params.append(before_id)
        if query:
            where.append(
                "e.rowid IN (SELECT rowid FROM experiments_fts WHERE experiments_fts MATCH ?)"
            )
            params.append(_fts_quote(query))
        order_sql = {
            "recent": "e.id DESC",
            "oldest": "e.id ASC",
            "best": "e.val_bpb IS NULL, e.val_bpb ASC, e.id ASC",
        }[order]
        select = ", ".join(f"e.[{c}]" for c in columns) if columns else "e.*"
        sql = f"SELECT {select} FROM experiments e"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order_sql} LIMIT ? OFFSET ?"
        return [_decode(r) for r in self.db.query(sql, [*params, limit, offset])]

    def count_experiments(self, **filters: Any) -> int:
        """How many experiments match: agent, requested_by, involving, status (one or several),
        kind, scale and query as in list_experiments."""
        where: list[str] = []
        params: list[Any] = []
        for key in ("agent", "requested_by", "kind"):
            if filters.get(key):
                where.append(f"{key} = ?")
                params.append(filters[key])
        if filters.get("involving"):
            where.append("(agent = ? OR requested_by = ?)")
            params.extend([filters["involving"], filters["involving"]])
        status = filters.get("status")
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if filters.get("scale"):
            where.append("COALESCE(scale, 'S') = ?")
            params.append(filters["scale"])
        if filters.get("query"):
            where.append(
                "rowid IN (SELECT rowid FROM experiments_fts WHERE experiments_fts MATCH ?)"
            )
            params.append(_fts_quote(filters["query"]))
        sql = "SELECT COUNT(*) FROM experiments" + (
            " WHERE " + " AND ".join(where) if where else ""
        )
        return int(next(iter(self.db.execute(sql, params)))[0])

    def find_by_code(self, code_hash: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The latest finished, non-failed experiment with the same code and run settings, if any."""
        rows = self.db.query(
            "SELECT * FROM experiments WHERE code_hash = ? AND status IN ('ok', 'queued', 'running') "
            "AND hardware IS ? AND budget_seconds IS ? AND budget_kind IS ? AND COALESCE(scale, 'S') = ? "
            "AND kind != 'confirmation' ORDER BY id DESC LIMIT 1",
            [
                code_hash,
                settings.get("hardware"),
                settings.get("budget_seconds"),
                settings.get("budget_kind"),
                settings.get("scale") or "S",
            ],
        )
        for row in rows:
            return _decode(row)
        return None

    def best_experiment(
        self,
        *,
        hardware: str | None = None,
        budget_seconds: float | None = None,
        scale: str | None = None,
        exclude_id: int | None = None,
    ) -> dict[str, Any] | None:
        """The best `ok` experiment whose verdict did not disqualify it (seed-only, contended)."""
        where = [
            "status = 'ok'",
            "val_bpb IS NOT NULL",
            "COALESCE(disqualified, 0) = 0",
        ]
        params: list[Any] = []
        if hardware is not None:
            where.append("hardware = ?")
            params.append(hardware)
        if budget_seconds is not None:
            where.append("budget_seconds = ?")
            params.append(budget_seconds)
        if scale is not None:
            where.append("COALESCE(scale, 'S') = ?")
            params.append(scale)
        if exclude_id is not None:
            where.append("id != ?")
            params.append(exclude_id)
        rows = list(
            self.db.query(
                f"SELECT * FROM experiments WHERE {' AND '.join(where)} ORDER BY val_bpb ASC, id ASC LIMIT 1",
                params,
            )
        )
        return _decode(rows[0]) if rows else None

    def next_queued(self) -> list[dict[str, Any]]:
        """Every queued experiment, oldest first (the scheduler picks fairly among them)."""
        return [
            _decode(r)
            for r in self.db.query("SELECT * FROM experiments WHERE status = 'queued' ORDER BY id")
        ]

    def mark_interrupted_runs(self) -> list[int]:
        """At startup: runs left `running` by a dead server become `interrupted`; returns their ids."""
        with write_transaction(self.db):
            ids = [
                r["id"]
                for r in self.db.query("SELECT id FROM experiments WHERE status = 'running'")
            ]
            for experiment_id in ids:
                self.db.table("experiments").update(
                    experiment_id,
                    {
                        "status": INTERRUPTED,
                        "finished_at": utc_now(),
                        "failure_reason": "the server stopped while this run was in flight",
                    },
                )
        return ids

    def papers_of(self, experiment_id: int) -> list[str]:
        return [
            r["arxiv_id"]
            for r in self.db.query(
                "SELECT arxiv_id FROM experiment_papers WHERE experiment_id = ? ORDER BY arxiv_id",
                [experiment_id],
            )
        ]

    def experiments_citing(self, arxiv_id: str) -> list[int]:
        return [
            r["experiment_id"]
            for r in self.db.query(
                "SELECT experiment_id FROM experiment_papers WHERE arxiv_id = ? ORDER BY experiment_id",
                [arxiv_id],
            )
        ]

    def lineage(self, experiment_id: int, limit: int = 200) -> list[dict[str, Any]]:
        """The chain of parents from this experiment back to the baseline (this one first)."""
        chain: list[dict[str, Any]] = []
        current: int | None = experiment_id
        seen: set[int] = set()
        while current is not None and current not in seen and len(chain) < limit:
            seen.add(current)
            rows = list(
                self.db.query(
                    "SELECT id, agent, kind, parent_id, status, verdict, val_bpb, description FROM experiments WHERE id = ?",
                    [current],
                )
            )
            if not rows:
                break
            chain.append(rows[0])
            current = rows[0]["parent_id"]
        return chain

    # ------------------------------------------------------------ agents and tokens

    def ensure_agent(self, name: str) -> None:
        with write_transaction(self.db):
            self.db.table("agents").insert({"name": name, "created_at": utc_now()}, ignore=True)

    def agent(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM agents WHERE name = ?", [name]))
        return rows[0] if rows else None

    def set_quota(self, name: str, **quota: Any) -> None:
        self.ensure_agent(name)
        with write_transaction(self.db):
            self.db.table("agents").update(
                name,
                {
                    k: v
                    for k, v in quota.items()
                    if k in ("max_queued", "max_experiments", "max_device_hours")
                },
            )

    def add_token(self, token_sha256: str, agent: str, role: str) -> None:
        self.ensure_agent(agent)
        with write_transaction(self.db):
            self.db.table("tokens").insert(
                {
                    "token_sha256": token_sha256,
                    "agent": agent,
                    "role": role,
                    "created_at": utc_now(),
                }
            )

    def token(self, token_sha256: str) -> dict[str, Any] | None:
        rows = list(
            self.db.query(
                "SELECT * FROM tokens WHERE token_sha256 = ? AND revoked_at IS NULL", [token_sha256]
            )
        )
        return rows[0] if rows else None

    def revoke_tokens(self, agent: str) -> int:
        with write_transaction(self.db):
            cursor = self.db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE agent = ? AND revoked_at IS NULL",
                [utc_now(), agent],
            )
            return cursor.rowcount

    def list_tokens(self) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT agent, role, created_at, revoked_at, substr(token_sha256, 1, 12) AS fingerprint "
                "FROM tokens ORDER BY created_at"
            )
        )

    # ------------------------------------------------------------ claims

    def add_claim(self, agent: str, text: str, expires_at: str) -> int:
        with write_transaction(self.db):
            return int(
                cast(
                    int,
                    self.db.table("claims")
                    .insert(
                        {
                            "agent": agent,
                            "text": text,
                            "created_at": utc_now(),
                            "expires_at": expires_at,
                        }
                    )
                    .last_pk,
                )
            )

    def open_claims(self) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT id, agent, text, created_at, expires_at FROM claims WHERE released_at IS NULL AND expires_at > ? "
                "ORDER BY id DESC",
                [utc_now()],
            )
        )

    def release_claims(self, agent: str, experiment_id: int | None) -> int:
        with write_transaction(self.db):
            cursor = self.db.execute(
                "UPDATE claims SET released_at = ?, released_by_experiment = ? WHERE agent = ? AND released_at IS NULL",
                [utc_now(), experiment_id, agent],
            )
            return cursor.rowcount

    # ------------------------------------------------------------ baselines (noise)

    def set_baseline(
        self,
        *,
        hardware: str,
        scale: str,
        budget_kind: str,
        budget_seconds: float,
        values: Sequence[float],
        experiment_ids: Sequence[int],
        mean: float,
        sd: float,
    ) -> None:
        with write_transaction(self.db):
            self.db.table("baselines").upsert(
                {
                    "hardware": hardware,
                    "scale": scale,
                    "budget_kind": budget_kind,
                    "budget_seconds": budget_seconds,
                    "runs": len(values),
                    "mean": mean,
                    "sd": sd,
                    "values": json.dumps(list(values)),
                    "experiment_ids": json.dumps(list(experiment_ids)),
                    "updated_at": utc_now(),
                },
                pk=("hardware", "scale", "budget_kind", "budget_seconds"),
            )

    def baseline(
        self, *, hardware: str, scale: str, budget_kind: str, budget_seconds: float
    ) -> dict[str, Any] | None:
        rows = list(
            self.db.query(
                "SELECT * FROM baselines WHERE hardware = ? AND scale = ? AND budget_kind = ? AND budget_seconds = ?",
                [hardware, scale, budget_kind, budget_seconds],
            )
        )
        if not rows:
            return None
        row = dict(rows[0])
        row["values"] = json.loads(row["values"] or "[]")
        row["experiment_ids"] = json.loads(row["experiment_ids"] or "[]")
        return row

    # ------------------------------------------------------------ exports

    def export_results_tsv(self) -> str:
        """autoresearch's results.tsv: `commit val_bpb memory_gb status description`, tab-separated.

        commit = the experiment's code hash (7 chars) or `baseline`; status keep/discard/crash
        (keep = it improved on the best before it); crashes logged as 0.000000 like autoresearch.
        """
        out = io.StringIO()
        out.write("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
        rows = self.db.query(
            "SELECT id, kind, code_hash, val_bpb, peak_memory_mb, status, verdict, description FROM experiments "
            "WHERE status NOT IN ('queued', 'running') ORDER BY id"
        )
        for row in rows:
            commit = "baseline" if row["kind"] == "baseline" else (row["code_hash"] or "")[:7]
            if row["status"] == OK:
                status = "keep" if row["verdict"] in ("improved", "baseline") else "discard"
                bpb, memory = row["val_bpb"] or 0.0, (row["peak_memory_mb"] or 0.0) / 1024
            else:
                status, bpb, memory = "crash", 0.0, 0.0
            description = " ".join((row["description"] or "").split())
            out.write(f"{commit}\t{bpb:.6f}\t{memory:.1f}\t{status}\t{description}\n")
        return out.getvalue()

    def export_rows(self) -> list[dict[str, Any]]:
        return [_decode(r) for r in self.db.query("SELECT * FROM experiments ORDER BY id")]

    def export_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(EXPERIMENT_COLUMNS))
        writer.writeheader()
        for row in self.db.query("SELECT * FROM experiments ORDER BY id"):
            writer.writerow(row)
        return out.getvalue()

    def export_json(self) -> str:
        return json.dumps(self.export_rows(), indent=1)


_JSON_COLUMNS = ("metrics", "flags", "hashes", "paper_ids", "code")


def _encode(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for column in _JSON_COLUMNS:
        if isinstance(row.get(column), str):
            with suppress(json.JSONDecodeError):
                row[column] = json.loads(row[column])
    return row


def _fts_quote(query: str) -> str:
    """Quote every word so that text an agent wrote cannot be FTS5 syntax (`lr"` would raise)."""
    words = [w.replace('"', "") for w in query.split()]
    return " ".join(f'"{w}"' for w in words if w) or '""'
