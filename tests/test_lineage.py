"""An experiment's lineage (Store.lineage): the chain of parents back to the baseline, read in
one recursive query (get_experiment, the briefing, the dashboard and patch export show it). A
chain stops at its limit, at a parent that is not in the record, and at a repeated id."""

from __future__ import annotations

from pathlib import Path

from support import statements_run

from server.store import Store


def chain_of(store: Store, length: int) -> list[int]:
    """`length` experiments, each the parent of the next (the first a baseline); their ids."""
    ids: list[int] = []
    for n in range(length):
        ids.append(
            store.create_experiment(
                agent="server" if n == 0 else f"agent{n % 2}",
                kind="baseline" if n == 0 else "experiment",
                status="ok",
                description=f"step {n}",
                parent_id=ids[-1] if ids else None,
                metric_value=3.0 - n / 100,
            )
        )
    return ids


def test_lineage_walks_back_to_the_baseline_newest_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    ids = chain_of(store, 6)
    chain = store.lineage(ids[-1])
    assert [step["id"] for step in chain] == ids[::-1]
    assert chain[0]["description"] == "step 5" and chain[-1]["kind"] == "baseline"
    assert chain[-1]["parent_id"] is None
    assert set(chain[0]) == {
        "id",
        "agent",
        "kind",
        "parent_id",
        "status",
        "verdict",
        "metric_value",
        "description",
    }
    assert [step["id"] for step in store.lineage(ids[-1], limit=3)] == ids[::-1][:3]
    assert store.lineage(ids[0]) == chain[-1:]
    assert store.lineage(10_000) == [] and store.lineage(ids[-1], limit=0) == []
    # One statement, however long the chain.
    assert len(statements_run(store, lambda: store.lineage(ids[-1]))) == 1


def test_a_missing_parent_ends_the_chain(tmp_path: Path) -> None:
    store = Store(tmp_path / "history.sqlite")
    ids = chain_of(store, 5)
    store.update_experiment(ids[2], parent_id=9_999)  # a parent the record does not hold
    assert [step["id"] for step in store.lineage(ids[-1])] == [ids[4], ids[3], ids[2]]


def test_a_cycle_ends_at_the_repeated_id(tmp_path: Path) -> None:
    """Parents point to older rows, so no cycle is made by the server; a record edited by hand
    could hold one, and the walk must still end, each step once."""
    store = Store(tmp_path / "history.sqlite")
    ids = chain_of(store, 4)
    store.update_experiment(ids[0], parent_id=ids[3])
    chain = [step["id"] for step in store.lineage(ids[3])]
    assert chain == [ids[3], ids[2], ids[1], ids[0]]
    assert [step["id"] for step in store.lineage(ids[1], limit=200)] == [
        ids[1],
        ids[0],
        ids[3],
        ids[2],
    ]
