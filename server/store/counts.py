"""Counts and rankings over the `experiments` table: quotas, standings, confirmations and
recovery lookups, each a named query (mixed into `Store`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from server.store.change_log import IncrementalGroups, IncrementalRows, Row
from server.store.database import write_transaction
from server.store.read_cache import ReadCache

# The repeated runs the noise is pooled over (idx_experiments_repeated_runs covers the read).
REPEATED_RUN_COLUMNS = (
    "id", "kind", "confirms_id", "metric_value", "seed", "flags", "cpu_share", "description",
)  # fmt: skip
REPEATED_RUNS_WHERE = (
    "kind IN ('baseline', 'confirmation') AND status = 'ok' AND metric_value IS NOT NULL "
    "AND hardware = ? AND budget_seconds = ? AND COALESCE(budget_kind, 'wall') = ? "
    "AND COALESCE(scale, 'S') = ?"
)
# Every confirmation run (idx_experiments_confirmation_runs covers the read).
CONFIRMATION_COLUMNS = (
    "id", "confirms_id", "status", "metric_value", "seed", "flags", "requested_by", "description",
)  # fmt: skip
FEW_EXPERIMENTS = 100  # confirmation_runs_of up to this many: one indexed query, nothing kept


def repeated_run(row: Row) -> dict[str, Any]:
    """A repeated run as kept: its columns by name, its flags decoded."""
    run = dict(zip(REPEATED_RUN_COLUMNS, row, strict=True))
    run["flags"] = json.loads(run["flags"]) if run["flags"] else []
    return run


def confirmation_of(row: Row) -> tuple[int | None, dict[str, Any]]:
    """A confirmation run as kept: (the experiment it confirms, the run, flags decoded)."""
    run = dict(zip(CONFIRMATION_COLUMNS, row, strict=True))
    run["flags"] = json.loads(run["flags"]) if run["flags"] else []
    owner = run.pop("confirms_id")
    return (None if owner is None else int(owner)), run


class ExperimentCounts:
    """The aggregate and lookup queries `Store` offers over its `db`."""

    db: sqlite_utils.Database
    # Which way the target's metric improves ("minimize" | "maximize"): the record's binding.
    direction: str
    # The target's seed-to-seed sd, assumed until the noise is measured.
    assumed_sd: float

    # The target's tie-break (a figure in each run's metrics JSON, its direction), or None.
    tie_break: tuple[str, str] | None

    @property
    def best_first(self) -> str:
        """SQL order of the metric, best first."""
        return "ASC" if self.direction == "minimize" else "DESC"

    def best_order(self, alias: str = "") -> str:
        """SQL ORDER BY terms, best first: the metric, then the target's tie-break figure (its
        name was checked to be an identifier when the target was loaded)."""
        order = f"{alias}metric_value {self.best_first}"
        if self.tie_break is not None:
            name, direction = self.tie_break
            second = "ASC" if direction == "minimize" else "DESC"
            order += f", json_extract({alias}metrics, '$.{name}') {second}"
        return order

    # Whole-table reads are kept until `experiments` changes (server.store.read_cache); some
    # are kept current from the change log instead of read again (server.store.change_log).
    read_cache: ReadCache
    repeated_run_rows: IncrementalRows
    disqualified_rows: IncrementalRows
    confirmation_rows: IncrementalRows
    agent_totals: dict[str, IncrementalGroups]  # per best-first order (the target's direction)

    def charged_runs(self, requester: str) -> int:
        """How many runs `requester` asked for, re-queues after a server crash not counted."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM experiments WHERE requested_by = ? AND retry_of IS NULL",
            [requester],
        ).fetchone()
        return int(row[0])

    def charged_seconds(self, requester: str) -> float:
        """Device-seconds of the runs `requester` asked for, re-queues after a crash not counted."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(total_seconds), 0) FROM experiments WHERE requested_by = ? AND retry_of IS NULL",
            [requester],
        ).fetchone()
        return float(row[0])

    def seconds_at_scale(self, scale: str) -> float:
        """Device-seconds of every run at one scale level."""
        row = self.db.execute(
            # IFNULL: the level listing's index holds the level, id and total_seconds
            "SELECT COALESCE(SUM(total_seconds), 0) FROM experiments WHERE IFNULL(scale, 'S') = ?",
            [scale],
        ).fetchone()
        return float(row[0])

    def finished_experiment_count(self) -> int:
        """How many agents' experiments (kind `experiment`) have finished."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE kind = 'experiment' AND status NOT IN ('queued', 'running')"
            ).fetchone()[0]
        )

    def confirmation_count(self, experiment_id: int) -> int:
        """Every run recorded as confirming this experiment (any status)."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE confirms_id = ?", [experiment_id]
            ).fetchone()[0]
        )

    def live_confirmation_count(self, experiment_id: int) -> int:
        """The runs confirming this experiment that are still queued or running."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE confirms_id = ? AND status IN ('queued', 'running')",
                [experiment_id],
            ).fetchone()[0]
        )

    def ok_confirmations(self, experiment_id: int) -> list[dict[str, Any]]:
        """id, metric_value and seed of each successful confirmation run of an experiment."""
        return list(
            self.db.query(
                "SELECT id, metric_value, seed FROM experiments WHERE confirms_id = ? AND kind = 'confirmation' AND status = 'ok'",
                [experiment_id],
            )
        )

    def set_confirms(self, run_ids: Sequence[int], confirms_id: int) -> None:
        """Mark runs as confirmations of `confirms_id` (a promotion's later seeds)."""
        with write_transaction(self.db):
            for run_id in run_ids:
                self.db.execute(
                    "UPDATE experiments SET confirms_id = ? WHERE id = ?", [confirms_id, run_id]
                )

    def ranked_candidates(
        self, *, hardware: str, budget_seconds: float, scale: str, limit: int
    ) -> list[dict[str, Any]]:
        """The best `limit` successful, qualified experiment and promotion runs of one setting."""
        return list(
            self.db.query(
                "SELECT id, agent, kind, verdict, description, metric_value FROM experiments WHERE status = 'ok' "
                "AND kind IN ('experiment', 'promotion') "
                "AND COALESCE(disqualified, 0) = 0 AND metric_value IS NOT NULL AND hardware = ? AND budget_seconds = ? "
                f"AND COALESCE(scale, 'S') = ? ORDER BY {self.best_order()}, id ASC LIMIT ?",
                [hardware, budget_seconds, scale, limit],
            )
        )

    # ------------------------------------------------------------ cost (device-seconds)

    def device_seconds_by_requester(self) -> dict[str | None, float]:
        """Device-seconds of every run, summed by who asked for it (None: the server's own runs,
        the baseline and drift checks). Interrupted runs and their re-queues both count: the
        device was busy for both."""
        return self.read_cache.get(
            self.db,
            ("device_seconds_by_requester",),
            lambda: self._device_seconds_by_requester_read(),
        )

    def _device_seconds_by_requester_read(self) -> dict[str | None, float]:
        return {
            row[0]: float(row[1])
            for row in self.db.execute(
                "SELECT requested_by, COALESCE(SUM(total_seconds), 0) FROM experiments GROUP BY requested_by"
            ).fetchall()
        }

    def device_seconds_of(self, experiment_ids: Sequence[int]) -> dict[int, float]:
        """Device-seconds spent on each experiment: its own run plus every run that confirms it
        that its author or the server asked for (the server's fresh-seed and holdout runs, the
        author's confirm_experiment runs). Runs other agents asked for are theirs to pay: they
        cannot make someone's result look dear."""
        out: dict[int, float] = {}
        ids = [int(i) for i in experiment_ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in self.db.execute(
                f"SELECT COALESCE(e.confirms_id, e.id) AS owner, COALESCE(SUM(e.total_seconds), 0) "
                f"FROM experiments e JOIN experiments o ON o.id = COALESCE(e.confirms_id, e.id) "
                f"WHERE (e.id IN ({marks}) OR e.confirms_id IN ({marks})) "
                f"AND (e.requested_by IS NULL OR e.requested_by = o.agent) GROUP BY owner",
                [*chunk, *chunk],
            ).fetchall():
                out[int(row[0])] = float(row[1])
        return out

    def outcome_counts(self) -> dict[str, int]:
        """How the agents' finished experiments ended: each verdict, and each failure status."""
        return self.read_cache.get(
            self.db, ("outcome_counts",), lambda: self._outcome_counts_read()
        )

    def _outcome_counts_read(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status, verdict, n in self.db.execute(
            "SELECT status, verdict, COUNT(*) FROM experiments WHERE kind = 'experiment' "
            "AND status NOT IN ('queued', 'running') GROUP BY status, verdict"
        ).fetchall():
            key = verdict if status == "ok" and verdict else status
            counts[key] = counts.get(key, 0) + int(n)
        return counts

    def recent_dead_ends(self, limit: int) -> list[dict[str, Any]]:
        """The latest agents' experiments that did not help: failed runs and verdicts `worse`,
        `within_noise` or `failed`, newest first (what not to try again, and why)."""
        return self.read_cache.get(
            self.db, ("recent_dead_ends", limit), lambda: self._recent_dead_ends_read(limit=limit)
        )

    def _recent_dead_ends_read(self, limit: int) -> list[dict[str, Any]]:
        # `+kind`: walk the table newest first and stop at `limit` (most rows qualify); through
        # the kind index SQLite sorted every experiment first (0.5 s at 100,000, now < 1 ms).
        return list(
            self.db.query(
                "SELECT id, agent, status, verdict, metric_value, description, failure_reason, "
                "code_authors FROM experiments "
                "WHERE +kind = 'experiment' AND (status IN ('crash', 'timeout', 'integrity_fail') "
                "OR verdict IN ('worse', 'within_noise', 'failed')) ORDER BY id DESC LIMIT ?",
                [limit],
            )
        )

    def per_agent_totals(self) -> list[tuple[str, int, int | None, float | None]]:
        """(agent, experiments, improvements, best qualified metric_value) per agent, best first."""
        return self.read_cache.get(
            self.db, ("per_agent_totals",), lambda: self._per_agent_totals_read()
        )

    def _per_agent_totals_read(self) -> list[tuple[str, int, int | None, float | None]]:
        """From the per-agent aggregates kept current by the change log (server.store.change_log):
        after a result, its agent's experiments are aggregated again, not all 10^5 (52 ms)."""
        ascending = self.best_first == "ASC"
        totals = self.agent_totals.get(self.best_first)
        if totals is None:
            totals = self.agent_totals[self.best_first] = IncrementalGroups(
                "agent",
                "COUNT(*), SUM(verdict = 'improved'), "
                f"{'MIN' if ascending else 'MAX'}(CASE WHEN status = 'ok' "
                "AND COALESCE(disqualified, 0) = 0 THEN metric_value END)",
                "kind = 'experiment'",
            )
        rows = [(agent, n, wins, best) for agent, (n, wins, best) in totals.groups(self.db).items()]
        # best first, agents without a qualified result last; ties by name
        rows.sort(
            key=lambda r: (
                r[3] is None,
                0.0 if r[3] is None else r[3] if ascending else -r[3],
                r[0],
            )
        )
        return rows

    def first_ok_with_value(self, agent: str, metric_value: float) -> int | None:
        """The first successful run of `agent` that scored exactly `metric_value`."""
        hit = self.db.execute(
            # by the value (a handful of rows), not the agent's runs in id order (the planner's pick)
            "SELECT id FROM experiments INDEXED BY idx_experiments_status_metric "
            "WHERE agent = ? AND metric_value = ? AND status = 'ok' ORDER BY id LIMIT 1",
            [agent, metric_value],
        ).fetchone()
        return hit[0] if hit else None

    def verdict_count(self, verdict: str) -> int:
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE verdict = ?", [verdict]
            ).fetchone()[0]
        )

    def status_counts(self) -> dict[str, int]:
        return dict(
            self.db.execute("SELECT status, COUNT(*) FROM experiments GROUP BY status").fetchall()
        )

    def baseline_run_for(
        self, *, scale: str, seed: int, hardware: str, budget_seconds: float
    ) -> int | None:
        """The latest baseline run of this level, seed and setting that has not failed."""
        rows = list(
            self.db.query(
                # the few baselines by kind (the planner's pick, the setting's index, read every
                # run of the setting: 270 ms at 10^5 rows)
                "SELECT id FROM experiments INDEXED BY idx_experiments_kind_status_verdict "
                "WHERE kind = 'baseline' AND COALESCE(scale, 'S') = ? AND seed = ? "
                "AND hardware = ? AND budget_seconds = ? AND status NOT IN ('crash', 'timeout', 'integrity_fail', "
                "'cancelled', 'interrupted') ORDER BY id DESC LIMIT 1",
                [scale, seed, hardware, budget_seconds],
            )
        )
        return int(rows[0]["id"]) if rows else None

    # ------------------------------------------------------------ repeated runs and verdicts

    def repeated_runs(
        self, *, hardware: str, budget_seconds: float, budget_kind: str, scale: str
    ) -> list[dict[str, Any]]:
        """Every successful baseline and confirmation run of one setting, oldest first: the
        repeated runs of one code that the noise is pooled over (flags decoded), each with
        `original_disqualified`: whether the experiment it confirms can never count."""
        return self.read_cache.get(
            self.db,
            ("repeated_runs", hardware, budget_seconds, budget_kind, scale),
            lambda: self._repeated_runs_read(
                hardware=hardware,
                budget_seconds=budget_seconds,
                budget_kind=budget_kind,
                scale=scale,
            ),
        )

    def _repeated_runs_read(
        self, *, hardware: str, budget_seconds: float, budget_kind: str, scale: str
    ) -> list[dict[str, Any]]:
        """The runs and the disqualified experiments, both kept current from the change log
        (server.store.change_log): after a result, the rows it changed are read and decoded,
        not all of them."""
        disqualified = dict(self.disqualified_rows.rows(self.db, []))
        return [
            {**row, "original_disqualified": disqualified.get(row["confirms_id"], 0)}
            for row in self.repeated_run_rows.rows(
                self.db, [hardware, budget_seconds, budget_kind, scale]
            )
        ]

    def experiments_with_verdict(
        self, verdict: str, *, hardware: str, budget_seconds: float, scale: str
    ) -> list[int]:
        """The ids of one setting's experiments whose verdict is `verdict`, oldest first."""
        return self.read_cache.get(
            self.db,
            ("experiments_with_verdict", verdict, hardware, budget_seconds, scale),
            lambda: self._experiments_with_verdict_read(
                verdict=verdict, hardware=hardware, budget_seconds=budget_seconds, scale=scale
            ),
        )

    def _experiments_with_verdict_read(
        self, verdict: str, *, hardware: str, budget_seconds: float, scale: str
    ) -> list[int]:
        return [
            int(row["id"])
            for row in self.db.query(
                "SELECT id FROM experiments WHERE kind = 'experiment' AND verdict = ? AND hardware = ? "
                "AND budget_seconds = ? AND COALESCE(scale, 'S') = ? ORDER BY id",
                [verdict, hardware, budget_seconds, scale],
            )
        ]

    def experiments_with_verdict_anywhere(self, verdict: str) -> list[int]:
        """The ids of every experiment whose verdict is `verdict`, on any setting, oldest first."""
        return self.read_cache.get(
            self.db,
            ("experiments_with_verdict_anywhere", verdict),
            lambda: self._experiments_with_verdict_anywhere_read(verdict=verdict),
        )

    def _experiments_with_verdict_anywhere_read(self, verdict: str) -> list[int]:
        return [
            int(row["id"])
            for row in self.db.query(
                "SELECT id FROM experiments WHERE kind = 'experiment' AND verdict = ? ORDER BY id",
                [verdict],
            )
        ]

    def confirmation_runs(self, experiment_id: int) -> list[dict[str, Any]]:
        """Every confirmation run of an experiment, oldest first: id, status, metric_value, seed, flags."""
        return [
            {**row, "flags": json.loads(row["flags"]) if row["flags"] else []}
            for row in self.db.query(
                "SELECT id, status, metric_value, seed, flags, requested_by, description FROM experiments "
                "WHERE confirms_id = ? AND kind = 'confirmation' ORDER BY id",
                [experiment_id],
            )
        ]

    def confirmation_runs_of(
        self, experiment_ids: Sequence[int]
    ) -> dict[int, list[dict[str, Any]]]:
        """`confirmation_runs` of many experiments at once (one query per 500 ids), by id."""
        return self.read_cache.get(
            self.db,
            ("confirmation_runs_of", tuple(int(i) for i in experiment_ids)),
            lambda: self._confirmation_runs_of_read(experiment_ids=experiment_ids),
        )

    def _confirmation_runs_of_read(
        self, experiment_ids: Sequence[int]
    ) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        ids = [int(i) for i in experiment_ids]
        if len(ids) > FEW_EXPERIMENTS:  # every improvement's (the reference): from the kept rows
            wanted = set(ids)
            for owner, row in self.confirmation_rows.rows(self.db, []):
                if owner in wanted:
                    out.setdefault(owner, []).append(dict(row))
            return out
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in self.db.query(
                "SELECT confirms_id, id, status, metric_value, seed, flags, requested_by, description "
                "FROM experiments INDEXED BY idx_experiments_confirmation_runs "
                f"WHERE confirms_id IN ({', '.join('?' for _ in chunk)}) "
                "AND kind = 'confirmation' ORDER BY id",
                chunk,
            ):
                owner = int(row.pop("confirms_id"))
                row["flags"] = json.loads(row["flags"]) if row["flags"] else []
                out.setdefault(owner, []).append(row)
        return out

    # ------------------------------------------------------------ recovery

    def interrupted_without_retry(self) -> list[int]:
        """Interrupted first attempts not re-queued yet (also those whose re-queue a crash cut short)."""
        return [
            row["id"]
            for row in self.db.query(
                "SELECT id FROM experiments e WHERE status = 'interrupted' AND COALESCE(attempt, 1) < 2 "
                "AND NOT EXISTS (SELECT 1 FROM experiments r WHERE r.retry_of = e.id) ORDER BY id"
            )
        ]

    def retry_of(self, experiment_id: int) -> int | None:
        """The id of the run that re-queued this interrupted experiment, if any."""
        rows = list(self.db.query("SELECT id FROM experiments WHERE retry_of = ?", [experiment_id]))
        return int(rows[0]["id"]) if rows else None
