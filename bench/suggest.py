"""Benchmark: agent-free `suggest` against random search, on the real trainer, same run budget.

Two arms, each its own Lab (the real store, scheduler, executor, jail and evaluator; the CPU),
each given the same number of runs: the `suggest` arm asks server.suggest for values (sampler
`auto`: TPE, CMA-ES once enough runs exist), applies the diff it returns to its workspace with
the same apply_patch the MCP tool uses, runs it and waits for the result, which feeds the next
suggestion; the random arm does the same with sampler `random` (uniform / log-uniform over the
same space, the same rounding). Both search the same parameters, on the lab's one paired seed
for every run (the server's seed policy), with runs interleaved and the first of each pair
alternating (suggest 1, random 1, random 2, suggest 2, ...) so that a change in the machine's
load falls on both. One extra run of the
unchanged baseline (its own lab) is the reference. Prints best metric_value after k runs, side by
side, and writes bench/results/suggest.md (and .json).

    python bench/suggest.py [--runs 8] [--budget 10] [--parameters MATRIX_LR EMBED_LR ...]
                            [--eval-windows N] [--markdown OUT] [--json OUT]

One campaign per arm is one draw: with 8 runs the table says what happened on this machine
this time, not which method wins in general.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

if TYPE_CHECKING:
    from server.lab import Lab

RESULTS = ROOT / "bench" / "results"
AGENT = "bench-agent"
DEFAULT_PARAMETERS = ("MATRIX_LR", "EMBED_LR", "HEAD_LR", "WARMDOWN_FRAC")
FINAL = ("ok", "crash", "timeout", "integrity_fail", "cancelled", "interrupted")


def make_lab(home: Path, data_dir: Path, budget: float, eval_windows: int | None) -> Lab:
    """A CPU lab with a CPU-time budget; no baseline repeats, holdout runs or drift checks.
    With no baseline in an arm's lab nothing becomes a candidate (nothing to compare with), so
    no confirmation runs either: every run in an arm is one of its budgeted runs."""
    import shutil

    from server.lab import Lab, LabSettings

    home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data_dir, home / "data")
    settings = LabSettings(
        home=home,
        device="cpu",
        budget_seconds=budget,
        budget_kind="cpu",
        baseline_repeats=0,
        holdout_runs=0,
        drift_check_every=0,
        eval_windows=eval_windows,
        max_experiments_per_agent=None,
        # Every run counts, however busy the shared machine: a CPU-time budget is robust to load
        # (bench/noise.py) and the interleaving puts the load on both arms alike. The server's
        # default marks a starved run `contended` and the study leaves it out.
        contended_share_cpu_budget=0.0,
    )
    return Lab(settings)


def run_and_wait(lab: Lab, description: str, timeout: float = 900.0) -> dict[str, Any]:
    """Queue a run of the agent's workspace and wait for its final row."""
    experiment_id, _reused = lab.submit(AGENT, description)
    deadline = time.monotonic() + timeout
    while True:
        row = lab.experiment(experiment_id)
        if row["status"] in FINAL:
            return dict(row)
        if time.monotonic() > deadline:
            raise TimeoutError(f"#{experiment_id} not final after {timeout:g} s")
        time.sleep(0.5)


class Arm:
    """One search: a lab and the sampler it asks for."""

    def __init__(self, name: str, sampler: str, lab: Lab, parameters: Sequence[str]) -> None:
        from server.suggest import suggester_for

        self.name, self.sampler, self.lab, self.parameters = name, sampler, lab, list(parameters)
        self.suggester = suggester_for(lab)
        self.runs: list[dict[str, Any]] = []

    def step(self, number: int) -> dict[str, Any]:
        """Ask for values, apply the edit to the workspace, run it, record the outcome."""
        from sandbox import patch as patching

        started = time.monotonic()
        suggestion = self.suggester.suggest(AGENT, self.parameters, self.sampler)
        suggest_seconds = time.monotonic() - started
        workspace = self.lab.workspace(AGENT)
        if suggestion.diff:
            patching.apply_patch(workspace, suggestion.diff)
        row = run_and_wait(self.lab, f"{self.name} run {number}: {suggestion.values}")
        run = {
            "run": number,
            "ran_first": self.name == ("suggest" if number % 2 else "random"),
            "experiment_id": row["id"],
            "values": suggestion.values,
            "sampler": suggestion.sampler,
            "suggest_seconds": round(suggest_seconds, 3),
            "status": row["status"],
            "metric_value": row.get("metric_value"),
            "train_seconds": row.get("train_seconds"),
            "total_seconds": row.get("total_seconds"),
        }
        self.runs.append(run)
        return run

    def best_after(self) -> list[float | None]:
        """The best metric_value after each run (None until a run succeeds)."""
        best, out = math.inf, []
        for run in self.runs:
            if run["status"] == "ok" and run["metric_value"] is not None:
                best = min(best, run["metric_value"])
            out.append(None if best == math.inf else best)
        return out


def first_of(run: dict[str, Any]) -> str:
    """Which arm ran first in the pair of this suggest-arm run."""
    return "suggest first" if run["ran_first"] else "random first"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(result: dict[str, Any]) -> str:
    arms = result["arms"]
    lines = [
        "# `suggest` against random search (bench/suggest.py)",
        "",
        "REAL RUNS: every metric_value below is a real training run of trainer/train.py through the",
        "real Lab (store, scheduler, jail, trusted evaluator), on this machine's CPU.",
        "",
        "## Conditions",
        "",
        f"- runs per arm: {result['runs']}, interleaved, alternating which arm goes first "
        "(suggest 1, random 1, random 2, suggest 2, suggest 3, ...)",
        f"- budget: {result['budget']:g} CPU-seconds per run, eval windows: "
        f"{result['eval_windows'] or 'all'}",
        f"- parameters searched: {', '.join(result['parameters'])} (the rest at the baseline)",
        f"- space: {'; '.join(f'{k}: {v}' for k, v in result['space'].items())}",
        "- seed: the lab's one paired seed for every run in both arms (the server's policy); "
        "TPE's random start-up draws are the random arm's first draws (same sampler seed), so "
        "the first runs of both arms run the same values: their gap is run-to-run noise",
        "- every run counts (no `contended` exclusion: CPU-time budget, interleaved arms)",
        "- suggest arm: sampler `auto` (TPE with 4 random start-up trials, constant liar; "
        "CMA-ES from 12 completed trials); random arm: sampler `random`, same space and rounding",
        f"- baseline (unchanged train.py, one run): metric_value {fmt(result['baseline_metric_value'])}",
        f"- machine: {result['machine']}; started {result['started']}, "
        f"{result['seconds']:.0f} s in all",
        "",
        "## Best metric_value after k runs (lower is better)",
        "",
        "| k | suggest | random |",
        "|---|---|---|",
    ]
    for k, (a, b) in enumerate(
        zip(arms["suggest"]["best_after"], arms["random"]["best_after"], strict=True), 1
    ):
        lines.append(f"| {k} | {fmt(a)} | {fmt(b)} |")
    lines += ["", "## Every run", "", "| arm | k | sampler | status | metric_value | values |"]
    lines.append("|---|---|---|---|---|---|")
    for name in ("suggest", "random"):
        for run in arms[name]["runs"]:
            values = ", ".join(f"{k}={v}" for k, v in run["values"].items())
            lines.append(
                f"| {name} | {run['run']} | {run['sampler']} | {run['status']} | "
                f"{fmt(run['metric_value'])} | {values} |"
            )
    same = [
        (a, b)
        for a, b in zip(arms["suggest"]["runs"], arms["random"]["runs"], strict=True)
        if a["values"] == b["values"]
        and a["metric_value"] is not None
        and b["metric_value"] is not None
    ]
    if same:
        gaps = ", ".join(
            f"k={a['run']}: {abs(a['metric_value'] - b['metric_value']):.4f} "
            f"({'order unknown' if 'ran_first' not in a else first_of(a)}, "
            f"{'suggest' if a['metric_value'] > b['metric_value'] else 'random'} worse)"
            for a, b in same
        )
        lines += [
            "",
            "## Run-to-run noise",
            "",
            f"Runs with the same values in both arms (same code, same seed): |gap| {gaps}.",
            "A gap between the arms smaller than these says nothing.",
        ]
    lines += [
        "",
        "One campaign per arm is one draw: the table says what happened here, this time; it",
        "is not a measured win rate of either method.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--budget", type=float, default=10.0, help="CPU-seconds per run")
    parser.add_argument("--parameters", nargs="+", default=list(DEFAULT_PARAMETERS))
    parser.add_argument("--eval-windows", type=int, default=32, help="0: the whole val set")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "suggest.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw result here")
    args = parser.parse_args(argv)

    from trainer.prepare import prepare

    started_wall, started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-suggest-"))
    data_dir = work / "data"
    prepare(data_dir, quiet=True)
    labs = {
        name: make_lab(work / name, data_dir, args.budget, args.eval_windows or None)
        for name in ("baseline", "suggest", "random")
    }
    try:
        for lab in labs.values():
            lab.scheduler.start()
        baseline = run_and_wait(labs["baseline"], "the unchanged baseline")
        print(
            f"baseline: {baseline['status']} metric_value {fmt(baseline.get('metric_value'))}",
            flush=True,
        )
        arms = {
            "suggest": Arm("suggest", "auto", labs["suggest"], args.parameters),
            "random": Arm("random", "random", labs["random"], args.parameters),
        }
        for number in range(1, args.runs + 1):
            # Alternate which arm runs first: a run's place in the pair must not favour an arm.
            order = ("suggest", "random") if number % 2 else ("random", "suggest")
            for arm in (arms[name] for name in order):
                run = arm.step(number)
                print(
                    f"{arm.name} {number}/{args.runs}: #{run['experiment_id']} {run['status']} "
                    f"metric_value {fmt(run['metric_value'])} best {fmt(arm.best_after()[-1])} "
                    f"({run['sampler']}, suggest {run['suggest_seconds']} s) {run['values']}",
                    flush=True,
                )
        space = {n: arms["suggest"].suggester.params[n].describe() for n in args.parameters}
    finally:
        for lab in labs.values():
            lab.close()
    result = {
        "runs": args.runs,
        "budget": args.budget,
        "eval_windows": args.eval_windows,
        "parameters": args.parameters,
        "space": space,
        "baseline_metric_value": baseline.get("metric_value"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "started": started_wall,
        "seconds": time.monotonic() - started,
        "arms": {
            name: {"runs": arm.runs, "best_after": arm.best_after()} for name, arm in arms.items()
        },
    }
    print()
    print(f"{'k':>3} {'suggest':>9} {'random':>9}")
    for k, (a, b) in enumerate(
        zip(
            result["arms"]["suggest"]["best_after"],
            result["arms"]["random"]["best_after"],
            strict=True,
        ),
        1,
    ):
        print(f"{k:>3} {fmt(a):>9} {fmt(b):>9}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    args.markdown.write_text(markdown(result))
    print(f"wrote {args.markdown}" + (f" and {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
