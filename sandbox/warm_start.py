"""A warmed training process: the clock measures training, not start-up.

Starting Python, importing torch and making a CUDA context take seconds (5-15 s on a GPU,
1-2 CPU-seconds here) and vary from run to run: inside the budget they were both a cost and
the largest noise source on a GPU. With a warm start the runner launches the training jail
with a small trusted launcher instead of `python train.py`. The launcher imports what the
target names (`warm_imports` in target.toml; `torch` for the GPT target), makes the CUDA
context when AR_DEVICE is a GPU, writes READY_MARKER to its log and blocks on stdin. Only
then does the runner start the budget clock (wall and CPU time are both counted from that
moment) and write "go"; the launcher runs train.py as `__main__`, exactly as `python
train.py` would (sys.argv, sys.path[0] and `__name__` as usual).

Nothing the agent wrote runs before "go", so the marker cannot be forged: the runner reads
it from a log only trusted code has written to so far. The warm-up time is reported beside
the run (`startup_seconds`), never charged to the budget. A launcher that dies or hangs
while warming up is the server's failure, not the code's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

READY_MARKER = "[autoresearch] warm start ready"
# How long a warm-up may take before the run is given up (a cold CUDA start on a busy machine
# takes well under a minute).
WARM_UP_TIMEOUT_SECONDS = 180.0

# The launcher, run as `python -c LAUNCHER SCRIPT MODULE...`. It imports the named modules with
# the run directory off sys.path (an agent's file can never stand in for torch), then restores
# the path `python SCRIPT` would have.
LAUNCHER = f"""
import importlib, os, runpy, sys, time
began = time.perf_counter()
script, modules = sys.argv[1], sys.argv[2:]
cwd = os.getcwd()
path = list(sys.path)
sys.path[:] = [p for p in path if p not in ("", ".", cwd)]
for name in modules:
    importlib.import_module(name)
device = os.environ.get("AR_DEVICE", "cpu")
if device.startswith("cuda") and "torch" in modules:
    import torch
    torch.zeros(1, device=device)
    torch.cuda.synchronize(device)
sys.path[:] = [cwd] + [p for p in path if p not in ("", ".", cwd)]
sys.stdout.write("{READY_MARKER} in %.2f s\\n" % (time.perf_counter() - began))
sys.stdout.flush()
if sys.stdin.readline().strip() != "go":
    sys.exit(75)
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""


def launcher_argv(python: str, script: str, modules: tuple[str, ...]) -> list[str]:
    """The command that warms up `modules` and then runs `script` as `python script` would."""
    return [python, "-c", LAUNCHER, script, *modules]


def warm_script(train_command: tuple[str, ...]) -> str | None:
    """The script of a `{python} SCRIPT` train command (the only form a warm start replaces)."""
    if (
        len(train_command) == 2
        and train_command[0] == "{python}"
        and train_command[1].endswith(".py")
    ):
        return train_command[1]
    return None


class _Process(Protocol):
    def poll(self) -> int | None: ...


def wait_until_ready(
    process: _Process, log_path: Path, timeout: float, cancelled: object = None
) -> tuple[float | None, str | None]:
    """Wait for the launcher's READY_MARKER in `log_path`: (seconds it took, None), or (None, why
    not) when the process exited first, the warm-up ran past `timeout`, or `cancelled` (a
    threading.Event) was set."""
    began = time.monotonic()
    while True:
        if _marker_written(log_path):
            return time.monotonic() - began, None
        code = process.poll()
        if code is not None:
            if _marker_written(log_path):
                return time.monotonic() - began, None
            return None, f"the training process exited while warming up (exit code {code})"
        if cancelled is not None and getattr(cancelled, "is_set", lambda: False)():
            return None, "cancelled"
        if time.monotonic() - began > timeout:
            return None, f"the training process did not warm up within {timeout:g} s"
        time.sleep(0.02)


def _marker_written(log_path: Path) -> bool:
    """True once the marker's whole line is in the log (import warnings may come before it)."""
    try:
        with log_path.open("rb") as log:
            head = log.read(64 * 1024)
    except FileNotFoundError:
        return False
    at = head.find(READY_MARKER.encode())
    return at >= 0 and b"\n" in head[at:]
