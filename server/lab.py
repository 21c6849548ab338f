"""The shared research lab: workspaces, the record, the queue, verdicts and papers, behind one object.

Every front end calls this: the MCP tools (app.py), the dashboard and JSON API (web.py) and
the CLI. It owns what agents must not bend: the budget, the seeds, the evaluation settings,
the verdicts and the record. Identity is decided by the caller (a bearer token over HTTP,
the --agent flag over stdio) and passed in as `agent`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from sandbox.jail import IsolationLevel, detect_isolation, kill_orphans
from sandbox.runner import ExperimentRunner, RunResult, RunSettings
from sandbox.target import ResearchTarget, load_target
from sandbox.workspace import FileTooLarge, PathPolicy, Workspace
from server.diff_review import is_seed_only, review_diff
from server.diffs import unified_diff as bounded_unified_diff
from server.papers import PaperSearch, ensure_paper_tables
from server.scheduler import Executor, Job, LocalExecutor, Scheduler
from server.store import (
    CANCELLED,
    CRASH,
    FINAL_STATUSES,
    INTERRUPTED,
    LIVE_STATUSES,
    MAX_ROW_ID,
    OK,
    QUEUED,
    RUNNING,
    SERVER_AGENT,
    ExperimentNotFound,
    Store,
    utc_now,
)
from server.verdicts import (
    BASELINE,
    IMPROVED,
    Noise,
    decide,
    mean_sd,
    over_budget_flag,
    over_budget_reason,
    over_budget_tolerance,
    published,
)

log = logging.getLogger(__name__)

AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_DESCRIPTION = 500
MAX_CLAIM = 300
ARXIV_ID = re.compile(r"(\d{4}\.\d{4,5}|[a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?")


# Review flags that rule out `improved` on their own: a seed-only change measures luck, and a
# change that embeds a large body of text or data (memorised documents, token tables) is not an
# idea the metric can judge: the val documents are secret, but their text is public.
DISQUALIFYING_FLAGS = ("seed_only", "embedded_data")


class LabError(ValueError):
    """A refusal with an actionable message for the agent (becomes a ToolError / HTTP 4xx)."""


class _Requester(Enum):
    """`submit`'s default for who asked: the credited agent itself (nobody for the server's runs)."""

    AGENT = "the agent"


def _resolve_requester(agent: str, requested_by: str | _Requester | None) -> str | None:
    if requested_by is _Requester.AGENT:
        return None if agent == SERVER_AGENT else agent
    return requested_by


def check_experiment_id(value: Any, what: str = "experiment id") -> int:
    """A well-formed row id (1 to MAX_ROW_ID) or a LabError that says what to send."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROW_ID:
        shown = (
            repr(value)
            if not isinstance(value, str) or len(value) <= 40
            else repr(value[:40]) + "..."
        )
        raise LabError(
            f"{what} {shown} is not valid; send a whole number from 1 to {MAX_ROW_ID} "
            "(get_history lists experiment ids)"
        )
    return value


def default_home() -> Path:
    return Path(
        os.environ.get("AUTORESEARCH_HOME") or Path.home() / ".cache" / "autoresearch-mcp"
    ).expanduser()


def detect_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


@dataclass(frozen=True)
class ScaleLevel:
    """A named rung of the promotion ladder: a budget multiple and a model size (AR_SCALE)."""

    name: str
    budget_factor: float = 1.0
    model_scale: int = 1
    slots: tuple[str, ...] = ()  # devices reserved for this level (empty: any slot)
    device_hours_quota: float | None = None  # promotions stop when the level has used this much

    @classmethod
    def parse(cls, text: str) -> ScaleLevel:
        """'M=5x1' (budget x5, model scale 1), optionally '@cuda:1+cuda:2' and ':quota=2.5' (device-hours)."""
        match = re.fullmatch(
            r"([A-Za-z][\w-]{0,15})=([0-9.]+)x(\d+)(?:@([\w:+]+))?(?::quota=([0-9.]+))?",
            text.strip(),
        )
        if not match:
            raise ValueError(
                f"scale level {text!r} is malformed; use NAME=BUDGETxMODEL[@slot+slot][:quota=HOURS], e.g. M=5x1"
            )
        name, factor, model, slots, quota = match.groups()
        return cls(
            name,
            float(factor),
            int(model),
            tuple(slots.split("+")) if slots else (),
            float(quota) if quota else None,
        )


DEFAULT_SCALES = (ScaleLevel("S", 1.0, 1), ScaleLevel("M", 5.0, 1), ScaleLevel("L", 5.0, 2))


@dataclass
class LabSettings:
    """Operator settings: everything an agent cannot change."""

    home: Path = field(default_factory=default_home)
    device: str = "auto"  # auto | cpu | cuda
    budget_seconds: float | None = None  # default: 60 on CPU, 300 on CUDA
    budget_kind: Literal["wall", "cpu"] = "wall"
    cpu_slots: int = 1
    seed: int = 1337  # the paired-comparison seed; repeats use seed + n
    noise_k: float = 2.0
    baseline_repeats: int = 3
    contended_share: float = 0.7  # CPU share below this marks a wall-clock CPU run `contended`
    contended_share_cpu_budget: float = (
        0.3  # the same under a CPU-time budget (only starvation matters)
    )
    call_wait_seconds: float = 45.0  # bound on one blocking tool call (clients cut long calls)
    max_live_per_agent: int = 1
    # Every run an agent asks for counts (experiments, confirmations, promotions, combinations).
    # autoresearch's longest campaign ran ~700 experiments: 1000 fits a real one and still bounds
    # what one agent can take (and read back through its scores). None or 0: no cap.
    max_experiments_per_agent: int | None = 1000
    claim_ttl_minutes: float = 60.0
    require_isolation: bool = False
    keep_run_dirs: Literal["never", "failed", "always"] = "failed"
    eval_timeout_seconds: float = 180.0
    eval_windows: int | None = None  # fewer val windows: only for tests and smoke runs
    arxiv_url_format: str | None = None  # tests point arXiv at loopback
    arxiv_min_interval_s: float = 3.0
    target_file: Path | None = None
    scales: tuple[ScaleLevel, ...] = DEFAULT_SCALES  # the promotion ladder, smallest first
    auto_promote: bool = False  # promote confirmed improvements to the next level automatically
    promotion_repeats: int = 2  # paired runs (seeds) per side at the larger level
    drift_check_every: int = 10  # re-run the best after this many experiments (0: never)
    start_scheduler: bool = True
    executor: Literal["local", "ray"] = "local"  # ray: experiments as tasks on a Ray cluster
    ray_address: str | None = None  # e.g. HEAD:6379; None: RAY_ADDRESS or a local Ray
    ray_cpus_per_slot: int = 1  # on a CPU-only Ray cluster: CPUs per experiment (one slot each)

    def resolved_device(self) -> str:
        return detect_device() if self.device == "auto" else self.device

    def resolved_budget(self) -> float:
        if self.budget_seconds is not None:
            return float(self.budget_seconds)
        return 300.0 if self.resolved_device().startswith("cuda") else 60.0


def hardware_fingerprint(device: str, threads: int) -> str:
    """Device name | torch version | threads: results are only compared within one fingerprint."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        import platform

        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{name} | torch {torch.__version__} | {threads} threads"


def unified_diff(old: dict[str, str], new: dict[str, str]) -> str:
    """A unified diff between two sets of files (a/ and b/ prefixes, like git), bounded in time
    and size by server.diffs: a pathological edit gets a coarse diff that says so."""
    return bounded_unified_diff(old, new)


class Lab:
    """The research server's state and rules, independent of any transport."""

    def __init__(self, settings: LabSettings | None = None) -> None:
        self.settings = settings or LabSettings()
        s = self.settings
        self.home = s.home.expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.target: ResearchTarget = load_target(s.target_file) if s.target_file else load_target()
        self.data_dir = self.home / "data"
        self.device = s.resolved_device()
        self.budget_seconds = s.resolved_budget()
        self.slots = self._slots()
        self.threads = self._threads_per_run()
        self.hardware = hardware_fingerprint(self.device, self.threads)
        self.isolation: IsolationLevel = detect_isolation()
        if s.require_isolation and self.isolation != IsolationLevel.NAMESPACES:
            from sandbox.jail import require_namespaces

            require_namespaces()
        self.store = Store(self.home / "history.sqlite")
        ensure_paper_tables(self.store.db)
        self.papers = PaperSearch(
            self.store.db,
            query_url_format=s.arxiv_url_format,
            min_interval_s=s.arxiv_min_interval_s,
        )
        self.policy = PathPolicy.from_target(self.target)
        self.baseline_files = {k: v.decode() for k, v in self.target.baseline_files().items()}
        self.runner = ExperimentRunner(
            self.target,
            self.data_dir,
            self.home / "runs",
            keep_run_dirs=s.keep_run_dirs,
            isolation=self.isolation,
        )
        # Results compare only on the same evaluation data: the split is secret per installation
        # (a re-prepared folder holds other val documents), so the fingerprint names the val set.
        eval_data = sorted(
            f"{name}={digest}"
            for name, digest in self.runner.expected_hashes.items()
            if name != "evaluator"
        )
        val_set = hashlib.sha256("\n".join(eval_data).encode()).hexdigest()[:8]
        self.hardware = f"{self.hardware} | val {val_set}"
        self.executor: Executor = LocalExecutor(self.runner, self.slots)
        if s.executor == "ray":
            from server.ray_executor import RayExecutor
            from trainer.prepare import read_split_secret

            self.executor = RayExecutor(
                s.ray_address,
                gpu=self.device.startswith("cuda"),
                cpus_per_slot=s.ray_cpus_per_slot,
                target_file=s.target_file,
                expected_hashes=self.runner.expected_hashes,
                keep_run_dirs=s.keep_run_dirs,
                split_secret=read_split_secret(self.data_dir),
            )
        self.scheduler = Scheduler(
            self.store, self.executor, self.job_for, self.on_finish, slot_accepts=self.slot_accepts
        )
        from server.ladder import PromotionLadder

        self.ladder: PromotionLadder | None = PromotionLadder(self)
        self._workspace_lock = threading.Lock()
        self._known_agents: set[str] = set()
        self._submit_lock = threading.RLock()  # quota check + insert are one step per server
        self.recovered = self.recover()
        self.ladder.settle()  # promotions a crash (or an older server) left `running`
        if s.start_scheduler:
            self.scheduler.start()

    # ------------------------------------------------------------ machine

    def _slots(self) -> list[str]:
        if self.device.startswith("cuda"):
            import torch

            if ":" in self.device:
                return [self.device]
            return [f"cuda:{i}" for i in range(max(1, torch.cuda.device_count()))]
        return (
            ["cpu"]
            if self.settings.cpu_slots <= 1
            else [f"cpu:{i}" for i in range(self.settings.cpu_slots)]
        )

    def _threads_per_run(self) -> int:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        cpu_slots = len([s for s in self.slots if s.startswith("cpu")]) or 1
        return max(1, cores // cpu_slots)

    def level(self, scale: str | None) -> ScaleLevel:
        """The operator's definition of a scale level ('S' is the default budget and model)."""
        name = scale or "S"
        for level in self.settings.scales:
            if level.name == name:
                return level
        known = ", ".join(level.name for level in self.settings.scales)
        raise LabError(f"scale level {name!r} does not exist; the levels are {known}")

    def level_budget(self, scale: str | None) -> float:
        return round(self.budget_seconds * self.level(scale).budget_factor, 3)

    def slot_accepts(self, slot: str, experiment: dict[str, Any]) -> bool:
        """A level with reserved slots runs only there; reserved slots serve only their level."""
        scale = experiment.get("scale") or "S"
        reserved = {s: level.name for level in self.settings.scales for s in level.slots}
        own = (
            self.level(scale).slots if any(lv.name == scale for lv in self.settings.scales) else ()
        )
        if own:
            return slot in own
        return slot not in reserved

    def run_settings(
        self, seed: int, budget_seconds: float | None = None, scale: str | None = None
    ) -> RunSettings:
        level = self.level(scale)
        return RunSettings(
            extra_env={"AR_SCALE": str(level.model_scale)},
            budget_seconds=budget_seconds or self.level_budget(scale),
            budget_kind=self.settings.budget_kind,
            device=self.device if not self.device.startswith("cuda") else self.slots[0],
            seed=seed,
            threads=self.threads,
            eval_timeout_seconds=self.settings.eval_timeout_seconds,
            eval_windows=self.settings.eval_windows,
            require_isolation=self.settings.require_isolation,
        )

    def close(self) -> None:
        self.scheduler.stop()

    # ------------------------------------------------------------ agents and workspaces

    def check_agent_name(self, agent: str) -> str:
        if not isinstance(agent, str) or not AGENT_NAME.fullmatch(agent):
            raise LabError(
                f"agent name {agent!r} is invalid; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if agent == SERVER_AGENT:  # its runs would pass as the server's own, charged to nobody
            raise LabError(
                f"agent name {agent!r} is reserved for the server's own runs; connect under another name"
            )
        return agent

    def workspace(self, agent: str) -> Workspace:
        """The agent's own working copy, created from the baseline on first use."""
        self.check_agent_name(agent)
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
        from server.store import write_transaction

        with write_transaction(self.store.db):
            self.store.db.execute(
                "UPDATE agents SET workspace_parent_id = ? WHERE name = ?", [experiment_id, agent]
            )

    def baseline_experiment_id(self) -> int | None:
        rows = self.store.list_experiments(
            kind="baseline", status=OK, order="oldest", limit=1, columns=["id"]
        )
        return rows[0]["id"] if rows else None

    # ------------------------------------------------------------ submitting

    def live_experiments(self, requester: str) -> list[dict[str, Any]]:
        """The queued and running runs `requester` asked for (its own, confirmations, promotions)."""
        return self.store.list_experiments(
            requested_by=requester,
            status=list(LIVE_STATUSES),
            order="oldest",
            limit=100,
            columns=["id", "status"],
        )

    def submit(
        self,
        agent: str,
        description: str,
        *,
        requested_by: str | _Requester | None = _Requester.AGENT,
        check_quota: bool = True,
        reuse: bool = True,
        **options: Any,
    ) -> tuple[int, int | None]:
        """Queue a run of the agent's workspace (or of `files`); returns (experiment id, reused-from id).

        `agent` is credited with the run; `requested_by` (by default the agent itself, or nobody
        for the server's own runs) is charged for it. The code hash, the diffs and the review
        flags are computed first, outside the submit lock: one agent's large diff never holds
        up another agent's submit. Under the lock: the quota check, the dedupe and the insert.
        When the same code already ran (or is running) with the same settings, nothing is
        queued and the earlier experiment's id comes back as reused-from (confirmations always run).
        """
        requester = _resolve_requester(agent, requested_by)
        planned = self.plan_run(agent, description, **options)
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
        kind: Literal[
            "experiment", "baseline", "confirmation", "promotion", "drift_check"
        ] = "experiment",
        files: dict[str, str] | None = None,
        parent_id: int | None = None,
        confirms_id: int | None = None,
        seed: int | None = None,
        scale: str = "S",
    ) -> dict[str, Any]:
        """Everything a new experiment row holds, computed without any lock: the description and
        paper ids checked, the code (the agent's workspace unless `files`), its hash, the diffs
        vs its parent and vs the baseline, and the review flags. Nothing is recorded yet."""
        description = " ".join((description or "").split())
        if not description:
            raise LabError(
                "description is empty; say in one line what this experiment changes and why, e.g. 'warmdown 0.5 -> 0.7: longer decay helps at short budgets'"
            )
        if len(description) > MAX_DESCRIPTION:
            raise LabError(
                f"description is {len(description)} characters; use at most {MAX_DESCRIPTION} (one line: the change and the hypothesis)"
            )
        papers = [self._check_arxiv_id(p) for p in paper_ids]
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
        flags = [f.as_dict() for f in review_diff(diff_baseline)]
        if kind == "experiment" and is_seed_only(diff_parent):
            flags.insert(
                0,
                {
                    "name": "seed_only",
                    "reason": "the only change is the seed: it measures luck, not an idea, and can never count as an improvement",
                    "lines": [],
                },
            )
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
            "disqualified": int(any(f["name"] in DISQUALIFYING_FLAGS for f in flags)),
            "budget_seconds": self.level_budget(scale),
            "budget_kind": self.settings.budget_kind,
            "device": self.device,
            "hardware": self.hardware,
            "torch_version": _torch_version(),
            "seed": self.settings.seed if seed is None else seed,
            "isolation": self.isolation.value,
            "paper_ids": papers,
            "scale": scale,
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
            for run in planned:
                earlier = None
                if reuse and run["kind"] == "experiment":
                    earlier = self.store.find_by_code(
                        run["code_hash"],
                        {
                            "hardware": run["hardware"],
                            "budget_seconds": run["budget_seconds"],
                            "budget_kind": run["budget_kind"],
                            "scale": run["scale"],
                        },
                    )
                results.append((earlier["id"], earlier["id"]) if earlier else (0, None))
                if earlier is None:
                    fresh.append(run)
            if fresh and check_quota and requester is not None:
                self._check_quota(requester, len(fresh))
            for index, run in enumerate(planned):
                reused = results[index][1]
                if reused is not None:
                    if run["kind"] == "experiment":
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

    def _check_arxiv_id(self, value: str) -> str:
        value = (value or "").strip()
        if value.lower().startswith("arxiv:"):
            value = value[6:]
        if not ARXIV_ID.fullmatch(value):
            raise LabError(
                f"paper id {value!r} is not an arXiv id; send ids like '2401.01234' (from search_papers)"
            )
        return re.sub(r"v\d+$", "", value)

    def _check_quota(self, requester: str, new_runs: int = 1) -> None:
        """Refuse a request that would take `requester` past its limits (LabError says which and what to do).

        Every run an agent causes counts: its experiments, the confirmations and promotions it
        asks for (including the baselines a promotion queues) and the merges it combines. A
        request may queue a bounded batch (confirm: at most 10 runs; a promotion: its paired
        runs and any missing baselines) when the agent has fewer live runs than its limit; the
        experiments-in-all cap counts every run of the batch. Re-queues after a crash of the
        server are not charged (they count as live, not in the totals).
        """
        live = self.live_experiments(requester)
        row = self.store.agent(requester) or {}
        max_live = row.get("max_queued") or self.settings.max_live_per_agent
        if len(live) >= max_live:
            first = live[0]
            raise LabError(
                f"experiment #{first['id']} is still {first['status']}; you may have {max_live} live at a time. "
                f"Call wait_experiment({first['id']}) for its result, or cancel_experiment({first['id']})"
            )
        max_total = row.get("max_experiments") or self.settings.max_experiments_per_agent
        if max_total:
            used = self.charged_runs(requester)
            if used + new_runs > max_total:
                asked = f"; this request would queue {new_runs} runs" if new_runs > 1 else ""
                raise LabError(
                    f"quota reached: agent {requester} may run {max_total} experiments in all (confirmation "
                    f"and promotion runs count too) and has run {used}{asked}; ask the operator to raise it"
                )
        max_hours = row.get("max_device_hours")
        if max_hours:
            used_hours = self.device_hours(requester)
            if used_hours >= max_hours:
                raise LabError(
                    f"quota reached: agent {requester} has used {used_hours:.2f} of {max_hours:g} device-hours "
                    "(confirmation and promotion runs count too); ask the operator to raise it"
                )

    def charged_runs(self, requester: str) -> int:
        """How many runs `requester` asked for, re-queues after a server crash not counted."""
        row = self.store.db.execute(
            "SELECT COUNT(*) FROM experiments WHERE requested_by = ? AND retry_of IS NULL",
            [requester],
        ).fetchone()
        return int(row[0])

    def device_hours(self, requester: str) -> float:
        """Device-hours of the runs `requester` asked for, re-queues after a server crash not counted."""
        rows = self.store.db.execute(
            "SELECT COALESCE(SUM(total_seconds), 0) FROM experiments WHERE requested_by = ? AND retry_of IS NULL",
            [requester],
        ).fetchone()
        return float(rows[0]) / 3600

    def _code_of(self, experiment_id: int) -> dict[str, str]:
        code = self.store.get_experiment(experiment_id).get("code")
        return code if isinstance(code, dict) else dict(self.baseline_files)

    # ------------------------------------------------------------ running (scheduler callbacks)

    def job_for(self, experiment: dict[str, Any]) -> Job:
        code = (
            experiment["code"]
            if isinstance(experiment["code"], dict)
            else json.loads(experiment["code"])
        )
        return Job(
            experiment_id=experiment["id"],
            files={name: text.encode() for name, text in code.items()},
            settings=self.run_settings(
                int(experiment["seed"]), experiment.get("budget_seconds"), experiment.get("scale")
            ),
        )

    def on_finish(self, experiment_id: int, result: RunResult) -> None:
        """Record a finished run: figures, verdict and deltas, in one compare-and-set from `running`."""
        if result.status == INTERRUPTED:  # lost with its machine (a Ray node): re-queue once
            if self.store.transition(
                experiment_id,
                [RUNNING],
                status=INTERRUPTED,
                finished_at=utc_now(),
                failure_reason=result.failure_reason or "the machine running it was lost",
                log_tail=result.log_tail,
            ):
                self.requeue_interrupted(experiment_id)
            return
        experiment = self.store.get_experiment(experiment_id)
        flags = list(experiment.get("flags") or [])
        disqualifications = [f["reason"] for f in flags if f.get("name") in DISQUALIFYING_FLAGS]
        if result.status == OK and self._contended(result):
            flags.append(
                {
                    "name": "contended",
                    "reason": f"the run got {result.cpu_share:.0%} of its CPU threads (below "
                    f"{self._contended_threshold():.0%}): on a busy machine a {self.settings.budget_kind}-clock "
                    "budget measures the neighbours",
                    "lines": [],
                }
            )
            disqualifications.append("the CPU was contended during the run")
        over_budget = float(getattr(result, "over_budget_seconds", 0.0) or 0.0)
        budget = experiment.get("budget_seconds") or self.budget_seconds
        if result.status == OK and over_budget > over_budget_tolerance(budget):
            flags.append(over_budget_flag(over_budget, budget, self.settings.budget_kind))
            disqualifications.append(over_budget_reason(over_budget, budget))
        # The incumbent: the leaderboard's top (confirmed means, the baseline as the mean of its runs).
        incumbent = [
            e
            for e in self.leaderboard(limit=2, scale=experiment.get("scale") or "S")
            if e["id"] != experiment_id
        ]
        best_bpb = incumbent[0]["val_bpb"] if incumbent else None
        parent_bpb = None
        if experiment.get("parent_id") is not None:
            try:
                parent_bpb = self.store.get_experiment(experiment["parent_id"]).get("val_bpb")
            except ExperimentNotFound:
                parent_bpb = None
        if experiment["kind"] == "baseline":
            verdict, note = (
                (BASELINE, "baseline measurement")
                if result.status == OK
                else ("failed", result.failure_reason or "")
            )
        else:
            v = decide(
                status=result.status,
                val_bpb=result.val_bpb,
                best_bpb=best_bpb,
                noise=self.noise(experiment.get("scale") or "S"),
                k=self.settings.noise_k,
                disqualifications=disqualifications,
            )
            verdict, note = v.verdict, v.note
        metrics = dict(result.metrics)
        metrics["verdict_note"] = note
        metrics["phase"] = result.phase
        if result.first_output_seconds is not None:
            metrics["first_output_seconds"] = round(result.first_output_seconds, 3)
        val = result.val_bpb
        updated = self.store.transition(
            experiment_id,
            [RUNNING],
            status=result.status,
            val_bpb=val,
            verdict=verdict,
            metrics=metrics,
            delta_parent=published(parent_bpb - val)
            if (val is not None and parent_bpb is not None)
            else None,
            delta_best=published(best_bpb - val)
            if (val is not None and best_bpb is not None)
            else None,
            train_seconds=result.train_seconds,
            eval_seconds=result.eval_seconds,
            total_seconds=result.total_seconds,
            overhead_seconds=result.overhead_seconds,
            cpu_seconds=result.cpu_seconds,
            cpu_share=result.cpu_share,
            peak_memory_mb=result.peak_memory_mb,
            isolation=result.isolation,
            failure_reason=result.failure_reason,
            log_tail=result.log_tail,
            hashes=result.hashes,
            finished_at=utc_now(),
            flags=flags,
            disqualified=int(bool(disqualifications)),
        )
        if not updated:
            log.warning("experiment %s was no longer running when it finished", experiment_id)
        else:
            log.info(
                "#%s %s (%s) finished: %s%s, verdict %s (train %.1f s, eval %.1f s)",
                experiment_id,
                experiment["kind"],
                experiment["agent"],
                result.status,
                f", val_bpb {val:.4f}" if val is not None else f": {result.failure_reason}",
                verdict,
                result.train_seconds,
                result.eval_seconds,
            )
        if experiment["kind"] == "baseline":
            self._update_baseline_stats(experiment.get("scale") or "S")
        if self.ladder is not None:
            self.ladder.on_run_finished(experiment_id)
        if experiment["kind"] == "drift_check":
            self._record_drift(experiment_id)
        elif experiment["kind"] == "experiment" and self.settings.drift_check_every:
            self._maybe_check_drift()

    # ------------------------------------------------------------ drift

    def _maybe_check_drift(self) -> None:
        """Every N finished experiments, re-run the incumbent best with its own seed to catch drift
        (a slower machine, a thermal limit, a noisy neighbour): the same code should score the same."""
        every = self.settings.drift_check_every
        finished = self.store.db.execute(
            "SELECT COUNT(*) FROM experiments WHERE kind = 'experiment' AND status NOT IN ('queued', 'running')"
        ).fetchone()[0]
        if not every or finished == 0 or finished % every:
            return
        board = [
            e for e in self.leaderboard(limit=5) if self.experiment(e["id"])["kind"] == "experiment"
        ]
        if not board:
            return
        best = self.experiment(board[0]["id"])
        self.submit(
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
        row = self.experiment(experiment_id)
        original = self.experiment(row["confirms_id"])
        if row["status"] != OK or original.get("val_bpb") is None:
            return
        drift = row["val_bpb"] - original["val_bpb"]
        threshold = self.settings.noise_k * self.noise(row.get("scale") or "S").sd
        metrics = dict(row.get("metrics") or {})
        metrics.update(
            drift=published(drift),
            drift_threshold=published(threshold),
            drifted=abs(drift) > threshold,
        )
        self.store.update_experiment(experiment_id, metrics=metrics)
        if abs(drift) > threshold:
            log.warning(
                "drift: #%s re-ran %+.4f from its original %.4f (threshold %.4f)",
                original["id"],
                drift,
                original["val_bpb"],
                threshold,
            )

    def last_drift_check(self) -> dict[str, Any] | None:
        rows = self.store.list_experiments(
            kind="drift_check",
            status=OK,
            limit=1,
            columns=["id", "confirms_id", "metrics", "finished_at"],
        )
        if not rows:
            return None
        metrics = rows[0].get("metrics") or {}
        return {
            "id": rows[0]["id"],
            "of": rows[0]["confirms_id"],
            "drift": metrics.get("drift"),
            "drifted": metrics.get("drifted"),
            "finished_at": rows[0]["finished_at"],
        }

    def _contended_threshold(self) -> float:
        # A CPU-time budget is robust to load by construction: only a starved run is contended.
        if self.settings.budget_kind == "wall":
            return self.settings.contended_share
        return self.settings.contended_share_cpu_budget

    def _contended(self, result: RunResult) -> bool:
        if self.device.startswith("cuda") or result.cpu_share is None:
            return False
        return result.cpu_share < self._contended_threshold()

    # ------------------------------------------------------------ noise and the baseline

    def noise(self, scale: str = "S") -> Noise:
        row = self.store.baseline(
            hardware=self.hardware,
            scale=scale,
            budget_kind=self.settings.budget_kind,
            budget_seconds=self.level_budget(scale),
        )
        return Noise.from_values(row["values"] if row else [])

    def _update_baseline_stats(self, scale: str = "S") -> None:
        rows = self.store.list_experiments(
            kind="baseline",
            status=OK,
            order="oldest",
            limit=1000,
            columns=["id", "val_bpb", "hardware", "budget_seconds", "budget_kind", "scale"],
        )
        rows = [
            r
            for r in rows
            if r["hardware"] == self.hardware
            and r["budget_seconds"] == self.level_budget(scale)
            and r["budget_kind"] == self.settings.budget_kind
            and (r["scale"] or "S") == scale
        ]
        if not rows:
            return
        values = [r["val_bpb"] for r in rows]
        mean, sd = mean_sd(values)
        self.store.set_baseline(
            hardware=self.hardware,
            scale=scale,
            budget_kind=self.settings.budget_kind,
            budget_seconds=self.level_budget(scale),
            values=values,
            experiment_ids=[r["id"] for r in rows],
            mean=mean,
            sd=sd,
        )

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
            self._submit_lock
        ):  # planning reads what exists: one planner at a time (cheap: no diff)
            planned = self.plan_baselines(repeats, scale)
            results = self.queue_runs(
                planned, requested_by, check_quota=requested_by is not None, reuse=False
            )
        return [experiment_id for experiment_id, _ in results]

    def plan_baselines(self, repeats: int | None = None, scale: str = "S") -> list[dict[str, Any]]:
        """The baseline runs `ensure_baseline` would queue now (planned, not recorded)."""
        repeats = self.settings.baseline_repeats if repeats is None else repeats
        existing = [
            r
            for r in self.store.list_experiments(
                kind="baseline",
                order="oldest",
                limit=1000,
                columns=["id", "status", "hardware", "budget_seconds", "scale"],
            )
            if r["hardware"] == self.hardware
            and r["budget_seconds"] == self.level_budget(scale)
            and (r["scale"] or "S") == scale
            and r["status"] in (OK, QUEUED, RUNNING)
        ]
        if len(existing) >= repeats:
            return []
        # The baseline's diffs are empty: planning it once is cheap, the seeds are stamped per run.
        template = self.plan_run(
            SERVER_AGENT,
            "baseline measurement",
            kind="baseline",
            files=dict(self.baseline_files),
            parent_id=None,
            scale=scale,
        )
        planned = []
        for n in range(len(existing), repeats):
            seed = self.settings.seed + n
            description = (
                f"baseline measurement {n + 1}/{repeats}"
                + (f" at level {scale}" if scale != "S" else "")
                + f" (server-owned seed {seed})"
            )
            planned.append({**template, "seed": seed, "description": description})
        return planned

    # ------------------------------------------------------------ recovery

    def recover(self) -> list[int]:
        """After a crash: runs left `running` become `interrupted` and are re-queued once (a new row).

        First, any process a killed server's jails left behind under this home's runs
        directory is killed (the jails normally die with the server: PR_SET_PDEATHSIG).
        """
        orphans = kill_orphans(self.home / "runs")
        if orphans:
            log.warning(
                "killed %d process(es) left behind by a previous server: %s", len(orphans), orphans
            )
        self.store.mark_interrupted_runs()
        # Every interrupted run without a retry yet: also those whose re-queue a crash cut short.
        pending = [
            row["id"]
            for row in self.store.db.query(
                "SELECT id FROM experiments e WHERE status = 'interrupted' AND COALESCE(attempt, 1) < 2 "
                "AND NOT EXISTS (SELECT 1 FROM experiments r WHERE r.retry_of = e.id) ORDER BY id"
            )
        ]
        requeued = [self.requeue_interrupted(experiment_id) for experiment_id in pending]
        return [new_id for new_id in requeued if new_id is not None]

    def requeue_interrupted(self, experiment_id: int) -> int | None:
        """Queue an `interrupted` experiment again, once (a new row, retry_of it); the new id or None."""
        old = self.store.get_experiment(experiment_id)
        if (old.get("attempt") or 1) >= 2:
            return None
        new_id = self.store.create_experiment(
            **{
                k: v
                for k, v in old.items()
                if k
                not in (
                    "id",
                    "status",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "failure_reason",
                    "log_tail",
                    "metrics",
                    "verdict",
                    "attempt",
                    "retry_of",
                )
            },
            status=QUEUED,
            attempt=(old.get("attempt") or 1) + 1,
            retry_of=experiment_id,
        )
        if old["kind"] == "experiment":
            self._set_workspace_parent(old["agent"], new_id)
        self.scheduler.notify()
        return new_id

    # ------------------------------------------------------------ reading results

    def experiment(self, experiment_id: int) -> dict[str, Any]:
        """One experiment's row; a LabError for an id that is malformed or does not exist."""
        experiment_id = check_experiment_id(experiment_id)
        try:
            return self.store.get_experiment(experiment_id)
        except ExperimentNotFound:
            raise LabError(
                f"experiment #{experiment_id} does not exist; get_history lists experiment ids"
            ) from None

    def resolve_retry(self, experiment: dict[str, Any]) -> dict[str, Any]:
        """An interrupted experiment that was re-queued: follow it to the new attempt."""
        if experiment["status"] == INTERRUPTED:
            rows = list(
                self.store.db.query(
                    "SELECT id FROM experiments WHERE retry_of = ?", [experiment["id"]]
                )
            )
            if rows:
                return self.store.get_experiment(rows[0]["id"])
        return experiment

    def confirmation_stats(self, experiment_id: int) -> dict[str, Any] | None:
        """Mean and sd of an experiment's val_bpb over itself and its confirmation runs."""
        rows = list(
            self.store.db.query(
                "SELECT id, val_bpb, seed FROM experiments WHERE confirms_id = ? AND kind = 'confirmation' AND status = 'ok'",
                [experiment_id],
            )
        )
        if not rows:
            return None  # the common case (every leaderboard row asks): no need to read the row
        original = self.store.get_experiment(experiment_id)
        values = ([original["val_bpb"]] if original.get("val_bpb") is not None else []) + [
            r["val_bpb"] for r in rows
        ]
        mean, sd = mean_sd(values)
        return {
            "mean": published(mean),
            "sd": published(sd),
            "n": len(values),
            "values": values,
            "run_ids": [r["id"] for r in rows],
        }

    def leaderboard_value(self, experiment: dict[str, Any]) -> float | None:
        stats = self.confirmation_stats(experiment["id"])
        return stats["mean"] if stats else experiment.get("val_bpb")

    def leaderboard(self, limit: int = 10, scale: str = "S") -> list[dict[str, Any]]:
        """Ranked by confirmed mean where confirmations exist, else the single run; disqualified runs excluded.

        The baseline is one entry: the mean of its runs on this hardware, budget and level (its
        runs are repeats of the same code with the server's seeds).
        """
        rows = list(
            self.store.db.query(
                "SELECT id, agent, description, val_bpb FROM experiments WHERE status = 'ok' "
                "AND kind IN ('experiment', 'promotion') "
                "AND COALESCE(disqualified, 0) = 0 AND val_bpb IS NOT NULL AND hardware = ? AND budget_seconds = ? "
                "AND COALESCE(scale, 'S') = ? ORDER BY val_bpb ASC LIMIT ?",
                [self.hardware, self.level_budget(scale), scale, max(limit * 5, 50)],
            )
        )
        entries = []
        for row in rows:
            stats = self.confirmation_stats(row["id"])
            entries.append(
                {
                    "id": row["id"],
                    "agent": row["agent"],
                    "description": row["description"],
                    "val_bpb": stats["mean"] if stats else row["val_bpb"],
                    "sd": stats["sd"] if stats else None,
                    "runs": stats["n"] if stats else 1,
                    "confirmed": bool(stats and stats["n"] >= 2),
                }
            )
        baseline = self.store.baseline(
            hardware=self.hardware,
            scale=scale,
            budget_kind=self.settings.budget_kind,
            budget_seconds=self.level_budget(scale),
        )
        if baseline and baseline["values"]:
            runs = len(baseline["values"])
            entries.append(
                {
                    "id": baseline["experiment_ids"][0],
                    "agent": SERVER_AGENT,
                    "description": f"baseline (trainer/train.py as shipped; mean of {runs} run{'s' if runs > 1 else ''})",
                    "val_bpb": published(baseline["mean"]),
                    "sd": published(baseline["sd"]) if runs > 1 else None,
                    "runs": runs,
                    "confirmed": runs >= 2,
                }
            )
        entries.sort(key=lambda e: (e["val_bpb"], e["id"]))
        for rank, entry in enumerate(entries[:limit], start=1):
            entry["rank"] = rank
        return entries[:limit]

    def per_agent(self) -> list[dict[str, Any]]:
        rows = self.store.db.execute(
            "SELECT agent, COUNT(*) AS n, SUM(verdict = 'improved') AS wins, "
            "MIN(CASE WHEN status = 'ok' AND COALESCE(disqualified, 0) = 0 THEN val_bpb END) AS best "
            "FROM experiments WHERE kind = 'experiment' GROUP BY agent ORDER BY best IS NULL, best"
        ).fetchall()
        out = []
        for agent, n, wins, best in rows:
            best_id = None
            if best is not None:
                hit = self.store.db.execute(
                    "SELECT id FROM experiments WHERE agent = ? AND val_bpb = ? AND status = 'ok' ORDER BY id LIMIT 1",
                    [agent, best],
                ).fetchone()
                best_id = hit[0] if hit else None
            out.append(
                {
                    "agent": agent,
                    "best_id": best_id,
                    "best_val_bpb": best,
                    "experiments": n,
                    "improvements": wins or 0,
                }
            )
        return out

    def noise_info(self, scale: str = "S") -> dict[str, Any]:
        noise = self.noise(scale)
        return {
            "hardware": self.hardware,
            "budget_seconds": self.level_budget(scale),
            "budget_kind": self.settings.budget_kind,
            "baseline_mean": published(noise.mean),
            "sd": published(noise.sd),
            "runs": noise.runs,
            "measured": noise.measured,
            "threshold": published(self.settings.noise_k * noise.sd),
            "last_drift_check": self.last_drift_check(),
        }

    # ------------------------------------------------------------ checkout, cancel, claims

    def checkout(
        self, agent: str, experiment_id: int | None, ref: str | None
    ) -> tuple[int | None, list[str]]:
        """Set the agent's workspace to an experiment's code ('baseline', 'best' or any id, anyone's)."""
        if (experiment_id is None) == (ref is None):
            raise LabError(
                "send exactly one of experiment_id (a number from get_history) or ref ('baseline' or 'best')"
            )
        if ref is not None and ref not in ("baseline", "best"):
            raise LabError(
                f"ref {ref!r} is unknown; use 'baseline' or 'best', or pass experiment_id"
            )
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
        return source_id, sorted(code)

    def cancel(self, agent: str | None, experiment_id: int) -> str:
        """Cancel a live run. An agent may cancel only the runs it asked for (`requested_by`), never
        a baseline the server shares between agents; `agent` None is the operator: any run."""
        experiment = self.experiment(experiment_id)
        experiment_id = experiment["id"]
        requester = experiment.get("requested_by") or (
            None if experiment["agent"] == SERVER_AGENT else experiment["agent"]
        )
        if agent is not None:
            if experiment["kind"] == "baseline":
                raise LabError(
                    f"experiment #{experiment_id} is a baseline measurement the server shares between agents; "
                    "it cannot be cancelled by an agent"
                )
            if requester != agent:
                raise LabError(
                    f"experiment #{experiment_id} belongs to {requester or 'the server'}; you can cancel only your own"
                )
        if experiment["status"] in FINAL_STATUSES:
            raise LabError(
                f"experiment #{experiment_id} already finished ({experiment['status']}); nothing to cancel"
            )
        outcome = self.scheduler.cancel(experiment_id)
        if outcome == "cancelled" and self.ladder is not None:
            # A run cancelled while queued never reaches on_finish: settle promotions waiting on it.
            self.ladder.on_run_finished(experiment_id)
        return outcome

    def claim(self, agent: str, text: str) -> int:
        text = " ".join((text or "").split())
        if not text:
            raise LabError(
                "the idea is empty; describe in one line what you are about to try, e.g. 'RoPE base 10k -> 50k'"
            )
        if len(text) > MAX_CLAIM:
            raise LabError(f"the idea is {len(text)} characters; use at most {MAX_CLAIM}")
        expires = (
            (datetime.now(UTC) + timedelta(minutes=self.settings.claim_ttl_minutes))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        self.store.ensure_agent(agent)
        return self.store.add_claim(agent, text, expires)

    # ------------------------------------------------------------ confirmation

    def confirm(self, agent: str | None, experiment_id: int, repeats: int) -> list[int]:
        """Queue `repeats` more runs of an experiment's code with fresh seeds.

        Anyone may confirm anyone's experiment (useful science): the runs are credited to the
        experiment's author (the row's agent: its leaderboard entry, mean +- sd and verdict stay
        the author's) and charged to `agent`, who asked (`requested_by` on each run), through
        the same quota check as run_experiment. `agent` None is the operator (the CLI or the
        Lab API; agents always have a name): charged to nobody.
        """
        if not isinstance(repeats, int) or not 1 <= repeats <= 10:
            raise LabError(f"repeats={repeats} is out of range; use 1 to 10")
        original = self.experiment(experiment_id)
        experiment_id = original["id"]
        if original["status"] != OK:
            raise LabError(
                f"experiment #{experiment_id} is {original['status']}; only a successful run can be confirmed"
            )
        if original["kind"] != "experiment":
            raise LabError(
                f"experiment #{experiment_id} is a {original['kind']} run; confirm the experiment itself"
            )
        template = self.plan_run(
            original["agent"],
            f"confirm #{experiment_id}",
            kind="confirmation",
            files=original["code"],
            parent_id=experiment_id,
            confirms_id=experiment_id,
        )
        with self._submit_lock:  # the seeds follow the confirmations already recorded
            existing = self.store.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE confirms_id = ?", [experiment_id]
            ).fetchone()[0]
            planned = []
            for n in range(repeats):
                seed = self.settings.seed + 1000 + existing + n  # fresh seeds, never the paired one
                description = f"confirm #{experiment_id} (seed {seed}): {original['description']}"
                planned.append(
                    {**template, "seed": seed, "description": description[:MAX_DESCRIPTION]}
                )
            results = self.queue_runs(planned, agent, check_quota=agent is not None, reuse=False)
        return [new_id for new_id, _ in results]

    def improvement_count(self) -> int:
        return int(
            self.store.db.execute(
                "SELECT COUNT(*) FROM experiments WHERE verdict = ?", [IMPROVED]
            ).fetchone()[0]
        )

    def statistics(self) -> dict[str, Any]:
        counts = dict(
            self.store.db.execute(
                "SELECT status, COUNT(*) FROM experiments GROUP BY status"
            ).fetchall()
        )
        return {
            "by_status": counts,
            "total": sum(counts.values()),
            "crashes": counts.get(CRASH, 0),
            "cancelled": counts.get(CANCELLED, 0),
        }


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


__all__ = ["Lab", "LabError", "LabSettings", "statistics"]
