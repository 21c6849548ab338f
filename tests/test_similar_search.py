"""similar_experiments(description): the full-text search leaves out the words in half the
record's descriptions or more (bm25 weighs them ~0) and finds what the whole query ranked.

Over a 10^5-row record whose descriptions all held one word, that word made every row a match
to score: ~68 ms a call, ~29 without it (bench/agents.py's record). Here a real store is seeded
with such a record in small and the answers are compared with the plain bm25 query's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.store import Store
from server.store.similar import (
    DESCRIPTION_SCAN,
    SEARCH_OVERFETCH,
    any_word_query,
    description_words,
)

IDEAS = [
    "cosine warmdown to zero",
    "longer warmdown with a higher matrix lr",
    "weight decay on the embeddings",
    "a wider mlp with relu squared",
    "cosine schedule for the embedding lr",
]
# The whole query, ranked by bm25 then newest: what by_description answered before.
PLAIN_BM25 = (
    "SELECT e.id FROM experiments_fts JOIN experiments e ON e.rowid = experiments_fts.rowid "
    "WHERE experiments_fts MATCH ? AND experiments_fts.rowid > ? "
    "AND e.kind IN ('experiment', 'promotion') ORDER BY bm25(experiments_fts), e.id DESC LIMIT ?"
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "history.sqlite")
    for n in range(120):
        store.create_experiment(
            agent=f"agent{n % 3}",
            kind="confirmation" if n % 11 == 0 else "experiment",
            status="ok",
            description=f"try {IDEAS[n % len(IDEAS)]} (variant {n % 7})",  # "try" in every row
        )
    return store


def plain_bm25(store: Store, text: str, limit: int) -> list[int]:
    newest = store.db.execute("SELECT MAX(rowid) FROM experiments").fetchone()[0]
    query = "description : " + (any_word_query(text) or "")
    rows = store.db.execute(PLAIN_BM25, [query, newest - DESCRIPTION_SCAN, limit]).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize(
    "text",
    [
        "try a cosine warmdown",
        "try weight decay on the embeddings",
        "mlp variant",
        "try the relu squared idea",
    ],
)
def test_the_answer_is_the_whole_querys(store: Store, text: str) -> None:
    found = [row["id"] for row in store.similar.by_description(text, 10)]
    assert found == plain_bm25(store, text, 10)
    assert "try" in store.similar._common_words(["try", "cosine"], 120)


def test_rows_that_share_only_common_words_come_after_the_ranked_ones(store: Store) -> None:
    rows = store.similar.by_description("try squared", 50)
    ids = [row["id"] for row in rows]
    squared = [row["id"] for row in rows if "squared" in row["description"]]
    assert len(rows) == 50 and ids[: len(squared)] == squared  # the ranked matches first
    filler = ids[len(squared) :]
    assert filler == sorted(filler, reverse=True)  # then newest first
    assert all(row["kind"] in ("experiment", "promotion") for row in rows)
    # Only common words: the newest rows that hold them.
    only_common = [row["id"] for row in store.similar.by_description("try", 5)]
    kinds = {r["id"]: r["kind"] for r in store.db.query("SELECT id, kind FROM experiments")}
    newest_experiments = sorted((i for i, k in kinds.items() if k == "experiment"), reverse=True)
    assert only_common == newest_experiments[:5]


def test_a_word_becomes_common_as_the_record_grows(store: Store) -> None:
    similar = store.similar
    assert "mlp" not in similar._common_words(["mlp"], 120)  # in a fifth of the rows
    for n in range(200):
        store.create_experiment(
            agent="agent0", kind="experiment", status="ok", description=f"mlp idea {n}"
        )
    newest = store.db.execute("SELECT MAX(rowid) FROM experiments").fetchone()[0]
    assert "mlp" in similar._common_words(["mlp"], newest)  # counted again: 224 of 320
    found = [row["id"] for row in similar.by_description("mlp cosine", 10)]
    assert found == plain_bm25(store, "mlp cosine", 10)


def test_matches_that_are_mostly_other_kinds_still_find_the_experiments(store: Store) -> None:
    """The ranking reads SEARCH_OVERFETCH rowids per row asked for, of any kind; where those
    are nearly all confirmation runs, the joined query answers, the same as before."""
    early = [
        store.create_experiment(
            agent="agent1", kind="experiment", status="ok", description=f"seedy trick {n}"
        )
        for n in range(3)
    ]
    for n in range(40):
        store.create_experiment(
            agent="agent2", kind="confirmation", status="ok", description=f"seedy trick {n}"
        )
    found = [row["id"] for row in store.similar.by_description("seedy", 5)]
    assert sorted(found) == sorted(early) and found == plain_bm25(store, "seedy", 5)
    assert len(store.similar.by_description("seedy trick", SEARCH_OVERFETCH)) == 3


def test_function_words_are_not_searched(store: Store) -> None:
    """ "the" or "for" says nothing about an idea, and each made thousands more rows a match to
    score: a row that shares only such words with the description is not similar to it."""
    assert description_words("Use the GELU for the MLP, not ReLU; more heads") == [
        "gelu",
        "heads",
        "mlp",
        "more",
        "not",
        "relu",
        "use",
    ]
    rows = store.similar.by_description("the schedule for the lr", 50)
    assert rows and all("schedule" in r["description"] or " lr" in r["description"] for r in rows)
    assert not any(r["description"].endswith("on the embeddings (variant 0)") for r in rows)
    assert store.similar.by_description("with the and for", 5) == []
