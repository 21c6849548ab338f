"""The dashboard's view models: what the progress chart, the queue and the experiment page show.

Each function reads the Lab (and its store) and returns a response model of the JSON API; the
models are documented in the API schema (/openapi.json). The pages, the chart and the routes
are in the modules beside this one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, Field, TypeAdapter

from server.ablation import Ablations
from server.lab import Lab, LabError
from server.models import ExperimentDetail, HistoryRow, NoiseInfo
from server.orientation import MINIMIZE
from server.presentation import experiment_result, history_row, noise_info

# One colour per agent, in order of first appearance (tab10: readable on white, distinct).
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
)
SERVER_COLOR = "#555555"  # the server's own baseline runs


# The experiments the progress chart draws: the latest ones (a browser draws 3,000 dots at
# ease; 100,000 made a 15 MB answer), and every step of the running best before them.
CHART_POINTS = 3000


class ChartPoint(BaseModel):
    """One finished experiment on the progress chart."""

    index: int = Field(description="position on the x axis: 0 = the first finished experiment")
    id: int
    agent: str
    kind: str
    status: str
    metric_value: float | None = Field(description="null for a failed run (drawn on the top edge)")
    verdict: str | None
    description: str
    disqualified: bool = Field(
        description="may not count as an improvement (seed-only change, contended CPU)"
    )


CHART_POINT_LIST = TypeAdapter(list[ChartPoint])


class BestStep(BaseModel):
    """A point where the running best improved."""

    index: int
    id: int
    metric_value: float


class AgentColor(BaseModel):
    name: str
    color: str


class ChartData(BaseModel):
    """Everything the progress chart (and progress.png) draws."""

    title: str
    metric: str = Field(description="the research target's metric (target.toml's name)")
    direction: str = Field(description="minimize | maximize: which way the metric improves")
    points: list[ChartPoint]
    best: list[BestStep] = Field(description="the running best, one entry per improvement")
    agents: list[AgentColor]
    noise: NoiseInfo
    improvements: int
    failures: int
    record_version: str


class ExperimentList(BaseModel):
    rows: list[HistoryRow]
    total: int | None = Field(description="matching experiments (null with a full-text query)")
    next_offset: int | None = Field(description="pass as offset for the next page; null at the end")


class RunningExperiment(BaseModel):
    id: int
    agent: str
    description: str
    slot: str | None
    phase: str = Field(description="training | evaluating | finishing | unknown")
    done: float = Field(description="seconds of budget used so far")
    total: float = Field(description="the budget in seconds (0 when not known yet)")
    message: str
    started_at: str | None


class QueuedExperiment(BaseModel):
    id: int
    agent: str
    kind: str
    description: str
    position: int = Field(description="1 = dispatched next")


class QueueState(BaseModel):
    running: list[RunningExperiment]
    queued: list[QueuedExperiment]
    slots: list[str]
    experiments: int = Field(description="experiments in the record, all statuses")
    record_version: str = Field(
        description="changes whenever an experiment is added or finishes: refetch the chart then"
    )


def agent_colors(agents: list[str]) -> dict[str, str]:
    """A stable colour per agent: the server's baseline runs grey, the others from PALETTE."""
    colors: dict[str, str] = {}
    n = 0
    for agent in agents:
        if agent in colors:
            continue
        if agent == "server":
            colors[agent] = SERVER_COLOR
        else:
            colors[agent] = PALETTE[n % len(PALETTE)]
            n += 1
    return colors


def lab_agent_colors(lab: Lab) -> dict[str, str]:
    """Every agent's colour, in order of each agent's first experiment (the same on every page)."""
    return agent_colors(lab.store.agents_by_first_experiment())


def chart_json(lab: Lab) -> bytes:
    """`chart_data` as the JSON /api/chart sends, built once per change of the record: at
    100,000 experiments building and encoding it took ~2 s, and every open page polls it."""
    store = lab.store
    return store.read_cache.get(
        store.db, ("chart_json", id(lab)), lambda: chart_data(lab).model_dump_json().encode()
    )


def chart_data(lab: Lab) -> ChartData:
    """The finished experiments in order (the latest CHART_POINTS of them drawn, each at its
    place in the whole record, with every step of the running best), the running best over
    all of them, the agents' colours and the noise."""
    outline = lab.store.chart_outline(lab.hardware, lab.budget_seconds)
    first_drawn = max(0, len(outline) - CHART_POINTS)
    minimize = lab.target.direction == MINIMIZE
    best: list[BestStep] = []
    best_value: float | None = None
    improvements = failures = 0
    for index, (experiment_id, ok, counts, improved, value) in enumerate(outline):
        improvements += bool(improved)
        if not ok:
            failures += 1
        elif (
            counts
            and value is not None
            and (best_value is None or (value < best_value if minimize else value > best_value))
        ):
            best_value = value
            best.append(BestStep(index=index, id=experiment_id, metric_value=value))
    # Where each drawn experiment sits: the latest CHART_POINTS, and the best steps before them.
    index_of = {row[0]: first_drawn + k for k, row in enumerate(outline[first_drawn:])}
    index_of.update((step.id, step.index) for step in best)
    drawn_from = outline[first_drawn][0] if outline else 0
    points = CHART_POINT_LIST.validate_python(  # one call for the list: half the time of one each
        [
            {
                "index": index_of[row["id"]],
                "id": row["id"],
                "agent": row["agent"],
                "kind": row["kind"] or "experiment",
                "status": row["status"],
                "metric_value": row["metric_value"] if row["status"] == "ok" else None,
                "verdict": row["verdict"],
                "description": row["description"] or "",
                "disqualified": bool(row["disqualified"]),
            }
            for row in lab.store.chart_points(drawn_from, [step.id for step in best])
            if row["id"]
            in index_of  # finished after the outline was read: the next change draws it
        ]
    )
    colors = lab_agent_colors(lab)
    drawn = f" (the latest {CHART_POINTS:,} drawn)" if first_drawn else ""
    return ChartData(
        title=f"{len(outline)} experiments, {improvements} improvements{drawn}",
        metric=lab.target.metric,
        direction=lab.target.direction,
        points=points,
        best=best,
        agents=[AgentColor(name=name, color=color) for name, color in colors.items()],
        noise=NoiseInfo(**noise_info(lab)),
        improvements=improvements,
        failures=failures,
        record_version=lab.store.record_version(),
    )


def queue_state(lab: Lab) -> QueueState:
    """The running experiments with their live progress, then the queue in dispatch order."""
    running: list[RunningExperiment] = []
    in_scheduler = lab.scheduler.running()
    # Rows marked running by another process sharing the record show too, without progress.
    ids = set(in_scheduler) | {
        r["id"] for r in lab.store.list_experiments(status="running", limit=100, columns=["id"])
    }
    for experiment_id in sorted(ids):
        try:
            row = lab.store.get_experiment(experiment_id)
        except KeyError:
            continue
        if row["status"] != "running":
            continue  # recorded already; the scheduler is only tidying up
        live = lab.scheduler.progress(experiment_id) if experiment_id in in_scheduler else None
        running.append(
            RunningExperiment(
                id=experiment_id,
                agent=row["agent"],
                description=row.get("description") or "",
                slot=in_scheduler.get(experiment_id) or row.get("device"),
                phase=live.phase if live else "unknown",
                done=live.done if live else 0.0,
                total=(live.total or row.get("budget_seconds") or 0.0) if live else 0.0,
                message=live.message() if live else "running (in another process)",
                started_at=row.get("started_at"),
            )
        )
    queued = [
        QueuedExperiment(
            id=e["id"],
            agent=e["agent"],
            kind=e.get("kind") or "experiment",
            description=e.get("description") or "",
            position=position,
        )
        for position, e in enumerate(lab.scheduler.queue_order(), start=1)
    ]
    return QueueState(
        running=running,
        queued=queued,
        slots=lab.scheduler.slots(),
        experiments=lab.store.count_experiments(),
        record_version=lab.store.record_version(),
    )


def experiment_detail(lab: Lab, experiment_id: int) -> ExperimentDetail:
    """Everything about one experiment, diffs and the whole stored log tail included."""
    try:
        row = lab.experiment(experiment_id)
    except LabError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    base = experiment_result(lab, row).model_dump()
    base["log_tail"] = row.get("log_tail") or None
    return ExperimentDetail(
        **base,
        code_hash=(row.get("code_hash") or "")[:12] or None,
        confirms_id=row.get("confirms_id"),
        confirmation=lab.confirmation_stats(row["id"]) if row["status"] == "ok" else None,
        diff_vs_parent=row.get("diff_parent"),
        diff_vs_baseline=row.get("diff_baseline"),
        metrics=metrics if isinstance(metrics := row.get("metrics"), dict) else {},
        hardware=row.get("hardware"),
        isolation=row.get("isolation"),
        paper_ids=lab.store.papers_of(row["id"]),
        lineage=lab.store.lineage(row["id"]),
        created_at=row.get("created_at"),
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
    )


def experiment_list(
    lab: Lab,
    *,
    agent: str | None,
    status: str | None,
    kind: str | None,
    q: str | None,
    order: str,
    limit: int,
    offset: int,
) -> ExperimentList:
    """One page of the record for the JSON API, `q` searched as plain printable words (a query
    the full-text index refuses is a 400); the total is null with a full-text query."""
    query = " ".join("".join(c for c in q if c.isprintable()).split()) if q else None
    try:
        rows = lab.store.list_experiments(
            agent=agent,
            status=status,
            kind=kind,
            query=query or None,
            order=order,
            limit=limit + 1,
            offset=offset,
        )
    except sqlite3.Error as exc:
        raise HTTPException(
            status_code=400,
            detail=f"q could not be searched ({exc}); send plain words",
        ) from None
    total = None if query else lab.store.count_experiments(agent=agent, status=status, kind=kind)
    return ExperimentList(
        rows=[history_row(r) for r in rows[:limit]],
        total=total,
        next_offset=offset + limit if len(rows) > limit else None,
    )


def ablation_of(lab: Lab, experiment_id: int) -> dict[str, Any] | None:
    """The latest ablation of an experiment with its analysis (server.ablation), or None."""
    return Ablations(lab).of_experiment(experiment_id)
