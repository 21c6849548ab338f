"""What happens to a run once it is queued: the job the scheduler runs, recording it when it
finishes (server.recording decides what the row says), the checks a finish triggers (the
baseline's noise, promotions, drift), re-queueing after a crash, and the runs the server
queues itself (baseline measurements, drift checks).

`RunLifecycle` works on the Lab through `LifecycleLab`, the part of the Lab it needs: it never
imports server.lab.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, cast

from sandbox.runner import RunResult, RunSettings
from server import baselines, drift, standings
from server.baselines import is_comparable
from server.candidates import Candidates
from server.levels import LevelMachines
from server.record import (
    CANDIDATE,
    INTERRUPTED,
    OK,
    RUNNING,
    SERVER_AGENT,
    SERVER_HOLDOUT_RUN,
    TIMEOUT,
    ExperimentRow,
)
from server.recording import finished_run_fields
from server.recovery import kill_leftover_processes, retry_row
from server.run_queue import RunQueue
from server.scheduler import Job, Scheduler
from server.settings import LabSettings
from server.store import ExperimentNotFound, Store, utc_now
from server.verdicts import Noise, Reference, Verdict

log = logging.getLogger("server.lab")


class RunFinishedListener(Protocol):
    """Told after every finished (or cancelled) run: the promotion ladder subscribes."""

    def on_run_finished(self, experiment_id: int) -> None: ...


class LifecycleLab(RunQueue, Protocol):
    """The part of the Lab a run's lifecycle needs (server.lab.Lab provides it)."""

    settings: LabSettings
    store: Store
    home: Path
    device: str
    hardware: str
    machines: LevelMachines
    budget_seconds: float
    baseline_files: dict[str, str]
    scheduler: Scheduler
    _submit_lock: AbstractContextManager[Any]

    @property
    def ladder(self) -> RunFinishedListener | None: ...
    def experiment(self, experiment_id: int) -> ExperimentRow: ...
    def level_budget(self, scale: str | None) -> float: ...
    def leaderboard(self, limit: int = 10, scale: str = "S") -> list[dict[str, Any]]: ...
    def run_settings(
        self, seed: int, budget_seconds: float | None = None, scale: str | None = None
    ) -> RunSettings: ...
    def _set_workspace_parent(self, agent: str, experiment_id: int | None) -> None: ...
    def confirm(
        self, agent: str | None, experiment_id: int, repeats: int, *, server_runs: Any = None
    ) -> list[int]: ...
    def cancel(self, agent: str | None, experiment_id: int) -> str: ...


class RunLifecycle:
    """The scheduler's callbacks, recovery, and the server's own runs, for one Lab."""

    def __init__(self, lab: LifecycleLab) -> None:
        self.lab = lab
        self.candidates = Candidates(lab, self.reference_for, self.noise_for)
        # Told after the ladder, once a run's record is final (live updates subscribe). Weak:
        # a listener lives as long as its MCP server, not as long as the lab.
        self.listeners: weakref.WeakSet[RunFinishedListener] = weakref.WeakSet()

    def _tell_listeners(self, experiment_id: int) -> None:
        for listener in list(self.listeners):
            try:
                listener.on_run_finished(experiment_id)
            except Exception:
                log.exception("a run-finished listener failed for experiment %s", experiment_id)

    def job_for(self, experiment: dict[str, Any]) -> Job:
        code = (
            experiment["code"]
            if isinstance(experiment["code"], dict)
            else json.loads(experiment["code"])
        )
        settings = self.lab.run_settings(
            int(experiment["seed"]), experiment.get("budget_seconds"), experiment.get("scale")
        )
        if self.scores_holdout(experiment):
            settings = dataclasses.replace(settings, score_holdout=True)
        return Job(
            experiment_id=experiment["id"],
            files={name: text.encode() for name, text in code.items()},
            settings=settings,
            level=experiment.get("scale") or "S",
        )

    # ------------------------------------------------------------ the sealed holdout

    def scores_holdout(self, experiment: Mapping[str, Any]) -> bool:
        """Whether this run's evaluation also scores the sealed holdout: only runs behind a
        leaderboard entry (the baseline's, a promotion's, the holdout runs of a confirmed
        improvement), and only while the operator's bound on holdout reads is not reached."""
        sealed = self.lab.store.sealed
        if sealed.holdout_reads() >= self.lab.settings.holdout_max_reads:
            return False
        kind = experiment.get("kind")
        if kind in ("baseline", "promotion"):
            return True
        if kind != "confirmation":
            return False
        if str(experiment.get("description") or "").startswith(SERVER_HOLDOUT_RUN):
            return True
        confirms = experiment.get("confirms_id")
        if confirms is None:
            return False
        try:
            return self.lab.store.get_experiment(confirms)["kind"] == "promotion"
        except ExperimentNotFound:
            return False

    def _record_sealed(self, experiment_id: int, result: RunResult) -> None:
        """Keep what no agent reads per experiment: full-precision metric_value, a holdout score."""
        exact, holdout, note = result.metric_exact, result.holdout_value, result.holdout_note
        if exact is None and holdout is None and not note:
            return
        self.lab.store.sealed.record(
            experiment_id,
            metric_exact=exact,
            holdout_value=holdout,
            holdout_note=note,
            tie_break_exact=result.tie_break_exact,
        )

    def on_finish(self, experiment_id: int, result: RunResult) -> None:
        """Record a finished run: figures, verdict and deltas, in one compare-and-set from `running`;
        then tell the listeners (whatever the recording did)."""
        try:
            self._record_finish(experiment_id, result)
        finally:
            self._tell_listeners(experiment_id)

    def _record_finish(self, experiment_id: int, result: RunResult) -> None:
        if result.status == INTERRUPTED:  # lost with its machine (a Ray node): re-queue once
            if self.lab.store.transition(
                experiment_id,
                [RUNNING],
                status=INTERRUPTED,
                finished_at=utc_now(),
                failure_reason=result.failure_reason or "the machine running it was lost",
                log_tail=result.log_tail,
            ):
                retry = self.requeue_interrupted(experiment_id)
                row = self.lab.store.get_experiment(experiment_id)
                if (
                    retry is None
                    and row["kind"] == "confirmation"
                    and (of := row.get("confirms_id"))
                ):
                    self.candidates.judge(of)  # no retry: replace or decide
            return
        experiment = self.lab.store.get_experiment(experiment_id)
        scale = experiment.get("scale") or "S"
        if self._requeue_if_squeezed(experiment, result):
            return
        parent_value = None
        parent_id = experiment.get("parent_id")
        if parent_id is not None:
            try:
                parent_value = self.lab.store.get_experiment(parent_id).get("metric_value")
            except ExperimentNotFound:
                parent_value = None
        finished = finished_run_fields(
            cast(ExperimentRow, experiment),
            result,
            reference=self.reference_for(experiment, experiment_id),
            parent_value=parent_value,
            direction=self.lab.store.direction,
            noise=self.noise_for(experiment),
            budget=self.lab.settings.error_budget(),
            settings=self.lab.settings,
            machine=self.lab.machines.of(experiment.get("scale")),
            finished_at=utc_now(),
        )
        verdict, val = finished.verdict, result.metric_value
        updated = self.lab.store.transition(experiment_id, [RUNNING], **finished.fields)
        if updated:
            self._record_sealed(experiment_id, result)
        if not updated:
            log.warning("experiment %s was no longer running when it finished", experiment_id)
        else:
            log.info(
                "#%s %s (%s) finished: %s%s, verdict %s (train %.1f s, eval %.1f s)",
                experiment_id,
                experiment["kind"],
                experiment["agent"],
                result.status,
                f", {self.lab.store.metric_name} {val:.4f}"
                if val is not None
                else f": {result.failure_reason}",
                verdict,
                result.train_seconds,
                result.eval_seconds,
            )
        if experiment["kind"] == "baseline":
            self._update_baseline_stats(scale)
            if updated and result.status == OK and not is_comparable(finished.fields):
                self._remeasure_baseline(scale)
        elif updated and verdict == CANDIDATE:
            self.confirm_candidate(experiment_id)
        elif experiment["kind"] == "confirmation" and (of := experiment.get("confirms_id")):
            self.judge_candidate(of)
        if self.lab.ladder is not None:
            self.lab.ladder.on_run_finished(experiment_id)
        if experiment["kind"] == "drift_check":
            self._record_drift(experiment_id)
        elif experiment["kind"] == "experiment" and self.lab.settings.drift_check_every:
            self._maybe_check_drift()

    def _requeue_if_squeezed(self, experiment: Mapping[str, Any], result: RunResult) -> bool:
        """A first attempt whose training timed out because other load took its CPU is not its
        code's fault: it is recorded `interrupted` and queued again once (a program that idles on
        purpose is not squeezed: the machine was free, and its retry times out the same)."""
        if result.status != TIMEOUT or not result.squeezed or result.phase != "train":
            return False
        if int(experiment.get("attempt") or 1) >= 2:
            return False
        reason = (
            "squeezed: the machine's other processes took the CPU this run needed, and it ran past "
            f"budget + grace ({result.failure_reason or 'timeout'}); queued again once"
        )
        if self.lab.store.transition(
            experiment["id"],
            [RUNNING],
            status=INTERRUPTED,
            finished_at=utc_now(),
            failure_reason=reason,
            log_tail=result.log_tail,
        ):
            self.requeue_interrupted(experiment["id"])
        return True

    def _remeasure_baseline(self, scale: str) -> None:
        """A baseline run made under other conditions (contended, over budget) is never the
        reference: it is measured again with its own seed, up to `baseline_repeats` re-runs per
        setting; past that the machine is too busy to measure, and the server says so instead
        of queueing runs that would be contended too."""
        setting = self._setting(scale)
        rows = self.lab.store.list_experiments(
            kind="baseline",
            status=OK,
            limit=1000,
            columns=["flags", "hardware", "budget_seconds", "scale"],
        )
        spoiled = sum(
            1
            for r in rows
            if r["hardware"] == setting["hardware"]
            and r["budget_seconds"] == setting["budget_seconds"]
            and (r["scale"] or "S") == scale
            and not is_comparable(r)
        )
        if spoiled > max(1, self.lab.settings.baseline_repeats):
            log.warning(
                "%d baseline runs at level %s ran under other conditions (contended or over budget): "
                "not re-measuring again; the noise and the reference use the comparable runs only",
                spoiled,
                scale,
            )
            return
        self.ensure_baseline(scale=scale)

    # ------------------------------------------------------------ candidates (server.candidates)

    def confirm_candidate(self, experiment_id: int) -> list[int]:
        """Queue the server's fresh-seed runs of a candidate (server.verdicts, step 2)."""
        return self.candidates.confirm(experiment_id)

    def judge_candidate(self, experiment_id: int) -> Verdict | None:
        """Decide a candidate once enough of the server's fresh-seed runs are in."""
        return self.candidates.judge(experiment_id)

    def on_cancelled(self, experiment_id: int) -> None:
        """A run cancelled while queued never reaches on_finish: settle what waited on it."""
        if self.lab.ladder is not None:
            self.lab.ladder.on_run_finished(experiment_id)
        row = self.lab.store.get_experiment(experiment_id)
        if row["kind"] == "confirmation" and (of := row.get("confirms_id")):
            self.candidates.judge(of)
        self._tell_listeners(experiment_id)

    def reference_for(self, row: Mapping[str, Any], exclude_id: int | None) -> Reference | None:
        """The reference on the setting a row was run on (its hardware, budget and level)."""
        return standings.reference(self.lab.store, exclude_id=exclude_id, **self._setting_of(row))

    def noise_for(self, row: Mapping[str, Any]) -> Noise:
        """The noise on the setting a row was run on."""
        return baselines.noise(self.lab.store, **self._setting_of(row))

    def _setting_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        scale = row.get("scale") or "S"
        machine = self.lab.machines.of(scale)
        return {
            "hardware": row.get("hardware") or machine.hardware,
            "scale": scale,
            "budget_kind": row.get("budget_kind") or machine.budget_kind,
            "budget_seconds": row.get("budget_seconds") or self.lab.level_budget(scale),
        }

    def reference(self, scale: str = "S", exclude_id: int | None = None) -> Reference | None:
        """What a new result at this level must beat (server.standings.reference)."""
        setting = self._setting(scale)
        return standings.reference(
            self.lab.store,
            hardware=setting["hardware"],
            budget_seconds=setting["budget_seconds"],
            budget_kind=setting["budget_kind"],
            scale=scale,
            exclude_id=exclude_id,
        )

    # ------------------------------------------------------------ drift

    def _maybe_check_drift(self) -> None:
        """Every N finished experiments, re-run the incumbent best with its own seed (server.drift)."""
        every = self.lab.settings.drift_check_every
        if not drift.drift_check_due(self.lab.store.finished_experiment_count(), every):
            return
        # The best experiment whose code is on record (a row imported without its code cannot
        # be re-run: submitting None would run the server's own, nonexistent, workspace).
        rows = (self.lab.experiment(e["id"]) for e in self.lab.leaderboard(limit=5))
        best = next(
            (r for r in rows if r["kind"] == "experiment" and isinstance(r.get("code"), dict)),
            None,
        )
        if best is None:
            return
        self.lab.submit(
            SERVER_AGENT,
            f"drift check: re-run #{best['id']} with its seed {best['seed']}",
            kind="drift_check",
            files=best["code"],
            parent_id=best["id"],
            confirms_id=best["id"],
            seed=best["seed"],
            check_quota=False,
            reuse=False,
        )

    def _record_drift(self, experiment_id: int) -> None:
        row = self.lab.experiment(experiment_id)
        confirms_id = row.get("confirms_id")
        if confirms_id is None:
            return  # not a drift check of anything
        original = self.lab.experiment(confirms_id)
        threshold = self.lab.settings.noise_k * self.noise(row.get("scale") or "S").sd
        metrics = drift.drift_metrics(row, original, threshold)
        if metrics is None:
            return
        self.lab.store.update_experiment(experiment_id, metrics=metrics)
        if metrics["drifted"]:
            log.warning(
                "drift: #%s re-ran %+.4f from its original %.4f (threshold %.4f)",
                original["id"],
                metrics["drift"],
                original["metric_value"],
                threshold,
            )

    # ------------------------------------------------------------ noise and the baseline

    def noise(self, scale: str = "S") -> Noise:
        return baselines.noise(self.lab.store, **self._setting(scale))

    def _setting(self, scale: str) -> dict[str, Any]:
        """This lab's hardware, budget kind and the level's budget: what results compare within."""
        machine = self.lab.machines.of(scale)
        return {
            "hardware": machine.hardware,
            "scale": scale,
            "budget_kind": machine.budget_kind,
            "budget_seconds": self.lab.level_budget(scale),
        }

    def _update_baseline_stats(self, scale: str = "S") -> None:
        baselines.update_baseline_stats(self.lab.store, **self._setting(scale))

    def ensure_baseline(
        self, repeats: int | None = None, scale: str = "S", requested_by: str | None = None
    ) -> list[int]:
        """Queue baseline runs until `repeats` exist (finished or live) for this hardware, budget and level.

        Seeds are the server's paired seeds seed, seed+1, ...: a promotion compares run n of an
        idea with baseline run n of the same seed. The runs are the server's (agent `server`);
        `requested_by` is charged for them when a request caused them (a promotion to a level
        whose baseline is missing), else nobody.
        """
        with (
            self.lab._submit_lock
        ):  # planning reads what exists: one planner at a time (cheap: no diff)
            planned = self.plan_baselines(repeats, scale)
            results = self.lab.queue_runs(
                planned, requested_by, check_quota=requested_by is not None, reuse=False
            )
        return [experiment_id for experiment_id, _ in results]

    def plan_baselines(self, repeats: int | None = None, scale: str = "S") -> list[dict[str, Any]]:
        """The baseline runs `ensure_baseline` would queue now (planned, not recorded)."""
        repeats = self.lab.settings.baseline_repeats if repeats is None else repeats
        existing = baselines.live_or_ok_baseline_runs(
            self.lab.store,
            hardware=self.lab.machines.of(scale).hardware,
            scale=scale,
            budget_seconds=self.lab.level_budget(scale),
        )
        seeds = [int(r["seed"]) for r in existing]
        wanted = range(self.lab.settings.seed, self.lab.settings.seed + repeats)
        if all(s in seeds for s in wanted):
            return []
        # The baseline's diffs are empty: planning it once is cheap, the seeds are stamped per run.
        template = self.lab.plan_run(
            SERVER_AGENT,
            "baseline measurement",
            kind="baseline",
            files=dict(self.lab.baseline_files),
            parent_id=None,
            scale=scale,
        )
        return baselines.baseline_run_plans(
            template,
            existing_seeds=seeds,
            repeats=repeats,
            seed=self.lab.settings.seed,
            scale=scale,
        )

    # ------------------------------------------------------------ recovery

    def recover(self) -> list[int]:
        """After a crash: runs left `running` become `interrupted` and are re-queued once (a new row).

        First, any process a killed server's jails left behind under this home's runs
        directory is killed (the jails normally die with the server: PR_SET_PDEATHSIG).
        """
        kill_leftover_processes(self.lab.home / "runs")
        self.lab.store.mark_interrupted_runs()
        # Every interrupted run without a retry yet: also those whose re-queue a crash cut short.
        pending = self.lab.store.interrupted_without_retry()
        requeued = [self.requeue_interrupted(experiment_id) for experiment_id in pending]
        self.candidates.settle_all()  # a candidate whose runs were lost, or never queued
        return [new_id for new_id in requeued if new_id is not None]

    def requeue_interrupted(self, experiment_id: int) -> int | None:
        """Queue an `interrupted` experiment again, once (a new row, retry_of it); the new id or None."""
        old = self.lab.store.get_experiment(experiment_id)
        row = retry_row(old)
        if row is None:
            return None
        new_id = self.lab.store.create_experiment(**row)
        if old["kind"] == "experiment":
            self.lab._set_workspace_parent(old["agent"], new_id)
        self.lab.scheduler.notify()
        return new_id
