"""What the record says about a finished run: its flags, its verdict and its deltas, decided
from the row, the runner's result, the incumbent, the parent and the noise.

A pure function: `finished_run_fields` reads nothing and writes nothing. The Lab gathers its
inputs (the incumbent's reference mean, the parent's value, the level's noise) and writes its
output in one compare-and-set from `running` (Lab.on_finish). The verdict rule itself is
server.verdicts: an experiment's own run is only screened here (`candidate` at best); the
server then confirms candidates on fresh seeds (server.run_lifecycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.runner import RunResult
from server.diff_review import DEFAULT_LIMITS, EmbeddedLimits, is_seed_only, review_diff
from server.levels import LevelMachine
from server.orientation import gain
from server.record import OK, ExperimentRow, Verdict
from server.seed_checks import SEED_FLAGS, review_seed_code
from server.settings import LabSettings
from server.verdicts import (
    BASELINE,
    FAILED,
    ErrorBudget,
    Noise,
    Reference,
    over_budget_flag,
    over_budget_reason,
    over_budget_tolerance,
    published,
    screen,
)

# Review flags that rule out `improved` on their own: a seed-only change measures luck, and a
# change that embeds a large body of text or data (memorised documents, token tables) is not an
# idea the metric can judge: the val documents are secret, but their text is public.
DISQUALIFYING_FLAGS = ("seed_only", "embedded_data", *SEED_FLAGS)


def review_flags(
    diff_parent: str,
    diff_baseline: str,
    kind: str,
    files: Mapping[str, str],
    baseline_files: Mapping[str, str],
    limits: EmbeddedLimits = DEFAULT_LIMITS,
) -> list[dict[str, Any]]:
    """The review's findings on a planned run's code: the diff review (server.diff_review), the
    seed review of the whole new files (server.seed_checks: seed_source, rng_shift), and
    `seed_only` for an experiment whose only change from its parent is the seed."""
    flags = [f.as_dict() for f in review_diff(diff_baseline, limits)]
    flags += [f.as_dict() for f in review_seed_code(files, baseline_files)]
    if kind == "experiment" and is_seed_only(diff_parent):
        flags.insert(
            0,
            {
                "name": "seed_only",
                "reason": "the only change is the seed: it measures luck, not an idea, and can never count as an improvement",
                "lines": [],
            },
        )
    return flags


def is_disqualified(flags: list[dict[str, Any]]) -> bool:
    """True when a flag rules out `improved` on its own (DISQUALIFYING_FLAGS)."""
    return any(f["name"] in DISQUALIFYING_FLAGS for f in flags)


def contended_threshold(settings: LabSettings, budget_kind: str) -> float:
    """The CPU share below which a CPU run counts as contended."""
    # A CPU-time budget is robust to load by construction: only a starved run is contended.
    if budget_kind == "wall":
        return settings.contended_share
    return settings.contended_share_cpu_budget


def is_contended(
    result: RunResult, device: str, settings: LabSettings, budget_kind: str | None = None
) -> bool:
    """Whether a CPU run got too little of its threads for its clock (`budget_kind`: the run's,
    by default the server's)."""
    if device.startswith("cuda") or result.cpu_share is None:
        return False
    return result.cpu_share < contended_threshold(
        settings, budget_kind or settings.budget_kind or "cpu"
    )


@dataclass(frozen=True)
class FinishedRun:
    """The columns to write when a run finishes, and its verdict (also among the columns)."""

    fields: dict[str, Any]
    verdict: Verdict | None


def finished_run_fields(
    experiment: ExperimentRow,
    result: RunResult,
    *,
    reference: Reference | None,
    parent_value: float | None,
    direction: str,
    noise: Noise,
    budget: ErrorBudget,
    settings: LabSettings,
    machine: LevelMachine,
    finished_at: str,
) -> FinishedRun:
    """Figures, flags, verdict and deltas of a finished run, against the incumbent's reference
    mean (`reference`: the baseline or the best confirmed idea, this run excluded) and its
    parent's value (`direction`: the target's). Only an experiment's run gets a screening verdict; a confirmation run is
    judged with its group (server.run_lifecycle), a baseline run is a measurement."""
    flags = list(experiment.get("flags") or [])
    disqualifications = [f["reason"] for f in flags if f.get("name") in DISQUALIFYING_FLAGS]
    not_comparable = None
    kind = experiment.get("budget_kind") or machine.budget_kind
    if result.status == OK and is_contended(result, machine.device, settings, kind):
        flags.append(
            {
                "name": "contended",
                "reason": f"the run got {result.cpu_share:.0%} of its CPU threads (below "
                f"{contended_threshold(settings, kind):.0%}): on a busy machine a {kind}-clock "
                "budget measures the neighbours",
                "lines": [],
            }
        )
        not_comparable = (
            f"the CPU was contended during the run ({result.cpu_share:.0%} of its threads)"
        )
    over_budget = float(getattr(result, "over_budget_seconds", 0.0) or 0.0)
    budget_seconds = experiment.get("budget_seconds") or machine.base_budget
    if result.status == OK and over_budget > over_budget_tolerance(budget_seconds):
        flags.append(over_budget_flag(over_budget, budget_seconds, kind))
        disqualifications.append(over_budget_reason(over_budget, budget_seconds))
    verdict: Verdict | None
    if experiment["kind"] == "baseline":
        verdict, note = BASELINE, "baseline measurement"
    elif experiment["kind"] == "confirmation":
        confirms = experiment.get("confirms_id")
        verdict, note = None, f"a fresh-seed run of #{confirms}: judged with its group there"
    elif experiment["kind"] != "experiment":  # a drift check or a promotion run
        confirms = experiment.get("confirms_id") or experiment.get("parent_id")
        verdict, note = (
            None,
            (
                f"a re-run of #{confirms} with its seed: see its drift figures"
                if experiment["kind"] == "drift_check"
                else f"an ablation run of #{experiment.get('parent_id')}: see get_ablation"
                if experiment["kind"] == "ablation"
                else "a promotion run: its transfer verdict is the promotion's (get_ladder)"
            ),
        )
    else:
        v = screen(
            status=result.status,
            metric_value=result.metric_value,
            reference=reference,
            noise=noise,
            budget=budget,
            disqualifications=disqualifications,
            not_comparable=not_comparable,
        )
        verdict, note = v.verdict, v.note
    if result.status != OK and experiment["kind"] != "experiment":
        # Not the failure reason itself: it may quote the run's code or output (another
        # agent's text), and the note travels in places that are not labelled as such.
        verdict, note = FAILED, f"the run ended {result.status}: see its failure_reason"
    metrics = dict(result.metrics)
    metrics["verdict_note"] = note
    metrics["phase"] = result.phase
    if result.first_output_seconds is not None:
        metrics["first_output_seconds"] = round(result.first_output_seconds, 3)
    if result.startup_seconds is not None:
        metrics["startup_seconds"] = round(result.startup_seconds, 2)
    if result.prepared_ahead:
        metrics["prepared_ahead"] = True
    val = result.metric_value
    fields = {
        "status": result.status,
        "metric_value": val,
        "verdict": verdict,
        "metrics": metrics,
        "delta_parent": published(gain(val, parent_value, direction))
        if (val is not None and parent_value is not None)
        else None,
        "delta_best": published(reference.gain(val))
        if (val is not None and reference is not None)
        else None,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "total_seconds": result.total_seconds,
        "overhead_seconds": result.overhead_seconds,
        "cpu_seconds": result.cpu_seconds,
        "cpu_share": result.cpu_share,
        "peak_memory_mb": result.peak_memory_mb,
        "isolation": result.isolation,
        "failure_reason": result.failure_reason,
        "log_tail": result.log_tail,
        "hashes": result.hashes,
        "finished_at": finished_at,
        "flags": flags,
        "disqualified": int(bool(disqualifications) or not_comparable is not None),
    }
    return FinishedRun(fields=fields, verdict=verdict)
