"""Experiments as Ray tasks: the server stays the single coordinator and the single writer of the store.

`RayExecutor` implements the scheduler's `Executor` protocol over an existing Ray cluster
(`serve --executor ray --ray-address HEAD:6379`):

- each experiment is one Ray task asking for one GPU (`num_gpus=1`) on a GPU lab, or
  `cpus_per_slot` CPUs on a CPU lab; the code snapshot (`Job.files`) travels with the task;
- on the worker, the task prepares the data once per node (`trainer.prepare.prepare` is
  idempotent and cached; the data lives under the worker's `$AUTORESEARCH_HOME`), checks that
  it hashes like the server's, builds an `ExperimentRunner` there (the jail is applied on the
  worker node) and returns `RunResult.as_dict()`; the server rebuilds the result and records it;
- slots follow the cluster's resources as nodes join and leave (one per GPU, or one per
  `cpus_per_slot` CPUs of the alive nodes);
- progress (starting -> training -> evaluating) and cooperative cancel go through a small
  actor, `ProgressBoard`, placed on the server's node; a cancel that the task does not honour
  within `cancel_grace_seconds` is forced with `ray.cancel(force=True)`;
- a task lost with its node (or its worker process) comes back as a result with status
  `interrupted`: the lab marks the experiment `interrupted` and re-queues it once.

Ray is an optional dependency (`pip install autoresearch-mcp[ray]`); it is imported only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.runner import RunResult, RunSettings
from sandbox.target import ResearchTarget
from server.scheduler import Job, ProgressFn
from server.settings import default_home
from server.targets import run_prepare

log = logging.getLogger(__name__)

SLOTS_CACHE_SECONDS = 2.0
POLL_SECONDS = 0.5
CANCEL_GRACE_SECONDS = 15.0

# Ray errors that mean "the run was lost with its node or worker process", not "the code failed".
_LOST_ERRORS = (
    "NodeDiedError",
    "WorkerCrashedError",
    "ObjectLostError",
    "ObjectFetchTimedOutError",
    "OwnerDiedError",
    "LocalRayletDiedError",
    "RaySystemError",
    "ActorDiedError",
    "TaskUnschedulableError",
    "OutOfMemoryError",
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the Ray executor needs Ray: pip install 'autoresearch-mcp[ray]' (same Ray version on every node)"
        ) from exc
    return ray


def result_from_dict(value: dict[str, Any]) -> RunResult:
    """Rebuild a RunResult from `as_dict()`, ignoring keys this version does not know."""
    known = {f.name for f in dataclasses.fields(RunResult)}
    return RunResult(**{k: v for k, v in value.items() if k in known})


# ---------------------------------------------------------------- the progress board (an actor)


class ProgressBoard:
    """Phase, progress and cancel requests of the tasks in flight, keyed by experiment id."""

    def __init__(self) -> None:
        self._state: dict[int, tuple[str, float, float, str]] = {}
        self._cancel: set[int] = set()

    def report(self, experiment_id: int, phase: str, done: float, total: float, node: str) -> None:
        self._state[experiment_id] = (phase, done, total, node)

    def get(self, experiment_id: int) -> tuple[str, float, float, str] | None:
        return self._state.get(experiment_id)

    def request_cancel(self, experiment_id: int) -> None:
        self._cancel.add(experiment_id)

    def cancelled(self, experiment_id: int) -> bool:
        return experiment_id in self._cancel

    def forget(self, experiment_id: int) -> None:
        self._state.pop(experiment_id, None)
        self._cancel.discard(experiment_id)


# ---------------------------------------------------------------- what runs on the worker node


def worker_home() -> Path:
    """The worker node's state folder: $AUTORESEARCH_HOME or ~/.cache/autoresearch-mcp."""
    return default_home().expanduser().resolve()


def prepare_once(target: ResearchTarget, data_dir: Path, split_secret: str | None = None) -> None:
    """Prepare the node's data with the target's own prepare step (idempotent and cached), one
    task at a time per node.

    ``split_secret`` is the server's (split.key's hex): every node must hold out the same val
    examples, and the split is secret per installation (a node that drew its own would score
    another val set).
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with (data_dir.parent / ".prepare.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            code = run_prepare(target, data_dir, [], split_secret=split_secret, quiet=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if code != 0:
        raise RuntimeError(f"the node could not prepare {target.name}'s data (exit {code})")


def run_on_worker(
    job: Job,
    board: Any,
    target_file: str | None,
    expected_hashes: dict[str, str],
    keep_run_dirs: str,
    cpus: int | None,
    split_secret: str | None = None,
    expected_holdout_hashes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Ray task: prepare the node's data, run the job in the node's jail, return the result as a dict."""
    ray = _import_ray()
    from sandbox.jail import detect_isolation
    from sandbox.runner import ExperimentRunner, RunRefused
    from sandbox.target import load_target

    context = ray.get_runtime_context()
    node = context.get_node_id()
    eid = job.experiment_id

    def report(phase: str, done: float = 0.0, total: float = 0.0) -> None:
        board.report.remote(eid, phase, done, total, node)

    report("preparing")
    home = worker_home()
    data_dir = home / "data"
    target = load_target(Path(target_file)) if target_file else load_target()
    prepare_once(target, data_dir, split_secret)
    try:
        runner = ExperimentRunner(
            target,
            data_dir,
            home / "runs",
            keep_run_dirs=keep_run_dirs,  # type: ignore[arg-type]
            isolation=detect_isolation(),
        )
    except RunRefused as exc:
        return RunResult(status="integrity_fail", failure_reason=str(exc), phase="setup").as_dict()
    differs = sorted(
        k for k in expected_hashes if runner.expected_hashes.get(k) != expected_hashes[k]
    )
    if differs:
        return RunResult(
            status="integrity_fail",
            phase="setup",
            failure_reason=(
                f"node {node[:12]} ({home}) holds different {', '.join(differs)} than the server; the metric "
                "would not be comparable. Install the same package version and prepare the same corpus with the same "
                "split secret on every node."
            ),
        ).as_dict()

    settings = job.settings
    changes: dict[str, Any] = {}
    holdout_note = None
    if settings.score_holdout and runner.expected_holdout_hashes != (expected_holdout_hashes or {}):
        # Never a holdout figure from other data than the server's: the run is scored on val only.
        changes["score_holdout"] = False
        holdout_note = f"node {node[:12]} holds a different holdout split than the server"
    if settings.device.startswith("cuda"):
        # The jail scrubs CUDA_VISIBLE_DEVICES: name the physical GPU Ray gave this task instead.
        gpu_ids = ray.get_gpu_ids()
        changes["device"] = f"cuda:{int(gpu_ids[0])}" if gpu_ids else "cuda"
    if cpus:
        changes["threads"] = cpus
    if changes:
        settings = RunSettings(**{**settings.__dict__, **changes})

    cancel = threading.Event()
    finished = threading.Event()

    def watch_cancel() -> None:
        while not finished.wait(1.0):
            with contextlib.suppress(Exception):
                if ray.get(board.cancelled.remote(eid), timeout=10):
                    cancel.set()
                    return

    watcher = threading.Thread(target=watch_cancel, name=f"cancel-{eid}", daemon=True)
    watcher.start()
    try:
        result = runner.run(
            job.files,
            settings,
            on_progress=report,
            cancel=cancel,
            run_name=f"exp{eid:06d}-{int(time.time())}",
        )
    except RunRefused as exc:
        result = RunResult(status="crash", failure_reason=str(exc), phase="setup")
    finally:
        finished.set()
    result.metrics = {**result.metrics, "ray_node": node}
    if holdout_note:
        result.holdout_note = holdout_note
    return result.as_dict()


# ---------------------------------------------------------------- the executor (server side)


class RayExecutor:
    """Runs each experiment as a Ray task on a cluster; slots follow the cluster's resources."""

    def __init__(
        self,
        address: str | None,
        *,
        gpu: bool = False,
        cpus_per_slot: int = 1,
        target_file: Path | None = None,
        expected_hashes: dict[str, str] | None = None,
        expected_holdout_hashes: dict[str, str] | None = None,
        keep_run_dirs: str = "failed",
        cancel_grace_seconds: float = CANCEL_GRACE_SECONDS,
        split_secret: str | None = None,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self.gpu = gpu
        self.cpus_per_slot = max(1, int(cpus_per_slot))
        self.target_file = str(Path(target_file).resolve()) if target_file else None
        self.expected_hashes = dict(expected_hashes or {})
        self.expected_holdout_hashes = dict(expected_holdout_hashes or {})
        self.keep_run_dirs = keep_run_dirs
        self.cancel_grace_seconds = cancel_grace_seconds
        self.split_secret = split_secret  # the server's: nodes prepare the same val split
        if not ray.is_initialized():
            # log_to_driver=False: over stdio, stdout belongs to MCP.
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self._board = (
            ray.remote(ProgressBoard)
            .options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
            )
            .remote()
        )
        self._task = ray.remote(run_on_worker)
        self._lock = threading.Lock()
        self._slots: list[str] = []
        self._slots_at = 0.0
        self._nodes: dict[int, str] = {}

    # ------------------------------------------------------------ slots

    def slots(self) -> list[str]:
        """One slot per GPU (GPU lab) or per `cpus_per_slot` CPUs of the alive nodes."""
        with self._lock:
            if time.monotonic() - self._slots_at < SLOTS_CACHE_SECONDS:
                return list(self._slots)
        try:
            count = self._capacity()
        except Exception:
            log.warning("could not read the Ray cluster's resources", exc_info=True)
            count = None
        with self._lock:
            if count is not None:
                kind = "gpu" if self.gpu else "cpu"
                self._slots = [f"ray-{kind}-{i}" for i in range(count)]
            self._slots_at = time.monotonic()
            return list(self._slots)

    def _capacity(self) -> int:
        count = 0
        for node in self._ray.nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources") or {}
            if self.gpu:
                count += int(resources.get("GPU", 0))
            else:
                count += int(resources.get("CPU", 0)) // self.cpus_per_slot
        return count

    def node_of(self, experiment_id: int) -> str | None:
        """The Ray node id running an experiment (once its task has started), else None."""
        with self._lock:
            return self._nodes.get(experiment_id)

    # ------------------------------------------------------------ one run

    def run(
        self, job: Job, slot: str, on_progress: ProgressFn, cancel: threading.Event
    ) -> RunResult:
        ray = self._ray
        resources: dict[str, Any] = (
            {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": self.cpus_per_slot}
        )
        eid = job.experiment_id
        ref = self._task.options(
            **resources,
            max_retries=0,  # the lab re-queues a lost run once, as a new row
            retry_exceptions=False,
            name=f"autoresearch-exp{eid}",
        ).remote(
            job,
            self._board,
            self.target_file,
            self.expected_hashes,
            self.keep_run_dirs,
            None if self.gpu else self.cpus_per_slot,
            self.split_secret,
            self.expected_holdout_hashes,
        )
        on_progress("starting", 0.0, 0.0)
        last: tuple[str, float, float] | None = None
        cancel_sent: float | None = None
        forced = False
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
                if ready:
                    break
                state = self._board_state(eid)
                if state is not None:
                    phase, done, total, node = state
                    with self._lock:
                        self._nodes[eid] = node
                    if (phase, done, total) != last:
                        last = (phase, done, total)
                        on_progress(phase, done, total)
                if cancel.is_set() and cancel_sent is None:
                    cancel_sent = time.monotonic()
                    self._board.request_cancel.remote(eid)
                if (
                    cancel_sent is not None
                    and not forced
                    and time.monotonic() - cancel_sent > self.cancel_grace_seconds
                ):
                    log.warning("experiment %s ignored the cancel; killing its Ray task", eid)
                    ray.cancel(ref, force=True)
                    forced = True
            return result_from_dict(ray.get(ref))
        except Exception as exc:
            return self._result_for_error(exc, eid, forced or cancel.is_set())
        finally:
            with contextlib.suppress(Exception):
                self._board.forget.remote(eid)
            with self._lock:
                self._nodes.pop(eid, None)

    def _board_state(self, eid: int) -> tuple[str, float, float, str] | None:
        try:
            state = self._ray.get(self._board.get.remote(eid), timeout=5)
        except Exception:
            return None
        if not state:
            return None
        phase, done, total, node = state
        return str(phase), float(done), float(total), str(node)

    def _result_for_error(self, exc: Exception, eid: int, cancelled: bool) -> RunResult:
        from ray import exceptions as rex

        name = type(exc).__name__
        if isinstance(exc, rex.TaskCancelledError) or (cancelled and name in _LOST_ERRORS):
            return RunResult(
                status="cancelled", failure_reason="cancelled; the Ray task was killed"
            )
        if name in _LOST_ERRORS or isinstance(exc, rex.RaySystemError):
            log.warning("experiment %s was lost with its Ray node or worker: %s", eid, name)
            return RunResult(
                status="interrupted",
                failure_reason=f"the Ray node or worker running it was lost ({name}); re-queued once",
                log_tail=str(exc)[-2000:],
            )
        if isinstance(exc, rex.RayTaskError):
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return RunResult(
                status="crash",
                phase="setup",
                failure_reason=f"the Ray task failed on the worker: {type(cause).__name__}: {cause}",
                log_tail=str(exc)[-2000:],
            )
        return RunResult(
            status="crash", phase="setup", failure_reason=f"the Ray executor failed: {name}: {exc}"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self._board)


__all__ = ["ProgressBoard", "RayExecutor", "result_from_dict", "run_on_worker"]
