"""The record's paged reads of `experiments`: get_history's and the JSON API's pages and their
counts, and the progress chart's rows. A row holds the code (~18 kB) before most figures, so a
read that walks many rows goes through an index that holds what it needs (server.store.schema
READ_INDEXES) and the wide columns are read for the rows a page shows only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.store.change_log import IncrementalRows
from server.store.counts import ExperimentCounts
from server.store.read_cache import ReadCache
from server.store.rows import decode_row
from server.store.similar import all_words_query

# What the chart draws of each experiment it shows (the outline has the rest).
CHART_POINT_COLUMNS = "id, agent, kind, status, metric_value, verdict, description, disqualified"
FINISHED = "status NOT IN ('queued', 'running')"
COUNT_CACHE_ENTRIES = 1024  # distinct count filters kept (agents' scopes, searches)
# The chart's outline of each finished experiment (ExperimentListing.chart_outline).
CHART_OUTLINE_COLUMNS = (
    "id, status = 'ok' AND metric_value IS NOT NULL, "
    "COALESCE(disqualified, 0) = 0 AND kind IN ('experiment', 'baseline') "
    "AND hardware IS ? AND budget_seconds IS ?, verdict IS 'improved', metric_value"
)


class ExperimentListing(ExperimentCounts):
    """Pages, counts and the chart's rows (Store's base, with the aggregates of ExperimentCounts)."""

    chart_outline_rows: IncrementalRows  # the chart's outline, kept current from the change log
    count_cache: ReadCache  # count_experiments' answers by filter

    def list_experiments(
        self,
        *,
        agent: str | None = None,
        requested_by: str | None = None,
        involving: str | None = None,
        status: str | Sequence[str] | None = None,
        order: str = "recent",
        query: str | None = None,
        kind: str | None = None,
        scale: str | None = None,
        limit: int = 20,
        offset: int = 0,
        columns: Sequence[str] | None = None,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Filtered, ordered rows (`recent`: newest first; `best`: best metric first; `oldest`).

        `agent`: credited to that agent; `requested_by`: asked for (charged to) that agent;
        `involving`: either of the two.
        """
        where: list[str] = []
        params: list[Any] = []
        if agent:
            where.append("e.agent = ?")
            params.append(agent)
        if requested_by:
            where.append("e.requested_by = ?")
            params.append(requested_by)
        if involving:
            where.append("(e.agent = ? OR e.requested_by = ?)")
            params.extend([involving, involving])
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"e.status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if kind:
            where.append("e.kind = ?")
            params.append(kind)
        if scale:  # IFNULL: the level listing's own index (schema.py idx_experiments_level_listing)
            where.append("IFNULL(e.scale, 'S') = ?")
            params.append(scale)
        select = ", ".join(f"e.[{c}]" for c in columns) if columns else "e.*"
        if query and not where and order in ("recent", "oldest"):
            return self._search_in_id_order(
                select, query, order=order, limit=limit, offset=offset, before_id=before_id
            )
        if before_id is not None:
            where.append("e.id < ?")
            params.append(before_id)
        if query:
            where.append(
                "e.rowid IN (SELECT rowid FROM experiments_fts WHERE experiments_fts MATCH ?)"
            )
            params.append(all_words_query(query))
        order_sql = {
            "recent": "e.id DESC",
            "oldest": "e.id ASC",
            "best": f"e.metric_value IS NULL, {self.best_order('e.')}, e.id ASC",
        }[order]
        sql = f"SELECT {select} FROM experiments e"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order_sql} LIMIT ? OFFSET ?"
        return [decode_row(r) for r in self.db.query(sql, [*params, limit, offset])]

    def _search_in_id_order(
        self,
        select: str,
        query: str,
        *,
        order: str,
        limit: int,
        offset: int,
        before_id: int | None,
    ) -> list[dict[str, Any]]:
        """A full-text search with no other filter, newest (or oldest) first: the index's own
        rowid order, stopping at the page. Filtering `experiments` by the set of matches read
        every match first (30 ms for a word in 76,000 of 100,000 descriptions, 0.2 ms now)."""
        direction = "DESC" if order == "recent" else "ASC"
        sql = (
            f"SELECT {select} FROM experiments_fts f JOIN experiments e ON e.rowid = f.rowid "
            "WHERE f.experiments_fts MATCH ?"
        )
        params: list[Any] = [all_words_query(query)]
        if before_id is not None:
            sql += " AND f.rowid < ?"
            params.append(before_id)
        sql += f" ORDER BY f.rowid {direction} LIMIT ? OFFSET ?"
        return [decode_row(r) for r in self.db.query(sql, [*params, limit, offset])]

    def count_experiments(self, **filters: Any) -> int:
        """How many experiments match: agent, requested_by, involving, status (one or several),
        kind, scale and query as in list_experiments. Kept until `experiments` changes: every
        get_history counts its filter's rows, 2.5-11 ms at 10^5 experiments (a search's words
        in most descriptions, or the whole table), and 100 agents ask between two changes."""
        key = tuple(
            sorted(
                (name, tuple(value) if isinstance(value, list | tuple | set) else value)
                for name, value in filters.items()
                if value
            )
        )
        return self.count_cache.get(self.db, ("count", key), lambda: self._count(filters))

    def _count(self, filters: dict[str, Any]) -> int:
        where: list[str] = []
        params: list[Any] = []
        for key in ("agent", "requested_by", "kind"):
            if filters.get(key):
                where.append(f"{key} = ?")
                params.append(filters[key])
        if filters.get("involving"):
            where.append("(agent = ? OR requested_by = ?)")
            params.extend([filters["involving"], filters["involving"]])
        status = filters.get("status")
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if filters.get("scale"):
            where.append("IFNULL(scale, 'S') = ?")  # the level listing's index
            params.append(filters["scale"])
        if filters.get("query") and not where:  # the index alone: no experiment row read
            sql = "SELECT COUNT(*) FROM experiments_fts WHERE experiments_fts MATCH ?"
            return int(next(iter(self.db.execute(sql, [all_words_query(filters["query"])])))[0])
        if filters.get("query"):
            where.append(
                "rowid IN (SELECT rowid FROM experiments_fts WHERE experiments_fts MATCH ?)"
            )
            params.append(all_words_query(filters["query"]))
        sql = "SELECT COUNT(*) FROM experiments" + (
            " WHERE " + " AND ".join(where) if where else ""
        )
        return int(next(iter(self.db.execute(sql, params)))[0])

    def chart_outline(
        self, hardware: str | None, budget_seconds: float | None
    ) -> list[tuple[int, int, int, int, float | None]]:
        """Every finished experiment in id order as (id, ok, counts_for_best, improved,
        metric_value): ok = status ok with a value; counts_for_best = not disqualified, an
        experiment or baseline run of this hardware and budget. Read from one index alone,
        then kept current from the change log (server.store.change_log): after a result, the
        rows it changed are read, not all of them (0.16-0.25 s at 10^5 rows)."""
        return self.chart_outline_rows.rows(self.db, [hardware, budget_seconds])

    def chart_points(self, from_id: int, ids: Sequence[int]) -> list[dict[str, Any]]:
        """What the chart draws of the finished experiments from `from_id` on and of `ids`."""
        rows = list(
            self.db.query(
                f"SELECT {CHART_POINT_COLUMNS} FROM experiments WHERE {FINISHED} AND id >= ?",
                [from_id],
            )
        )
        earlier = sorted({int(i) for i in ids if i < from_id})
        for start in range(0, len(earlier), 500):
            chunk = earlier[start : start + 500]
            rows += self.db.query(
                f"SELECT {CHART_POINT_COLUMNS} FROM experiments "
                f"WHERE id IN ({', '.join('?' for _ in chunk)})",
                chunk,
            )
        return sorted(rows, key=lambda row: row["id"])
