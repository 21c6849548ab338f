"""Benchmark: what the sandbox costs per experiment, jailed (bubblewrap) and unjailed (process mode).

For a trivial training script (sleeps its budget, saves a tiny model) and for the baseline
train.py at a short budget: time from start to the training process's first output line,
evaluation time, and total overhead (total - budget). Prints a table; not a test.

    python bench/overhead.py [--budget 10] [--repeats 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

from sandbox.jail import IsolationLevel, detect_isolation
from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.target import load_target
from trainer.prepare import default_data_dir, prepare

TRIVIAL = """
import os, time
start = time.time()
print("started", flush=True)
import torch
class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
    def forward(self, idx):
        return torch.zeros(idx.size(0), idx.size(1), self.vocab) + idx.unsqueeze(-1).float() * 0
import json
vocab = json.load(open(os.path.join(os.environ["AR_DATA_DIR"], "tokenizer", "tokenizer.json")))["vocab_size"]
T = int(os.environ["AR_EVAL_CONTEXT"])
budget = float(os.environ["AR_BUDGET_SECONDS"])
time.sleep(max(0.0, budget - 2.0 - (time.time() - start)))
program = torch.export.export(Uniform(vocab).eval(), (torch.zeros(2, T, dtype=torch.long),),
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
torch.export.save(program, os.path.join(os.environ["AR_OUT_DIR"], "model.pt2"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    prepare(data_dir, quiet=True)
    target = load_target()
    scripts = {"trivial": TRIVIAL.encode(), "baseline": target.baseline_files()["train.py"]}
    modes = [IsolationLevel.PROCESS]
    if detect_isolation() == IsolationLevel.NAMESPACES:
        modes.append(IsolationLevel.NAMESPACES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ar-bench-") as runs:
        for script, source in scripts.items():
            for mode in modes:
                runner = ExperimentRunner(
                    target, data_dir, Path(runs), keep_run_dirs="never", isolation=mode
                )
                results = []
                for n in range(args.repeats):
                    result = runner.run(
                        {"train.py": source}, RunSettings(budget_seconds=args.budget, seed=n)
                    )
                    if result.status != "ok":
                        raise SystemExit(
                            f"{script}/{mode.value} run failed: {result.failure_reason}\n{result.log_tail}"
                        )
                    results.append(result)
                rows.append((script, mode.value, results))
    print(
        f"\nsandbox overhead per experiment, budget {args.budget:g} s, {args.repeats} runs each (median)"
    )
    print(
        f"{'script':<10} {'isolation':<9} {'first line s':>12} {'train s':>8} {'eval s':>7} {'total s':>8} "
        f"{'overhead s':>10} {'overhead - eval':>15}"
    )
    for script, mode, results in rows:

        def med(field: str, results: list = results) -> float:
            return statistics.median((getattr(r, field) or 0.0) for r in results)

        overhead_minus_eval = statistics.median(
            r.overhead_seconds - r.eval_seconds for r in results
        )
        print(
            f"{script:<10} {mode:<9} {med('first_output_seconds'):>12.2f} {med('train_seconds'):>8.2f} "
            f"{med('eval_seconds'):>7.2f} {med('total_seconds'):>8.2f} {med('overhead_seconds'):>10.2f} "
            f"{overhead_minus_eval:>15.2f}"
        )
    by = {(s, m): rs for s, m, rs in rows}
    if ("trivial", "bwrap") in by:
        jail = statistics.median(
            r.first_output_seconds or 0 for r in by[("trivial", "bwrap")]
        ) - statistics.median(r.first_output_seconds or 0 for r in by[("trivial", "process")])
        print(f"\njail start cost (first line, bwrap - process): {jail:+.2f} s   goal: < 1 s")
    print("goal: overhead - eval <= 3 s on this CPU")


if __name__ == "__main__":
    main()
