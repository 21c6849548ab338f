"""Benchmark: the slot's cycle between runs, with the next run prepared ahead and without (issue 17).

A Lab on this machine (one slot, the real scheduler, runner, jails and evaluator) runs --runs
copies of the baseline train.py, queued by different agents, once with `prepare_ahead="off"`
(each run warms its training process up after it is dispatched) and once with "on" (the
scheduler warms the next run up while the slot's current run trains: sandbox/standby.py);
the modes alternate over --rounds so that the machine's drift hits both. Per mode: what the
runs after the first waited for their warm process after dispatch (`startup_seconds`), the
slot's cycle (one run's end to the next run's end), and experiments per hour at that cycle.
On a GPU the warm-up is 5-15 s (Python, torch, the CUDA context) of a 300 s run; on a CPU it is
1-2 s of imports, and the warm-up competes with the running run for the cores (which is why
the server's default prepares ahead on GPU slots only). It also reports what a warm-up beside a
training run does to that run on this machine: the spread of the runs' metric and steps (the
copies differ only in how many steps their clock allowed), their CPU share, and how many were
flagged `contended` (not comparable). Not a test.

    .venv/bin/python bench/prepare_ahead.py [--budget 10] [--runs 4] [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

from server.lab import Lab, LabSettings
from trainer.prepare import default_data_dir, prepare


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def steps_of(log_tail: str) -> int | None:
    """The steps the run trained, from train.py's summary line (`steps: N`) in its log tail."""
    found = re.findall(r"^steps:\s+(\d+)\s*$", log_tail, flags=re.MULTILINE)
    return int(found[-1]) if found else None


def one_mode(mode: str, args: argparse.Namespace, data_dir: Path, tmp: Path) -> dict:
    home = tmp / f"home-{mode}-{time.monotonic_ns()}"
    home.mkdir()
    shutil.copytree(data_dir, home / "data")
    lab = Lab(
        LabSettings(
            home=home,
            device=args.device,
            budget_seconds=args.budget,
            prepare_ahead=mode,
            max_live_per_agent=1,
        )
    )
    try:
        source = lab.baseline_files["train.py"]
        ids = []
        for n in range(args.runs):
            files = {"train.py": source.replace("import ", f"# run {n}\nimport ", 1)}
            ids.append(lab.submit(f"agent{n}", f"baseline copy {n}", files=files, reuse=False)[0])
        deadline = time.monotonic() + args.runs * (args.budget * 3 + 120)
        while time.monotonic() < deadline:
            rows = [lab.experiment(i) for i in ids]
            if all(row["status"] not in ("queued", "running") for row in rows):
                break
            time.sleep(0.5)
    finally:
        lab.close()
    bad = [
        (row["id"], row["status"], row["failure_reason"]) for row in rows if row["status"] != "ok"
    ]
    if bad:
        raise SystemExit(f"{mode}: runs did not finish ok: {bad}")
    ends = [seconds(row["finished_at"]) for row in rows]
    later = rows[1:]
    return {
        "mode": mode,
        "prepared_ahead": sum(bool(row["metrics"].get("prepared_ahead")) for row in later),
        "startup_waited": [row["metrics"].get("startup_seconds") for row in later],
        "cycle_seconds": (ends[-1] - ends[0]) / (len(ends) - 1),
        "metric_values": [row["metric_value"] for row in rows],
        "steps": [steps_of(row["log_tail"] or "") for row in rows],
        "cpu_shares": [row["cpu_share"] for row in rows],
        "contended": sum(
            any(flag.get("name") == "contended" for flag in row["flags"] or []) for row in rows
        ),
    }


def within_round_sd(rounds: list[dict], field: str) -> float:
    """The pooled sd of `field` around each round's own mean (the machine drifts between
    rounds; within one, the runs are copies of one code and differ only by their clock)."""
    squares, dof = 0.0, 0
    for r in rounds:
        values = [v for v in r[field] if v is not None]
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return (squares / dof) ** 0.5 if dof else float("nan")


def spread_table(results: dict[str, list[dict]]) -> None:
    """Per mode: the metric's and the steps' mean and within-round sd, the CPU shares, and the
    runs flagged contended."""
    print(
        f"{'mode':<5} {'metric mean':>12} {'metric sd':>10} {'steps mean':>11} {'steps sd':>9} "
        f"{'cpu share min/mean':>19} {'contended':>10}"
    )
    for mode, rounds in results.items():
        metrics = [v for r in rounds for v in r["metric_values"]]
        steps = [v for r in rounds for v in r["steps"] if v is not None]
        shares = [v for r in rounds for v in r["cpu_shares"] if v is not None]
        share = f"{min(shares):.2f}/{statistics.fmean(shares):.2f}" if shares else "-"
        print(
            f"{mode:<5} {statistics.fmean(metrics):>12.4f} {within_round_sd(rounds, 'metric_values'):>10.4f} "
            f"{statistics.fmean(steps) if steps else float('nan'):>11.1f} "
            f"{within_round_sd(rounds, 'steps'):>9.1f} {share:>19} "
            f"{sum(r['contended'] for r in rounds):>4}/{sum(len(r['metric_values']) for r in rounds):<5}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0, help="training budget per run")
    parser.add_argument("--runs", type=int, default=4, help="runs queued per mode (>= 2)")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    if args.data_dir is None or not (data_dir / "manifest.json").exists():
        prepare(data_dir, quiet=True)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="ar-bench-ahead-") as tmp:
        for _ in range(args.rounds):
            for mode in results:
                result = one_mode(mode, args, data_dir, Path(tmp))
                results[mode].append(result)
                print(json.dumps(result), flush=True)
    print(
        f"\nbudget {args.budget:g} s on {args.device}, {args.runs} runs per mode, {args.rounds} rounds"
    )
    print(
        f"{'mode':<5} {'prepared':>9} {'waited for warm-up, s':>22} {'cycle, s':>9} {'runs/hour':>10}"
    )
    spread_table(results)
    for mode, rounds in results.items():
        waited = [w for r in rounds for w in r["startup_waited"] if w is not None]
        cycle = statistics.mean(r["cycle_seconds"] for r in rounds)
        prepared = sum(r["prepared_ahead"] for r in rounds)
        later = sum(len(r["startup_waited"]) for r in rounds)
        print(
            f"{mode:<5} {prepared:>4}/{later:<4} {statistics.mean(waited):>22.2f} "
            f"{cycle:>9.2f} {3600 / cycle:>10.1f}"
        )


if __name__ == "__main__":
    main()
