"""How the record reads: the views of experiments, files, history and papers, and the next-step texts.

One home for what an agent (the MCP tools in server/app.py) and a viewer (the dashboard in
server/dashboard/) are shown of the Lab's state: each function turns rows and Lab answers into a
response model of server/models.py and decides nothing. Every text here reaches a model or a
person as written: the protocol tests pin them.
"""

from collections.abc import Mapping
from typing import Any

from sandbox.target import ResearchTarget
from server import authorship
from server.dedupe import shown_reason
from server.lab import Lab, LabError
from server.models import (
    LISTED_CLAIMS,
    LISTED_CLAIMS_PER_AGENT,
    LISTED_QUEUE,
    AgentBest,
    CancelResult,
    CheckoutResult,
    Claim,
    ClaimResult,
    EditResult,
    ExperimentDetail,
    ExperimentResult,
    FileContent,
    FileInfo,
    FileList,
    History,
    HistoryRow,
    Leaderboard,
    LeaderboardEntry,
    NoiseInfo,
    PaperRef,
    PaperSearchView,
    PaperView,
    RunRequest,
)
from server.papers import UNTRUSTED_NOTICE, Paper, PaperSearchResult, render_untrusted
from server.record import code_authors
from server.store.similar import all_words_query
from server.untrusted import agent_text
from server.verdicts import published

READ_DEFAULT_LINES = 400
READ_MAX_LINES = 2000
READ_MAX_CHARS = 40_000
LOG_TAIL_FOR_AGENT = 50
LINEAGE_FOR_AGENT = 30
DEFAULT_STOPPING = (
    "Stop when the operator's limit is reached (your experiment quota says so), or after 10 "
    "experiments in a row without an `improved` verdict: then summarise what you learned with "
    "get_history and the ids of your best confirmed experiments."
)
HISTORY_COLUMNS = [
    "id",
    "agent",
    "kind",
    "status",
    "metric_value",
    "delta_parent",
    "verdict",
    "description",
    "parent_id",
    "flags",
    "paper_ids",
    "finished_at",
]
CANCEL_NOTES = {
    "cancelled": "removed from the queue",
    "cancelling": "stopping the run; it will be recorded as cancelled",
    "not_live": "it had already finished",
}


def default_goal(target: ResearchTarget) -> str:
    """The goal when the operator gives none: the target's metric, in its direction."""
    return (
        f"{target.better_word} {target.metric} as far as the budget allows, with changes that "
        "survive confirmation"
    )


def program_text(lab: Lab, goal: str | None = None, stopping_policy: str | None = None) -> str:
    """The target's program.md with the server's budget, device, noise threshold and goal filled in."""
    noise = lab.noise_info()
    target = lab.target
    program = target.program_file or target.target_dir / "program.md"
    return program.read_text().format(
        goal=goal or default_goal(target),
        budget=f"{lab.budget_seconds:g} s",
        budget_kind=lab.settings.budget_kind,
        device=lab.device,
        threshold=f"{noise['threshold']:.4f} {target.metric} ({'measured' if noise['measured'] else 'assumed until the baseline is measured'})",
        wait=f"{lab.settings.call_wait_seconds:g}",
        stopping_policy=stopping_policy or DEFAULT_STOPPING,
    )


# ---------------------------------------------------------------- experiments


def next_step_for(row: Mapping[str, Any], call_wait: float) -> str:
    """What the agent should do next, given one experiment's status and verdict."""
    status, experiment_id = row["status"], row["id"]
    if status in ("queued", "running"):
        return f"still {status}: call wait_experiment({experiment_id}) (each call waits up to {call_wait:g} s)"
    verdict = row.get("verdict")
    if status in ("cancelled", "interrupted"):
        # Not the code's fault (and perhaps not the reader's run: a duplicate request is answered
        # by the earlier run, which its owner may cancel): running it again queues a new run.
        return (
            f"{status}, not a result: run_experiment again to queue this code anew "
            f"(get_experiment({experiment_id}) says who asked for #{experiment_id})"
        )
    if status != "ok":
        return "read failure_reason and log_tail, fix train.py (your workspace still holds this code), then run_experiment again"
    if row.get("kind") == "confirmation":
        return f"confirmation run: get_experiment({row.get('confirms_id')}) shows the mean and sd over all seeds"
    if verdict == "candidate":
        return (
            f"a candidate: the server is re-running it on fresh seeds; call wait_experiment({experiment_id}) "
            "for the verdict (improved only if their mean holds up). Meanwhile you may try another idea"
        )
    if verdict == "improved":
        return "improved, confirmed on fresh seeds: it is the reference now; keep building on it (your workspace holds this code)"
    if verdict == "within_noise":
        return f"not distinguishable from the best: confirm_experiment({experiment_id}, repeats=2) to find out, or checkout(ref='best') and try another idea"
    if verdict == "worse":
        return "worse than the best: checkout(ref='best') (or checkout your parent) before the next idea"
    return "see get_history(order='best') for where this stands"


def last_lines(text: str, count: int = LOG_TAIL_FOR_AGENT) -> str:
    """The last `count` lines of a log tail: what an agent reads of a run's output."""
    return "\n".join(text.splitlines()[-count:])


def reuse_step(row: Mapping[str, Any], reason: str | None) -> str:
    """What is true when an earlier experiment answers a run request: it is queued or running
    (wait for it) or it finished (its result is shown); and how to run it anyway."""
    # The reason quotes the code's values (the same code in both): its authors' text.
    same = (
        f"the same code ({shown_reason(reason, code_authors(row))})" if reason else "the same code"
    )
    who = f"#{row['id']} by {row['agent']}"
    force = "or run_experiment(..., force_reason='why this run differs') to run it anyway"
    if row["status"] in ("queued", "running"):
        return (
            f"nothing new was queued: {same} is already {row['status']} as {who} with the same "
            f"settings: wait_experiment({row['id']}) for its result; your request is on record; "
            f"{force}"
        )
    return (
        f"nothing new was queued: {same} already ran as {who} with the same settings: its "
        f"result is shown; change the code, confirm_experiment({row['id']}) for more seeds, "
        f"{force}"
    )


def flags_for_reader(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The review flags of a run; the code lines they quote are its author's text (untrusted
    blocks for any other reader)."""
    return [
        {
            **flag,
            "lines": [agent_text(str(line), code_authors(row)) for line in flag.get("lines") or []],
        }
        if isinstance(flag, dict)
        else flag
        for flag in row.get("flags") or []
    ]


def experiment_result(
    lab: Lab,
    row: Mapping[str, Any],
    *,
    reused_from: int | None = None,
    reuse_reason: str | None = None,
    request_id: int | None = None,
    notes: list[str] | None = None,
) -> ExperimentResult:
    """One experiment as run_experiment, wait_experiment and the dashboard show it: figures,
    verdict, live progress while it is queued or running, the log tail when it failed; when an
    earlier experiment answered the request (`reused_from`), what is true about it."""
    progress = None
    if row["status"] in ("queued", "running"):
        live = lab.scheduler.progress(row["id"])
        progress = live.message() if live else row["status"]
    metrics = row.get("metrics") or {}
    failed = row["status"] not in ("ok", "queued", "running")
    tail = row.get("log_tail") or ""
    return ExperimentResult(
        id=row["id"],
        agent=row["agent"],
        requested_by=row.get("requested_by"),
        kind=row.get("kind") or "experiment",
        status=row["status"],
        description=agent_text(row.get("description"), row["agent"]) or "",
        metric_value=row.get("metric_value"),
        delta_vs_parent=published(row.get("delta_parent")),
        delta_vs_best=published(row.get("delta_best")),
        verdict=row.get("verdict"),
        verdict_note=metrics.get("verdict_note") if isinstance(metrics, dict) else None,
        parent_id=row.get("parent_id"),
        seed=row.get("seed"),
        budget_seconds=row.get("budget_seconds"),
        train_seconds=row.get("train_seconds"),
        eval_seconds=row.get("eval_seconds"),
        cpu_share=row.get("cpu_share"),
        flags=flags_for_reader(row),
        failure_reason=agent_text(row.get("failure_reason"), code_authors(row)),
        log_tail=agent_text(last_lines(tail), code_authors(row)) if failed and tail else None,
        progress=progress,
        reused_from=reused_from,
        request_id=request_id,
        notes=notes or [],
        next_step=reuse_step(row, reuse_reason)
        if reused_from
        else next_step_for(row, lab.settings.call_wait_seconds),
    )


def agent_experiment_detail(
    lab: Lab, row: Mapping[str, Any], *, include_diff: bool, include_log: bool
) -> ExperimentDetail:
    """get_experiment's view: the result plus hashes, confirmation, lineage (the nearest 30
    steps) and papers; the diffs and a successful run's log tail only when asked for."""
    base = experiment_result(lab, row).model_dump()
    if include_log and row.get("log_tail"):
        base["log_tail"] = agent_text(last_lines(row["log_tail"]), code_authors(row))
    stats = lab.confirmation_stats(row["id"]) if row["status"] == "ok" else None
    return ExperimentDetail(
        **base,
        code_hash=(row.get("code_hash") or "")[:12],
        confirms_id=row.get("confirms_id"),
        confirmation=stats,
        diff_vs_parent=agent_text(row.get("diff_parent"), code_authors(row))
        if include_diff
        else None,
        diff_vs_baseline=agent_text(row.get("diff_baseline"), code_authors(row))
        if include_diff
        else None,
        metrics=row.get("metrics") or {},
        hardware=row.get("hardware"),
        isolation=row.get("isolation"),
        paper_ids=lab.store.papers_of(row["id"]),
        lineage=[
            {**step, "description": agent_text(step.get("description"), step.get("agent"))}
            for step in lab.store.lineage(row["id"], limit=LINEAGE_FOR_AGENT)
        ],
        created_at=row.get("created_at"),
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
    )


def history_row(row: Mapping[str, Any]) -> HistoryRow:
    """One compact row of the record (get_history, the dashboard's experiment list)."""
    return HistoryRow(
        id=row["id"],
        agent=row["agent"],
        kind=row.get("kind") or "experiment",
        status=row["status"],
        metric_value=row.get("metric_value"),
        delta_vs_parent=published(row.get("delta_parent")),
        verdict=row.get("verdict"),
        description=agent_text(row.get("description"), row["agent"]) or "",
        parent_id=row.get("parent_id"),
        flags=[f.get("name", "") for f in (row.get("flags") or []) if isinstance(f, dict)],
        paper_ids=row.get("paper_ids") or [],
        finished_at=row.get("finished_at"),
    )


def queue_entries(lab: Lab) -> list[dict[str, Any]]:
    """The running experiments (with their slot), then the queued ones in dispatch order."""
    queued = [
        {"id": e["id"], "agent": e["agent"], "status": "queued", "position": i}
        for i, e in enumerate(lab.scheduler.queue_order(), start=1)
    ]
    running = [
        {"id": i, "agent": lab.experiment(i)["agent"], "status": "running", "slot": slot}
        for i, slot in lab.scheduler.running().items()
    ]
    return running + queued


def history(
    lab: Lab,
    *,
    involving: str | None,
    status: str | None,
    order: str,
    query: str | None,
    limit: int,
    offset: int,
    level: str | None,
) -> History:
    """get_history's page of the record (experiments credited to or asked for by `involving`,
    or everyone's), with the leaderboard of the level, the queue and the open idea claims."""
    if level is not None:
        lab.level(level)
    rows = lab.store.list_experiments(
        involving=involving,
        status=status,
        query=query,
        scale=level,
        order=order,
        limit=limit + 1,
        offset=offset,
        columns=HISTORY_COLUMNS,
    )
    more = len(rows) > limit
    queue = queue_entries(lab)
    claims, claims_total = lab.store.listed_open_claims(LISTED_CLAIMS, LISTED_CLAIMS_PER_AGENT)
    return History(
        rows=[history_row(r) for r in rows[:limit]],
        total=lab.store.count_experiments(
            involving=involving, status=status, query=query, scale=level
        ),
        next_offset=offset + limit if more else None,
        leaderboard=leaderboard_entries(lab, 10, level or "S"),
        open_claims=claim_views(claims),
        open_claims_total=claims_total,
        queue=queue[: sum(e["status"] == "running" for e in queue) + LISTED_QUEUE],
        queue_total=len(queue),
        requests=[
            run_request(lab, r)
            for r in lab.store.requests.search(
                agent=involving, fts_query=all_words_query(query) if query else None, limit=limit
            )
        ]
        if involving or query
        else [],
    )


def run_request(lab: Lab, row: Mapping[str, Any]) -> RunRequest:
    """A recorded run request, its description (another agent's) as an untrusted block; its
    reason quotes values of the code, the same as the earlier experiment's: its authors' text."""
    fields = {k: row[k] for k in RunRequest.model_fields}
    fields["description"] = agent_text(row["description"], row["agent"]) or ""
    authors = [row["agent"], *lab.store.code_authors_of(row["earlier_id"])]
    fields["reason"] = shown_reason(row["reason"], authors)
    return RunRequest.model_validate(fields)


def leaderboard_entries(lab: Lab, limit: int, level: str) -> list[LeaderboardEntry]:
    """The leaderboard's entries, other agents' descriptions as untrusted blocks."""
    return [
        LeaderboardEntry(**{**e, "description": agent_text(e["description"], e["agent"]) or ""})
        for e in lab.leaderboard(limit, scale=level)
    ]


def claim_views(claims: list[dict[str, Any]]) -> list[Claim]:
    """Idea claims, other agents' texts as untrusted blocks."""
    return [Claim(**{**c, "text": agent_text(c["text"], c["agent"]) or ""}) for c in claims]


def noise_info(lab: Lab, level: str = "S") -> dict[str, Any]:
    """`lab.noise_info(level)`, kept until `experiments` changes (server.store.read_cache): the
    pooled noise walks every repeated run (45 ms at 4,000 of them) on each leaderboard call."""
    return lab.store.read_cache.get(
        lab.store.db, ("noise_info", id(lab), level), lambda: lab.noise_info(level)
    )


def leaderboard(
    lab: Lab,
    limit: int = 10,
    level: str = "S",
    *,
    agents_listed: int | None = None,
    caller: str | None = None,
) -> Leaderboard:
    """The best experiments of a level, each agent's best (the first `agents_listed` and the
    caller's own; every agent when None), and the noise the verdicts used."""
    agents = lab.per_agent()
    shown = agents if agents_listed is None else agents[:agents_listed]
    listed = shown + [a for a in agents[len(shown) :] if a["agent"] == caller]
    return Leaderboard(
        entries=leaderboard_entries(lab, limit, level),
        per_agent=[AgentBest(**a) for a in listed],
        agents_total=len(agents),
        noise=NoiseInfo(**noise_info(lab, level)),
    )


def cancel_result(experiment_id: int, outcome: str) -> CancelResult:
    return CancelResult(id=experiment_id, status=outcome, note=CANCEL_NOTES[outcome])


def promotion_result(lab: Lab, experiment_id: int, promotion: dict[str, Any]) -> dict[str, Any]:
    """promote's answer: the queued runs and baselines, the levels, and where to look next."""
    return {
        "promotion": promotion,
        "levels": [level.__dict__ for level in lab.settings.scales],
        "next_step": f"runs {promotion['run_ids']} and baselines {promotion['baseline_ids']} are queued; "
        f"get_ladder({experiment_id}) shows the transfer verdict when they finish",
    }


def combine_result(lab: Lab, outcome: dict[str, Any]) -> dict[str, Any]:
    """combine's answer: the ladder's outcome with the queued experiment's view added."""
    outcome["experiment"] = experiment_result(
        lab, lab.experiment(outcome["experiment_id"])
    ).model_dump()
    return outcome


# ---------------------------------------------------------------- workspace files


def file_list(lab: Lab, agent: str) -> FileList:
    """The files an agent may edit and read, with its workspace's hash and parent."""
    ws = lab.workspace(agent)
    files = [
        FileInfo(name=f.name, access=f.access, size_bytes=f.size_bytes, lines=f.lines)
        for f in ws.list_files()
    ]
    return FileList(
        files=files,
        workspace_code_hash=ws.code_hash()[:12],
        parent_experiment_id=lab.workspace_parent(agent),
        note="edit with edit_file / apply_patch / write_file; run with run_experiment",
    )


def file_page(lab: Lab, agent: str, path: str, offset: int, limit: int) -> FileContent:
    """Lines `offset`.. of a workspace file, numbered, at most `limit` lines and about
    READ_MAX_CHARS characters (at least one line); next_offset continues."""
    text = lab.workspace(agent).read_text(path)
    access = "editable" if path.removeprefix("./") in lab.target.editable else "readable"
    lines = text.splitlines()
    if offset > max(len(lines), 1):
        raise LabError(
            f"offset {offset} is past the end of {path} ({len(lines)} lines); use offset 1 to {max(len(lines), 1)}"
        )
    chunk: list[str] = []
    size = 0
    last = offset - 1
    for number in range(offset, min(len(lines), offset + limit - 1) + 1):
        line = f"{number}\t{lines[number - 1]}"
        if size + len(line) > READ_MAX_CHARS and chunk:
            break
        chunk.append(line)
        size += len(line) + 1
        last = number
    more = last < len(lines)
    return FileContent(
        path=path,
        access=access,
        # After a checkout of another agent's code, the file is partly theirs: an untrusted block.
        content=agent_text("\n".join(chunk), authorship.workspace_authors(lab, agent)) or "",
        first_line=offset,
        last_line=last,
        total_lines=len(lines),
        truncated=more,
        next_offset=last + 1 if more else None,
    )


def edit_result(lab: Lab, agent: str, result: Any) -> EditResult:
    """What an edit changed (a sandbox.patch result) and the workspace's new hash."""
    ws = lab.workspace(agent)
    return EditResult(
        files=list(result.files),
        hunks=result.hunks,
        lines_added=result.lines_added,
        lines_removed=result.lines_removed,
        method=result.method,
        workspace_code_hash=ws.code_hash()[:12],
        next_step="run_experiment(description) to measure it, or read_file to check the result",
    )


def checkout_result(lab: Lab, agent: str, source: int | None, files: list[str]) -> CheckoutResult:
    what = f"experiment #{source}" if source is not None else "the baseline"
    return CheckoutResult(
        experiment_id=source,
        files=files,
        workspace_code_hash=lab.workspace(agent).code_hash()[:12],
        note=f"your workspace now holds the code of {what}; new experiments are compared with it as parent",
    )


def claim_result(lab: Lab, claim_id: int) -> ClaimResult:
    """The new claim, the newest open claims, and when it lapses."""
    claim = lab.store.claim(claim_id)
    assert claim is not None, claim_id  # written by this call, and claims are never deleted
    [mine] = claim_views([claim])
    claims, claims_total = lab.store.listed_open_claims(LISTED_CLAIMS, LISTED_CLAIMS_PER_AGENT)
    return ClaimResult(
        claim=mine,
        open_claims=claim_views(claims),
        open_claims_total=claims_total,
        note=f"claimed until {mine.expires_at}; released when you run your next experiment",
    )


# ---------------------------------------------------------------- papers


def paper_ref(lab: Lab, paper: Paper) -> PaperRef:
    """A paper's metadata and the experiments that cite it (no untrusted text)."""
    return PaperRef(
        arxiv_id=paper.arxiv_id,
        version=paper.version,
        published=paper.published,
        updated=paper.updated,
        primary_category=paper.primary_category,
        categories=list(paper.categories),
        abs_url=paper.abs_url,
        pdf_url=paper.pdf_url,
        inspired_experiments=lab.store.experiments_citing(paper.arxiv_id),
    )


def paper_search_view(lab: Lab, result: PaperSearchResult) -> PaperSearchView:
    return PaperSearchView(
        query=result.query,
        arxiv_query=result.arxiv_query,
        source=result.source,
        fetched_at=result.fetched_at,
        note=result.note,
        untrusted_notice=result.untrusted_notice,
        papers=[paper_ref(lab, p) for p in result.papers],
        untrusted_text=result.render(),
    )


def paper_view(lab: Lab, paper: Paper) -> PaperView:
    """One paper: metadata, then its untrusted text, delimited."""
    return PaperView(
        paper=paper_ref(lab, paper),
        untrusted_notice=UNTRUSTED_NOTICE,
        untrusted_text=render_untrusted(paper),
    )
