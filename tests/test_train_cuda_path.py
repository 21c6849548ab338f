"""The CUDA recipe of trainer/train.py, run on the CPU: compile, gradient accumulation, export;
and the precision train.py picks (bf16 autocast only where bf16 matrix products are fast).

No GPU in CI, so the CUDA recipe's code path runs on the CPU: AR_RECIPE=cuda with AR_DEVICE=cpu
(train.py's documented knob), at toy shapes set by exact line edits, as an agent's patch would
(the edits fail loudly if train.py's lines change). Nothing is imported from train.py: it runs
as a subprocess under the contract's environment, and the real evaluator scores its model.pt2.

What stays unmeasured here: CUDA kernels, bf16 on a GPU, flash attention, tokens/s and MFU
(bench/gpu_check.py on a GPU measures those).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.evaluate import EVAL_CONTEXT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "trainer" / "train.py"
SUMMARY = re.compile(r"^(\w+):\s+([-\d.]+)\s*$", re.M)

# The CUDA recipe at toy shapes: depth 2, width 64, head dim 16, context 64, micro-batch 4;
# the shipped 4 micro-batches per optimizer step stay. torch.compile stays, with the aot_eager
# backend: Dynamo captures the training step and AOTAutograd builds its backward exactly as on
# CUDA, but no kernels are generated. Inductor's kernels are device code anyway (Triton on CUDA,
# C++ here), and C++ code generation took ~3 minutes of the first step on this loaded 2-core
# machine (load ~9): no test budget holds that.
TOY_CUDA_RECIPE = [
    (
        "torch.compile(next_token_loss, dynamic=False)",
        'torch.compile(next_token_loss, dynamic=False, backend="aot_eager")',
    ),
    ("else 8 + 2 * (SCALE - 1)", "else 2 + 2 * (SCALE - 1)"),
    ("else 512 + 128 * (SCALE - 1)", "else 64 + 128 * (SCALE - 1)"),
    ("HEAD_DIM = 64 if CPU_RECIPE else 128", "HEAD_DIM = 64 if CPU_RECIPE else 16"),
    ("SEQ_LEN = 256 if CPU_RECIPE else 2048", "SEQ_LEN = 256 if CPU_RECIPE else 64"),
    ("BATCH_SIZE = 8 if CPU_RECIPE else 64", "BATCH_SIZE = 8 if CPU_RECIPE else 4"),
]
# The budget of the toy run. Imports, torch.compile's own imports and the compilation count
# inside it, and the run must still train a few steps after them: on a 2-core CPU under a load
# of ~12 (other test runs), importing torch and dynamo alone took 30-50 s; idle, ~4 s (and
# the toy compiles in ~5 s): 30 s leaves room for the steps in a CI run.
TOY_BUDGET_SECONDS = 30.0


def edited_train_py(edits: list[tuple[str, str]]) -> str:
    """train.py with each `old` (found exactly once) replaced by `new`."""
    text = TRAIN_PY.read_text()
    for old, new in edits:
        assert text.count(old) == 1, f"train.py no longer has exactly one {old!r}: update this test"
        text = text.replace(old, new)
    return text


def run_train(
    source: str, work: Path, data_dir: Path, budget: float, **env: str
) -> tuple[subprocess.CompletedProcess, float]:
    """Run a train.py text under the contract in `work`; (the process, its wall seconds)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.py").write_text(source)
    environment = {
        **os.environ,
        "AR_BUDGET_SECONDS": str(budget),
        "AR_BUDGET_KIND": "wall",
        "AR_DATA_DIR": str(data_dir),
        "AR_OUT_DIR": str(work),
        "AR_SEED": "3",
        "AR_DEVICE": "cpu",
        "AR_EVAL_CONTEXT": str(EVAL_CONTEXT),
        # One thread, as the runner gives a run on a busy machine: toy-sized ops on 2 threads
        # that other processes preempt spend their time waiting at each other's barriers.
        "OMP_NUM_THREADS": "1",
        **env,
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=budget * 3 + 60,
    )
    return done, time.monotonic() - started


def evaluate(artifact: Path, data_dir: Path) -> dict:
    """The trusted evaluator's report on an artifact, on the CPU."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "trainer" / "evaluate.py"), "--artifact", str(artifact),
         "--data-dir", str(data_dir), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cuda_recipe_trains_within_budget_and_exports_a_model_the_evaluator_accepts(
    tmp_path, data_dir
):
    """The CUDA recipe's path, compiled, with 4 micro-batches a step, stops in its budget
    (compilation inside it) and leaves a model.pt2 the real evaluator scores."""
    work = tmp_path / "cuda-recipe"
    done, wall = run_train(
        edited_train_py(TOY_CUDA_RECIPE), work, data_dir, TOY_BUDGET_SECONDS, AR_RECIPE="cuda"
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "recipe cuda, 4 x 4 x 64 tokens per step, compiled True" in log, log[:2000]
    # bf16 autocast only where this CPU multiplies bf16 fast (oneDNN: AVX-512 or AMX); on an
    # AVX2-only CPU torch's reference bf16 kernel is ~7x slower than fp32 and no run fits.
    fast_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert f"compiled True, bf16 {fast_bf16}," in log, log[:2000]
    summary = {key: float(value) for key, value in SUMMARY.findall(done.stdout)}

    # The budget, from process start: the runner stops a run at budget + grace (10%, >= 5 s).
    # (It also flags one that ends over max(1 s, 2%) past it: the export of even this toy model
    # took 3.5-7 s on this 2-core machine under load, against a reserve of 6 s, so that
    # tighter bound is the machine's load as much as train.py's and is not asserted here.)
    assert wall <= TOY_BUDGET_SECONDS + max(5.0, 0.1 * TOY_BUDGET_SECONDS), (wall, log[-2000:])
    assert summary["training_seconds"] < TOY_BUDGET_SECONDS - 5.0, log[-2000:]  # the reserve
    # Compilation is reported on its own, and it is inside the budget.
    assert summary["compile_seconds"] > 0.5, log[-2000:]
    assert summary["compile_seconds"] < summary["training_seconds"]
    # Each optimizer step trained 4 micro-batches of 4 x 64 tokens.
    assert summary["steps"] >= 3, log[-2000:]
    assert summary["tokens_trained"] == summary["steps"] * 4 * 4 * 64
    # It learns. The head starts near zero (logits ~0.008), so without learning the loss stays
    # within 0.001 of ln(vocab) on any batch; the mean loss of the later steps must be below it
    # by more. Few steps fit in the budget on a loaded machine: 5 steps gave 8.318 -> 8.281.
    losses = [float(m) for m in re.findall(r"^step +\d+ \| loss ([\d.]+)", done.stdout, re.M)]
    vocab = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["vocab_size"]
    assert abs(losses[0] - math.log(vocab)) < 0.001, losses
    assert summary["train_loss"] < math.log(vocab) - 0.015, (losses, summary)

    report = evaluate(work / "model.pt2", data_dir)
    assert report["status"] == "ok", report
    assert math.isfinite(report["val_bpb"]) and 0 < report["val_bpb"] < 8, report
    assert report["context"] == EVAL_CONTEXT


def test_a_cpu_without_fast_bf16_trains_in_fp32(tmp_path, data_dir):
    """The CPU recipe where oneDNN has no bf16 kernels (an AVX2-only CPU, told here by capping
    oneDNN at AVX2): train.py says bf16 False, trains in fp32 and leaves a model the evaluator
    scores. On such a CPU bf16 autocast ran ~7x slower than fp32 and no short run fitted."""
    work = tmp_path / "fp32"
    done, _ = run_train(
        TRAIN_PY.read_text(), work, data_dir, 8.0, AR_RECIPE="cpu", ONEDNN_MAX_CPU_ISA="AVX2"
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "compiled False, bf16 False," in log, log[:2000]
    summary = {key: float(value) for key, value in SUMMARY.findall(done.stdout)}
    assert summary["steps"] >= 1 and math.isfinite(summary["train_loss"]), log[-2000:]
    report = evaluate(work / "model.pt2", data_dir)
    assert report["status"] == "ok" and math.isfinite(report["val_bpb"]), report


def test_an_unknown_recipe_is_refused_with_the_names_to_send(tmp_path, data_dir):
    done, _ = run_train(TRAIN_PY.read_text(), tmp_path / "bad", data_dir, 5, AR_RECIPE="gpu")
    assert done.returncode != 0
    assert "AR_RECIPE must be 'cpu' or 'cuda'" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "bad" / "model.pt2").exists()


GRADIENT_DUMP = (
    "    for opt in optimizers:\n        opt.step()\n",
    "    torch.save({n: p.grad for n, p in model.named_parameters()}, 'grads.pt')\n"
    "    os._exit(0)\n"
    "    for opt in optimizers:\n        opt.step()\n",
)


def test_gradient_accumulation_matches_one_large_batch(tmp_path, data_dir):
    """One optimizer step of 4 micro-batches of 2 sequences has the gradient of one batch of
    8 (the same windows: the sampler draws them in the same order)."""
    toy = [
        ("SEQ_LEN = 256 if CPU_RECIPE", "SEQ_LEN = 64 if CPU_RECIPE"),
        ("DEPTH = 4 + 2 * (SCALE - 1)", "DEPTH = 2 + 2 * (SCALE - 1)"),
        ("WIDTH = 256 + 128 * (SCALE - 1)", "WIDTH = 64 + 128 * (SCALE - 1)"),
        ("HEAD_DIM = 64 if", "HEAD_DIM = 16 if"),
        GRADIENT_DUMP,
    ]
    one_batch = edited_train_py(toy)
    accumulated = edited_train_py(
        [
            *toy,
            ("BATCH_SIZE = 8 if CPU_RECIPE", "BATCH_SIZE = 2 if CPU_RECIPE"),
            ("GRAD_ACCUM_STEPS = 1 if CPU_RECIPE", "GRAD_ACCUM_STEPS = 4 if CPU_RECIPE"),
        ]
    )
    grads = {}
    for name, source in (("one", one_batch), ("accumulated", accumulated)):
        done, _ = run_train(source, tmp_path / name, data_dir, 60)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        grads[name] = torch.load(tmp_path / name / "grads.pt")
    assert grads["one"].keys() == grads["accumulated"].keys()
    compared = 0
    for key, expected in grads["one"].items():
        got = grads["accumulated"][key]
        scale = expected.abs().max().item()
        if scale == 0:  # qkv and up: the zero-initialized branches pass them no gradient yet
            assert got.abs().max().item() == 0, key
            continue
        compared += 1
        # autocast (bf16 where train.py's BF16) rounds differently per batch shape: agreement
        # to ~1% of the largest entry; a missing 1/GRAD_ACCUM_STEPS (4x) or a dropped micro-batch is far outside it.
        assert (got - expected).abs().max().item() <= 0.02 * scale, key
    assert compared >= 4, compared  # embedding, head, proj and down of each block
