"""The one rule for arXiv ids: what an agent may send as a paper id, and its canonical form.

run_experiment's `paper_ids`, get_paper and the paper cache all read ids through this module,
so an id one of them accepts, the others accept too. Accepted, with an optional `arXiv:` prefix
and an optional version suffix (`v1`, `v2`, ...):

* new-style ids, `YYMM.NNNN` or `YYMM.NNNNN` with a month 01-12 (`2401.01234`, `0704.0001`);
* old-style ids, `archive[.SUBJECT]/YYMMNNN` (`hep-th/9901001`, `cs/0112017`, `math.GT/0309136`).

The canonical id is the versionless one: `arXiv:2401.01234v2` -> `2401.01234`.
"""

from __future__ import annotations

import re

__all__ = ["parse_arxiv_id", "split_arxiv_id"]

_NEW_STYLE = re.compile(r"(?P<id>(?P<yymm>\d{4})\.\d{4,5})(?:v(?P<version>[1-9]\d*))?")
_OLD_STYLE = re.compile(
    r"(?P<id>[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{7})(?:v(?P<version>[1-9]\d*))?"
)
_SHOWN_CHARS = 60


def split_arxiv_id(text: str) -> tuple[str, int | None]:
    """Split an arXiv id into (canonical versionless id, version or None).

    Raises ValueError, whose message says what to send instead, when `text` is not an arXiv id.
    """
    if not isinstance(text, str):
        raise ValueError("arxiv_id must be a string such as '2401.01234'.")
    candidate = text.strip()
    if candidate[:6].lower() == "arxiv:":
        candidate = candidate[6:]
    match = _NEW_STYLE.fullmatch(candidate)
    if match and 1 <= int(match["yymm"][2:]) <= 12:
        return match["id"], int(match["version"]) if match["version"] else None
    match = _OLD_STYLE.fullmatch(candidate)
    if match:
        return match["id"], int(match["version"]) if match["version"] else None
    shown = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    raise ValueError(
        f"{shown!r} is not an arXiv id. Send a new-style id like '2401.01234' (optionally "
        "with a version, '2401.01234v2') or an old-style id like 'cs/0112017'; "
        "search_papers lists the ids of matching papers."
    )


def parse_arxiv_id(text: str) -> str:
    """The canonical (versionless) id of an arXiv id such as 'arXiv:2401.01234v2' -> '2401.01234'.

    Raises ValueError, whose message says what to send instead, when `text` is not an arXiv id.
    """
    return split_arxiv_id(text)[0]
