"""Reviewable wins: each confirmed improvement on the path to the current best as its own patch.

`export_patches(store, DIR)` finds the best confirmed experiment (verdict `improved`, the lowest
fresh-seed mean), follows its parents back to the baseline and keeps the confirmed improvements
on that path, oldest first. Each becomes `NNN-experiment-ID.patch`: a git-format-patch-like file whose
header gives the description, the author, the gain vs the previous improvement and vs the
baseline (fresh-seed means), the confirmation runs, the sealed holdout where scored and the
experiment's results.tsv lines, then the diff from the previous improvement's code (or the
baseline's). Applied in order with `git apply` to the baseline they rebuild the best code
exactly. `README.md` indexes them. With `git=True`, DIR/repo is a git repository: the baseline
commit, then one commit per improvement (branch `improvement/NNN-experiment-ID` at each, `improvements`
at the best), with a fixed committer and dates so the same record gives the same commits.

What agents wrote (descriptions) is data: whitespace collapsed onto one line, every header line
starts with fixed text, no file or branch name is made of it (a slug of a description carried an
agent's words outside the untrusted block that agents read the index in), and git runs without a
shell. In the index, descriptions come after the table, each in its own block for an agent.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.diffs import unified_diff as bounded_unified_diff
from server.orientation import MINIMIZE, better_word, gain, loss
from server.record import IMPROVED
from server.standings import confirmation_stats
from server.store import Store
from server.untrusted import agent_text

SLUG_CHARS = 40
GIT_TIMEOUT_SECONDS = 30
FIXED_DATE = "2000-01-01T00:00:00Z"  # every commit's date: the same record, the same commits
_COMMITTER = "autoresearch-mcp"
_COMMITTER_EMAIL = "export@autoresearch-mcp.invalid"


class ExportRefused(ValueError):
    """An export that cannot be written; the message says what to do instead."""


@dataclass
class Improvement:
    """One confirmed improvement on the path to the best, with what its patch file says."""

    number: int
    experiment: dict[str, Any]
    previous_id: int | None  # the improvement before it on the path (None: the baseline)
    mean: float | None
    sd: float | None
    runs: list[tuple[int, float]]
    gain_vs_previous: float | None
    gain_vs_baseline: float | None
    holdout: float | None
    holdout_gain: float | None
    tsv_lines: list[str]
    metric: str = "metric"  # the target's metric name and direction (the record's binding)
    direction: str = MINIMIZE
    unconfirmed_steps: list[int] = field(default_factory=list)
    filename: str = ""
    patch: str = ""


def one_line(text: Any) -> str:
    """Agent text on one line, control characters dropped."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text or "")).split())


def slug(text: str) -> str:
    """A file-name-safe slug of a description: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:SLUG_CHARS].strip("-") or "change"


def file_diff(name: str, old: str, new: str) -> str:
    """A git-style diff of one file (empty when equal), exact for `git apply`: bounded in cost
    (server.diffs) when both sides end with a newline, difflib with the no-newline marker else."""
    if old == new:
        return ""
    header = f"diff --git a/{name} b/{name}\n"
    if (not old or old.endswith("\n")) and (not new or new.endswith("\n")):
        body = bounded_unified_diff({name: old}, {name: new}, max_chars=10**9)
        body = body[body.index(f"--- a/{name}\n") :]
        return header + body
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        f"a/{name}",
        f"b/{name}",
    )
    out = [header]
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def code_diff(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    return "".join(
        file_diff(name, old.get(name, ""), new.get(name, ""))
        for name in sorted(set(old) | set(new))
    )


def _baseline_code(store: Store, baseline_files: Mapping[str, str] | None) -> dict[str, str]:
    rows = store.list_experiments(kind="baseline", limit=1, order="recent")
    if rows:
        code = store.get_experiment(rows[0]["id"]).get("code")
        if isinstance(code, dict) and code:
            return dict(code)
    if baseline_files:
        return dict(baseline_files)
    raise ExportRefused("the record holds no baseline run; run `autoresearch-mcp baseline` first")


def _mean_of(
    store: Store, experiment: Mapping[str, Any]
) -> tuple[float | None, dict[str, Any] | None]:
    stats = confirmation_stats(store, experiment["id"])
    return (stats["mean"] if stats else experiment.get("metric_value")), stats


def path_to_best(store: Store) -> list[dict[str, Any]]:
    """The confirmed improvements from the baseline to the best confirmed one, oldest first."""
    confirmed = [store.get_experiment(i) for i in store.experiments_with_verdict_anywhere(IMPROVED)]
    scored = [(m, e["id"], e) for e in confirmed if (m := _mean_of(store, e)[0]) is not None]
    if not scored:
        return []
    best = min(scored, key=lambda item: (loss(item[0], store.direction), item[1]))[2]
    chain = store.lineage(best["id"])
    return [
        dict(store.get_experiment(row["id"]))
        for row in reversed(chain)
        if row.get("verdict") == IMPROVED
    ]


def _baseline_stats(
    store: Store, experiment: Mapping[str, Any]
) -> tuple[float | None, float | None]:
    """(val mean, holdout mean) of the baseline on the experiment's own setting."""
    base = store.baseline(
        hardware=experiment.get("hardware") or "",
        scale=experiment.get("scale") or "S",
        budget_kind=experiment.get("budget_kind") or "wall",
        budget_seconds=experiment.get("budget_seconds") or 0.0,
    )
    if not base or not base["values"]:
        return None, None
    holdout = list(store.sealed.holdout_values(base["experiment_ids"]).values())
    return float(base["mean"]), (statistics.fmean(holdout) if holdout else None)


def plan_export(
    store: Store, baseline_files: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[Improvement]]:
    """The baseline's code and every improvement on the path to the best with its patch text."""
    path = path_to_best(store)
    baseline = _baseline_code(store, baseline_files)
    tsv = store.export_results_tsv().splitlines()
    improvements: list[Improvement] = []
    previous_code, previous_mean, previous_id = baseline, None, None
    for number, experiment in enumerate(path, start=1):
        mean, stats = _mean_of(store, experiment)
        base_mean, base_holdout = _baseline_stats(store, experiment)
        if previous_id is None:
            previous_mean = base_mean
        holdout_values = list(
            store.sealed.holdout_values(stats["run_ids"] if stats else []).values()
        )
        holdout = statistics.fmean(holdout_values) if holdout_values else None
        commit = (experiment.get("code_hash") or "")[:7]
        chain = store.lineage(experiment["id"])
        steps = []
        for row in chain[1:]:
            if row["id"] == previous_id:
                break
            steps.append(row["id"])
        improvement = Improvement(
            number=number,
            experiment=dict(experiment),
            previous_id=previous_id,
            mean=mean,
            sd=stats["sd"] if stats else None,
            runs=list(zip(stats["run_ids"], stats["values"], strict=True)) if stats else [],
            gain_vs_previous=None
            if previous_mean is None or mean is None
            else gain(mean, previous_mean, store.direction),
            gain_vs_baseline=None
            if base_mean is None or mean is None
            else gain(mean, base_mean, store.direction),
            holdout=holdout,
            holdout_gain=None
            if holdout is None or base_holdout is None
            else gain(holdout, base_holdout, store.direction),
            metric=store.metric_name,
            direction=store.direction,
            tsv_lines=[line for line in tsv[1:] if commit and line.startswith(commit + "\t")],
            unconfirmed_steps=list(reversed(steps)),
        )
        improvement.filename = f"{number:03d}-experiment-{int(experiment['id'])}.patch"
        # A row without its code (a hand-made or damaged record) gets an empty diff, not a crash.
        code = experiment.get("code") if isinstance(experiment.get("code"), dict) else None
        diff = code_diff(previous_code, code) if code is not None else ""
        improvement.patch = _patch_text(improvement, len(path), diff)
        improvements.append(improvement)
        previous_code = code if code is not None else previous_code
        previous_mean, previous_id = mean, experiment["id"]
    return baseline, improvements


def _figure(value: float | None, spec: str = "+.4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _message(item: Improvement) -> list[str]:
    """The commit message's body lines (each starts with fixed text; agent text only after it)."""
    e = item.experiment
    previous = f"#{item.previous_id}" if item.previous_id else "the baseline"
    lines = [
        f"Experiment: #{e['id']} by agent {one_line(e['agent'])} (applies on top of {previous})",
        f"Description: {one_line(e['description'])}",
        f"Confirmed {item.metric}: {_figure(item.mean, '.4f')}"
        + (f" +- {item.sd:.4f}" if item.sd is not None else "")
        + f" over {len(item.runs)} fresh-seed run(s)",
        f"Gain vs {previous}: {_figure(item.gain_vs_previous)} {item.metric} "
        f"({better_word(item.direction)} is better: positive = better)",
        f"Gain vs the baseline: {_figure(item.gain_vs_baseline)} {item.metric}",
        "Confirmation runs: "
        + (", ".join(f"#{i} {v:.4f}" for i, v in item.runs) or "none recorded"),
        "Sealed holdout: "
        + (
            f"{item.holdout:.4f} (gain vs the baseline's holdout {_figure(item.holdout_gain)})"
            if item.holdout is not None
            else "not scored"
        ),
    ]
    if item.unconfirmed_steps:
        lines.append(
            "Includes unconfirmed steps in between: "
            + ", ".join(f"#{i}" for i in item.unconfirmed_steps)
        )
    lines.append(f"results.tsv (commit {item.metric} memory_gb status description):")
    lines += [f"    {one_line(line.replace(chr(9), ' | '))}" for line in item.tsv_lines] or [
        "    (none)"
    ]
    return lines


def _patch_text(item: Improvement, total: int, diff: str) -> str:
    e = item.experiment
    head = [
        f"From {(e.get('code_hash') or '0' * 40)[:40]} Mon Sep 17 00:00:00 2001",
        f"From: {one_line(e['agent'])} <agent@autoresearch-mcp.invalid>",
        f"Date: {one_line(e.get('finished_at') or FIXED_DATE)}",
        f"Subject: [PATCH {item.number}/{total}] {one_line(e['description'])}",
        "",
        *_message(item),
        "---",
        "",
    ]
    return "\n".join(head) + diff + "-- \nautoresearch-mcp export\n"


def _index(improvements: Sequence[Improvement]) -> str:
    def cell(text: str) -> str:
        return one_line(text).replace("|", "\\|")

    lines = [
        "# Confirmed improvements on the path to the current best",
        "",
        "Apply in order to the baseline's code (`git apply 001-*.patch`, then the next); the last",
        "one gives the best confirmed code. Gains are in the target's metric (positive = better),",
        "from the server's fresh-seed confirmation means.",
        "",
        "| # | patch | experiment | agent | gain vs previous | gain vs baseline | holdout |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in improvements:
        e = item.experiment
        lines.append(
            f"| {item.number} | [{item.filename}]({item.filename}) | #{e['id']} | {cell(e['agent'])} "
            f"| {_figure(item.gain_vs_previous)} | {_figure(item.gain_vs_baseline)} "
            f"| {_figure(item.holdout, '.4f')} |"
        )
    if not improvements:
        lines.append("| - | - | - | - | - | - | no confirmed improvement yet |")
    else:  # after the table: an agent gets each one in a block, which a table cell cannot hold
        lines += ["", "Descriptions, as their agents wrote them:", ""]
        lines += [
            f"- #{item.experiment['id']}: "
            + (agent_text(one_line(item.experiment["description"]), item.experiment["agent"]) or "")
            for item in improvements
        ]
    return "\n".join(lines) + "\n"


def patches_index(store: Store, baseline_files: Mapping[str, str] | None = None) -> str:
    """The index (README.md) of the patches export, as the autoresearch://patches resource shows it."""
    return _index(plan_export(store, baseline_files)[1])


def export_patches(
    store: Store,
    out_dir: Path,
    *,
    baseline_files: Mapping[str, str] | None = None,
    git: bool = False,
) -> list[Path]:
    """Write the patches and README.md into `out_dir` (new or empty); with `git`, DIR/repo too.
    Returns the files written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportRefused(
            f"{out_dir} exists and is not an empty folder; choose a new or empty one"
        )
    baseline, improvements = plan_export(store, baseline_files)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in improvements:
        path = out_dir / item.filename
        path.write_text(item.patch)
        written.append(path)
    (out_dir / "README.md").write_text(_index(improvements))
    written.append(out_dir / "README.md")
    if git:
        _git_repository(out_dir / "repo", baseline, improvements)
    return written


def patches_zip(store: Store, baseline_files: Mapping[str, str] | None = None) -> bytes:
    """The same patches and README.md as a zip (the dashboard's download), built in memory."""
    _, improvements = plan_export(store, baseline_files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in improvements:
            archive.writestr(
                zipfile.ZipInfo(f"patches/{item.filename}", (2000, 1, 1, 0, 0, 0)), item.patch
            )
        archive.writestr(
            zipfile.ZipInfo("patches/README.md", (2000, 1, 1, 0, 0, 0)), _index(improvements)
        )
    return buffer.getvalue()


def _git(repo: Path, *args: str, stdin: str | None = None, env: Mapping[str, str]) -> None:
    subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args],
        cwd=repo,
        input=stdin,
        text=True,
        capture_output=True,
        check=True,
        timeout=GIT_TIMEOUT_SECONDS,
        env=dict(env),
    )


def _git_repository(
    repo: Path, baseline: Mapping[str, str], improvements: Sequence[Improvement]
) -> None:
    """The baseline commit, then one commit per improvement, each with its own branch."""
    repo.mkdir()
    with tempfile.TemporaryDirectory(prefix="ar-export-home-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_COMMITTER_NAME": _COMMITTER,
            "GIT_COMMITTER_EMAIL": _COMMITTER_EMAIL,
            "GIT_COMMITTER_DATE": FIXED_DATE,
            "GIT_AUTHOR_DATE": FIXED_DATE,
        }
        _git(repo, "init", "-q", "-b", "improvements", env=env)

        def commit(code: Mapping[str, str], message: str, author: str) -> None:
            for name, text in code.items():
                target = repo / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            _git(repo, "add", "--", *sorted(code), env=env)
            _git(
                repo,
                "commit",
                "-q",
                "--allow-empty",
                "-F",
                "-",
                stdin=message,
                env={
                    **env,
                    "GIT_AUTHOR_NAME": author,
                    "GIT_AUTHOR_EMAIL": f"{slug(author)}@autoresearch-mcp.invalid",
                },
            )

        commit(baseline, "baseline: the research target as shipped\n", _COMMITTER)
        _git(repo, "branch", "baseline", env=env)
        for item in improvements:
            subject = f"{item.number:03d} {one_line(item.experiment['description'])}"
            author = re.sub(r"[^A-Za-z0-9_.-]+", "-", one_line(item.experiment["agent"])) or "agent"
            message = subject + "\n\n" + "\n".join(_message(item)) + "\n"
            commit(item.experiment["code"], message, author)
            _git(repo, "branch", f"improvement/{item.filename.removesuffix('.patch')}", env=env)


def export_command(
    store: Store, out_dir: Path, *, git: bool, baseline_files: Mapping[str, str]
) -> int:
    """`autoresearch-mcp export --patches DIR [--git]`: write them and say what was written.
    `baseline_files`: the target's files as shipped (used when the record holds no baseline run)."""
    try:
        written = export_patches(store, out_dir, baseline_files=baseline_files, git=git)
    except (ExportRefused, subprocess.CalledProcessError) as exc:
        print(f"export --patches: {exc}", file=sys.stderr)
        return 1
    patches = [path for path in written if path.suffix == ".patch"]
    print(
        f"wrote {len(patches)} patch(es) and README.md to {out_dir}"
        + (" (git: repo/)" if git else "")
    )
    return 0
