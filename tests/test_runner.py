"""The runner's evaluation phase: a prewarmed evaluator beside training, against a cold one.

Real jails, the real evaluator, a training script that exports a fixed (uniform) model in a
few seconds, so that both modes must give the same metric_value to the last bit.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from support import wait_until

from sandbox.jail import (
    BACKGROUND_NICE,
    LOWEST_CPU_WEIGHT,
    NORMAL_CPU_WEIGHT,
    JailedProcess,
    JailSpec,
)
from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.target import load_target
from trainer.evaluate import val_windows

pytestmark = pytest.mark.e2e

UNIFORM_TRAINER = b"""
import json, os, torch
class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
    def forward(self, idx):
        return torch.zeros(idx.size(0), idx.size(1), self.vocab) + idx.unsqueeze(-1).float() * 0
data = os.environ["AR_DATA_DIR"]
vocab = json.load(open(os.path.join(data, "tokenizer", "tokenizer.json")))["vocab_size"]
T = int(os.environ["AR_EVAL_CONTEXT"])
program = torch.export.export(Uniform(vocab).eval(), (torch.zeros(2, T, dtype=torch.long),),
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
torch.export.save(program, os.path.join(os.environ["AR_OUT_DIR"], "model.pt2"))
print("saved", flush=True)
"""


def evaluator_processes(runs_dir: Path) -> list[int]:
    """Host pids of evaluators (cold or waiting) whose run lives under runs_dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"evaluate.py" in a for a in argv) and any(
            str(runs_dir).encode() in a for a in argv
        ):
            found.append(int(entry.name))
    return found


@pytest.fixture
def runner(data_dir: Path, tmp_path: Path) -> ExperimentRunner:
    return ExperimentRunner(load_target(), data_dir, tmp_path / "runs", keep_run_dirs="always")


def settings(prewarm: bool) -> RunSettings:
    return RunSettings(
        budget_seconds=20, budget_kind="cpu", seed=0, eval_windows=4, prewarm_evaluator=prewarm
    )


def test_prewarmed_evaluator_scores_exactly_like_a_cold_one(
    runner: ExperimentRunner, data_dir: Path
) -> None:
    cold = runner.run({"train.py": UNIFORM_TRAINER}, settings(prewarm=False))
    warm = runner.run({"train.py": UNIFORM_TRAINER}, settings(prewarm=True))
    assert (cold.status, warm.status) == ("ok", "ok"), (cold.failure_reason, warm.failure_reason)
    assert cold.metric_value == warm.metric_value
    # A uniform model scores log2(V) bits per scored token, whatever the evaluator's start; the
    # runner publishes it to 4 decimals and no data-derived counts (scored tokens or bytes).
    tokens = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    token_bytes = np.fromfile(data_dir / "tokenizer" / "token_bytes.bin", dtype="<i4")
    targets = val_windows(tokens, warm.metrics["context"], warm.metrics["windows"])[:, 1:]
    counted = token_bytes[targets]
    expected = math.log2(warm.metrics["vocab_size"]) * (counted > 0).sum() / counted.sum()
    assert warm.metric_value == pytest.approx(expected, abs=1e-4)
    assert warm.metric_value == round(warm.metric_value, 4)
    assert "scored_tokens" not in warm.metrics and "scored_bytes" not in warm.metrics
    assert "warmup_seconds" not in cold.metrics
    assert warm.metrics["warmup_seconds"] > 0
    # The warm one did its interpreter, torch import and loader start before 'go': what is left
    # after training is only opening the artifact. (Its wall time after training also depends on
    # whether its warm-up, at the lowest CPU weight, finished beside this few-second training:
    # on a loaded machine it may not, so the mechanism is checked, not the wall time.)
    assert warm.metrics["load_seconds"] < cold.metrics["load_seconds"], (warm.metrics, cold.metrics)
    assert evaluator_processes(runner.runs_dir) == []


def test_failed_training_ends_the_waiting_evaluator(runner: ExperimentRunner) -> None:
    result = runner.run(
        {"train.py": b"import sys\nprint('giving up', flush=True)\nsys.exit(3)\n"},
        settings(prewarm=True),
    )
    assert result.status == "crash"
    assert result.phase == "train"
    assert "giving up" in result.log_tail
    assert evaluator_processes(runner.runs_dir) == []


def test_background_jail_starts_at_the_lowest_cpu_weight(tmp_path: Path) -> None:
    """Prewarming must not take CPU from the training beside it: lowest weight, then normal."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    code = "import os, sys; print(os.nice(0), flush=True); sys.stdin.readline(); print('went', flush=True)"
    process = JailedProcess.start(
        [sys.executable, "-c", code],
        JailSpec(workdir=workdir, background=True, stdin_pipe=True),
        tmp_path / "log.txt",
    )
    log = tmp_path / "log.txt"
    first_line = wait_until(
        lambda: log.read_text().strip(), timeout=20, message="the jail printed nothing"
    )
    niceness = int(first_line.split()[0])
    weight = process.cpu_weight()
    if weight is None:  # no cpu cgroup on this machine: the fallback is a niceness
        assert niceness == BACKGROUND_NICE
    else:
        assert (weight, niceness) == (LOWEST_CPU_WEIGHT, 0)
    process.to_foreground()
    assert process.cpu_weight() in (None, NORMAL_CPU_WEIGHT)
    assert process.send("go\n")
    assert process.wait(20) == 0
    assert "went" in log.read_text()
    assert not process.send("again\n")  # stdin is closed once sent
