"""The `tasks` table: MCP task handles (server/mcp_tasks.py) and the experiments each follows.

A task's status is never stored: it is read from its experiments on every tasks/get. The row
only says whose task it is, which tool made it, what it follows and how long it lives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from server.store.database import utc_now, write_transaction


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    agent: str
    tool: str
    experiment_ids: tuple[int, ...]
    subject: dict[str, Any]  # what else the tool needs to rebuild its result (e.g. a promotion id)
    created_at: str
    ttl_ms: int
    poll_interval_ms: int

    def expired(self) -> bool:
        created = datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return datetime.now(UTC) - created > timedelta(milliseconds=self.ttl_ms)


class TaskStore:
    """Reads and writes of the `tasks` table over the record's connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_table(self) -> None:
        with write_transaction(self.db):
            if "tasks" not in self.db.table_names():
                self.db.table("tasks").create(
                    {
                        "task_id": str,
                        "agent": str,
                        "tool": str,
                        "experiment_ids": str,
                        "subject": str,
                        "created_at": str,
                        "ttl_ms": int,
                        "poll_interval_ms": int,
                    },
                    pk="task_id",
                )

    def create(
        self,
        *,
        task_id: str,
        agent: str,
        tool: str,
        experiment_ids: Sequence[int],
        subject: dict[str, Any],
        ttl_ms: int,
        poll_interval_ms: int,
    ) -> TaskRow:
        row = TaskRow(
            task_id=task_id,
            agent=agent,
            tool=tool,
            experiment_ids=tuple(int(i) for i in experiment_ids),
            subject=dict(subject),
            created_at=utc_now(),
            ttl_ms=ttl_ms,
            poll_interval_ms=poll_interval_ms,
        )
        with write_transaction(self.db):
            self.db.table("tasks").insert(
                {
                    "task_id": row.task_id,
                    "agent": row.agent,
                    "tool": row.tool,
                    "experiment_ids": json.dumps(list(row.experiment_ids)),
                    "subject": json.dumps(row.subject),
                    "created_at": row.created_at,
                    "ttl_ms": row.ttl_ms,
                    "poll_interval_ms": row.poll_interval_ms,
                }
            )
        return row

    def get(self, task_id: str) -> TaskRow | None:
        rows = list(self.db.query("SELECT * FROM tasks WHERE task_id = ?", [task_id]))
        if not rows:
            return None
        r = rows[0]
        return TaskRow(
            task_id=r["task_id"],
            agent=r["agent"],
            tool=r["tool"],
            experiment_ids=tuple(json.loads(r["experiment_ids"] or "[]")),
            subject=json.loads(r["subject"] or "{}"),
            created_at=r["created_at"],
            ttl_ms=int(r["ttl_ms"]),
            poll_interval_ms=int(r["poll_interval_ms"]),
        )
