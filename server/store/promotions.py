"""The `promotions` table: one row per promotion of an experiment to a larger scale level,
with its paired runs, the transfer verdict and who asked (the ladder decides, this records)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import sqlite_utils

from server.store.database import utc_now, write_transaction

_JSON_LISTS = ("run_ids", "baseline_ids", "seeds")


class PromotionStore:
    """Reads and writes of the `promotions` table over the record's connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_table(self) -> None:
        """Create the table if missing; stores without `requested_by` get it (who asked)."""
        db = self.db
        with write_transaction(db):
            if "promotions" not in db.table_names():
                db.table("promotions").create(
                    {
                        "id": int,
                        "experiment_id": int,
                        "agent": str,
                        "from_level": str,
                        "to_level": str,
                        "status": str,
                        "run_ids": str,
                        "baseline_ids": str,
                        "seeds": str,
                        "small_gain": float,
                        "large_gain": float,
                        "large_sd": float,
                        "threshold": float,
                        "verdict": str,
                        "note": str,
                        "created_at": str,
                        "finished_at": str,
                    },
                    pk="id",
                )
                db.table("promotions").create_index(["experiment_id"])
            if "requested_by" not in db.table("promotions").columns_dict:
                # Who asked (charged for its runs); `agent` is the author credited with the idea.
                # Older stores recorded the one who asked as `agent`.
                db.execute("ALTER TABLE promotions ADD COLUMN requested_by TEXT")
                db.execute("UPDATE promotions SET requested_by = agent")

    def live_for(self, experiment_id: int, to_level: str) -> dict[str, Any] | None:
        """The promotion of this experiment to this level that has not failed, if any."""
        rows = list(
            self.db.query(
                "SELECT * FROM promotions WHERE experiment_id = ? AND to_level = ? "
                "AND COALESCE(verdict, '') != 'failed' AND status != 'failed'",
                [experiment_id, to_level],
            )
        )
        return _decode(rows[0]) if rows else None

    def add(
        self,
        *,
        experiment_id: int,
        agent: str,
        requested_by: str | None,
        from_level: str,
        to_level: str,
        run_ids: Sequence[int],
        baseline_ids: Sequence[int],
        seeds: Sequence[int],
    ) -> int:
        """Record a promotion `running` and return its id."""
        with write_transaction(self.db):
            return int(
                cast(
                    int,
                    self.db.table("promotions")
                    .insert(
                        {
                            "experiment_id": experiment_id,
                            "agent": agent,
                            "requested_by": requested_by,
                            "from_level": from_level,
                            "to_level": to_level,
                            "status": "running",
                            "run_ids": json.dumps(list(run_ids)),
                            "baseline_ids": json.dumps(list(baseline_ids)),
                            "seeds": json.dumps(list(seeds)),
                            "created_at": utc_now(),
                        }
                    )
                    .last_pk,
                )
            )

    def running(self) -> list[dict[str, Any]]:
        return [
            _decode(r) for r in self.db.query("SELECT * FROM promotions WHERE status = 'running'")
        ]

    def update(self, promotion_id: int, fields: dict[str, Any]) -> None:
        with write_transaction(self.db):
            self.db.table("promotions").update(promotion_id, fields)

    def get(self, promotion_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM promotions WHERE id = ?", [promotion_id]))
        return _decode(rows[0]) if rows else None

    def of_experiment(self, experiment_id: int) -> list[dict[str, Any]]:
        return [
            _decode(r)
            for r in self.db.query(
                "SELECT * FROM promotions WHERE experiment_id = ? ORDER BY id", [experiment_id]
            )
        ]


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for key in _JSON_LISTS:
        row[key] = json.loads(row.get(key) or "[]")
    return row
