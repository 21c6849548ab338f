"""Red team, the verdict side: a seed-only change is flagged and never an improvement, and the
control -- an honest improvement -- still counts, against a baseline measured in this module.

One lab for the module, its baseline measured five times (server seeds 1337..1341) before any
test. The budget is 15 CPU seconds (one thread per run): at 6 s, on the shared 2-core machine
these tests were written on, the baseline takes 0 training steps (importing torch and exporting
the model use the whole budget), so no honest change can win there (see the red-team notes).
Two slots of one thread each, as the figures below were measured: with one slot of two threads
the smaller model gained only ~0.04 in a CI-like run (two threads do not speed up its small
matrices), too close to the noise for a test.
"""

from __future__ import annotations

import asyncio
import json

import anyio
import pytest
from mcp import Client

from server.app import build_server
from server.candidates import is_candidate_run
from server.record import SERVER_HOLDOUT_RUN

from . import patches
from .mallory import call, make_lab, run_hack, wait_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anyio]

CONTROL_BUDGET_CPU_SECONDS = 15
CONTROL_EVAL_WINDOWS = 16  # a steadier estimate than the hack tests' 4 windows
# A model sized for the budget: depth 4 -> 2, width 256 -> 128 (about 4x the steps in the same
# CPU seconds). Measured on an idle machine (15 CPU s, one thread, 16 windows; server seeds 1337 /
# 1338): baseline 2.777 / 2.760, smaller model 2.546 / 2.485, a gain of ~0.25. Learning rates x3
# gained ~0.2 idle but only ~0.10 in a fresh-clone CI run whose two baseline runs differed by
# 0.07 (threshold 0.10): too close to assert. Three baseline runs steady the sd estimate.
CONTROL_EDITS = [
    ("DEPTH = 4 + 2 * (SCALE - 1)", "DEPTH = 2 + 2 * (SCALE - 1)"),
    ("WIDTH = 256 + 128 * (SCALE - 1)", "WIDTH = 128 + 128 * (SCALE - 1)"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, data_dir):
    lab = make_lab(
        tmp_path_factory.mktemp("redteam-verdicts") / "home",
        data_dir,
        budget_seconds=CONTROL_BUDGET_CPU_SECONDS,
        eval_windows=CONTROL_EVAL_WINDOWS,
        # An operator's looser error budget for a short campaign at a 15 s budget (5 false wins per
        # 700 null changes instead of 0.5): at ~14 training steps a seed moves metric_value by up to
        # 0.1, and this module is about the path, not the default's power (bench/campaign.py
        # measures that: a true gain of 3 sd is confirmed at the default budget).
        false_wins_per_campaign=5.0,
        # Three fresh seeds: the gain is ~0.25 against an sd of ~0.03 on a quiet machine, but a fresh
        # clone once pooled an sd of 0.057 and measured +0.095 on two seeds: not confirmed.
        confirm_runs=3,
        holdout_runs=1,  # one sealed holdout run of the control (each costs 15 CPU s)
    )
    rows = wait_rows(lab, lab.ensure_baseline(5))
    assert [r["status"] for r in rows] == ["ok"] * 5, [r["failure_reason"] for r in rows]
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def control_run(lab):
    """The control's run, once for the module: (what the agent received, the stored row). Both
    the control's test and the holdout's read it, so either also runs on its own."""
    return anyio.run(
        run_hack,
        lab,
        "alice-lr",
        "depth 2, width 128: more steps in the same budget",
        CONTROL_EDITS,
    )


async def test_honest_improvement_counts(lab, control_run):
    """Control: a model sized for the budget -- the baseline is too big for ~14 steps.
    Defence under test: none -- the defences must not stop honest research: the run is ok, carries
    no flag, is not disqualified, and beats the baseline run with the same (server) seed.

    It must also count: one run makes it a candidate, the server re-runs it on fresh seeds, and
    the verdict turns 'improved' only on those runs' mean against the reference (the baseline's
    mean), at the campaign's error budget."""
    received, row = control_run
    noise = lab.noise_info()
    assert noise["measured"] and noise["runs"] >= 5
    assert received["status"] == row["status"] == "ok", received["failure_reason"]
    assert received["flags"] == [] and not row["disqualified"]
    paired = next(
        r
        for r in lab.store.list_experiments(kind="baseline", status="ok", limit=10)
        if r["seed"] == row["seed"]
    )
    assert row["metric_value"] < paired["metric_value"], (
        row["metric_value"],
        paired["metric_value"],
    )
    assert received["verdict"] == row["verdict"] == "improved", received["verdict_note"]
    assert "fresh seeds" in received["verdict_note"]
    runs = [r for r in lab.store.confirmation_runs(row["id"]) if is_candidate_run(r)]
    assert [r["status"] for r in runs] == ["ok"] * lab.settings.confirm_runs
    assert row["seed"] not in {r["seed"] for r in runs}
    assert lab.reference().experiment_id == row["id"]


async def test_seed_only_changes_are_flagged_and_never_improve(lab):
    """Hack: change only the seed (SEED = 137, or torch.manual_seed(137)) and hope for a lucky draw.
    Defence: the diff review flags it seed_only (visible to the agent and in history), the row is
    disqualified, its verdict can never be 'improved', and it stays off the leaderboard.
    The two hacks run side by side (two slots): the checks are the same for each."""
    hacks = {"constant": patches.SEED_CONSTANT, "manual": patches.SEED_MANUAL}
    results = await asyncio.gather(
        *(
            run_hack(lab, f"mallory-seed-{name}", "seed 137 looked lucky", edits)
            for name, edits in hacks.items()
        )
    )
    threshold = lab.noise_info()["threshold"]
    for name, (received, row) in zip(hacks, results, strict=True):
        agent = f"mallory-seed-{name}"
        assert received["flags"][0]["name"] == "seed_only", (name, received["flags"])
        assert "can never count as an improvement" in received["flags"][0]["reason"]
        assert row["disqualified"] == 1
        assert received["verdict"] == row["verdict"] != "improved"
        assert lab.store.confirmation_runs(row["id"]) == []  # never a candidate: no runs spent
        if received["status"] == "ok" and (received["delta_vs_best"] or 0) > threshold:
            assert "cannot count as an improvement" in received["verdict_note"]
        async with Client(build_server(lab, default_agent=agent)) as client:
            board = await call(client, "get_leaderboard", limit=50)
            history = await call(client, "get_history", scope="mine")
        assert row["id"] not in {e["id"] for e in board["entries"]}
        assert "seed_only" in history["rows"][0]["flags"]


async def test_holdout_is_sealed_per_experiment_and_shown_on_the_leaderboard(lab, control_run):
    """Hack: read the sealed holdout's score per experiment (get_experiment, get_history, the
    log) to select changes on it too.
    Defence: the holdout is scored only for leaderboard entries (the baseline's runs and the
    server's holdout runs of a confirmed improvement), kept in the sealed table, and shown only as
    each entry's mean beside its val mean on the leaderboard; every scoring is a recorded read."""
    (control,) = lab.store.experiments_with_verdict(
        "improved", hardware=lab.hardware, budget_seconds=lab.budget_seconds, scale="S"
    )
    assert control == control_run[1]["id"]
    runs = wait_rows(lab, [r["id"] for r in lab.store.confirmation_runs(control)])
    assert len(runs) == lab.settings.confirm_runs + lab.settings.holdout_runs
    holdout_runs = [r["id"] for r in runs if r["description"].startswith(SERVER_HOLDOUT_RUN)]
    baseline_ids = [r["id"] for r in lab.store.list_experiments(kind="baseline", limit=10)]
    scored = lab.store.sealed.holdout_values(holdout_runs + baseline_ids)
    assert len(holdout_runs) == lab.settings.holdout_runs and set(scored) == set(
        holdout_runs + baseline_ids
    ), lab.store.sealed.holdout_log()
    assert lab.store.sealed.holdout_reads() == len(scored)
    async with Client(build_server(lab, default_agent="alice-lr")) as client:
        board = await call(client, "get_leaderboard", limit=10)
        details = [
            await call(
                client, "get_experiment", experiment_id=i, include_log=True, include_diff=True
            )
            for i in [control, *holdout_runs, *baseline_ids]
        ]
        history = await call(client, "get_history", limit=50)
    entries = {e["id"]: e for e in board["entries"]}
    assert entries[control]["holdout_runs"] == lab.settings.holdout_runs
    assert entries[control]["holdout_value"] is not None
    base = next(e for e in board["entries"] if e["agent"] == "server")
    assert base["holdout_runs"] == 5 and base["holdout_value"] is not None
    assert abs(base["holdout_value"] - base["metric_value"]) < 0.5  # same distribution as val
    published = json.dumps([details, history["rows"]])

    def keys(value: object) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    # per experiment: nothing about the holdout (get_history's leaderboard part may show it)
    assert not {k for k in keys([details, history["rows"]]) if "holdout" in k.lower()}
    for value in scored.values():
        assert repr(value) not in published and f"{value:.6f}" not in published
