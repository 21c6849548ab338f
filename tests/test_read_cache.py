"""The store's kept answers (server.store.read_cache): served while `experiments` is unchanged,
never after a change, whether the change came from this connection, another thread's or another
process's, and never from inside a write transaction. A real SQLite file; no server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

from server.store import Store, write_transaction
from server.store.read_cache import MAX_ENTRIES, experiments_changes


def finished(store: Store, agent: str, metric_value: float, verdict: str = "worse") -> int:
    return store.create_experiment(
        agent=agent,
        requested_by=agent,
        kind="experiment",
        status="ok",
        verdict=verdict,
        metric_value=metric_value,
        total_seconds=10.0,
        description="an idea",
    )


def test_an_answer_is_kept_until_experiments_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    first = store.per_agent_totals()
    assert first == [("alice", 1, 0, 1.9)]
    version = experiments_changes(store.db)
    store.add_claim("bob", "an idea", "2999-01-01T00:00:00Z")  # another table: still kept
    assert experiments_changes(store.db) == version
    assert store.per_agent_totals() == first
    finished(store, "bob", 1.8, verdict="improved")  # an insert
    assert store.per_agent_totals() == [("bob", 1, 1, 1.8), ("alice", 1, 0, 1.9)]
    store.update_experiment(1, metric_value=1.7)  # an update of a row already there
    assert store.per_agent_totals()[0] == ("alice", 1, 0, 1.7)
    assert store.device_seconds_by_requester() == {"alice": 10.0, "bob": 10.0}


def test_a_caller_changing_its_answer_does_not_change_the_kept_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9, verdict="within_noise")
    rows = store.recent_dead_ends(5)
    rows[0]["agent"] = "mallory"
    rows.append({"id": 99})
    assert [r["agent"] for r in store.recent_dead_ends(5)] == ["alice"]


def test_changes_from_another_thread_and_another_process_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store = Store(path)
    finished(store, "alice", 1.9)
    assert store.device_seconds_by_requester() == {"alice": 10.0}
    thread = threading.Thread(target=finished, args=(store, "bob", 1.8))  # its own connection
    thread.start()
    thread.join()
    assert store.device_seconds_by_requester() == {"alice": 10.0, "bob": 10.0}
    write = (
        "import sys; sys.path.insert(0, sys.argv[2]); from server.store import Store; "
        "Store(sys.argv[1]).update_experiment(1, total_seconds=30.0)"
    )
    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run([sys.executable, "-c", write, str(path), root], check=True)
    assert store.device_seconds_by_requester() == {"alice": 30.0, "bob": 10.0}


def test_reads_inside_a_write_transaction_bypass_the_cache(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    assert store.outcome_counts() == {"worse": 1}
    try:
        with write_transaction(store.db):
            finished(store, "bob", 1.8)
            assert store.outcome_counts() == {"worse": 2}  # its own uncommitted row
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert store.outcome_counts() == {"worse": 1}  # nothing kept from the rolled-back write


def test_the_second_read_is_served_without_a_query(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    computed: list[int] = []

    def compute() -> list[int]:
        computed.append(1)
        return [len(computed)]

    assert store.read_cache.get(store.db, ("spy",), compute) == [1]
    assert store.read_cache.get(store.db, ("spy",), compute) == [1]
    assert len(computed) == 1
    finished(store, "bob", 1.8)
    assert store.read_cache.get(store.db, ("spy",), compute) == [2]


def test_a_stale_answer_is_rebuilt_once_while_the_other_callers_wait(tmp_path: Path) -> None:
    """Sixteen threads ask for the same stale answer at once: one rebuilds it, the others get
    that answer (with the agents' calls in worker threads, each change used to set off dozens
    of identical rebuilds). A later change is rebuilt again."""
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    calls: list[int] = []
    gate = threading.Event()

    def slow_count() -> int:
        calls.append(1)
        gate.wait(5)  # every other thread arrives while this rebuild is under way
        return store.count_experiments()

    answers: list[int] = []

    def ask() -> None:
        answers.append(store.read_cache.get(store.db, ("slow_count",), slow_count))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    while not calls:
        threading.Event().wait(0.01)
    threading.Event().wait(0.2)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == [1] * 16 and len(calls) == 1
    finished(store, "bob", 1.8)
    assert store.read_cache.get(store.db, ("slow_count",), slow_count) == 2 and len(calls) == 2
    assert store.read_cache.building_locks() == 0  # the waiters' lock went with the build


def test_no_build_lock_outlives_its_build(tmp_path: Path) -> None:
    """Review finding: each key's build lock was kept for the life of the process, and some keys
    are one-off (the confirmations of one list of ids, a reference that leaves one experiment
    out): 2,000 such keys kept 62 MiB. Now a key's lock goes when its last user leaves; the
    answers themselves stay bounded (MAX_ENTRIES)."""
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    for n in range(500):
        assert store.read_cache.get(store.db, ("one-off", tuple(range(n))), lambda n=n: n) == n
    assert store.read_cache.building_locks() == 0
    assert len(store.read_cache._entries) == MAX_ENTRIES


def test_a_counter_that_went_back_serves_nothing_kept_from_the_other_history(
    tmp_path: Path,
) -> None:
    """Review finding: a backup restored into the live file moves the change counter back. The
    kept answers served any reader whose counter was at or below theirs, so after a restore they
    served the discarded history, and, once the restored file's count came back to theirs,
    went on serving it as current. Each bump now writes a random suffix, and an answer serves
    only the very value it was built at."""
    path = tmp_path / "history.sqlite"
    store = Store(path)
    finished(store, "alice", 1.9)
    backup = sqlite3.connect(tmp_path / "backup.sqlite")
    with closing(sqlite3.connect(path)) as live:
        live.backup(backup)
    finished(store, "bob", 1.5)
    finished(store, "bob", 1.4)
    assert store.read_cache.get(store.db, ("count",), store.count_experiments) == 3
    built_at = str(experiments_changes(store.db))
    with closing(sqlite3.connect(path)) as live:  # the restore, under the running store
        backup.backup(live)
    backup.close()
    assert store.read_cache.get(store.db, ("count",), store.count_experiments) == 1
    finished(store, "carol", 1.3)
    finished(store, "carol", 1.2)
    now = str(experiments_changes(store.db))  # the restored file's count is where the kept one was
    assert now.split(".")[0] == built_at.split(".")[0] and now != built_at
    assert store.read_cache.get(store.db, ("count",), store.count_experiments) == 3
    assert store.outcome_counts() == store._outcome_counts_read()


def test_counts_by_filter_follow_every_change(tmp_path: Path) -> None:
    """get_history's totals are kept by filter (count_cache) and must equal a fresh count after
    any write: inserts and status changes, from this store and from another connection."""
    import random

    path = tmp_path / "history.sqlite"
    store, other = Store(path), Store(path)
    rng = random.Random(3)
    words = ("warmdown", "rope base", "weight decay", "gelu")
    filters: list[dict[str, object]] = [
        {},
        {"status": "ok"},
        {"status": ["crash", "timeout"]},
        {"involving": "alice"},
        {"agent": "bob", "status": "ok"},
        {"scale": "S"},
        *({"query": w} for w in words),
        {"query": "rope", "involving": "bob"},
    ]
    for step in range(40):
        writer = other if step % 3 == 0 else store
        if step % 4 == 3:
            ids = [r["id"] for r in store.db.query("SELECT id FROM experiments")]
            writer.update_experiment(rng.choice(ids), status=rng.choice(["ok", "crash"]))
        else:
            writer.create_experiment(
                agent=rng.choice(["alice", "bob", "carol"]),
                requested_by=rng.choice(["alice", "bob"]),
                kind="experiment",
                status=rng.choice(["ok", "crash", "timeout", "running"]),
                description=f"{rng.choice(words)} {step}",
            )
        for f in filters:
            assert store.count_experiments(**f) == store._count(f), (step, f)
            assert store.count_experiments(**f) == store._count(f), (step, f)  # a kept answer


def test_many_count_filters_leave_the_kept_aggregates_alone(tmp_path: Path) -> None:
    """Counts are kept apart from the aggregates: 2,000 distinct searches (an agent can send
    any words) do not push the leaderboard's kept answers out."""
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    store.per_agent_totals()
    kept = dict(store.read_cache._entries)
    for n in range(2000):
        store.count_experiments(query=f"word{n}")
    assert store.read_cache._entries == kept
    assert len(store.count_cache._entries) <= 1024


def test_a_rebuilt_answer_takes_its_own_place(tmp_path: Path) -> None:
    """A full cache that rebuilds a stale answer replaces it where it was: it does not push out
    another kept answer (the oldest, often the default page's) to make room for a key it has."""
    from server.store.read_cache import ReadCache

    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    cache = ReadCache(max_entries=3)
    for key in ("a", "b", "c"):
        cache.get(store.db, (key,), lambda: 1)
    finished(store, "bob", 1.8)  # every answer is stale now
    cache.get(store.db, ("b",), lambda: 2)
    assert set(cache._entries) == {("a",), ("b",), ("c",)}
    cache.get(store.db, ("d",), lambda: 3)  # a new key: the oldest goes
    assert set(cache._entries) == {("b",), ("c",), ("d",)}


def test_count_filters_of_any_shape(tmp_path: Path) -> None:
    """One status or a list of them, empty filters, a value of another type: each is counted."""
    store = Store(tmp_path / "history.sqlite")
    finished(store, "alice", 1.9)
    assert store.count_experiments(status="ok") == store.count_experiments(status=["ok"]) == 1
    assert store.count_experiments(involving=None) == store.count_experiments(involving="") == 1
    assert store.count_experiments(agent="alice", kind="experiment") == 1
