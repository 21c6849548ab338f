"""The research record's experiments, agents, tokens, claims and noise baselines: every
read and write of those tables is a named method of `Store`.

Nothing in this module deletes an experiment: history is append-and-update only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import sqlite_utils

from server.record import INTERRUPTED, QUEUED, ExperimentRow, code_authors
from server.store.change_log import IncrementalGroups, IncrementalRows
from server.store.counts import (
    CONFIRMATION_COLUMNS,
    REPEATED_RUN_COLUMNS,
    REPEATED_RUNS_WHERE,
    confirmation_of,
    repeated_run,
)
from server.store.database import ThreadLocalDatabase, utc_now, write_transaction
from server.store.exports import experiments_csv, results_tsv
from server.store.listing import (
    CHART_OUTLINE_COLUMNS,
    COUNT_CACHE_ENTRIES,
    FINISHED,
    ExperimentListing,
)
from server.store.papers import PaperStore
from server.store.promotions import PromotionStore
from server.store.read_cache import ReadCache
from server.store.requests import RunRequestStore
from server.store.rows import decode_row, encode_value
from server.store.schema import EXPERIMENT_COLUMNS, create_tables
from server.store.sealed import SealedStore
from server.store.similar import SimilarStore


class ExperimentNotFound(KeyError):
    """No experiment with that id."""


class Store(ExperimentListing):
    """The research record: agents, tokens, experiments (with full-text search), claims, baselines."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db: sqlite_utils.Database = cast(sqlite_utils.Database, ThreadLocalDatabase(self.path))
        self.read_cache = ReadCache()
        # counts by filter (an agent's scope, a search's words): many more keys, each an int,
        # kept apart so that they cannot push the leaderboard's answers out of read_cache
        self.count_cache = ReadCache(max_entries=COUNT_CACHE_ENTRIES)
        self.chart_outline_rows = IncrementalRows(CHART_OUTLINE_COLUMNS, FINISHED)
        self.agent_totals: dict[str, IncrementalGroups] = {}
        self.repeated_run_rows = IncrementalRows(
            ", ".join(REPEATED_RUN_COLUMNS),
            REPEATED_RUNS_WHERE,
            repeated_run,
            index="idx_experiments_repeated_runs",
        )
        self.disqualified_rows = IncrementalRows(
            "id, disqualified", "COALESCE(disqualified, 0) != 0"
        )
        self.confirmation_rows = IncrementalRows(
            ", ".join(CONFIRMATION_COLUMNS),
            "kind = 'confirmation'",
            confirmation_of,
            index="idx_experiments_confirmation_runs",
        )
        self._create_tables()
        self.promotions = PromotionStore(self.db)
        self.papers = PaperStore(self.db)
        self.sealed = SealedStore(self.db)
        self.sealed.ensure_table()
        self.requests = RunRequestStore(self.db)
        self.requests.ensure_table()
        self.similar = SimilarStore(self.db)
        bound = self.bound_target()
        # Which way the target's metric improves: the "best first" orderings follow it.
        self.direction: str = bound["direction"] if bound else "minimize"
        self.target_name: str | None = bound["name"] if bound else None
        self.metric_name: str = bound["metric"] if bound else "metric"
        self.tie_break = None  # the bound target's (bind_record)
        self.assumed_sd = 0.02  # target.toml's default; bind_record sets the target's

    def _create_tables(self) -> None:
        create_tables(self.db)

    # ------------------------------------------------------------ the research target

    def bound_target(self) -> dict[str, str] | None:
        """The research target this record belongs to (name, metric, direction), or None."""
        rows = self.db.execute(
            "SELECT key, value FROM meta WHERE key IN ('target_name', 'target_metric', 'target_direction')"
        ).fetchall()
        values = {key.removeprefix("target_"): value for key, value in rows}
        return values if len(values) == 3 else None

    def bind_target(self, name: str, metric: str, direction: str) -> None:
        """Bind the record to a target; rows from before targets were recorded take its name."""
        with write_transaction(self.db):
            for key, value in (("name", name), ("metric", metric), ("direction", direction)):
                self.db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [f"target_{key}", value],
                )
            self.db.execute("UPDATE experiments SET target = ? WHERE target IS NULL", [name])
        self.direction, self.target_name, self.metric_name = direction, name, metric

    # ------------------------------------------------------------ experiments

    def create_experiment(self, **fields: Any) -> int:
        """Insert a new experiment row (normally status `queued`) and return its id."""
        row = {
            k: encode_value(v) for k, v in fields.items() if k in EXPERIMENT_COLUMNS and k != "id"
        }
        row.setdefault("status", QUEUED)
        row.setdefault("created_at", utc_now())
        row.setdefault("attempt", 1)
        if self.target_name is not None:
            row.setdefault("target", self.target_name)
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
            k: encode_value(v)
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
            k: encode_value(v)
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

    def get_experiment(self, experiment_id: int) -> ExperimentRow:
        """One experiment with JSON columns decoded; ExperimentNotFound if absent."""
        rows = list(self.db.query("SELECT * FROM experiments WHERE id = ?", [experiment_id]))
        if not rows:
            raise ExperimentNotFound(experiment_id)
        return cast(ExperimentRow, decode_row(rows[0]))

    def code_authors_of(self, *experiment_ids: int | None) -> list[str]:
        """Every agent who wrote part of these experiments' code (server.record.code_authors),
        sorted; a None id is none (the baseline's files); ExperimentNotFound for a missing id."""
        authors: set[str] = set()
        for experiment_id in (int(i) for i in experiment_ids if i is not None):
            row = self.db.execute(
                "SELECT agent, kind, code_authors FROM experiments WHERE id = ?", [experiment_id]
            ).fetchone()
            if row is None:
                raise ExperimentNotFound(experiment_id)
            authors.update(code_authors({"agent": row[0], "kind": row[1], "code_authors": row[2]}))
        return sorted(authors)

    def experiment_figures(self, experiment_id: int, columns: Sequence[str]) -> dict[str, Any]:
        """Some plain columns of one experiment (not the code: get_experiment reads and decodes
        the whole row, ~18 kB of JSON, for a figure); ExperimentNotFound if absent."""
        unknown = [c for c in columns if c not in EXPERIMENT_COLUMNS]
        if unknown:
            raise ValueError(f"not columns of experiments: {unknown}")
        select = ", ".join(f"[{c}]" for c in columns)
        rows = list(
            self.db.query(f"SELECT {select} FROM experiments WHERE id = ?", [experiment_id])
        )
        if not rows:
            raise ExperimentNotFound(experiment_id)
        return rows[0]

    def experiment_exists(self, experiment_id: int) -> bool:
        return bool(list(self.db.query("SELECT 1 FROM experiments WHERE id = ?", [experiment_id])))

    def find_by_code(self, code_hash: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The latest finished, non-failed experiment with the same code and run settings, if any."""
        rows = self.db.query(
            "SELECT * FROM experiments WHERE code_hash = ? AND status IN ('ok', 'queued', 'running') "
            "AND hardware IS ? AND budget_seconds IS ? AND budget_kind IS ? AND COALESCE(scale, 'S') = ? "
            "AND kind NOT IN ('confirmation', 'ablation', 'drift_check') ORDER BY id DESC LIMIT 1",
            [
                code_hash,
                settings.get("hardware"),
                settings.get("budget_seconds"),
                settings.get("budget_kind"),
                settings.get("scale") or "S",
            ],
        )
        for row in rows:
            return decode_row(row)
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
            "metric_value IS NOT NULL",
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
                f"SELECT * FROM experiments WHERE {' AND '.join(where)} ORDER BY {self.best_order()}, id ASC LIMIT 1",
                params,
            )
        )
        return decode_row(rows[0]) if rows else None

    def next_queued(self) -> list[dict[str, Any]]:
        """Every queued experiment, oldest first (the scheduler picks fairly among them)."""
        return [
            decode_row(r)
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

    def record_version(self) -> str:
        """A short fingerprint of the record: count, last id, last finish, live runs."""
        # Four sub-queries, each an index lookup (a single aggregate over the four scanned
        # every row: 1.2 s at 100,000 experiments). A count of 0 reads as SUM's NULL did: 0.
        row = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM experiments), (SELECT MAX(id) FROM experiments), "
            "(SELECT MAX(finished_at) FROM experiments), "
            "(SELECT COUNT(*) FROM experiments WHERE status = 'running')"
        ).fetchone()
        return ":".join(str(v or 0) for v in row)

    def latest_of_kind(self, kind: str, columns: list[str]) -> list[dict[str, Any]]:
        """The newest successful run of a rare kind (a drift check), by the kind index: the
        planner's pick, the status index, walked every ok row (170 ms at 10^5 experiments);
        kept until the record changes (the leaderboard and the briefing ask on every call)."""
        select = ", ".join(f"[{c}]" for c in columns)
        return self.read_cache.get(
            self.db,
            ("latest_of_kind", kind, tuple(columns)),
            lambda: [
                decode_row(r)
                for r in self.db.query(
                    f"SELECT {select} FROM experiments INDEXED BY "
                    "idx_experiments_kind_status_verdict WHERE kind = ? AND status = 'ok' "
                    "ORDER BY id DESC LIMIT 1",
                    [kind],
                )
            ],
        )

    def agents_by_first_experiment(self) -> list[str]:
        """Every agent with an experiment, in order of its first one."""
        return self.read_cache.get(
            self.db,
            ("agents_by_first_experiment",),
            lambda: [
                row[0]
                for row in self.db.execute(
                    "SELECT agent FROM experiments GROUP BY agent ORDER BY MIN(id)"
                ).fetchall()
            ],
        )

    def lineage(self, experiment_id: int, limit: int = 200) -> list[dict[str, Any]]:
        """The chain of parents from this experiment back to the baseline (this one first), at
        most `limit` long. One recursive query (a query per step cost 1.7 ms for a 30-step
        chain, 6.5 ms for 200); it stops at a missing parent, and at a repeated id should a parent
        ever point forward (the steps before the repeat are kept, as before)."""
        if limit < 1:
            return []
        # db.execute: sqlite_utils' query() wraps a statement that does not start with SELECT
        # in a savepoint, two more statements for a read.
        cursor = self.db.execute(
            "WITH RECURSIVE chain(id, depth) AS (SELECT ?, 0 UNION ALL "
            "SELECT e.parent_id, chain.depth + 1 FROM chain JOIN experiments e ON e.id = chain.id "
            "WHERE e.parent_id IS NOT NULL AND chain.depth + 1 < ?) "
            "SELECT e.id, e.agent, e.kind, e.parent_id, e.status, e.verdict, e.metric_value, "
            "e.description FROM chain JOIN experiments e ON e.id = chain.id ORDER BY chain.depth",
            [experiment_id, limit],
        )
        columns = [c[0] for c in cursor.description]
        chain: list[dict[str, Any]] = []
        seen: set[int] = set()
        for row in (dict(zip(columns, values, strict=True)) for values in cursor.fetchall()):
            if row["id"] in seen:
                break
            seen.add(row["id"])
            chain.append(row)
        return chain

    # ------------------------------------------------------------ agents and tokens

    def ensure_agent(self, name: str) -> None:
        with write_transaction(self.db):
            self.db.table("agents").insert({"name": name, "created_at": utc_now()}, ignore=True)

    def agent(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM agents WHERE name = ?", [name]))
        return rows[0] if rows else None

    def set_workspace_parent(self, agent: str, experiment_id: int | None) -> None:
        """The experiment the agent's workspace now holds (the parent of its next run)."""
        with write_transaction(self.db):
            self.db.execute(
                "UPDATE agents SET workspace_parent_id = ? WHERE name = ?", [experiment_id, agent]
            )

    def workspace_authors(self, agent: str) -> list[str] | None:
        """The others whose code `agent`'s workspace holds (server.lab.Lab.workspace_authors);
        None where never recorded (an agent from before the column)."""
        row = self.db.execute(
            "SELECT workspace_authors FROM agents WHERE name = ?", [agent]
        ).fetchone()
        return None if row is None or row[0] is None else [str(a) for a in json.loads(row[0])]

    def set_workspace_authors(self, agent: str, authors: Iterable[str]) -> None:
        with write_transaction(self.db):
            self.db.execute(
                "UPDATE agents SET workspace_authors = ? WHERE name = ?",
                [json.dumps(sorted(set(authors))), agent],
            )

    def list_agents(self) -> list[dict[str, Any]]:
        """Every agent row (name, quotas, creation time), by name."""
        return list(self.db.query("SELECT * FROM agents ORDER BY name"))

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
                # the open ones from their index (the planner's pick walked every claim ever made)
                "SELECT id, agent, text, created_at, expires_at FROM claims INDEXED BY idx_claims_open "
                "WHERE released_at IS NULL AND expires_at > ? ORDER BY id DESC",
                [utc_now()],
            )
        )

    def listed_open_claims(self, limit: int, per_agent: int) -> tuple[list[dict[str, Any]], int]:
        """The newest `limit` open claims, at most `per_agent` of each agent (so that an agent
        claiming in bulk cannot push the others' claims out of view), and how many are open in
        all. Only the open claims' ids and agents are read to choose; then the chosen rows
        whole. With 674 open claims: 0.5 ms, against 1.6 ms to read every open claim as a row
        (7% of the server's CPU with 100 agents claiming) and 2.9 ms for window functions."""
        if limit < 1 or per_agent < 1:
            raise ValueError(f"limit and per_agent must be at least 1, not {limit}, {per_agent}")
        pairs = self.db.execute(
            "SELECT id, agent FROM claims INDEXED BY idx_claims_open "
            "WHERE released_at IS NULL AND expires_at > ? ORDER BY id DESC",
            [utc_now()],
        ).fetchall()
        shown: dict[str, int] = {}
        chosen: list[int] = []
        for claim_id, agent in pairs:
            if shown.get(agent, 0) < per_agent:
                shown[agent] = shown.get(agent, 0) + 1
                chosen.append(claim_id)
                if len(chosen) == limit:
                    break
        if not chosen:
            return [], len(pairs)
        rows = self.db.query(
            "SELECT id, agent, text, created_at, expires_at FROM claims "
            f"WHERE id IN ({', '.join('?' for _ in chosen)}) ORDER BY id DESC",
            chosen,
        )
        return list(rows), len(pairs)

    def claim(self, claim_id: int) -> dict[str, Any] | None:
        return next(
            self.db.query(
                "SELECT id, agent, text, created_at, expires_at FROM claims WHERE id = ?",
                [claim_id],
            ),
            None,
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
        """autoresearch's results.tsv (see server.store.exports.results_tsv)."""
        return results_tsv(self.db, self.metric_name)

    def export_rows(self) -> list[dict[str, Any]]:
        return [decode_row(r) for r in self.db.query("SELECT * FROM experiments ORDER BY id")]

    def export_csv(self) -> str:
        return experiments_csv(self.db)

    def export_json(self) -> str:
        return json.dumps(self.export_rows(), indent=1)
