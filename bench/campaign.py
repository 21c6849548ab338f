"""Benchmark: what the verdict rule does over a whole campaign, not one run.

One verdict can be honest and a campaign still collect false wins: with `improved` decided on
one run against a noise threshold, a change that does nothing reads `improved` now and then,
and over hundreds of experiments those false wins pile up and become the parents of what
follows. This bench replays campaigns through the REAL Lab (server.lab.Lab: the real store,
scheduler, run lifecycle, leaderboard, baselines, drift checks and verdict code); only the
executor that would jail and train is replaced. **The runs are simulated**: each run's metric_value
is drawn from N(true mean of its code, sd), with sd the seed-to-seed noise this machine
measured by real baseline repeats (bench/results/trainer.json, or `--measure-baseline N`).

The agent submits N experiments (default 700), each a distinct harmless change (a new
module-level constant), through Lab.submit like run_experiment does. A chosen share carries a
true gain of 1, 2 or 3 sd relative to its parent's true mean; the rest carry none. When an
experiment's final verdict is `improved`, the agent checks it out and builds on it (false wins
become parents, as in a real campaign). With `--agent-confirms N` the agent also calls
Lab.confirm(N) on every `improved` (program.md's advice; 0 when the server confirms by itself).

It reports, per configuration, over R campaigns: false `improved` per 100 null experiments,
false improvements that survive confirmation per campaign (mean, 95% interval over campaigns),
power for each true gain, extra runs per candidate and total runs per experiment.

`--real` runs one short campaign with real training (the real executor, the CPU) of null
changes and compares it with the simulation at the same sd.

    python bench/campaign.py [--experiments 700] [--campaigns 20] [--true-share 0 0.1]
                             [--agent-confirms 2] [--sd SD | --measure-baseline N]
                             [--seed 0] [--workers 2] [--json OUT] [--markdown OUT]
    python bench/campaign.py --real [--real-nulls 12] [--real-budget 10] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

if TYPE_CHECKING:
    from sandbox.runner import RunResult
    from server.lab import Lab
    from server.scheduler import Job, ProgressFn

RESULTS = ROOT / "bench" / "results"
NOISE_SOURCE = RESULTS / "trainer.json"  # the newest real baseline repeats (60 s, 3 seeds)
NOISE_SOURCE_RUNS = "baseline (train.py)"
AGENT = "campaign-agent"
GAINS_SD = (1.0, 2.0, 3.0)  # the true gains of the experiments that carry one, in sd units
IDEA_ANCHOR = 'EVAL_CONTEXT = int(os.environ.get("AR_EVAL_CONTEXT", "256"))\n'
LIVE = ("queued", "running")
CANDIDATE = "candidate"  # the verdict of a run the server is still confirming (when it exists)
SIMULATED_CPU_SHARE = 0.95  # an idle machine's CPU share: no run is `contended`
SIMULATED_EVAL_SECONDS = 2.6  # what a run waits for its evaluation (bench/results/README.md)
SIMULATED_HEADER = (
    "SIMULATED RUNS: every metric_value below was drawn from N(true mean, sd) by bench/campaign.py; "
    "no model was trained. The Lab, its store, scheduler, baselines and verdict code are real."
)


# ------------------------------------------------------------------ the noise this machine measured


@dataclass(frozen=True)
class MeasuredNoise:
    """The sd (and mean) of real baseline runs with different seeds, and where they come from."""

    sd: float
    mean: float
    runs: int
    source: str


def noise_from_results(path: Path = NOISE_SOURCE) -> MeasuredNoise:
    """The seed-to-seed sd of the baseline from the newest real baseline repeats in bench/results."""
    data = json.loads(path.read_text())
    values = [run["eval"]["val_bpb"] for run in data["runs"][NOISE_SOURCE_RUNS]]
    return MeasuredNoise(
        sd=statistics.stdev(values),
        mean=statistics.fmean(values),
        runs=len(values),
        source=f"{path.relative_to(ROOT)}: {len(values)} real baseline runs, seeds "
        f"{', '.join(str(r['seed']) for r in data['runs'][NOISE_SOURCE_RUNS])}, "
        f"{data['budget_seconds']:g} s wall budget",
    )


def measure_baseline_noise(data_dir: Path, repeats: int, budget_seconds: float) -> MeasuredNoise:
    """Run the shipped train.py `repeats` times with seeds 1..repeats (real training) and take the sd."""
    from sandbox.runner import ExperimentRunner, RunSettings
    from sandbox.target import load_target

    target = load_target()
    with tempfile.TemporaryDirectory(prefix="campaign-noise-") as runs:
        runner = ExperimentRunner(target, data_dir, Path(runs))
        values = []
        for seed in range(1, repeats + 1):
            result = runner.run(
                target.baseline_files(), RunSettings(budget_seconds=budget_seconds, seed=seed)
            )
            if result.status == "ok" and result.metric_value is not None:
                values.append(result.metric_value)
            print(f"  baseline seed {seed}: {result.status} {result.metric_value}", flush=True)
    if len(values) < 2:
        raise SystemExit("fewer than two baseline runs succeeded: cannot measure the noise")
    return MeasuredNoise(
        sd=statistics.stdev(values),
        mean=statistics.fmean(values),
        runs=len(values),
        source=f"--measure-baseline: {len(values)} real baseline runs now, seeds 1..{repeats}, "
        f"{budget_seconds:g} s wall budget",
    )


# ------------------------------------------------------------------ the simulated executor


class GroundTruth:
    """The true mean metric_value of every piece of code the campaign wrote, by code hash.

    Keyed by the code (not the experiment id) so that every run of the same code draws from
    the same mean, whoever queued it: the agent's experiment, its confirmations, the server's
    baselines, drift checks and any confirmation runs the verdict rule queues by itself.
    """

    def __init__(self) -> None:
        self._means: dict[str, float] = {}
        self._lock = threading.Lock()

    def set(self, files: Mapping[str, str], mean: float) -> str:
        from sandbox.workspace import Workspace

        code_hash = Workspace.hash_files({k: v.encode() for k, v in files.items()})
        with self._lock:
            self._means[code_hash] = mean
        return code_hash

    def mean_of(self, files: Mapping[str, bytes]) -> float | None:
        from sandbox.workspace import Workspace

        with self._lock:
            return self._means.get(Workspace.hash_files(files))


class SeededNoise:
    """Draws a run's deviation from its code's true mean: N(0, sd^2), optionally with a part
    shared by every run of the same seed (`seed_share` of the variance; 0: independent runs)."""

    def __init__(self, sd: float, seed_share: float, rng: random.Random) -> None:
        self.sd = sd
        self.seed_share = seed_share
        self._rng = rng
        self._seed_effects: dict[int, float] = {}
        self._lock = threading.Lock()

    def draw(self, seed: int) -> float:
        with self._lock:
            if seed not in self._seed_effects:
                self._seed_effects[seed] = self._rng.gauss(0.0, 1.0)
            shared = self._seed_effects[seed]
            own = self._rng.gauss(0.0, 1.0)
        z = math.sqrt(self.seed_share) * shared + math.sqrt(1.0 - self.seed_share) * own
        return self.sd * z


class SimulatedExecutor:
    """Stands in for the jail and the training (server.scheduler.Executor): returns at once an
    `ok` RunResult whose metric_value is drawn from the true mean of the job's code plus noise.

    Everything else is what an honest run on an idle machine reports: the budget used, an
    evaluation's seconds, CPU share 0.95 (never `contended`), never over budget, the hashes
    the runner expects of the evaluator and the val data.
    """

    def __init__(
        self,
        slots: Sequence[str],
        truth: GroundTruth,
        noise: SeededNoise,
        hashes: Mapping[str, str],
    ) -> None:
        self._slots = list(slots)
        self.truth = truth
        self.noise = noise
        self.hashes = dict(hashes)
        self.runs = 0

    def slots(self) -> list[str]:
        return list(self._slots)

    def run(
        self, job: Job, slot: str, on_progress: ProgressFn, cancel: threading.Event
    ) -> RunResult:
        from sandbox.runner import RunResult

        mean = self.truth.mean_of(job.files)
        if mean is None:
            return RunResult(
                status="crash",
                failure_reason="simulated executor: code the campaign never wrote (no ground truth)",
            )
        self.runs += 1
        budget = job.settings.budget_seconds
        val = mean + self.noise.draw(job.settings.seed)
        train = budget * 0.97
        return RunResult(
            status="ok",
            metric_value=val,
            metrics={"simulated": True},
            phase="done",
            train_seconds=train,
            eval_seconds=SIMULATED_EVAL_SECONDS,
            total_seconds=train + SIMULATED_EVAL_SECONDS + 0.2,
            overhead_seconds=0.2,
            cpu_seconds=train * SIMULATED_CPU_SHARE * job.settings.threads,
            cpu_share=SIMULATED_CPU_SHARE,
            isolation="simulated",
            hashes=dict(self.hashes),
            seed=job.settings.seed,
        )


# ------------------------------------------------------------------ the seed review, once per base


IDEA_LINE = re.compile(r"^_IDEA_\d+ = \d+\n", re.MULTILINE)
REVIEW_CHECKS = 3  # ideas whose seed review is run in full and compared with the memoized one


class MemoizedSeedReview:
    """The static seed review (server.seed_checks via server.recording) computed once per base.

    It parses and walks the whole train.py twice per submit (~0.15-0.3 s of CPU on this
    machine): 700 experiments x R campaigns would spend most of their time there. The bench's
    ideas are module-level constants, which the review ignores, so the review of `base + idea`
    is the review of `base`: this wrapper strips the idea lines, memoizes on what is left, and
    checks the claim on the first REVIEW_CHECKS ideas by running the full review too (a
    mismatch turns the memo off). Verdicts are what the bench measures; the review still runs.
    """

    def __init__(self, review: Callable[..., Any]) -> None:
        self.review = review
        self._memo: dict[str, Any] = {}
        self._checks_left = REVIEW_CHECKS
        self.enabled = True

    def __call__(self, files: Mapping[str, str], baseline_files: Mapping[str, str]) -> Any:
        if not self.enabled:
            return self.review(files, baseline_files)
        stripped = {name: IDEA_LINE.sub("", text) for name, text in files.items()}
        key = json.dumps([stripped, dict(baseline_files)], sort_keys=True)
        if key not in self._memo:
            self._memo[key] = self.review(stripped, baseline_files)
        memo = self._memo[key]
        if self._checks_left > 0 and stripped != dict(files):
            self._checks_left -= 1
            full = self.review(files, baseline_files)
            if [f.as_dict() for f in full] != [f.as_dict() for f in memo]:
                self.enabled = False
                print("seed review: an idea changed the findings; the memo is off", flush=True)
                return full
        return memo


@contextlib.contextmanager
def memoized_seed_review() -> Iterator[MemoizedSeedReview | None]:
    """MemoizedSeedReview in place of server.recording's seed review while the block runs (this
    process only; the real review is put back after), where that review exists."""
    try:
        from server import recording
    except ImportError:
        yield None
        return
    review = getattr(recording, "review_seed_code", None)
    if review is None:
        yield None
        return
    memo = MemoizedSeedReview(review)
    recording.review_seed_code = memo  # type: ignore[attr-defined]
    try:
        yield memo
    finally:
        recording.review_seed_code = review  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the Lab and the agent


def settle(lab: Lab, timeout: float = 600.0) -> None:
    """Wait until every row is final: nothing queued or running, every finish recorded, and no
    experiment still a `candidate` (a verdict the server's confirmation runs will change).

    `scheduler.running()` is empty only after on_finish returned (and whatever it queued, such
    as a candidate's confirmation runs, is in the store). The state must hold on two reads in a
    row: a verdict rule that queues its runs a moment after a finish is waited for too.
    """
    deadline = time.monotonic() + timeout
    quiet_reads = 0
    while quiet_reads < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the queue did not drain within {timeout:g} s")
        quiet = (
            not lab.scheduler.running()
            and lab.store.count_experiments(status=list(LIVE)) == 0
            and not _open_candidates(lab)
        )
        quiet_reads = quiet_reads + 1 if quiet else 0
        if quiet_reads < 2:
            lab.scheduler.wait_for_change(0.01 if quiet else 0.02)


def _open_candidates(lab: Lab, recent: int = 20) -> bool:
    """Is any of the latest experiments still a `candidate` (its confirmation not judged yet)?"""
    rows = lab.store.list_experiments(
        kind="experiment", order="recent", limit=recent, columns=["verdict"]
    )
    return any(row["verdict"] == CANDIDATE for row in rows)


def with_idea(train_py: str, number: int) -> str:
    """train.py with one more harmless module-level constant: a distinct change that does nothing."""
    if IDEA_ANCHOR not in train_py:
        raise SystemExit(f"train.py no longer holds the line the ideas go after: {IDEA_ANCHOR!r}")
    return train_py.replace(IDEA_ANCHOR, f"{IDEA_ANCHOR}_IDEA_{number} = {number}\n", 1)


def make_lab(home: Path, data_dir: Path, **settings: Any) -> Lab:
    """A Lab in `home` on a copy of the prepared data, its scheduler not started yet."""
    from server.lab import Lab, LabSettings

    home.mkdir(parents=True, exist_ok=True)
    if not (home / "data").exists():
        shutil.copytree(data_dir, home / "data")
    known = {f.name for f in dataclasses.fields(LabSettings)}
    unknown = set(settings) - known
    if unknown:
        raise SystemExit(f"LabSettings has no {sorted(unknown)}")
    return Lab(LabSettings(home=home, start_scheduler=False, **settings))


@dataclass
class AgentPolicy:
    """How the simulated researcher behaves: confirm each `improved` N times, build on `improved`."""

    agent_confirms: int = 2


def run_agent(
    lab: Lab,
    gains: Sequence[float],
    *,
    truth: GroundTruth | None,
    base_mean: float,
    sd: float,
    policy: AgentPolicy,
    on_experiment: Callable[[int, int], None] | None = None,
) -> dict[int, float]:
    """Submit one experiment per gain through Lab.submit, one at a time; returns {id: true gain}.

    Each experiment is the agent's current base plus one new constant. Its true mean is the
    base's true mean minus gain x sd (`truth`; None for real runs, where the gain is what the
    code really does: 0 for these constants). A final `improved` (after the agent's own
    confirmations, if any) makes it the new base.
    """
    from server.record import IMPROVED

    base_id: int | None = None
    base_files = dict(lab.baseline_files)
    base_true = base_mean
    gain_of: dict[int, float] = {}
    for number, gain in enumerate(gains, start=1):
        if base_id is None:
            lab.checkout(AGENT, None, "baseline")
        else:
            lab.checkout(AGENT, base_id, None)
        files = {**base_files, "train.py": with_idea(base_files["train.py"], number)}
        true_mean = base_true - gain * sd
        if truth is not None:
            truth.set(files, true_mean)
        lab.workspace(AGENT).replace_files({k: v.encode() for k, v in files.items()})
        experiment_id, reused = lab.submit(AGENT, f"idea {number}: a new constant _IDEA_{number}")
        if reused is not None:
            raise RuntimeError(f"idea {number} reused #{reused}: the changes must be distinct")
        gain_of[experiment_id] = gain
        settle(lab)
        row = lab.experiment(experiment_id)
        if row["verdict"] == IMPROVED and policy.agent_confirms:
            lab.confirm(AGENT, experiment_id, policy.agent_confirms)
            settle(lab)
            row = lab.experiment(experiment_id)
        if row["verdict"] == IMPROVED:
            base_id, base_files, base_true = experiment_id, dict(row["code"]), true_mean
        if on_experiment is not None:
            on_experiment(number, experiment_id)
    settle(lab)
    return gain_of


# ------------------------------------------------------------------ counting


def rule_has_candidates() -> bool:
    """True once the verdict rule has a `candidate` verdict (the server confirms by itself)."""
    from server.record import Verdict

    return CANDIDATE in get_args(Verdict)


def survived_confirmation(lab: Lab, row: Mapping[str, Any], server_confirms: bool) -> bool:
    """Did this experiment's win survive confirmation?

    When the server confirms by itself (a `candidate` verdict exists), only the outcome of its
    confirmation runs turns a row `improved`: the final verdict says it. Under the one-run rule
    the verdict never changes after confirmation, so: `improved`, at least two successful
    confirmation runs, and the mean over the run and its confirmations (Lab.confirmation_stats)
    still beats the incumbent the verdict compared with (metric_value + delta_best) by more than the
    threshold the verdict used (noise_k x the baseline's sd).
    """
    from server.record import IMPROVED

    if row["verdict"] != IMPROVED:
        return False
    if server_confirms:
        return True
    stats = lab.confirmation_stats(row["id"])
    if not stats or len(stats["run_ids"]) < 2:
        return False
    if row.get("metric_value") is None or row.get("delta_best") is None:
        return False
    reference = row["metric_value"] + row["delta_best"]
    threshold = lab.settings.noise_k * lab.noise(row.get("scale") or "S").sd
    return bool(reference - stats["mean"] > threshold)


@dataclass
class ExperimentOutcome:
    """One experiment of a campaign, as the record ends up saying it."""

    id: int
    gain: float
    verdict: str
    candidate: bool  # `improved` after one run, or confirmation runs were spent on it
    confirmation_runs: int
    survived: bool


def campaign_outcomes(lab: Lab, gain_of: Mapping[int, float]) -> list[ExperimentOutcome]:
    """Each experiment's final verdict, confirmation runs and survival (read once all are final)."""
    from server.record import IMPROVED

    server_confirms = rule_has_candidates()
    confirmation_runs: dict[int, int] = {}  # confirms_id -> runs of kind `confirmation`, any status
    for run in lab.store.list_experiments(
        kind="confirmation", order="oldest", limit=10**7, columns=["confirms_id"]
    ):
        target = run["confirms_id"]
        confirmation_runs[target] = confirmation_runs.get(target, 0) + 1
    outcomes = []
    for experiment_id, gain in gain_of.items():
        row = lab.experiment(experiment_id)
        confirmations = confirmation_runs.get(experiment_id, 0)
        outcomes.append(
            ExperimentOutcome(
                id=experiment_id,
                gain=gain,
                verdict=str(row["verdict"]),
                candidate=row["verdict"] == IMPROVED or confirmations > 0,
                confirmation_runs=confirmations,
                survived=survived_confirmation(lab, row, server_confirms),
            )
        )
    return outcomes


def run_counts(lab: Lab) -> dict[str, int]:
    """Every run the campaign cost, by kind (baselines, experiments, confirmations, drift checks)."""
    counts: dict[str, int] = {}
    for kind in ("baseline", "experiment", "confirmation", "drift_check", "promotion"):
        counts[kind] = lab.store.count_experiments(kind=kind)
    return counts


# ------------------------------------------------------------------ one simulated campaign


@dataclass(frozen=True)
class CampaignConfig:
    """One configuration of the simulator: how many experiments, how many carry a true gain."""

    experiments: int = 700
    true_share: float = 0.0
    sd: float = 0.02
    base_mean: float = 1.86
    agent_confirms: int = 2
    seed_share: float = 0.0
    budget_seconds: float = 60.0
    gains_sd: tuple[float, ...] = GAINS_SD
    memoize_review: bool = True  # MemoizedSeedReview: the static seed review once per base
    lab_settings: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        return f"true share {self.true_share:g}"


def campaign_gains(config: CampaignConfig, rng: random.Random) -> list[float]:
    """The true gain of each experiment in order: round(share x N) of them carry the gains of
    `config.gains_sd` (1, 2 and 3 sd) in turn, at random positions; the rest carry none."""
    carriers = round(config.true_share * config.experiments)
    gains = [0.0] * config.experiments
    for index, position in enumerate(rng.sample(range(config.experiments), carriers)):
        gains[position] = config.gains_sd[index % len(config.gains_sd)]
    return gains


def simulate_campaign(config: CampaignConfig, data_dir: Path, seed: int) -> dict[str, Any]:
    """One campaign through a fresh Lab with a simulated executor: outcomes, run counts, timing."""
    rng = random.Random(seed)
    started = time.monotonic()
    logging.getLogger("server").setLevel(logging.ERROR)  # drift warnings by the thousand otherwise
    review = memoized_seed_review() if config.memoize_review else contextlib.nullcontext()
    with review, tempfile.TemporaryDirectory(prefix="campaign-sim-", dir=_fast_tmp()) as tmp:
        lab = make_lab(
            Path(tmp) / "home",
            data_dir,
            device="cpu",
            budget_seconds=config.budget_seconds,
            max_experiments_per_agent=None,
            **config.lab_settings,
        )
        try:
            truth = GroundTruth()
            executor = SimulatedExecutor(
                lab.executor.slots(),
                truth,
                SeededNoise(config.sd, config.seed_share, rng),
                lab.runner.expected_hashes,
            )
            lab.executor = executor
            lab.scheduler.executor = executor
            lab.scheduler.start()
            truth.set(lab.baseline_files, config.base_mean)
            lab.ensure_baseline()
            settle(lab)
            gain_of = run_agent(
                lab,
                campaign_gains(config, rng),
                truth=truth,
                base_mean=config.base_mean,
                sd=config.sd,
                policy=AgentPolicy(config.agent_confirms),
            )
            outcomes = campaign_outcomes(lab, gain_of)
            runs = run_counts(lab)
            noise = lab.noise()
        finally:
            lab.close()
    return {
        "seed": seed,
        "outcomes": [dataclasses.asdict(o) for o in outcomes],
        "runs": runs,
        "lab_sd": noise.sd,
        "lab_baseline_mean": noise.mean,
        "threshold": lab.settings.noise_k * noise.sd,
        "seconds": time.monotonic() - started,
    }


def _fast_tmp() -> str | None:
    """/dev/shm when it is there and roomy (the store is rewritten on every finish), else the default."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > 512 * 2**20:
            return str(shm)
    except OSError:
        pass
    return None


def _simulate_job(args: tuple[CampaignConfig, str, int]) -> dict[str, Any]:
    config, data_dir, seed = args
    return simulate_campaign(config, Path(data_dir), seed)


# ------------------------------------------------------------------ statistics


def poisson_interval(total: int, campaigns: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval for the mean count per campaign, from `total` events in `campaigns`."""

    def cdf(k: int, mu: float) -> float:  # P(N <= k) for N ~ Poisson(mu)
        if mu == 0:
            return 1.0
        return sum(math.exp(i * math.log(mu) - mu - math.lgamma(i + 1)) for i in range(k + 1))

    def solve(predicate: Callable[[float], bool], hi: float) -> float:
        lo = 0.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if predicate(mid) else (lo, mid)
        return (lo + hi) / 2

    alpha = (1 - level) / 2
    top = 10.0 + 10.0 * total
    upper = solve(lambda mu: cdf(total, mu) > alpha, top)
    lower = 0.0 if total == 0 else solve(lambda mu: 1 - cdf(total - 1, mu) < alpha, top)
    return lower / campaigns, upper / campaigns


def mean_interval(values: Sequence[int], resamples: int = 10_000) -> tuple[float, float]:
    """95% interval for the mean count per campaign: a bootstrap over campaigns (false wins
    cluster in campaigns whose baseline sd came out small, so a Poisson interval is too narrow);
    when no campaign had any, the exact Poisson bound (a bootstrap of zeros says nothing)."""
    if not values or not any(values):
        return poisson_interval(sum(values), max(1, len(values)))
    rng = random.Random(0)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarise(config: CampaignConfig, campaigns: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The table's figures for one configuration over its campaigns."""
    outcomes = [o for c in campaigns for o in c["outcomes"]]
    nulls = [o for o in outcomes if o["gain"] == 0]
    false_improved = sum(o["verdict"] == "improved" for o in nulls)
    false_candidates = sum(o["candidate"] for o in nulls)
    survived_per_campaign = [
        sum(o["survived"] for o in c["outcomes"] if o["gain"] == 0) for c in campaigns
    ]
    total_survived = sum(survived_per_campaign)
    power = {}
    for gain in config.gains_sd:
        carriers = [o for o in outcomes if o["gain"] == gain]
        if carriers:
            confirmed = sum(o["survived"] for o in carriers)
            power[f"{gain:g}"] = {
                "experiments": len(carriers),
                "candidate": sum(o["candidate"] for o in carriers) / len(carriers),
                "confirmed": confirmed / len(carriers),
                "confirmed_interval": wilson_interval(confirmed, len(carriers)),
            }
    confirmed_experiments = [o for o in outcomes if o["confirmation_runs"] > 0]
    confirmation_runs = sum(o["confirmation_runs"] for o in outcomes)
    runs = {
        kind: sum(c["runs"][kind] for c in campaigns) for kind in campaigns[0]["runs"] if campaigns
    }
    experiments = len(outcomes)
    return {
        "config": dataclasses.asdict(config),
        "label": config.label(),
        "campaigns": len(campaigns),
        "experiments": experiments,
        "null_experiments": len(nulls),
        "false_improved_per_100_nulls": 100 * false_improved / len(nulls) if nulls else None,
        "false_candidates_per_100_nulls": 100 * false_candidates / len(nulls) if nulls else None,
        "survived_false_per_campaign": total_survived / len(campaigns),
        "survived_false_interval": mean_interval(survived_per_campaign),
        "survived_false_poisson_interval": poisson_interval(total_survived, len(campaigns)),
        "survived_false_per_campaign_values": survived_per_campaign,
        "power": power,
        "extra_runs_per_candidate": confirmation_runs / len(confirmed_experiments)
        if confirmed_experiments
        else 0.0,
        "experiments_confirmed": len(confirmed_experiments),
        "runs": runs,
        "runs_per_experiment": sum(runs.values()) / experiments if experiments else None,
        "lab_sd_mean": statistics.fmean(c["lab_sd"] for c in campaigns),
        "lab_sd_values": [c["lab_sd"] for c in campaigns],
        "threshold_mean": statistics.fmean(c["threshold"] for c in campaigns),
        "seconds_per_campaign": statistics.fmean(c["seconds"] for c in campaigns),
    }


# ------------------------------------------------------------------ the table


def machine_facts() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per configuration: the figures the issue asks for."""
    gains = sorted({g for s in summaries for g in s["power"]}, key=float) or [
        f"{g:g}" for g in GAINS_SD
    ]
    lines = [
        "| config | campaigns x experiments | false `improved` / 100 nulls | false candidates / 100 nulls "
        "| confirmed false wins / campaign (95%) | "
        + " | ".join(f"power {g} sd" for g in gains)
        + " | extra runs / candidate | runs / experiment |",
        "| --- " * (7 + len(gains)) + "|",
    ]
    for s in summaries:
        low, high = s["survived_false_interval"]
        cells = []
        for gain in gains:
            p = s["power"].get(gain)
            if p is None:
                cells.append("-")
            else:
                lo, hi = p["confirmed_interval"]
                cells.append(
                    f"{p['confirmed']:.0%} [{lo:.0%}, {hi:.0%}] (candidates {p['candidate']:.0%})"
                )
        lines.append(
            f"| {s['label']}, agent confirms {s['config']['agent_confirms']} "
            f"| {s['campaigns']} x {s['config']['experiments']} "
            f"| {_figure(s['false_improved_per_100_nulls'])} | {_figure(s['false_candidates_per_100_nulls'])} "
            f"| {s['survived_false_per_campaign']:.2f} [{low:.2f}, {high:.2f}] "
            f"| {' | '.join(cells)} "
            f"| {s['extra_runs_per_candidate']:.2f} ({s['experiments_confirmed']} confirmed) "
            f"| {s['runs_per_experiment']:.3f} |"
        )
    return "\n".join(lines)


def report(
    summaries: Sequence[dict[str, Any]], noise: MeasuredNoise, facts: dict[str, Any], extra: str
) -> str:
    """The markdown page: the plain statement that runs are simulated, the facts, the table."""
    sd_line = (
        f"sd used: {noise.sd:.4f} (mean {noise.mean:.4f}) from {noise.source}. "
        f"Verdict rule under test: {'server confirms candidates' if rule_has_candidates() else 'one run vs k x sd of the baseline runs (no candidate verdict)'}."
    )
    lab_line = ", ".join(
        f"{s['label']}: the Lab's own sd estimate averaged {s['lab_sd_mean']:.4f} (noise_k x sd {s['threshold_mean']:.4f}), "
        f"{s['seconds_per_campaign']:.1f} s per campaign"
        for s in summaries
    )
    return "\n\n".join(
        [
            f"**{SIMULATED_HEADER}**",
            sd_line,
            f"Machine: {facts['platform']}, {facts['cpus']} CPUs, Python {facts['python']}, "
            f"load average {facts['load_average']}.",
            markdown_table(summaries),
            "Columns: false `improved` = null experiments whose final verdict is `improved`; false "
            "candidates = nulls that read `improved` after one run or had confirmation runs spent on "
            "them; confirmed false wins = nulls whose win survived confirmation (bench/campaign.py "
            "`survived_confirmation`), mean per campaign with a 95% interval (bootstrap over campaigns; exact "
            "Poisson when none had any); power = share of "
            "the experiments carrying that true gain whose win survived confirmation (Wilson 95%; after "
            "it the share that became candidates, as false candidates above); extra runs per "
            "candidate = confirmation runs / experiments that got any; runs per experiment counts "
            "every run the Lab made (baselines, experiments, confirmations, drift checks).",
            lab_line + ".",
            extra,
        ]
    ).strip()


# ------------------------------------------------------------------ the real short campaign


def real_campaign(
    data_dir: Path,
    *,
    nulls: int,
    budget_seconds: float,
    budget_kind: str | None,
    eval_windows: int,
    agent_confirms: int,
) -> dict[str, Any]:
    """A short campaign of null changes with real training through the real Lab and executor.

    `budget_kind` None leaves the clock to the Lab's default. The Lab's home is kept (its path
    is in the result) so that the runs' logs can be read afterwards.
    """
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="campaign-real-"))
    clock = {} if budget_kind is None else {"budget_kind": budget_kind}
    lab = make_lab(
        home / "home",
        data_dir,
        device="cpu",
        budget_seconds=budget_seconds,
        eval_windows=eval_windows,
        max_experiments_per_agent=None,
        **clock,
    )
    try:
        lab.scheduler.start()
        lab.ensure_baseline()
        settle(lab, timeout=3600)

        def progress(number: int, experiment_id: int) -> None:
            row = lab.experiment(experiment_id)
            print(
                f"  null {number}/{nulls}: #{experiment_id} {row['status']} metric_value {row['metric_value']} "
                f"verdict {row['verdict']} cpu share {row.get('cpu_share')}",
                flush=True,
            )

        gain_of = run_agent(
            lab,
            [0.0] * nulls,
            truth=None,
            base_mean=0.0,
            sd=0.0,
            policy=AgentPolicy(agent_confirms),
            on_experiment=progress,
        )
        outcomes = campaign_outcomes(lab, gain_of)
        runs = run_counts(lab)
        noise = lab.noise()
        rows = [lab.experiment(i) for i in gain_of]
        baseline_rows = lab.store.list_experiments(kind="baseline", order="oldest", limit=100)
        all_rows = lab.store.list_experiments(order="oldest", limit=10_000)
    finally:
        lab.close()
    null_values = [
        r["metric_value"] for r in rows if r["status"] == "ok" and r["metric_value"] is not None
    ]
    return {
        "home": str(home),
        "budget_seconds": budget_seconds,
        "budget_kind": baseline_rows[0]["budget_kind"] if baseline_rows else budget_kind,
        "eval_windows": eval_windows,
        "outcomes": [dataclasses.asdict(o) for o in outcomes],
        "runs": runs,
        "lab_sd": noise.sd,
        "lab_baseline_mean": noise.mean,
        "threshold": lab.settings.noise_k * noise.sd,
        "baseline_values": [r["metric_value"] for r in baseline_rows],
        "null_values": null_values,
        "rows": [
            {
                key: r.get(key)
                for key in ("id", "kind", "seed", "status", "metric_value", "verdict", "cpu_share")
            }
            | {"note": (r.get("metrics") or {}).get("verdict_note")}
            for r in all_rows
        ],
        "seconds": time.monotonic() - started,
    }


def compare_with_simulation(real: dict[str, Any], simulated: dict[str, Any]) -> dict[str, Any]:
    """The real campaign beside simulated campaigns of the same size at the same sd (the real
    Lab's own estimate): the share of nulls that became candidates or `improved`, and the spread
    of the null results around the baseline mean in sd units (the simulation assumes N(0, 1))."""
    sd = real["lab_sd"]
    mean = real["lab_baseline_mean"]
    nulls = real["null_values"]
    z = [(v - mean) / sd for v in nulls] if sd and mean is not None else []
    n = len(real["outcomes"])
    candidates = sum(o["candidate"] for o in real["outcomes"])
    improved = sum(o["verdict"] == "improved" for o in real["outcomes"])
    return {
        "nulls": n,
        "null_ok": len(nulls),
        "real_candidates_share": candidates / n if n else None,
        "real_candidates_interval": wilson_interval(candidates, n),
        "real_improved_share": improved / n if n else None,
        "simulated_candidates_share": simulated["false_candidates_per_100_nulls"] / 100,
        "simulated_improved_share": simulated["false_improved_per_100_nulls"] / 100,
        "simulated_campaigns": simulated["campaigns"],
        "null_z_mean": statistics.fmean(z) if z else None,
        "null_z_sd": statistics.stdev(z) if len(z) > 1 else None,
        "null_sd": statistics.stdev(nulls) if len(nulls) > 1 else None,
        "baseline_sd": sd,
        "simulation_assumes": "each null's z ~ N(0, 1) around the baseline mean, independent runs",
    }


# ------------------------------------------------------------------ main


def prepared_data(work: Path) -> Path:
    """The default corpus prepared once into `work` (about 3 s); each Lab gets a copy."""
    from trainer.prepare import prepare

    data_dir = work / "data"
    prepare(data_dir, quiet=True)
    return data_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=700)
    parser.add_argument("--campaigns", type=int, default=20, help="R campaigns per configuration")
    parser.add_argument(
        "--true-share",
        type=float,
        nargs="+",
        default=[0.0, 0.1],
        help="share of experiments with a true gain of 1, 2 or 3 sd (one configuration each)",
    )
    parser.add_argument(
        "--agent-confirms",
        type=int,
        default=None,
        help="confirmation runs the agent asks for on each `improved` (default: 2 under the "
        "one-run rule, as program.md advises; 0 when the server confirms candidates itself)",
    )
    parser.add_argument(
        "--sd", type=float, default=None, help="default: bench/results/trainer.json"
    )
    parser.add_argument("--base-mean", type=float, default=None)
    parser.add_argument(
        "--seed-share",
        type=float,
        default=0.0,
        help="share of the run-to-run variance that runs with the same seed share (0: independent)",
    )
    parser.add_argument("--measure-baseline", type=int, default=0, metavar="N")
    parser.add_argument("--baseline-budget", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--real", action="store_true", help="one short real campaign of nulls")
    parser.add_argument("--real-nulls", type=int, default=12)
    parser.add_argument("--real-budget", type=float, default=10.0)
    parser.add_argument("--real-budget-kind", choices=["default", "wall", "cpu"], default="default")
    parser.add_argument("--real-eval-windows", type=int, default=4)
    args = parser.parse_args(argv)
    if args.agent_confirms is None:
        args.agent_confirms = 0 if rule_has_candidates() else 2

    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="campaign-data-") as work:
        data_dir = prepared_data(Path(work))
        if args.real:
            return run_real(args, data_dir, facts)
        if args.measure_baseline:
            noise = measure_baseline_noise(data_dir, args.measure_baseline, args.baseline_budget)
        elif args.sd is not None:
            noise = MeasuredNoise(args.sd, args.base_mean or 1.86, 0, "--sd on the command line")
        else:
            noise = noise_from_results()
        configs = [
            CampaignConfig(
                experiments=args.experiments,
                true_share=share,
                sd=noise.sd,
                base_mean=args.base_mean or noise.mean,
                agent_confirms=args.agent_confirms,
                seed_share=args.seed_share,
            )
            for share in args.true_share
        ]
        started = time.monotonic()
        jobs = [
            (config, str(data_dir), args.seed * 1_000_003 + ci * 10_007 + r)
            for ci, config in enumerate(configs)
            for r in range(args.campaigns)
        ]
        print(SIMULATED_HEADER, flush=True)
        print(
            f"{len(jobs)} campaigns of {args.experiments} experiments on {args.workers} workers; "
            f"sd {noise.sd:.4f} from {noise.source}",
            flush=True,
        )
        results = []
        with multiprocessing.get_context("spawn").Pool(max(1, args.workers)) as pool:
            for done, result in enumerate(pool.imap(_simulate_job, jobs), start=1):
                results.append(result)
                if done % 10 == 0 or done == len(jobs):
                    print(
                        f"  {done}/{len(jobs)} campaigns, {time.monotonic() - started:.0f} s",
                        flush=True,
                    )
        elapsed = time.monotonic() - started
    summaries = []
    for ci, config in enumerate(configs):
        summaries.append(
            summarise(config, results[ci * args.campaigns : (ci + 1) * args.campaigns])
        )
    timing = (
        f"Wall time: {elapsed:.0f} s for {len(jobs)} campaigns x {args.experiments} experiments "
        f"on {args.workers} worker processes. Command: `python bench/campaign.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`."
    )
    text = report(summaries, noise, facts, timing)
    print(text)
    if args.markdown:
        args.markdown.write_text(f"# Campaign bench\n\n{text}\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "simulated": True,
                    "note": SIMULATED_HEADER,
                    "noise": dataclasses.asdict(noise),
                    "machine": facts,
                    "seconds": elapsed,
                    "summaries": summaries,
                },
                indent=1,
            )
        )
    return 0


def run_real(args: argparse.Namespace, data_dir: Path, facts: dict[str, Any]) -> int:
    """`--real`: one real short campaign of null changes, then `--campaigns` simulated campaigns
    of the same size at the sd the real Lab measured; both rows and the comparison."""
    kind = None if args.real_budget_kind == "default" else args.real_budget_kind
    print(
        f"REAL RUNS: {args.real_nulls} null changes with real training, {args.real_budget:g} s "
        f"budget ({kind or 'the Lab default'} clock), {args.real_eval_windows} eval windows",
        flush=True,
    )
    real = real_campaign(
        data_dir,
        nulls=args.real_nulls,
        budget_seconds=args.real_budget,
        budget_kind=kind,
        eval_windows=args.real_eval_windows,
        agent_confirms=args.agent_confirms,
    )
    config = CampaignConfig(
        experiments=args.real_nulls,
        true_share=0.0,
        sd=real["lab_sd"],
        base_mean=real["lab_baseline_mean"] or 0.0,
        agent_confirms=args.agent_confirms,
        seed_share=args.seed_share,
        budget_seconds=args.real_budget,
    )
    summary = summarise(config, [real])
    summary["label"] = "REAL campaign, nulls only"
    print(f"simulating {args.campaigns} campaigns of the same size at sd {real['lab_sd']:.4f}")
    jobs = [(config, str(data_dir), args.seed * 1_000_003 + r) for r in range(args.campaigns)]
    with multiprocessing.get_context("spawn").Pool(max(1, args.workers)) as pool:
        simulated = summarise(config, pool.map(_simulate_job, jobs))
    simulated["label"] = "SIMULATED, same size and sd"
    comparison = compare_with_simulation(real, simulated)
    noise = MeasuredNoise(
        real["lab_sd"],
        real["lab_baseline_mean"] or 0.0,
        len(real["baseline_values"]),
        f"the real campaign's own {len(real['baseline_values'])} baseline runs "
        f"({real['budget_seconds']:g} s {real['budget_kind']} budget)",
    )
    extra = (
        f"Real campaign: {real['seconds']:.0f} s, Lab home {real['home']}. Baseline values "
        f"{[round(v, 4) for v in real['baseline_values'] if v is not None]}; null values "
        f"{[round(v, 4) for v in real['null_values']]}. Comparison with the simulation at the "
        f"same sd: {json.dumps(comparison)}"
    )
    text = report([summary, simulated], noise, facts, extra).replace(
        f"**{SIMULATED_HEADER}**",
        "**The first row is REAL RUNS (real training through the real Lab and executor); the "
        "second row's runs are SIMULATED (drawn from N(true mean, sd)).**",
    )
    print(text)
    if args.markdown:
        args.markdown.write_text(f"# Campaign bench, real short campaign\n\n{text}\n")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "simulated": False,
                    "machine": facts,
                    "real": real,
                    "real_summary": summary,
                    "simulated_summary": simulated,
                    "comparison": comparison,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
