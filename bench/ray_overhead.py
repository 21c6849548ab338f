"""Overhead per experiment of the Ray executor against the local one, measured in the same run.

Usage: .venv/bin/python bench/ray_overhead.py [--n 3] [--budget 4]

Re-executes itself under `unshare -n` (all Ray traffic on loopback), starts a Ray head
(no CPUs) and one worker node (1 CPU, its own AUTORESEARCH_HOME) and runs the baseline N
times through `LocalExecutor` (threads=1) and N times through `RayExecutor` (1 CPU per
slot), the same settings (CPU-time budget, eval_windows=2). Prints seconds per experiment
as the server sees them (submit to result) and the difference. The first Ray run includes
the worker's one-time data preparation. Stops every Ray process at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support import wait_until

PORT = 6391


def _ray(*args: str, env: dict[str, str], check: bool = False) -> None:
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), *args],
        env=env,
        timeout=180,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=check,
    )


def inside(n: int, budget: float) -> int:
    from sandbox.jail import detect_isolation
    from sandbox.runner import ExperimentRunner, RunSettings
    from sandbox.target import load_target
    from server.scheduler import Job, LocalExecutor
    from trainer.prepare import prepare

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    work = Path(tempfile.mkdtemp(prefix="ar-bench-", dir="/tmp"))
    worker_proc = None
    try:
        home = work / "server"
        prepare(home / "data", quiet=True)
        target = load_target()
        runner = ExperimentRunner(
            target,
            home / "data",
            home / "runs",
            keep_run_dirs="never",
            isolation=detect_isolation(),
        )
        common = ["--disable-usage-stats", "--object-store-memory", "80000000"]
        _ray(
            "start", "--head", "--port", str(PORT), "--num-cpus", "0",
            "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
            "--temp-dir", str(work / "h"), *common, env=env, check=True,
        )  # fmt: skip
        (work / "w").mkdir()
        worker_proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"), "start", "--address", f"127.0.0.1:{PORT}",
                "--num-cpus", "1", "--node-ip-address", "127.0.0.2", "--temp-dir", str(work / "t"),
                "--block", *common,
            ],
            env={**env, "AUTORESEARCH_HOME": str(work / "w")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        from server.ray_executor import RayExecutor

        ray_exec = RayExecutor(
            f"127.0.0.1:{PORT}", cpus_per_slot=1, expected_hashes=runner.expected_hashes,
            keep_run_dirs="never",
        )  # fmt: skip
        wait_until(ray_exec.slots, timeout=120, interval=1, message="the Ray worker did not join")
        local = LocalExecutor(runner, ["cpu"])
        files = target.baseline_files()
        settings = RunSettings(
            budget_seconds=budget, budget_kind="cpu", threads=1, eval_windows=2, seed=1337
        )
        rows: dict[str, list[tuple[float, float, str]]] = {"local": [], "ray": []}
        for i in range(n):
            for name, executor in (("local", local), ("ray", ray_exec)):
                job = Job(experiment_id=1000 + i, files=files, settings=settings)
                began = time.monotonic()
                result = executor.run(job, "slot", lambda *a: None, threading.Event())
                rows[name].append(
                    (time.monotonic() - began, result.total_seconds, str(result.status))
                )
        print(f"\n{n} runs each, budget {budget:g} CPU-s, eval_windows 2, 1 thread")
        print("wall: submit to result as the server sees it; runner: the runner's total_seconds;")
        print(
            "outside: wall - runner = what the executor adds (dispatch, data check, result transfer)"
        )
        head = f"{'run':>4} {'local wall':>10} {'ray wall':>9} {'diff':>7} {'local outside':>14} {'ray outside':>12}"
        print(head + "  status (local/ray)")
        for i in range(n):
            lw, lt, ls = rows["local"][i]
            rw, rt, rs = rows["ray"][i]
            print(
                f"{i + 1:>4} {lw:>10.2f} {rw:>9.2f} {rw - lw:>7.2f} {lw - lt:>14.2f} {rw - rt:>12.2f}  {ls}/{rs}"
            )

        def mean(name: str, outside: bool, start: int = 0) -> float:
            return statistics.fmean(w - t if outside else w for w, t, _ in rows[name][start:])

        lm, rm = mean("local", False), mean("ray", False)
        lo, ro = mean("local", True), mean("ray", True)
        print(f"{'mean':>4} {lm:>10.2f} {rm:>9.2f} {rm - lm:>7.2f} {lo:>14.2f} {ro:>12.2f}")
        print(f"overhead per experiment (outside the runner), ray - local: {ro - lo:+.2f} s")
        if n > 1:
            print(
                "  without run 1 (the worker's one-time data preparation): "
                f"{mean('ray', True, 1) - mean('local', True, 1):+.2f} s"
            )
        print(f"difference in wall seconds (includes run-to-run noise): {rm - lm:+.2f} s")
        ray_exec.close()
        return 0
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        if worker_proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker_proc.pid, 9)
        with contextlib.suppress(Exception):
            _ray("stop", "--force", env=env)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args.n, args.budget)
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    argv = [*prefix, sys.executable, __file__, "--inside", "--n", str(args.n)]
    return subprocess.run([*argv, "--budget", str(args.budget)], timeout=1800).returncode


if __name__ == "__main__":
    sys.exit(main())
