"""The memory's reads of `experiments`: runs of the same normalised code (an index hit on
`change_fingerprint`), the recent recorded changes (a bounded scan for near duplicates) and
descriptions that share words with a text (full-text search). Only the columns the dedupe and
similar_experiments read, with `change_edits` decoded."""

from __future__ import annotations

import json
import re
from contextlib import suppress
from typing import Any

import sqlite_utils

# What the dedupe and similar_experiments read of a row (never the code or the diffs).
DESCRIPTION_SCAN = 20_000  # similar_experiments(description): the newest experiments searched
MAX_COUNTED_WORDS = 20_000  # words whose description counts are kept (then counted afresh)
# English function words: they say nothing about an idea, move bm25's rank little, and each
# one made thousands more rows a match to score ("the" and "for" doubled a call, 14 -> 32 ms,
# with the same ten best rows). Negations, comparatives and order ("not", "more", "less",
# "before", "after", "same") stay.
_FUNCTION_WORDS = """
    about also and are been being both but can could did does doing each for from had has
    have how into its just onto our out over own per should such than that the their them
    then there these they this those too very via was were what when where which while who why
    will with would you your
"""
STOP_WORDS = frozenset(_FUNCTION_WORDS.split())
SEARCH_OVERFETCH = 3  # ranked rowids read per row asked for (some are baselines, confirmations...)
SIMILAR_COLUMNS = (
    "id, agent, kind, status, verdict, metric_value, description, failure_reason, force_reason, "
    "change_fingerprint, change_edits, code_hash, code_authors"
)


class SimilarStore:
    """Read-only queries over `experiments` for server.dedupe and server.memory."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        # word -> (descriptions holding it, the largest experiment id when counted)
        self._description_counts: dict[str, tuple[int, int]] = {}

    def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        rows = [dict(r) for r in self.db.query(sql, params)]
        for row in rows:
            if isinstance(row.get("change_edits"), str):
                with suppress(json.JSONDecodeError):
                    row["change_edits"] = json.loads(row["change_edits"])
        return rows

    def find_by_fingerprint(
        self, change_fingerprint: str, settings: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The latest non-failed experiment (ok, queued or running) of this normalised code with
        the same run settings (as Store.find_by_code for the bytes), or None."""
        rows = self._rows(
            f"SELECT {SIMILAR_COLUMNS} FROM experiments WHERE change_fingerprint = ? "
            "AND status IN ('ok', 'queued', 'running') AND hardware IS ? AND budget_seconds IS ? "
            "AND budget_kind IS ? AND COALESCE(scale, 'S') = ? AND kind NOT IN ('confirmation', 'ablation', 'drift_check') "
            "ORDER BY id DESC LIMIT 1",
            [
                change_fingerprint,
                settings.get("hardware"),
                settings.get("budget_seconds"),
                settings.get("budget_kind"),
                settings.get("scale") or "S",
            ],
        )
        return rows[0] if rows else None

    def with_fingerprint(self, change_fingerprint: str, limit: int) -> list[dict[str, Any]]:
        """Every experiment or promotion of this normalised code (any status or settings), newest first."""
        return self._rows(
            f"SELECT {SIMILAR_COLUMNS} FROM experiments WHERE change_fingerprint = ? "
            "AND kind IN ('experiment', 'promotion') ORDER BY id DESC LIMIT ?",
            [change_fingerprint, limit],
        )

    def recent_changes(self, limit: int) -> list[dict[str, Any]]:
        """The newest experiments and promotions with a recorded change, any status, bounded."""
        return self._rows(
            f"SELECT {SIMILAR_COLUMNS} FROM experiments WHERE change_edits IS NOT NULL "
            "AND kind IN ('experiment', 'promotion') ORDER BY id DESC LIMIT ?",
            [limit],
        )

    def by_description(self, text: str, limit: int) -> list[dict[str, Any]]:
        """Experiments and promotions whose description shares words with `text` (any word,
        best match first, any status: failures are what this is for), among the newest
        DESCRIPTION_SCAN experiments: ranking every match of a common word over a 10^5-row
        record cost ~140 ms a call (bench/agents.py), the newest 20,000 ~35 ms.

        Words in half the record's descriptions or more are left out of the ranked search:
        FTS5's bm25 clamps their idf to 1e-6, so they moved no rank, yet each one made every
        row a match to score (a word in every description took a call from ~68 to ~29 ms
        without it). The rows that share only such words come after the ranked ones, newest
        first (their scores were ~0, ordered by description length alone)."""
        words = description_words(text)
        if not words:
            return []
        newest = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM experiments").fetchone()[0]
        common = self._common_words(words, newest)
        rare = [word for word in words if word not in common]
        rows = self._matching(rare, newest - DESCRIPTION_SCAN, limit, ranked=True) if rare else []
        if len(rows) < limit and common:
            seen = {row["id"] for row in rows}
            newest_first = self._matching(
                sorted(common), newest - DESCRIPTION_SCAN, limit + len(rows), ranked=False
            )
            rows += [row for row in newest_first if row["id"] not in seen][: limit - len(rows)]
        return rows

    def _matching(
        self, words: list[str], after_id: int, limit: int, *, ranked: bool
    ) -> list[dict[str, Any]]:
        """Experiments and promotions past `after_id` whose description has any of `words`:
        by bm25 (then newest) when `ranked`, else newest first (FTS5 walks its index by rowid).

        The order is taken from the full-text index alone, for SEARCH_OVERFETCH times the rows
        asked for (any kind); then their kinds (an early column of a row, cheap to read); then
        only the rows answered are read whole. Joining every match to its row before ranking
        cost more than the ranking, and so did reading the rows not answered: a row's later
        columns sit behind its code, in overflow pages. Where too few candidates are
        experiments or promotions, the joined query answers instead: the same answer."""
        match = "description : " + quoted_any(words)
        order = "bm25(experiments_fts), rowid DESC" if ranked else "rowid DESC"
        fetched = limit * SEARCH_OVERFETCH
        candidates = [
            int(row[0])
            for row in self.db.execute(
                "SELECT rowid FROM experiments_fts WHERE experiments_fts MATCH ? AND rowid > ? "
                f"ORDER BY {order} LIMIT ?",
                [match, after_id, fetched],
            )
        ]
        if not candidates:
            return []
        kept = {
            int(row[0])
            for row in self.db.execute(
                # `+kind`: by id, not by the kind index (which walked every experiment's entry)
                f"SELECT id FROM experiments WHERE id IN ({', '.join('?' for _ in candidates)}) "
                "AND +kind IN ('experiment', 'promotion')",
                candidates,
            )
        }
        if len(kept) >= limit or len(candidates) < fetched:
            chosen = [i for i in candidates if i in kept][:limit]
            found = {
                row["id"]: row
                for row in self._rows(
                    f"SELECT {SIMILAR_COLUMNS} FROM experiments WHERE id IN "
                    f"({', '.join('?' for _ in chosen)})",
                    chosen,
                )
            }
            return [found[i] for i in chosen]
        joined_order = (
            "bm25(experiments_fts), e.id DESC" if ranked else "experiments_fts.rowid DESC"
        )
        return self._rows(
            f"SELECT {', '.join('e.' + c.strip() for c in SIMILAR_COLUMNS.split(','))} "
            "FROM experiments_fts JOIN experiments e ON e.rowid = experiments_fts.rowid "
            "WHERE experiments_fts MATCH ? AND experiments_fts.rowid > ? "
            f"AND e.kind IN ('experiment', 'promotion') ORDER BY {joined_order} LIMIT ?",
            [match, after_id, limit],
        )

    def _common_words(self, words: list[str], newest: int) -> set[str]:
        """The words in at least half of the record's descriptions (idf <= 0 for bm25).

        A word's count is kept with the largest id at the time: counts only grow and the
        largest id bounds the row count from above, so a word found common stays common; one
        that was not is counted again once the record has grown by a tenth."""
        common = set()
        for word in words:
            kept = self._description_counts.get(word)
            if kept is None or (kept[0] * 2 < newest and newest > kept[1] * 1.1):
                if len(self._description_counts) >= MAX_COUNTED_WORDS:
                    self._description_counts.clear()
                count = self.db.execute(
                    "SELECT count(*) FROM experiments_fts WHERE experiments_fts MATCH ?",
                    ["description : " + quoted_any([word])],
                ).fetchone()[0]
                kept = (count, newest)
                self._description_counts[word] = kept
            if kept[0] * 2 >= newest:
                common.add(word)
        return common


def all_words_query(text: str) -> str:
    """An FTS5 query matching every word of agent-written text, each quoted (as get_history's)."""
    words = [w.replace('"', "") for w in text.split()]
    return " ".join(f'"{w}"' for w in words if w) or '""'


def description_words(text: str, max_words: int = 16) -> list[str]:
    """The words (3+ characters, lower case, sorted, at most `max_words`) a description search
    matches on: English function words left out (STOP_WORDS)."""
    words = {w for w in re.findall(r"[a-z0-9_]+", text.lower()) if len(w) >= 3}
    return sorted(words - STOP_WORDS)[:max_words]


def quoted_any(words: list[str]) -> str:
    """An FTS5 query matching any of `words` (letters, digits and _ only), each quoted."""
    return "(" + " OR ".join(f'"{w}"' for w in words) + ")"


def any_word_query(text: str, max_words: int = 16) -> str | None:
    """An FTS5 query matching any of the words (3+ characters) of agent-written text, each
    quoted so that no text is FTS5 syntax; None when there is no such word."""
    words = description_words(text, max_words)
    return quoted_any(words) if words else None
