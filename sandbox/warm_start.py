"""A warmed training process: the clock measures training, not start-up.

Starting Python, importing torch and making a CUDA context take seconds (5-15 s on a GPU,
1-2 CPU-seconds here) and vary from run to run: inside the budget they were both a cost and
the largest noise source on a GPU. With a warm start the runner launches the training jail
with a small trusted launcher (sandbox/warm_launcher.py) instead of `python train.py`. The launcher imports what the
target names (`warm_imports` in target.toml; `torch` for trainer/), makes the CUDA
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

from sandbox.warm_launcher import READY_MARKER

# How long a warm-up may take before the run is given up (a cold CUDA start on a busy machine
# takes well under a minute).
WARM_UP_TIMEOUT_SECONDS = 180.0

# The launcher (standard library only), mounted read-only into the training jail.
LAUNCHER = Path(__file__).resolve().parent / "warm_launcher.py"


def launcher_argv(python: str, script: str, modules: tuple[str, ...]) -> list[str]:
    """The command that warms up `modules` and then runs `script` as `python script` would."""
    return [python, str(LAUNCHER), script, *modules]


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
