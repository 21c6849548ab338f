"""The `suggestions` table: one row per value set the `suggest` tool proposed (server.suggest),
with the agent it went to, the sampler and, once an experiment ran exactly those values, that
experiment's id: each suggestion and its outcome feed the next study."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlite_utils

from server.store.database import utc_now, write_transaction


class SuggestionStore:
    """Reads and writes of the `suggestions` table over the record's connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_table(self) -> None:
        """Create the table and its indexes if missing."""
        with write_transaction(self.db):
            if "suggestions" not in self.db.table_names():
                self.db.table("suggestions").create(
                    {
                        "id": int,
                        "agent": str,
                        "params": str,  # JSON {parameter name: proposed value}
                        "sampler": str,
                        "trials_fed": int,
                        "created_at": str,
                        "experiment_id": int,  # the experiment that ran these values (NULL: none yet)
                    },
                    pk="id",
                )
                self.db.execute(
                    "CREATE INDEX IF NOT EXISTS idx_suggestions_experiment "
                    "ON suggestions(experiment_id)"
                )
                self.db.execute(
                    "CREATE INDEX IF NOT EXISTS idx_suggestions_agent ON suggestions(agent, id)"
                )

    def add(self, agent: str, params: Mapping[str, float], sampler: str, trials_fed: int) -> int:
        """Record a suggestion, not linked to any experiment yet; returns its id."""
        row = {
            "agent": agent,
            "params": json.dumps(dict(params), sort_keys=True),
            "sampler": sampler,
            "trials_fed": trials_fed,
            "created_at": utc_now(),
        }
        with write_transaction(self.db):
            return int(cast(int, self.db.table("suggestions").insert(row).last_pk))

    def count(self) -> int:
        """How many suggestions the table holds."""
        return int(next(iter(self.db.execute("SELECT COUNT(*) FROM suggestions")))[0])

    def last_id(self) -> int:
        """The newest suggestion's id, 0 if none (the next study's seed: it only grows, since
        pruning never deletes an agent's newest suggestions)."""
        return int(next(iter(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM suggestions")))[0])

    def unlinked(self, max_age_hours: float, limit: int) -> list[dict[str, Any]]:
        """Suggestions of the last `max_age_hours` that no experiment ran yet, oldest first."""
        rows = self.db.query(
            "SELECT * FROM suggestions WHERE experiment_id IS NULL "
            "AND created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) ORDER BY id ASC LIMIT ?",
            [f"-{float(max_age_hours) * 3600:.0f} seconds", limit],
        )
        return [_decode(r) for r in rows]

    def linked_to(self, experiment_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The suggestion each of these experiments ran, by experiment id (those that ran one)."""
        found: dict[int, dict[str, Any]] = {}
        ids = list(experiment_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = self.db.query(
                f"SELECT * FROM suggestions WHERE experiment_id IN ({marks})", chunk
            )
            for row in rows:
                found[int(row["experiment_id"])] = _decode(row)
        return found

    def link(self, suggestion_id: int, experiment_id: int) -> bool:
        """Record that `experiment_id` ran this suggestion's values; False if it was linked already."""
        with write_transaction(self.db):
            cursor = self.db.execute(
                "UPDATE suggestions SET experiment_id = ? WHERE id = ? AND experiment_id IS NULL",
                [experiment_id, suggestion_id],
            )
            return cursor.rowcount == 1

    def recent_of(self, agent: str, limit: int) -> list[dict[str, Any]]:
        """The agent's latest suggestions, newest first."""
        rows = self.db.query(
            "SELECT * FROM suggestions WHERE agent = ? ORDER BY id DESC LIMIT ?", [agent, limit]
        )
        return [_decode(r) for r in rows]

    def prune_unlinked(self, agent: str, keep: int) -> int:
        """Forget the agent's unlinked suggestions beyond its `keep` newest (an agent that asks
        again and again leaves a bounded trail); linked ones are kept. Returns how many went."""
        with write_transaction(self.db):
            cursor = self.db.execute(
                "DELETE FROM suggestions WHERE agent = ? AND experiment_id IS NULL AND id NOT IN "
                "(SELECT id FROM suggestions WHERE agent = ? AND experiment_id IS NULL "
                "ORDER BY id DESC LIMIT ?)",
                [agent, agent, keep],
            )
            return int(cursor.rowcount)


def _decode(row: Mapping[str, Any]) -> dict[str, Any]:
    decoded = dict(row)
    decoded["params"] = json.loads(decoded.get("params") or "{}")
    return decoded
