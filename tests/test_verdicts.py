"""Noise-aware verdicts on stored numbers: thresholds, seed-only changes, contention, confirmation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox.runner import RunResult, cpu_share
from server.diff_review import is_seed_only, review_diff
from server.lab import Lab, LabError, LabSettings, unified_diff
from server.recording import is_contended
from server.verdicts import (
    ASSUMED_SD,
    CANDIDATE,
    IMPROVED,
    WITHIN_NOISE,
    WORSE,
    ErrorBudget,
    Noise,
    Reference,
    judge_confirmation,
    screen,
    t_cdf,
    t_quantile,
)

BUDGET = ErrorBudget()  # 0.5 false wins per 700 null changes, 16% screened, 4 fresh seeds
REFERENCE = Reference(mean=1.0, runs=4, experiment_id=None, label="the baseline (mean of 4 runs)")
KNOWN = Noise(sd=0.01, runs=4, mean=1.0, measured=True, df=30)


def test_student_t_matches_tables() -> None:
    for p, df, table in [(0.975, 10, 2.228), (0.99, 5, 3.365), (0.995, 2, 9.925), (0.9, 30, 1.310)]:
        assert t_quantile(p, df) == pytest.approx(table, abs=1e-3)
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)
    assert t_quantile(0.975, float("inf")) == pytest.approx(1.95996, abs=1e-4)
    assert t_quantile(0.1, 7) == pytest.approx(-t_quantile(0.9, 7))


def test_noise_from_values_measured_and_assumed() -> None:
    measured = Noise.from_values([1.00, 1.02, 1.04])
    assert measured.measured and measured.runs == 3 and measured.df == 2
    assert measured.sd == pytest.approx(0.02)
    assert measured.mean == pytest.approx(1.02)
    single = Noise.from_values([1.0])
    assert not single.measured and single.sd == ASSUMED_SD


def test_pooled_noise_leaves_a_disturbed_run_out() -> None:
    """Pooled over groups of repeated runs; once the pool has the degrees of freedom to judge, a
    run far from its group's others is left out instead of inflating the sd."""
    groups = [[2.62, 2.63, 2.61, 2.62], [2.50, 2.51, 2.49, 2.50], [2.55, 2.56, 2.54, 3.10]]
    ids = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    noise = Noise.pooled(groups, baseline=groups[0], ids=ids)
    assert noise.left_out == (12,) and noise.sd == pytest.approx(0.0082, abs=0.001)
    assert noise.df == 8 and noise.mean == pytest.approx(2.62)
    naive = Noise.pooled([g for g in groups], baseline=groups[0])
    assert naive.sd < 0.02  # still robust without ids (the id is simply not reported)


def test_screen_makes_candidates_never_improvements() -> None:
    spread = 0.01 * (1 + 1 / 4) ** 0.5
    at = t_quantile(1 - BUDGET.screen_share, 30) * spread
    just_over = screen(
        status="ok", metric_value=1.0 - at - 1e-4, reference=REFERENCE, noise=KNOWN, budget=BUDGET
    )
    assert just_over.verdict == CANDIDATE and "fresh seeds" in just_over.note
    far = screen(status="ok", metric_value=0.5, reference=REFERENCE, noise=KNOWN, budget=BUDGET)
    assert far.verdict == CANDIDATE  # however good one run looks, it is only a candidate
    inside = screen(
        status="ok", metric_value=1.0 - at + 1e-4, reference=REFERENCE, noise=KNOWN, budget=BUDGET
    )
    assert inside.verdict == WITHIN_NOISE
    worse = screen(status="ok", metric_value=1.05, reference=REFERENCE, noise=KNOWN, budget=BUDGET)
    assert worse.verdict == WORSE


def test_failed_runs_first_results_and_disqualified_runs() -> None:
    kwargs = dict(reference=REFERENCE, noise=KNOWN, budget=BUDGET)
    assert screen(status="crash", metric_value=None, **kwargs).verdict == "failed"
    assert screen(status="ok", metric_value=float("nan"), **kwargs).verdict == "failed"
    first = screen(status="ok", metric_value=0.9, reference=None, noise=KNOWN, budget=BUDGET)
    assert first.verdict == WITHIN_NOISE and "nothing measured yet" in first.note
    seed_only = screen(
        status="ok", metric_value=0.5, disqualifications=["seed-only change"], **kwargs
    )
    assert seed_only.verdict == WITHIN_NOISE and "cannot count as an improvement" in seed_only.note
    contended = screen(
        status="ok", metric_value=1.5, not_comparable="the CPU was contended", **kwargs
    )
    assert contended.verdict == WITHIN_NOISE and "not compared" in contended.note  # nor worse


def test_confirmation_decides_on_fresh_seeds_alone() -> None:
    """The candidate's mean over its fresh-seed runs is tested at the campaign's level; two runs
    that show no gain at all end it early; fewer runs than planned decide nothing else."""
    kwargs = dict(reference=REFERENCE, noise=KNOWN, budget=BUDGET)
    assert judge_confirmation(values=[0.98], **kwargs) is None
    assert judge_confirmation(values=[0.95, 0.96, 0.95], **kwargs) is None
    futile = judge_confirmation(values=[1.01, 1.00], **kwargs)
    assert (
        futile is not None and futile.verdict == WITHIN_NOISE and "did not hold up" in futile.note
    )
    spread = 0.01 * (1 / 4 + 1 / 4) ** 0.5
    needed = t_quantile(1 - BUDGET.confirm_alpha, 30) * spread
    good = judge_confirmation(values=[1.0 - needed - 0.001] * 4, **kwargs)
    assert good is not None and good.verdict == IMPROVED and "1 in" not in good.note
    assert "fresh seeds" in good.note and "error budget" in good.note
    short = judge_confirmation(values=[1.0 - needed + 0.001] * 4, **kwargs)
    assert short is not None and short.verdict == WITHIN_NOISE and "not confirmed" in short.note
    assert BUDGET.confirm_alpha == pytest.approx(0.5 / (700 * 0.16))


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


@pytest.fixture
def wall_lab(tmp_path: Path, data_dir: Path) -> Lab:
    """quiet_lab under a wall-clock budget (where a CPU share of 0.3 is contended)."""
    shutil.copytree(data_dir, tmp_path / "data")
    lab = Lab(
        LabSettings(
            home=tmp_path, budget_seconds=60, budget_kind="wall", start_scheduler=False, noise_k=2.0
        )
    )
    yield lab
    lab.close()


def _finish(lab: Lab, experiment_id: int, metric_value: float, share: float = 0.95) -> dict:
    lab.store.update_experiment(experiment_id, status="running")
    lab.on_finish(
        experiment_id,
        RunResult(status="ok", metric_value=metric_value, cpu_share=share, phase="done"),
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


def _confirmations(lab: Lab, experiment_id: int) -> list[dict]:
    return lab.store.confirmation_runs(experiment_id)


def test_a_single_run_is_a_candidate_and_fresh_seeds_decide(quiet_lab: Lab) -> None:
    """One run can only make a candidate; the server queues fresh-seed runs (random seeds, never the
    paired one, charged to whoever asked) and their mean alone turns it improved."""
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])  # sd 0.0163, df 3
    noise = quiet_lab.noise_info()
    assert noise["measured"] and noise["sd"] == pytest.approx(0.01633, abs=1e-5)
    assert noise["reference"]["runs"] == 4 and "fresh seeds" in noise["rule"]
    within = _finish(quiet_lab, _submit(quiet_lab, "alice", "0.021"), 3.01)
    assert within["verdict"] == WITHIN_NOISE and _confirmations(quiet_lab, within["id"]) == []
    idea = _submit(quiet_lab, "alice", "0.03")
    quiet_lab.store.update_experiment(idea, requested_by="carol")
    row = _finish(quiet_lab, idea, 2.90)
    assert row["verdict"] == CANDIDATE and "fresh seeds" in row["metrics"]["verdict_note"]
    runs = _confirmations(quiet_lab, idea)
    assert len(runs) == quiet_lab.settings.confirm_runs == 4
    seeds = {r["seed"] for r in runs}
    assert len(seeds) == 4 and all(abs(s - quiet_lab.settings.seed) > 10_000 for s in seeds)
    assert {r["requested_by"] for r in runs} == {"carol"}  # charged to who asked for the idea
    assert all(quiet_lab.experiment(r["id"])["agent"] == "alice" for r in runs)  # credited
    for run, value in zip(runs, (2.93, 2.91, 2.95, 2.92), strict=True):
        _finish(quiet_lab, run["id"], value)
    judged = quiet_lab.experiment(idea)
    assert judged["verdict"] == IMPROVED, judged["metrics"]["verdict_note"]
    assert "not the screening run" in judged["metrics"]["verdict_note"]
    assert judged["delta_best"] == pytest.approx(3.02 - 2.9275, abs=1e-4)
    reference = quiet_lab.reference()
    assert reference.experiment_id == idea and reference.mean == pytest.approx(2.9275)
    assert reference.runs == 4  # its fresh-seed runs, not the lucky screening run (2.90)
    worse = _finish(quiet_lab, _submit(quiet_lab, "bob", "0.001"), 3.10)
    assert worse["verdict"] == WORSE and f"#{idea}" in worse["metrics"]["verdict_note"]


def test_a_lucky_run_that_does_not_hold_up_stops_early(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    idea = _submit(quiet_lab, "alice", "0.03")
    assert _finish(quiet_lab, idea, 2.95)["verdict"] == CANDIDATE
    runs = _confirmations(quiet_lab, idea)
    _finish(quiet_lab, runs[0]["id"], 3.03)
    assert quiet_lab.experiment(idea)["verdict"] == CANDIDATE  # one run decides nothing
    _finish(quiet_lab, runs[1]["id"], 3.02)
    judged = quiet_lab.experiment(idea)
    assert (
        judged["verdict"] == WITHIN_NOISE and "did not hold up" in judged["metrics"]["verdict_note"]
    )
    # the two runs not needed any more are cancelled before they cost anything
    assert [quiet_lab.experiment(r["id"])["status"] for r in runs[2:]] == ["cancelled", "cancelled"]
    assert quiet_lab.reference().experiment_id is None  # the baseline is still the reference


def test_a_fresh_seed_that_fails_ends_the_candidate(quiet_lab: Lab) -> None:
    """Hack: crash (or train past the budget) on the fresh seeds whose draws look bad, so that
    only the good draws are judged. Defence: a server run that fails because of its code ends
    the candidate within_noise at once; the server's other queued runs are cancelled."""
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    idea = _submit(quiet_lab, "alice", "0.03")
    _finish(quiet_lab, idea, 2.90)
    runs = _confirmations(quiet_lab, idea)
    _finish(quiet_lab, runs[0]["id"], 2.89)
    quiet_lab.store.update_experiment(runs[1]["id"], status="running")
    quiet_lab.on_finish(runs[1]["id"], RunResult(status="crash", failure_reason="boom"))
    judged = quiet_lab.experiment(idea)
    assert (
        judged["verdict"] == WITHIN_NOISE
        and "failed on a fresh seed" in judged["metrics"]["verdict_note"]
    )
    assert [quiet_lab.experiment(r["id"])["status"] for r in runs[2:]] == ["cancelled"] * 2


def test_runs_the_machine_spoiled_are_replaced_then_given_up(wall_lab: Lab) -> None:
    """A fresh-seed run on a contended machine says nothing about the code: it is replaced, up to
    twice the planned number in all; then the candidate ends within_noise, never stuck."""
    _baseline(wall_lab, [3.00, 3.02, 3.04, 3.02])
    idea = _submit(wall_lab, "alice", "0.03")
    _finish(wall_lab, idea, 2.90)
    for _ in range(3):
        for run in [r for r in _confirmations(wall_lab, idea) if r["status"] == "queued"]:
            _finish(wall_lab, run["id"], 2.80, share=0.3)
    runs = _confirmations(wall_lab, idea)
    assert len(runs) == 8  # the planned 4, replaced once
    judged = wall_lab.experiment(idea)
    assert judged["verdict"] == WITHIN_NOISE
    assert "could not be confirmed" in judged["metrics"]["verdict_note"]


def test_agents_cannot_steer_a_candidate_or_a_reference(quiet_lab: Lab) -> None:
    """Hack: cancel the server's fresh-seed runs of your candidate, then add your own
    confirm_experiment runs and keep the good ones; or, once improved, add lucky runs to drag the
    reference down. Defence: agents cannot cancel the server's runs; only the server's runs
    decide a verdict and make a reference; an agent's runs change neither."""
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    idea = _submit(quiet_lab, "alice", "0.03")
    _finish(quiet_lab, idea, 2.90)
    server_runs = _confirmations(quiet_lab, idea)
    with pytest.raises(LabError, match="cannot be cancelled by an agent"):
        quiet_lab.cancel("alice", server_runs[0]["id"])
    quiet_lab.store.set_quota("alice", max_queued=10)  # an operator who allows more live runs
    mine = quiet_lab.confirm("alice", idea, 4)
    for run_id in mine:
        _finish(quiet_lab, run_id, 2.50)  # far better than anything: not the server's runs
    assert quiet_lab.experiment(idea)["verdict"] == CANDIDATE
    for run, value in zip(server_runs, (3.01, 3.02, 3.03, 3.0), strict=True):
        _finish(quiet_lab, run["id"], value)
    assert quiet_lab.experiment(idea)["verdict"] == WITHIN_NOISE
    assert quiet_lab.reference().experiment_id is None
    entry = next(e for e in quiet_lab.leaderboard() if e["id"] == idea)
    assert not entry["confirmed"] and entry["runs"] == 4  # the server's runs, not the agent's


def test_a_candidate_whose_runs_were_lost_is_settled_at_start(quiet_lab: Lab) -> None:
    """A server that stopped between the screening and the queueing of the fresh-seed runs, or
    whose runs were lost, leaves a candidate with nothing live: the next start re-queues them."""
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    idea = _submit(quiet_lab, "alice", "0.03")
    _finish(quiet_lab, idea, 2.90)
    for run in _confirmations(quiet_lab, idea):
        quiet_lab.store.update_experiment(run["id"], status="interrupted", attempt=2)
    quiet_lab.recover()
    live = [r for r in _confirmations(quiet_lab, idea) if r["status"] == "queued"]
    assert len(live) == 4 and quiet_lab.experiment(idea)["verdict"] == CANDIDATE


def test_seed_only_change_never_becomes_a_candidate(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.01])
    text = quiet_lab.baseline_files["train.py"].replace(
        "torch.manual_seed(SEED)", "torch.manual_seed(137)"
    )
    assert text != quiet_lab.baseline_files["train.py"]
    experiment_id, _ = quiet_lab.submit(
        "mallory", "lucky seed", files={"train.py": text}, check_quota=False
    )
    row = _finish(quiet_lab, experiment_id, 2.50)  # far better than the noise: not even a candidate
    assert row["verdict"] == WITHIN_NOISE and _confirmations(quiet_lab, experiment_id) == []
    assert {"seed_only", "seed_source"} & {f["name"] for f in row["flags"]}
    assert all(e["id"] != experiment_id for e in quiet_lab.leaderboard())


def test_seed_ignoring_code_is_caught_by_its_confirmation(quiet_lab: Lab) -> None:
    """Runs of one code at different seeds with bitwise-identical metric_value: the code ignores the
    seed whatever it says, so it is flagged seed_ignored and never improved."""
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    idea = _submit(quiet_lab, "alice", "0.03")
    _finish(quiet_lab, idea, 2.90)
    for run in _confirmations(quiet_lab, idea):
        _finish(quiet_lab, run["id"], 2.90)
    judged = quiet_lab.experiment(idea)
    assert judged["verdict"] == WITHIN_NOISE and judged["disqualified"] == 1
    assert "seed_ignored" in [f["name"] for f in judged["flags"]]
    assert quiet_lab.reference().experiment_id is None
    assert quiet_lab.noise().runs == 4  # its zero spread is not taken for the noise


def test_contended_runs_are_not_compared_and_never_the_reference(wall_lab: Lab) -> None:
    _baseline(wall_lab, [3.00, 3.01])
    row = _finish(wall_lab, _submit(wall_lab, "alice", "0.05"), 3.50, share=0.4)
    assert "contended" in [f["name"] for f in row["flags"]]
    assert row["verdict"] == WITHIN_NOISE and row["disqualified"] == 1  # not compared: nor worse
    assert "not compared" in row["metrics"]["verdict_note"]
    # a contended baseline run is re-measured with its own seed, and is not in the reference
    (rerun_of,) = wall_lab.ensure_baseline(3)
    seed = wall_lab.experiment(rerun_of)["seed"]
    _finish(wall_lab, rerun_of, 2.20, share=0.3)
    queued = wall_lab.store.list_experiments(kind="baseline", status="queued")
    assert seed in [r["seed"] for r in queued]  # measured again with the same paired seed
    assert wall_lab.reference().runs == 2 and wall_lab.reference().mean == pytest.approx(3.005)
    # under a CPU-time budget only a starved run is contended
    cpu_run = RunResult(status="ok", cpu_share=0.4)
    assert is_contended(cpu_run, "cpu", wall_lab.settings, "wall")
    assert not is_contended(cpu_run, "cpu", wall_lab.settings, "cpu")
    assert is_contended(RunResult(status="ok", cpu_share=0.2), "cpu", wall_lab.settings, "cpu")


def test_a_squeezed_timeout_is_queued_again_once(quiet_lab: Lab) -> None:
    """A run the runner measured as squeezed by other load is not its code's timeout: it is
    re-queued once; the retry's outcome is recorded whatever it is."""
    _baseline(quiet_lab, [3.00, 3.01])
    idea = _submit(quiet_lab, "alice", "0.05")
    quiet_lab.store.update_experiment(idea, status="running")
    squeezed = RunResult(status="timeout", failure_reason="ran past budget")
    squeezed.squeezed = True
    quiet_lab.on_finish(idea, squeezed)
    first = quiet_lab.experiment(idea)
    assert first["status"] == "interrupted" and "squeezed" in first["failure_reason"]
    retry = quiet_lab.store.retry_of(idea)
    assert retry is not None and quiet_lab.experiment(retry)["status"] == "queued"
    quiet_lab.store.update_experiment(retry, status="running")
    quiet_lab.on_finish(retry, squeezed)
    assert quiet_lab.experiment(retry)["status"] == "timeout"  # once, not forever


def test_leaderboard_ranks_confirmed_means_first(quiet_lab: Lab) -> None:
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    lucky = _submit(quiet_lab, "alice", "0.03")
    _finish(quiet_lab, lucky, 2.80)  # a lucky single run: a candidate...
    for run, value in zip(
        _confirmations(quiet_lab, lucky), (2.951, 2.96, 2.94, 2.949), strict=True
    ):
        _finish(quiet_lab, run["id"], value)
    assert quiet_lab.experiment(lucky)["verdict"] == IMPROVED
    single = _submit(quiet_lab, "bob", "0.04")
    _finish(quiet_lab, single, 2.93)  # within the noise of the new reference
    stats = quiet_lab.confirmation_stats(lucky)
    # the fresh-seed runs only, published to 5 decimals; the screening run beside them
    assert stats["n"] == 4 and stats["mean"] == 2.95 and stats["screening_run"] == 2.80
    board = quiet_lab.leaderboard()
    assert [e["id"] for e in board[:3]] == [lucky, board[1]["id"], single]
    assert board[0]["confirmed"] and board[0]["runs"] == 4
    assert board[1]["agent"] == "server" and board[1]["confirmed"]  # the baseline
    assert not board[2]["confirmed"] and board[2]["runs"] == 1


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


def test_leaderboard_flags_a_val_gain_the_holdout_does_not_show(quiet_lab: Lab) -> None:
    """Each entry's sealed holdout mean sits beside its val mean; a val gain over the baseline that
    does not show (less than half of it) on the holdout is flagged: fitting the val set."""
    _baseline(quiet_lab, [3.00, 3.02, 3.04, 3.02])
    base_ids = [r["id"] for r in quiet_lab.store.list_experiments(kind="baseline", limit=10)]
    for run_id, value in zip(base_ids, (3.01, 3.03, 3.02, 3.02), strict=True):
        quiet_lab.store.sealed.record(run_id, metric_exact=None, holdout_value=value)
    ideas = []
    for lr, screening, fresh in (
        ("0.03", 2.90, (2.903, 2.91, 2.897, 2.90)),
        ("0.04", 2.80, (2.801, 2.81, 2.79, 2.799)),
    ):
        idea = _submit(quiet_lab, "alice", lr)
        _finish(quiet_lab, idea, screening)
        for run, value in zip(_confirmations(quiet_lab, idea), fresh, strict=True):
            _finish(quiet_lab, run["id"], value)
        assert quiet_lab.experiment(idea)["verdict"] == IMPROVED
        holdout_runs = [r for r in _confirmations(quiet_lab, idea) if r["status"] == "queued"]
        assert len(holdout_runs) == quiet_lab.settings.holdout_runs
        assert all(
            quiet_lab.lifecycle.scores_holdout(quiet_lab.experiment(r["id"])) for r in holdout_runs
        )
        ideas.append((idea, holdout_runs))
    (transfers, transfer_runs), (overfits, overfit_runs) = ideas
    for run, holdout in zip(transfer_runs, (2.91, 2.92), strict=True):
        _finish(quiet_lab, run["id"], 2.90)
        quiet_lab.store.sealed.record(run["id"], metric_exact=None, holdout_value=holdout)
    for run, holdout in zip(overfit_runs, (3.01, 3.00), strict=True):
        _finish(quiet_lab, run["id"], 2.80)
        quiet_lab.store.sealed.record(run["id"], metric_exact=None, holdout_value=holdout)
    board = {e["id"]: e for e in quiet_lab.leaderboard()}
    assert (
        board[transfers]["holdout_value"] == pytest.approx(2.915)
        and board[transfers]["holdout_flag"] is None
    )
    assert (
        board[overfits]["holdout_runs"] == 2 and "does not show" in board[overfits]["holdout_flag"]
    )
    assert quiet_lab.store.sealed.holdout_reads() == 8
    # an experiment's own run never scores the holdout; the operator's bound stops all reads
    assert not quiet_lab.lifecycle.scores_holdout(quiet_lab.experiment(transfers))
    quiet_lab.settings.holdout_max_reads = 8
    assert not quiet_lab.lifecycle.scores_holdout(quiet_lab.experiment(base_ids[0]))
