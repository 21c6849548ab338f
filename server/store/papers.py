"""The arXiv cache's tables, `papers` and `paper_queries`: rows in and out, nothing about arXiv.

server.papers turns these rows into `Paper` models; every SELECT here is a plain
conn.execute: in autocommit mode it opens no transaction, so it cannot collide with another
thread's write_transaction on a shared connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlite_utils

from server.store.database import write_transaction

PAPER_COLUMNS = (
    "arxiv_id, version, title, authors, summary, categories, primary_category, published, "
    "updated, abs_url, pdf_url, doi, comment, journal_ref"
)


class PaperStore:
    """Reads and writes of the paper cache over one sqlite-utils connection."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def ensure_tables(self) -> None:
        """Create the `papers` and `paper_queries` tables if they do not exist."""
        with write_transaction(self.db):
            self.db.conn.execute(
                """
                CREATE TABLE IF NOT EXISTS papers (
                    arxiv_id TEXT PRIMARY KEY,
                    version INTEGER,
                    title TEXT NOT NULL,
                    authors TEXT NOT NULL,          -- JSON list of names
                    summary TEXT NOT NULL,
                    categories TEXT NOT NULL,       -- JSON list
                    primary_category TEXT NOT NULL,
                    published TEXT NOT NULL,
                    updated TEXT NOT NULL,
                    abs_url TEXT NOT NULL,
                    pdf_url TEXT,
                    doi TEXT,
                    comment TEXT,
                    journal_ref TEXT,
                    fetched_at TEXT NOT NULL
                )
                """
            )
            self.db.conn.execute(
                """
                CREATE TABLE IF NOT EXISTS paper_queries (
                    query_key TEXT PRIMARY KEY,     -- arxiv_query | sort | max_results
                    query TEXT NOT NULL,            -- as the agent sent it
                    arxiv_query TEXT NOT NULL,
                    field TEXT NOT NULL,
                    sort TEXT NOT NULL,
                    max_results INTEGER NOT NULL,
                    ids TEXT NOT NULL,              -- JSON list of arxiv_ids, in result order
                    fetched_at TEXT NOT NULL
                )
                """
            )

    def rows_for_ids(self, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The cached rows (PAPER_COLUMNS, in that order) for these versionless ids, any order."""
        if not ids:
            return []
        placeholders = ", ".join("?" for _ in ids)
        return list(
            self.db.conn.execute(
                f"SELECT {PAPER_COLUMNS} FROM papers WHERE arxiv_id IN ({placeholders})",
                list(ids),
            ).fetchall()
        )

    def upsert(self, rows: Sequence[Sequence[Any]], fetched_at: str) -> None:
        """Upsert paper rows (PAPER_COLUMNS, in that order); call inside write_transaction.
        An older version never replaces a newer."""
        for row in rows:
            self.db.conn.execute(
                f"""
                INSERT INTO papers ({PAPER_COLUMNS}, fetched_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(arxiv_id) DO UPDATE SET
                    version = excluded.version, title = excluded.title,
                    authors = excluded.authors, summary = excluded.summary,
                    categories = excluded.categories,
                    primary_category = excluded.primary_category,
                    published = excluded.published, updated = excluded.updated,
                    abs_url = excluded.abs_url, pdf_url = excluded.pdf_url, doi = excluded.doi,
                    comment = excluded.comment, journal_ref = excluded.journal_ref,
                    fetched_at = excluded.fetched_at
                WHERE papers.version IS NULL OR excluded.version IS NULL
                   OR excluded.version >= papers.version
                """,
                (*row, fetched_at),
            )

    def save_query(
        self,
        query_key: str,
        *,
        query: str,
        arxiv_query: str,
        field: str,
        sort: str,
        max_results: int,
        ids_json: str,
        fetched_at: str,
    ) -> None:
        """Remember which papers a query returned; call inside write_transaction."""
        self.db.conn.execute(
            """
            INSERT OR REPLACE INTO paper_queries
                (query_key, query, arxiv_query, field, sort, max_results, ids, fetched_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (query_key, query, arxiv_query, field, sort, max_results, ids_json, fetched_at),
        )

    def cached_query(self, query_key: str) -> tuple[str, str] | None:
        """(ids as JSON, fetched_at) of a query run before, or None."""
        row = self.db.conn.execute(
            "SELECT ids, fetched_at FROM paper_queries WHERE query_key = ?", (query_key,)
        ).fetchone()
        return None if row is None else (row[0], row[1])
