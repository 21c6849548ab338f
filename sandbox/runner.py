"""One experiment end to end: a fresh run directory, training in a jail under the runner's clock,
then the trusted evaluator in a second jail, and a result object.

The runner owns the clock: it measures the budget from outside (wall-clock seconds, or CPU
seconds of the process tree), sends SIGTERM at budget + grace and SIGKILL a few seconds
later. Training sees the train split and the tokenizer only; the evaluator sees the
artifact, the val split and the tokenizer, and can write nothing. Everything target-specific
comes from the `ResearchTarget` description.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sandbox.jail import IsolationLevel, JailedProcess, JailLimits, JailSpec, detect_isolation
from sandbox.target import ResearchTarget

MAX_BUDGET_SECONDS = 24 * 3600.0
MIN_BUDGET_SECONDS = 1.0
LOG_TAIL_LINES = 50
POLL_SECONDS = 0.1
KILL_GRACE_SECONDS = 3.0

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
    val_bpb: float | None = None
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

    # ------------------------------------------------------------ integrity of the fixed parts

    def _evaluator_path(self) -> Path:
        return self.target.target_dir / "evaluate.py"

    def _trusted_hashes(self) -> dict[str, str]:
        """Hashes of the evaluator and of every eval-side data file, taken when the server starts.

        Data files are checked against prepare's manifest too: a file changed since preparation
        is refused here, before any run trusts it.
        """
        hashes = {"evaluator": sha256_file(self._evaluator_path())}
        manifest_path = self.data_dir / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunRefused(
                f"the data in {self.data_dir} is not prepared (no valid manifest.json); run `autoresearch-mcp prepare`"
            ) from exc
        for name, entry in manifest.get("files", {}).items():
            if name.split("/")[0] in self.target.eval_data:
                hashes[name] = entry["sha256"]
        return hashes

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
    ) -> RunResult:
        """Train `files` (the editable files) in a jail, evaluate the artifact in another, return the result.

        Never raises for anything the agent's code does; raises RunRefused for bad settings.
        """
        settings = settings.validated()
        started = time.monotonic()
        progress = on_progress or (lambda phase, done, total: None)
        cancel = cancel or threading.Event()
        result = RunResult(
            status="crash", isolation=self.isolation.value, seed=settings.seed, phase="setup"
        )
        try:
            result.hashes = self.verify_fixed_parts()
        except RunRefused as exc:
            result.status, result.failure_reason = "integrity_fail", str(exc)
            return result

        run_dir = self.runs_dir / (run_name or uuid.uuid4().hex[:12])
        try:
            (run_dir / "code").mkdir(parents=True, exist_ok=False)
            (run_dir / "code" / "out").mkdir()
            (run_dir / "eval").mkdir()
            for name, content in files.items():
                (run_dir / "code" / name).write_bytes(content)
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            result.failure_reason = f"could not create the run directory {run_dir}: {exc.strerror or exc}; free disk space or check permissions"
            result.total_seconds = time.monotonic() - started
            return result

        evaluator: JailedProcess | None = None
        try:
            if settings.prewarm_evaluator:
                evaluator = self._start_evaluator(run_dir, settings, wait=True)
            self._train(run_dir, settings, result, progress, cancel)
            if result.phase == "evaluate":
                self._evaluate(run_dir, settings, result, progress, cancel, evaluator)
        finally:
            if evaluator is not None and evaluator.poll() is None:
                evaluator.kill()  # training failed or was cancelled: nothing to score
                evaluator.wait()
            result.total_seconds = time.monotonic() - started
            result.overhead_seconds = max(0.0, result.total_seconds - settings.budget_seconds)
            keep = self.keep_run_dirs == "always" or (
                self.keep_run_dirs == "failed" and result.status != "ok"
            )
            if keep:
                shutil.rmtree(run_dir / "code" / "out", ignore_errors=True)  # artifacts are large
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
        return result

    def _contract_env(self, settings: RunSettings, out_dir: Path) -> dict[str, str]:
        threads = str(settings.threads or os.cpu_count() or 1)
        env = {
            "AR_BUDGET_SECONDS": f"{settings.budget_seconds:g}",
            "AR_BUDGET_KIND": settings.budget_kind,
            "AR_DEVICE": settings.device,
            "AR_SEED": str(settings.seed),
            "AR_DATA_DIR": str(self.data_dir),
            "AR_OUT_DIR": str(out_dir),
            "AR_EVAL_CONTEXT": str(self.target.eval_context),
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
        return JailLimits(cuda=cuda, memory_bytes=settings.memory_bytes)

    def _train(
        self,
        run_dir: Path,
        settings: RunSettings,
        result: RunResult,
        progress: ProgressCallback,
        cancel: threading.Event,
    ) -> None:
        code_dir = run_dir / "code"
        out_dir = code_dir / "out"
        log_path = run_dir / "train.log"
        spec = JailSpec(
            workdir=code_dir,
            readonly_paths=tuple(self.data_dir / sub for sub in self.target.train_data),
            env=self._contract_env(settings, out_dir),
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
        result.phase = "train"
        began = time.monotonic()
        process = JailedProcess.start(argv, spec, log_path)
        limit = settings.budget_seconds + settings.grace
        # A CPU budget still needs a wall-clock stop: a process that sleeps uses no CPU.
        wall_limit = limit if settings.budget_kind == "wall" else 3 * settings.budget_seconds + 30
        terminated_at: float | None = None
        reason: str | None = None
        last_report = 0.0
        cpu_samples: list[tuple[float, float]] = []  # (elapsed, cpu seconds) after the first output
        while process.poll() is None:
            now = time.monotonic()
            elapsed = now - began
            used = process.cpu_seconds() if settings.budget_kind == "cpu" else elapsed
            if (
                result.first_output_seconds is None
                and log_path.exists()
                and log_path.stat().st_size > 0
            ):
                result.first_output_seconds = elapsed
            if result.first_output_seconds is not None and (
                not cpu_samples or elapsed - cpu_samples[-1][0] >= 0.5
            ):
                cpu_samples.append((elapsed, process.cpu_seconds()))
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
        result.cpu_seconds = process.cpu_seconds()
        threads = settings.threads or os.cpu_count() or 1
        result.cpu_share = cpu_share(cpu_samples, threads, result.cpu_seconds, result.train_seconds)
        peak = process.peak_memory_bytes()
        result.peak_memory_mb = round(peak / 2**20, 1) if peak else None
        result.output_truncated = process.output_truncated
        result.log_tail = tail_lines(log_path)
        if reason == "cancelled":
            result.status, result.failure_reason = "cancelled", "cancelled before training finished"
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
        result.phase = "evaluate"

    def _start_evaluator(
        self, run_dir: Path, settings: RunSettings, *, wait: bool
    ) -> JailedProcess:
        """Start the trusted evaluator in its own jail: it sees the artifact folder read-only.

        With ``wait`` it warms up, then blocks on stdin until ``send("go\\n")``; it starts
        beside training in the background (the lowest CPU weight: it takes only CPU the
        training leaves idle), and training cannot reach it (its own namespaces, no shared
        writable path). Its log is ``eval.log``.
        """
        out_dir = run_dir / "code" / "out"
        eval_dir = run_dir / "eval"
        eval_dir.chmod(0o555)  # the evaluator's working directory: nothing may be written
        artifact = out_dir / self.target.artifact
        evaluator = self._evaluator_path()
        argv = [
            part.format(
                python=self.python,
                target_dir=self.target.target_dir,
                artifact=artifact,
                data_dir=self.data_dir,
            )
            for part in self.target.evaluate_command
        ] + ["--device", settings.device]
        if settings.eval_windows:
            argv += ["--windows", str(settings.eval_windows)]
        if wait:
            argv.append("--wait")
            if settings.device.startswith("cuda") and gpu_takes_two_processes(settings.device):
                argv.append("--warm-cuda")
        spec = JailSpec(
            workdir=eval_dir,
            readonly_paths=(
                out_dir,
                evaluator,
                *(self.data_dir / sub for sub in self.target.eval_data),
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
        )
        return JailedProcess.start(argv, spec, run_dir / "eval.log")

    def _evaluate(
        self,
        run_dir: Path,
        settings: RunSettings,
        result: RunResult,
        progress: ProgressCallback,
        cancel: threading.Event,
        prewarmed: JailedProcess | None = None,
    ) -> None:
        """Score the artifact: tell the prewarmed evaluator to go, or start a cold one.

        ``eval_seconds`` counts from the end of training: the time a run waits for its score.
        """
        log_path = run_dir / "eval.log"
        progress("evaluating", 0.0, 1.0)
        began = time.monotonic()
        if prewarmed is not None and prewarmed.poll() is None:
            prewarmed.to_foreground()
        if prewarmed is not None and prewarmed.send("go\n"):
            process = prewarmed
        else:
            if prewarmed is not None:  # it died while warming up: say so, then start cold
                prewarmed.wait()
                warm_tail = tail_lines(log_path, 5)
                result.log_tail = (
                    result.log_tail + "\n--- prewarmed evaluator exited early ---\n" + warm_tail
                ).strip()
            process = self._start_evaluator(run_dir, settings, wait=False)
        terminated_at: float | None = None
        timed_out = cancelled = False
        while process.poll() is None:
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
        process.wait()
        result.eval_seconds = time.monotonic() - began
        eval_tail = tail_lines(log_path, 20)
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
        report = _last_json_object(log_path)
        if report is None:
            result.status = "crash"
            result.failure_reason = "the evaluator produced no report"
            result.log_tail = (result.log_tail + "\n--- evaluator ---\n" + eval_tail).strip()
            return
        result.metrics = {
            k: v for k, v in report.items() if k not in ("hashes", "status", "reason")
        }
        reported = report.get("hashes", {})
        expected = {"evaluator": self.expected_hashes["evaluator"]}
        for key, name in (
            ("val", "val/tokens.bin"),
            ("tokenizer", "tokenizer/tokenizer.tiktoken"),
            ("token_bytes", "tokenizer/token_bytes.bin"),
        ):
            if name in self.expected_hashes:
                expected[key] = self.expected_hashes[name]
        mismatched = [k for k, v in expected.items() if reported.get(k) != v]
        if mismatched:
            result.status = "integrity_fail"
            result.failure_reason = (
                f"the evaluator read different {', '.join(mismatched)} than the server trusts"
            )
            return
        status = report.get("status")
        if status == "ok":
            result.status, result.val_bpb, result.phase = "ok", float(report["val_bpb"]), "done"
        elif status == "integrity_fail":
            result.status, result.failure_reason = "integrity_fail", report.get("reason")
        elif status == "invalid_artifact":
            result.status, result.failure_reason = (
                "crash",
                f"the model artifact was rejected: {report.get('reason')}",
            )
        else:
            result.status, result.failure_reason = (
                "crash",
                report.get("reason") or "the evaluator failed",
            )
            result.log_tail = (result.log_tail + "\n--- evaluator ---\n" + eval_tail).strip()


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


def _last_json_object(path: Path) -> dict[str, Any] | None:
    """The evaluator prints one JSON object; warnings may precede it in the shared log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None
