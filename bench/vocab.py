"""Benchmark: which BPE vocabulary size to ship, measured the way runs are scored.

For each vocabulary size the default corpus is prepared into its own folder (tokenizer, split
and shards, `trainer/prepare.py`), then the shipped trainer/train.py trains for the budget on
it and trainer/evaluate.py scores val_bpb, N seeds each, sizes interleaved so that load drifts
hit every size. val_bpb is per byte, so it compares across vocabularies; the tokens of the
val split and the parameters (embedding and head grow with V) are printed beside it.

Run: `.venv/bin/python bench/vocab.py --sizes 2048 4096 8192 --budget 60 --seeds 2`
on an idle machine. Raw figures: bench/results/vocab.json. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer import prepare as prepare_module

_spec = importlib.util.spec_from_file_location("bench_trainer", ROOT / "bench" / "trainer.py")
assert _spec and _spec.loader
bench_trainer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_trainer)

RESULTS = ROOT / "bench" / "results" / "vocab.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keep prepared data here")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
        work = args.work or Path(tmp)
        prepared = {}
        for size in args.sizes:
            data_dir = work / f"vocab-{size}"
            t = time.monotonic()
            manifest = prepare_module.prepare(data_dir, vocab_size=size, quiet=True)
            prepared[size] = {
                "data_dir": data_dir,
                "prepare_seconds": round(time.monotonic() - t, 1),
                "train_tokens": manifest["tokens"]["train"],
                "val_tokens": manifest["tokens"]["val"],
            }
            print(f"  prepared vocab {size}: {prepared[size]}", file=sys.stderr, flush=True)
        results: dict[str, list[dict]] = {f"vocab {size}": [] for size in args.sizes}
        for seed in range(1, args.seeds + 1):
            for size in args.sizes:
                print(f"  vocab {size}, seed {seed} ...", file=sys.stderr, flush=True)
                run = bench_trainer.train_and_evaluate(
                    ROOT / "trainer" / "train.py",
                    prepared[size]["data_dir"],
                    args.budget,
                    seed,
                    work / f"run-{size}-{seed}",
                )
                results[f"vocab {size}"].append(run)
                print(f"    {run.get('eval', {}).get('val_bpb')}", file=sys.stderr, flush=True)
    print(f"budget {args.budget:g} s, {args.seeds} seed(s), {os.cpu_count()} CPUs")
    print(bench_trainer.table(results))
    for size in args.sizes:
        bpb = [
            r["eval"]["val_bpb"]
            for r in results[f"vocab {size}"]
            if r.get("eval", {}).get("status") == "ok"
        ]
        print(
            f"vocab {size}: train/val tokens {prepared[size]['train_tokens']:,}/{prepared[size]['val_tokens']:,}, "
            f"val_bpb {statistics.fmean(bpb) if bpb else float('nan'):.4f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "budget_seconds": args.budget,
                "seeds": args.seeds,
                "prepared": {
                    str(k): {**v, "data_dir": str(v["data_dir"])} for k, v in prepared.items()
                },
                "bench_seconds": round(time.monotonic() - started, 1),
                "runs": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
