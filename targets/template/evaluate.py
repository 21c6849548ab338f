"""The template's trusted evaluator: mean squared error of a model artifact on the val split.

COPY THIS FILE FOR YOUR OWN TARGET. Keep the protocol (main, run_evaluation's shape, report_to,
the EXIT_* codes, the hashes, --wait); replace `read_artifact`, `predict` and `score` with your
model format and your metric. Agents can read this file but never edit it; the server runs it
from the target folder (never copied into a run) in a jail that sees the artifact read-only and
the eval_data subfolders (holdout_data too with --holdout), and can write nothing.

    python evaluate.py --artifact model.json --data-dir DIR [--device D] [--report-fd N]
                       [--windows W] [--holdout] [--wait] [--warm-cuda] [--context N]

THE ARTIFACT IS HOSTILE: the agent wrote the code that wrote it. So:
  - never execute it, import it or unpickle it: here it is JSON, read with a size cap;
  - check its schema exactly (keys, types, lengths) and that every number is finite;
  - compute the predictions HERE, from the checked numbers;
  - check what comes out (shape, finiteness) before scoring it;
  - say what was wrong in `reason` (the agent reads it), without echoing data it should not see.

The report is ONE JSON line written to fd N (--report-fd; without it, to stdout):
  status   "ok" | "invalid_artifact" | "integrity_fail" | "error" | "not_started" (+ "reason")
  mse      the metric (target.toml: metric = "mse", direction = "minimize")
  examples how many val examples were scored (target.toml: published_counts)
  hashes   {"evaluator": sha256 of this file, "val/x.npy": ..., "val/y.npy": ...}: every data
           file read, keyed by its path in the data folder, as prepare's manifest lists it (the
           server compares them); holdout files too with --holdout
  probes   {"probes": examples re-checked, "passes": layouts compared}
  load_seconds, score_seconds, probe_seconds, total_seconds (warmup_seconds with --wait)
  holdout  with --holdout only: {"status": "ok", "value": mse, "examples": n} or
           {"status": "error", "reason": "..."}
The exit code is 0 exactly when status is "ok" (the server rejects a report that disagrees).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# The same exit codes as every evaluator of this server (trainer/evaluate.py).
EXIT_OK, EXIT_INVALID_ARTIFACT, EXIT_INTEGRITY, EXIT_ERROR, EXIT_NOT_STARTED = 0, 3, 4, 5, 6

# ---- your model format: change these ------------------------------------------------------
FORMAT = "template-chebyshev/1"
MAX_ARTIFACT_BYTES = 64 << 10  # 64 KiB: 64 coefficients need ~1.5 KiB
MAX_COEFFICIENTS = 64
PROBE_TOLERANCE = 1e-9


class InvalidArtifact(Exception):
    """The artifact breaks a rule of the format: status invalid_artifact."""


class IntegrityFailure(Exception):
    """The model broke a rule of the metric: status integrity_fail."""


def load_split(
    data_dir: Path, name: str, cap: int | None
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """A split's inputs and targets, and the sha256 of exactly the bytes that were loaded."""
    hashes, arrays = {}, []
    for array_name in ("x", "y"):
        rel = f"{name}/{array_name}.npy"
        data = (data_dir / rel).read_bytes()
        hashes[rel] = hashlib.sha256(data).hexdigest()
        arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
    x, y = arrays
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"{name}/ holds arrays of unexpected shapes")
    if cap is not None:  # --windows: tests score a few examples only
        x, y = x[:cap], y[:cap]
    return x.astype(np.float64), y.astype(np.float64), hashes


def read_artifact(path: Path) -> np.ndarray:
    """The checked coefficients of a hostile model.json. CHANGE THIS for your format."""
    try:
        if not path.is_file():
            raise InvalidArtifact("the artifact model.json is missing or not a regular file")
        if path.stat().st_size > MAX_ARTIFACT_BYTES:
            raise InvalidArtifact(f"model.json is larger than {MAX_ARTIFACT_BYTES:,} bytes")
        text = path.read_bytes()[: MAX_ARTIFACT_BYTES + 1].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArtifact("model.json is not UTF-8 text") from None
    except OSError:
        raise InvalidArtifact("model.json cannot be read") from None
    try:
        # parse_constant refuses NaN and Infinity, which Python's json would otherwise accept
        data = json.loads(text, parse_constant=_refuse_constant)
    except InvalidArtifact:
        raise
    except (ValueError, RecursionError):
        raise InvalidArtifact("model.json is not valid JSON (or is nested too deep)") from None
    if not isinstance(data, dict) or set(data) != {"format", "coefficients"}:
        raise InvalidArtifact(
            'model.json must be an object with exactly "format" and "coefficients"'
        )
    if data["format"] != FORMAT:
        raise InvalidArtifact(f'"format" must be "{FORMAT}"')
    coefficients = data["coefficients"]
    if not isinstance(coefficients, list) or not 1 <= len(coefficients) <= MAX_COEFFICIENTS:
        raise InvalidArtifact(f'"coefficients" must be a list of 1 to {MAX_COEFFICIENTS} numbers')
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coefficients):
        raise InvalidArtifact('"coefficients" must hold numbers only')
    values = np.array(coefficients, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidArtifact('"coefficients" must all be finite')
    return values


def _refuse_constant(name: str) -> float:
    raise InvalidArtifact(f"model.json holds {name}; every number must be finite")


def predict(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predictions computed here, from checked numbers. CHANGE THIS for your model."""
    with np.errstate(all="ignore"):
        out = np.polynomial.chebyshev.chebval(x, coefficients)
    if out.shape != x.shape or not np.isfinite(out).all():
        raise InvalidArtifact("the model's predictions are not finite for some inputs")
    return out


def score(predictions: np.ndarray, y: np.ndarray) -> float:
    """The metric. CHANGE THIS for yours (and the report key in run_evaluation)."""
    return float(np.mean((predictions - y) ** 2))


def probe(coefficients: np.ndarray, x: np.ndarray, scored: np.ndarray) -> dict[str, int]:
    """An integrity probe: what your metric needs the model NOT to do, checked.

    Here the model is a pure per-example function by construction (chebval of each x), so the
    probe can never fail; it is the pattern for models that could cheat: predict again in a
    secret order (the secrets module, never a seed anyone can read) and demand the same
    answer per example. The GPT target probes causality (changing later tokens must not move
    earlier logits); digits probes batch independence. Write the one your metric needs.
    """
    order = np.array(sorted(range(len(x)), key=lambda _: secrets.randbits(64)))
    again = np.empty_like(scored)
    again[order] = predict(coefficients, x[order])
    if not np.allclose(again, scored, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE):
        raise IntegrityFailure("the model's prediction for an example depends on the others")
    return {"probes": len(x), "passes": 2}


def run_evaluation(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Load, (wait,) check, score, probe: the report and its exit code. Keep this shape."""
    report: dict[str, Any] = {}
    try:
        began = time.perf_counter()
        x, y, val_hashes = load_split(args.data_dir, "val", args.windows)
        holdout: tuple | str | None = None
        if args.holdout:
            try:
                holdout = load_split(args.data_dir, "holdout", args.windows)
            except Exception as exc:  # the holdout never changes the run's status
                holdout = f"the holdout split could not be read ({type(exc).__name__})"
        if args.wait:  # warm (data loaded), then wait for the runner's "go"
            warm = time.perf_counter() - began
            print(f"evaluator warm in {warm:.2f} s, waiting for 'go'", file=sys.stderr, flush=True)
            if sys.stdin.readline().strip() != "go":
                report.update(
                    status="not_started", reason="stdin closed without 'go': nothing to score"
                )
                return report, EXIT_NOT_STARTED
            report["warmup_seconds"] = round(warm, 3)
        started = time.perf_counter()
        hashes = {"evaluator": hashlib.sha256(Path(__file__).resolve().read_bytes()).hexdigest()}
        hashes.update(val_hashes)
        if isinstance(holdout, tuple):
            hashes.update(holdout[2])
        report["hashes"] = hashes  # in every report from here on, whatever the status

        t = time.perf_counter()
        coefficients = read_artifact(args.artifact)
        load_seconds = time.perf_counter() - t
        t = time.perf_counter()
        predictions = predict(coefficients, x)
        mse = score(predictions, y)
        score_seconds = time.perf_counter() - t
        t = time.perf_counter()
        report["probes"] = probe(coefficients, x, predictions)
        probe_seconds = time.perf_counter() - t
        if not math.isfinite(mse):
            raise InvalidArtifact("the model's mse is not finite")
        report.update(
            mse=mse,  # full precision: the server rounds what agents see (metric_decimals)
            examples=len(x),
            load_seconds=round(load_seconds, 4),
            score_seconds=round(score_seconds, 4),
            probe_seconds=round(probe_seconds, 4),
            total_seconds=round(time.perf_counter() - started, 4),
        )
        if isinstance(holdout, str):
            report["holdout"] = {"status": "error", "reason": holdout}
        elif holdout is not None:
            try:
                value = score(predict(coefficients, holdout[0]), holdout[1])
                report["holdout"] = {"status": "ok", "value": value, "examples": len(holdout[0])}
            except Exception:
                report["holdout"] = {"status": "error", "reason": "the model failed on the holdout"}
        report["status"] = "ok"
        return report, EXIT_OK
    except InvalidArtifact as exc:
        report.update(status="invalid_artifact", reason=str(exc)[:1000])
        return report, EXIT_INVALID_ARTIFACT
    except IntegrityFailure as exc:
        report.update(status="integrity_fail", reason=str(exc)[:1000])
        return report, EXIT_INTEGRITY
    except Exception as exc:
        report.update(
            status="error", reason=f"the evaluator failed: {type(exc).__name__}: {str(exc)[:400]}"
        )
        return report, EXIT_ERROR


def report_to(fd: int, data: bytes) -> None:
    """Write the report line to its own channel, all of it, then close the channel."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """The CLI the server calls. Keep every flag, even those your target ignores."""
    parser = argparse.ArgumentParser(description="Score a model artifact: one JSON report.")
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--device", default=os.environ.get("AR_DEVICE", "cpu"))  # numpy: CPU only
    parser.add_argument(
        "--windows", type=int, default=None, help="a cap on the examples scored (tests)"
    )
    parser.add_argument("--holdout", action="store_true", help="also score the sealed holdout")
    parser.add_argument("--wait", action="store_true", help="load, then wait for 'go' on stdin")
    parser.add_argument("--warm-cuda", action="store_true", help="accepted, ignored")
    parser.add_argument("--context", type=int, default=None, help="accepted, ignored")
    parser.add_argument("--report-fd", type=int, default=None, help="write the report to this fd")
    args = parser.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        parser.error("--windows must be at least 1")
    if args.report_fd is not None:
        # Only report_to ever writes the report channel; anything printed goes to the log (fd 2).
        try:
            if args.report_fd < 3:
                raise OSError("0, 1 and 2 are the standard streams")
            os.fstat(args.report_fd)
            os.set_inheritable(args.report_fd, False)
        except OSError as exc:
            print(f"--report-fd {args.report_fd} is not usable ({exc})", file=sys.stderr)
            return EXIT_ERROR
        sys.stdout.flush()
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    report, code = run_evaluation(args)
    line = json.dumps(report) + "\n"
    if args.report_fd is None:
        print(line, end="", flush=True)
    else:
        report_to(args.report_fd, line.encode())
    return code


if __name__ == "__main__":
    sys.exit(main())
