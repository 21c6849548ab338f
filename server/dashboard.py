"""The dashboard pages, the JSON API and the downloads (progress.png, results.tsv).

`/` is a page a researcher leaves open: the progress chart first (every experiment a dot,
improvements labelled, failures on the top edge, the running best as a step line, the
baseline's noise band, a colour per agent), then the leaderboards, then the queue with live
progress (the page polls `/api/queue` every 2 s and refetches the rest when the record
changes). `/experiments/{id}` shows one experiment: figures, verdict, integrity, the diff,
the log tail, the lineage and the papers. Every route needs the same token as the JSON API
(web.py's `Access`); a `?token=` is then kept in an HttpOnly cookie so that links work.
Every script and style is served from `server/static/`: no CDN, the page works offline.
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from server.auth import lookup_token
from server.lab import Lab, LabError
from server.models import (
    AgentBest,
    ExperimentDetail,
    HistoryRow,
    Leaderboard,
    LeaderboardEntry,
    NoiseInfo,
)

STATIC_DIR = FilePath(__file__).resolve().parent / "static"
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
COOKIE = "autoresearch_token"  # the same name web.py's Access reads
COOKIE_MAX_AGE = 7 * 24 * 3600
MAX_ID = 2**63 - 1  # SQLite's INTEGER range: larger ids would overflow, not miss
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
LABEL_CHARS = 44  # improvement labels on the chart are cut here (the tooltip has the rest)

# Documented on every route of the schema: what a request without a valid token gets.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token: send Authorization: Bearer <token> or ?token=<token>"}
}

Status = Literal[
    "queued", "running", "ok", "crash", "timeout", "integrity_fail", "cancelled", "interrupted"
]


# ---------------------------------------------------------------- response models


class ChartPoint(BaseModel):
    """One finished experiment on the progress chart."""

    index: int = Field(description="position on the x axis: 0 = the first finished experiment")
    id: int
    agent: str
    kind: str
    status: str
    val_bpb: float | None = Field(description="null for a failed run (drawn on the top edge)")
    verdict: str | None
    description: str
    disqualified: bool = Field(
        description="may not count as an improvement (seed-only change, contended CPU)"
    )


class BestStep(BaseModel):
    """A point where the running best moved down."""

    index: int
    id: int
    val_bpb: float


class AgentColor(BaseModel):
    name: str
    color: str


class ChartData(BaseModel):
    """Everything the progress chart (and progress.png) draws."""

    title: str
    points: list[ChartPoint]
    best: list[BestStep] = Field(description="the running best, one entry per step down")
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


# ---------------------------------------------------------------- data


def record_version(lab: Lab) -> str:
    """A short fingerprint of the record: count, last id, last finish, live runs."""
    row = lab.store.db.execute(
        "SELECT COUNT(*), MAX(id), MAX(finished_at), SUM(status = 'running') FROM experiments"
    ).fetchone()
    return ":".join(str(v or 0) for v in row)


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
    rows = lab.store.db.execute(
        "SELECT agent FROM experiments GROUP BY agent ORDER BY MIN(id)"
    ).fetchall()
    return agent_colors([row[0] for row in rows])


def chart_data(lab: Lab) -> ChartData:
    """Every finished experiment in order, the running best, the agents' colours and the noise."""
    rows = list(
        lab.store.db.query(
            "SELECT id, agent, kind, status, val_bpb, verdict, description, disqualified, "
            "hardware, budget_seconds FROM experiments "
            "WHERE status NOT IN ('queued', 'running') ORDER BY id"
        )
    )
    points: list[ChartPoint] = []
    best: list[BestStep] = []
    best_value: float | None = None
    for index, row in enumerate(rows):
        ok = row["status"] == "ok" and row["val_bpb"] is not None
        disqualified = bool(row["disqualified"])
        points.append(
            ChartPoint(
                index=index,
                id=row["id"],
                agent=row["agent"],
                kind=row["kind"] or "experiment",
                status=row["status"],
                val_bpb=row["val_bpb"] if ok else None,
                verdict=row["verdict"],
                description=row["description"] or "",
                disqualified=disqualified,
            )
        )
        counts = (
            ok
            and not disqualified
            and row["kind"] in ("experiment", "baseline")
            and row["hardware"] == lab.hardware
            and row["budget_seconds"] == lab.budget_seconds
        )
        if counts and (best_value is None or row["val_bpb"] < best_value):
            best_value = row["val_bpb"]
            best.append(BestStep(index=index, id=row["id"], val_bpb=row["val_bpb"]))
    colors = lab_agent_colors(lab)
    improvements = sum(1 for p in points if p.verdict == "improved")
    failures = sum(1 for p in points if p.val_bpb is None)
    return ChartData(
        title=f"{len(points)} experiments, {improvements} improvements",
        points=points,
        best=best,
        agents=[AgentColor(name=name, color=color) for name, color in colors.items()],
        noise=NoiseInfo(**lab.noise_info()),
        improvements=improvements,
        failures=failures,
        record_version=record_version(lab),
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
        record_version=record_version(lab),
    )


def leaderboard(lab: Lab, limit: int = 10) -> Leaderboard:
    """The overall leaderboard, each agent's best, and the noise the verdicts used."""
    return Leaderboard(
        entries=[LeaderboardEntry(**e) for e in lab.leaderboard(limit)],
        per_agent=[AgentBest(**a) for a in lab.per_agent()],
        noise=NoiseInfo(**lab.noise_info()),
    )


def experiment_detail(lab: Lab, experiment_id: int) -> ExperimentDetail:
    """Everything about one experiment, diffs and the whole stored log tail included."""
    from server.app import experiment_result

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


# ---------------------------------------------------------------- progress.png


def y_range(values: list[float], noise: NoiseInfo) -> tuple[float, float]:
    """The val_bpb range to draw: all values, unless a few outliers would squash the rest."""
    band = (
        [noise.baseline_mean - noise.threshold, noise.baseline_mean + noise.threshold]
        if noise.baseline_mean is not None and noise.measured
        else []
    )
    if not values:
        if noise.baseline_mean is not None:
            return noise.baseline_mean - 0.05, noise.baseline_mean + 0.05
        return 0.0, 1.0
    ordered = sorted(values)
    lo = min([ordered[0], *band])
    q90 = ordered[int(0.9 * (len(ordered) - 1))]
    hi = max([q90, *band, ordered[0]])
    if ordered[-1] <= hi + 0.5 * max(hi - lo, 1e-9):
        hi = ordered[-1]
    else:
        hi = hi + 0.15 * max(hi - lo, 1e-9)
    span = max(hi - lo, 1e-4)
    return lo - 0.06 * span, hi + 0.1 * span


def render_progress_png(data: ChartData) -> bytes:
    """The progress chart as a PNG (matplotlib Agg): the same picture as the page, for reports."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = {a.name: a.color for a in data.agents}
    fig = Figure(figsize=(16, 8), dpi=100)  # no pyplot: no global state across threads
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [p.val_bpb for p in data.points if p.val_bpb is not None]
    lo, hi = y_range(values, data.noise)
    n = max(len(data.points), 1)
    noise = data.noise
    if noise.baseline_mean is not None:
        ax.axhspan(
            noise.baseline_mean - noise.threshold,
            noise.baseline_mean + noise.threshold,
            color="#999999",
            alpha=0.15,
            lw=0,
            label=f"baseline ± noise ({noise.threshold:.4f}{'' if noise.measured else ', assumed'})",
        )
        ax.axhline(noise.baseline_mean, color="#999999", lw=0.8, ls="--")
    top = hi - 0.02 * (hi - lo)
    for agent, color in colors.items():
        mine = [p for p in data.points if p.agent == agent]
        plain = [p for p in mine if p.val_bpb is not None and p.verdict != "improved"]
        xs = [p.index for p in plain]
        ys = [min(p.val_bpb or 0.0, top) for p in plain]
        if xs:
            ax.scatter(xs, ys, s=14, color=color, alpha=0.35, lw=0)
        wins = [p for p in mine if p.verdict == "improved" and p.val_bpb is not None]
        if wins:
            ax.scatter(
                [p.index for p in wins],
                [p.val_bpb or 0.0 for p in wins],
                s=60,
                color=color,
                edgecolors="black",
                linewidths=0.8,
                zorder=4,
            )
        failed = [p for p in mine if p.val_bpb is None]
        if failed:
            ax.scatter(
                [p.index for p in failed],
                [top] * len(failed),
                marker="x",
                s=24,
                color=color,
                lw=1.2,
            )
        ax.scatter([], [], s=30, color=color, label=agent)
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.5, n - 0.5 + max(1, n * 0.02))
    if data.best:
        steps_x = [b.index for b in data.best] + [n - 1]
        steps_y = [b.val_bpb for b in data.best] + [data.best[-1].val_bpb]
        ax.step(steps_x, steps_y, where="post", color="#222222", lw=1.8, label="running best")
    ax.scatter([], [], s=60, color="white", edgecolors="black", label="improved (labelled)")
    ax.scatter([], [], marker="x", s=24, color="black", label="failed (top edge)")
    ax.set_xlabel("Experiment #")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(f"autoresearch progress: {data.title}")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    _label_improvements(ax, data, colors)  # after the layout: labels are placed in pixels
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _label_improvements(ax: Any, data: ChartData, colors: dict[str, str]) -> None:
    """Label improvements with their description, the best first, leaving out any that would
    overlap a label already placed (the same rule as the page's chart)."""
    wins = sorted(
        (p for p in data.points if p.verdict == "improved" and p.val_bpb is not None),
        key=lambda p: (p.val_bpb, p.index),
    )
    width = ax.figure.bbox.width
    height = ax.figure.bbox.height
    angle = math.radians(30)
    placed: list[tuple[float, float, float, float]] = []
    for p in wins:
        text = _short(p.description)
        cx, cy = ax.transData.transform((p.index, p.val_bpb))
        cy = height - cy  # screen coordinates, y down, like the page
        length = len(text) * 6.2
        for flip in (False, True):
            x, y = (cx - 6, cy - 6) if flip else (cx + 6, cy - 6)
            seg = (
                (x - length * math.cos(angle), y - length * math.sin(angle), x, y)
                if flip
                else (x, y, x + length * math.cos(angle), y - length * math.sin(angle))
            )
            if seg[2] > width - 2 or seg[0] < 2 or min(seg[1], seg[3]) < 4:
                continue  # off the figure: up and to the left instead, near the right edge
            if any(_segments_near(seg, q, 12.0) for q in placed):
                break  # crowded: no label (the other side would cover the earlier points)
            placed.append(seg)
            ax.annotate(
                text,
                (p.index, p.val_bpb),
                xytext=(-6 if flip else 6, 6),
                textcoords="offset points",
                rotation=-30 if flip else 30,
                rotation_mode="anchor",
                ha="right" if flip else "left",
                fontsize=8,
                color=colors.get(p.agent, SERVER_COLOR),
            )
            break


def _segments_near(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float
) -> bool:
    """Whether two line segments pass within `gap` of each other (sampled every 8 px along a)."""
    length = math.hypot(a[2] - a[0], a[3] - a[1]) or 1.0
    steps = max(1, int(length / 8))
    for i in range(steps + 1):
        t = i / steps
        px, py = a[0] + t * (a[2] - a[0]), a[1] + t * (a[3] - a[1])
        dx, dy = b[2] - b[0], b[3] - b[1]
        u = max(0.0, min(1.0, ((px - b[0]) * dx + (py - b[1]) * dy) / ((dx * dx + dy * dy) or 1.0)))
        if math.hypot(px - (b[0] + u * dx), py - (b[1] + u * dy)) < gap:
            return True
    return False


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


# ---------------------------------------------------------------- HTML


def static_version() -> str:
    """A hash of the static files: a new release gets new URLs, so they may be cached long."""
    digest = hashlib.sha256()
    for name in sorted(STATIC_FILES):
        path = STATIC_DIR / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def page(title: str, body: str, version: str, *, script: bool = False) -> str:
    """The HTML shell shared by both pages."""
    js = f'<script src="/static/dashboard.js?v={version}" defer></script>' if script else ""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel=stylesheet href="/static/dashboard.css?v={version}">{js}</head>'
        f"<body>{body}</body></html>"
    )


def index_body(lab: Lab) -> str:
    """The dashboard's skeleton: dashboard.js fills the chart, the tables and the queue."""
    noise = lab.noise_info()
    return f"""
<header>
  <h1>autoresearch <span id=title class=muted></span></h1>
  <div class=meta>{html.escape(lab.hardware)} · budget {lab.budget_seconds:g} s ({lab.settings.budget_kind})
    · isolation {html.escape(lab.isolation.value)} · noise k={lab.settings.noise_k:g}, sd {noise["sd"]:.4f}{"" if noise["measured"] else " (assumed)"}
    · <a href="/progress.png">progress.png</a> · <a href="/results.tsv">results.tsv</a>
    · <a href="/openapi.json">API schema</a> <span id=live class=muted></span></div>
</header>
<main>
  <section id=chart-section>
    <div id=legend class=legend></div>
    <div id=chart aria-label="progress chart"></div>
  </section>
  <div class=columns>
    <section><h2>Leaderboard</h2><table id=leaderboard class=rows>
      <thead><tr><th>#</th><th>id</th><th>agent</th><th class=num>val_bpb</th><th class=num>± sd</th><th class=num>runs</th><th>description</th></tr></thead>
      <tbody></tbody></table></section>
    <section><h2>Per agent</h2><table id=per-agent class=rows>
      <thead><tr><th>agent</th><th class=num>best val_bpb</th><th>best</th><th class=num>experiments</th><th class=num>improved</th></tr></thead>
      <tbody></tbody></table></section>
  </div>
  <section><h2>Running and queued</h2><div id=queue></div></section>
</main>"""


def diff_html(diff: str | None) -> str:
    """A unified diff with added, removed, hunk and header lines marked for colouring."""
    if not diff:
        return "<p class=muted>no change (the same code as its parent)</p>"
    lines = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            cls = "hdr"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = "ctx"
        lines.append(f"<span class={cls}>{html.escape(line) or ' '}</span>")
    return "<pre class=diff>" + "".join(lines) + "</pre>"


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None or value == "":
        return "<span class=muted>—</span>"
    if spec and isinstance(value, (int, float)):
        return html.escape(format(value, spec) + suffix)
    return html.escape(f"{value}{suffix}")


def experiment_body(lab: Lab, detail: ExperimentDetail, row: dict[str, Any]) -> str:
    """The experiment page: figures, verdict, integrity, diff, log, lineage, papers."""
    e = html.escape
    colors = lab_agent_colors(lab)
    metrics = detail.metrics
    share = f"{detail.cpu_share:.0%}" if detail.cpu_share is not None else None
    memory = row.get("peak_memory_mb")
    figures = [
        ("val_bpb", _fmt(detail.val_bpb, ".6f")),
        ("Δ vs parent", _fmt(detail.delta_vs_parent, "+.6f")),
        ("Δ vs best", _fmt(detail.delta_vs_best, "+.6f")),
        ("train", _fmt(detail.train_seconds, ".1f", " s")),
        ("eval", _fmt(detail.eval_seconds, ".1f", " s")),
        ("total", _fmt(row.get("total_seconds"), ".1f", " s")),
        ("CPU share", _fmt(share)),
        ("peak memory", _fmt(memory, ".0f", " MB")),
        ("seed", _fmt(detail.seed)),
        ("budget", _fmt(detail.budget_seconds, "g", f" s ({row.get('budget_kind') or 'wall'})")),
        ("hardware", _fmt(detail.hardware)),
        ("isolation", _fmt(detail.isolation)),
        ("code", _fmt(detail.code_hash)),
        ("created", _fmt(_when(detail.created_at))),
        ("finished", _fmt(_when(detail.finished_at))),
    ]
    figure_html = "".join(f"<div><dt>{e(k)}</dt><dd>{v}</dd></div>" for k, v in figures)
    flags = detail.flags
    integrity_ok = detail.status != "integrity_fail"
    tone = "good" if detail.status == "ok" else "bad" if not integrity_ok else "muted"
    integrity = [
        f"<p class={tone}>"
        + (
            "evaluation integrity: passed (fixed evaluator, tokenizer and validation data)"
            if integrity_ok and detail.status == "ok"
            else "evaluation integrity: FAILED"
            if not integrity_ok
            else f"evaluation integrity: not evaluated ({e(detail.status)})"
        )
        + "</p>"
    ]
    if row.get("disqualified"):
        integrity.append("<p class=bad>disqualified: this run cannot count as an improvement</p>")
    if flags:
        items = "".join(
            f"<li><b>{e(str(f.get('name', '')))}</b>: {e(str(f.get('reason', '')))}</li>"
            for f in flags
        )
        integrity.append(f"<ul class=flags>{items}</ul>")
    else:
        integrity.append("<p class=muted>no flags: the diff touches no part of the contract</p>")
    hashes = row.get("hashes")
    if isinstance(hashes, dict) and hashes:
        items = "".join(
            f"<li>{e(k)}: <code>{e(str(v)[:16])}…</code></li>" for k, v in hashes.items()
        )
        integrity.append(f"<details><summary>hashes checked</summary><ul>{items}</ul></details>")
    lineage = []
    for step in detail.lineage:
        current = " aria-current=page" if step["id"] == detail.id else ""
        value = f"{step['val_bpb']:.6f}" if step.get("val_bpb") is not None else step["status"]
        lineage.append(
            f'<li><a href="/experiments/{step["id"]}"{current}>#{step["id"]}</a> '
            f'<span class=agent style="color:{colors.get(step["agent"], SERVER_COLOR)}">{e(step["agent"])}</span> '
            f"{e(value)} {_verdict_badge(step.get('verdict'))} {e(step.get('description') or '')}</li>"
        )
    root = detail.lineage[-1] if detail.lineage else None
    if root is not None and root.get("kind") != "baseline":
        lineage.append("<li class=muted>the baseline train.py (shipped with the server)</li>")
    papers = (
        "".join(
            f'<li><a href="https://arxiv.org/abs/{e(p)}" rel=noreferrer>arXiv:{e(p)}</a></li>'
            for p in detail.paper_ids
        )
        or "<li class=muted>none cited</li>"
    )
    confirmation = ""
    if detail.confirmation:
        c = detail.confirmation
        confirmation = (
            f"<p>confirmed over {c['n']} seeds: mean {c['mean']:.6f} ± {c['sd']:.6f} "
            f"(runs {', '.join(f'#{i}' for i in c['run_ids'])})</p>"
        )
    note = detail.verdict_note or metrics.get("verdict_note") or ""
    failure = f"<p class=bad>{e(detail.failure_reason)}</p>" if detail.failure_reason else ""
    parent = (
        f'<a href="/experiments/{detail.parent_id}">#{detail.parent_id}</a>'
        if detail.parent_id is not None
        else "the baseline train.py"
    )
    return f"""
<header>
  <div class=meta><a href="/">← dashboard</a> · <a href="/api/experiments/{detail.id}">JSON</a></div>
  <h1>#{detail.id} {e(detail.description)}</h1>
  <div class=badges><span class=agent style="color:{colors[detail.agent]}">● {e(detail.agent)}</span>
    <span class="badge status-{e(detail.status)}">{e(detail.status)}</span>{_verdict_badge(detail.verdict)}
    <span class=badge>{e(detail.kind)}</span> <span class=muted>parent {parent}</span></div>
</header>
<main class=experiment>
  <section><h2>Figures</h2><dl class=figures>{figure_html}</dl></section>
  <section><h2>Verdict</h2><p>{_verdict_badge(detail.verdict)} {e(note)}</p>{failure}{confirmation}
    <p class=muted>{e(detail.progress or "")}</p></section>
  <section><h2>Integrity</h2>{"".join(integrity)}</section>
  <section><h2>Diff vs parent ({parent})</h2>{diff_html(detail.diff_vs_parent)}
    <details><summary>diff vs the baseline</summary>{diff_html(detail.diff_vs_baseline)}</details></section>
  <section><h2>Log tail</h2><pre class=log>{e(detail.log_tail or "") or "(no log yet)"}</pre></section>
  <section><h2>Lineage back to the baseline</h2><ol class=lineage>{"".join(lineage)}</ol></section>
  <section><h2>Papers cited</h2><ul>{papers}</ul></section>
</main>"""


def _when(stamp: str | None) -> str | None:
    """2026-01-02T03:04:05.678Z -> 2026-01-02 03:04:05 UTC."""
    if not stamp:
        return None
    return stamp.replace("T", " ")[:19] + " UTC" if stamp.endswith("Z") else stamp


def _verdict_badge(verdict: str | None) -> str:
    if not verdict:
        return ""
    return f'<span class="badge verdict-{html.escape(verdict)}">{html.escape(verdict)}</span>'


# ---------------------------------------------------------------- routes


def register(app: FastAPI, lab: Lab, access: Callable[[Request], str]) -> None:
    """Add the dashboard's pages, downloads and JSON API to `app`, all behind `access`."""
    version = static_version()
    png_cache: dict[str, bytes] = {}
    png_lock = threading.Lock()

    def remember_token(request: Request, response: Response) -> Response:
        """A valid `?token=` is kept in an HttpOnly cookie, so that links and fetches need no token."""
        token = request.query_params.get("token")
        if token and lookup_token(lab.store, token) is not None:
            response.set_cookie(
                COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax"
            )
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, viewer: str = Depends(access)) -> Response:
        body = page("autoresearch dashboard", index_body(lab), version, script=True)
        return remember_token(request, HTMLResponse(body))

    @app.get("/experiments/{experiment_id}", response_class=HTMLResponse, include_in_schema=False)
    def experiment_page(
        request: Request,
        experiment_id: Annotated[int, Path(ge=0, le=MAX_ID)],
        viewer: str = Depends(access),
    ) -> Response:
        detail = experiment_detail(lab, experiment_id)
        row = lab.store.get_experiment(experiment_id)
        body = page(
            f"#{detail.id} {detail.description}", experiment_body(lab, detail, row), version
        )
        return remember_token(request, HTMLResponse(body))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, viewer: str = Depends(access)) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        return Response(
            (STATIC_DIR / name).read_bytes(),
            media_type=STATIC_FILES[name],
            headers={"Cache-Control": "private, max-age=86400"},
        )

    @app.get(
        "/progress.png",
        response_class=Response,
        responses={
            **UNAUTHORIZED,
            200: {"content": {"image/png": {}}, "description": "the progress chart"},
        },
        summary="The progress chart as a PNG, for reports",
    )
    def progress_png(request: Request, viewer: str = Depends(access)) -> Response:
        key = record_version(lab) + lab.noise_info()["hardware"]
        with png_lock:
            image = png_cache.get(key)
            if image is None:
                image = render_progress_png(chart_data(lab))
                png_cache.clear()
                png_cache[key] = image
        return remember_token(request, Response(image, media_type="image/png"))

    @app.get(
        "/results.tsv",
        response_class=Response,
        responses={
            **UNAUTHORIZED,
            200: {"content": {"text/tab-separated-values": {}}, "description": "TSV"},
        },
        summary="autoresearch's results.tsv: commit val_bpb memory_gb status description",
    )
    def results_tsv(request: Request, viewer: str = Depends(access)) -> Response:
        text = lab.store.export_results_tsv()
        return remember_token(
            request, PlainTextResponse(text, media_type="text/tab-separated-values")
        )

    @app.get(
        "/api/chart",
        response_model=ChartData,
        responses=UNAUTHORIZED,
        summary="Everything the progress chart draws",
    )
    def api_chart(viewer: str = Depends(access)) -> ChartData:
        return chart_data(lab)

    @app.get(
        "/api/experiments",
        response_model=ExperimentList,
        responses=UNAUTHORIZED,
        summary="Experiments, newest first by default, with filters and paging",
    )
    def api_experiments(
        viewer: str = Depends(access),
        agent: Annotated[str | None, Query(max_length=64)] = None,
        status: Status | None = None,
        kind: Literal["experiment", "baseline", "confirmation"] | None = None,
        q: Annotated[
            str | None, Query(max_length=200, description="full-text search: descriptions, diffs")
        ] = None,
        order: Literal["recent", "oldest", "best"] = "recent",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> ExperimentList:
        from server.app import history_row

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
        total = (
            None if query else lab.store.count_experiments(agent=agent, status=status, kind=kind)
        )
        return ExperimentList(
            rows=[history_row(r) for r in rows[:limit]],
            total=total,
            next_offset=offset + limit if len(rows) > limit else None,
        )

    @app.get(
        "/api/experiments/{experiment_id}",
        response_model=ExperimentDetail,
        responses={**UNAUTHORIZED, 404: {"description": "no experiment with that id"}},
        summary="Everything about one experiment: figures, verdict, flags, diffs, log, lineage",
    )
    def api_experiment(
        experiment_id: Annotated[int, Path(ge=0, le=MAX_ID)], viewer: str = Depends(access)
    ) -> ExperimentDetail:
        return experiment_detail(lab, experiment_id)

    @app.get(
        "/api/leaderboard",
        response_model=Leaderboard,
        responses=UNAUTHORIZED,
        summary="The best experiments, each agent's best, and the measured noise",
    )
    def api_leaderboard(
        viewer: str = Depends(access), limit: Annotated[int, Query(ge=1, le=50)] = 10
    ) -> Leaderboard:
        return leaderboard(lab, limit)

    @app.get(
        "/api/queue",
        response_model=QueueState,
        responses=UNAUTHORIZED,
        summary="Running experiments with live progress, then the queue in dispatch order",
    )
    def api_queue(viewer: str = Depends(access)) -> QueueState:
        return queue_state(lab)

    @app.get(
        "/api/noise",
        response_model=NoiseInfo,
        responses=UNAUTHORIZED,
        summary="The baseline's mean and spread on this hardware: the improvement threshold",
    )
    def api_noise(viewer: str = Depends(access)) -> NoiseInfo:
        return NoiseInfo(**lab.noise_info())
