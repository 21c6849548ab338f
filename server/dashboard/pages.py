"""The dashboard's HTML: the page shell, the index skeleton and the experiment page.

The index is a skeleton that server/static/dashboard.js fills from the JSON API (chart,
leaderboards, queue); the experiment page is rendered here whole. Every text from the record
is escaped; every script and style comes from server/static/ (no CDN: the page works offline).
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.dashboard.data import SERVER_COLOR, ablation_of, lab_agent_colors
from server.lab import Lab
from server.models import ExperimentDetail
from server.presentation import noise_info

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


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
    noise = noise_info(lab)
    metric = html.escape(lab.target.metric)
    metric_title = html.escape(f"{lab.target.metric_label}; {lab.target.metric_unit}".strip("; "))
    return f"""
<header>
  <h1>autoresearch <span id=title class=muted></span></h1>
  <div class=meta>{html.escape(lab.hardware)} · budget {lab.budget_seconds:g} s ({lab.settings.budget_kind})
    · isolation {html.escape(lab.isolation.value)} · noise k={lab.settings.noise_k:g}, sd {noise["sd"]:.4f}{"" if noise["measured"] else " (assumed)"}
    · <a href="/progress.png">progress.png</a> · <a href="/results.tsv">results.tsv</a>
    · <a href="/patches.zip" title="each confirmed improvement on the path to the best as a patch, to review before adopting">patches.zip</a>
    · <a href="/openapi.json">API schema</a> <span id=live class=muted></span></div>
</header>
<main>
  <section id=chart-section>
    <div id=legend class=legend></div>
    <div id=chart aria-label="progress chart"></div>
  </section>
  <div class=columns>
    <section><h2>Leaderboard</h2><table id=leaderboard class=rows>
      <thead><tr><th>#</th><th>id</th><th>agent</th><th class=num title="{metric_title}">{metric}</th><th class=num>± sd</th><th class=num>runs</th><th class=num title="the sealed holdout: scored only for leaderboard entries">holdout</th><th>description</th></tr></thead>
      <tbody></tbody></table></section>
    <section><h2>Per agent</h2><table id=per-agent class=rows>
      <thead><tr><th>agent</th><th class=num title="{metric_title}">best {metric}</th><th>best</th><th class=num>experiments</th><th class=num>improved</th></tr></thead>
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


def experiment_body(lab: Lab, detail: ExperimentDetail, row: Mapping[str, Any]) -> str:
    """The experiment page: figures, verdict, integrity, diff, log, lineage, papers."""
    e = html.escape
    colors = lab_agent_colors(lab)
    metrics = detail.metrics
    share = f"{detail.cpu_share:.0%}" if detail.cpu_share is not None else None
    memory = row.get("peak_memory_mb")
    figures = [
        (lab.target.metric, _fmt(detail.metric_value, ".6f")),
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
            "evaluation integrity: passed (fixed evaluator and evaluation data)"
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
        value = (
            f"{step['metric_value']:.6f}"
            if step.get("metric_value") is not None
            else step["status"]
        )
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
  {ablation_html(ablation_of(lab, detail.id))}
  <section><h2>Lineage back to the baseline</h2><ol class=lineage>{"".join(lineage)}</ol></section>
  <section><h2>Papers cited</h2><ul>{papers}</ul></section>
</main>"""


def ablation_html(ablation: Mapping[str, Any] | None) -> str:
    """The experiment page's ablation section: each part's contribution and whether they add up."""
    if ablation is None:
        return ""
    e = html.escape
    runs = ablation["runs"]
    final = sum(1 for r in runs if r["status"] not in ("queued", "running"))
    analysis = ablation.get("analysis")
    contributions = {p.get("part"): p for p in (analysis or {}).get("parts", [])}
    rows = []
    for part in ablation["parts"]:
        c = contributions.get(part["index"], {})
        figure = (
            f"{c['mean']:+.4f}" + (f" ± {c['sd']:.4f}" if c.get("sd") is not None else "")
            if c.get("mean") is not None
            else "—"
        )
        effect = c.get("effect", "") if analysis else ("not run" if not part["applies"] else "")
        rows.append(
            f"<tr><td>{part['index']}</td><td><code>{e(part['label'])}</code>"
            f"{'<br><span class=muted>' + e(part['note']) + '</span>' if part.get('note') else ''}</td>"
            f"<td class=num>{e(figure)}</td><td>{e(effect)}</td></tr>"
        )
    if analysis:
        summary = (
            f"<p>total gain (base − full) {_fmt(analysis['total_gain'], '+.4f')}, sum of "
            f"contributions {_fmt(analysis.get('sum_of_contributions'), '+.4f')}: "
            f"<b>{e(analysis['additivity'])}</b></p><p class=muted>{e(analysis['summary'])}</p>"
        )
    else:
        summary = f"<p class=muted>running: {final} of {len(runs)} runs final</p>"
    return (
        f"<section id=ablation><h2>Ablation ({e(ablation['part_kind'])}, "
        f"{ablation['seeds']} paired seeds)</h2>{summary}<table class=rows><thead><tr><th>part</th>"
        "<th>change</th><th class=num title='without the part minus full: positive = the part "
        "helps'>contribution</th><th>effect</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _when(stamp: str | None) -> str | None:
    """2026-01-02T03:04:05.678Z -> 2026-01-02 03:04:05 UTC."""
    if not stamp:
        return None
    return stamp.replace("T", " ")[:19] + " UTC" if stamp.endswith("Z") else stamp


def _verdict_badge(verdict: str | None) -> str:
    if not verdict:
        return ""
    return f'<span class="badge verdict-{html.escape(verdict)}">{html.escape(verdict)}</span>'
