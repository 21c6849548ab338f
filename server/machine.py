"""The machine a lab runs on: its run slots (GPUs or CPU slots), the threads each run gets,
the evaluation-data part of the hardware fingerprint, and the executor that runs jobs on
those slots (local processes, or Ray tasks)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sandbox.runner import ExperimentRunner
from server.refusals import LabError
from server.scheduler import Executor, LocalExecutor
from server.settings import LabSettings


def run_slots(device: str, cpu_slots: int) -> list[str]:
    """One slot per GPU (or the one named), else `cpu_slots` CPU slots."""
    if device.startswith("cuda"):
        import torch

        if ":" in device:
            return [device]
        return [f"cuda:{i}" for i in range(max(1, torch.cuda.device_count()))]
    return ["cpu"] if cpu_slots <= 1 else [f"cpu:{i}" for i in range(cpu_slots)]


def threads_per_run(slots: list[str]) -> int:
    """The cores this process may use, shared evenly between the CPU slots."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    cpu_slots = len([s for s in slots if s.startswith("cpu")]) or 1
    return max(1, cores // cpu_slots)


def val_set_fingerprint(expected_hashes: dict[str, str]) -> str:
    """Eight hex digits naming the evaluation data (every hash but the evaluator's).

    Results compare only on the same evaluation data: the split is secret per installation
    (a re-prepared folder holds other val documents), so the fingerprint names the val set.
    """
    eval_data = sorted(
        f"{name}={digest}" for name, digest in expected_hashes.items() if name != "evaluator"
    )
    return hashlib.sha256("\n".join(eval_data).encode()).hexdigest()[:8]


def make_executor(
    settings: LabSettings,
    runner: ExperimentRunner,
    slots: list[str],
    device: str,
    data_dir: Path,
    level_runners: Mapping[str, ExperimentRunner] | None = None,
    own_levels: Sequence[str] = (),
) -> Executor:
    """Local processes on `slots`, or (settings.executor == 'ray') tasks on a Ray cluster.

    `level_runners`: the runner of each level with data of its own; `own_levels`: the levels
    naming their own device or data (server.levels), which only the local executor runs."""
    if settings.executor != "ray":
        return LocalExecutor(runner, slots, level_runners)
    if own_levels:
        raise LabError(
            f"levels {', '.join(own_levels)} name their own device or data: such a "
            "level runs on the local executor (serve without --executor ray), or drop its "
            "':device=' and ':data=' options"
        )
    # Ray is an optional dependency: imported only when the operator asks for it.
    from server.ray_executor import RayExecutor
    from server.targets import read_split_key

    return RayExecutor(
        settings.ray_address,
        gpu=device.startswith("cuda"),
        cpus_per_slot=settings.ray_cpus_per_slot,
        target_file=settings.target_file,
        expected_hashes=runner.expected_hashes,
        expected_holdout_hashes=runner.expected_holdout_hashes,
        keep_run_dirs=settings.keep_run_dirs,
        split_secret=read_split_key(data_dir),
    )


def torch_version() -> str:
    """The torch version runs are recorded with (server.settings reads it without importing torch)."""
    from server.settings import torch_version as installed

    return installed()
