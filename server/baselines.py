"""The baseline and the noise: the shipped code measured several times per hardware, budget and
level with the server's paired seeds, and the run-to-run spread every verdict is judged against,
pooled over every group of repeated runs of one code (the baseline's, each candidate's fresh-seed
confirmations).

Only comparable runs count: a run flagged `contended` is neither a reference nor part of the
noise (the baseline is re-measured instead), and no agent's code can move the noise
far from what the server's own code shows (each group's variance is clipped to
[1/GROUP_CLIP, GROUP_CLIP] x the baseline's).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from server.record import OK, QUEUED, RUNNING, is_server_run
from server.store import Store
from server.verdicts import Noise, mean_sd

# Runs measured under conditions no other run shares: never a reference, never noise. (A run
# that ended past its budget is the code's doing, not the machine's: an experiment's run is
# disqualified, a candidate's fresh-seed run fails it; the baseline's stops training in time,
# so its late export changes nothing it is compared on.)
NOT_COMPARABLE_FLAGS = ("contended",)
# Runs of code that cannot count (a seed from elsewhere, seed-insensitive results): their spread
# is not the noise of honest code (a program that ignores the seed has none at all).
NOT_NOISE_FLAGS = (
    "over_budget",
    "seed_only",
    "seed_source",
    "rng_shift",
    "seed_ignored",
    "embedded_data",
)
GROUP_CLIP = 4.0


def is_comparable(row: Mapping[str, Any]) -> bool:
    """A successful run whose conditions match the others' (no contended CPU, no overtime)."""
    return not any(f.get("name") in NOT_COMPARABLE_FLAGS for f in row.get("flags") or [])


def _counts_as_noise(row: Mapping[str, Any]) -> bool:
    """A comparable server run (of a candidate, or a holdout run) of code that can count (neither
    it nor the experiment it confirms is disqualified): the spread of code that ignores the seed
    is not the noise of honest code, and no agent picks which groups the noise is pooled over."""
    return (
        is_comparable(row)
        and is_server_run(row)  # an agent's confirm_experiment runs: code and seeds it chose
        and not row.get("original_disqualified")
        and not any(f.get("name") in NOT_NOISE_FLAGS for f in row.get("flags") or [])
    )


def _clipped(group: list[float], baseline_variance: float | None) -> list[float]:
    """The group itself, or rescaled around its mean so its variance lies within the clip."""
    if baseline_variance is None or baseline_variance <= 0 or len(group) < 2:
        return group
    variance = statistics.variance(group)
    low, high = baseline_variance / GROUP_CLIP, baseline_variance * GROUP_CLIP
    if low <= variance <= high:
        return group
    target = min(max(variance, low), high)
    mean = statistics.fmean(group)
    if variance == 0:  # identical values: spread them to the floor, keeping the mean
        step = (target**0.5) * (len(group) - 1) ** 0.5 / (len(group) ** 0.5)
        return [mean + (step if k % 2 else -step) for k in range(len(group))]
    scale = (target / variance) ** 0.5
    return [mean + (v - mean) * scale for v in group]


def noise(
    store: Store, *, hardware: str, scale: str, budget_kind: str, budget_seconds: float
) -> Noise:
    """The noise of one setting: pooled over the baseline's runs and every confirmation group."""
    rows = store.repeated_runs(
        hardware=hardware, budget_seconds=budget_seconds, budget_kind=budget_kind, scale=scale
    )
    baseline = [r for r in rows if r["kind"] == "baseline" and is_comparable(r)]
    groups: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "confirmation" and _counts_as_noise(row):
            groups[row["confirms_id"]].append(row)
    baseline_values = [r["metric_value"] for r in baseline]
    baseline_variance = statistics.variance(baseline_values) if len(baseline_values) >= 2 else None
    value_groups: list[list[float]] = [baseline_values]
    id_groups: list[list[int]] = [[r["id"] for r in baseline]]
    for members in groups.values():
        if len(members) >= 2:
            value_groups.append(_clipped([r["metric_value"] for r in members], baseline_variance))
            id_groups.append([r["id"] for r in members])
    return Noise.pooled(
        value_groups, baseline=baseline_values, ids=id_groups, assumed_sd=store.assumed_sd
    )


def comparable_baseline_runs(
    store: Store, *, hardware: str, scale: str, budget_kind: str, budget_seconds: float
) -> list[dict[str, Any]]:
    """The baseline's successful, comparable runs of one setting, oldest first."""
    return [
        r
        for r in store.repeated_runs(
            hardware=hardware, budget_seconds=budget_seconds, budget_kind=budget_kind, scale=scale
        )
        if r["kind"] == "baseline" and is_comparable(r)
    ]


def update_baseline_stats(
    store: Store, *, hardware: str, scale: str, budget_kind: str, budget_seconds: float
) -> None:
    """Recompute the stored mean and sd from the comparable baseline runs of one setting."""
    rows = comparable_baseline_runs(
        store,
        hardware=hardware,
        scale=scale,
        budget_kind=budget_kind,
        budget_seconds=budget_seconds,
    )
    if not rows:
        return
    values = [r["metric_value"] for r in rows]
    mean, sd = mean_sd(values)
    store.set_baseline(
        hardware=hardware,
        scale=scale,
        budget_kind=budget_kind,
        budget_seconds=budget_seconds,
        values=values,
        experiment_ids=[r["id"] for r in rows],
        mean=mean,
        sd=sd,
    )


def live_or_ok_baseline_runs(
    store: Store, *, hardware: str, scale: str, budget_seconds: float
) -> list[dict[str, Any]]:
    """The baseline runs of one setting that succeeded comparably or may still succeed."""
    return [
        r
        for r in store.list_experiments(
            kind="baseline",
            order="oldest",
            limit=1000,
            columns=["id", "status", "hardware", "budget_seconds", "scale", "flags", "seed"],
        )
        if r["hardware"] == hardware
        and r["budget_seconds"] == budget_seconds
        and (r["scale"] or "S") == scale
        and (r["status"] in (QUEUED, RUNNING) or (r["status"] == OK and is_comparable(r)))
    ]


def baseline_run_plans(
    template: dict[str, Any], *, existing_seeds: Sequence[int], repeats: int, seed: int, scale: str
) -> list[dict[str, Any]]:
    """The baseline runs with the paired seeds seed .. seed + repeats - 1 that no comparable (or
    live) run has yet: a run that was not comparable is re-measured with its own seed."""
    have = set(existing_seeds)
    missing = [seed + n for n in range(repeats) if seed + n not in have]
    planned = []
    for run_seed in missing:
        description = (
            f"baseline measurement {run_seed - seed + 1}/{repeats}"
            + (f" at level {scale}" if scale != "S" else "")
            + f" (server-owned seed {run_seed})"
        )
        planned.append({**template, "seed": run_seed, "description": description})
    return planned
