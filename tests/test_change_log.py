"""The record's change log (server.store.change_log) and the chart outline kept current from it:
after any mix of inserts and updates, from this connection, another thread's or another
process's, the kept rows equal a full read of the table; a reader the log no longer reaches
back to reads the table whole; nothing is kept from inside a write transaction. A real SQLite
file; no server."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from server.store import Store, write_transaction
from server.store.change_log import (
    CHANGE_LOG_KEEP,
    CHANGE_LOG_TABLE,
    CHANGE_LOG_TRIGGERS,
    log_head,
)
from server.store.database import stale_triggers
from server.store.listing import CHART_OUTLINE_COLUMNS, FINISHED
from server.store.read_cache import CHANGE_TRIGGERS, experiments_changes

HARDWARE, BUDGET = "cpu-test", 60.0
STATUSES = ("queued", "running", "ok", "crash", "timeout", "cancelled")
VERDICTS = (None, "worse", "within_noise", "improved")


def outline_read_whole(store: Store) -> list[tuple[object, ...]]:
    """What the outline is, by the full read the kept rows must equal."""
    sql = f"SELECT {CHART_OUTLINE_COLUMNS} FROM experiments WHERE {FINISHED} ORDER BY id"
    return [tuple(row) for row in store.db.execute(sql, [HARDWARE, BUDGET]).fetchall()]


def create(store: Store, rng: random.Random) -> int:
    return store.create_experiment(
        agent=rng.choice(["alice", "bob"]),
        requested_by="alice",
        kind=rng.choice(["experiment", "experiment", "confirmation", "baseline"]),
        status=rng.choice(STATUSES),
        verdict=rng.choice(VERDICTS),
        metric_value=rng.choice([None, rng.uniform(1.0, 2.0)]),
        hardware=rng.choice([HARDWARE, HARDWARE, "cuda-test"]),
        budget_seconds=BUDGET,
        description="an idea",
    )


def change(store: Store, rng: random.Random, ids: list[int]) -> None:
    """One update as the server makes them: a run starts or ends, a verdict or a flag moves."""
    experiment_id = rng.choice(ids)
    store.update_experiment(
        experiment_id,
        **rng.choice(
            [
                {"status": "running"},
                {"status": "ok", "metric_value": rng.uniform(1.0, 2.0)},
                {"status": "crash", "metric_value": None},
                {"verdict": rng.choice(VERDICTS)},
                {"disqualified": rng.choice([0, 1])},
                {"status": "queued"},  # a re-queued run leaves the outline
            ]
        ),
    )


def test_the_kept_outline_equals_a_full_read_after_any_mix_of_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(11)
    ids = [create(store, rng) for _ in range(60)]
    assert ids == list(range(1, 61))  # the log's trigger leaves each insert's own id
    assert store.chart_outline(HARDWARE, BUDGET) == outline_read_whole(store)
    for _ in range(40):
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.3:
                ids.append(create(store, rng))
            else:
                change(store, rng, ids)
        assert store.chart_outline(HARDWARE, BUDGET) == outline_read_whole(store)
    assert store.chart_outline_rows.full_reads == 1  # every later call read the changes only
    assert store.chart_outline_rows.delta_reads == 40
    assert store.chart_outline(HARDWARE, BUDGET) == outline_read_whole(store)  # unchanged: kept
    assert store.chart_outline_rows.delta_reads == 40


def test_a_large_batch_of_changes_is_merged_by_one_sort(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(5)
    ids = [create(store, rng) for _ in range(50)]
    store.chart_outline(HARDWARE, BUDGET)
    with write_transaction(store.db):
        ids += [create(store, rng) for _ in range(300)]
        for _ in range(200):
            change(store, rng, ids)
    assert store.chart_outline(HARDWARE, BUDGET) == outline_read_whole(store)
    assert store.chart_outline_rows.delta_reads == 1


def test_changes_from_another_thread_and_another_process_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store = Store(path)
    rng = random.Random(3)
    ids = [create(store, rng) for _ in range(20)]
    before = store.chart_outline(HARDWARE, BUDGET)
    improved = {"status": "ok", "verdict": "improved", "metric_value": 1.5, "hardware": HARDWARE}
    improved |= {"kind": "experiment", "disqualified": 0}
    thread = threading.Thread(  # its own connection
        target=store.update_experiment, args=(ids[0],), kwargs=improved
    )
    thread.start()
    thread.join()
    write = (
        "import sys; sys.path.insert(0, sys.argv[2]); from server.store import Store; "
        "s = Store(sys.argv[1]); s.update_experiment(2, status='queued'); "
        "s.create_experiment(agent='carol', requested_by='carol', kind='experiment', "
        "status='ok', metric_value=1.1, hardware='cpu-test', budget_seconds=60.0)"
    )
    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run([sys.executable, "-c", write, str(path), root], check=True)
    after = store.chart_outline(HARDWARE, BUDGET)
    assert after == outline_read_whole(store)
    assert after != before
    assert after[0][:4] == (1, 1, 1, 1)  # ok with a value, counts for the best, improved
    assert 2 not in [row[0] for row in after]  # re-queued: no longer finished
    assert after[-1][0] == 21  # the other process's new row
    assert store.chart_outline_rows.full_reads == 1


def test_a_reader_the_log_no_longer_reaches_reads_the_table_whole(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(9)
    ids = [create(store, rng) for _ in range(20)]
    store.chart_outline(HARDWARE, BUDGET)
    for _ in range(5):
        change(store, rng, ids)
    head = log_head(store.db)
    with write_transaction(store.db):  # as the log's pruning does once it is long
        store.db.execute(f"DELETE FROM {CHANGE_LOG_TABLE} WHERE seq < ?", [head])
    assert store.chart_outline(HARDWARE, BUDGET) == outline_read_whole(store)
    assert (store.chart_outline_rows.full_reads, store.chart_outline_rows.delta_reads) == (2, 0)


def test_the_log_keeps_its_newest_entries_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    sql = CHANGE_LOG_TRIGGERS["experiments_log_insert"]
    assert "DELETE FROM experiment_changes WHERE seq <= last_insert_rowid() - 4096" in sql
    rng = random.Random(1)
    ids = [create(store, rng) for _ in range(10)]
    with write_transaction(store.db):
        for _ in range(4200):
            store.db.execute("UPDATE experiments SET description = 'x' WHERE id = ?", [ids[0]])
    count, oldest, newest = store.db.execute(
        f"SELECT COUNT(*), MIN(seq), MAX(seq) FROM {CHANGE_LOG_TABLE}"
    ).fetchone()
    assert count == 4096 and newest == 4210 and oldest == newest - 4095


def test_nothing_read_inside_a_write_transaction_is_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(2)
    [create(store, rng) for _ in range(10)]
    kept = store.chart_outline(HARDWARE, BUDGET)
    try:
        with write_transaction(store.db):
            store.create_experiment(
                agent="mallory", kind="experiment", status="ok", metric_value=0.1,
                hardware=HARDWARE, budget_seconds=BUDGET,
            )  # fmt: skip
            assert len(store.chart_outline(HARDWARE, BUDGET)) == len(kept) + 1  # its own row
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert store.chart_outline(HARDWARE, BUDGET) == kept == outline_read_whole(store)


def test_a_file_written_before_the_log_gets_it_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store = Store(path)
    rng = random.Random(4)
    [create(store, rng) for _ in range(5)]
    with write_transaction(store.db):
        for name in CHANGE_LOG_TRIGGERS:
            store.db.execute(f"DROP TRIGGER {name}")
        store.db.execute(f"DROP TABLE {CHANGE_LOG_TABLE}")
    reopened = Store(path)
    assert CHANGE_LOG_TABLE in reopened.db.table_names()
    assert set(CHANGE_LOG_TRIGGERS) <= {t.name for t in reopened.db.triggers}
    reopened.chart_outline(HARDWARE, BUDGET)  # an empty log: read whole, then kept
    reopened.update_experiment(1, status="ok", metric_value=1.2)
    assert reopened.chart_outline(HARDWARE, BUDGET) == outline_read_whole(reopened)
    assert (reopened.chart_outline_rows.full_reads, reopened.chart_outline_rows.delta_reads) == (
        1,
        1,
    )


class CommitBetweenStatements:
    """A reader's connection on which, just after the statement that checks how far back the log
    reaches, another connection commits `changes` log entries (a bulk write from another
    process), before the reader reads the ids changed."""

    def __init__(self, db: Any, other: sqlite3.Connection, row_id: int, changes: int) -> None:
        self.db, self.other, self.row_id, self.changes = db, other, row_id, changes
        self.fired = False

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        cursor = self.db.execute(sql, params)
        if self.fired or "MIN(seq)" not in sql:
            return cursor
        rows = cursor.fetchall()
        self.fired = True
        self.other.execute("BEGIN IMMEDIATE")
        for _ in range(self.changes):
            self.other.execute(
                "UPDATE experiments SET description = 'bulk' WHERE id = ?", [self.row_id]
            )
        self.other.execute("COMMIT")
        return _Rows(rows)


class _Rows(list):  # type: ignore[type-arg]
    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


def test_a_large_commit_between_a_readers_statements_does_not_hide_a_change(
    tmp_path: Path,
) -> None:
    """Review finding: the reader's statements each saw their own moment. A commit of a full
    log's worth of entries, landing between the check that the log reaches back and the read of
    the ids, pruned the entries being read: the reader merged none of them, marked itself
    current, and the change it missed stayed missing for the life of the process. The reader's
    statements now run in one read snapshot."""
    path = tmp_path / "history.sqlite"
    store = Store(path)
    rng = random.Random(5)
    ids = [create(store, rng) for _ in range(10)]
    store.chart_outline(HARDWARE, BUDGET)
    store.update_experiment(  # one change for the reader to merge
        ids[0], status="ok", metric_value=0.5, hardware=HARDWARE, budget_seconds=BUDGET
    )
    with closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as other:
        reader = CommitBetweenStatements(store.db.get(), other, ids[1], CHANGE_LOG_KEEP)
        store.chart_outline_rows.rows(reader, [HARDWARE, BUDGET])
    assert reader.fired
    for _ in range(2):
        outline = store.chart_outline(HARDWARE, BUDGET)
        assert outline == outline_read_whole(store)
        assert (ids[0], 1) == outline[[row[0] for row in outline].index(ids[0])][:2]


def test_a_backup_restored_into_the_live_file_is_read_whole(tmp_path: Path) -> None:
    """Review finding: a backup restored into the live file renumbers the log from an older
    point. Once its head passed a reader's kept seq, the reader merged the restored file's
    changes into rows kept from the discarded history: an agent that no longer exists stayed
    ranked, a new result stayed missing. Each entry's random stamp now tells the reader that
    the entry it stopped at is not the one it saw."""
    path = tmp_path / "history.sqlite"
    store = Store(path)
    rng = random.Random(6)
    ids = [create(store, rng) for _ in range(10)]
    backup = sqlite3.connect(tmp_path / "backup.sqlite")
    with closing(sqlite3.connect(path)) as live:
        live.backup(backup)
    for _ in range(3):  # then discarded by the restore
        store.create_experiment(
            agent="dropped", kind="experiment", status="ok", metric_value=0.9,
            hardware=HARDWARE, budget_seconds=BUDGET,
        )  # fmt: skip
    store.chart_outline(HARDWARE, BUDGET)
    store.per_agent_totals()
    kept_at = log_head(store.db)
    with closing(sqlite3.connect(path)) as live:  # the restore, under the running store
        backup.backup(live)
    backup.close()
    for _ in range(6):
        change(store, rng, ids)
    assert log_head(store.db) > kept_at  # the restored log passed the readers' kept seq
    assert store.chart_outline(HARDWARE, BUDGET) == outline_read_whole(store)
    totals = {agent: tuple(rest) for agent, *rest in store.per_agent_totals()}
    assert totals == totals_read_whole(store) and "dropped" not in totals


def test_an_older_files_counter_and_log_are_brought_up_to_date_when_opened(
    tmp_path: Path,
) -> None:
    """A file from before the stamps (a plain change count, a log without stamps) gets the new
    triggers and column when opened, and its kept reads stay equal to full reads."""
    path = tmp_path / "history.sqlite"
    store = Store(path)
    rng = random.Random(7)
    ids = [create(store, rng) for _ in range(5)]
    plain = "BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'experiments_changes'; END"
    unstamped = (
        "BEGIN INSERT INTO experiment_changes (experiment_id) VALUES (NEW.id); "
        "DELETE FROM experiment_changes WHERE seq <= last_insert_rowid() - 4096; END"
    )
    with write_transaction(store.db):
        for name, body in [
            ("experiments_changes_insert", f"AFTER INSERT ON experiments {plain}"),
            ("experiments_changes_update", f"AFTER UPDATE ON experiments {plain}"),
            ("experiments_log_insert", f"AFTER INSERT ON experiments {unstamped}"),
            ("experiments_log_update", f"AFTER UPDATE ON experiments {unstamped}"),
        ]:
            store.db.execute(f"DROP TRIGGER {name}")
            store.db.execute(f"CREATE TRIGGER {name} {body}")
        store.db.execute(f"DROP TABLE {CHANGE_LOG_TABLE}")
        store.db.execute(
            f"CREATE TABLE {CHANGE_LOG_TABLE} (seq INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL)"
        )
        store.db.execute("UPDATE meta SET value = '12' WHERE key = 'experiments_changes'")
    change(store, rng, ids)  # an unstamped entry
    reopened = Store(path)
    assert stale_triggers(reopened.db, {**CHANGE_LOG_TRIGGERS, **CHANGE_TRIGGERS}) == []
    assert "stamp" in reopened.db.table(CHANGE_LOG_TABLE).columns_dict
    reopened.chart_outline(HARDWARE, BUDGET)  # kept at the unstamped entry
    change(reopened, rng, ids)
    count, suffix = str(experiments_changes(reopened.db)).split(".")
    assert count == "14" and len(suffix) == 12
    assert reopened.chart_outline(HARDWARE, BUDGET) == outline_read_whole(reopened)
    assert reopened.chart_outline_rows.delta_reads == 1  # from the unstamped entry on


def totals_read_whole(store: Store) -> dict[str, tuple[object, ...]]:
    """Each agent's (experiments, improvements, best qualified value) by one GROUP BY."""
    sql = (
        "SELECT agent, COUNT(*), SUM(verdict = 'improved'), MIN(CASE WHEN status = 'ok' "
        "AND COALESCE(disqualified, 0) = 0 THEN metric_value END) FROM experiments "
        "WHERE kind = 'experiment' GROUP BY agent"
    )
    return {row[0]: tuple(row[1:]) for row in store.db.execute(sql).fetchall()}


def test_the_kept_per_agent_totals_equal_a_full_aggregate_after_any_mix_of_writes(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(21)
    ids = [create(store, rng) for _ in range(40)]
    for _ in range(30):
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.3:
                ids.append(create(store, rng))
            elif rng.random() < 0.2:  # a row's kind may change: its agent's group is redone
                store.update_experiment(
                    rng.choice(ids), kind=rng.choice(["experiment", "baseline"])
                )
            else:
                change(store, rng, ids)
        if rng.random() < 0.2:  # an agent's first experiment
            ids.append(
                store.create_experiment(
                    agent=f"new{len(ids)}", kind="experiment", status="ok", metric_value=1.5
                )
            )
        totals = store.per_agent_totals()
        assert {agent: tuple(rest) for agent, *rest in totals} == totals_read_whole(store)
        bests = [
            (best is None, best if best is not None else 0.0, agent) for agent, _, _, best in totals
        ]
        assert bests == sorted(bests)  # best first (lower: the store's target minimizes)
    assert store.agent_totals["ASC"].full_reads == 1
    assert store.agent_totals["ASC"].delta_reads == 29  # the first call read them whole


def repeated_runs_read_whole(store: Store) -> list[dict[str, object]]:
    """The noise's repeated runs by the one joined query the kept rows replace."""
    rows = store.db.query(
        "SELECT e.id, e.kind, e.confirms_id, e.metric_value, e.seed, e.flags, e.cpu_share, "
        "e.description, COALESCE(o.disqualified, 0) AS original_disqualified FROM experiments e "
        "LEFT JOIN experiments o ON o.id = e.confirms_id WHERE e.kind IN ('baseline', "
        "'confirmation') AND e.status = 'ok' AND e.metric_value IS NOT NULL AND e.hardware = ? "
        "AND e.budget_seconds = ? AND COALESCE(e.budget_kind, 'wall') = ? "
        "AND COALESCE(e.scale, 'S') = ? ORDER BY e.id",
        [HARDWARE, BUDGET, "wall", "S"],
    )
    return [{**row, "flags": json.loads(row["flags"]) if row["flags"] else []} for row in rows]


def confirmations_read_whole(store: Store, ids: list[int]) -> dict[int, list[dict[str, object]]]:
    out: dict[int, list[dict[str, object]]] = {}
    for row in store.db.query(
        "SELECT confirms_id, id, status, metric_value, seed, flags, requested_by, description "
        f"FROM experiments WHERE kind = 'confirmation' AND confirms_id IN ({', '.join('?' for _ in ids)}) "
        "ORDER BY id",
        ids,
    ):
        row["flags"] = json.loads(row["flags"]) if row["flags"] else []
        out.setdefault(int(row.pop("confirms_id")), []).append(row)
    return out


def test_the_kept_repeated_runs_and_confirmations_equal_the_joined_queries(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(33)
    originals = [create(store, rng) for _ in range(150)]
    runs: list[int] = []

    def confirmation() -> int:
        return store.create_experiment(
            agent="alice", kind=rng.choice(["confirmation", "confirmation", "baseline"]),
            confirms_id=rng.choice(originals), status=rng.choice(["ok", "ok", "crash", "running"]),
            metric_value=rng.choice([None, rng.uniform(1.0, 2.0)]), seed=rng.randint(1, 99),
            flags=rng.choice([None, [], [{"name": "contended", "reason": "shared CPU"}]]),
            hardware=HARDWARE, budget_seconds=BUDGET, description="a repeat",
        )  # fmt: skip

    runs += [confirmation() for _ in range(200)]
    for _ in range(25):
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.25:
                runs.append(confirmation())
            elif roll < 0.5:  # the original's disqualification moves: its runs' flag follows
                store.update_experiment(
                    rng.choice(originals), disqualified=rng.choice([0, 1, None])
                )
            elif roll < 0.75:
                store.update_experiment(
                    rng.choice(runs),
                    **rng.choice([{"status": "ok", "metric_value": 1.5}, {"status": "crash"},
                                  {"flags": [{"name": "over_budget", "reason": "late"}]},
                                  {"budget_kind": "cpu"}, {"scale": "M"}]),
                )  # fmt: skip
            else:
                change(store, rng, originals)
        kwargs = {
            "hardware": HARDWARE,
            "budget_seconds": BUDGET,
            "budget_kind": "wall",
            "scale": "S",
        }
        assert store.repeated_runs(**kwargs) == repeated_runs_read_whole(store)
        many = rng.sample(originals, 120)  # more than FEW_EXPERIMENTS: from the kept rows
        assert store.confirmation_runs_of(many) == confirmations_read_whole(store, many)
        few = rng.sample(originals, 7)  # one indexed query
        assert store.confirmation_runs_of(few) == confirmations_read_whole(store, few)
    assert store.repeated_run_rows.full_reads == 1 and store.repeated_run_rows.delta_reads == 24
    assert store.confirmation_rows.full_reads == 1 and store.confirmation_rows.delta_reads == 24


def test_a_caller_changing_a_kept_run_changes_nothing_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    original = store.create_experiment(agent="alice", kind="experiment", status="ok")
    ids = [original] + [create(store, random.Random(n)) for n in range(110)]
    for seed in (1, 2):
        store.create_experiment(
            agent="alice", kind="confirmation", confirms_id=original, status="ok",
            metric_value=1.2, seed=seed, hardware=HARDWARE, budget_seconds=BUDGET,
        )  # fmt: skip
    first = store.confirmation_runs_of(ids)
    first[original][0]["status"] = "crash"
    first[original].append({"id": 999})
    again = store.confirmation_runs_of(ids)
    assert [run["status"] for run in again[original]] == ["ok", "ok"]
    store.update_experiment(ids[1], description="a change elsewhere")  # a new version: rebuilt
    assert [run["status"] for run in store.confirmation_runs_of(ids)[original]] == ["ok", "ok"]


def test_per_agent_totals_read_whole_when_the_log_was_pruned_or_inside_a_write(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "history.sqlite")
    rng = random.Random(8)
    ids = [create(store, rng) for _ in range(30)]
    store.per_agent_totals()
    for _ in range(3):
        change(store, rng, ids)
    with write_transaction(store.db):
        store.db.execute(f"DELETE FROM {CHANGE_LOG_TABLE} WHERE seq < ?", [log_head(store.db)])
    totals = store.per_agent_totals()
    assert {agent: tuple(rest) for agent, *rest in totals} == totals_read_whole(store)
    kept = store.agent_totals["ASC"]
    assert (kept.full_reads, kept.delta_reads) == (2, 0)
    try:
        with write_transaction(store.db):
            store.create_experiment(
                agent="mallory", kind="experiment", status="ok", metric_value=0.1
            )
            assert "mallory" in {agent for agent, *_ in store.per_agent_totals()}
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert "mallory" not in {agent for agent, *_ in store.per_agent_totals()}
