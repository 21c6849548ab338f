"""Runs prepared ahead (sandbox/standby.py): the next run's folder and warm training process are
made while the slot's current run trains, so its clock starts as soon as the slot frees; a
standby made for other files, settings or an experiment that left the queue is discarded, its
process killed and its folder removed. Real jails, real runs of a few seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.standby import Standby
from sandbox.target import load_target
from sandbox.warm_start import READY_MARKER, wait_until_ready
from server.lab import Lab
from tests.support import TEMPLATE_TARGET, template_lab, wait_until, wait_until_finished

pytestmark = pytest.mark.e2e

# Says whether torch was loaded before it ran, then exits 3 (no artifact: no evaluation).
REPORTING_TRAINER = b"""
import sys
print("torch_preloaded", "torch" in sys.modules, flush=True)
sys.exit(3)
"""
SETTINGS = RunSettings(budget_seconds=20, budget_kind="cpu", seed=0, eval_windows=4)


def ready(standby: Standby) -> float:
    took, why = wait_until_ready(standby.process, standby.run_dir / "train.log", 120)
    assert took is not None, why
    return took


def gone(standby: Standby) -> bool:
    return standby.process.poll() is not None and not standby.run_dir.exists()


@pytest.fixture
def runner(data_dir: Path, tmp_path: Path) -> ExperimentRunner:
    return ExperimentRunner(load_target(), data_dir, tmp_path / "runs")


def test_a_run_prepared_ahead_starts_its_clock_without_waiting_for_start_up(
    runner: ExperimentRunner,
) -> None:
    files = {"train.py": REPORTING_TRAINER}
    cold = runner.run(files, SETTINGS)
    standby = runner.prepare(files, SETTINGS, run_name="prepared")
    assert standby is not None and standby.run_name == "prepared"
    warm_up = ready(standby)
    result = runner.run(files, SETTINGS, standby=standby)

    assert result.prepared_ahead and not cold.prepared_ahead
    assert "torch_preloaded True" in result.log_tail and READY_MARKER in result.log_tail
    assert "exit code 3" in (result.failure_reason or "")
    # The warm-up happened before the run; what the run waited for is only the marker's read.
    assert cold.startup_seconds is not None and result.startup_seconds is not None
    assert result.startup_seconds < 0.2 < warm_up, (result.startup_seconds, warm_up)
    assert result.startup_seconds < cold.startup_seconds


def test_a_standby_made_for_other_files_or_settings_is_discarded(
    runner: ExperimentRunner,
) -> None:
    files = {"train.py": REPORTING_TRAINER}
    standby = runner.prepare(files, SETTINGS)
    assert standby is not None
    ready(standby)
    assert standby.serves(files, SETTINGS)
    assert not standby.serves(files, RunSettings(**{**SETTINGS.__dict__, "seed": 1}))
    assert not standby.serves(files, RunSettings(**{**SETTINGS.__dict__, "budget_seconds": 21}))
    other = {"train.py": REPORTING_TRAINER + b"# another version\n"}
    assert not standby.serves(other, SETTINGS)
    result = runner.run(other, SETTINGS, standby=standby)
    assert not result.prepared_ahead
    assert gone(standby)
    assert result.startup_seconds is not None and result.startup_seconds > 0.2
    assert "exit code 3" in (result.failure_reason or "")


def test_a_standby_whose_process_died_is_not_used(runner: ExperimentRunner) -> None:
    files = {"train.py": REPORTING_TRAINER}
    standby = runner.prepare(files, SETTINGS)
    assert standby is not None
    standby.process.kill()
    standby.process.wait(timeout=10)
    result = runner.run(files, SETTINGS, standby=standby)
    assert not result.prepared_ahead and "torch_preloaded True" in result.log_tail
    assert gone(standby)


def test_nothing_is_prepared_without_a_warm_start(runner: ExperimentRunner) -> None:
    cold = RunSettings(**{**SETTINGS.__dict__, "warm_start": False})
    assert runner.prepare({"train.py": REPORTING_TRAINER}, cold) is None
    assert not (runner.runs_dir.exists() and any(runner.runs_dir.iterdir()))


# ------------------------------------------------------------ through the scheduler


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab on a copy of the template target (numpy) that warm-starts numpy: what the scheduler
    prepares ahead is the same for every target with a warm start, and a GPT run costs ~11 CPU-s
    besides its budget. Each run trains to its budget of 3 CPU-seconds; the next run is prepared
    at half of it and is warm long before the slot frees."""
    target_dir = tmp_path / "warm-template"
    shutil.copytree(TEMPLATE_TARGET.parent, target_dir)
    toml = target_dir / "target.toml"
    toml.write_text(toml.read_text().replace("warm_imports = []", 'warm_imports = ["numpy"]', 1))
    assert load_target(toml).warm_imports == ("numpy",)
    lab = template_lab(
        tmp_path / "home", toml, budget_seconds=3, eval_windows=2, prepare_ahead="on"
    )
    yield lab
    lab.close()


def queue(lab: Lab, agents: list[str]) -> list[int]:
    """One run per agent, each training until its budget, each of its own code."""
    source = lab.baseline_files["train.py"]
    ids = []
    for n, agent in enumerate(agents):
        code = source.replace("STEPS = 500 ", f"STEPS = 10**9 + {n} ", 1)
        assert code != source
        files = {"train.py": code}
        ids.append(lab.submit(agent, f"baseline copy {n}", files=files, reuse=False)[0])
    return ids


def test_the_scheduler_prepares_a_busy_slots_next_run(lab: Lab) -> None:
    first, second = queue(lab, ["alice", "bob"])
    rows = wait_until_finished(lab, [first, second], timeout=180)
    assert [row["status"] for row in rows] == ["ok", "ok"], [r["failure_reason"] for r in rows]
    before, after = (row["metrics"] for row in rows)
    assert "prepared_ahead" not in before  # the slot was free: nothing to prepare it behind
    assert after.get("prepared_ahead") is True, after
    assert after["startup_seconds"] < before["startup_seconds"], (before, after)
    assert lab.executor.prepared() == {}  # type: ignore[attr-defined]
    assert not list((lab.home / "runs").iterdir())  # both folders removed after their runs


def test_a_prepared_run_that_is_cancelled_loses_its_standby(lab: Lab) -> None:
    executor = lab.executor
    first, second, third = queue(lab, ["alice", "bob", "carol"])
    wait_until(lambda: executor.prepared() == {"cpu": second}, timeout=120)  # type: ignore[attr-defined]
    standby = executor._standby["cpu"][1]  # type: ignore[attr-defined]
    assert lab.cancel("bob", second) == "cancelled"
    wait_until(lambda: gone(standby), timeout=30)
    rows = wait_until_finished(lab, [first, second, third], timeout=180)
    assert [row["status"] for row in rows] == ["ok", "cancelled", "ok"]
    # The third was prepared behind the first once the second had left the queue.
    assert rows[2]["metrics"].get("prepared_ahead") is True, rows[2]["metrics"]


def test_stopping_the_scheduler_discards_the_standby(lab: Lab) -> None:
    executor = lab.executor
    first, second = queue(lab, ["alice", "bob"])
    wait_until(lambda: executor.prepared() == {"cpu": second}, timeout=120)  # type: ignore[attr-defined]
    standby = executor._standby["cpu"][1]  # type: ignore[attr-defined]
    lab.close()
    assert gone(standby)
    assert lab.experiment(second)["status"] == "queued"  # it runs when the server starts again
    assert lab.experiment(first)["status"] == "cancelled"
