"""Noise-aware verdicts on stored numbers: thresholds, seed-only changes, contention, confirmation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox.runner import RunResult, cpu_share
from server.diff_review import is_seed_only, review_diff
from server.lab import Lab, LabSettings, unified_diff
from server.verdicts import ASSUMED_SD, IMPROVED, WITHIN_NOISE, WORSE, Noise, decide


def test_noise_from_values_measured_and_assumed() -> None:
    measured = Noise.from_values([1.00, 1.02, 1.04])
    assert measured.measured and measured.runs == 3
    assert measured.sd == pytest.approx(0.02)
    assert measured.mean == pytest.approx(1.02)
    single = Noise.from_values([1.0])
    assert not single.measured and single.sd == ASSUMED_SD


@pytest.mark.parametrize(
    ("val", "best", "expected"),
    [
        (0.95, 1.00, IMPROVED),  # 0.05 better, threshold 2 x 0.01 = 0.02
        (0.99, 1.00, WITHIN_NOISE),  # 0.01 better: inside the noise
        (1.01, 1.00, WITHIN_NOISE),
        (1.05, 1.00, WORSE),
    ],
)
def test_verdict_thresholds(val: float, best: float, expected: str) -> None:
    noise = Noise(sd=0.01, runs=3, mean=1.0, measured=True)
    verdict = decide(status="ok", val_bpb=val, best_bpb=best, noise=noise, k=2.0)
    assert verdict.verdict == expected
    assert verdict.threshold == pytest.approx(0.02)


def test_failed_runs_and_first_results() -> None:
    noise = Noise(sd=0.01, runs=3, mean=1.0, measured=True)
    assert decide(status="crash", val_bpb=None, best_bpb=1.0, noise=noise, k=2).verdict == "failed"
    assert (
        decide(status="ok", val_bpb=float("nan"), best_bpb=1.0, noise=noise, k=2).verdict
        == "failed"
    )
    first = decide(status="ok", val_bpb=0.9, best_bpb=None, noise=noise, k=2)
    assert first.verdict == WITHIN_NOISE and "no earlier result" in first.note


def test_disqualified_run_is_never_improved() -> None:
    noise = Noise(sd=0.001, runs=3, mean=1.0, measured=True)
    verdict = decide(
        status="ok",
        val_bpb=0.5,
        best_bpb=1.0,
        noise=noise,
        k=2,
        disqualifications=["seed-only change"],
    )
    assert verdict.verdict == WITHIN_NOISE
    assert "cannot count as an improvement" in verdict.note


BASE = "SEED = int(os.environ.get('AR_SEED', '0'))\nLR = 0.02\ntorch.manual_seed(SEED)\n"


def test_seed_only_changes_are_recognised() -> None:
    seed_change = unified_diff(
        {"train.py": BASE},
        {"train.py": BASE.replace("torch.manual_seed(SEED)", "torch.manual_seed(137)")},
    )
    assert is_seed_only(seed_change)
    lr_change = unified_diff(
        {"train.py": BASE}, {"train.py": BASE.replace("LR = 0.02", "LR = 0.03")}
    )
    assert not is_seed_only(lr_change)
    both = unified_diff(
        {"train.py": BASE},
        {"train.py": BASE.replace("LR = 0.02", "LR = 0.03").replace("(SEED)", "(7)")},
    )
    assert not is_seed_only(both)
    assert not is_seed_only("")


def test_contract_flags_name_what_is_touched() -> None:
    new = BASE + "import subprocess\nopen('/tmp/answer', 'w')\nBUDGET = 999\n"
    names = {flag.name for flag in review_diff(unified_diff({"train.py": BASE}, {"train.py": new}))}
    assert {"process_or_signal", "outside_paths", "timer"} <= names
    assert (
        review_diff(unified_diff({"train.py": BASE}, {"train.py": BASE.replace("0.02", "0.05")}))
        == []
    )


def test_cpu_share_uses_the_training_windows() -> None:
    # 2 threads fully busy from t=1 to t=5, then a single-threaded tail: the median window says ~1.0.
    samples = [(1.0 + 0.5 * i, 1.0 * i) for i in range(9)] + [(5.5, 8.25), (6.0, 8.5)]
    assert cpu_share(samples, threads=2, cpu_total=9.0, wall_total=7.0) == pytest.approx(
        1.0, abs=0.05
    )
    # too few samples: the whole-run average
    assert cpu_share([(1.0, 0.5)], threads=2, cpu_total=4.0, wall_total=4.0) == pytest.approx(0.5)


@pytest.fixture
def quiet_lab(tmp_path: Path, data_dir: Path) -> Lab:
    """A lab whose scheduler does not run: results are recorded by calling on_finish directly."""
    shutil.copytree(data_dir, tmp_path / "data")
    lab = Lab(LabSettings(home=tmp_path, budget_seconds=60, start_scheduler=False, noise_k=2.0))
    yield lab
    lab.close()


def _finish(lab: Lab, experiment_id: int, val_bpb: float, share: float = 0.95) -> dict:
    lab.store.update_experiment(experiment_id, status="running")
    lab.on_finish(
        experiment_id, RunResult(status="ok", val_bpb=val_bpb, cpu_share=share, phase="done")
    )
    return lab.experiment(experiment_id)


def _submit(lab: Lab, agent: str, lr: str, **kwargs) -> int:
    text = lab.baseline_files["train.py"].replace("MATRIX_LR = 0.02", f"MATRIX_LR = {lr}")
    assert text != lab.baseline_files["train.py"]
    experiment_id, _ = lab.submit(
        agent, f"matrix lr {lr}", files={"train.py": text}, check_quota=False, **kwargs
    )
    return experiment_id


def _baseline(lab: Lab, values: list[float]) -> None:
    for n, value in enumerate(values):
        experiment_id, _ = lab.submit(
            "server",
            f"baseline {n}",
            kind="baseline",
            files=dict(lab.baseline_files),
            seed=lab.settings.seed + n,
            check_quota=False,
            reuse=False,
        )
        _finish(lab, experiment_id, value)


def test_stored_results_get_noise_aware_verdicts(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.02, 3.04])  # sd 0.02 -> threshold 0.04
    noise = quiet_lab.noise_info()
    assert (
        noise["measured"]
        and noise["sd"] == pytest.approx(0.02)
        and noise["threshold"] == pytest.approx(0.04)
    )
    within = _finish(quiet_lab, _submit(quiet_lab, "alice", "0.021"), 2.99)
    assert (
        within["verdict"] == WITHIN_NOISE
        and "confirm_experiment" in within["metrics"]["verdict_note"]
    )
    better = _finish(quiet_lab, _submit(quiet_lab, "alice", "0.03"), 2.90)
    assert better["verdict"] == IMPROVED and better["delta_best"] == pytest.approx(
        0.09
    )  # vs 2.99, the best so far
    worse = _finish(quiet_lab, _submit(quiet_lab, "bob", "0.001"), 3.10)
    assert worse["verdict"] == WORSE


def test_seed_only_change_never_becomes_improved(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.01])
    text = quiet_lab.baseline_files["train.py"].replace(
        "torch.manual_seed(SEED)", "torch.manual_seed(137)"
    )
    assert text != quiet_lab.baseline_files["train.py"]
    experiment_id, _ = quiet_lab.submit(
        "mallory", "lucky seed", files={"train.py": text}, check_quota=False
    )
    row = _finish(
        quiet_lab, experiment_id, 2.50
    )  # far better than the noise: still not an improvement
    assert row["verdict"] == WITHIN_NOISE
    assert next(f["name"] for f in row["flags"]) == "seed_only"
    assert all(e["id"] != experiment_id for e in quiet_lab.leaderboard())


def test_contended_run_is_flagged_and_cannot_improve(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.01])
    row = _finish(quiet_lab, _submit(quiet_lab, "alice", "0.05"), 2.50, share=0.4)
    assert "contended" in [f["name"] for f in row["flags"]]
    assert row["verdict"] == WITHIN_NOISE and row["disqualified"] == 1
    # under a CPU-time budget only a starved run is contended
    quiet_lab.settings.budget_kind = "cpu"
    assert not quiet_lab._contended(RunResult(status="ok", cpu_share=0.4))
    assert quiet_lab._contended(RunResult(status="ok", cpu_share=0.2))


def test_confirmation_aggregates_and_ranks_the_leaderboard(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.02])
    lucky = _submit(quiet_lab, "alice", "0.03")
    _finish(quiet_lab, lucky, 2.80)  # a lucky single run...
    steady = _submit(quiet_lab, "bob", "0.04")
    _finish(quiet_lab, steady, 2.85)
    for run_id, value in zip(quiet_lab.confirm("alice", lucky, 2), (2.95, 2.99), strict=True):
        _finish(quiet_lab, run_id, value)
    seeds = {
        quiet_lab.experiment(i)["seed"]
        for i in quiet_lab.store.list_experiments(kind="confirmation", columns=["id"])
        for i in [i["id"]]
    }
    assert (
        len(seeds) == 2 and quiet_lab.settings.seed not in seeds
    )  # fresh seeds, not the paired one
    stats = quiet_lab.confirmation_stats(lucky)
    # published to 5 decimals: a mean of 4-decimal values carries no more information
    assert stats["n"] == 3 and stats["mean"] == round((2.80 + 2.95 + 2.99) / 3, 5)
    board = quiet_lab.leaderboard()
    assert [e["id"] for e in board[:2]] == [
        steady,
        lucky,
    ]  # the confirmed mean (2.913) ranks below 2.85
    assert board[1]["confirmed"] and board[1]["runs"] == 3 and not board[0]["confirmed"]


def test_the_best_is_re_measured_now_and_then_to_catch_drift(quiet_lab: Lab) -> None:
    quiet_lab.settings.drift_check_every = 2
    _baseline(quiet_lab, [3.00, 3.02])
    first = _finish(quiet_lab, _submit(quiet_lab, "alice", "0.03"), 2.90)
    assert quiet_lab.store.list_experiments(kind="drift_check") == []
    _finish(quiet_lab, _submit(quiet_lab, "alice", "0.04"), 2.95)
    (check,) = quiet_lab.store.list_experiments(kind="drift_check")
    assert (
        check["confirms_id"] == first["id"] and check["seed"] == first["seed"]
    )  # the same code, the same seed
    assert check["code"] == first["code"]
    _finish(quiet_lab, check["id"], 3.10)  # the machine got slower: 0.20 worse than the original
    drift = quiet_lab.noise_info()["last_drift_check"]
    assert (
        drift["of"] == first["id"]
        and drift["drift"] == pytest.approx(0.20)
        and drift["drifted"] is True
    )
