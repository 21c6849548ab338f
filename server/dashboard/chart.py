"""The progress chart as a PNG (progress.png): the same picture as the dashboard page draws.

matplotlib's Agg canvas on a Figure of its own (no pyplot, no global state across threads);
improvement labels are placed by the same no-overlap rule as the page's chart in
server/static/dashboard.js.
"""

from __future__ import annotations

import io
import math
from typing import Any

from server.dashboard.data import SERVER_COLOR, ChartData
from server.models import NoiseInfo

LABEL_CHARS = 44  # improvement labels on the chart are cut here (the tooltip has the rest)


def y_range(values: list[float], noise: NoiseInfo) -> tuple[float, float]:
    """The range to draw (values oriented lower = better): all values, unless a few outliers
    (bad ones, at the top) would squash the rest."""
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
    from matplotlib.ticker import FuncFormatter

    colors = {a.name: a.color for a in data.agents}
    maximize = data.direction == "maximize"
    data = _oriented(data)  # drawn lower = better; a maximized metric's axis is turned over below
    fig = Figure(figsize=(16, 8), dpi=100)  # no pyplot: no global state across threads
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [p.metric_value for p in data.points if p.metric_value is not None]
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
        plain = [p for p in mine if p.metric_value is not None and p.verdict != "improved"]
        xs = [p.index for p in plain]
        ys = [min(p.metric_value or 0.0, top) for p in plain]
        if xs:
            ax.scatter(xs, ys, s=14, color=color, alpha=0.35, lw=0)
        wins = [p for p in mine if p.verdict == "improved" and p.metric_value is not None]
        if wins:
            ax.scatter(
                [p.index for p in wins],
                [p.metric_value or 0.0 for p in wins],
                s=60,
                color=color,
                edgecolors="black",
                linewidths=0.8,
                zorder=4,
            )
        failed = [p for p in mine if p.metric_value is None]
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
        steps_y = [b.metric_value for b in data.best] + [data.best[-1].metric_value]
        ax.step(steps_x, steps_y, where="post", color="#222222", lw=1.8, label="running best")
    ax.scatter([], [], s=60, color="white", edgecolors="black", label="improved (labelled)")
    edge = "bottom" if maximize else "top"
    ax.scatter([], [], marker="x", s=24, color="black", label=f"failed ({edge} edge)")
    ax.set_xlabel("Experiment #")
    ax.set_ylabel(f"{data.metric} ({'higher' if maximize else 'lower'} is better)")
    if maximize:  # values were drawn negated: show them as they are, the best at the top
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{-y:g}"))
        ax.invert_yaxis()
    ax.set_title(f"autoresearch progress: {data.title}")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    _label_improvements(ax, data, colors)  # after the layout: labels are placed in pixels
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _oriented(data: ChartData) -> ChartData:
    """The chart's figures with a maximized metric negated, so that smaller = better throughout."""
    if data.direction != "maximize":
        return data
    noise = data.noise
    return data.model_copy(
        update={
            "points": [
                p.model_copy(update={"metric_value": -p.metric_value})
                if p.metric_value is not None
                else p
                for p in data.points
            ],
            "best": [b.model_copy(update={"metric_value": -b.metric_value}) for b in data.best],
            "noise": noise.model_copy(
                update={
                    "baseline_mean": None if noise.baseline_mean is None else -noise.baseline_mean
                }
            ),
        }
    )


def _label_improvements(ax: Any, data: ChartData, colors: dict[str, str]) -> None:
    """Label improvements with their description, the best first, leaving out any that would
    overlap a label already placed (the same rule as the page's chart)."""
    wins = sorted(
        (p for p in data.points if p.verdict == "improved" and p.metric_value is not None),
        key=lambda p: (p.metric_value, p.index),
    )
    width = ax.figure.bbox.width
    height = ax.figure.bbox.height
    angle = math.radians(30)
    placed: list[tuple[float, float, float, float]] = []
    for p in wins:
        text = _short(p.description)
        cx, cy = ax.transData.transform((p.index, p.metric_value))
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
                (p.index, p.metric_value),
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
