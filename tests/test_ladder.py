"""The promotion ladder with real (short) runs: transfer verdicts, a crash at the larger level,
combining diffs by three-way merge, and the refusals.

The runs are the template target's (targets/template, numpy, about a second each; AR_SCALE
raises its degree): the ladder is the server's part, the same for every target, and a GPT run
costs ~11 CPU-s besides its budget (at scale 2 on a CPU without fast bf16, one step and the
export took ~10 CPU-s more)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import TEMPLATE_TARGET, finished_run, template_lab, wait_until, wait_until_finished

from sandbox.target import load_target
from server.lab import Lab, ScaleLevel
from server.ladder import PromotionRefused, three_way_merge
from server.record import LIVE_STATUSES
from server.targets import run_prepare

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    # Level M runs on data of its own (server.levels): another folder, prepared by the target's
    # own prepare step with another secret, so its val set and fingerprint are not S's.
    m_home = tmp_path_factory.mktemp("ladder-m")
    assert run_prepare(load_target(TEMPLATE_TARGET), m_home / "data", [], quiet=True) == 0
    scales = (
        ScaleLevel("S", 1.0, 1),
        ScaleLevel.parse(f"M=1x2:device=cpu:data={m_home}"),
        ScaleLevel("L", 1.0, 1, device_hours_quota=0.0),
    )
    lab = template_lab(
        tmp_path_factory.mktemp("ladder"),
        budget_seconds=4,
        # CPU seconds: on the shared machine a 4 s wall-clock budget ends honest runs in `timeout`
        budget_kind="cpu",
        cpu_slots=2,  # a promotion's paired runs two at a time (start-up is one thread)
        baseline_repeats=0,
        eval_windows=2,
        scales=scales,
        promotion_repeats=2,
        confirm_runs=2,  # the server's own confirmation of a candidate: tests/test_verdicts.py
        drift_check_every=0,
        max_live_per_agent=10,
        contended_share=0.0,
        contended_share_cpu_budget=0.0,  # verdicts from the code, not the shared machine
    )
    lab.ensure_baseline(2)
    yield lab
    lab.close()


def wait_all(lab: Lab, ids: list[int], timeout: float = 900) -> list[dict]:
    return wait_until_finished(lab, ids, timeout=timeout)


def wait_idle(lab: Lab, timeout: float = 900) -> None:
    """Until no experiment is queued or running (a finished run may queue the next)."""
    wait_until(
        lambda: not lab.store.list_experiments(status=sorted(LIVE_STATUSES), limit=1),
        timeout=timeout,
        interval=0.5,
        message="experiments still queued or running",
    )


def variant(lab: Lab, old: str, new: str) -> dict[str, str]:
    text = lab.baseline_files["train.py"]
    assert old in text
    return {"train.py": text.replace(old, new)}


def run(lab: Lab, agent: str, description: str, files: dict[str, str]) -> dict:
    experiment_id, reused = lab.submit(agent, description, files=files, check_quota=False)
    assert reused is None
    return wait_all(lab, [experiment_id])[0]


def recorded(lab: Lab, agent: str, description: str, old: str, new: str) -> int:
    """A finished ok experiment of one edit, written into the record as the server records one."""
    return finished_run(lab, agent, description, files=variant(lab, old, new), metric_value=3.0)


def test_a_confirmed_change_is_promoted_and_its_transfer_recorded(lab: Lab) -> None:
    a = run(
        lab,
        "alice",
        "lr 0.05 -> 0.04",
        variant(lab, "LEARNING_RATE = 0.05", "LEARNING_RATE = 0.04"),
    )
    assert a["status"] == "ok", a["failure_reason"]
    with pytest.raises(PromotionRefused, match="is not a confirmed improvement"):
        lab.ladder.promote("alice", a["id"])
    # The server confirms a candidate on fresh seeds (tests/test_verdicts.py); here, where no
    # baseline is measured, its runs are queued the same way and the verdict is set as it would be.
    wait_all(lab, lab.confirm(None, a["id"], 1, server_runs="candidate"))
    # Where `a` happened to beat the threshold, the server queued its own confirmation runs
    # too: let every run finish, so that none lands in S's noise after it is read below.
    wait_idle(lab)
    lab.store.update_experiment(a["id"], verdict="improved")
    with pytest.raises(PromotionRefused, match="level 'XL' does not exist; the levels are S, M, L"):
        lab.ladder.promote("alice", a["id"], "XL")
    with pytest.raises(PromotionRefused, match="level S is not above S"):
        lab.ladder.promote("alice", a["id"], "S")
    with pytest.raises(PromotionRefused, match=r"level L has used 0\.00 of its 0 device-hours"):
        lab.ladder.promote("alice", a["id"], "L")

    # S's noise as it stands (its baselines, and a's repeated runs unless a flag left one out):
    # M's runs must not change it.
    s_noise = lab.noise("S")
    promotion = lab.ladder.promote("alice", a["id"])
    assert (
        promotion["to_level"] == "M"
        and len(promotion["run_ids"]) == 2
        and len(promotion["baseline_ids"]) == 2
    )
    runs = wait_all(lab, promotion["run_ids"] + promotion["baseline_ids"])
    assert all(r["scale"] == "M" and r["budget_seconds"] == 4.0 for r in runs)
    # M trains and is judged on its own data: its runs carry M's fingerprint (another val set),
    # and its baseline and noise are its own, never S's.
    s_machine, m_machine = lab.machines.of("S"), lab.machines.of("M")
    assert (
        m_machine.data_dir.parent.name.startswith("ladder-m")
        and m_machine.data_dir != s_machine.data_dir
    )
    assert m_machine.hardware != s_machine.hardware
    assert m_machine.hardware.split(" | val ")[0] == s_machine.hardware.split(" | val ")[0]
    assert all(r["status"] == "ok" and r["hardware"] == m_machine.hardware for r in runs), [
        (r["status"], r["failure_reason"], r["hardware"]) for r in runs
    ]
    baselines = lab.store.list_experiments(kind="baseline", limit=100)
    on_m = {r["id"] for r in baselines if r["hardware"] == m_machine.hardware}
    assert on_m == set(promotion["baseline_ids"])
    assert all(r["hardware"] == s_machine.hardware for r in baselines if r["id"] not in on_m)
    assert lab.noise("M").runs <= 2 and lab.noise("S") == s_noise and s_noise.runs >= 2
    # paired seeds: run n and baseline n share the server's seed n
    assert [r["seed"] for r in runs[:2]] == [r["seed"] for r in runs[2:]]
    ladder = lab.ladder.ladder(a["id"])
    (done,) = ladder["promotions"]
    assert done["status"] == "done"
    assert done["verdict"] in ("transfers", "does_not_transfer", "within_noise"), done["note"]
    assert done["small_gain"] is not None and done["large_gain"] is not None
    assert f"{done['large_gain']:+.4f} at M" in done["note"]
    levels = {level["level"]: level for level in ladder["levels"]}
    assert levels["M"]["own_data"] and not levels["S"]["own_data"]
    assert levels["M"]["data"].endswith("/data") and "/" not in levels["M"]["data"].split("/", 1)[1]
    assert lab.ladder.promote("alice", a["id"])["id"] == done["id"]  # asked again: the same record
    # The promotion run ranks at level M unless disqualified: at these tiny budgets even the
    # baseline's export can end past the budget (flag `over_budget`), which rules a run out.
    first = lab.experiment(promotion["run_ids"][0])
    flags = {flag["name"] for flag in first["flags"]}
    assert bool(first["disqualified"]) == bool(flags & {"over_budget", "contended", "seed_only"})
    ranked = first["id"] in {e["id"] for e in lab.leaderboard(scale="M")}
    assert ranked == (not first["disqualified"]), (flags, first["disqualified"])


def test_a_crash_at_the_larger_level_is_recorded(lab: Lab) -> None:
    files = variant(
        lab,
        "rng = np.random.default_rng(SEED)",
        "if SCALE > 1:\n    raise SystemExit('does not fit at scale 2')\nrng = np.random.default_rng(SEED)",
    )
    # The change runs at S (it raises only at scale 2); its S run and confirmation are the first
    # test's subject, so here it is recorded as finished and confirmed, and only M trains.
    b = finished_run(
        lab, "bob", "a change that breaks the larger model", files=files, metric_value=3.0
    )
    lab.store.update_experiment(b, verdict="improved")  # as the server's confirmation would
    promotion = lab.ladder.promote("bob", b, "M")
    runs = wait_all(lab, promotion["run_ids"])
    assert all(r["status"] == "crash" for r in runs)
    assert "does not fit at scale 2" in runs[0]["log_tail"]
    done = lab.ladder.ladder(b)["promotions"][0]
    assert done["verdict"] == "failed"
    assert "the promoted code failed at level M" in done["note"] and "crash" in done["note"]


def test_combining_two_diffs_and_refusing_a_conflict(lab: Lab) -> None:
    # Combining reads only the recorded code and results: three finished experiments (a real
    # run's recording is the first test's subject).
    c = recorded(lab, "carol", "log every 50", "if step % 100 == 0:", "if step % 50 == 0:")
    d = recorded(lab, "dave", "lr 0.05 -> 0.06", "LEARNING_RATE = 0.05", "LEARNING_RATE = 0.06")
    init, smaller_init = "rng.normal(0.0, 0.1, DEGREE + 1)", "rng.normal(0.0, 0.05, DEGREE + 1)"
    e = recorded(lab, "erin", "init sd 0.1 -> 0.05", init, smaller_init)
    combined = lab.ladder.combine("carol", [c, e])
    code = lab.experiment(combined["experiment_id"])["code"]["train.py"]
    # Both lines sit far from LEARNING_RATE, which the best run so far (the first test's) changed
    assert "if step % 50 == 0:" in code and smaller_init in code
    assert set(combined["unconfirmed"]) == {c, e}
    before = lab.store.count_experiments()
    with pytest.raises(PromotionRefused) as refusal:
        lab.ladder.combine("dave", [c, d, lab.ladder.ladder(c)["experiment_id"] and _lr_04(lab)])
    message = str(refusal.value)
    assert "conflicts with the code being combined in train.py" in message
    assert (
        "<<<<<<< current" in message
        and ">>>>>>> incoming" in message
        and "LEARNING_RATE = 0.0" in message
    )
    assert lab.store.count_experiments() == before  # nothing queued


def _lr_04(lab: Lab) -> int:
    rows = lab.store.list_experiments(
        query="lr 0.04", kind="experiment", columns=["id"], order="oldest"
    )
    return rows[0]["id"]


def test_three_way_merge_reports_hunks() -> None:
    base = "a = 1\nb = 2\nc = 3\n"
    merged, conflicts = three_way_merge(
        base.replace("a = 1", "a = 9"), base, base.replace("c = 3", "c = 7")
    )
    assert merged == "a = 9\nb = 2\nc = 7\n" and conflicts == []
    merged, conflicts = three_way_merge(
        base.replace("b = 2", "b = 5"), base, base.replace("b = 2", "b = 6")
    )
    assert len(conflicts) == 1 and "b = 5" in conflicts[0] and "b = 6" in conflicts[0]
