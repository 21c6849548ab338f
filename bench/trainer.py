"""Benchmark: the baseline trainer/train.py against a textbook nanoGPT (bench/reference_gpt.py).

Both run under the same contract, on the same data, with the same budget, on this machine, in
one run, N seeds each, one at a time (each a subprocess). Every artifact is scored by
trainer/evaluate.py. Prints a table (tokens/s, val_bpb mean ± sd, eval seconds, parameters)
and writes the raw figures to bench/results/trainer.json. Not a pass/fail test.

Run: `.venv/bin/python bench/trainer.py --budget 60 --seeds 3 [--data-dir DIR]`
(prepares the default corpus into DIR if it is missing; run it on an idle machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer import prepare as prepare_module
from trainer.evaluate import EVAL_CONTEXT

TRAINERS = {
    "baseline (train.py)": ROOT / "trainer" / "train.py",
    "reference nanoGPT": ROOT / "bench" / "reference_gpt.py",
}
RESULTS = ROOT / "bench" / "results" / "trainer.json"
SUMMARY = re.compile(r"^(\w+):\s+([-\d.]+)\s*$", re.M)


def train_and_evaluate(script: Path, data_dir: Path, budget: float, seed: int, work: Path) -> dict:
    """Train one seed in a fresh folder, then score it; the raw figures of that run."""
    work.mkdir(parents=True)
    env = {
        **os.environ,
        "AR_BUDGET_SECONDS": str(budget),
        "AR_DATA_DIR": str(data_dir),
        "AR_OUT_DIR": str(work),
        "AR_SEED": str(seed),
        "AR_DEVICE": "cpu",
        "AR_EVAL_CONTEXT": str(EVAL_CONTEXT),
    }
    started = time.monotonic()
    train = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=budget + 300,
    )
    wall = time.monotonic() - started
    summary = {key: float(value) for key, value in SUMMARY.findall(train.stdout)}
    run = {
        "seed": seed,
        "train_exit": train.returncode,
        "train_wall_seconds": round(wall, 2),
        **summary,
    }
    if train.returncode != 0:
        run["error"] = (train.stdout + train.stderr)[-1500:]
        return run
    started = time.monotonic()
    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "trainer" / "evaluate.py"), "--artifact", str(work / "model.pt2"),
         "--data-dir", str(data_dir), "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    run["eval_wall_seconds"] = round(time.monotonic() - started, 2)
    run["eval_exit"] = evaluation.returncode
    try:
        report = json.loads(evaluation.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        report = {"status": "error", "reason": evaluation.stderr[-1500:]}
    run["eval"] = {k: v for k, v in report.items() if k != "hashes"}
    return run


def mean_sd(values: list[float]) -> str:
    """`mean ± sd` (sd blank for a single value)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(results: dict[str, list[dict]]) -> str:
    """One row per trainer."""
    header = f"{'trainer':<22} {'ok':>4} {'tokens/s':>9} {'steps':>6} {'val_bpb (mean ± sd)':>22} {'eval s':>7} {'params':>10}"
    lines = [header, "-" * len(header)]
    for name, runs in results.items():
        ok = [r for r in runs if r.get("eval", {}).get("status") == "ok"]
        tps = [r["tokens_per_second"] for r in runs if "tokens_per_second" in r]
        steps = [r["steps"] for r in runs if "steps" in r]
        bpb = [r["eval"]["val_bpb"] for r in ok]
        evals = [r["eval"]["total_seconds"] for r in ok]
        params = {int(r["parameters"]) for r in runs if "parameters" in r}
        lines.append(
            f"{name:<22} {len(ok):>2}/{len(runs):<1} "
            f"{statistics.mean(tps) if tps else 0:>9.0f} {statistics.mean(steps) if steps else 0:>6.0f} "
            f"{mean_sd(bpb):>22} {statistics.mean(evals) if evals else 0:>7.2f} "
            f"{','.join(f'{p:,}' for p in sorted(params)):>10}"
        )
    return "\n".join(lines)


def main() -> None:
    """Run every trainer for every seed (interleaved, so load drifts hit both), then print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=60.0, help="training budget per run, seconds"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per trainer (1..N)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="prepared data (prepared here if missing)"
    )
    args = parser.parse_args()
    data_dir = (args.data_dir or prepare_module.default_data_dir()).expanduser().resolve()
    prepare_module.prepare(data_dir)
    results: dict[str, list[dict]] = {name: [] for name in TRAINERS}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        for seed in range(1, args.seeds + 1):
            for index, (name, script) in enumerate(TRAINERS.items()):
                print(f"  {name}, seed {seed} ...", file=sys.stderr, flush=True)
                run = train_and_evaluate(
                    script, data_dir, args.budget, seed, Path(tmp) / f"{index}-{seed}"
                )
                results[name].append(run)
                status = run.get("eval", {}).get("status", f"train exit {run['train_exit']}")
                print(
                    f"    {status} {run.get('eval', {}).get('val_bpb', '')}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"budget {args.budget:g} s, {args.seeds} seed(s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print(table(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "budget_seconds": args.budget,
        "seeds": args.seeds,
        "data_dir": str(data_dir),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average_end": os.getloadavg(),
        "bench_seconds": round(time.monotonic() - started, 1),
        "runs": results,
    }
    RESULTS.write_text(json.dumps(record, indent=1))
    print(f"raw figures: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
