"""Benchmark: how noisy is metric_value, and does a CPU-time budget survive a busy machine?

Four cells, the baseline N times each with one fixed seed: {wall-clock budget, CPU-time
budget} x {idle, beside competing busy processes}; prints the sd of metric_value per cell, the
CPU share, and (reference) the seed-to-seed sd on an idle machine. Not a test.

    python bench/noise.py [--budget 30] [--repeats 5] [--competitors 1]

--compare-starts instead runs the wall-clock budget on an idle machine with a cold training
process (start-up inside the budget, as before the warm start) and a warm one (the clock
starts after Python, torch and the CUDA context are up), the same seed N times and N seeds,
on --device (e.g. cuda): the seed-to-seed spread and the steps each run made, before/after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.target import load_target
from trainer.prepare import default_data_dir, prepare


def spin() -> None:
    """A competing busy process: one core of pure Python arithmetic."""
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


def cell(
    runner: ExperimentRunner,
    files: dict,
    kind: str,
    budget: float,
    seeds: list[int],
    competitors: int,
    device: str = "cpu",
    warm_start: bool = True,
) -> dict:
    procs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(competitors)]
    for p in procs:
        p.start()
    try:
        results = [
            runner.run(
                files,
                RunSettings(
                    budget_seconds=budget,
                    budget_kind=kind,
                    seed=s,
                    device=device,
                    warm_start=warm_start,
                    memory_bytes=None if device.startswith("cuda") else 8 * 1024**3,
                ),
            )
            for s in seeds
        ]
    finally:
        for p in procs:
            p.kill()
    ok = [r for r in results if r.status == "ok" and r.metric_value is not None]
    values = [r.metric_value for r in ok]
    return {
        "values": values,
        "failed": [r.failure_reason for r in results if r.status != "ok"],
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "range": (max(values) - min(values)) if values else None,
        "cpu_share": statistics.fmean(r.cpu_share or 0 for r in ok) if ok else None,
        "train_seconds": statistics.fmean(r.train_seconds for r in ok) if ok else None,
        "steps": [_steps(r.log_tail) for r in ok],
        "startup_seconds": [r.startup_seconds for r in ok],
    }


def _steps(log: str) -> int | None:
    """The step count train.py printed in its summary (`num_steps:` or `steps:`), if any."""
    for line in reversed(log.splitlines()):
        name, _, value = line.partition(":")
        if name.strip() in ("num_steps", "steps") and value.strip().isdigit():
            return int(value.strip())
    return None


def compare_starts(runner: ExperimentRunner, files: dict, args: argparse.Namespace) -> None:
    """Cold against warm training processes, idle machine, wall-clock budget (see the docstring)."""
    fixed = [args.seed] * args.repeats
    varied = [args.seed + n for n in range(args.repeats)]
    rows = {}
    for start in ("cold", "warm"):
        warm = start == "warm"
        for label, seeds in (("same seed", fixed), ("seeds vary", varied)):
            print(f"... {start} start, {label}", flush=True)
            rows[(start, label)] = cell(
                runner, files, "wall", args.budget, seeds, 0, args.device, warm
            )
    print(
        f"\nmetric_value of the baseline on {args.device}, wall budget {args.budget:g} s, {args.repeats} runs per row"
    )
    print(f"{'start':<6} {'seeds':<11} {'mean':>8} {'sd':>8} {'max-min':>8}  steps; start-up s")
    for (start, label), c in rows.items():
        f = lambda v: f"{v:>8.4f}" if v is not None else f"{'-':>8}"  # noqa: E731
        print(
            f"{start:<6} {label:<11} {f(c['mean'])} {f(c['sd'])} {f(c['range'])}  {c['steps']}; {c['startup_seconds']}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({f"{k[0]}, {k[1]}": v for k, v in rows.items()}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--competitors", type=int, default=1, help="busy processes in the 'busy' cells"
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--no-seed-reference", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("bench/results/noise.json"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--compare-starts", action="store_true", help="cold against warm training processes"
    )
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    prepare(data_dir, quiet=True)
    target = load_target()
    files = target.baseline_files()
    fixed = [args.seed] * args.repeats
    table = {}
    with tempfile.TemporaryDirectory(prefix="ar-noise-") as runs:
        runner = ExperimentRunner(target, data_dir, Path(runs), keep_run_dirs="never")
        if args.compare_starts:
            compare_starts(runner, files, args)
            return
        for kind in ("wall", "cpu"):
            for load, competitors in (("idle", 0), ("busy", args.competitors)):
                print(f"... {kind} budget, {load}", flush=True)
                table[(kind, load)] = cell(runner, files, kind, args.budget, fixed, competitors)
        if not args.no_seed_reference:
            print("... wall budget, idle, different seeds (reference)", flush=True)
            table[("wall", "idle, seeds vary")] = cell(
                runner, files, "wall", args.budget, [args.seed + n for n in range(args.repeats)], 0
            )
    print(
        f"\nmetric_value of the baseline, budget {args.budget:g} s, {args.repeats} runs per cell, "
        f"{args.competitors} competing busy process(es) when busy"
    )
    print(
        f"{'budget':<6} {'machine':<18} {'mean':>8} {'sd':>8} {'max-min':>8} {'cpu share':>9} {'train s':>8}  failed"
    )
    fmt = lambda v, w=8: f"{v:>{w}.4f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for (kind, load), c in table.items():
        print(
            f"{kind:<6} {load:<18} {fmt(c['mean'])} {fmt(c['sd'])} {fmt(c['range'])} {fmt(c['cpu_share'], 9)} "
            f"{fmt(c['train_seconds'])}  {len(c['failed'])}"
        )
    idle, busy = table[("cpu", "idle")]["sd"], table[("cpu", "busy")]["sd"]
    if idle is not None and busy is not None:
        ratio = busy / idle if idle > 0 else float("inf")
        print(f"\nCPU-time budget: busy sd / idle sd = {ratio:.2f}   goal <= 1.5")
    spread = table[("wall", "idle")]["range"]
    if spread is not None:
        print(f"fixed seed, idle, wall budget: max-min = {spread:.4f}   goal <= 0.005")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in table.items()}, indent=1))


if __name__ == "__main__":
    main()
