"""What an agent may ask arXiv: its queries checked and turned into arXiv API syntax, arXiv
ids parsed, result counts bounded. Every refusal is a PaperSearchError that says what to send
instead; nothing here goes on the wire (server.papers does)."""

from __future__ import annotations

import re
from typing import Any, Literal

from server.arxiv_ids import split_arxiv_id

SearchField = Literal["all", "title", "abstract", "author", "category"]
SearchSort = Literal["relevance", "date"]

MAX_QUERY_CHARS = 300
MAX_RESULTS_LIMIT = 25

_FIELD_PREFIX: dict[str, str] = {
    "all": "all",
    "title": "ti",
    "abstract": "abs",
    "author": "au",
    "category": "cat",
}
# Prefixes the arXiv API understands (user manual, "Details of Query Construction").
_ARXIV_PREFIXES = frozenset({"ti", "au", "abs", "co", "jr", "cat", "rn", "id", "all"})
_OPERATORS = frozenset({"AND", "OR", "ANDNOT"})
SYNTAX_HELP = (
    'arXiv syntax: words, "quoted phrases", prefixes ti: au: abs: cat: all:, the operators '
    "AND OR ANDNOT and parentheses, e.g. 'ti:muon AND cat:cs.LG'"
)

_CATEGORY = re.compile(r"^[a-z]+(?:-[a-z]+)*(?:\.[A-Za-z]+(?:-[A-Za-z]+)*)?$")
_TOKEN = re.compile(r'\(|\)|[^\s()"]*"[^"]*"|[^\s()"]+')


class PaperSearchError(Exception):
    """A search or lookup that failed; the message tells the agent what to do next."""


# --------------------------------------------------------------------------- validation


def parse_arxiv_id(text: str) -> tuple[str, int | None]:
    """(versionless id, version or None) by the one rule of server/arxiv_ids.py; PaperSearchError if malformed."""
    try:
        return split_arxiv_id(text)
    except ValueError as refusal:
        raise PaperSearchError(str(refusal)) from None


def build_arxiv_query(query: str, field: str = "all") -> str:
    """Turn an agent's query into arXiv API syntax, or raise PaperSearchError saying what to fix.

    Bare words and "quoted phrases" get the field's prefix (`title` -> `ti:`); terms that
    already carry a prefix (`cat:cs.LG`) keep it; adjacent terms are joined with AND.
    """
    if field not in _FIELD_PREFIX:
        raise PaperSearchError(
            f"Unknown field {field!r}: send one of {', '.join(_FIELD_PREFIX)} "
            "(or field='all' with arXiv syntax such as 'ti:muon AND cat:cs.LG')."
        )
    if not isinstance(query, str) or not query.strip():
        raise PaperSearchError(
            "The query is empty: send some words, e.g. 'muon optimizer', or arXiv syntax "
            "such as 'ti:muon AND cat:cs.LG'."
        )
    if len(query) > MAX_QUERY_CHARS:
        raise PaperSearchError(
            f"The query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}. "
            "Send the few most distinctive words."
        )
    text = " ".join(
        "".join(" " if ch.isspace() or not ch.isprintable() else ch for ch in query).split()
    )
    if text.count('"') % 2:
        raise PaperSearchError(
            f'The query has an unbalanced double quote ("): close the phrase. {SYNTAX_HELP}.'
        )
    depth = 0
    for ch in re.sub(r'"[^"]*"', "", text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0:
        raise PaperSearchError(
            f"The query has unbalanced parentheses: every '(' needs a ')'. {SYNTAX_HELP}."
        )

    prefix = _FIELD_PREFIX[field]
    out: list[str] = []
    for token in _TOKEN.findall(text):
        if token in ("(", ")"):
            kind = token
        elif token in _OPERATORS:
            kind = "op"
        elif token == "NOT":
            raise PaperSearchError(
                "arXiv has no NOT operator: use ANDNOT, e.g. 'ti:transformer ANDNOT ti:vision'."
            )
        else:
            kind = "term"
            token = _fielded_term(token, prefix, field)
            if not token:
                continue
        previous = out[-1] if out else None
        prev_kind = (
            None
            if previous is None
            else previous
            if previous in ("(", ")")
            else "op"
            if previous in _OPERATORS
            else "term"
        )
        if kind == "op" and prev_kind in (None, "(", "op"):
            raise PaperSearchError(
                f"{token} must sit between two terms, e.g. 'ti:muon {token} ti:adam'. "
                f"{SYNTAX_HELP}."
            )
        if kind == ")" and prev_kind in ("(", "op"):
            raise PaperSearchError(
                f"Empty parentheses or an operator before ')': put a term there. {SYNTAX_HELP}."
            )
        if kind in ("term", "(") and prev_kind in ("term", ")"):
            out.append("AND")
        out.append(token)
    if not out or all(tok in ("(", ")") for tok in out):
        raise PaperSearchError(
            "The query has no search terms: send some words, e.g. 'muon optimizer'."
        )
    if out[-1] in _OPERATORS:
        raise PaperSearchError(
            f"The query ends with {out[-1]}: add the term it should combine. {SYNTAX_HELP}."
        )
    return " ".join(out)


def _fielded_term(token: str, prefix: str, field: str) -> str:
    """Give a bare word or phrase the field's prefix; keep (and check) an explicit prefix."""
    match = re.match(r"^([A-Za-z_]+):(.*)$", token)
    if match and match[2]:
        given = match[1].lower()
        if given not in _ARXIV_PREFIXES:
            raise PaperSearchError(
                f"Unknown arXiv field prefix {match[1] + ':'!r}. arXiv knows ti: au: abs: "
                "cat: co: jr: rn: id: all:; or drop the colon to search the word."
            )
        if given == "cat":
            _check_category(match[2].strip('"'))
        return f"{given}:{match[2]}"
    token = token.rstrip(":")
    if not token or token == '""':
        return ""
    if field == "category":
        _check_category(token.strip('"'))
    return f"{prefix}:{token}"


def _check_category(category: str) -> None:
    if not _CATEGORY.match(category):
        raise PaperSearchError(
            f"{category!r} is not an arXiv category: send one like 'cs.LG', 'stat.ML' or "
            "'hep-th' (https://arxiv.org/category_taxonomy)."
        )


def check_max_results(max_results: Any) -> int:
    if isinstance(max_results, bool) or not isinstance(max_results, int):
        raise PaperSearchError(
            f"max_results must be a whole number from 1 to {MAX_RESULTS_LIMIT}; "
            f"got {max_results!r}."
        )
    if not 1 <= max_results <= MAX_RESULTS_LIMIT:
        raise PaperSearchError(
            f"max_results must be from 1 to {MAX_RESULTS_LIMIT}; got {max_results}. "
            "Ask for fewer papers and refine the query instead."
        )
    return max_results
