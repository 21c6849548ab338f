"""Bulk writes for benchmarks: many experiment and claim rows in a few large transactions.

bench/agents.py seeds a record of 10^5 experiments; one `create_experiment` per row (one
transaction each) would take many minutes. These helpers write the same columns, encoded the
same way, through sqlite-utils' `insert_all` inside `write_transaction` (full-text triggers
fire as for any insert). Nothing in the server calls them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.record import QUEUED
from server.store.database import utc_now, write_transaction
from server.store.experiments import Store
from server.store.rows import encode_value
from server.store.schema import EXPERIMENT_COLUMNS


def insert_experiments(store: Store, rows: Iterable[dict[str, Any]], batch_size: int = 500) -> int:
    """Insert experiment rows (ids given or assigned) in one transaction; return how many."""
    count = 0

    def encoded() -> Iterable[dict[str, Any]]:
        nonlocal count
        for fields in rows:
            row = {k: encode_value(v) for k, v in fields.items() if k in EXPERIMENT_COLUMNS}
            row.setdefault("status", QUEUED)
            row.setdefault("created_at", utc_now())
            row.setdefault("attempt", 1)
            count += 1
            yield row

    with write_transaction(store.db):
        store.db.table("experiments").insert_all(encoded(), batch_size=batch_size)
    return count


def insert_claims(store: Store, rows: Iterable[dict[str, Any]]) -> int:
    """Insert claim rows (agent, text, created_at, expires_at, released_at...) in one transaction."""
    listed = list(rows)
    with write_transaction(store.db):
        store.db.table("claims").insert_all(listed, batch_size=500)
    return len(listed)


def table_count(store: Store, table: str) -> int:
    """Rows in one of the record's tables (the benchmark's lost-or-duplicated check)."""
    if table not in {"experiments", "claims", "agents", "tokens"}:
        raise ValueError(f"unknown table {table!r}")
    return int(store.db.execute(f"SELECT COUNT(*) FROM [{table}]").fetchone()[0])


def claim_ids(store: Store) -> list[int]:
    """Every claim's id (to check that each claim_idea made exactly one row)."""
    return [int(r[0]) for r in store.db.execute("SELECT id FROM claims ORDER BY id").fetchall()]
