"""The experiment queue: slots (one per device), round-robin fairness across agents, executors.

The store is the queue: an experiment is `queued` in SQLite until the dispatcher moves it to
`running` (a compare-and-set, so a cancel and a dispatch never both win). One dispatcher
thread hands each free slot the next experiment in round-robin order: the agent served
least recently goes first, so no agent waits more than one round behind another.

Executors run one experiment on one slot: `LocalExecutor` (this machine, the default) and
`RayExecutor` (server/ray_executor.py) share the `Executor` protocol. An executor that can also
prepare runs ahead (`PreparingExecutor`: the local one) gets each busy slot's next queued run
prepared once the running one is past PREPARE_AT of its budget (sandbox/standby.py), so the slot
does not wait for the next run's start-up.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sandbox.runner import ExperimentRunner, RunResult, RunSettings
from sandbox.standby import Standby
from server.record import QUEUED, RUNNING
from server.store import Store, utc_now

log = logging.getLogger(__name__)

#: A busy slot's next run is prepared ahead once the running one has used this share of its
#: budget: late enough that the queue has settled and the warm-up stays clear of the running
#: run's compilation, early enough that a warm-up (5-15 s on a GPU) ends well before it.
PREPARE_AT = 0.5


class RunStartedListener(Protocol):
    """Told when a queued run starts (live updates)."""

    def on_run_started(self, experiment_id: int) -> None: ...


@dataclass(frozen=True)
class Job:
    """What an executor needs to run one experiment: code, settings, a name for its run directory."""

    experiment_id: int
    files: dict[str, bytes]
    settings: RunSettings
    level: str = "S"  # the promotion level: a level with its own data has its own runner


@dataclass
class LiveProgress:
    """What a waiting client is told: the phase and how far along it is."""

    phase: str  # queued | training | evaluating | finishing
    done: float = 0.0
    total: float = 0.0
    queue_position: int | None = None
    slot: str | None = None
    updated: float = field(default_factory=time.monotonic)

    def message(self) -> str:
        if self.phase == "queued":
            return f"queued, position {self.queue_position}" if self.queue_position else "queued"
        if self.phase == "training":
            if not self.total:
                return f"starting on {self.slot}"
            return f"training on {self.slot}: {self.done:.0f}/{self.total:.0f} s of budget"
        return f"{self.phase} on {self.slot}" if self.slot else self.phase


ProgressFn = Callable[[str, float, float], None]


class Executor(Protocol):
    """Runs one job on one slot and returns the runner's result (never raises for the job's code)."""

    def run(
        self, job: Job, slot: str, on_progress: ProgressFn, cancel: threading.Event
    ) -> RunResult: ...

    def slots(self) -> list[str]: ...


@runtime_checkable
class PreparingExecutor(Executor, Protocol):
    """An executor that can prepare a slot's next run while the slot is busy (sandbox/standby.py)."""

    def prepare(self, job: Job, slot: str) -> bool: ...

    def prepared(self) -> dict[str, int]: ...

    def discard(self, slot: str | None = None) -> None: ...


class LocalExecutor:
    """Runs experiments on this machine through the sandbox runner.

    It also keeps at most one run prepared ahead per slot (`prepare`): its folder written and
    its training process warmed, used by `run` when the same experiment comes to that slot.
    """

    def __init__(
        self,
        runner: ExperimentRunner,
        slots: Sequence[str],
        level_runners: Mapping[str, ExperimentRunner] | None = None,
    ) -> None:
        self.runner = runner
        self._slots = list(slots)
        self._level_runners = dict(level_runners or {})  # levels with data of their own
        self._lock = threading.Lock()
        self._standby: dict[str, tuple[int, Standby]] = {}  # slot -> (experiment id, standby)

    def slots(self) -> list[str]:
        return list(self._slots)

    def _settings_for(self, job: Job, slot: str) -> RunSettings:
        if slot.startswith("cuda"):
            return RunSettings(**{**job.settings.__dict__, "device": slot})
        return job.settings

    def _run_name(self, job: Job) -> str:
        return f"exp{job.experiment_id:06d}-{int(time.time())}"

    def run(
        self, job: Job, slot: str, on_progress: ProgressFn, cancel: threading.Event
    ) -> RunResult:
        with self._lock:
            waiting = self._standby.pop(slot, None)
        standby = None
        if waiting is not None:
            if waiting[0] == job.experiment_id:
                standby = waiting[1]
            else:
                waiting[1].discard()
        runner = self._level_runners.get(job.level, self.runner)
        return runner.run(
            job.files,
            self._settings_for(job, slot),
            on_progress=on_progress,
            cancel=cancel,
            run_name=self._run_name(job),
            standby=standby,
        )

    def prepare(self, job: Job, slot: str) -> bool:
        """Prepare `job` to be `slot`'s next run (replacing one prepared for another); False
        when the runner has nothing to prepare for it."""
        self.discard(slot)
        runner = self._level_runners.get(job.level, self.runner)
        standby = runner.prepare(
            job.files, self._settings_for(job, slot), run_name=self._run_name(job)
        )
        if standby is None:
            return False
        with self._lock:
            replaced = self._standby.get(slot)
            self._standby[slot] = (job.experiment_id, standby)
        if replaced is not None:
            replaced[1].discard()
        return True

    def prepared(self) -> dict[str, int]:
        """The experiment each slot has prepared ahead."""
        with self._lock:
            return {slot: experiment_id for slot, (experiment_id, _) in self._standby.items()}

    def discard(self, slot: str | None = None) -> None:
        """Discard the run prepared for `slot` (every slot's with None)."""
        with self._lock:
            slots = list(self._standby) if slot is None else [slot]
            dropped = [self._standby.pop(name) for name in slots if name in self._standby]
        for _, standby in dropped:
            standby.discard()


def turn_of(experiment: dict[str, Any]) -> str:
    """Whose turn a queued run takes: the agent that asked for it, else the one it is credited to."""
    return str(experiment.get("requested_by") or experiment["agent"])


def round_robin_order(
    queued: Sequence[dict[str, Any]], last_served: dict[str, float]
) -> list[dict[str, Any]]:
    """The order in which `queued` experiments will be dispatched, given when each agent was last served.

    Priority experiments (`priority` > 0: server baselines) go first; then the agent served least
    recently goes next, its oldest experiment first, and so on round by round. Runs are turns
    of the agent that asked for them (`requested_by`: a confirmation of someone else's idea is
    the confirmer's turn, not the author's); the server's own runs share one turn.
    """
    served = dict(last_served)
    remaining = sorted(queued, key=lambda e: e["id"])
    order: list[dict[str, Any]] = []
    clock = max(served.values(), default=0.0)
    while remaining:
        priority = [e for e in remaining if e.get("kind") == "baseline"]
        if priority:
            chosen = priority[0]
        else:
            chosen = min(remaining, key=lambda e: (served.get(turn_of(e), -1.0), e["id"]))
        remaining.remove(chosen)
        order.append(chosen)
        clock += 1.0
        served[turn_of(chosen)] = clock
    return order


class Scheduler:
    """Dispatches queued experiments to free slots fairly; tracks live progress; cancels."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        job_for: Callable[[dict[str, Any]], Job],
        on_finish: Callable[[int, RunResult], None],
        slot_accepts: Callable[[str, dict[str, Any]], bool] | None = None,
        prepares_ahead: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.job_for = job_for
        self.on_finish = on_finish
        # Which experiments a slot may take (scale levels reserve devices); default: any.
        self.slot_accepts = slot_accepts or (lambda slot, experiment: True)
        # Which busy slots get their next run prepared ahead (sandbox/standby.py), where the
        # executor can; default: GPU slots (on a CPU slot the warm-up takes the running
        # run's cores).
        self.prepares_ahead = prepares_ahead or (lambda slot: slot.startswith("cuda"))
        self._condition = threading.Condition()
        # Told (from the scheduler's thread) that a run started: live updates subscribe. Weak:
        # a listener lives as long as its MCP server.
        self.started_listeners: weakref.WeakSet[RunStartedListener] = weakref.WeakSet()
        self._running: dict[
            int, tuple[str, threading.Event]
        ] = {}  # experiment id -> (slot, cancel)
        self._unprepared: set[tuple[str, int]] = set()  # (slot, experiment) not prepared ahead
        self._progress: dict[int, LiveProgress] = {}
        self._last_served: dict[str, float] = {}
        self._stopping = False
        self._paused = False
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._dispatch_loop, name="scheduler", daemon=True
            )
            self._thread.start()

    def stop(self, cancel_running: bool = True, timeout: float = 30.0) -> None:
        """Stop dispatching; cancel runs in flight (they are recorded as cancelled) and wait for them."""
        with self._condition:
            self._stopping = True
            if cancel_running:
                for _, event in self._running.values():
                    event.set()
            self._condition.notify_all()
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._thread:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        preparer = self._preparer()
        if preparer is not None:
            preparer.discard()

    def pause(self, paused: bool = True) -> None:
        with self._condition:
            self._paused = paused
            self._condition.notify_all()

    def notify(self) -> None:
        """Something was queued: wake the dispatcher."""
        with self._condition:
            self._condition.notify_all()

    # ------------------------------------------------------------ queries

    def slots(self) -> list[str]:
        return self.executor.slots()

    def running(self) -> dict[int, str]:
        with self._condition:
            return {eid: slot for eid, (slot, _) in self._running.items()}

    def queue_order(self) -> list[dict[str, Any]]:
        with self._condition:
            served = dict(self._last_served)
        return round_robin_order(self.store.next_queued(), served)

    def progress(self, experiment_id: int) -> LiveProgress | None:
        with self._condition:
            live = self._progress.get(experiment_id)
            if live is not None:
                return LiveProgress(**live.__dict__)
        for position, experiment in enumerate(self.queue_order(), start=1):
            if experiment["id"] == experiment_id:
                return LiveProgress(phase="queued", queue_position=position)
        return None

    def wait_for_change(self, timeout: float) -> None:
        """Block until any experiment's state changes or `timeout` passes."""
        with self._condition:
            self._condition.wait(timeout)

    # ------------------------------------------------------------ cancel

    def cancel(self, experiment_id: int) -> str:
        """Cancel a queued or running experiment; returns 'cancelled', 'cancelling' or 'not_live'."""
        if self.store.transition(
            experiment_id,
            [QUEUED],
            status="cancelled",
            finished_at=utc_now(),
            failure_reason="cancelled while queued",
            verdict="failed",
        ):
            self.notify()
            return "cancelled"
        with self._condition:
            entry = self._running.get(experiment_id)
            if entry:
                entry[1].set()
                return "cancelling"
        return "not_live"

    # ------------------------------------------------------------ dispatch

    def _free_slots(self) -> list[str]:
        busy = {slot for slot, _ in self._running.values()}
        return [slot for slot in self.executor.slots() if slot not in busy]

    def _dispatch_loop(self) -> None:
        while True:
            with self._condition:
                if self._stopping:
                    return
                free = [] if self._paused else self._free_slots()
            started_any = False
            try:
                order = self.queue_order() if free else []
            except Exception:  # a transient store error must not end dispatching for good
                log.exception("reading the queue failed; retrying")
                order = []
            if free:
                for experiment in order:
                    if not free:
                        break
                    slot = next((s for s in free if self.slot_accepts(s, experiment)), None)
                    if slot is not None and self._start(experiment, slot):
                        free.remove(slot)
                        started_any = True
            try:
                self._prepare_ahead()
            except Exception:  # preparing ahead only saves time: never stop dispatching for it
                log.exception("preparing the next run ahead failed")
            with self._condition:
                if not started_any and not self._stopping:
                    self._condition.wait(1.0)

    # ------------------------------------------------------------ runs prepared ahead

    def _preparer(self) -> PreparingExecutor | None:
        return self.executor if isinstance(self.executor, PreparingExecutor) else None

    def _prepare_ahead(self) -> None:
        """Prepare the next run of each busy slot past PREPARE_AT of its budget (sandbox/standby.py).

        A standby is kept while its experiment is queued (a run dispatched to another slot, or
        cancelled, loses its standby); the dispatcher does not bend its order for one: a slot
        whose next run is another experiment discards it and warms up as usual.
        """
        preparer = self._preparer()
        if preparer is None:
            return
        with self._condition:
            if self._stopping:
                return
            running = {experiment_id: slot for experiment_id, (slot, _) in self._running.items()}
            nearly_free = (
                []
                if self._paused
                else [
                    slot
                    for experiment_id, slot in running.items()
                    if self.prepares_ahead(slot) and self._nearly_done(experiment_id)
                ]
            )
        prepared = preparer.prepared()
        if not prepared and not nearly_free:
            return
        order = self.queue_order()
        queued = {experiment["id"] for experiment in order}
        for slot, experiment_id in list(prepared.items()):
            # Dispatched to its slot: the run's worker is taking it. Still queued: kept.
            if running.get(experiment_id) != slot and experiment_id not in queued:
                preparer.discard(slot)
                del prepared[slot]
        taken = set(prepared.values())
        for slot in nearly_free:
            if slot in prepared:
                continue
            following = next(
                (e for e in order if e["id"] not in taken and self.slot_accepts(slot, e)), None
            )
            if following is None or (slot, following["id"]) in self._unprepared:
                continue
            taken.add(following["id"])
            if not preparer.prepare(self.job_for(following), slot):
                # Nothing to prepare for it (a cold start, an exclusive GPU) or it failed: the
                # run starts as usual, and this is not tried again every second.
                if len(self._unprepared) > 1000:
                    self._unprepared.clear()
                self._unprepared.add((slot, following["id"]))

    def _nearly_done(self, experiment_id: int) -> bool:
        """Training past PREPARE_AT of its budget, or evaluating (called holding the condition)."""
        live = self._progress.get(experiment_id)
        if live is None or live.phase == "finishing":
            return False
        if live.phase != "training":
            return True
        return bool(live.total) and live.done >= PREPARE_AT * live.total

    def _start(self, experiment: dict[str, Any], slot: str) -> bool:
        experiment_id = experiment["id"]
        cancel = threading.Event()
        # Registered before the queued -> running step: a cancel that loses the race for the
        # row then finds the run here and stops it (it would otherwise answer `not_live`).
        with self._condition:
            self._running[experiment_id] = (slot, cancel)
        try:
            started = self.store.transition(
                experiment_id, [QUEUED], status=RUNNING, started_at=utc_now(), device=slot
            )
        except Exception:
            started = False
            log.exception("could not start experiment %s", experiment_id)
        if not started:  # cancelled in between
            with self._condition:
                self._running.pop(experiment_id, None)
            return False
        with self._condition:
            self._progress[experiment_id] = LiveProgress(phase="training", slot=slot)
            self._last_served[turn_of(experiment)] = time.monotonic()
        worker = threading.Thread(
            target=self._work,
            args=(experiment, slot, cancel),
            name=f"run-{experiment_id}",
            daemon=True,
        )
        self._workers = [w for w in self._workers if w.is_alive()] + [worker]
        worker.start()
        for listener in list(self.started_listeners):
            try:
                listener.on_run_started(experiment_id)
            except Exception:
                log.exception("a started-run listener failed for experiment %s", experiment_id)
        return True

    def _work(self, experiment: dict[str, Any], slot: str, cancel: threading.Event) -> None:
        experiment_id = experiment["id"]

        def on_progress(phase: str, done: float, total: float) -> None:
            with self._condition:
                self._progress[experiment_id] = LiveProgress(
                    phase=phase, done=done, total=total, slot=slot
                )
                self._condition.notify_all()

        try:
            job = self.job_for(experiment)
            result = self.executor.run(job, slot, on_progress, cancel)
        except Exception as exc:
            log.exception("experiment %s failed in the executor", experiment_id)
            result = RunResult(
                status="crash", failure_reason=f"the executor failed: {type(exc).__name__}: {exc}"
            )
        try:
            with self._condition:
                self._progress[experiment_id] = LiveProgress(phase="finishing", slot=slot)
            self.on_finish(experiment_id, result)
        except Exception:
            log.exception("recording experiment %s failed", experiment_id)
        finally:
            with self._condition:
                self._running.pop(experiment_id, None)
                self._progress.pop(experiment_id, None)
                self._condition.notify_all()
