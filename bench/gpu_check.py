"""GPU check: the CUDA path of the trainer, the evaluator and the jail; tokens/s and MFU.

One script for a machine with a GPU (CI never has one). It needs only torch, numpy and a
prepared data directory (`autoresearch-mcp prepare`, or a copy of one): it imports nothing
of the server, so it also runs on a bare CUDA image.

1. Environment: torch, the GPU, the isolation level the runner gets (bwrap if it works).
2. Runs through the real runner (jail with the GPU bound, runner's clock, trusted evaluator),
   one per variant in VARIANTS: the shipped train.py, at another AR_SCALE, or with lines
   replaced exactly as an agent's patch would (the first H200 check compared batch sizes so).
   For each: val_bpb, tokens/s, MFU, train/eval/overhead seconds, peak memory.
3. Evaluator agreement: one artifact trained directly, scored on CUDA and on the CPU with the
   same windows; the two val_bpb must agree to well under the noise floor.

MFU = (6 x matmul parameters + 12 x depth x width x seq_len) x tokens/s / peak bf16 dense
FLOP/s of the card (the nanoGPT / PaLM estimate; the embedding lookup is not a matmul).

Run: `python bench/gpu_check.py --data-dir DIR [--budget 40] [--json OUT.json]`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from sandbox.jail import detect_isolation
from sandbox.runner import ExperimentRunner, RunSettings
from sandbox.target import load_target

SUMMARY = re.compile(r"^(\w+):\s+([-\d.]+)\s*$", re.M)
#: Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

#: (name, {old line: new line} in train.py, AR_SCALE)
VARIANTS: list[tuple[str, dict[str, str], int]] = [
    ("shipped train.py", {}, 1),
    ("shipped, scale 3", {}, 3),
]


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def variant_source(replacements: dict[str, str]) -> bytes:
    text = (ROOT / "trainer" / "train.py").read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"train.py has no single line starting {old!r}"
        text = text.replace(old, new)
    return text.encode()


def flops_per_token(params: int, vocab: int, scale: int) -> float:
    depth, width = 4 + 2 * (scale - 1), 256 + 128 * (scale - 1)  # as train.py grows the model
    matmul_params = params - vocab * width  # the embedding table is a lookup
    return 6 * matmul_params + 12 * depth * width * 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--dry-run-on-cpu",
        action="store_true",
        help="check this script on a machine without a GPU (CPU device, first variant only)",
    )
    args = parser.parse_args()
    device = "cpu" if args.dry_run_on_cpu else "cuda"
    data_dir = args.data_dir.resolve()
    vocab = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["vocab_size"]
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (or --dry-run-on-cpu)", file=sys.stderr)
        return 2
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        report.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    report.update(
        peak_bf16_flops=peak_flops(report.get("gpu", "")),
        isolation=detect_isolation().value,
        budget_seconds=args.budget,
        vocab=vocab,
    )
    print(json.dumps(report, indent=1), flush=True)

    target = load_target()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        runner = ExperimentRunner(target, data_dir, Path(tmp) / "runs")
        for name, replacements, scale in VARIANTS[: 1 if args.dry_run_on_cpu else None]:
            settings = RunSettings(
                budget_seconds=args.budget,
                device=device,
                seed=0,
                memory_bytes=32 * 2**30,
                extra_env={"AR_SCALE": str(scale)},
            )
            result = runner.run({"train.py": variant_source(replacements)}, settings)
            summary = {k: float(v) for k, v in SUMMARY.findall(result.log_tail)}
            tps = summary.get("tokens_per_second")
            params = int(summary.get("parameters", 0))
            fpt = flops_per_token(params, vocab, scale) if params else None
            peak = report["peak_bf16_flops"]
            row = {
                "variant": name,
                "scale": scale,
                "status": result.status,
                "failure": result.failure_reason,
                "val_bpb": result.val_bpb,
                "parameters": params,
                "steps": summary.get("steps"),
                "tokens_per_second": tps,
                "mfu": (fpt * tps / peak) if (fpt and tps and peak) else None,
                "train_seconds": round(result.train_seconds, 2),
                "eval_seconds": round(result.eval_seconds, 2),
                "eval_windows": result.metrics.get("windows"),
                "evaluator_warmup_seconds": result.metrics.get("warmup_seconds"),
                "evaluator_inside": {
                    k: result.metrics.get(k)
                    for k in ("load_seconds", "score_seconds", "probe_seconds", "total_seconds")
                },
                "overhead_seconds": round(result.overhead_seconds, 2),
                "peak_memory_mb": summary.get("peak_memory_mb"),
                "isolation": result.isolation,
            }
            if result.status != "ok":
                row["log_tail"] = result.log_tail[-3000:]
            runs.append(row)
            print(json.dumps(row), flush=True)
        report["runs"] = runs

        # Evaluator agreement, CUDA against CPU, on one artifact trained outside the runner.
        work = Path(tmp) / "direct"
        work.mkdir()
        env = {
            **os.environ,
            "AR_BUDGET_SECONDS": "15",
            "AR_DATA_DIR": str(data_dir),
            "AR_OUT_DIR": str(work),
            "AR_SEED": "1",
            "AR_DEVICE": device,
            "AR_EVAL_CONTEXT": str(target.eval_context),
        }
        subprocess.run(
            [sys.executable, str(ROOT / "trainer" / "train.py")],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        agreement = {}
        for eval_device in ("cuda", "cpu") if device == "cuda" else ("cpu",):
            began = time.monotonic()
            done = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "trainer" / "evaluate.py"),
                    "--artifact",
                    str(work / "model.pt2"),
                    "--data-dir",
                    str(data_dir),
                    "--device",
                    eval_device,
                    "--windows",
                    "32",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            out = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
            agreement[eval_device] = {
                "val_bpb": out.get("val_bpb"),
                "status": out.get("status"),
                "error": out.get("reason") or done.stderr[-500:] or None,
                "wall_seconds": round(time.monotonic() - began, 2),
            }
        if agreement.get("cuda", {}).get("val_bpb") and agreement["cpu"]["val_bpb"]:
            agreement["abs_difference"] = abs(
                agreement["cuda"]["val_bpb"] - agreement["cpu"]["val_bpb"]
            )
        report["evaluator_agreement"] = agreement
        print(json.dumps(agreement), flush=True)

    print("\nvariant                 status  val_bpb   tokens/s      MFU   train   eval  peak MB")
    for r in runs:
        print(
            f"{r['variant']:<22}  {r['status']:<6}  {r['val_bpb'] or float('nan'):.4f}  "
            f"{r['tokens_per_second'] or 0:>9,.0f}  {100 * (r['mfu'] or 0):6.2f}%  "
            f"{r['train_seconds']:6.1f} {r['eval_seconds']:6.1f}  {r['peak_memory_mb'] or 0:>7.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
