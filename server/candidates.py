"""The second step of a verdict: a candidate's fresh-seed runs, queued and judged by the server.

A `candidate` (server.verdicts.screen) is re-run by the server on random fresh seeds; only
those runs (described SERVER_CONFIRMATION: agents cannot write a confirmation's description, nor
cancel these runs) decide it. An agent's confirm_experiment runs add to a leaderboard mean,
never to a verdict: a candidate cannot pick its own draws.

- A server run that fails because of its code (crash, timeout, integrity failure, training past
  the budget) ends the candidate `within_noise`: code that fails on some seeds cannot count,
  and failing on purpose must not let the good draws through alone.
- A run that failed because of the machine (contended, cancelled by the operator, lost with its
  node) is replaced, up to twice the planned number in all.
- Runs at different seeds that agree to the last bit, or whose spread is far below the noise
  (< NOISE_FLOOR x its variance), come from code that ignores the seed: `seed_ignored`.
- A confirmed improvement gets `holdout_runs` more server runs that also score the sealed holdout.

`settle_all` re-judges every candidate (at start-up, after a cancel, after a lost run), so no
verdict stays `candidate` for want of an event.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Protocol

from server.baselines import is_comparable
from server.record import (
    CANDIDATE,
    CRASH,
    IMPROVED,
    INTEGRITY_FAIL,
    OK,
    QUEUED,
    RUNNING,
    SERVER_CONFIRMATION,
    TIMEOUT,
    WITHIN_NOISE,
)
from server.recording import DISQUALIFYING_FLAGS
from server.refusals import LabError
from server.seed_checks import SEED_IGNORED, Figures, seed_ignored_flag
from server.settings import LabSettings
from server.store import Store
from server.verdicts import Noise, Reference, Verdict, judge_confirmation, published

log = logging.getLogger("server.lab")

NOISE_FLOOR = 0.01  # a group's variance below 1% of the noise's: the code ignores the seed
# Runs at different seeds whose tie-break figures agree within this share of their size ignore
# the seed (honest seeds move a log-loss by about a percent; a fixed stream nudged by the seed
# in its last bits moves it by 1e-12 of itself).
TIE_BREAK_FLOOR = 1e-6
CODE_FAILURES = (CRASH, TIMEOUT, INTEGRITY_FAIL)


class CandidateLab(Protocol):
    """The part of the Lab the candidates' judge needs (server.lab.Lab provides it)."""

    settings: LabSettings
    store: Store

    def confirm(
        self, agent: str | None, experiment_id: int, repeats: int, *, server_runs: Any = None
    ) -> list[int]: ...
    def cancel(self, agent: str | None, experiment_id: int) -> str: ...


def is_candidate_run(row: Mapping[str, Any]) -> bool:
    return str(row.get("description") or "").startswith(SERVER_CONFIRMATION)


class Candidates:
    """Queues and judges the server's fresh-seed runs of candidates, one judge at a time."""

    def __init__(
        self,
        lab: CandidateLab,
        reference: Callable[[Mapping[str, Any], int | None], Reference | None],
        noise: Callable[[Mapping[str, Any]], Noise],
    ) -> None:
        self.lab = lab
        self.reference_for = reference  # (the experiment's row, exclude id) -> its reference
        self.noise_for = noise  # the experiment's row -> the noise of its setting
        # Two runs of one candidate can finish at once (two slots): one judge at a time.
        self._lock = threading.RLock()

    def confirm(self, experiment_id: int) -> list[int]:
        """Queue the server's runs a candidate still lacks (server.verdicts, step 2)."""
        with self._lock:
            return self._queue_missing(experiment_id)

    def judge(self, experiment_id: int) -> Verdict | None:
        """Decide a candidate once enough of its server runs are in (None: not yet)."""
        with self._lock:
            return self._judge(experiment_id)

    def settle_all(self) -> None:
        """Judge every candidate: queue what is missing, decide what can be decided."""
        for experiment_id in self.lab.store.experiments_with_verdict_anywhere(CANDIDATE):
            try:
                self.judge(experiment_id)
            except Exception:  # one bad row must not stop the others (nor the server's start)
                log.exception("candidate #%s could not be judged", experiment_id)

    # ------------------------------------------------------------ internals

    def _server_runs(self, experiment_id: int) -> list[dict[str, Any]]:
        return [r for r in self.lab.store.confirmation_runs(experiment_id) if is_candidate_run(r)]

    def _queue_missing(self, experiment_id: int) -> list[int]:
        runs = self._server_runs(experiment_id)
        have = [
            r
            for r in runs
            if r["status"] in (QUEUED, RUNNING) or (r["status"] == OK and is_comparable(r))
        ]
        missing = self.lab.settings.confirm_runs - len(have)
        if missing <= 0:
            return []
        try:
            return self.lab.confirm(None, experiment_id, missing, server_runs="candidate")
        except LabError as exc:
            log.warning("could not confirm candidate #%s: %s", experiment_id, exc)
            return []

    def _judge(self, experiment_id: int) -> Verdict | None:
        original = self.lab.store.get_experiment(experiment_id)
        if original["kind"] != "experiment" or original.get("verdict") != CANDIDATE:
            return None
        budget = self.lab.settings.error_budget()
        runs = self._server_runs(experiment_id)
        good = [
            r
            for r in runs
            if r["status"] == OK and r["metric_value"] is not None and is_comparable(r)
        ]
        good = good[: budget.confirm_runs]
        live = [r for r in runs if r["status"] in (QUEUED, RUNNING)]
        failed = [r for r in runs if r["status"] in CODE_FAILURES or _over_budget(r)]
        noise = self.noise_for(original)
        flags = list(original.get("flags") or [])
        ignored = self._seed_ignored(original, good, noise)
        if ignored and not any(f.get("name") == "seed_ignored" for f in flags):
            flags.append(ignored)
        disqualifications = [f["reason"] for f in flags if f.get("name") in DISQUALIFYING_FLAGS]
        reference = self.reference_for(original, experiment_id)
        if reference is None:
            return None  # nothing to compare with on its setting (the baseline is re-measured)
        decided: Verdict | None
        if failed:
            first = failed[0]
            decided = Verdict(
                WITHIN_NOISE,
                f"failed on a fresh seed: run #{first['id']} ended {first['status']}"
                f"{' (trained past its budget)' if first['status'] == OK else ''}; code that fails "
                "on some seeds cannot count as an improvement",
                0.0,
            )
        else:
            decided = judge_confirmation(
                values=[r["metric_value"] for r in good],
                reference=reference,
                noise=noise,
                budget=budget,
                disqualifications=disqualifications,
            )
        if decided is None:
            if live:
                return None
            if len(runs) < 2 * budget.confirm_runs:
                self._queue_missing(experiment_id)
                return None
            decided = Verdict(
                WITHIN_NOISE,
                f"could not be confirmed: {len(runs) - len(good)} of its {len(runs)} fresh-seed runs "
                "ran on a contended machine or were cancelled",
                0.0,
            )
        for run in live:  # decided early: the server's other runs are not needed
            if run["status"] == QUEUED:
                with suppress(LabError):
                    self.lab.cancel(None, run["id"])
        self._record(original, decided, good, flags, disqualifications, reference)
        if decided.verdict == IMPROVED and self.lab.settings.holdout_runs > 0:
            try:
                self.lab.confirm(
                    None, experiment_id, self.lab.settings.holdout_runs, server_runs="holdout"
                )
            except LabError as exc:
                log.warning("could not queue holdout runs for #%s: %s", experiment_id, exc)
        return decided

    def _record(
        self,
        original: Mapping[str, Any],
        decided: Verdict,
        good: Sequence[Mapping[str, Any]],
        flags: list[dict[str, Any]],
        disqualifications: Sequence[str],
        reference: Reference,
    ) -> None:
        metrics = dict(original.get("metrics") or {})
        metrics["verdict_note"] = decided.note
        metrics["confirmation"] = {
            "runs": len(good),
            "z": None if decided.z is None else round(decided.z, 2),
            "needed": published(decided.threshold),
            "reference": reference.label,
        }
        mean = statistics.fmean([r["metric_value"] for r in good]) if good else None
        self.lab.store.update_experiment(
            original["id"],
            verdict=decided.verdict,
            metrics=metrics,
            flags=flags,
            disqualified=int(bool(original.get("disqualified")) or bool(disqualifications)),
            delta_best=published(reference.gain(mean))
            if mean is not None
            else original.get("delta_best"),
        )
        log.info("#%s candidate judged: %s (%s)", original["id"], decided.verdict, decided.note)

    def _seed_ignored(
        self, original: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], noise: Noise
    ) -> dict[str, Any] | None:
        """The `seed_ignored` flag when one code's runs at different seeds agree: to the last bit
        (full precision, sealed, where the runner kept it), all at 4 decimals, or with a spread
        below NOISE_FLOOR x the noise's variance (a fixed stream nudged by the seed in its last
        bits). Honest code at 5 runs falls below that floor about twice in 10,000 candidates."""
        rows = [original, *runs]
        ids = [int(r["id"]) for r in rows]
        exact = self.lab.store.sealed.exact_values(ids)
        # A target with a tie-break reports a continuous companion of its metric: where every run
        # has it, the checks read it too (an accuracy repeats across honest seeds; its log-loss
        # does not).
        ties = self.lab.store.sealed.tie_break_values(ids)
        values = {
            int(r["seed"]): exact.get(int(r["id"]), r.get("metric_value"))
            for r in rows
            if r.get("metric_value") is not None
        }
        if len(exact) == len(rows):
            figures: dict[int, Figures | None] = {
                int(r["seed"]): (exact[int(r["id"])], ties[int(r["id"])])
                if len(ties) == len(rows)
                else exact[int(r["id"])]
                for r in rows
            }
            flag = seed_ignored_flag(figures)
            if flag:
                return dict(flag)
        present = [v for v in values.values() if v is not None]
        too_close = len(present) >= 3 and (
            len(set(present)) == 1 or statistics.variance(present) < NOISE_FLOOR * noise.sd**2
        )
        if len(ties) == len(rows):
            # The discrete metric may agree by chance; its continuous companion may not, even
            # when a fixed stream is nudged by the seed in its last bits.
            values = {int(r["seed"]): ties[int(r["id"])] for r in rows}
            present = list(values.values())
            too_close = len(present) >= 3 and statistics.pstdev(present) <= TIE_BREAK_FLOOR * max(
                abs(statistics.fmean(present)), 1e-12
            )
        if too_close:
            spread = statistics.pstdev(present)
            seeds = ", ".join(str(seed) for seed in sorted(values))
            return {
                "name": SEED_IGNORED,
                "reason": f"runs of this code at seeds {seeds} agree within {spread:.2e} (the noise "
                f"is {noise.sd:.4f}): its results do not move with the seed (AR_SEED), whatever the "
                "code says; a stream the program chose measures luck, not an idea, and can never "
                "count as an improvement. Seed every RNG with SEED itself",
                "lines": [],
            }
        return None


def _over_budget(row: Mapping[str, Any]) -> bool:
    return row["status"] == OK and any(
        f.get("name") == "over_budget" for f in row.get("flags") or []
    )
