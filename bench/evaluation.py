"""Benchmark: how long a run waits for its score, cold evaluator against prewarmed (issue 2).

The baseline train.py runs through the real runner (bubblewrap where it works), alternately
with the evaluator started cold after training and prewarmed beside it
(`RunSettings.prewarm_evaluator`). For each: eval seconds (end of training to the score, what
the run waits for), the evaluator's own split (load, score, probes; warm-up for prewarmed
runs), and the training's tokens/s and metric_value, to show whether the warm-up beside training
costs the training anything. Goal: evaluation at most 5% of the default budget (60 s on CPU,
300 s on CUDA). Not a test.

    .venv/bin/python bench/evaluation.py [--budget 15] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.target import load_target
from trainer.prepare import default_data_dir, prepare

SUMMARY = re.compile(r"^(\w+):\s+([-\d.]+)\s*$", re.M)
DEFAULT_BUDGET = {"cpu": 60.0, "cuda": 300.0}
RESULTS = ROOT / "bench" / "results" / "evaluation.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=15.0, help="training budget per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    if args.data_dir is None or not (data_dir / "manifest.json").exists():
        prepare(data_dir, quiet=True)  # a given, prepared folder is used as it is (a GPU box copy)
    target = load_target()
    source = target.baseline_files()["train.py"]
    rows: dict[str, list[dict]] = {"cold": [], "prewarmed": []}
    with tempfile.TemporaryDirectory(prefix="ar-bench-eval-") as runs:
        runner = ExperimentRunner(target, data_dir, Path(runs), keep_run_dirs="never")
        for n in range(args.repeats):
            for mode in rows:  # interleaved, so that load drifts hit both
                settings = RunSettings(
                    budget_seconds=args.budget,
                    device=args.device,
                    seed=n,
                    prewarm_evaluator=mode == "prewarmed",
                )
                result = runner.run({"train.py": source}, settings)
                if result.status != "ok":
                    raise SystemExit(
                        f"{mode} run failed: {result.failure_reason}\n{result.log_tail}"
                    )
                summary = {k: float(v) for k, v in SUMMARY.findall(result.log_tail)}
                rows[mode].append(
                    {
                        "eval_seconds": result.eval_seconds,
                        "metric_value": result.metric_value,
                        "tokens_per_second": summary.get("tokens_per_second"),
                        "isolation": result.isolation,
                        **{
                            k: result.metrics.get(k)
                            for k in (
                                "warmup_seconds",
                                "load_seconds",
                                "score_seconds",
                                "probe_seconds",
                                "total_seconds",
                            )
                        },
                    }
                )
                print(f"  {mode} #{n}: {rows[mode][-1]}", file=sys.stderr, flush=True)

    def med(mode: str, key: str) -> float:
        values = [r[key] for r in rows[mode] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    default = DEFAULT_BUDGET["cuda" if args.device.startswith("cuda") else "cpu"]
    print(
        f"\nevaluation per run, {args.device}, baseline train.py at {args.budget:g} s, "
        f"{args.repeats} runs each (median), isolation {rows['cold'][0]['isolation']}"
    )
    print(
        f"{'evaluator':<10} {'eval s':>7} {'warm-up':>8} {'load':>6} {'score':>6} {'probes':>7} "
        f"{'% of ' + format(default, 'g') + ' s':>9} {'tokens/s':>9} {'metric_value':>8}"
    )
    for mode in rows:
        print(
            f"{mode:<10} {med(mode, 'eval_seconds'):>7.2f} {med(mode, 'warmup_seconds'):>8.2f} "
            f"{med(mode, 'load_seconds'):>6.2f} {med(mode, 'score_seconds'):>6.2f} "
            f"{med(mode, 'probe_seconds'):>7.2f} {100 * med(mode, 'eval_seconds') / default:>8.1f}% "
            f"{med(mode, 'tokens_per_second'):>9.0f} {med(mode, 'metric_value'):>8.4f}"
        )
    share = 100 * med("prewarmed", "eval_seconds") / default
    print(
        f"goal: evaluation <= 5% of the default budget: {'met' if share <= 5 else 'MISSED'} ({share:.1f}%)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"budget": args.budget, "device": args.device, "runs": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
