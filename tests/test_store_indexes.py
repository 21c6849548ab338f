"""The record's reads of one setting or level go through an index that starts with it.

A large record (10^5 experiments, bench/agents.py) whose rows are nearly all of one setting made
two reads walk every row when asked about another: the leaderboard of a setting with no runs
yet (a new level, budget or machine), 0.75 s a call, and get_history(level=...) for a level
with few runs, 0.6 s a call; both in every get_history and leaderboard call of such a lab.
Here the real statements are captured as the store runs them and SQLite's plan for each is
checked: a seek on the setting's or level's index, never a walk of the table or of an index
that does not start with it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.store import Store

HARDWARE = "cpu | torch 2.13.0 | 2 threads | val 00000000"


def seeded(tmp_path: Path) -> Store:
    store = Store(tmp_path / "history.sqlite")
    for n in range(40):
        store.create_experiment(
            agent=f"agent{n % 4}",
            kind="experiment",
            status="ok",
            description=f"idea {n}",
            hardware=HARDWARE,
            budget_seconds=60.0,
            scale="S",
            metric_value=3.0 - n / 1000,
        )
    return store


def plans(store: Store, read: object) -> list[tuple[str, list[str]]]:
    """Each SELECT on experiments that `read()` runs, with SQLite's plan for it."""
    connection: sqlite3.Connection = store.db.conn
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    try:
        read()  # type: ignore[operator]
    finally:
        connection.set_trace_callback(None)
    out = []
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT") and "experiments" in sql:
            plan = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql)]
            out.append((sql, plan))
    return out


def test_a_settings_leaderboard_seeks_its_own_rows(tmp_path: Path) -> None:
    store = seeded(tmp_path)
    for budget, scale in ((60.0, "S"), (300.0, "S"), (60.0, "M")):
        found = plans(
            store,
            lambda budget=budget, scale=scale: store.ranked_candidates(
                hardware=HARDWARE, budget_seconds=budget, scale=scale, limit=10
            ),
        )
        assert found, "ranked_candidates ran no SELECT"
        for sql, plan in found:
            assert any("idx_experiments_setting_rank" in step for step in plan), (sql, plan)
    rows = store.ranked_candidates(hardware=HARDWARE, budget_seconds=60.0, scale="S", limit=3)
    assert [r["metric_value"] for r in rows] == [2.961, 2.962, 2.963]  # still best first
    assert store.ranked_candidates(hardware=HARDWARE, budget_seconds=60.0, scale="M", limit=3) == []


def test_a_levels_history_seeks_its_own_rows(tmp_path: Path) -> None:
    store = seeded(tmp_path)
    store.create_experiment(
        agent="agent0",
        kind="promotion",
        status="ok",
        description="promoted",
        hardware=HARDWARE,
        budget_seconds=300.0,
        scale="M",
        metric_value=2.5,
    )
    found = plans(store, lambda: store.list_experiments(scale="M", limit=20))
    assert found, "list_experiments ran no SELECT"
    listing = [(sql, plan) for sql, plan in found if "ORDER BY" in sql.upper()]
    assert listing, found
    for sql, plan in listing:
        assert any("idx_experiments_level_id" in step for step in plan), (sql, plan)
    assert [r["description"] for r in store.list_experiments(scale="M", limit=20)] == ["promoted"]
