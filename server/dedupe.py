"""No duplicate spending: the submit path's lookups for an earlier run of the same change.

`change_fields` describes a planned run's code (server.similarity) before the submit lock;
`find_earlier` looks, under the lock, for an earlier run with the same run settings of the
same bytes (code hash) or of the same normalised code (fingerprint), both index hits; and
`record_request` keeps the agent's request on record when that earlier run answers it.
`near_notes` and `claim_notes` only inform: a near duplicate is never blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.record import code_authors
from server.similarity import (
    EXACT_REASON,
    FIXED_REASONS,
    NORMALISED_REASON,
    Change,
    change_from_record,
    change_to_record,
    classify,
    describe_change,
    words_overlap,
)
from server.store import Store
from server.untrusted import agent_text

# How many recent experiments a near-duplicate note looks at (a bounded scan, newest first).
NEAR_SCAN = 300
MAX_NOTES = 3
# Word overlap of a description with another agent's open claim at or above which it is noted.
CLAIM_OVERLAP = 0.5


def change_fields(files: dict[str, str], baseline: dict[str, str]) -> dict[str, Any]:
    """The columns server.similarity adds to a planned run: fingerprint and effective edits."""
    change = describe_change(files, baseline)
    return {
        "change_fingerprint": change.fingerprint,
        "change_edits": change_to_record(change),
    }


def shown_reason(reason: str, authors: Sequence[str]) -> str:
    """A match's reason as the reader gets it: plain when it quotes nothing of the code, else
    the code's authors' text (it names their constants, values or places)."""
    return reason if reason in FIXED_REASONS else agent_text(reason, authors) or ""


def planned_change(run: dict[str, Any]) -> Change | None:
    return change_from_record(run.get("change_fingerprint"), run.get("change_edits"))


def _settings(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run[k] for k in ("hardware", "budget_seconds", "budget_kind", "scale")}


def find_earlier(store: Store, run: dict[str, Any]) -> tuple[dict[str, Any], str, str] | None:
    """An earlier ok/queued/running experiment with the same settings that this run duplicates:
    (its row, 'exact' or 'normalised', the reason), or None."""
    earlier = store.find_by_code(run["code_hash"], _settings(run))
    if earlier is not None:
        return earlier, "exact", EXACT_REASON
    fingerprint = run.get("change_fingerprint")
    if not fingerprint:
        return None
    earlier = store.similar.find_by_fingerprint(fingerprint, _settings(run))
    if earlier is None:
        return None
    mine, theirs = planned_change(run), planned_change(earlier)
    if mine is not None and theirs is not None:
        reason = classify(mine, theirs).reason
    else:
        reason = NORMALISED_REASON
    return earlier, "normalised", reason


def record_request(
    store: Store, run: dict[str, Any], earlier_id: int, match: str, reason: str
) -> int:
    """Keep the request that `earlier_id` answered on record (server.store.requests)."""
    return store.requests.add(
        agent=run["agent"],
        description=run["description"],
        code_hash=run["code_hash"],
        change_fingerprint=run.get("change_fingerprint"),
        earlier_id=earlier_id,
        match=match,
        reason=reason,
    )


def near_notes(store: Store, run: dict[str, Any], exclude_id: int | None = None) -> list[str]:
    """Notes on recent experiments that this run's change resembles (never a refusal)."""
    mine = planned_change(run)
    if mine is None or not mine.edits:
        return []
    notes: list[str] = []
    for row in store.similar.recent_changes(NEAR_SCAN):
        if row["id"] == exclude_id:
            continue
        theirs = change_from_record(row.get("change_fingerprint"), row.get("change_edits"))
        if theirs is None:
            continue
        match = classify(mine, theirs)
        if match.kind == "near":
            # The reason quotes values of both changes: code their authors wrote.
            authors = {*code_authors(row), *(run.get("code_authors") or [])}
            notes.append(
                f"near #{row['id']} by {row['agent']}: {shown_reason(match.reason, sorted(authors))}; "
                f"get_experiment({row['id']}) shows what happened"
            )
            if len(notes) >= MAX_NOTES:
                break
    return notes


def claim_notes(store: Store, agent: str, description: str) -> list[str]:
    """Notes on other agents' open claims whose text resembles this run's description."""
    notes = []
    for claim in store.open_claims():
        if claim["agent"] != agent and words_overlap(description, claim["text"]) >= CLAIM_OVERLAP:
            notes.append(
                f"{claim['agent']} has claimed a similar idea (claim {claim['id']}, "
                f"until {claim['expires_at']}): {agent_text(claim['text'][:120], claim['agent'])}"
            )
            if len(notes) >= MAX_NOTES:
                break
    return notes
