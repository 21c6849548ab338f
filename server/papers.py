"""arXiv search for the agents: validated queries, one rate-limited client, a SQLite cache.

The MCP tools `search_papers` and `get_paper` sit on `PaperSearch`. What it guarantees:

- Queries are checked before anything goes on the wire: an agent gets a message saying what
  to send instead, never an arXiv 400 page.
- Every request to arXiv goes through one lock per client and keeps at least
  `min_interval_s` between requests across all threads (arXiv's terms ask for one request
  every three seconds); `arxiv.Client.delay_seconds` enforces the same between retries.
- A stalled server cannot hold a caller longer than `timeout_s`: requests get a socket
  timeout, and the fetch runs in a worker thread that is abandoned at the deadline.
- Results are cached in SQLite (`papers`, `paper_queries`): a repeated query within the TTL
  makes no request, and when arXiv is unreachable or refusing, the last results for the
  same query are served (any age) with a note that says so.
- Titles, abstracts, author names and comments are untrusted: `render_untrusted` wraps them
  in delimiters a paper cannot close, and every result carries `UNTRUSTED_NOTICE`.

All calls block; the MCP layer runs them through `anyio.to_thread`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, get_args

import arxiv
import requests
import sqlite_utils

from server.arxiv_query import (
    MAX_QUERY_CHARS,
    MAX_RESULTS_LIMIT,
    SYNTAX_HELP,
    PaperSearchError,
    SearchField,
    SearchSort,
    build_arxiv_query,
    check_max_results,
    parse_arxiv_id,
)
from server.paper_views import (
    UNTRUSTED_NOTICE,
    Paper,
    PaperSearchResult,
    ResultSource,
    neutralise_delimiters,
    render_untrusted,
)
from server.store import PaperStore, write_transaction

logger = logging.getLogger(__name__)

DEFAULT_QUERY_URL_FORMAT = "https://export.arxiv.org/api/query?{}"

# --------------------------------------------------------------------------- storage


def ensure_paper_tables(db: sqlite_utils.Database) -> None:
    """Create the `papers` and `paper_queries` tables if they do not exist."""
    PaperStore(db).ensure_tables()


def _paper_from_row(row: Sequence[Any]) -> Paper:
    (arxiv_id, version, title, authors, summary, categories, primary, published, updated,
     abs_url, pdf_url, doi, comment, journal_ref) = row  # fmt: skip
    return Paper(
        arxiv_id=arxiv_id,
        version=version,
        title=title,
        authors=json.loads(authors),
        summary=summary,
        categories=json.loads(categories),
        primary_category=primary,
        published=published,
        updated=updated,
        abs_url=abs_url,
        pdf_url=pdf_url,
        doi=doi,
        comment=comment,
        journal_ref=journal_ref,
    )


def papers_for_ids(db: sqlite_utils.Database, ids: Iterable[str]) -> list[Paper]:
    """Cached papers for these ids, in the given order; unknown ids are skipped.

    Ids may carry a version (`2401.01234v2`); the cache keeps one row per versionless id.
    """
    wanted: list[str] = []
    for raw in ids:
        try:
            wanted.append(parse_arxiv_id(raw)[0])
        except PaperSearchError:
            continue
    if not wanted:
        return []
    rows = PaperStore(db).rows_for_ids(sorted(set(wanted)))
    by_id = {row[0]: _paper_from_row(row) for row in rows}
    return [by_id[arxiv_id] for arxiv_id in wanted if arxiv_id in by_id]


def _store_papers(db: sqlite_utils.Database, papers: Sequence[Paper], fetched_at: str) -> None:
    """Upsert papers; call inside write_transaction. An older version never replaces a newer."""
    PaperStore(db).upsert(
        [
            (
                paper.arxiv_id,
                paper.version,
                paper.title,
                json.dumps(paper.authors),
                paper.summary,
                json.dumps(paper.categories),
                paper.primary_category,
                paper.published,
                paper.updated,
                paper.abs_url,
                paper.pdf_url,
                paper.doi,
                paper.comment,
                paper.journal_ref,
            )
            for paper in papers
        ],
        fetched_at,
    )


# --------------------------------------------------------------------------- arXiv client


class _TimeoutSession(requests.Session):
    """A requests session whose every request carries a timeout (arxiv 4.0.2 passes none)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        """Issue the request with `timeout=(connect, read)` unless the caller set one."""
        kwargs.setdefault("timeout", (min(self.timeout_s, 10.0), self.timeout_s))
        return super().request(method, url, *args, **kwargs)


class _ClientGate:
    """One arXiv client, the lock that serialises its use and the time of its last request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_request: float | None = None  # time.monotonic()


_gates: weakref.WeakKeyDictionary[Any, _ClientGate] = weakref.WeakKeyDictionary()
_shared_clients: dict[str, Any] = {}
_registry_lock = threading.Lock()


def _gate_for(client: Any) -> _ClientGate:
    with _registry_lock:
        gate = _gates.get(client)
        if gate is None:
            gate = _gates[client] = _ClientGate()
        return gate


def shared_arxiv_client(
    query_url_format: str = DEFAULT_QUERY_URL_FORMAT, *, min_interval_s: float = 3.0
) -> Any:
    """The process-wide arxiv.Client for an endpoint: every PaperSearch on it shares one gate."""
    with _registry_lock:
        client = _shared_clients.get(query_url_format)
        if client is None:
            client = arxiv.Client(page_size=5, delay_seconds=min_interval_s, num_retries=1)
            client.query_url_format = query_url_format
            _shared_clients[query_url_format] = client
        return client


class _Transient(Exception):
    """arXiv could not answer now (network, timeout, 5xx, busy); the cache may stand in."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # short, for the offline note
        self.message = message  # full, for the error when nothing is cached


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _human_time(iso: str) -> str:
    try:
        moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    collapsed = " ".join(text.split())
    return collapsed or None


def paper_from_result(result: Any) -> Paper | None:
    """Convert an `arxiv.Result`; None for an entry whose id is not an arXiv paper id."""
    short_id = result.entry_id.rstrip("/").split("/abs/")[-1]
    try:
        arxiv_id, version = parse_arxiv_id(short_id)
    except PaperSearchError:
        logger.warning("Skipping arXiv entry with an unexpected id: %r", result.entry_id[:200])
        return None
    abs_url = next((link.href for link in result.links if link.rel == "alternate"), result.entry_id)
    return Paper(
        arxiv_id=arxiv_id,
        version=version,
        title=_clean(result.title) or "",
        authors=[name for name in (_clean(a.name) for a in result.authors) if name],
        summary=_clean(result.summary) or "",
        categories=list(result.categories),
        primary_category=result.primary_category or "",
        published=_iso(result.published),
        updated=_iso(result.updated),
        abs_url=abs_url,
        pdf_url=result.pdf_url,
        doi=_clean(result.doi),
        comment=_clean(result.comment),
        journal_ref=_clean(result.journal_ref),
    )


# --------------------------------------------------------------------------- search


class PaperSearch:
    """arXiv search and lookup with a shared rate limit, a hard timeout and a SQLite cache."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        *,
        client: arxiv.Client | None = None,
        query_url_format: str | None = None,
        min_interval_s: float = 3.0,
        timeout_s: float = 15.0,
        cache_ttl_s: float = 24 * 3600,
    ) -> None:
        """Use `client` (an `arxiv.Client`) or the shared client for `query_url_format`.

        `min_interval_s` is the least time between two requests on the client, across all
        threads; `timeout_s` bounds each fetch; `cache_ttl_s` is how long an identical query
        is answered from the cache without asking arXiv.
        """
        if min_interval_s < 0 or timeout_s <= 0 or cache_ttl_s < 0:
            raise ValueError("min_interval_s and cache_ttl_s must be >= 0, timeout_s > 0")
        self.db = db
        if client is None:
            client = shared_arxiv_client(
                query_url_format or DEFAULT_QUERY_URL_FORMAT, min_interval_s=min_interval_s
            )
        elif query_url_format is not None:
            client.query_url_format = query_url_format
        self.client = client
        self._gate = _gate_for(client)
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.cache_ttl_s = cache_ttl_s
        self.requests_made = 0  # requests this instance sent (including abandoned ones)
        ensure_paper_tables(db)

    # ------------------------------------------------------------------ public API

    def search(
        self,
        query: str,
        *,
        field: SearchField = "all",
        sort: SearchSort = "relevance",
        max_results: int = 5,
    ) -> PaperSearchResult:
        """Search arXiv (or the cache) for papers; raise PaperSearchError with what to fix.

        Blocking: it may sleep for the rate limit and wait up to `timeout_s` for arXiv.
        """
        arxiv_query = build_arxiv_query(query, field)
        if sort not in get_args(SearchSort):
            raise PaperSearchError(
                f"Unknown sort {sort!r}: send 'relevance' (best match first) or 'date' "
                "(newest submissions first)."
            )
        max_results = check_max_results(max_results)
        query_key = f"{arxiv_query}|sort={sort}|n={max_results}"
        common: dict[str, Any] = {
            "query": query,
            "arxiv_query": arxiv_query,
            "field": field,
            "sort": sort,
            "max_results": max_results,
        }

        cached = self._cached_query(query_key)
        if cached is not None:
            fetched_at, papers = cached
            age = (_utc_now() - _parse_iso(fetched_at)).total_seconds()
            if 0 <= age <= self.cache_ttl_s:
                return PaperSearchResult(
                    **common,
                    papers=papers,
                    source="cache",
                    fetched_at=fetched_at,
                    note=f"cached results from {_human_time(fetched_at)} "
                    "(an identical query ran recently; arXiv was not asked again)",
                )

        search = arxiv.Search(
            query=arxiv_query,
            max_results=max_results,
            sort_by=arxiv.SortCriterion.Relevance
            if sort == "relevance"
            else arxiv.SortCriterion.SubmittedDate,
            sort_order=arxiv.SortOrder.Descending,
        )
        try:
            results = self._fetch(search, page_size=max_results)
        except _Transient as failure:
            if cached is None:
                raise PaperSearchError(
                    f"{failure.message} Nothing is cached for this query; search_papers "
                    "works offline only for queries run before."
                ) from None
            fetched_at, papers = cached
            return PaperSearchResult(
                **common,
                papers=papers,
                source="offline-cache",
                fetched_at=fetched_at,
                note=f"offline: cached results from {_human_time(fetched_at)} "
                f"(arXiv unreachable: {failure.reason})",
            )

        papers = [p for p in (paper_from_result(r) for r in results) if p is not None]
        fetched_at = _iso(_utc_now())
        if not papers:
            # Not cached: an empty answer may be a proxy's error page parsed as an empty feed,
            # and it must not hide real results for a whole TTL.
            return PaperSearchResult(
                **common, papers=[], source="arxiv", fetched_at=fetched_at, note=None
            )
        with write_transaction(self.db):
            _store_papers(self.db, papers, fetched_at)
            PaperStore(self.db).save_query(
                query_key,
                query=query,
                arxiv_query=arxiv_query,
                field=field,
                sort=sort,
                max_results=max_results,
                ids_json=json.dumps([p.arxiv_id for p in papers]),
                fetched_at=fetched_at,
            )
        return PaperSearchResult(
            **common, papers=papers, source="arxiv", fetched_at=fetched_at, note=None
        )

    def get_paper(self, arxiv_id: str) -> Paper:
        """One paper by id: from the cache if known, else an arXiv id_list lookup.

        A version-qualified id (`2401.01234v1`) is served from the cache only when the
        cached metadata is that version.
        """
        base_id, version = parse_arxiv_id(arxiv_id)
        cached = papers_for_ids(self.db, [base_id])
        if cached and (version is None or cached[0].version == version):
            return cached[0]
        wanted = base_id + (f"v{version}" if version else "")
        try:
            results = self._fetch(arxiv.Search(id_list=[wanted], max_results=1), page_size=1)
        except _Transient as failure:
            if cached:
                raise PaperSearchError(
                    f"{failure.message} The cache holds {base_id}v{cached[0].version}, not "
                    f"{wanted}: send '{base_id}' without a version to get the cached one."
                ) from None
            raise PaperSearchError(
                f"{failure.message} Paper {wanted} is not cached; get_paper works offline "
                "only for papers seen before."
            ) from None
        papers = [p for p in (paper_from_result(r) for r in results) if p is not None]
        match = next((p for p in papers if p.arxiv_id == base_id), None)
        if match is None:
            raise PaperSearchError(
                f"arXiv has no paper {wanted}. Check the id (search_papers lists ids of "
                "matching papers)."
            )
        with write_transaction(self.db):
            _store_papers(self.db, [match], _iso(_utc_now()))
        return match

    # ------------------------------------------------------------------ internals

    def _cached_query(self, query_key: str) -> tuple[str, list[Paper]] | None:
        row = PaperStore(self.db).cached_query(query_key)
        if row is None:
            return None
        ids = json.loads(row[0])
        papers = papers_for_ids(self.db, ids)
        if len(papers) != len(ids):  # a paper row went missing: not a usable cache entry
            return None
        return row[1], papers

    def _fetch(self, search: Any, *, page_size: int) -> list[Any]:
        """Run one arXiv request under the client's gate; raise _Transient or PaperSearchError.

        Holds the gate's lock for the whole request, so requests on a client never overlap
        and start at least `min_interval_s` after the previous one finished.
        """
        gate = self._gate
        if not gate.lock.acquire(timeout=self.timeout_s + 2 * self.min_interval_s):
            raise _Transient(
                "busy with other agents' searches",
                "arXiv search is busy with other agents' requests; try again in a minute.",
            )
        try:
            if gate.last_request is not None:
                wait = gate.last_request + self.min_interval_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            client = self.client
            client.page_size = page_size
            session = client._session
            if not isinstance(session, _TimeoutSession):
                session = client._session = _TimeoutSession(self.timeout_s)
            session.timeout_s = self.timeout_s

            outcome: dict[str, Any] = {}

            def fetch() -> None:
                try:
                    outcome["results"] = list(client.results(search))
                except BaseException as exc:  # handed to the caller below
                    outcome["error"] = exc

            worker = threading.Thread(target=fetch, name="arxiv-fetch", daemon=True)
            self.requests_made += 1
            worker.start()
            worker.join(self.timeout_s)
            gate.last_request = time.monotonic()
            if worker.is_alive():
                # Abandon it: it dies on its own socket timeout. A fresh session keeps the
                # next request off the stalled connection.
                client._session = _TimeoutSession(self.timeout_s)
                raise _Transient(
                    f"no answer within {self.timeout_s:g} s",
                    f"arXiv did not answer within {self.timeout_s:g} s.",
                )
        finally:
            gate.lock.release()

        if "results" in outcome:
            results: list[Any] = outcome["results"]
            _raise_for_error_entries(results)
            return results
        raise _classify(outcome["error"], self.timeout_s)


def _parse_iso(iso: str) -> datetime:
    try:
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


def _raise_for_error_entries(results: Sequence[Any]) -> None:
    """arXiv reports a bad query as a feed whose only entry is an error (`/api/errors#...`)."""
    for result in results:
        if "/api/errors" in result.entry_id:
            detail = _clean(result.summary) or "malformed query"
            raise PaperSearchError(
                f"arXiv rejected the query: {detail[:200]}. Send plain words, or {SYNTAX_HELP}."
            )


def _classify(error: BaseException, timeout_s: float) -> Exception:
    """Map an exception from the arxiv client to _Transient (cache may help) or PaperSearchError."""
    if isinstance(error, arxiv.HTTPError):
        status = error.status
        if status == 503:
            return _Transient(
                "HTTP 503, rate-limiting or down",
                "arXiv is rate-limiting or down (HTTP 503); try again in a minute.",
            )
        if status == 429:
            return _Transient(
                "HTTP 429, rate-limiting",
                "arXiv is rate-limiting (HTTP 429); try again in a minute.",
            )
        if status >= 500:
            return _Transient(
                f"HTTP {status}", f"arXiv had a server error (HTTP {status}); try again later."
            )
        if status == 400:
            return PaperSearchError(
                f"arXiv rejected the query (HTTP 400). Send plain words, or {SYNTAX_HELP}."
            )
        return PaperSearchError(f"arXiv answered HTTP {status}; try again later.")
    if isinstance(error, arxiv.UnexpectedEmptyPageError):
        return _Transient(
            "empty page", "arXiv returned an unexpectedly empty page; try again in a minute."
        )
    if isinstance(error, requests.exceptions.Timeout):
        return _Transient(
            f"no answer within {timeout_s:g} s", f"arXiv did not answer within {timeout_s:g} s."
        )
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = _connection_reason(error)
        return _Transient(reason, f"arXiv is unreachable ({reason}).")
    if isinstance(error, requests.exceptions.RequestException):
        reason = type(error).__name__
        return _Transient(reason, f"arXiv is unreachable ({reason}).")
    logger.exception("unexpected error from the arxiv client", exc_info=error)
    return PaperSearchError(
        f"arXiv search failed unexpectedly ({type(error).__name__}); try again, and report it "
        "if it persists."
    )


def _connection_reason(error: requests.exceptions.ConnectionError) -> str:
    text = str(error)
    for needle, reason in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "DNS lookup failed"),
        ("Temporary failure in name resolution", "DNS lookup failed"),
        ("NameResolutionError", "DNS lookup failed"),
        ("Network is unreachable", "network unreachable"),
        ("timed out", "connection timed out"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed by the server"),
    ):
        if needle in text:
            return reason
    return "connection error"


__all__ = [
    "DEFAULT_QUERY_URL_FORMAT",
    "MAX_QUERY_CHARS",
    "MAX_RESULTS_LIMIT",
    "UNTRUSTED_NOTICE",
    "Paper",
    "PaperSearch",
    "PaperSearchError",
    "PaperSearchResult",
    "ResultSource",
    "SearchField",
    "SearchSort",
    "build_arxiv_query",
    "ensure_paper_tables",
    "neutralise_delimiters",
    "papers_for_ids",
    "parse_arxiv_id",
    "render_untrusted",
]
