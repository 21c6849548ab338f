"""The in-client view (MCP Apps, `io.modelcontextprotocol/ui`): the leaderboard, the progress
chart and the queue as one `ui://` HTML resource that a client with Apps shows inline.

`get_leaderboard` names it in its `_meta.ui.resourceUri`; a client without Apps ignores that
and reads the tool's structured result and text as before (the view degrades to text). The
page is rendered from the record on every read (a snapshot: self-contained, no network, no
script needed to show it); when the host sends it a later get_leaderboard result
(`ui/notifications/tool-result`), a small script redraws the table from it. Every text an
agent wrote (descriptions, names) is escaped: it is data on this page, never markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from mcp.server.apps import APP_MIME_TYPE, Apps
from mcp.server.mcpserver.resources.types import FunctionResource

from server.dashboard.data import chart_data, queue_state
from server.lab import Lab
from server.untrusted import agent_text, reading_as

VIEW_URI = "ui://autoresearch/research.html"
CHART_POINTS = 400  # the latest experiments drawn (the page stays small with 10^5 in the record)
WIDTH, HEIGHT, PAD = 640, 220, 32

STYLE = """
body{font:13px system-ui,sans-serif;margin:12px;color:#1b1f24;background:#fff}
h2{font-size:14px;margin:14px 0 6px} table{border-collapse:collapse;width:100%}
td,th{padding:3px 6px;border-bottom:1px solid #e4e7eb;text-align:left}
th{color:#57606a;font-weight:600} .num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37} .muted{color:#6e7781} .flag{color:#b35900}
"""

SCRIPT = """
window.addEventListener("message", (event) => {
  const msg = event.data || {};
  if (msg.method !== "ui/notifications/tool-result") return;
  const entries = ((msg.params || {}).structuredContent || {}).entries;
  if (!Array.isArray(entries)) return;
  const body = document.querySelector("#leaderboard tbody");
  body.replaceChildren(...entries.map((e) => {
    const row = document.createElement("tr");
    for (const value of [e.rank, "#" + e.id, e.agent, (e.metric_value ?? NaN).toFixed(4),
                         e.runs, e.confirmed ? "yes" : "", e.description]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.appendChild(cell);
    }
    return row;
  }));
});
"""


def register_view(apps: Apps, lab: Lab, reader: Callable[[], str | None]) -> None:
    """Serve the view at VIEW_URI, rendered from `lab` on every read for `reader()` (the calling
    agent: other agents' descriptions come as untrusted blocks, escaped like all text)."""
    apps.add_resource(
        FunctionResource(
            uri=VIEW_URI,
            name="research-view",
            title="autoresearch: leaderboard, progress and queue",
            description="The leaderboard, the progress chart and the queue, for clients with MCP Apps",
            mime_type=APP_MIME_TYPE,
            meta={"ui": {"csp": {"connectDomains": []}, "prefersBorder": True}},
            fn=lambda: render_view(lab, reader()),
        )
    )


def render_view(lab: Lab, reader: str | None = None) -> str:
    """The whole page: a snapshot of the leaderboard, the chart and the queue."""
    reading_as(reader)
    board = lab.leaderboard(10)
    chart = chart_data(lab)
    queue = queue_state(lab)
    noise = lab.noise_info()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>autoresearch</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h2>{html.escape(chart.title)}</h2>",
        f"<p class='muted'>{html.escape(str(noise.get('rule') or ''))}</p>",
        _chart_svg(chart.model_dump()),
        "<h2>Leaderboard</h2>",
        _leaderboard_table(board, lab.target.metric_label),
        "<h2>Queue</h2>",
        _queue_table(queue.model_dump()),
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "".join(parts)


def _leaderboard_table(board: list[dict[str, Any]], metric: str) -> str:
    head = (
        "<tr><th>#</th><th>id</th><th>agent</th>"
        f"<th class='num'>{html.escape(metric)}</th><th class='num'>runs</th><th>confirmed</th>"
        "<th>description</th></tr>"
    )
    rows = []
    for e in board:
        flag = (
            f" <span class='flag' title='{html.escape(e['holdout_flag'])}'>holdout</span>"
            if e.get("holdout_flag")
            else ""
        )
        rows.append(
            "<tr>"
            f"<td>{e['rank']}</td><td>#{e['id']}</td><td>{html.escape(e['agent'])}</td>"
            f"<td class='num'>{e['metric_value']:.4f}</td><td class='num'>{e['runs']}</td>"
            f"<td class='ok'>{'yes' if e['confirmed'] else ''}</td>"
            f"<td>{html.escape(_text(e['description'], e['agent']))}{flag}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan='7' class='muted'>no result yet</td></tr>"
    return f"<table id='leaderboard'><thead>{head}</thead><tbody>{body}</tbody></table>"


def _queue_table(queue: dict[str, Any]) -> str:
    rows = [
        f"<tr><td>#{r['id']}</td><td>{html.escape(r['agent'])}</td><td>{html.escape(r['message'])}</td>"
        f"<td>{html.escape(_text(r['description'], r['agent']))}</td></tr>"
        for r in queue["running"]
    ] + [
        f"<tr><td>#{q['id']}</td><td>{html.escape(q['agent'])}</td><td>queued, {q['position']}</td>"
        f"<td>{html.escape(_text(q['description'], q['agent']))}</td></tr>"
        for q in queue["queued"][:20]
    ]
    body = "".join(rows) or "<tr><td colspan='4' class='muted'>nothing queued or running</td></tr>"
    return f"<table id='queue'><tbody>{body}</tbody></table>"


def _chart_svg(chart: dict[str, Any]) -> str:
    """The metric of the latest experiments (dots by agent colour) and the running best (a step line)."""
    points = [p for p in chart["points"][-CHART_POINTS:] if p["metric_value"] is not None]
    if not points:
        return "<p class='muted'>no finished experiment yet</p>"
    colors = {a["name"]: a["color"] for a in chart["agents"]}
    first = chart["points"][-CHART_POINTS:][0]["index"]
    last = chart["points"][-1]["index"]
    values = [p["metric_value"] for p in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def x(index: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (index - first) / max(1, last - first)

    def y(value: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - low) / span

    dots = "".join(
        f"<circle cx='{x(p['index']):.1f}' cy='{y(p['metric_value']):.1f}' r='2.5' "
        f"fill='{html.escape(colors.get(p['agent'], '#888'))}'><title>#{p['id']} "
        f"{html.escape(p['agent'])}: {p['metric_value']:.4f}</title></circle>"
        for p in points
    )
    steps = [s for s in chart["best"] if s["index"] >= first]
    path = ""
    if steps:
        coords = []
        for step, following in zip(steps, [*steps[1:], None], strict=True):
            end = following["index"] if following else last
            coords.append(f"{x(step['index']):.1f},{y(step['metric_value']):.1f}")
            coords.append(f"{x(end):.1f},{y(step['metric_value']):.1f}")
        path = f"<polyline fill='none' stroke='#1a7f37' stroke-width='1.5' points='{' '.join(coords)}'/>"
    labels = (
        f"<text x='4' y='{PAD}' font-size='10'>{high:.3f}</text>"
        f"<text x='4' y='{HEIGHT - PAD}' font-size='10'>{low:.3f}</text>"
    )
    return (
        f"<svg id='progress' width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' "
        f"role='img' aria-label='{html.escape(chart['metric'])} per experiment'>{labels}{path}{dots}</svg>"
        f"<script type='application/json' id='chart-meta'>{json.dumps({'points': len(points)})}</script>"
    )


def _text(description: str, author: str) -> str:
    """An agent's description, cut short; another agent's inside its untrusted block."""
    return agent_text(_short(description), author) or ""


def _short(text: str, limit: int = 90) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
