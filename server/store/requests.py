"""The `run_requests` table: run_experiment calls that queued nothing because the same code (or
the same normalised code) already ran or is running. Each row keeps the agent's description
and points to the earlier experiment, so the request stays on record (searchable, with
full-text search over the description) without adding a row to `experiments`, whose rows
the leaderboard, the noise and the verdicts count. Append-only."""

from __future__ import annotations

from typing import Any, cast

import sqlite_utils

from server.store.database import utc_now, write_transaction


class RunRequestStore:
    """Reads and writes of the `run_requests` table over the record's connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_table(self) -> None:
        """Create the table, its index and its full-text search where missing."""
        db = self.db
        with write_transaction(db):
            if "run_requests" not in db.table_names():
                db.table("run_requests").create(
                    {
                        "id": int,
                        "agent": str,  # who asked
                        "description": str,  # what the agent said the run was for
                        "code_hash": str,
                        "change_fingerprint": str,
                        "earlier_id": int,  # the experiment whose result answered the request
                        "match": str,  # 'exact' (the same bytes) or 'normalised'
                        "reason": str,  # server.similarity's one-line reason
                        "created_at": str,
                    },
                    pk="id",
                    not_null={"agent", "earlier_id", "created_at"},
                )
                db.table("run_requests").create_index(["earlier_id"])
                db.table("run_requests").create_index(["agent", "id"])
        if not db.table("run_requests").detect_fts():
            with write_transaction(db):
                db.table("run_requests").enable_fts(
                    ["description"], tokenize="porter", create_triggers=True
                )

    def add(
        self,
        *,
        agent: str,
        description: str,
        code_hash: str,
        change_fingerprint: str | None,
        earlier_id: int,
        match: str,
        reason: str,
    ) -> int:
        """Record one answered request; returns its id."""
        with write_transaction(self.db):
            return int(
                cast(
                    int,
                    self.db.table("run_requests")
                    .insert(
                        {
                            "agent": agent,
                            "description": description,
                            "code_hash": code_hash,
                            "change_fingerprint": change_fingerprint,
                            "earlier_id": earlier_id,
                            "match": match,
                            "reason": reason,
                            "created_at": utc_now(),
                        }
                    )
                    .last_pk,
                )
            )

    def search(
        self,
        *,
        agent: str | None = None,
        fts_query: str | None = None,
        earlier_ids: list[int] | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Requests, newest first: of `agent`, matching the quoted FTS `fts_query`, or answered by
        one of `earlier_ids` (each filter optional; all given must hold)."""
        where: list[str] = []
        params: list[Any] = []
        if agent:
            where.append("agent = ?")
            params.append(agent)
        if fts_query:
            where.append(
                "rowid IN (SELECT rowid FROM run_requests_fts WHERE run_requests_fts MATCH ?)"
            )
            params.append(fts_query)
        if earlier_ids is not None:
            where.append(f"earlier_id IN ({', '.join('?' for _ in earlier_ids)})")
            params.extend(earlier_ids)
            if not earlier_ids:
                return []
        sql = "SELECT * FROM run_requests" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.db.query(sql + " ORDER BY id DESC LIMIT ?", [*params, limit]))
