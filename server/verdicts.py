"""Noise-aware verdicts: is a result better than the best by more than the measured noise?

Single-run comparisons are not research: the server measures the baseline several times
per hardware fingerprint, keeps the spread, and says `improved` only beyond k x sd.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

IMPROVED, WITHIN_NOISE, WORSE, FAILED, BASELINE = (
    "improved",
    "within_noise",
    "worse",
    "failed",
    "baseline",
)
# Used until the baseline has been measured twice on this hardware: the seed-to-seed sd of
# val_bpb seen on a 2-core CPU at 60 s (LIBRARY-NOTES). Replaced by the measured value.
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
    verdict: str
    note: str
    threshold: float


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
    disqualification (a seed-only change, a contended CPU budget); within k x sd it is
    `within_noise` with the suggestion to confirm.
    """
    threshold = k * noise.sd
    basis = f"k={k:g} x sd={noise.sd:.4f} ({'measured over ' + str(noise.runs) + ' baseline runs' if noise.measured else 'assumed: baseline noise not measured yet'})"
    if status != "ok" or val_bpb is None or not math.isfinite(val_bpb):
        return Verdict(FAILED, "the run did not produce a valid val_bpb", threshold)
    if best_bpb is None:
        return Verdict(
            WITHIN_NOISE, "no earlier result to compare with on this hardware and budget", threshold
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
            f"{-improvement:.4f} worse than the best, beyond the noise threshold {threshold:.4f} ({basis})",
            threshold,
        )
    return Verdict(
        WITHIN_NOISE,
        f"{improvement:+.4f} vs the best is within the noise threshold {threshold:.4f} ({basis}); "
        "call confirm_experiment to run more seeds",
        threshold,
    )
