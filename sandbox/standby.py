"""A run prepared ahead: its run folder written and its training process warmed while another
run still trains on the same slot, so that the next run's clock starts at once.

A warm start (sandbox/warm_start.py) keeps start-up out of the budget, but the slot still
waits for it between two runs: 5-15 s of Python, torch and the CUDA context on a GPU, 3-5%
of a 300 s experiment. The scheduler asks the executor to prepare the next queued run of a
busy slot (`ExperimentRunner.prepare`); the runner launches its training jail with the
trusted launcher, which warms up and blocks on stdin. When the slot frees and that run is
dispatched, `ExperimentRunner.run(..., standby=...)` checks that the standby was made for
the same files and settings, starts the clock and says "go": the warm-up was hidden behind
the previous run.

Nothing the agent wrote runs before "go", so a standby costs memory and a burst of CPU while
it warms, nothing else: one that is not used (the queue changed, the run was cancelled, the
server stops) is discarded, its process killed and its folder removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.jail import JailedProcess
    from sandbox.runner import RunSettings


def files_digest(files: dict[str, bytes]) -> str:
    """One sha256 over the names and contents of a run's editable files."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


@dataclass
class Standby:
    """A warmed training process and its run folder, waiting for its run to be dispatched."""

    run_dir: Path
    files_digest: str
    settings: RunSettings
    process: JailedProcess
    launched: float = field(default_factory=time.monotonic)
    discarded: bool = False

    @property
    def run_name(self) -> str:
        return self.run_dir.name

    def serves(self, files: dict[str, bytes], settings: RunSettings) -> bool:
        """True when this standby was made for exactly these files and settings and still waits."""
        return (
            not self.discarded
            and self.files_digest == files_digest(files)
            and self.settings == settings
            and self.process.poll() is None
        )

    def discard(self) -> None:
        """Kill the waiting process and remove its folder (nothing of the agent's ran in it)."""
        if self.discarded:
            return
        self.discarded = True
        self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # killed; the reaper has the rest
            self.process.wait(timeout=10)
        shutil.rmtree(self.run_dir, ignore_errors=True)
