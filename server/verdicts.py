"""Noise-aware verdicts: is a result better than the best by more than the measured noise?

Single-run comparisons are not research: the server measures the baseline several times
per hardware fingerprint, keeps the spread, and says `improved` only beyond k x sd.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.record import BASELINE, FAILED, IMPROVED, WITHIN_NOISE, WORSE
from server.record import Verdict as VerdictValue

# Used until the baseline has been measured twice on this hardware: the seed-to-seed sd of
# val_bpb seen on a 2-core CPU at 60 s (bench/results/README.md). Replaced by the measured value.
ASSUMED_SD = 0.02
MIN_SD = 1e-4  # a perfectly deterministic machine still gets a non-zero threshold


@dataclass(frozen=True)
class Noise:
    """The spread of the baseline's val_bpb on one hardware fingerprint and budget."""

    sd: float
    runs: int
    mean: float | None
    measured: bool

    @classmethod
    def from_values(cls, values: Sequence[float]) -> Noise:
        if len(values) >= 2:
            return cls(
                sd=max(statistics.stdev(values), MIN_SD),
                runs=len(values),
                mean=statistics.fmean(values),
                measured=True,
            )
        return cls(
            sd=ASSUMED_SD, runs=len(values), mean=values[0] if values else None, measured=False
        )


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictValue
    note: str
    threshold: float


PUBLISHED_DIGITS = (
    5  # val_bpb reaches agents at 4 decimals; derived figures (deltas, means, sd) at 5
)


def published(value: float | None, digits: int = PUBLISHED_DIGITS) -> float | None:
    """A derived figure as the server publishes it: rounded, never a raw float sum's tail digits."""
    return None if value is None else round(float(value), digits)


def over_budget_tolerance(budget_seconds: float) -> float:
    """How far past its budget a run may end and still count: max(1 s, 2% of the budget).

    The runner's clock starts with the process and stops when it exits, so an honest train.py
    that stops training in time and then exports (the baseline keeps 3 s for that, at most a
    quarter of the budget) can end a little late on a loaded machine. What buys a better
    number is training seconds beyond that: a run past the tolerance is flagged `over_budget`.
    """
    return max(1.0, 0.02 * budget_seconds)


def over_budget_reason(seconds: float, budget_seconds: float) -> str:
    """Why a run that trained into the grace period cannot count as an improvement."""
    return (
        f"training ran {seconds:.1f} s past its {budget_seconds:g} s budget (into the grace period "
        "before the kill): the extra time buys a better number an honest run could not have"
    )


def over_budget_flag(seconds: float, budget_seconds: float, budget_kind: str) -> dict[str, Any]:
    """The `over_budget` flag stored on such a run: like `contended`, it rules out `improved`."""
    return {
        "name": "over_budget",
        "seconds": round(seconds, 2),
        "reason": f"train.py kept training {seconds:.1f} s ({budget_kind} clock) past AR_BUDGET_SECONDS="
        f"{budget_seconds:g}; stop by the budget (the baseline's time check does) so the result counts",
        "lines": [],
    }


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def decide(
    *,
    status: str,
    val_bpb: float | None,
    best_bpb: float | None,
    noise: Noise,
    k: float,
    disqualifications: Sequence[str] = (),
) -> Verdict:
    """The verdict for one finished run against the best before it.

    improvement = best - val_bpb (positive = better). `improved` needs improvement > k x sd and no
    disqualification (a seed-only change, a contended CPU, training past the budget into the
    grace period); within k x sd it is `within_noise` with the suggestion to confirm. Every
    note of a disqualified run says why it cannot count.
    """
    ruled_out = (
        f"; it could not count as an improvement anyway: {'; '.join(disqualifications)}"
        if disqualifications
        else ""
    )
    threshold = k * noise.sd
    basis = f"k={k:g} x sd={noise.sd:.4f} ({'measured over ' + str(noise.runs) + ' baseline runs' if noise.measured else 'assumed: baseline noise not measured yet'})"
    if status != "ok" or val_bpb is None or not math.isfinite(val_bpb):
        return Verdict(FAILED, "the run did not produce a valid val_bpb", threshold)
    if best_bpb is None:
        return Verdict(
            WITHIN_NOISE,
            "no earlier result to compare with on this hardware and budget" + ruled_out,
            threshold,
        )
    improvement = best_bpb - val_bpb
    if improvement > threshold:
        if disqualifications:
            return Verdict(
                WITHIN_NOISE,
                f"{improvement:.4f} better than the best, but it cannot count as an improvement: {'; '.join(disqualifications)}",
                threshold,
            )
        return Verdict(
            IMPROVED,
            f"{improvement:.4f} better than the best, beyond the noise threshold {threshold:.4f} ({basis})",
            threshold,
        )
    if improvement < -threshold:
        return Verdict(
            WORSE,
            f"{-improvement:.4f} worse than the best, beyond the noise threshold {threshold:.4f} ({basis})"
            + ruled_out,
            threshold,
        )
    return Verdict(
        WITHIN_NOISE,
        f"{improvement:+.4f} vs the best is within the noise threshold {threshold:.4f} ({basis}); "
        "call confirm_experiment to run more seeds" + ruled_out,
        threshold,
    )


__all__ = [
    "ASSUMED_SD",
    "BASELINE",
    "FAILED",
    "IMPROVED",
    "MIN_SD",
    "PUBLISHED_DIGITS",
    "WITHIN_NOISE",
    "WORSE",
    "Noise",
    "Verdict",
    "decide",
    "mean_sd",
    "over_budget_flag",
    "over_budget_reason",
    "over_budget_tolerance",
    "published",
]
