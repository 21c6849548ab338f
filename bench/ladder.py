"""Benchmark: one real promotion ladder on this machine -- a change that helps at level S,
confirmed, promoted to level M, with the transfer verdict and both gains. Not a test.

    python bench/ladder.py [--budget 10] [--m-factor 3] [--m-model 1]

The lab is a throwaway one (a temporary home on a copy of the prepared data); budgets are CPU
seconds so that the figures do not depend on the machine's other load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/x.py`: the package, not bench/trainer.py

from server.lab import Lab, LabSettings, ScaleLevel
from tests.support import wait_until_finished
from trainer.prepare import default_data_dir, prepare

WAIT_DEADLINE_S = 6 * 3600  # a bench waits as long as the runs take; this only ends a hung one

CHANGES = {
    "lr3": (
        "learning rates x3",
        [
            ("MATRIX_LR = 0.02", "MATRIX_LR = 0.06"),
            ("EMBED_LR = 0.01", "EMBED_LR = 0.03"),
            ("HEAD_LR = 0.004", "HEAD_LR = 0.012"),
        ],
    ),
    "warmdown": ("warmdown 0.5 -> 0.8", [("WARMDOWN_FRAC = 0.5", "WARMDOWN_FRAC = 0.8")]),
}


def wait(lab: Lab, ids: list[int]) -> list[dict]:
    return wait_until_finished(lab, ids, timeout=WAIT_DEADLINE_S, interval=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0, help="level S budget, CPU seconds")
    parser.add_argument("--m-factor", type=float, default=3.0, help="level M budget = factor x S")
    parser.add_argument("--m-model", type=int, default=1, help="level M model scale (AR_SCALE)")
    parser.add_argument("--change", choices=sorted(CHANGES), default="lr3")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or default_data_dir()
    prepare(data_dir, quiet=True)
    home = Path(tempfile.mkdtemp(prefix="ar-ladder-"))
    shutil.copytree(data_dir, home / "data")
    scales = (ScaleLevel("S", 1.0, 1), ScaleLevel("M", args.m_factor, args.m_model))
    lab = Lab(
        LabSettings(
            home=home,
            budget_seconds=args.budget,
            budget_kind="cpu",
            baseline_repeats=0,
            scales=scales,
            promotion_repeats=2,
            max_live_per_agent=10,
            drift_check_every=0,
        )
    )
    try:
        started = time.monotonic()
        wait(lab, lab.ensure_baseline(2))
        description, edits = CHANGES[args.change]
        code = lab.baseline_files["train.py"]
        for old, new in edits:
            assert old in code, old
            code = code.replace(old, new)
        experiment_id, _ = lab.submit(
            "researcher", description, files={"train.py": code}, check_quota=False
        )
        (row,) = wait(lab, [experiment_id])
        print(
            f"S: #{experiment_id} {description}: metric_value {row['metric_value']:.4f}, verdict {row['verdict']}"
        )
        wait(lab, lab.confirm("researcher", experiment_id, 1))
        stats = lab.confirmation_stats(experiment_id)
        print(
            f"S: confirmed mean {stats['mean']:.4f} +- {stats['sd']:.4f} over {stats['n']} seeds; "
            f"baseline {lab.noise('S').mean:.4f} +- {lab.noise('S').sd:.4f}"
        )
        promotion = lab.ladder.promote("researcher", experiment_id, "M")
        wait(lab, promotion["run_ids"] + promotion["baseline_ids"])
        ladder = lab.ladder.ladder(experiment_id)
        done = ladder["promotions"][0]
        runs = [lab.experiment(i) for i in done["run_ids"]]
        bases = [lab.experiment(i) for i in done["baseline_ids"]]
        print(
            f"M ({args.m_factor:g}x budget = {lab.level_budget('M'):g} CPU s, model scale {args.m_model}): "
            f"runs {[round(r['metric_value'], 4) for r in runs]} vs baseline {[round(b['metric_value'], 4) for b in bases]} "
            f"(paired seeds {done['seeds']})"
        )
        print(f"transfer: {done['verdict']}: {done['note']}")
        print(f"wall time {time.monotonic() - started:.0f} s")
        out = Path("bench/results/ladder.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(ladder, indent=1, default=str))
    finally:
        lab.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
