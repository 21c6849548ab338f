"""The shared research lab: workspaces, the record, the queue, verdicts and papers, behind one object.

Every front end calls this: the MCP tools (app.py), the dashboard and JSON API (web.py) and
the CLI. It owns what agents must not bend: the budget, the seeds, the evaluation settings,
the verdicts and the record. Identity is decided by the caller (a bearer token over HTTP,
the --agent flag over stdio) and passed in as `agent`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta
from enum import Enum
from typing import Any, Literal

from sandbox.jail import IsolationLevel, detect_isolation, require_namespaces
from sandbox.runner import ExperimentRunner, RunResult, RunSettings
from sandbox.target import ResearchTarget, load_target
from sandbox.workspace import FileTooLarge, PathPolicy, Workspace
from server import authorship, dedupe, drift, standings
from server.diffs import unified_diff as bounded_unified_diff
from server.ladder import PromotionLadder
from server.levels import LevelMachines
from server.machine import make_executor, run_slots, torch_version
from server.papers import PaperSearch, ensure_paper_tables
from server.quotas import check_quota, live_runs
from server.record import (
    CANCELLED,
    CRASH,
    INTERRUPTED,
    OK,
    QUEUED,
    SERVER_AGENT,
    SERVER_CONFIRMATION,
    SERVER_HOLDOUT_RUN,
    ExperimentRow,
    Kind,
)
from server.recording import is_disqualified, review_flags
from server.refusals import (
    AGENT_NAME,
    MAX_DESCRIPTION,
    LabError,
    check_agent_name,
    check_arxiv_id,
    check_cancellable,
    check_checkout_request,
    check_claim_text,
    check_confirm_repeats,
    check_confirmable,
    check_description,
    check_experiment_id,
)
from server.run_lifecycle import RunLifecycle
from server.scheduler import Executor, Job, Scheduler
from server.settings import DEFAULT_SCALES, LabSettings, ScaleLevel
from server.store import ExperimentNotFound, Store, utc_now
from server.targets import bind_record, embedded_limits
from server.verdicts import IMPROVED, Noise, Reference, describe_rule, fresh_seed

log = logging.getLogger(__name__)


class _Requester(Enum):
    """`submit`'s default for who asked: the credited agent itself (nobody for the server's runs)."""

    AGENT = "the agent"


def _resolve_requester(agent: str, requested_by: str | _Requester | None) -> str | None:
    if requested_by is _Requester.AGENT:
        return None if agent == SERVER_AGENT else agent
    return requested_by


# A unified diff between two sets of files (a/ and b/ prefixes, like git), bounded in time and
# size by server.diffs: a pathological edit gets a coarse diff that says so.
unified_diff = bounded_unified_diff


class Lab:
    """The research server's state and rules, independent of any transport."""

    def __init__(
        self, settings: LabSettings | None = None, executor: Executor | None = None
    ) -> None:
        """`executor`: where runs go (default: local jails or Ray); bench/campaign.py passes its own."""
        self.settings = settings or LabSettings()
        s = self.settings
        self.home = s.home.expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.target: ResearchTarget = load_target(s.target_file) if s.target_file else load_target()
        self.data_dir = self.home / "data"
        self.device = s.resolved_device()
        # Settled once: every comparison is within one budget kind and one error budget.
        s.budget_kind = s.resolved_budget_kind()
        s.error_budget()  # refuses a malformed error budget before anything runs
        self.isolation: IsolationLevel = detect_isolation()
        if s.require_isolation and self.isolation != IsolationLevel.NAMESPACES:
            require_namespaces()
        self.store = Store(self.home / "history.sqlite")
        bind_record(self.store, self.target)  # one record, one target: another is refused
        ensure_paper_tables(self.store.db)
        self.papers = PaperSearch(
            self.store.db,
            query_url_format=s.arxiv_url_format,
            min_interval_s=s.arxiv_min_interval_s,
        )
        self.policy = PathPolicy.from_target(self.target)
        self.embedded_limits = embedded_limits(self.target)
        self.baseline_files = {k: v.decode() for k, v in self.target.baseline_files().items()}
        self.runner = ExperimentRunner(
            self.target,
            self.data_dir,
            self.home / "runs",
            keep_run_dirs=s.keep_run_dirs,
            isolation=self.isolation,
        )
        # Each level's device, data, clock and fingerprint (server.levels); S's are the server's.
        self.machines = LevelMachines(
            s,
            self.target,
            self.home,
            self.device,
            run_slots(self.device, s.cpu_slots),
            self.runner,
            self.isolation,
        )
        s.scales = self.machines.levels  # with the slots each level reserves
        self.slots, self.threads = self.machines.slots, self.machines.threads
        self.budget_seconds = self.machines.default.base_budget
        self.hardware = self.machines.default.hardware
        self.executor: Executor = executor or make_executor(
            s,
            self.runner,
            self.slots,
            self.device,
            self.data_dir,
            self.machines.level_runners(),
            self.machines.own_machines(),
        )
        self.scheduler = Scheduler(
            self.store,
            self.executor,
            self.job_for,
            self.on_finish,
            self.slot_accepts,
            s.prepares_ahead,
        )
        self.lifecycle = RunLifecycle(self)
        self.ladder: PromotionLadder | None = PromotionLadder(self)
        self._workspace_lock = threading.Lock()
        self._known_agents: set[str] = set()
        self._submit_lock = threading.RLock()  # quota check + insert are one step per server
        self.recovered = self.recover()
        self.ladder.settle()  # promotions a crash (or an older server) left `running`
        if s.start_scheduler:
            self.scheduler.start()

    # ------------------------------------------------------------ machine

    def level(self, scale: str | None) -> ScaleLevel:
        """The operator's definition of a scale level ('S' is the default budget and model)."""
        return self.settings.level(scale)

    def level_budget(self, scale: str | None) -> float:
        return round(self.machines.of(scale).base_budget * self.level(scale).budget_factor, 3)

    def slot_accepts(self, slot: str, experiment: dict[str, Any]) -> bool:
        """A level with reserved slots runs only there; reserved slots serve only their level."""
        return self.settings.slot_accepts(slot, experiment.get("scale") or "S")

    def run_settings(
        self, seed: int, budget_seconds: float | None = None, scale: str | None = None
    ) -> RunSettings:
        return self.machines.run_settings(seed, budget_seconds or self.level_budget(scale), scale)

    def close(self) -> None:
        self.scheduler.stop()

    # ------------------------------------------------------------ agents and workspaces

    def workspace(self, agent: str) -> Workspace:
        """The agent's own working copy, created from the baseline on first use."""
        check_agent_name(agent)
        with self._workspace_lock:
            if agent not in self._known_agents:  # a write transaction per tool call otherwise
                self.store.ensure_agent(agent)
                self._known_agents.add(agent)
            root = self.home / "workspaces" / agent
            return Workspace.create(root, self.policy, self.target.baseline_files())

    def workspace_parent(self, agent: str) -> int | None:
        row = self.store.agent(agent) or {}
        value = row.get("workspace_parent_id")
        return int(value) if value is not None else self.baseline_experiment_id()

    def _set_workspace_parent(self, agent: str, experiment_id: int | None) -> None:
        authorship.workspace_authors(self, agent)  # kept before the parent moves
        self.store.set_workspace_parent(agent, experiment_id)

    def baseline_experiment_id(self) -> int | None:
        rows = self.store.list_experiments(
            kind="baseline", status=OK, order="oldest", limit=1, columns=["id"]
        )
        return rows[0]["id"] if rows else None

    # ------------------------------------------------------------ submitting

    def live_experiments(self, requester: str) -> list[dict[str, Any]]:
        """The queued and running runs `requester` asked for (its own, confirmations, promotions)."""
        return live_runs(self.store, requester)

    def submit(
        self,
        agent: str,
        description: str,
        *,
        requested_by: str | _Requester | None = _Requester.AGENT,
        check_quota: bool = True,
        reuse: bool = True,
        paper_ids: Sequence[str] = (),
        kind: Kind = "experiment",
        files: dict[str, str] | None = None,
        parent_id: int | None = None,
        confirms_id: int | None = None,
        seed: int | None = None,
        scale: str = "S",
        code_from: Sequence[int] = (),
    ) -> tuple[int, int | None]:
        """Queue a run of the agent's workspace (or of `files`); returns (experiment id, reused-from id).

        `agent` is credited with the run; `requested_by` (by default the agent itself, or nobody
        for the server's own runs) is charged for it. The code hash, the diffs and the review
        flags are computed first, outside the submit lock: one agent's large diff never holds
        up another agent's submit. Under the lock: the quota check, the dedupe and the insert.
        When the same code, or the same normalised code (server.dedupe), already ran (or is
        running) with the same settings, nothing is queued, the request is kept on record and
        the earlier experiment's id comes back as reused-from (confirmations always run).
        """
        requester = _resolve_requester(agent, requested_by)
        planned = self.plan_run(
            agent,
            description,
            paper_ids=paper_ids,
            kind=kind,
            files=files,
            parent_id=parent_id,
            confirms_id=confirms_id,
            seed=seed,
            scale=scale,
            code_from=code_from,
        )
        ((experiment_id, reused),) = self.queue_runs(
            [planned], requester, check_quota=check_quota, reuse=reuse
        )
        return experiment_id, reused

    def plan_run(
        self,
        agent: str,
        description: str,
        *,
        paper_ids: Sequence[str] = (),
        kind: Kind = "experiment",
        files: dict[str, str] | None = None,
        parent_id: int | None = None,
        confirms_id: int | None = None,
        seed: int | None = None,
        scale: str = "S",
        code_from: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Everything a new experiment row holds, computed without any lock: the description and
        paper ids checked, the code (the agent's workspace unless `files`), its hash, the diffs
        vs its parent and the baseline, the flags and the code's authors. Nothing is recorded yet."""
        description = check_description(description)
        papers = [check_arxiv_id(p) for p in paper_ids]
        from_workspace = files is None
        if files is None:
            ws = self.workspace(agent)
            files = {
                name: content.decode("utf-8", errors="replace")
                for name, content in ws.snapshot().items()
            }
            parent_id = self.workspace_parent(agent) if parent_id is None else parent_id
        elif kind == "experiment":
            # New code that never passed through a workspace (combine's three-way merge) meets
            # the same size cap as an edit; re-runs of recorded code (confirm, promote) do not.
            for name, text in files.items():
                try:
                    self.policy.check_file_size(name, len(text.encode()))
                except FileTooLarge as exc:
                    raise LabError(str(exc)) from exc
        code_hash = Workspace.hash_files({k: v.encode() for k, v in files.items()})
        parent_code = self._code_of(parent_id) if parent_id is not None else self.baseline_files
        diff_parent = unified_diff(parent_code, files)
        diff_baseline = unified_diff(self.baseline_files, files)
        flags = review_flags(
            diff_parent, diff_baseline, kind, files, self.baseline_files, self.embedded_limits
        )
        authors = authorship.run_authors(self, agent, kind, parent_id, code_from, from_workspace)
        return {
            "agent": agent,
            "kind": kind,
            "parent_id": parent_id,
            "confirms_id": confirms_id,
            "status": QUEUED,
            "description": description,
            "code_hash": code_hash,
            "code": files,
            "diff_parent": diff_parent,
            "diff_baseline": diff_baseline,
            "flags": flags,
            "disqualified": int(is_disqualified(flags)),
            "budget_seconds": self.level_budget(scale),
            "budget_kind": self.machines.of(scale).budget_kind,
            "device": self.machines.of(scale).device,
            "hardware": self.machines.of(scale).hardware,
            "torch_version": torch_version(),
            "seed": self.settings.seed if seed is None else seed,
            "isolation": self.isolation.value,
            "paper_ids": papers,
            "scale": scale,
            "code_authors": authors,
            **dedupe.change_fields(files, self.baseline_files),
        }

    def queue_runs(
        self,
        planned: Sequence[dict[str, Any]],
        requester: str | None,
        *,
        check_quota: bool = True,
        reuse: bool = True,
    ) -> list[tuple[int, int | None]]:
        """Record planned runs (see `plan_run`) as one step under the submit lock: the quota of
        `requester` is checked for all of them at once, then each is deduplicated and inserted,
        charged to `requester` (None: the server's own run, charged to nobody). Returns
        (experiment id, reused-from id) per run. Only cheap reads and the inserts happen here."""
        with self._submit_lock:
            results: list[tuple[int, int | None]] = []
            fresh: list[dict[str, Any]] = []
            for run in planned:  # the same code or normalised code (server.dedupe); not forced
                found = None
                if reuse and run["kind"] == "experiment" and not run.get("force_reason"):
                    found = dedupe.find_earlier(self.store, run)
                if found:
                    run["reuse_match"], run["reuse_reason"] = found[1], found[2]
                results.append((found[0]["id"], found[0]["id"]) if found else (0, None))
                if found is None:
                    fresh.append(run)
            if check_quota and requester is not None:
                # Before any reuse too: an agent at its live limit is told to wait for its run,
                # not handed a live row (as before the quotas counted every run).
                self._check_quota(requester, len(fresh))
            for index, run in enumerate(planned):
                reused = results[index][1]
                if reused is not None:
                    if run["kind"] == "experiment":
                        run["request_id"] = dedupe.record_request(
                            self.store, run, reused, run["reuse_match"], run["reuse_reason"]
                        )
                        self._set_workspace_parent(run["agent"], reused)
                        self.store.release_claims(run["agent"], reused)
                    continue
                experiment_id = self.store.create_experiment(**run, requested_by=requester)
                results[index] = (experiment_id, None)
                if run["kind"] == "experiment":
                    self._set_workspace_parent(run["agent"], experiment_id)
                    self.store.release_claims(run["agent"], experiment_id)
        self.scheduler.notify()
        return results

    def _check_quota(self, requester: str, new_runs: int = 1) -> None:
        """Refuse a request that would take `requester` past its limits (server.quotas)."""
        check_quota(self.store, self.settings, requester, new_runs)

    def charged_runs(self, requester: str) -> int:
        """How many runs `requester` asked for, re-queues after a server crash not counted."""
        return self.store.charged_runs(requester)

    def device_hours(self, requester: str) -> float:
        """Device-hours of the runs `requester` asked for, re-queues after a server crash not counted."""
        return self.store.charged_seconds(requester) / 3600

    def _code_of(self, experiment_id: int) -> dict[str, str]:
        code = self.store.get_experiment(experiment_id).get("code")
        return code if isinstance(code, dict) else dict(self.baseline_files)

    # ------------------------------------------------------------ runs (server.run_lifecycle)

    def job_for(self, experiment: dict[str, Any]) -> Job:
        return self.lifecycle.job_for(experiment)

    def on_finish(self, experiment_id: int, result: RunResult) -> None:
        """Record a finished run: figures, verdict and deltas, in one compare-and-set from `running`."""
        self.lifecycle.on_finish(experiment_id, result)

    def noise(self, scale: str = "S") -> Noise:
        return self.lifecycle.noise(scale)

    def ensure_baseline(
        self, repeats: int | None = None, scale: str = "S", requested_by: str | None = None
    ) -> list[int]:
        """Queue baseline runs until `repeats` exist for this hardware, budget and level."""
        return self.lifecycle.ensure_baseline(repeats, scale, requested_by)

    def plan_baselines(self, repeats: int | None = None, scale: str = "S") -> list[dict[str, Any]]:
        """The baseline runs `ensure_baseline` would queue now (planned, not recorded)."""
        return self.lifecycle.plan_baselines(repeats, scale)

    def recover(self) -> list[int]:
        """After a crash: runs left `running` re-queued once (the new ids); candidates settled."""
        return self.lifecycle.recover()

    def requeue_interrupted(self, experiment_id: int) -> int | None:
        """Queue an `interrupted` experiment again, once; the new id or None."""
        return self.lifecycle.requeue_interrupted(experiment_id)

    # ------------------------------------------------------------ reading results

    def experiment(self, experiment_id: int) -> ExperimentRow:
        """One experiment's row; a LabError for an id that is malformed or does not exist."""
        experiment_id = check_experiment_id(experiment_id)
        try:
            return self.store.get_experiment(experiment_id)
        except ExperimentNotFound:
            raise LabError(
                f"experiment #{experiment_id} does not exist; get_history lists experiment ids"
            ) from None

    def resolve_retry(self, experiment: ExperimentRow) -> ExperimentRow:
        """An interrupted experiment that was re-queued: follow it to the new attempt."""
        if experiment["status"] == INTERRUPTED:
            retry_id = self.store.retry_of(experiment["id"])
            if retry_id is not None:
                return self.store.get_experiment(retry_id)
        return experiment

    def confirmation_stats(self, experiment_id: int) -> dict[str, Any] | None:
        """Mean and sd of an experiment's metric_value over its fresh-seed confirmation runs."""
        return standings.confirmation_stats(self.store, experiment_id)

    def reference(self, scale: str = "S", exclude_id: int | None = None) -> Reference | None:
        """What a new result must beat: the baseline's mean or the best confirmed idea's (server.standings)."""
        return self.lifecycle.reference(scale, exclude_id)

    def leaderboard(self, limit: int = 10, scale: str = "S") -> list[dict[str, Any]]:
        """Ranked by confirmed mean where confirmations exist, else the single run (server.standings)."""
        return standings.leaderboard(
            self.store,
            hardware=self.machines.of(scale).hardware,
            budget_seconds=self.level_budget(scale),
            budget_kind=self.machines.of(scale).budget_kind,
            scale=scale,
            limit=limit,
        )

    def per_agent(self) -> list[dict[str, Any]]:
        return standings.per_agent(self.store)

    def noise_info(self, scale: str = "S") -> dict[str, Any]:
        """The noise, the reference and the rule in plain words (the leaderboard and program.md show it)."""
        return {
            "metric": self.target.metric,
            "direction": self.target.direction,
            "hardware": self.machines.of(scale).hardware,
            "budget_seconds": self.level_budget(scale),
            "budget_kind": self.machines.of(scale).budget_kind,
            **describe_rule(self.noise(scale), self.reference(scale), self.settings.error_budget()),
            "last_drift_check": drift.last_drift_check(self.store),
        }

    # ------------------------------------------------------------ checkout, cancel, claims

    def checkout(
        self, agent: str, experiment_id: int | None, ref: str | None
    ) -> tuple[int | None, list[str]]:
        """Set the agent's workspace to an experiment's code ('baseline', 'best' or any id, anyone's)."""
        check_checkout_request(experiment_id, ref)
        ws = self.workspace(agent)
        code: dict[str, str]
        if ref == "baseline":
            code, source_id = dict(self.baseline_files), self.baseline_experiment_id()
        else:
            if ref == "best":
                board = self.leaderboard(limit=1)
                if not board:
                    raise LabError(
                        "there is no successful experiment yet; checkout ref='baseline' or run one first"
                    )
                experiment_id = board[0]["id"]
            experiment = self.experiment(int(experiment_id))  # type: ignore[arg-type]
            stored = experiment.get("code")
            if not isinstance(stored, dict):
                raise LabError(f"experiment #{experiment_id} has no stored code")
            code = stored
            source_id = experiment["id"]
        unknown = [name for name in code if name not in self.target.editable]
        if unknown:
            raise LabError(
                f"experiment #{experiment_id} holds files this server does not let you edit: {unknown}"
            )
        ws.replace_files({name: text.encode() for name, text in code.items()})
        self._set_workspace_parent(agent, source_id)
        self.store.set_workspace_authors(agent, self.store.code_authors_of(source_id))
        return source_id, sorted(code)

    def cancel(self, agent: str | None, experiment_id: int) -> str:
        """Cancel a live run. An agent may cancel only the runs it asked for (`requested_by`), never
        a baseline the server shares between agents; `agent` None is the operator: any run."""
        experiment = self.experiment(experiment_id)
        experiment_id = experiment["id"]
        check_cancellable(agent, experiment)
        outcome = self.scheduler.cancel(experiment_id)
        if outcome == "cancelled":  # never reaches on_finish: settle what waited on it
            self.lifecycle.on_cancelled(experiment_id)
        return outcome

    def claim(self, agent: str, text: str) -> int:
        check_agent_name(agent)  # a claim under the server's name would read as the server's
        text = check_claim_text(text)
        expires = utc_now(timedelta(minutes=self.settings.claim_ttl_minutes))
        self.store.ensure_agent(agent)
        return self.store.add_claim(agent, text, expires)

    # ------------------------------------------------------------ confirmation

    def confirm(
        self,
        agent: str | None,
        experiment_id: int,
        repeats: int,
        *,
        server_runs: Literal["candidate", "holdout"] | None = None,
    ) -> list[int]:
        """Queue `repeats` more runs of an experiment's code with fresh (random) seeds.

        Anyone may confirm anyone's experiment: the runs are credited to its author and charged
        to `agent` (None: the operator, charged to nobody) through run_experiment's quota check.
        `server_runs`: the server's own runs a verdict rests on, of a candidate (charged to who
        asked for it, no quota check: it passed one) or holdout runs (charged to nobody).
        """
        check_confirm_repeats(repeats)
        original = self.experiment(experiment_id)
        experiment_id = original["id"]
        check_confirmable(original)
        by_candidate = original.get("requested_by") or original["agent"]
        requester = {None: agent, "candidate": by_candidate, "holdout": None}[server_runs]
        who = {None: "confirm", "candidate": SERVER_CONFIRMATION, "holdout": SERVER_HOLDOUT_RUN}
        template = self.plan_run(
            original["agent"],
            f"confirm #{experiment_id}",
            kind="confirmation",
            files=original["code"],
            parent_id=experiment_id,
            confirms_id=experiment_id,
        )
        with self._submit_lock:
            planned = []
            for _ in range(repeats):
                seed = fresh_seed(self.settings.seed)
                description = (
                    f"{who[server_runs]} #{experiment_id} (seed {seed}): {original['description']}"
                )
                planned.append(
                    {**template, "seed": seed, "description": description[:MAX_DESCRIPTION]}
                )
            check = server_runs is None and requester is not None
            results = self.queue_runs(planned, requester, check_quota=check, reuse=False)
        return [new_id for new_id, _ in results]

    def improvement_count(self) -> int:
        return self.store.verdict_count(IMPROVED)

    def statistics(self) -> dict[str, Any]:
        counts = self.store.status_counts()
        return {
            "by_status": counts,
            "total": sum(counts.values()),
            "crashes": counts.get(CRASH, 0),
            "cancelled": counts.get(CANCELLED, 0),
        }


__all__ = [
    "AGENT_NAME",
    "DEFAULT_SCALES",
    "Lab",
    "LabError",
    "LabSettings",
    "ScaleLevel",
    "check_experiment_id",
    "unified_diff",
]
