"""Benchmark: jail start overhead, from start to the first output line of `python -c 'print(1)'`.

Prints the median over N runs for a plain subprocess, process isolation and the bwrap jail.
Run: `.venv/bin/python bench/jail_start.py [N]`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.jail import IsolationLevel, JailedProcess, JailSpec, detect_isolation


def first_line(level: IsolationLevel | None, workdir: Path, log: Path) -> float:
    """Seconds from start to the first output line, plain (level None) or jailed."""
    argv = [sys.executable, "-c", "print(1)"]
    t0 = time.monotonic()
    if level is None:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert p.stdout is not None
        p.stdout.readline()
        dt = time.monotonic() - t0
        p.wait()
        return dt
    proc = JailedProcess.start(argv, JailSpec(workdir=workdir, isolation=level), log)
    while not log.exists() or not log.read_bytes():
        time.sleep(0.001)
    dt = time.monotonic() - t0
    proc.wait(10)
    return dt


def main() -> None:
    """Print the median first-line latency of each mode."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    levels: list[tuple[str, IsolationLevel | None]] = [
        ("plain", None),
        ("process", IsolationLevel.PROCESS),
    ]
    if detect_isolation() is IsolationLevel.NAMESPACES:
        levels.append(("bwrap", IsolationLevel.NAMESPACES))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, level in levels:
            times = [first_line(level, workdir, workdir / f"{name}{i}.log") for i in range(n)]
            print(f"{name:8s} median {statistics.median(times) * 1000:6.1f} ms  (n={n})")


if __name__ == "__main__":
    main()
