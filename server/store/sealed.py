"""The `sealed` table: figures the server keeps and no agent ever reads per experiment.

- `metric_exact`: the evaluator's metric_value at full precision (agents get 4 decimals: more would
  leak the val tokens bit by bit). The server uses it to see that runs at different seeds gave
  bitwise-identical results (code that ignores the seed).
- `holdout_value`: the sealed holdout split's score of a run the server chose to score it (the
  baseline, a confirmed improvement's holdout runs, promotions). Every scoring is one read of
  the holdout, recorded with its time; their number is bounded by an operator setting.
  Agents see only the mean per leaderboard entry, beside its val mean.

No tool, page or export reads this table except through these methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import sqlite_utils

from server.store.database import utc_now, write_transaction


class SealedStore:
    """Reads and writes of the `sealed` table over the record's connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_table(self) -> None:
        with write_transaction(self.db):
            if "sealed" not in self.db.table_names():
                self.db.table("sealed").create(
                    {
                        "experiment_id": int,
                        "metric_exact": float,
                        # the target's tie-break figure at full precision: a discrete metric
                        # (an accuracy) repeats across seeds, this one does not
                        "tie_break_exact": float,
                        "holdout_value": float,
                        "holdout_read_at": str,  # when the holdout was scored (one read)
                        "holdout_note": str,  # why it was not scored, when asked
                    },
                    pk="experiment_id",
                )
            elif "tie_break_exact" not in self.db.table("sealed").columns_dict:
                self.db.execute("ALTER TABLE sealed ADD COLUMN tie_break_exact FLOAT")

    def record(
        self,
        experiment_id: int,
        *,
        metric_exact: float | None,
        holdout_value: float | None,
        holdout_note: str | None = None,
        tie_break_exact: float | None = None,
    ) -> None:
        """Store a finished run's sealed figures (a holdout score is one recorded read)."""
        row: dict[str, Any] = {"experiment_id": experiment_id, "metric_exact": metric_exact}
        if tie_break_exact is not None:
            row["tie_break_exact"] = tie_break_exact
        if holdout_value is not None:
            row["holdout_value"] = holdout_value
            row["holdout_read_at"] = utc_now()
        if holdout_note:
            row["holdout_note"] = holdout_note
        with write_transaction(self.db):
            self.db.table("sealed").upsert(row, pk="experiment_id")

    def exact_values(self, experiment_ids: Sequence[int]) -> dict[int, float]:
        """{id: full-precision metric_value} of those runs that have one."""
        return self._column("metric_exact", experiment_ids)

    def tie_break_values(self, experiment_ids: Sequence[int]) -> dict[int, float]:
        """{id: full-precision tie-break figure} of those runs that have one."""
        return self._column("tie_break_exact", experiment_ids)

    def holdout_values(self, experiment_ids: Sequence[int]) -> dict[int, float]:
        """{id: holdout_value} of those runs that scored the holdout."""
        return self._column("holdout_value", experiment_ids)

    def _column(
        self,
        column: Literal["metric_exact", "tie_break_exact", "holdout_value"],
        experiment_ids: Sequence[int],
    ) -> dict[int, float]:
        if not experiment_ids:
            return {}
        marks = ", ".join("?" for _ in experiment_ids)
        return {
            int(row[0]): float(row[1])
            for row in self.db.execute(
                f"SELECT experiment_id, {column} FROM sealed WHERE experiment_id IN ({marks}) "
                f"AND {column} IS NOT NULL",
                list(experiment_ids),
            ).fetchall()
        }

    def holdout_reads(self) -> int:
        """How many times the holdout has been scored, over the whole record."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM sealed WHERE holdout_read_at IS NOT NULL"
        ).fetchone()
        return int(row[0])

    def holdout_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest holdout reads (for the operator): run id, score, time."""
        return list(
            self.db.query(
                "SELECT experiment_id, holdout_value, holdout_read_at FROM sealed "
                "WHERE holdout_read_at IS NOT NULL ORDER BY holdout_read_at DESC LIMIT ?",
                [limit],
            )
        )
