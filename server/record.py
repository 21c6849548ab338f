"""The record's vocabulary: every experiment status, kind and verdict, named once.

Each list the code and the API use (the live and final statuses, the kinds the JSON API
filters by, the verdicts) derives from these Literals, and `ExperimentRow` is the shape of
one decoded row of the `experiments` table as it travels through the lab.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, TypedDict, get_args

Status = Literal[
    "queued", "running", "ok", "crash", "timeout", "integrity_fail", "cancelled", "interrupted"
]
# experiment: an agent's idea; baseline: the shipped code, measured by the server;
# confirmation: a re-run with a fresh seed; promotion: a re-run at a larger level;
# drift_check: the server re-running the best to catch a drifting machine;
# ablation: a run of an experiment with one of its parts left out (server.ablation), judged
# only within its ablation: never ranked, never noise, no verdict.
# The JSON API and the dashboard filter the history by the first three (ListedKind).
ListedKind = Literal["experiment", "baseline", "confirmation"]
Kind = Literal[ListedKind, "promotion", "drift_check", "ablation"]
# candidate: one run beat the reference by the screen; the server is confirming it on fresh seeds.
Verdict = Literal["improved", "candidate", "within_noise", "worse", "failed", "baseline"]

STATUSES: tuple[Status, ...] = get_args(Status)
KINDS: tuple[Kind, ...] = get_args(Kind)  # flattened: the listed kinds, then the others
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)

IMPROVED: Verdict = "improved"
CANDIDATE: Verdict = "candidate"
WITHIN_NOISE: Verdict = "within_noise"
WORSE: Verdict = "worse"
FAILED: Verdict = "failed"
BASELINE: Verdict = "baseline"

QUEUED: Status = "queued"
RUNNING: Status = "running"
OK: Status = "ok"
CRASH: Status = "crash"
TIMEOUT: Status = "timeout"
INTEGRITY_FAIL: Status = "integrity_fail"
CANCELLED: Status = "cancelled"
INTERRUPTED: Status = "interrupted"
LIVE_STATUSES: tuple[Status, ...] = (QUEUED, RUNNING)
FINAL_STATUSES: tuple[Status, ...] = tuple(s for s in STATUSES if s not in LIVE_STATUSES)
# A failed run: every final status but `ok`.
FAILED_STATUSES: tuple[Status, ...] = tuple(s for s in FINAL_STATUSES if s != OK)

LISTED_KINDS: tuple[ListedKind, ...] = get_args(ListedKind)
# The kinds ranked on the leaderboard and the kinds whose best the chart's running line follows.
RANKED_KINDS: tuple[Kind, ...] = ("experiment", "promotion")
CHARTED_BEST_KINDS: tuple[Kind, ...] = ("experiment", "baseline")


class ExperimentRow(TypedDict, total=False):
    """One decoded row of `experiments` (JSON columns as Python values); see EXPERIMENT_COLUMNS."""

    id: int
    agent: str
    requested_by: str | None
    kind: Kind
    parent_id: int | None
    confirms_id: int | None
    status: Status
    verdict: Verdict | None
    description: str
    code_hash: str
    code: dict[str, str]
    diff_parent: str
    diff_baseline: str
    metric_value: float | None
    delta_parent: float | None
    delta_best: float | None
    metrics: dict[str, Any]
    train_seconds: float | None
    eval_seconds: float | None
    total_seconds: float | None
    overhead_seconds: float | None
    cpu_seconds: float | None
    cpu_share: float | None
    peak_memory_mb: float | None
    budget_seconds: float
    budget_kind: str
    device: str
    hardware: str
    torch_version: str
    seed: int
    isolation: str
    flags: list[dict[str, Any]]
    disqualified: int
    failure_reason: str | None
    log_tail: str | None
    hashes: dict[str, str]
    paper_ids: list[str]
    attempt: int
    retry_of: int | None
    scale: str | None
    change_fingerprint: str | None  # the normalised change (server/similarity.py), for dedupe
    change_edits: dict[str, Any] | None  # its effective edits (constants changed, statements)
    force_reason: str | None  # why the agent ran a duplicate anyway (run_experiment force_reason)
    code_authors: list[str] | None  # every agent who wrote part of its code (see code_authors)
    created_at: str
    started_at: str | None
    finished_at: str | None


# How the server's own runs of an experiment are described (agents cannot set a confirmation's
# description): the runs a verdict and a reference rest on. An agent's confirm_experiment runs
# add to the leaderboard's mean of an unconfirmed idea, never to a verdict or a reference.
SERVER_CONFIRMATION = "server confirmation of candidate"
SERVER_HOLDOUT_RUN = "server holdout run of"


def is_server_run(row: Mapping[str, Any]) -> bool:
    """A confirmation run the server queued itself (of a candidate, or a holdout run)."""
    description = str(row.get("description") or "")
    return description.startswith((SERVER_CONFIRMATION, SERVER_HOLDOUT_RUN))


SERVER_AGENT = (
    "server"  # the name the server's own runs (baselines, drift checks) are recorded under
)
# The author named for code-derived text of a server run recorded before code authors were: a
# drift check of such a file re-ran some agent's code, and which one was not kept.
UNRECORDED_AUTHOR = "unrecorded"
RESERVED_AGENT_NAMES = (
    SERVER_AGENT,
    UNRECORDED_AUTHOR,
)  # no token, tool call or claim may use them


def code_authors(row: Mapping[str, Any]) -> list[str]:
    """Every agent who wrote part of a run's code, so whatever the code produced (its diffs, its
    log tail, a failure that quotes it, the file itself) reaches anyone else as their text.

    Recorded when the run is queued (Lab.plan_run): the authors of the code it started from
    (its parent, or the experiments combined) and, for an agent's own experiment, that agent;
    none for the shipped baseline. The row's `agent` alone is not enough: the server's drift
    check re-runs the best agent's code, an ablation is credited to whoever asked for it, and an
    agent's experiment may start from another's code (checkout, combine). A row recorded before
    this column falls back to its agent, none for a baseline, `unrecorded` for a server run."""
    authors = row.get("code_authors")
    if isinstance(authors, str):  # as stored, where a read did not decode the row
        try:
            authors = json.loads(authors)
        except json.JSONDecodeError:
            authors = None
    if isinstance(authors, list):
        return [str(a) for a in authors]
    if row.get("kind") == "baseline":
        return []
    agent = row.get("agent")
    return [str(agent)] if agent and agent != SERVER_AGENT else [UNRECORDED_AUTHOR]
