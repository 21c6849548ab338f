"""`suggest`: the next values of train.py's numeric hyperparameters, from an Optuna study of
every comparable run in the record, shared by all agents.

Which constants are searched and their spaces: server/suggest_space.py.

The study is rebuilt from the record on every call: a finished run on this server's hardware,
budget and level ('S') whose train.py differs from the baseline only on those lines is a trial
(its values, its metric_value; a crash, timeout or integrity failure is a FAIL trial; disqualified
runs are left out); queued and running ones, and suggestions handed out in the last
PENDING_HOURS that no run has taken yet, are RUNNING trials. A trial with a value outside the
space is dropped, not clipped: an agent cannot drag the study with absurd values, and the
quotas bound how many runs anyone can add. At most MAX_TRIALS_FED recent trials are fed.
Samplers: TPE (seeded, constant liar for the running trials), CMA-ES warm-started from the
completed trials (Optuna's source_trials) once CMAES_MIN_TRIALS exist and at least two
parameters are searched, or random. The seed is the id of the newest suggestion recorded:
reproducible from the record, and two agents asking at once (one at a time under a lock) get
different values, the second seeing the first's as running.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from server.diffs import unified_diff
from server.orientation import MINIMIZE, loss
from server.record import CRASH, INTEGRITY_FAIL, LIVE_STATUSES, OK, TIMEOUT
from server.refusals import LabError
from server.seed_checks import parse_python
from server.store.suggestions import SuggestionStore
from server.suggest_space import (
    EDITABLE,
    constant_only_values,
    discover_parameters,
    literal_text,
    top_literals,
)

if TYPE_CHECKING:
    from server.lab import Lab

SamplerName = Literal["auto", "tpe", "cmaes", "random"]
SAMPLERS: tuple[SamplerName, ...] = ("auto", "tpe", "cmaes", "random")
MAX_TRIALS_FED = 1000  # the most recent trials fed to a study (bounds the time of a call)
MAX_ROWS_READ = 3000  # the most recent runs read to find them
PENDING_HOURS = 2.0  # a suggestion nobody ran counts as a running trial this long
PENDING_PER_AGENT = 20  # unlinked suggestions kept per agent (older ones are forgotten)
TPE_STARTUP_TRIALS = 4  # random samples before TPE models the results
CMAES_MIN_TRIALS = 12  # completed trials before `auto` picks CMA-ES
FAILED_STATUSES = (CRASH, TIMEOUT, INTEGRITY_FAIL)
OBSERVED_COLUMNS = ["id", "agent", "status", "metric_value", "created_at"]
OBSERVED_COLUMNS += ["hardware", "budget_seconds", "budget_kind", "disqualified"]
# A run's status as a trial: ok -> COMPLETE, queued/running -> RUNNING, a failure -> FAIL.
TRIAL_STATES: dict[str, TrialState] = {s: TrialState.RUNNING for s in LIVE_STATUSES}
TRIAL_STATES[OK] = TrialState.COMPLETE

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Observation:
    """One run whose train.py is the baseline's but for searched constants."""

    experiment_id: int
    agent: str
    status: str
    values: dict[str, int | float]
    metric_value: float | None
    created_at: str


@dataclass
class Suggestion:
    """What `suggest` answers: the proposal, where it came from and the edit that applies it."""

    suggestion_id: int
    values: dict[str, int | float]
    sampler: str
    sampler_note: str
    trials_complete: int
    trials_failed: int
    trials_running: int
    trials_dropped: int
    best: dict[str, Any] | None
    space: dict[str, str]
    diff: str
    not_in_workspace: list[str] = field(default_factory=list)
    recent: list[dict[str, Any]] = field(default_factory=list)


class Suggester:
    """The shared study behind `suggest`: one per Lab, its calls one at a time."""

    def __init__(self, lab: Lab) -> None:
        self._lab = weakref.ref(lab)  # suggester_for's cache must not keep the lab alive
        self.store = SuggestionStore(lab.store.db)
        # the study minimizes or maximizes the metric, as the target says
        self.direction: Literal["minimize", "maximize"] = (
            "maximize" if lab.target.direction == "maximize" else "minimize"
        )
        self.store.ensure_table()
        self.cpu = not lab.device.startswith("cuda")
        self.baseline = dict(lab.baseline_files)
        self.params = discover_parameters(self.baseline[EDITABLE], self.cpu)
        self._lock = threading.Lock()
        self._cache: dict[int, dict[str, int | float] | None] = {}

    @property
    def lab(self) -> Lab:
        lab = self._lab()
        assert lab is not None, "the lab was closed and collected"
        return lab

    def choose(self, names: Sequence[str] | None) -> list[str]:
        """The parameters to search: all of them, or the named ones (refused if unknown)."""
        if not names:
            return list(self.params)
        unknown = [n for n in names if n not in self.params]
        if unknown:
            raise LabError(
                f"unknown parameter(s) {', '.join(repr(n[:60]) for n in unknown[:5])}; send some "
                f"of {', '.join(self.params)} (or none: all of them)"
            )
        wanted = set(names)
        return [n for n in self.params if n in wanted]

    def observations(self) -> list[Observation]:
        """The recent comparable runs that differ from the baseline only in parameter values."""
        lab = self.lab
        rows = lab.store.list_experiments(scale="S", limit=MAX_ROWS_READ, columns=OBSERVED_COLUMNS)
        budget = lab.level_budget("S")
        kind = lab.settings.resolved_budget_kind()
        found: list[Observation] = []
        for row in rows:
            if row["status"] not in (OK, *FAILED_STATUSES, *LIVE_STATUSES):
                continue
            if row.get("disqualified"):
                continue
            if row["status"] not in LIVE_STATUSES and (
                row.get("hardware") != lab.hardware
                or row.get("budget_seconds") != budget
                or row.get("budget_kind") != kind
            ):
                continue
            if row["status"] == OK and row.get("metric_value") is None:
                continue
            values = self._values_of(int(row["id"]))
            if values is None:
                continue
            fields = (row["agent"], row["status"], values, row["metric_value"], row["created_at"])
            found.append(Observation(int(row["id"]), *fields))
            if len(found) >= MAX_TRIALS_FED:
                break
        return found

    def _values_of(self, experiment_id: int) -> dict[str, int | float] | None:
        """A run's parameter values if its code is the baseline's but for them (cached by id: a
        run's code never changes, so a call reads only the code of runs it has not seen)."""
        if experiment_id not in self._cache:
            if len(self._cache) > 4 * MAX_ROWS_READ:
                self._cache.clear()
            code = self.lab.store.get_experiment(experiment_id).get("code")
            self._cache[experiment_id] = (
                constant_only_values(code, self.baseline, self.params, self.cpu)
                if isinstance(code, dict)
                else None
            )
        return self._cache[experiment_id]

    def _link(self, observations: Sequence[Observation], pending: list[dict[str, Any]]) -> None:
        """Link each run to the oldest earlier unlinked suggestion with exactly its values
        (the same agent's first); the linked ones stop being pending."""
        linked = self.store.linked_to([o.experiment_id for o in observations])
        for obs in sorted(observations, key=lambda o: o.experiment_id):
            if obs.experiment_id in linked:
                continue
            matches = [
                s
                for s in pending
                if s["created_at"] <= obs.created_at and _same_values(s["params"], obs.values)
            ]
            matches.sort(key=lambda s: (s["agent"] != obs.agent, s["id"]))
            for match in matches:
                if self.store.link(int(match["id"]), obs.experiment_id):
                    pending.remove(match)
                    break

    # ------------------------------------------------------------ the study

    def suggest(
        self, agent: str, names: Sequence[str] | None, sampler: SamplerName = "auto"
    ) -> Suggestion:
        """Propose values for the chosen parameters, record the suggestion, and return it with
        a diff of the agent's current train.py that sets them."""
        if sampler not in SAMPLERS:
            raise LabError(
                f"sampler must be one of {', '.join(SAMPLERS)}, not {str(sampler)[:40]!r}"
            )
        chosen = self.choose(names)
        with self._lock:
            observations = self.observations()
            pending = self.store.unlinked(PENDING_HOURS, limit=PENDING_PER_AGENT * 50)
            self._link(observations, pending)
            held = {n: p.baseline for n, p in self.params.items() if n not in chosen}
            trials, dropped = self._trials(chosen, held, observations, pending)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            used, note = self._pick_sampler(sampler, chosen, complete)
            seed = self.store.last_id()
            study = optuna.create_study(
                direction=self.direction, sampler=self._sampler(used, seed, complete)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study.add_trials(trials)
                values = self._ask(study, chosen, trials)
            suggestion_id = self.store.add(agent, values, used, len(trials))
            self.store.prune_unlinked(agent, PENDING_PER_AGENT)
        diff, missing = self.workspace_diff(agent, values)
        return Suggestion(
            suggestion_id=suggestion_id,
            values=values,
            sampler=used,
            sampler_note=note,
            trials_complete=len(complete),
            trials_failed=sum(t.state == TrialState.FAIL for t in trials),
            trials_running=sum(t.state == TrialState.RUNNING for t in trials),
            trials_dropped=dropped,
            best=_best(complete, self.direction),
            space={n: self.params[n].describe() for n in chosen},
            diff=diff,
            not_in_workspace=missing,
            recent=self.recent(agent),
        )

    def _trials(
        self,
        chosen: Sequence[str],
        held: Mapping[str, int | float],
        observations: Sequence[Observation],
        pending: Sequence[Mapping[str, Any]],
    ) -> tuple[list[FrozenTrial], int]:
        """The study's trials: runs whose other parameters sit at the baseline, and pending
        suggestions for the same parameters; those with a value outside the space are dropped."""
        distributions = {n: self.params[n].distribution() for n in chosen}
        trials: list[FrozenTrial] = []
        dropped = 0
        for obs in observations:
            if any(obs.values[n] != v for n, v in held.items()):
                continue
            params = {n: obs.values[n] for n in chosen}
            if not all(self.params[n].contains(v) for n, v in params.items()):
                dropped += 1
                continue
            state = TRIAL_STATES.get(obs.status, TrialState.FAIL)
            value = obs.metric_value if state == TrialState.COMPLETE else None
            trials.append(
                create_trial(
                    state=state,
                    value=value,
                    params=params,
                    distributions=distributions,
                    user_attrs={"experiment_id": obs.experiment_id},
                )
            )
        for suggestion in pending:
            values = suggestion["params"]
            if set(values) != set(chosen) or not all(
                self.params[n].contains(v) for n, v in values.items()
            ):
                continue
            trials.append(
                create_trial(
                    state=TrialState.RUNNING,
                    params={n: values[n] for n in chosen},
                    distributions=distributions,
                    user_attrs={"suggestion_id": suggestion["id"]},
                )
            )
        return trials, dropped

    @staticmethod
    def _pick_sampler(
        asked: SamplerName, chosen: Sequence[str], complete: Sequence[FrozenTrial]
    ) -> tuple[str, str]:
        enough = len(complete) >= CMAES_MIN_TRIALS and len(chosen) >= 2
        if asked == "cmaes" and not enough:
            return "tpe", (
                f"CMA-ES needs at least {CMAES_MIN_TRIALS} completed trials and 2 parameters "
                f"(there are {len(complete)} and {len(chosen)}): TPE was used"
            )
        if asked == "auto" and enough:
            return "cmaes", f"auto: CMA-ES, warm-started from {len(complete)} completed trials"
        if asked == "auto":
            return "tpe", (
                f"auto: TPE (CMA-ES from {CMAES_MIN_TRIALS} completed trials and 2 parameters; "
                f"random for the first {TPE_STARTUP_TRIALS})"
            )
        return asked, f"{asked}, as asked"

    def _sampler(
        self, used: str, seed: int, complete: list[FrozenTrial]
    ) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if used == "cmaes":
                return optuna.samplers.CmaEsSampler(
                    seed=seed,
                    # Optuna's warm start reads source values as losses: a maximized metric starts cold.
                    source_trials=complete if self.direction == MINIMIZE else None,
                    warn_independent_sampling=False,
                )
            if used == "random":
                return optuna.samplers.RandomSampler(seed=seed)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=TPE_STARTUP_TRIALS,
                constant_liar=True,
                multivariate=True,
                warn_independent_sampling=False,
            )

    def _ask(
        self, study: optuna.Study, chosen: Sequence[str], trials: Sequence[FrozenTrial]
    ) -> dict[str, int | float]:
        """Ask the study, round and repair the values; ask again (a few times) if they equal a
        trial it already has."""
        distributions = {n: self.params[n].distribution() for n in chosen}
        seen = [t.params for t in trials]
        values: dict[str, int | float] = {}
        for _ in range(5):
            trial = study.ask(distributions)
            values = self._repair(dict(trial.params))
            if not any(_same_values(values, s) for s in seen):
                break
            seen.append(values)
        return values

    def _repair(self, values: dict[str, Any]) -> dict[str, int | float]:
        """Floats to 3 significant digits within the space; ints kept a multiple of what the
        file divides them by."""
        fixed: dict[str, int | float] = {}
        for name, value in values.items():
            p = self.params[name]
            if p.step is not None:
                fixed[name] = int(value)
            else:
                fixed[name] = min(max(float(f"{float(value):.3g}"), p.low), p.high)
        for name, value in list(fixed.items()):
            divisor_name = self.params[name].multiple_of
            if divisor_name is None:
                continue
            divisor = int(fixed.get(divisor_name, self.params[divisor_name].baseline))
            low, high = int(self.params[name].low), int(self.params[name].high)
            multiple = max(divisor, round(int(value) / divisor) * divisor)
            while multiple > high and multiple - divisor >= max(divisor, low):
                multiple -= divisor
            fixed[name] = min(max(multiple, low), high)
        return fixed

    def workspace_diff(
        self, agent: str, values: Mapping[str, int | float]
    ) -> tuple[str, list[str]]:
        """A unified diff of the agent's current train.py setting `values` (only those lines),
        and the names its file no longer holds as plain constants."""
        current = self.lab.workspace(agent).read_text(EDITABLE)
        try:
            literals = top_literals(parse_python(current), self.cpu)
        except (SyntaxError, ValueError):
            return "", sorted(values)
        lines = current.splitlines(keepends=True)
        missing = []
        for name, value in values.items():
            if name not in literals:
                missing.append(name)
                continue
            stmt, literal = literals[name]
            index = stmt.lineno - 1
            raw = lines[index].encode()
            start, end = literal.col_offset, literal.end_col_offset or literal.col_offset
            lines[index] = (raw[:start] + literal_text(value).encode() + raw[end:]).decode()
        return unified_diff({EDITABLE: current}, {EDITABLE: "".join(lines)}), missing

    def recent(self, agent: str, limit: int = 5) -> list[dict[str, Any]]:
        """The agent's latest suggestions and, where a run took one, its status and metric_value."""
        out = []
        for row in self.store.recent_of(agent, limit):
            entry = {key: row[key] for key in ("id", "params", "sampler", "experiment_id")}
            if row["experiment_id"]:
                run = self.lab.store.get_experiment(int(row["experiment_id"]))
                entry |= {"status": run.get("status"), "metric_value": run.get("metric_value")}
            out.append(entry)
        return out


def _best(complete: Sequence[FrozenTrial], direction: str) -> dict[str, Any] | None:
    """The completed trial with the best value: its experiment, value and parameter values."""
    best = min(
        (t for t in complete if t.value is not None),
        key=lambda t: loss(float(t.value or 0.0), direction),
        default=None,
    )
    if best is None:
        return None
    return {
        "experiment_id": best.user_attrs.get("experiment_id"),
        "metric_value": best.value,
        "values": best.params,
    }


def _same_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True if every value of `a` is in `b` and equal (floats to a relative 1e-9)."""
    return all(
        name in b and math.isclose(float(value), float(b[name]), rel_tol=1e-9, abs_tol=1e-12)
        for name, value in a.items()
    )


_SUGGESTERS: weakref.WeakKeyDictionary[Lab, Suggester] = weakref.WeakKeyDictionary()
_SUGGESTERS_LOCK = threading.Lock()


def suggester_for(lab: Lab) -> Suggester:
    """The lab's one Suggester (one lock for every MCP session on that lab), made on first use."""
    with _SUGGESTERS_LOCK:
        found = _SUGGESTERS.get(lab)
        if found is None:
            found = _SUGGESTERS[lab] = Suggester(lab)
        return found
