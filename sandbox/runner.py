"""One experiment end to end: a fresh run directory, training in a jail under the runner's clock,
then the trusted evaluator in a second jail, and a result object.

The runner owns the clock: it measures the budget from outside (wall-clock seconds, or CPU
seconds of the process tree), sends SIGTERM at budget + grace and SIGKILL a few seconds
later. Training sees the target's train_data folders only; the evaluator sees the artifact
and the eval_data folders, and can write nothing. Everything target-specific
comes from the `ResearchTarget` description.

The sealed holdout. Only for a run the server asks to (`RunSettings.score_holdout`), the
evaluator's jail also mounts the holdout split (`ResearchTarget.holdout_data`) and the
evaluator, told so by its command line (nothing the artifact controls), scores it in the same
trusted process after val. The figure comes back on `RunResult.holdout_value` at full precision
and nowhere else: not in `metrics`, the log tail, the failure reason or the status, which all
come from val alone. Training never mounts it; a normal evaluation does not either.

Squeezed runs. While training runs, the runner samples the busy CPU time of the CPUs it may
use (/proc/stat) beside the run's own CPU time, so that a run that got little CPU can be told
apart: starved by other processes (`squeezed`), or idle by its own doing (see `squeeze_verdict`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import stat
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sandbox.jail import IsolationLevel, JailedProcess, JailLimits, JailSpec, detect_isolation
from sandbox.standby import Standby, files_digest
from sandbox.target import ResearchTarget
from sandbox.warm_start import (
    LAUNCHER,
    WARM_UP_TIMEOUT_SECONDS,
    launcher_argv,
    wait_until_ready,
    warm_script,
)

MAX_BUDGET_SECONDS = 24 * 3600.0
MIN_BUDGET_SECONDS = 1.0
LOG_TAIL_LINES = 50
POLL_SECONDS = 0.1
KILL_GRACE_SECONDS = 3.0
GIB = 1024**3
#: The evaluator's report is one JSON line on its own pipe; anything longer is rejected.
REPORT_MAX_BYTES = 64 * 1024
#: What the lab publishes of the evaluator's report (nothing else of it is kept): the metric
#: at the target's metric_decimals (trainer/'s: 4; the sd between seeds is ~0.02 on a
#: CPU, ~0.002 on a GPU), timings to 0.01 s, counts as integers. Finer figures would carry bits
#: of the hidden split back to the agent.
PUBLISHED_SECONDS = (
    "load_seconds",
    "score_seconds",
    "probe_seconds",
    "total_seconds",
    "warmup_seconds",
)
PUBLISHED_PROBE_COUNTS = ("probes", "cuts", "passes")
#: Seconds between two measurements of a run directory's size (more if a walk takes long).
DISK_POLL_SECONDS = 1.0
#: A run directory holding more entries than this is stopped like one over its disk quota.
MAX_RUN_DIR_ENTRIES = 100_000

ProgressCallback = Callable[[str, float, float], None]  # (phase, done, total)
BudgetKind = Literal["wall", "cpu"]
RunStatus = Literal["ok", "crash", "timeout", "integrity_fail", "cancelled", "interrupted"]
# "interrupted": the run was lost with its machine (a Ray node); the lab re-queues it once.


class RunRefused(ValueError):
    """The run cannot start (bad settings, changed evaluator or data); the message says why."""


@dataclass(frozen=True)
class RunSettings:
    """What the server decides for a run; nothing here comes from the agent's code."""

    budget_seconds: float
    budget_kind: BudgetKind = "wall"
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None  # CPU threads for training (OMP/MKL); None = all cores
    grace_seconds: float | None = None  # after the budget before SIGTERM; default 10% (>= 5 s)
    eval_timeout_seconds: float = 180.0
    eval_windows: int | None = None  # operator/test override of the evaluator's fixed window count
    require_isolation: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. AR_SCALE
    memory_bytes: int | None = 8 * 1024**3
    # Start the evaluator beside the training run (imports, val windows, CUDA context), so
    # that only the scoring is left when training ends. Off: a cold evaluator after training.
    prewarm_evaluator: bool = True
    # What train.py may write in its run directory (checked every second while it runs, and
    # per file by RLIMIT_FSIZE); more stops the run as a crash. None: no quota.
    disk_quota_bytes: int | None = 2 * GIB
    # Also score the sealed holdout (leaderboard entries only): its jail mounts the holdout and
    # the result carries holdout_value, for the server's own table; never shown to the agent.
    score_holdout: bool = False
    # Start the clock on a warmed training process (sandbox/warm_start.py) where the target
    # names warm_imports. Off: the process starts cold, its start-up inside the budget (for
    # benchmarks that compare the two).
    warm_start: bool = True

    def validated(self) -> RunSettings:
        if not (MIN_BUDGET_SECONDS <= self.budget_seconds <= MAX_BUDGET_SECONDS):
            raise RunRefused(
                f"budget {self.budget_seconds:g} s is out of range; use {MIN_BUDGET_SECONDS:g} to "
                f"{MAX_BUDGET_SECONDS:g} seconds (default 60 on CPU, 300 on CUDA)"
            )
        if self.budget_kind not in ("wall", "cpu"):
            raise RunRefused(f"budget kind {self.budget_kind!r} is unknown; use 'wall' or 'cpu'")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise RunRefused(f"device {self.device!r} is unknown; use 'cpu' or 'cuda' / 'cuda:N'")
        if self.disk_quota_bytes is not None and self.disk_quota_bytes < 1024**2:
            raise RunRefused(
                f"disk quota {self.disk_quota_bytes} bytes is too small; use at least 1 MiB (default 2 GiB) or None"
            )
        return self

    @property
    def grace(self) -> float:
        return (
            self.grace_seconds
            if self.grace_seconds is not None
            else max(5.0, 0.1 * self.budget_seconds)
        )


@dataclass
class RunResult:
    """Everything the runner measured; the server stores all of it."""

    status: RunStatus
    metric_value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    failure_reason: str | None = None
    phase: str = "train"  # where it ended: setup | train | evaluate | done
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    total_seconds: float = 0.0
    overhead_seconds: float = 0.0
    cpu_seconds: float = 0.0
    cpu_share: float | None = None
    peak_memory_mb: float | None = None
    log_tail: str = ""
    isolation: str = ""
    hashes: dict[str, str] = field(default_factory=dict)
    output_truncated: bool = False
    seed: int = 0
    first_output_seconds: float | None = None
    # How long the run waited for its warm training process (Python, imports, the CUDA
    # context) before the clock started (sandbox/warm_start.py): the whole warm-up, or for a run
    # prepared ahead (sandbox/standby.py) what was left of it; None for a cold start.
    startup_seconds: float | None = None
    # The training process was launched and warmed ahead, behind the slot's previous run.
    prepared_ahead: bool = False
    # Budget used past AR_BUDGET_SECONDS (wall seconds for a wall budget, CPU seconds for a
    # CPU budget), inside the grace period or beyond it; 0.0 when training stopped in time.
    # An honest train.py stops by itself within its budget: the lab flags such a run.
    over_budget_seconds: float = 0.0
    # The share of the run's CPUs that other processes kept busy while it trained (0..1; see
    # other_load); None where /proc/stat cannot be read.
    other_load: float | None = None
    # The run timed out or got too little CPU (cpu_share < SQUEEZE_SHARE) because other
    # processes held the CPUs it could have used (squeeze_verdict); False for a program that
    # idled or spun by itself. The lab re-queues a squeezed timeout once.
    squeezed: bool = False
    # The share of the run's threads that were ready to run but waited for a CPU (0..1), from
    # the threads' states sampled in /proc; None where they could not be sampled.
    cpu_wait_share: float | None = None
    # SEALED: the holdout's metric at full precision, only for a run with
    # settings.score_holdout whose val scoring passed; for the server's own table, never for
    # the agent (no metrics, log or reason carries it). holdout_windows: how many it scored.
    holdout_value: float | None = None
    # SEALED like holdout_value: the metric at full precision (agents get metric_decimals). The server keeps
    # it to see runs at different seeds agree to the last bit (code that ignores the seed).
    metric_exact: float | None = None
    # SEALED too: the target's tie-break figure at full precision (a continuous companion of a
    # discrete metric, for the same seed check).
    tie_break_exact: float | None = None
    holdout_windows: int | None = None
    # Why holdout_value is None for a run that asked for it (operator text, e.g. "not available:
    # ... re-run prepare"); None when it was scored or not asked for. Sealed like the figure.
    holdout_note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tail_lines(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a (possibly huge) log file, read from the end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class ExperimentRunner:
    """Runs experiments of one research target over one prepared data directory."""

    def __init__(
        self,
        target: ResearchTarget,
        data_dir: Path,
        runs_dir: Path,
        *,
        python: str | None = None,
        keep_run_dirs: Literal["never", "failed", "always"] = "failed",
        isolation: IsolationLevel | None = None,
    ) -> None:
        self.target = target
        self.data_dir = data_dir.resolve()
        self.runs_dir = runs_dir
        self.python = python or sys.executable
        self.keep_run_dirs = keep_run_dirs
        self.isolation = isolation or detect_isolation()
        self.expected_hashes = self._trusted_hashes()
        #: sha256 of each holdout file by its path in the data folder (from the manifest, like
        #: the eval hashes, but kept apart: the val-set fingerprint does not change when a
        #: folder gains its holdout); empty when the folder was prepared without one.
        self.expected_holdout_hashes = self._trusted_holdout_hashes()

    # ------------------------------------------------------------ integrity of the fixed parts

    def _evaluator_path(self) -> Path:
        return self.target.target_dir / "evaluate.py"

    def _trusted_hashes(self) -> dict[str, str]:
        """Hashes of the evaluator and of every eval-side data file, taken when the server starts.

        Data files are checked against prepare's manifest too: a file changed since preparation
        is refused here, before any run trusts it.
        """
        hashes = {"evaluator": sha256_file(self._evaluator_path())}
        for name, entry in self._manifest_files().items():
            if name.split("/")[0] in self.target.eval_data:
                hashes[name] = entry["sha256"]
        return hashes

    def _trusted_holdout_hashes(self) -> dict[str, str]:
        """Hashes of the holdout's files from prepare's manifest; empty if it has none."""
        return {
            name: entry["sha256"]
            for name, entry in self._manifest_files().items()
            if name.split("/")[0] in self.target.holdout_data
        }

    def _manifest_files(self) -> dict[str, Any]:
        manifest_path = self.data_dir / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunRefused(
                f"the data in {self.data_dir} is not prepared (no valid manifest.json); run `autoresearch-mcp prepare`"
            ) from exc
        files = manifest.get("files", {})
        return files if isinstance(files, dict) else {}

    def holdout_unavailable(self) -> str | None:
        """Why this runner cannot score the holdout now (a text for the operator), or None if it can.

        The holdout's files must be the ones prepare's manifest listed when the runner started:
        a folder prepared before the holdout existed has none, and a file changed since is not
        trusted. Either way the run itself goes ahead on val; only holdout_value stays None.
        """
        if not self.target.holdout_data:
            return "not available: the research target declares no holdout data (holdout_data)"
        if not self.expected_holdout_hashes:
            return (
                f"not available: the data in {self.data_dir} was prepared without a holdout "
                "split; re-run `autoresearch-mcp prepare` (it adds one and keeps the "
                "eval data as they are) and restart the server"
            )
        changed = [
            name
            for name, digest in self.expected_holdout_hashes.items()
            if not (self.data_dir / name).is_file() or sha256_file(self.data_dir / name) != digest
        ]
        if changed:
            return (
                f"not available: {', '.join(changed)} changed on disk since the server started; "
                "re-run `autoresearch-mcp prepare` and restart the server"
            )
        return None

    def verify_fixed_parts(self) -> dict[str, str]:
        """Re-hash the evaluator and the eval data; RunRefused if any changed since startup."""
        current = {"evaluator": sha256_file(self._evaluator_path())}
        for name in self.expected_hashes:
            if name != "evaluator":
                path = self.data_dir / name
                current[name] = sha256_file(path) if path.is_file() else "missing"
        changed = [name for name, digest in current.items() if digest != self.expected_hashes[name]]
        if changed:
            raise RunRefused(
                f"refused: {', '.join(changed)} changed on disk since the server started; the metric would not be "
                "comparable. Restore the files (or re-run prepare) and restart the server."
            )
        return current

    # ------------------------------------------------------------ one run

    def run(
        self,
        files: dict[str, bytes],
        settings: RunSettings,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        run_name: str | None = None,
        standby: Standby | None = None,
    ) -> RunResult:
        """Train `files` (the editable files) in a jail, evaluate the artifact in another, return the result.

        ``standby``: this run prepared ahead (``prepare``); used when it was made for the same
        files and settings and its process still waits, else discarded and the run starts as
        usual. Never raises for anything the agent's code does; raises RunRefused for bad
        settings.
        """
        settings = settings.validated()
        started = time.monotonic()
        progress = on_progress or (lambda phase, done, total: None)
        cancel = cancel or threading.Event()
        result = RunResult(
            status="crash", isolation=self.isolation.value, seed=settings.seed, phase="setup"
        )
        if standby is not None and not standby.serves(files, settings):
            standby.discard()
            standby = None
        try:
            result.hashes = self.verify_fixed_parts()
        except RunRefused as exc:
            if standby is not None:
                standby.discard()
            result.status, result.failure_reason = "integrity_fail", str(exc)
            return result

        if standby is not None:
            run_dir = standby.run_dir
        else:
            run_dir = self.runs_dir / (run_name or uuid.uuid4().hex[:12])
            try:
                self._make_run_dir(run_dir, files)
            except OSError as exc:
                shutil.rmtree(run_dir, ignore_errors=True)
                result.failure_reason = f"could not create the run directory {run_dir}: {exc.strerror or exc}; free disk space or check permissions"
                result.total_seconds = time.monotonic() - started
                return result

        holdout = False
        if settings.score_holdout:
            result.holdout_note = self.holdout_unavailable()
            holdout = result.holdout_note is None
        evaluator: _Evaluator | None = None
        try:
            if settings.prewarm_evaluator:
                evaluator = self._start_evaluator(run_dir, settings, wait=True, holdout=holdout)
            self._train(run_dir, settings, result, progress, cancel, evaluator, standby)
            if result.phase == "evaluate":
                self._evaluate(run_dir, settings, result, progress, cancel, evaluator, holdout)
        finally:
            if evaluator is not None:
                evaluator.end()  # training failed or was cancelled: nothing to score
            if holdout and result.holdout_value is None and result.holdout_note is None:
                result.holdout_note = (
                    f"not scored: the run ended {result.status} in its {result.phase} phase"
                )
            result.total_seconds = time.monotonic() - started
            result.overhead_seconds = max(0.0, result.total_seconds - settings.budget_seconds)
            keep = self.keep_run_dirs == "always" or (
                self.keep_run_dirs == "failed" and result.status != "ok"
            )
            if keep:
                keep_only_logs_and_code(run_dir, files)
            else:
                remove_tree(run_dir)
        return result

    def prepare(
        self, files: dict[str, bytes], settings: RunSettings, *, run_name: str | None = None
    ) -> Standby | None:
        """Prepare a run ahead (sandbox/standby.py): write its run folder and launch its training
        process, which warms up and waits; pass the standby to ``run`` to start its clock at once.

        None when there is nothing to prepare (no warm start for this target or these settings)
        or the folder or the jail could not be made (``run`` then meets and reports the same).
        """
        settings = settings.validated()
        if not (settings.warm_start and self.target.warm_imports):
            return None
        if warm_script(self.target.train_command) is None:
            return None
        if settings.device.startswith("cuda") and not _shares_gpu(settings.device):
            # An exclusive compute mode: a waiting context would lock out the running run's
            # evaluator (or be refused while its training holds the GPU).
            return None
        run_dir = self.runs_dir / (run_name or uuid.uuid4().hex[:12])
        try:
            self._make_run_dir(run_dir, files)
            process, _ = self._start_training(run_dir, settings)
        except Exception:
            shutil.rmtree(run_dir, ignore_errors=True)
            return None
        return Standby(run_dir, files_digest(files), settings, process)

    @staticmethod
    def _make_run_dir(run_dir: Path, files: dict[str, bytes]) -> None:
        """The run folder: code/ with the editable files and out/, eval/, and the artifact's folder."""
        (run_dir / "code").mkdir(parents=True, exist_ok=False)
        (run_dir / "code" / "out").mkdir()
        (run_dir / "eval").mkdir()
        (run_dir / ARTIFACT_DIR).mkdir()
        for name, content in files.items():
            (run_dir / "code" / name).write_bytes(content)

    def _start_training(self, run_dir: Path, settings: RunSettings) -> tuple[JailedProcess, bool]:
        """Launch the training jail: the warm launcher (True: it waits for "go") or train.py itself."""
        code_dir = run_dir / "code"
        spec = JailSpec(
            workdir=code_dir,
            readonly_paths=tuple(self.data_dir / sub for sub in self.target.train_data),
            env=self._contract_env(settings, code_dir / "out"),
            limits=self._limits(settings),
            gpu=settings.device.startswith("cuda"),
            isolation=self.isolation,
            require_isolation=settings.require_isolation,
            hidden_paths=self.target.hidden_paths(),
        )
        argv = [
            part.format(python=self.python, target_dir=self.target.target_dir)
            for part in self.target.train_command
        ]
        script = warm_script(self.target.train_command)
        warm = settings.warm_start and bool(self.target.warm_imports) and script is not None
        if warm and script is not None:
            argv = launcher_argv(self.python, script, self.target.warm_imports)
            spec = replace(spec, stdin_pipe=True, readonly_paths=(*spec.readonly_paths, LAUNCHER))
        return JailedProcess.start(argv, spec, run_dir / "train.log"), warm

    def _contract_env(self, settings: RunSettings, out_dir: Path) -> dict[str, str]:
        threads = str(settings.threads or os.cpu_count() or 1)
        env = {
            "AR_BUDGET_SECONDS": f"{settings.budget_seconds:g}",
            "AR_BUDGET_KIND": settings.budget_kind,
            "AR_DEVICE": settings.device,
            "AR_SEED": str(settings.seed),
            "AR_DATA_DIR": str(self.data_dir),
            "AR_OUT_DIR": str(out_dir),
            "AR_EVAL_CONTEXT": str(self.target.context_for(settings.device)),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": str(settings.seed),
        }
        if settings.budget_kind == "cpu":
            # OpenMP threads spin while they wait; beside a busy neighbour the spinning burns the
            # CPU-time budget without training (bench/noise.py). Passive waiting makes CPU seconds
            # measure work.
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        env.update(settings.extra_env)
        return env

    def _limits(self, settings: RunSettings) -> JailLimits:
        cuda = settings.device.startswith("cuda")
        file_size = JailLimits().file_size_bytes
        if settings.disk_quota_bytes is not None and file_size is not None:
            file_size = min(
                file_size, settings.disk_quota_bytes
            )  # one file alone stops at the quota
        return JailLimits(cuda=cuda, memory_bytes=settings.memory_bytes, file_size_bytes=file_size)

    def _train(
        self,
        run_dir: Path,
        settings: RunSettings,
        result: RunResult,
        progress: ProgressCallback,
        cancel: threading.Event,
        evaluator: _Evaluator | None = None,
        standby: Standby | None = None,
    ) -> None:
        """Train under the runner's clock; ``evaluator`` is this run's prewarmed one (its CPU
        is the run's own, not other load); ``standby`` its training process, launched ahead."""
        code_dir = run_dir / "code"
        out_dir = code_dir / "out"
        log_path = run_dir / "train.log"
        result.phase = "train"
        if standby is not None:
            process, warm = standby.process, True
            result.prepared_ahead = True
        else:
            process, warm = self._start_training(run_dir, settings)
        cpu_at_start = 0.0
        if warm:
            took, why = wait_until_ready(process, log_path, WARM_UP_TIMEOUT_SECONDS, cancel)
            if took is None:
                process.kill()
                process.wait()
                result.log_tail = tail_lines(log_path)
                if why == "cancelled":
                    result.status, result.failure_reason = (
                        "cancelled",
                        "cancelled before training started",
                    )
                else:
                    # Nothing of the agent's ran yet: the server's failure, tried again once.
                    result.status, result.failure_reason = (
                        "interrupted",
                        f"{why}; the run is queued again",
                    )
                return
            result.startup_seconds = round(took, 2)
            cpu_at_start = process.cpu_seconds()
        log_size_at_start = log_path.stat().st_size if log_path.exists() else 0
        began = time.monotonic()
        if warm:
            process.send("go\n")
        limit = settings.budget_seconds + settings.grace
        # A CPU budget still needs a wall-clock stop: a process that sleeps uses no CPU.
        wall_limit = limit if settings.budget_kind == "wall" else 3 * settings.budget_seconds + 30
        terminated_at: float | None = None
        reason: str | None = None
        last_report = 0.0
        cpu_samples: list[tuple[float, float]] = []  # (elapsed, cpu seconds) after the first output
        load = LoadSampler(process, evaluator.process if evaluator is not None else None)
        quota = settings.disk_quota_bytes
        next_disk_check = 0.0
        used = 0.0
        while process.poll() is None:
            now = time.monotonic()
            elapsed = now - began
            used = (
                process.cpu_seconds() - cpu_at_start if settings.budget_kind == "cpu" else elapsed
            )
            if quota is not None and terminated_at is None and now >= next_disk_check:
                usage = directory_usage(code_dir, quota, MAX_RUN_DIR_ENTRIES)
                took = time.monotonic() - now
                next_disk_check = now + max(DISK_POLL_SECONDS, 20 * took)  # a walk costs <= 5%
                if usage.over(quota, MAX_RUN_DIR_ENTRIES):
                    reason = "disk"
                    process.terminate()
                    terminated_at = now
            if (
                result.first_output_seconds is None
                and log_path.exists()
                and log_path.stat().st_size > log_size_at_start
            ):
                result.first_output_seconds = elapsed
            if result.first_output_seconds is not None and (
                not cpu_samples or elapsed - cpu_samples[-1][0] >= 0.5
            ):
                cpu_samples.append((elapsed, process.cpu_seconds() - cpu_at_start))
            if terminated_at is None:
                load.sample(elapsed)
            if terminated_at is None:
                if cancel.is_set():
                    reason = "cancelled"
                elif used > limit or elapsed > wall_limit:
                    reason = "timeout"
                if reason:
                    process.terminate()
                    terminated_at = now
            elif now - terminated_at > KILL_GRACE_SECONDS:
                process.kill()
            if now - last_report >= 1.0:
                progress("training", min(used, settings.budget_seconds), settings.budget_seconds)
                last_report = now
            time.sleep(POLL_SECONDS)
        returncode = process.wait()
        result.train_seconds = time.monotonic() - began
        result.cpu_seconds = process.cpu_seconds() - cpu_at_start
        used = result.cpu_seconds if settings.budget_kind == "cpu" else result.train_seconds
        result.over_budget_seconds = round(max(0.0, used - settings.budget_seconds), 2)
        threads = settings.threads or os.cpu_count() or 1
        result.cpu_share = cpu_share(cpu_samples, threads, result.cpu_seconds, result.train_seconds)
        squeeze = load.measure(threads, since=result.first_output_seconds)
        if squeeze is not None:
            result.other_load, result.cpu_wait_share = squeeze.other_load, squeeze.wait_share
            result.squeezed = squeeze_verdict(
                timed_out=reason == "timeout",
                cpu_share=result.cpu_share,
                other_load=squeeze.other_load,
                wait_share=squeeze.wait_share,
            )
        peak = process.peak_memory_bytes()
        result.peak_memory_mb = round(peak / 2**20, 1) if peak else None
        result.output_truncated = process.output_truncated
        result.log_tail = tail_lines(log_path)
        if reason == "cancelled":
            result.status, result.failure_reason = "cancelled", "cancelled before training finished"
            return
        if quota is not None and (
            reason == "disk"
            or directory_usage(code_dir, quota, MAX_RUN_DIR_ENTRIES).over(
                quota, MAX_RUN_DIR_ENTRIES
            )
        ):
            # Also after the exit: a file stopped at RLIMIT_FSIZE (EFBIG) fills the quota exactly.
            result.status = "crash"
            result.failure_reason = (
                f"train.py wrote more than {format_bytes(quota)} (or {MAX_RUN_DIR_ENTRIES:,} files) in its run "
                f"directory and was stopped; that is this server's per-run disk quota. Keep data and checkpoints "
                f"in memory and save only the model to $AR_OUT_DIR"
            )
            return
        if reason == "timeout":
            kind = "CPU seconds" if settings.budget_kind == "cpu" else "seconds"
            result.status = "timeout"
            result.failure_reason = (
                f"training ran past its budget of {settings.budget_seconds:g} {kind} (+{settings.grace:g} s grace) "
                "and was stopped; train.py must stop by itself within AR_BUDGET_SECONDS"
            )
            return
        if returncode != 0:
            why = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
            if process.limit_hit:
                why += f" ({process.limit_hit} limit hit)"
            result.status = "crash"
            result.failure_reason = f"train.py failed ({why}); see the log tail"
            return
        artifact = out_dir / self.target.artifact
        if out_dir.is_symlink() or not out_dir.is_dir() or artifact.is_symlink():
            # A symlink here would make the evaluator's jail mount (and score) whatever it
            # points to on the host, e.g. a concurrent run's model (run names are predictable).
            result.status = "crash"
            result.failure_reason = (
                f"train.py replaced $AR_OUT_DIR or {self.target.artifact} with a link; "
                "save the model as a regular file inside the $AR_OUT_DIR folder it was given"
            )
            return
        if not artifact.is_file():
            result.status = "crash"
            result.failure_reason = (
                f"train.py exited 0 but saved no {self.target.artifact} in $AR_OUT_DIR"
            )
            return
        try:
            hand_over_artifact(out_dir, self.target.artifact, run_dir / ARTIFACT_DIR)
        except ArtifactRefused as exc:
            result.status, result.failure_reason = "crash", str(exc)
            return
        result.phase = "evaluate"

    def _start_evaluator(
        self, run_dir: Path, settings: RunSettings, *, wait: bool, holdout: bool = False
    ) -> _Evaluator:
        """Start the trusted evaluator in its own jail: it sees the artifact folder read-only.

        With ``holdout`` (the server's choice, never the agent's) the jail also mounts the
        holdout data and the evaluator is told to score it; without, the holdout is not in the
        jail at all.

        With ``wait`` it warms up, then blocks on stdin until ``send("go\\n")``; it starts
        beside training in the background (the lowest CPU weight: it takes only CPU the
        training leaves idle), and training cannot reach it (its own namespaces, no shared
        writable path). Its stdout and stderr go to ``eval.log`` (for the operator only); its
        report comes on a pipe of its own (``--report-fd N``), the one descriptor its jail
        inherits. The training jail never holds it: jails inherit no descriptor of the server.
        """
        # The evaluator reads the runner's own copy of the artifact, never training's folder:
        # code/ is training's to rewrite while the evaluator's jail is being set up beside it
        # (a symlink swapped in for out/ at that moment would mount another run's model).
        artifact_dir = run_dir / ARTIFACT_DIR
        eval_dir = run_dir / "eval"
        eval_dir.chmod(0o555)  # the evaluator's working directory: nothing may be written
        artifact = artifact_dir / self.target.artifact
        evaluator = self._evaluator_path()
        channel = ReportChannel()
        argv = [
            part.format(
                python=self.python,
                target_dir=self.target.target_dir,
                artifact=artifact,
                data_dir=self.data_dir,
                context=self.target.context_for(settings.device),
            )
            for part in self.target.evaluate_command
        ] + ["--device", settings.device, "--report-fd", str(channel.write_fd)]
        if settings.eval_windows:
            argv += ["--windows", str(settings.eval_windows)]
        if holdout:
            argv.append("--holdout")
        if wait:
            argv.append("--wait")
            if settings.device.startswith("cuda") and gpu_takes_two_processes(settings.device):
                argv.append("--warm-cuda")
        spec = JailSpec(
            workdir=eval_dir,
            readonly_paths=(
                artifact_dir,
                evaluator,
                *(self.data_dir / sub for sub in self.target.eval_data),
                *(self.data_dir / sub for sub in (self.target.holdout_data if holdout else ())),
            ),
            env={
                "AR_DEVICE": settings.device,
                "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": str(settings.threads or os.cpu_count() or 1),
            },
            limits=self._limits(settings),
            gpu=settings.device.startswith("cuda"),
            isolation=self.isolation,
            require_isolation=settings.require_isolation,
            stdin_pipe=wait,
            background=wait,
            pass_fds=(channel.write_fd,),
        )
        try:
            process = JailedProcess.start(argv, spec, run_dir / "eval.log")
        except BaseException:
            channel.close()
            raise
        channel.close_write_end()  # the evaluator holds the only write end now
        return _Evaluator(process, channel)

    def _evaluate(
        self,
        run_dir: Path,
        settings: RunSettings,
        result: RunResult,
        progress: ProgressCallback,
        cancel: threading.Event,
        prewarmed: _Evaluator | None = None,
        holdout: bool = False,
    ) -> None:
        """Score the artifact: tell the prewarmed evaluator to go, or start a cold one.

        ``eval_seconds`` counts from the end of training: the time a run waits for its score.
        The result comes from the report channel only, never from the evaluator's log (which
        the agent's model can fill through the libraries it runs), and only when every rule
        of ``_accept_report`` holds. The log stays in the run folder for the operator; the
        agent gets the evaluator's reason and its own training log, nothing of the log.
        """
        progress("evaluating", 0.0, 1.0)
        began = time.monotonic()
        if prewarmed is not None and prewarmed.process.poll() is None:
            prewarmed.process.to_foreground()
        if prewarmed is not None and prewarmed.process.send("go\n"):
            evaluator = prewarmed
        else:
            if prewarmed is not None:  # it died while warming up: say so, then start cold
                prewarmed.end()
                result.log_tail = (
                    result.log_tail
                    + "\n--- the prewarmed evaluator exited early; a cold one scored the run ---"
                ).strip()
            evaluator = self._start_evaluator(run_dir, settings, wait=False, holdout=holdout)
        try:
            process = evaluator.process
            terminated_at: float | None = None
            timed_out = cancelled = False
            while process.poll() is None:
                evaluator.channel.drain()
                now = time.monotonic()
                if terminated_at is None and (
                    now - began > settings.eval_timeout_seconds or cancel.is_set()
                ):
                    timed_out, cancelled = not cancel.is_set(), cancel.is_set()
                    process.terminate()
                    terminated_at = now
                elif terminated_at is not None and now - terminated_at > KILL_GRACE_SECONDS:
                    process.kill()
                time.sleep(POLL_SECONDS)
            returncode = process.wait()
            evaluator.channel.drain()
        finally:
            evaluator.end()
        result.eval_seconds = time.monotonic() - began
        if cancelled:
            result.status, result.failure_reason = "cancelled", "cancelled during evaluation"
            return
        if timed_out:
            result.status = "timeout"
            result.failure_reason = (
                f"evaluation exceeded its own budget of {settings.eval_timeout_seconds:g} s: the model is too slow "
                "or hangs at inference"
            )
            return
        self._accept_report(evaluator, returncode, result, holdout)

    def _accept_report(
        self, evaluator: _Evaluator, returncode: int, result: RunResult, holdout: bool = False
    ) -> None:
        """Record the evaluator's verdict if its report passes every rule, else reject the run.

        Rules: exactly one JSON object on one line, at most REPORT_MAX_BYTES, on the report
        channel; an exit code that agrees with the reported status (0 exactly for "ok"); output
        that was not truncated; the expected hashes. A rejected run is a crash (integrity_fail
        for the hashes) whose reason says which rule failed.
        """
        process = evaluator.process
        report, problem = parse_report(evaluator.channel.data, evaluator.channel.overflow)
        if returncode < 0:
            ended = f"was killed by signal {-returncode}"
            if process.limit_hit:
                ended += f" ({process.limit_hit} limit hit while it ran the model)"
        else:
            ended = f"exited with code {returncode}"
        if report is None:
            result.status = "crash"
            result.failure_reason = (
                f"the evaluator {ended} without a valid report ({problem}); the run is not scored. "
                "A model that is very large or slow at inference can cause this; otherwise tell the operator"
            )
            return
        status = report.get("status")
        if (status == "ok") != (returncode == 0):
            result.status = "crash"
            result.failure_reason = (
                f"the evaluator {ended} but reported status {str(status)[:40]!r}; the two must agree, so the "
                "run is rejected"
            )
            return
        if process.output_truncated:
            result.status = "crash"
            result.failure_reason = (
                f"the evaluator's output passed its {format_bytes(process.output_cap)} cap while it ran the model; "
                "the run is rejected (something in the model made the libraries print without end)"
            )
            return
        # A consistency check that the evaluator read the files the server hashed at startup. It is
        # NOT an authentication: these are hashes of readable files. The report is trusted
        # because only the evaluator holds the report channel, never because of these values.
        reported = report.get("hashes")
        reported = reported if isinstance(reported, dict) else {}
        # Keys: "evaluator" and each eval-side data file by its path in the data folder.
        expected = dict(self.expected_hashes)
        mismatched = [k for k, v in expected.items() if reported.get(k) != v]
        if mismatched:
            result.status = "integrity_fail"
            result.failure_reason = (
                f"the evaluator read different {', '.join(mismatched)} than the server trusts"
            )
            return
        reason = report.get("reason")
        reason = reason[:2000] if isinstance(reason, str) and reason else None
        if status == "ok":
            metric = self.target.metric
            if _finite(report.get(metric)) is None:
                result.status = "crash"
                result.failure_reason = f"the evaluator reported status ok without a finite {metric}; the run is rejected"
                return
            result.metrics = published_metrics(report, self.target)
            result.status, result.phase = "ok", "done"
            result.metric_value = result.metrics[metric]
            result.metric_exact = float(report[metric])
            if self.target.tie_break is not None:
                result.tie_break_exact = _finite(report.get(self.target.tie_break[0]))
            if holdout:
                self._accept_holdout(report, reported, result)
        elif status == "integrity_fail":
            result.status = "integrity_fail"
            result.failure_reason = reason or "the model broke a rule of the metric"
        elif status == "invalid_artifact":
            result.status = "crash"
            result.failure_reason = (
                f"the model artifact was rejected: {reason or 'no reason given'}"
            )
        else:
            result.status = "crash"
            result.failure_reason = reason or f"the evaluator failed (status {str(status)[:40]!r})"

    def _accept_holdout(
        self, report: dict[str, Any], reported_hashes: dict[str, Any], result: RunResult
    ) -> None:
        """Keep the sealed holdout figure on ``result`` (holdout_value, full precision), or say why not.

        The holdout never changes the run's status or anything the agent reads: a missing or
        failed entry, or a holdout file other than the one the server trusts, leaves
        holdout_value None and holdout_note set (for the operator).
        """
        expected = self.expected_holdout_hashes
        if not expected or any(reported_hashes.get(name) != d for name, d in expected.items()):
            result.holdout_note = "the evaluator read a different holdout than the server trusts"
            return
        entry = report.get("holdout")
        if not isinstance(entry, dict):
            result.holdout_note = "the evaluator sent no holdout entry"
            return
        value = _finite(entry.get("value"))
        if entry.get("status") == "ok" and value is not None:
            result.holdout_value = value
            scored = _finite(entry.get("examples", entry.get("windows")))
            result.holdout_windows = int(scored) if scored is not None else None
            return
        reason = entry.get("reason")
        reason = reason[:400] if isinstance(reason, str) else "no reason given"
        result.holdout_note = f"{str(entry.get('status'))[:20]}: {reason}"


class ReportChannel:
    """The pipe the evaluator writes its one-line report to; the runner reads it, bounded.

    The write end goes to the evaluator's jail as an inherited descriptor (``--report-fd``);
    the runner closes its copy once the jail has started, so the evaluator holds the only
    one. Reads never block: ``drain`` takes what is there (called while the evaluator runs,
    so it never blocks on a full pipe) and keeps at most ``REPORT_MAX_BYTES + 1`` bytes.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both close-on-exec: no other child inherits them
        os.set_blocking(self.read_fd, False)
        self._chunks: list[bytes] = []
        self._kept = 0
        self.overflow = False

    def close_write_end(self) -> None:
        if self.write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.write_fd)
            self.write_fd = -1

    def drain(self) -> None:
        """Read whatever the pipe holds now; past the bound, read and discard (and remember)."""
        if self.read_fd < 0:
            return
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            room = REPORT_MAX_BYTES + 1 - self._kept
            if room > 0:
                self._chunks.append(chunk[:room])
                self._kept += min(room, len(chunk))
            if self._kept > REPORT_MAX_BYTES:
                self.overflow = True

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)

    def close(self) -> None:
        self.close_write_end()
        if self.read_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.read_fd)
            self.read_fd = -1


@dataclass
class _Evaluator:
    """A started evaluator jail and its report channel."""

    process: JailedProcess
    channel: ReportChannel

    def end(self) -> None:
        """Kill it if it still runs (idempotent), take what it sent, close the channel."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.channel.drain()
        self.channel.close()


def parse_report(data: bytes, overflow: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The report if ``data`` is exactly one JSON object on one line ending in "\\n", else why not.

    Only "\\n" ends a line here (no \\r, \\u2028 or other splitting), and nothing may come before
    or after the one line.
    """
    if overflow or len(data) > REPORT_MAX_BYTES:
        return None, f"its report was larger than {REPORT_MAX_BYTES // 1024} KiB"
    if not data:
        return None, "no report arrived on the report channel"
    if not data.endswith(b"\n") or data.count(b"\n") != 1:
        return None, "the report was not exactly one line"
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError):
        return None, "the report was not valid JSON"
    if not isinstance(value, dict):
        return None, "the report was not a JSON object"
    return value, None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number the report may carry")


def published_metrics(report: dict[str, Any], target: ResearchTarget) -> dict[str, Any]:
    """The whitelist of the report the lab stores and shows: rounded figures, counts, nothing else.

    The metric and its tie-break at the target's decimals, the timings, the counts the target
    declares (published_counts), and the probe counts.
    """
    metrics: dict[str, Any] = {target.metric: target.round(report[target.metric])}
    if target.tie_break is not None:
        second = _finite(report.get(target.tie_break[0]))
        if second is not None:
            metrics[target.tie_break[0]] = round(second, target.tie_break_decimals)
    for key in PUBLISHED_SECONDS:
        seconds = _finite(report.get(key))
        if seconds is not None:
            metrics[key] = round(seconds, 2)
    for key in target.published_counts:
        count = _finite(report.get(key))
        if count is not None:
            metrics[key] = int(count)
    for probe_key in ("causality", "probes"):
        probe = report.get(probe_key)
        if not isinstance(probe, dict):
            continue
        counts = {
            key: int(count)
            for key in PUBLISHED_PROBE_COUNTS
            if (count := _finite(probe.get(key))) is not None
        }
        if counts:
            metrics[probe_key] = counts
    return metrics


def _finite(value: Any) -> float | None:
    """A finite JSON number as a float; None for anything else (bools, strings, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class DirectoryUsage:
    """What a walk of a run directory found: bytes on disk (or apparent, the larger) and entries."""

    bytes: int
    entries: int

    def over(self, quota: int, max_entries: int) -> bool:
        return self.bytes > quota or self.entries > max_entries


def directory_usage(root: Path, stop_bytes: int, max_entries: int) -> DirectoryUsage:
    """Size of everything under ``root`` without following links; stops early past the limits.

    Each inode counts once, at the larger of its apparent size and its allocated blocks (a
    sparse file counts at its apparent size). The walk stops as soon as it is over
    ``stop_bytes`` or ``max_entries``: its cost is bounded whatever train.py created.
    """
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    key = (st.st_dev, st.st_ino)
                    if key not in seen:
                        seen.add(key)
                        total += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
                    if total > stop_bytes or entries > max_entries:
                        return DirectoryUsage(total, entries)
        except OSError:
            continue
    return DirectoryUsage(total, entries)


def format_bytes(count: int) -> str:
    """1.5 GiB, 300 MiB, 64 KiB: for messages."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"


def remove_tree(path: Path) -> None:
    """Delete a folder train.py wrote in, even where it took permissions away (a chmod 000 folder)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            path.unlink()
        return
    for folder, subfolders, _files in os.walk(path):  # links are not followed
        for name in subfolders:
            with contextlib.suppress(OSError):
                sub = os.path.join(folder, name)
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
    shutil.rmtree(path, ignore_errors=True)


#: What a kept run folder holds: the logs, and the submitted code under code/.
KEPT_LOGS = ("train.log", "eval.log")


ARTIFACT_DIR = "artifact"  # in the run folder, beside code/: written by the runner only


class ArtifactRefused(Exception):
    """Training's artifact cannot be handed to the evaluator; the message says why."""


def hand_over_artifact(out_dir: Path, name: str, artifact_dir: Path) -> Path:
    """Copy training's artifact into the runner's own folder, which only the evaluator mounts.

    Training has exited (its process tree is gone). The folder and the file are opened without
    following links and must be a directory and a regular file; the bytes are copied, so the
    evaluator scores exactly what this run's training left, whatever happens to code/ later.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        folder = os.open(out_dir, flags | os.O_DIRECTORY)
    except OSError as exc:
        raise ArtifactRefused(
            "train.py replaced $AR_OUT_DIR with a link or a file; save the model as a regular "
            "file inside the $AR_OUT_DIR folder it was given"
        ) from exc
    try:
        try:
            source = os.open(name, flags | os.O_NONBLOCK, dir_fd=folder)
        except OSError as exc:
            raise ArtifactRefused(
                f"$AR_OUT_DIR/{name} is a link or cannot be opened; train.py must save the model "
                "there as a regular file"
            ) from exc
        with os.fdopen(source, "rb") as reader:
            info = os.fstat(reader.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactRefused(
                    f"$AR_OUT_DIR/{name} is not a regular file; train.py must save the model there"
                )
            target = artifact_dir / name
            with target.open("xb") as writer:
                shutil.copyfileobj(reader, writer, 4 << 20)
            target.chmod(0o444)
            return target
    finally:
        os.close(folder)


def keep_only_logs_and_code(run_dir: Path, files: dict[str, bytes]) -> None:
    """Strip a kept run folder to what an operator needs: the two logs and the submitted code.

    Everything train.py wrote goes (its code folder is rebuilt from the submitted bytes, so a
    file it replaced or grew is not kept either); the logs are capped by the jail.
    """
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return
    for entry in entries:
        if entry.name in KEPT_LOGS and entry.is_file(follow_symlinks=False):
            continue
        remove_tree(Path(entry.path))
    code = run_dir / "code"
    try:
        code.mkdir()
        for name, content in files.items():
            (code / name).write_bytes(content)
    except OSError:
        pass


@functools.cache
def gpu_takes_two_processes(device: str) -> bool:
    """Whether the GPU's compute mode is Default (several processes may hold contexts).

    In an exclusive mode a prewarmed evaluator that started CUDA first would lock the training
    out, so it warms up without CUDA there (and where nvidia-smi cannot tell).
    """
    index = device.partition(":")[2] or "0"
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_mode", "--format=csv,noheader", "-i", index],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "Default"


@functools.lru_cache(maxsize=16)
def _shares_gpu(device: str) -> bool:
    """gpu_takes_two_processes, asked once per device rather than once per prepared run."""
    return gpu_takes_two_processes(device)


def cpu_share(
    samples: list[tuple[float, float]], threads: int, cpu_total: float, wall_total: float
) -> float:
    """The share of its threads' CPU a run got while training: about 0.9 when idle, lower beside a busy neighbour.

    The median over ~1 s windows after the first output line, so that single-threaded start-up
    (imports) and the export at the end do not count; the whole run's average if too short.
    """
    windows = []
    for (t0, c0), (t1, c1) in zip(samples, samples[2:], strict=False):
        if t1 > t0:
            windows.append((c1 - c0) / ((t1 - t0) * threads))
    if len(windows) >= 3:
        return round(statistics.median(windows), 4)
    return round(cpu_total / max(wall_total * threads, 1e-9), 4)


# ---------------------------------------------------------------- squeezed runs

#: Below this share of its threads' CPU a run is starved enough to ask why (the wall budget's
#: ``contended`` threshold); a timed-out run is always asked.
SQUEEZE_SHARE = 0.7
#: Other processes must have kept at least this share of the run's CPUs busy ...
SQUEEZE_MIN_OTHER_LOAD = 0.25
#: ... while at least this share of the run's threads were ready to run and waited for a CPU.
SQUEEZE_MIN_WAIT_SHARE = 0.25
#: Seconds between two load samples (busy CPU time, the run's CPU time, its threads' states).
LOAD_SAMPLE_SECONDS = 0.5
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def squeeze_verdict(
    *, timed_out: bool, cpu_share: float | None, other_load: float, wait_share: float
) -> bool:
    """Whether a run was squeezed by other load: it timed out or got less than SQUEEZE_SHARE of
    its threads' CPU, other processes kept at least SQUEEZE_MIN_OTHER_LOAD of its CPUs busy,
    and at least SQUEEZE_MIN_WAIT_SHARE of its threads were ready to run yet waiting for a CPU.

    The last condition is what tells a starved program from one that idles on purpose: a
    thread that sleeps is not waiting for a CPU, whatever the machine's load, so a train.py
    that sleeps (or blocks) past its budget is never squeezed, on an idle machine or a busy
    one, and its timeout stays its own. A program that spins beside other load is squeezed at
    most as any honest one is: the lab re-runs a squeezed timeout once, and a second timeout
    is recorded as it is; there is no score to gain.
    """
    starved = timed_out or (cpu_share is not None and cpu_share < SQUEEZE_SHARE)
    return starved and other_load >= SQUEEZE_MIN_OTHER_LOAD and wait_share >= SQUEEZE_MIN_WAIT_SHARE


@dataclass(frozen=True)
class LoadMeasure:
    """What the load samples say about a training run (medians over ~1 s windows)."""

    other_load: float  # share of the run's CPUs kept busy by other processes, 0..1
    wait_share: float  # share of the run's threads ready to run but waiting for a CPU, 0..1


class LoadSampler:
    """Samples, while training runs, what the run needs to tell a squeeze from idling.

    Every LOAD_SAMPLE_SECONDS: the busy CPU time of the CPUs the run may use (/proc/stat:
    user, nice, system, irq, softirq and steal, i.e. time a hypervisor gave to others), the
    CPU time of the run's own processes (training, and its prewarmed evaluator, which is the
    run's own load), and how many of the training's threads are runnable (state R: running
    or waiting for a CPU). Each reading is cheap (a few /proc files).
    """

    def __init__(self, training: JailedProcess, evaluator: JailedProcess | None) -> None:
        self.training, self.evaluator = training, evaluator
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.samples: list[tuple[float, float, float, int]] = []  # elapsed, own, busy, runnable
        self._next = 0.0

    def sample(self, elapsed: float) -> None:
        if elapsed < self._next:
            return
        self._next = elapsed + LOAD_SAMPLE_SECONDS
        busy = busy_cpu_seconds(self.cpus)
        if busy is None:
            return
        own = self.training.cpu_seconds()
        if self.evaluator is not None:
            own += self.evaluator.cpu_seconds()
        self.samples.append((elapsed, own, busy, runnable_threads(self.training.pid)))

    def measure(self, threads: int, since: float | None) -> LoadMeasure | None:
        """Medians over windows of ~1 s, after ``since`` (the first output line) where at
        least three such windows exist, else over all of them; None with fewer than 2 samples.
        """
        if len(self.samples) < 2 or not self.cpus:
            return None
        later = [s for s in self.samples if since is not None and s[0] >= since]
        samples = later if len(later) >= 5 else self.samples
        threads = max(1, min(threads, len(self.cpus)))
        other, wait = [], []
        step = 2 if len(samples) >= 3 else 1
        for first, last in zip(samples, samples[step:], strict=False):
            seconds = last[0] - first[0]
            if seconds <= 0:
                continue
            own_rate = (last[1] - first[1]) / seconds  # CPUs' worth the run used
            busy_rate = (last[2] - first[2]) / seconds  # CPUs' worth busy in all
            runnable = statistics.mean(
                min(s[3], threads) for s in samples if first[0] <= s[0] <= last[0]
            )
            other.append(min(1.0, max(0.0, (busy_rate - own_rate) / len(self.cpus))))
            wait.append(min(1.0, max(0.0, (runnable - own_rate) / threads)))
        if not other:
            return None
        return LoadMeasure(
            other_load=round(statistics.median(other), 4),
            wait_share=round(statistics.median(wait), 4),
        )


def busy_cpu_seconds(cpus: list[int]) -> float | None:
    """Busy CPU seconds since boot of these CPUs, from /proc/stat; None where it cannot be read."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return None
    wanted, ticks, found = set(cpus), 0, 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in wanted):
            continue
        fields = [int(x) for x in rest.split()[:8]] + [0] * 8
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        ticks += user + nice + system + irq + softirq + steal
        found += 1
    return ticks / _CLOCK_TICKS if found else None


def runnable_threads(root: int) -> int:
    """Threads in state R (running, or ready and waiting for a CPU) in the process tree under ``root``."""
    count, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
                children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            end = stat.rfind(b")")
            if stat[end + 2 : end + 3] == b"R":
                count += 1
            todo.extend(int(child) for child in children if child.isdigit())
    return count
