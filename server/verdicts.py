"""Verdicts that stay honest over a whole campaign: screen one run, confirm on fresh seeds.

One run of an idea is one draw from its distribution: across a 700-experiment campaign, a rule
that says `improved` after a single run beyond k x sd collects false wins, and each becomes the
parent of what follows. The rule here has two steps and an error budget across the campaign:

1. **Screen.** The experiment's run (the server's paired seed) is compared with the incumbent's
   reference mean (the baseline's runs, or the confirmation runs of the best confirmed idea;
   never a lucky single run). Beyond the screening quantile it becomes a `candidate`: a change
   that does nothing gets this far about `screen_share` of the time. Clearly worse is `worse`;
   the rest is `within_noise`.
2. **Confirm.** The server re-runs a candidate on `confirm_runs` fresh seeds (never the paired
   one, so a lucky seed in disguise cannot follow it) and tests the mean of those runs alone (the
   screening run was selected for looking good: it stays out) against the reference mean with a
   one-sided t test at level alpha = false_wins / (campaign_experiments x screen_share). A null
   change then passes both steps with probability screen_share x alpha, i.e. `false_wins`
   expected false improvements per `campaign_experiments` null experiments. Once two fresh runs
   show no gain at all the rest are not run (stopping for futility only ever lowers the false
   win rate).

The noise sd is pooled over every group of repeated runs of one code on this setting (the
baseline's runs, each candidate's confirmation runs), with its degrees of freedom: quantiles are
Student t, so a noise estimate from three runs asks for more evidence than one from thirty.
A run that stands out from the median of its group's other runs by more than OUTLIER_Z sd of
the OTHER groups (pooled, once they have ROBUST_MIN_DF degrees of freedom) is left out: a
disturbed run does not inflate the noise, and it cannot hide itself by inflating the scale it
is judged by.
bench/campaign.py measures the false wins, power and extra runs of this rule.
"""

from __future__ import annotations

import math
import secrets
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.orientation import gain as oriented_gain
from server.record import BASELINE, CANDIDATE, FAILED, IMPROVED, WITHIN_NOISE, WORSE
from server.record import Verdict as VerdictValue

# Used until the baseline has been measured twice on this hardware, where the target gives no
# `assumed_sd` of its own: the seed-to-seed sd of the bundled trainer/ target on a 2-core CPU at 60 s
# (bench/results/README.md). Replaced by the measured value.
ASSUMED_SD = 0.02
MIN_SD = 1e-4  # a perfectly deterministic machine still gets a non-zero threshold
OUTLIER_Z = 4.0  # a run this many sd (of the other groups) from its group's median is left out
ROBUST_MIN_DF = 6  # ... once the pool has this many degrees of freedom to judge by
WORSE_QUANTILE = (
    0.975  # one run this far below the reference reads `worse` (no error budget needed)
)


# ---------------------------------------------------------------- Student t, without scipy


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for the regularized incomplete beta function."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (the normal for df = inf)."""
    if math.isinf(df):
        return statistics.NormalDist().cdf(t)
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf; exact to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if math.isinf(df):
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-10:
            break
    return (low + high) / 2.0


# ---------------------------------------------------------------- noise and the reference


@dataclass(frozen=True)
class Noise:
    """The run-to-run spread of the metric for one code on one hardware fingerprint and budget."""

    sd: float
    runs: int  # runs that went into the estimate
    mean: float | None  # the baseline's mean (shown beside the sd)
    measured: bool
    df: float = math.inf  # degrees of freedom of the sd: t quantiles use them
    left_out: tuple[int, ...] = ()  # run ids left out as outliers

    @classmethod
    def from_values(cls, values: Sequence[float]) -> Noise:
        """The noise of one group of repeated runs (the baseline's)."""
        return cls.pooled([list(values)], baseline=list(values))

    @classmethod
    def pooled(
        cls,
        groups: Sequence[Sequence[float]],
        *,
        baseline: Sequence[float] = (),
        ids: Sequence[Sequence[int]] | None = None,
        assumed_sd: float = ASSUMED_SD,
    ) -> Noise:
        """The pooled within-group sd over groups of repeated runs, robust to a disturbed run.

        Each group is the metric of one code at different seeds. Before two runs of one code
        exist, `assumed_sd` (the target's) stands in (measured False, df infinite: the screen still works, and no
        candidate can be confirmed before its own confirmation runs measure the noise).
        """
        usable = [list(g) for g in groups if len(g) >= 2]
        id_groups = [list(i) for i, g in zip(ids or [], groups, strict=False) if len(g) >= 2]
        mean = statistics.fmean(baseline) if baseline else None
        if not usable:
            runs = sum(len(g) for g in groups)
            return cls(sd=assumed_sd, runs=runs, mean=mean, measured=False, df=math.inf)
        left_out: list[int] = []
        kept_groups = []
        for n, group in enumerate(usable):
            others_pool = usable[:n] + usable[n + 1 :]
            scale, scale_df = _pooled_sd(others_pool) if others_pool else (0.0, 0.0)
            if scale_df < ROBUST_MIN_DF or scale <= 0 or len(group) < 3:
                kept_groups.append(group)
                continue
            kept = []
            for k, value in enumerate(group):
                others = group[:k] + group[k + 1 :]
                if abs(value - statistics.median(others)) > OUTLIER_Z * scale * math.sqrt(
                    1.0 + 1.0 / len(others)
                ):
                    left_out.append(id_groups[n][k] if n < len(id_groups) else -1)
                else:
                    kept.append(value)
            kept_groups.append(kept)
        usable = [g for g in kept_groups if len(g) >= 2]
        if not usable:
            return cls(sd=assumed_sd, runs=0, mean=mean, measured=False, df=math.inf)
        sd, df = _pooled_sd(usable)
        return cls(
            sd=max(sd, MIN_SD),
            runs=sum(len(g) for g in usable),
            mean=mean,
            measured=True,
            df=df,
            left_out=tuple(i for i in left_out if i >= 0),
        )


def _pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, float]:
    squares = sum(sum((v - statistics.fmean(g)) ** 2 for v in g) for g in groups)
    df = sum(len(g) - 1 for g in groups)
    return math.sqrt(squares / df), float(df)


@dataclass(frozen=True)
class Reference:
    """What a result must beat: the incumbent's mean over its comparable runs."""

    mean: float
    runs: int
    experiment_id: int | None  # None: the baseline
    label: str  # "the baseline (mean of 4 runs)", "#12 (mean of its 4 confirmation runs)"
    direction: str = "minimize"  # the target's: which way the metric improves

    def gain(self, value: float) -> float:
        """How much better `value` is than this reference's mean (positive = better)."""
        return oriented_gain(value, self.mean, self.direction)


@dataclass(frozen=True)
class ErrorBudget:
    """How many false improvements a campaign may collect, and how the rule spends that budget."""

    campaign_experiments: int = 700
    false_wins: float = 0.5  # expected false `improved` per campaign of null changes
    screen_share: float = 0.16  # share of null changes that become candidates
    confirm_runs: int = 4  # fresh-seed runs per candidate
    futility_after: int = 2  # stop confirming once this many fresh runs show no gain at all

    @property
    def confirm_alpha(self) -> float:
        """The per-candidate false-confirmation level that keeps the campaign within budget."""
        return min(0.5, self.false_wins / (self.campaign_experiments * self.screen_share))

    def describe(self) -> str:
        return (
            f"the campaign's error budget: {self.false_wins:g} false improvement(s) expected in "
            f"{self.campaign_experiments} changes that do nothing"
        )


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictValue
    note: str
    threshold: float  # the gain this step needed (in the metric's units)
    z: float | None = None  # the test statistic, in units of its own sd
    extra: dict[str, Any] = field(default_factory=dict)


PUBLISHED_DIGITS = 5  # metrics reach agents at metric_decimals (4 by default); derived figures at 5


def published(value: float | None, digits: int = PUBLISHED_DIGITS) -> float | None:
    """A derived figure as the server publishes it: rounded, never a raw float sum's tail digits."""
    return None if value is None else round(float(value), digits)


def noise_basis(noise: Noise) -> str:
    if not noise.measured:
        return f"sd {noise.sd:.4f} assumed: the noise is not measured yet"
    left = f", {len(noise.left_out)} disturbed run(s) left out" if noise.left_out else ""
    return f"sd {noise.sd:.4f} pooled over {noise.runs} repeated runs ({noise.df:g} degrees of freedom{left})"


# ---------------------------------------------------------------- step 1: the screen


def screen(
    *,
    status: str,
    metric_value: float | None,
    reference: Reference | None,
    noise: Noise,
    budget: ErrorBudget,
    disqualifications: Sequence[str] = (),
    not_comparable: str | None = None,
) -> Verdict:
    """The verdict on one experiment's single run: candidate, within_noise, worse or failed.

    A disqualified run (seed-only, seed from elsewhere, embedded data, over budget) never
    becomes a candidate; a run made under conditions not comparable with the reference (a
    contended CPU) is not compared at all.
    """
    if status != "ok" or metric_value is None or not math.isfinite(metric_value):
        return Verdict(FAILED, "the run did not produce a valid result", 0.0)
    if reference is None:
        return Verdict(WITHIN_NOISE, "nothing measured yet to compare with on this setting", 0.0)
    spread = noise.sd * math.sqrt(1.0 + 1.0 / max(reference.runs, 1))
    screen_at = t_quantile(1.0 - budget.screen_share, noise.df) * spread
    worse_at = t_quantile(WORSE_QUANTILE, noise.df) * spread
    gain = reference.gain(metric_value)
    z = gain / spread
    versus = f"{reference.label}, {noise_basis(noise)}"
    if not_comparable:
        return Verdict(
            WITHIN_NOISE,
            f"not compared: {not_comparable}; its number says nothing about the code. Run it again "
            "when the machine is quieter",
            screen_at,
            z,
        )
    if disqualifications:
        return Verdict(
            WITHIN_NOISE if gain > -worse_at else WORSE,
            f"{gain:+.4f} vs {reference.label}, but it cannot count as an improvement: "
            + "; ".join(disqualifications),
            screen_at,
            z,
        )
    if gain > screen_at:
        return Verdict(
            CANDIDATE,
            f"candidate: {gain:.4f} better than {versus}. One run can be luck (about "
            f"{budget.screen_share:.0%} of changes that do nothing get this far), so the server "
            f"re-runs it on {budget.confirm_runs} fresh seeds before it can count",
            screen_at,
            z,
        )
    if gain < -worse_at:
        return Verdict(
            WORSE,
            f"{-gain:.4f} worse than {versus}: beyond the {WORSE_QUANTILE:.1%} quantile of one run's noise",
            worse_at,
            z,
        )
    return Verdict(
        WITHIN_NOISE,
        f"{gain:+.4f} vs {versus}: within the noise (a candidate needs {screen_at:.4f}); "
        "not distinguishable from the reference",
        screen_at,
        z,
    )


def describe_rule(noise: Noise, reference: Reference | None, budget: ErrorBudget) -> dict[str, Any]:
    """The noise, the reference and the rule as published (noise_info): the screening threshold
    of one run against the reference right now, and the rule in plain words."""
    runs = reference.runs if reference else 1
    screen_at = t_quantile(1.0 - budget.screen_share, noise.df) * noise.sd * (1 + 1 / runs) ** 0.5
    return {
        "baseline_mean": published(noise.mean),
        "sd": published(noise.sd),
        "runs": noise.runs,
        "measured": noise.measured,
        "degrees_of_freedom": noise.df if noise.measured else None,
        "threshold": published(screen_at),
        "reference": {
            "label": reference.label,
            "metric_value": published(reference.mean),
            "runs": reference.runs,
        }
        if reference
        else None,
        "rule": f"one run {screen_at:.4f} better than the reference makes a candidate; the server "
        f"re-runs it on {budget.confirm_runs} fresh seeds and it is improved only if their mean "
        f"passes a t test at level {budget.confirm_alpha:.4f} ({budget.describe()})",
    }


def fresh_seed(paired_seed: int) -> int:
    """A seed for a confirmation run: random (os.urandom), far from the paired seeds, so that
    code cannot know its confirmation seeds in advance."""
    while True:
        seed = secrets.randbelow(2**31 - 1) + 1
        if abs(seed - paired_seed) > 10_000:
            return seed


# ---------------------------------------------------------------- step 2: confirmation


def judge_confirmation(
    *,
    values: Sequence[float],
    reference: Reference,
    noise: Noise,
    budget: ErrorBudget,
    disqualifications: Sequence[str] = (),
) -> Verdict | None:
    """The verdict on a candidate from its fresh-seed runs (in order), or None: run more.

    Tests the mean of the first `confirm_runs` fresh runs against the reference mean at the
    campaign's confirm_alpha (Student t on the pooled sd). Stops early for futility once
    `futility_after` runs show no gain at all.
    """
    runs = list(values)[: budget.confirm_runs]
    n = len(runs)
    if n == 0:
        return None
    mean = statistics.fmean(runs)
    gain = reference.gain(mean)
    spread = noise.sd * math.sqrt(1.0 / n + 1.0 / max(reference.runs, 1))
    z = gain / spread
    runs_text = f"{n} fresh seed{'s' if n > 1 else ''}"
    if disqualifications:
        return Verdict(
            WITHIN_NOISE,
            f"on {runs_text} its mean is {gain:+.4f} vs {reference.label}, but it cannot count as an "
            "improvement: " + "; ".join(disqualifications),
            0.0,
            z,
        )
    if n < budget.confirm_runs:
        if n >= budget.futility_after and gain <= 0:
            return Verdict(
                WITHIN_NOISE,
                f"did not hold up: on {runs_text} its mean is {gain:+.4f} vs {reference.label} (no gain "
                "at all), so the remaining confirmation runs were not needed. The screening run was luck",
                0.0,
                z,
            )
        return None
    alpha = budget.confirm_alpha
    needed = t_quantile(1.0 - alpha, noise.df) * spread
    sure = (
        f"a change that does nothing passes both steps about once in "
        f"{1.0 / (alpha * budget.screen_share):,.0f} experiments ({budget.describe()})"
    )
    if gain > needed:
        return Verdict(
            IMPROVED,
            f"improved: on {runs_text} (not the screening run) its mean is {gain:.4f} better than "
            f"{reference.label}; it needed {needed:.4f} ({noise_basis(noise)}); {sure}",
            needed,
            z,
        )
    worse_at = t_quantile(WORSE_QUANTILE, noise.df) * spread
    if gain < -worse_at:
        return Verdict(
            WORSE,
            f"did not hold up: on {runs_text} its mean is {-gain:.4f} worse than {reference.label}",
            needed,
            z,
        )
    return Verdict(
        WITHIN_NOISE,
        f"not confirmed: on {runs_text} its mean is {gain:+.4f} vs {reference.label}; an improvement "
        f"needed {needed:.4f} ({noise_basis(noise)}), so the screening run's gain was probably luck",
        needed,
        z,
    )


def seeds_of(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """{seed: metric_value} of rows (for the seed-sensitivity check)."""
    return {
        int(r["seed"]): float(r["metric_value"]) for r in rows if r.get("metric_value") is not None
    }


# ---------------------------------------------------------------- the budget's clock


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


__all__ = [
    "ASSUMED_SD",
    "BASELINE",
    "CANDIDATE",
    "FAILED",
    "IMPROVED",
    "MIN_SD",
    "PUBLISHED_DIGITS",
    "WITHIN_NOISE",
    "WORSE",
    "ErrorBudget",
    "Noise",
    "Reference",
    "Verdict",
    "describe_rule",
    "fresh_seed",
    "judge_confirmation",
    "mean_sd",
    "noise_basis",
    "over_budget_flag",
    "over_budget_reason",
    "over_budget_tolerance",
    "published",
    "screen",
    "seeds_of",
    "t_cdf",
    "t_quantile",
]
