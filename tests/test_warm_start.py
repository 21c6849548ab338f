"""The warm training process (sandbox/warm_start.py): the budget clock starts after Python,
torch and (on a GPU) the CUDA context are up, and train.py still runs exactly as
`python train.py` would. Real jails, real runs of a few seconds.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.target import load_target
from sandbox.warm_start import READY_MARKER

pytestmark = pytest.mark.e2e

# Reports how it was started, then spends ~1 CPU-second, and prints its own CPU time (which
# includes the warm-up's torch import, if it ran in this process).
INTROSPECTING_TRAINER = b"""
import os, sys, time
print("torch_preloaded", "torch" in sys.modules, flush=True)
print("name", __name__, "argv", sys.argv, "path0", sys.path[0] == os.getcwd(), flush=True)
import torch
x = torch.ones(256, 256)
end = time.process_time() + 1.0
while time.process_time() < end:
    x = (x @ x).clamp(max=1.0)
print("process_time", time.process_time(), flush=True)
sys.exit(4)
"""


def run_introspecting(runner: ExperimentRunner) -> tuple[str, float, dict[str, str]]:
    result = runner.run(
        {"train.py": INTROSPECTING_TRAINER},
        RunSettings(budget_seconds=30, budget_kind="cpu", seed=0, eval_windows=4),
    )
    assert result.status == "crash" and "exit code 4" in (result.failure_reason or "")
    log = result.log_tail
    fields = dict(re.findall(r"^(torch_preloaded|name|process_time) (.+)$", log, re.MULTILINE))
    return log, result.cpu_seconds, fields | {"startup": str(result.startup_seconds)}


def test_warm_start_runs_train_py_as_main_with_torch_loaded_and_the_clock_after_start_up(
    data_dir: Path, tmp_path: Path
) -> None:
    target = load_target()
    assert target.warm_imports == ("torch", "torch._dynamo")
    runner = ExperimentRunner(target, data_dir, tmp_path / "runs")
    log, clock_cpu, fields = run_introspecting(runner)
    assert READY_MARKER in log
    assert fields["torch_preloaded"] == "True"
    assert fields["name"].startswith("__main__ argv ['train.py'] path0 True"), fields["name"]
    assert float(fields["startup"]) > 0
    # The process's own CPU time includes importing torch; the budget clock does not.
    assert clock_cpu < float(fields["process_time"]) - 0.2, (clock_cpu, fields)


def test_cold_start_when_the_target_names_no_warm_imports(data_dir: Path, tmp_path: Path) -> None:
    target = dataclasses.replace(load_target(), warm_imports=())
    runner = ExperimentRunner(target, data_dir, tmp_path / "runs")
    log, clock_cpu, fields = run_introspecting(runner)
    assert READY_MARKER not in log
    assert fields["torch_preloaded"] == "False"
    assert fields["startup"] == "None"
    # Cold: the clock counts the whole process, imports included.
    assert clock_cpu >= float(fields["process_time"]) - 0.05


def test_a_warm_up_that_fails_is_the_servers_failure(data_dir: Path, tmp_path: Path) -> None:
    target = dataclasses.replace(load_target(), warm_imports=("no_such_module_for_warm_start",))
    runner = ExperimentRunner(target, data_dir, tmp_path / "runs")
    result = runner.run(
        {"train.py": b"print('never runs', flush=True)\n"},
        RunSettings(budget_seconds=30, budget_kind="cpu", seed=0, eval_windows=4),
    )
    assert result.status == "interrupted"
    assert "warming up" in (result.failure_reason or "")
    assert "never runs" not in result.log_tail
