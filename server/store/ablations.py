"""The `ablations` table: one row per ablation of an experiment, with its parts, the paired
seeds and the runs queued for it (server/ablation.py decides and analyses; this records)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import sqlite_utils

from server.store.database import utc_now, write_transaction

_JSON_COLUMNS = ("parts", "seeds", "runs", "skipped")


class AblationStore:
    """Reads and writes of the `ablations` table over the record's connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_table(self) -> None:
        """Create the table if missing (a read when it exists: the dashboard asks per page)."""
        if "ablations" in self.db.table_names():
            return
        with write_transaction(self.db):
            if "ablations" not in self.db.table_names():
                self.db.table("ablations").create(
                    {
                        "id": int,
                        "experiment_id": int,
                        "requested_by": str,
                        "part_kind": str,
                        "parts": str,
                        "seeds": str,
                        "runs": str,
                        "skipped": str,
                        "created_at": str,
                    },
                    pk="id",
                )
                self.db.table("ablations").create_index(["experiment_id"])

    def add(
        self,
        *,
        experiment_id: int,
        requested_by: str | None,
        part_kind: str,
        parts: Sequence[dict[str, Any]],
        seeds: Sequence[int],
        runs: Sequence[dict[str, Any]],
        skipped: Sequence[dict[str, Any]],
    ) -> int:
        """Record an ablation and return its id."""
        with write_transaction(self.db):
            return int(
                cast(
                    int,
                    self.db.table("ablations")
                    .insert(
                        {
                            "experiment_id": experiment_id,
                            "requested_by": requested_by,
                            "part_kind": part_kind,
                            "parts": json.dumps(list(parts)),
                            "seeds": json.dumps(list(seeds)),
                            "runs": json.dumps(list(runs)),
                            "skipped": json.dumps(list(skipped)),
                            "created_at": utc_now(),
                        }
                    )
                    .last_pk,
                )
            )

    def get(self, ablation_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM ablations WHERE id = ?", [ablation_id]))
        return _decode(rows[0]) if rows else None

    def of_experiment(self, experiment_id: int) -> list[dict[str, Any]]:
        """The ablations of one experiment, oldest first."""
        return [
            _decode(r)
            for r in self.db.query(
                "SELECT * FROM ablations WHERE experiment_id = ? ORDER BY id", [experiment_id]
            )
        ]


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for key in _JSON_COLUMNS:
        row[key] = json.loads(row.get(key) or "[]")
    return row
