"""The tables of the research record and their migrations: what each column of `experiments`
holds, the read indexes, and the upgrades that keep old SQLite files working.

Tables are named for a reader: open the file with any SQLite tool (datasette works) and
`experiments` is the whole research record.
"""

from __future__ import annotations

import sqlite_utils

from server.record import SERVER_AGENT
from server.store.change_log import CHANGE_LOG_TABLE, CHANGE_LOG_TRIGGERS, ensure_change_log
from server.store.database import stale_triggers, write_transaction
from server.store.read_cache import CHANGE_TRIGGERS, ensure_change_counter

# The largest experiment or claim id the server accepts: SQLite's INTEGER is 64-bit signed, and
# no research record comes near 2**31 rows; anything larger is a malformed id, refused early.
MAX_ROW_ID = 2**31 - 1
SCHEMA_VERSION = 1

EXPERIMENT_COLUMNS: dict[str, type] = {
    "id": int,
    "agent": str,  # whose idea the code is: credited on the leaderboard, in verdicts and history
    "requested_by": str,  # who asked for this run: charged to their quota (NULL: the server's own)
    "kind": str,  # server.record.Kind
    "parent_id": int,  # the experiment whose code the workspace started from
    "confirms_id": int,  # for confirmation runs: the experiment being confirmed
    "status": str,  # server.record.Status
    "verdict": str,  # server.record.Verdict (set when final)
    "description": str,
    "code_hash": str,
    "code": str,  # JSON {file name: text} of the editable files
    "diff_parent": str,
    "diff_baseline": str,
    "metric_value": float,  # the target's metric as agents see it (metric_decimals)
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
    "hashes": str,  # JSON: sha256 of the evaluator and the eval data used for this run
    "paper_ids": str,  # JSON list of arXiv ids that motivated it
    "attempt": int,
    "retry_of": int,  # re-queued after an interruption: the interrupted experiment
    "scale": str,
    # server.similarity: the normalised code's fingerprint (equal = a duplicate) and the
    # effective edits vs the baseline (JSON: edits, places, assignments), for the dedupe and
    # similar_experiments.
    "change_fingerprint": str,
    "change_edits": str,
    "force_reason": str,  # an agent ran a duplicate anyway: why it says the run differs
    "code_authors": str,  # JSON: every agent who wrote part of the code (server.record.code_authors)
    "target": str,  # the research target (target.toml's name) the run belongs to
    "created_at": str,
    "started_at": str,
    "finished_at": str,
}


READ_INDEXES = {
    "idx_experiments_confirms_id": "CREATE INDEX IF NOT EXISTS idx_experiments_confirms_id "
    "ON experiments(confirms_id)",
    "idx_experiments_status_metric": "CREATE INDEX IF NOT EXISTS idx_experiments_status_metric "
    "ON experiments(status, metric_value)",
    # list_experiments(order='best') sorts by exactly these expressions.
    "idx_experiments_best": "CREATE INDEX IF NOT EXISTS idx_experiments_best "
    "ON experiments(metric_value IS NULL, metric_value, id)",
    # Every submit counts the requester's live and total runs (the quota).
    "idx_experiments_requested_by": "CREATE INDEX IF NOT EXISTS idx_experiments_requested_by "
    "ON experiments(requested_by, status)",
    # Every submit looks for an earlier run of the same normalised code (server.dedupe).
    "idx_experiments_change_fingerprint": "CREATE INDEX IF NOT EXISTS "
    "idx_experiments_change_fingerprint ON experiments(change_fingerprint)",
    # The aggregates below run on every get_leaderboard, get_briefing and dashboard load. A row
    # holds the code (~18 kB) before the figures, so a scan of the table reads every overflow
    # page: 1-3 s each at 100,000 experiments (bench/agents.py --history 100000). Each index
    # covers its query, so the scan reads the index alone.
    # per-agent totals (kind, agent; verdict, status, disqualified, metric_value) and the outcome counts
    "idx_experiments_agent_totals": "CREATE INDEX IF NOT EXISTS idx_experiments_agent_totals "
    "ON experiments(kind, agent, verdict, status, disqualified, metric_value)",
    # device-seconds by requester
    "idx_experiments_requester_seconds": "CREATE INDEX IF NOT EXISTS "
    "idx_experiments_requester_seconds ON experiments(requested_by, total_seconds)",
    # the confirmed improvements of a setting (the reference every verdict is judged against)
    "idx_experiments_verdict_setting": "CREATE INDEX IF NOT EXISTS "
    "idx_experiments_verdict_setting ON experiments(kind, verdict, hardware, budget_seconds, scale)",
    # the repeated runs the noise is pooled over, the last drift check, the outcome counts
    "idx_experiments_kind_status_verdict": "CREATE INDEX IF NOT EXISTS "
    "idx_experiments_kind_status_verdict ON experiments(kind, status, verdict)",
    # the leaderboard of a setting (ranked_candidates): hardware, budget and level first, so that
    # a setting with few runs in a large record -- a new level, budget or machine -- is found
    # in the index instead of walking every ok run in metric order (0.75 s at 10^5 rows)
    "idx_experiments_setting_rank": "CREATE INDEX IF NOT EXISTS idx_experiments_setting_rank "
    "ON experiments(hardware, budget_seconds, COALESCE(scale, 'S'), status, metric_value)",
    # get_history(level=...): the newest runs of one level, found in the index instead of
    # walking every newer row of the other levels (0.6 s for a level with few runs at 10^5 rows).
    # Its key is IFNULL(scale, 'S'), which only that listing writes: every other read says
    # COALESCE(scale, 'S'), and an index on that expression and id was the planner's pick for
    # any read with a level and ORDER BY id -- find_by_code on every submit walked the level's
    # rows (165 ms at 10^5 rows, 1 ms on the code-hash index). tests/test_store_indexes.py.
    # total_seconds: a level's device-hours (a promotion's cap) are summed from the index.
    "idx_experiments_level_listing": "CREATE INDEX IF NOT EXISTS idx_experiments_level_listing "
    "ON experiments(IFNULL(scale, 'S'), id, total_seconds)",
    # The reads rebuilt after every change of the record (server.store.read_cache) at 10^5 rows.
    # Each index holds only the rows its read wants (a partial index: the read's own WHERE
    # terms) and the columns it returns, so no row's overflow pages (the code) are read.
    # the progress chart's outline and drawn points: 1.4 s -> 0.25 s
    "idx_experiments_chart": "CREATE INDEX IF NOT EXISTS idx_experiments_chart ON experiments("
    "id, status, kind, verdict, disqualified, metric_value, hardware, budget_seconds, agent, "
    "description) WHERE status NOT IN ('queued', 'running')",
    # the repeated runs of a setting the noise is pooled over: 210 ms -> 25 ms
    "idx_experiments_repeated_runs": "CREATE INDEX IF NOT EXISTS idx_experiments_repeated_runs "
    "ON experiments(hardware, budget_seconds, COALESCE(budget_kind, 'wall'), COALESCE(scale, 'S'), "
    "id, kind, confirms_id, metric_value, seed, flags, cpu_share, description) "
    "WHERE kind IN ('baseline', 'confirmation') AND status = 'ok'",
    # every improvement's confirmation runs (the reference, the leaderboard): 145 ms -> 10 ms
    "idx_experiments_confirmation_runs": "CREATE INDEX IF NOT EXISTS "
    "idx_experiments_confirmation_runs ON experiments(confirms_id, id, status, metric_value, "
    "seed, flags, requested_by, description) WHERE kind = 'confirmation'",
    # record_version's last finish
    "idx_experiments_finished_at": "CREATE INDEX IF NOT EXISTS idx_experiments_finished_at "
    "ON experiments(finished_at)",
}

# Columns added after the first release: old files get them (NULL) on open.
ADDED_COLUMNS = {
    "change_fingerprint": "TEXT",
    "change_edits": "TEXT",
    "force_reason": "TEXT",
    "target": "TEXT",
    "code_authors": "TEXT",
}

# Columns renamed when the record became target-neutral (the first target's metric column is now
# the metric_value of any target): (table, old, new). Indexes follow a renamed column on their own.
RENAMED_COLUMNS = (
    ("experiments", "val_bpb", "metric_value"),  # legacy name
    ("sealed", "val_bpb_exact", "metric_exact"),  # legacy name
    ("sealed", "holdout_bpb", "holdout_value"),
)
# Indexes of earlier versions, dropped on open: a legacy name, and the level index whose key
# every read with a level matched (see idx_experiments_level_listing).
RETIRED_INDEXES = (
    "idx_experiments_status_val_bpb",  # legacy name
    "idx_experiments_level_id",
)


def create_tables(db: sqlite_utils.Database) -> None:
    """Create the record's tables, indexes and full-text search where missing; migrate old files."""
    _rename_columns(db)
    with write_transaction(db):
        if "experiments" not in db.table_names():
            db.table("experiments").create(
                EXPERIMENT_COLUMNS, pk="id", not_null={"agent", "status", "created_at"}
            )
            db.table("experiments").create_index(["status"])
            db.table("experiments").create_index(["agent", "id"])
            db.table("experiments").create_index(["code_hash"])
            db.table("experiments").create_index(["metric_value"])
            db.table("experiments").create_index(["target"])
        if "agents" not in db.table_names():
            db.table("agents").create(
                {
                    "name": str,
                    "created_at": str,
                    "max_queued": int,
                    "max_experiments": int,
                    "max_device_hours": float,
                    "workspace_parent_id": int,
                    "workspace_authors": str,  # JSON: others whose code the workspace holds
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
        # The open claims (every get_history, claim_idea and submit reads them): found in this
        # index instead of a walk of every claim ever made (thousands with 100 agents).
        db.execute(
            "CREATE INDEX IF NOT EXISTS idx_claims_open ON claims(expires_at) "
            "WHERE released_at IS NULL"
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
    _migrate_requested_by(db)
    _add_columns(db)
    if "workspace_authors" not in db.table("agents").columns_dict:  # files from before it
        with write_transaction(db):
            db.execute("ALTER TABLE agents ADD COLUMN workspace_authors TEXT")
    if not db.table("experiments").detect_fts():
        with write_transaction(db):
            db.table("experiments").enable_fts(
                ["description", "diff_parent"], tokenize="porter", create_triggers=True
            )
    # Every get_history call reads the leaderboard (ok runs by metric_value, each one's
    # confirmations). metric_value and the filter columns sit behind the code and diff text in
    # each row, so without these indexes each of those reads scans the whole table
    # (bench/tools.py: 1.7 s at 10,000 experiments). Created on old files too.
    present = {index.name for index in db.table("experiments").indexes}
    missing = {name: sql for name, sql in READ_INDEXES.items() if name not in present}
    retired = present.intersection(RETIRED_INDEXES)
    if missing or retired:
        with write_transaction(db):
            for name in retired:
                db.execute(f"DROP INDEX IF EXISTS [{name}]")
            for sql in missing.values():
                db.execute(sql)
    # The change counter the read cache keys on (server.store.read_cache) and the change log
    # the chart's outline is kept current from (server.store.change_log); created on old files.
    # Triggers of an older version (a plain counter, a log without stamps) are replaced.
    counter = db.execute("SELECT 1 FROM meta WHERE key = 'experiments_changes'").fetchone()
    if counter is None or stale_triggers(db, CHANGE_TRIGGERS):
        with write_transaction(db):
            ensure_change_counter(db)
    if (
        CHANGE_LOG_TABLE not in db.table_names()
        or "stamp" not in db.table(CHANGE_LOG_TABLE).columns_dict
        or stale_triggers(db, CHANGE_LOG_TRIGGERS)
    ):
        with write_transaction(db):
            ensure_change_log(db)


def _rename_columns(db: sqlite_utils.Database) -> None:
    """Files written before the record was target-neutral: rename their metric columns."""
    tables = set(db.table_names())
    renames = [
        (table, old, new)
        for table, old, new in RENAMED_COLUMNS
        if table in tables and old in db.table(table).columns_dict
    ]
    if not renames:
        return
    with write_transaction(db):
        for name in RETIRED_INDEXES:
            db.execute(f"DROP INDEX IF EXISTS [{name}]")
        for table, old, new in renames:
            db.execute(f"ALTER TABLE [{table}] RENAME COLUMN [{old}] TO [{new}]")


def _add_columns(db: sqlite_utils.Database) -> None:
    """Stores written before a column of ADDED_COLUMNS existed: add it (NULL in old rows)."""
    present = db.table("experiments").columns_dict
    missing = {name: sql for name, sql in ADDED_COLUMNS.items() if name not in present}
    if missing:
        with write_transaction(db):
            for name, sql in missing.items():
                db.execute(f"ALTER TABLE experiments ADD COLUMN [{name}] {sql}")


def _migrate_requested_by(db: sqlite_utils.Database) -> None:
    """Stores written before `requested_by` existed: add the column and fill it in.

    Those stores recorded every run an agent caused under its own name (confirmations and
    promotions under the agent that asked), so `agent` is who asked, except for the
    server's own runs (baselines, drift checks), which are charged to nobody.
    """
    if "requested_by" in db.table("experiments").columns_dict:
        return
    with write_transaction(db):
        db.execute("ALTER TABLE experiments ADD COLUMN requested_by TEXT")
        db.execute(
            "UPDATE experiments SET requested_by = agent "
            "WHERE agent != ? AND kind NOT IN ('baseline', 'drift_check')",
            [SERVER_AGENT],
        )
