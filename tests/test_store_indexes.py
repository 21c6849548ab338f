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

import random
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from support import statements_run

from server.store import Store, utc_now

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
    out = []
    for sql in statements_run(store, read):  # type: ignore[arg-type]
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
        assert any("idx_experiments_level_listing" in step for step in plan), (sql, plan)
    assert [r["description"] for r in store.list_experiments(scale="M", limit=20)] == ["promoted"]


def test_a_search_walks_the_text_index_in_id_order_and_stops_at_the_page(tmp_path: Path) -> None:
    """get_history(query=...) with no other filter: the full-text index is read newest (or
    oldest) first and the read stops at the page, never collecting every match first (30 ms for
    a word in most descriptions at 10^5 rows). With another filter the old plan stays."""
    store = seeded(tmp_path)
    for order in ("recent", "oldest"):
        found = plans(store, lambda order=order: store.list_experiments(query="idea", order=order))
        listing = [(sql, plan) for sql, plan in found if "ORDER BY" in sql.upper()]
        assert listing, found
        for sql, plan in listing:
            assert plan[0].startswith("SCAN f VIRTUAL TABLE"), (sql, plan)
            assert not any("SUBQUERY" in step or "TEMP B-TREE" in step for step in plan), plan
    ids = [r["id"] for r in store.list_experiments(query="idea", limit=5)]
    assert ids == [40, 39, 38, 37, 36]
    assert [r["id"] for r in store.list_experiments(query="idea", limit=3, offset=5)] == [
        35,
        34,
        33,
    ]
    assert [r["id"] for r in store.list_experiments(query="idea", before_id=3)] == [2, 1]
    assert [r["id"] for r in store.list_experiments(query="idea", order="oldest", limit=2)] == [
        1,
        2,
    ]
    assert [r["id"] for r in store.list_experiments(query="17", limit=5)] == [18]  # "idea 17"
    # another filter: the same rows as the filtered read would give
    filtered = store.list_experiments(query="idea", agent="agent1", limit=3)
    assert [r["agent"] for r in filtered] == ["agent1"] * 3
    assert [r["id"] for r in filtered] == [38, 34, 30]


def test_no_other_read_walks_the_level_listings_index(tmp_path: Path) -> None:
    """An index keyed on (level, id) is the planner's pick for any read that names a level and
    orders by id: with it, find_by_code (every submit), the baseline lookup and the improvements
    of a setting walked every row of the level (165 ms at 10^5 rows). Its key is written
    IFNULL(scale, 'S') so that only the level listing (and a level's device-seconds) match it;
    each of the other reads keeps the index that its own filter starts with."""
    store = seeded(tmp_path)
    settings = {"hardware": HARDWARE, "budget_seconds": 60.0, "budget_kind": "wall", "scale": "S"}
    reads = {
        "idx_experiments_code_hash": lambda: store.find_by_code("0" * 64, settings),
        "idx_experiments_change_fingerprint": lambda: store.similar.find_by_fingerprint(
            "f" * 16, settings
        ),
        "idx_experiments_verdict_setting": lambda: store.experiments_with_verdict(
            "improved", hardware=HARDWARE, budget_seconds=60.0, scale="S"
        ),
        "idx_experiments_kind_status_verdict": lambda: store.baseline_run_for(
            scale="S", seed=1, hardware=HARDWARE, budget_seconds=60.0
        ),
        "idx_experiments_repeated_runs": lambda: store.repeated_runs(
            hardware=HARDWARE, budget_seconds=60.0, budget_kind="wall", scale="S"
        ),
        "idx_experiments_confirmation_runs": lambda: store.confirmation_runs_of([1, 2, 3]),
        "idx_experiments_chart": lambda: store.chart_outline(HARDWARE, 60.0),
        "idx_experiments_status_metric": lambda: store.first_ok_with_value("agent1", 2.999),
    }
    # the noise's runs name the experiments they confirm that are disqualified (server.store.counts)
    also = {"idx_experiments_repeated_runs": "idx_experiments_agent_totals"}
    for index, read in reads.items():
        found = plans(store, read)
        assert found, f"{index}: no SELECT ran"
        for sql, plan in found:
            if "meta" in sql or "experiment_changes" in sql:
                continue  # the read cache's change counter, the change log (its primary key)
            assert any(index in step or also.get(index, index) in step for step in plan), (
                index,
                sql,
                plan,
            )
            assert not any("level_listing" in step for step in plan), (sql, plan)
    for read in (lambda: store.seconds_at_scale("S"), lambda: store.count_experiments(scale="M")):
        found = [(sql, plan) for sql, plan in plans(store, read) if "meta" not in sql]
        assert found  # the count's own statement, beside the read cache's counter
        for sql, plan in found:
            assert any("idx_experiments_level_listing" in step for step in plan), (sql, plan)
    assert store.first_ok_with_value("agent1", 2.999) == 2  # metric 3.0 - 1/1000
    assert store.seconds_at_scale("M") == 0.0
    assert store.count_experiments(scale="S") == 40


def test_the_open_claims_are_read_from_their_index(tmp_path: Path) -> None:
    """Every get_history, claim_idea and submit reads the open claims; with 100 agents the
    claims table holds thousands that lapsed or were released."""
    store = seeded(tmp_path)
    store.add_claim("agent1", "an idea", utc_now(timedelta(hours=1)))
    connection: sqlite3.Connection = store.db.conn
    for read in (store.open_claims, lambda: store.listed_open_claims(20, 3)):
        [sql] = [s for s in statements_run(store, read) if "released_at IS NULL" in s]  # open ones
        plan = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql)]
        assert any("idx_claims_open" in step for step in plan), plan


def test_the_listed_claims_follow_the_rule_over_every_open_claim(tmp_path: Path) -> None:
    """listed_open_claims picks what results list: the newest open claims, at most so many
    per agent, and the total of open ones. Checked against the rule applied in Python to
    every claim, after random claims, releases and lapses."""
    store = seeded(tmp_path)
    rng = random.Random(7)
    for n in range(300):
        lapses = utc_now(timedelta(hours=rng.choice([-1, 1, 2])))  # a third have lapsed
        store.add_claim(f"agent{rng.randrange(8)}", f"idea {n}", lapses)
        if rng.random() < 0.05:
            store.release_claims(f"agent{rng.randrange(8)}", None)
    claims = list(store.db.query("SELECT * FROM claims ORDER BY id DESC"))
    now_text = utc_now()
    open_ = [c for c in claims if c["released_at"] is None and c["expires_at"] > now_text]
    assert 0 < len(open_) < len(claims)
    for limit, per_agent in ((20, 3), (10, 3), (5, 1), (1000, 1000)):
        expected: list[int] = []
        shown: dict[str, int] = {}
        for claim in open_:
            if shown.get(claim["agent"], 0) < per_agent and len(expected) < limit:
                shown[claim["agent"]] = shown.get(claim["agent"], 0) + 1
                expected.append(claim["id"])
        listed, total = store.listed_open_claims(limit, per_agent)
        assert [c["id"] for c in listed] == expected
        assert total == len(open_)
        assert set(listed[0]) == {"id", "agent", "text", "created_at", "expires_at"}
    store.db.execute("UPDATE claims SET released_at = ?", [now_text])
    assert store.listed_open_claims(20, 3) == ([], 0)


def test_listing_no_claims_is_refused(tmp_path: Path) -> None:
    store = seeded(tmp_path)
    for limit, per_agent in ((0, 3), (20, 0), (-1, 3)):
        with pytest.raises(ValueError, match="at least 1"):
            store.listed_open_claims(limit, per_agent)
