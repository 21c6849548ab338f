"""The promotion ladder: confirmed small-scale wins re-run at larger scales, and ideas combined.

Levels are the operator's (`LabSettings.scales`, e.g. S = the default budget, M = 5x the
budget, L = 5x the budget and a larger model via AR_SCALE). `promote` re-runs a confirmed
experiment's code at a larger level against that level's own baseline, with the server's
paired seeds, and records the transfer: the gain at the small level, the gain at the large
level, and a verdict (`transfers`, `does_not_transfer`, `within_noise`, or `failed` when a
run crashed). `combine` three-way merges several experiments' diffs onto the current best
of a level and queues the result; a conflict is reported with its hunks, never guessed.
"""

from __future__ import annotations

import logging
import math
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from server.levels import LevelMachines
from server.orientation import gain
from server.record import FINAL_STATUSES, IMPROVED, OK, SERVER_AGENT, ExperimentRow, code_authors
from server.run_queue import RunQueue
from server.settings import LabSettings, ScaleLevel
from server.standings import is_confirmed
from server.store import ExperimentNotFound, Store, utc_now
from server.untrusted import agent_text
from server.verdicts import PUBLISHED_DIGITS, Noise, published

log = logging.getLogger(__name__)

TRANSFERS, DOES_NOT_TRANSFER, WITHIN_NOISE, FAILED = (
    "transfers",
    "does_not_transfer",
    "within_noise",
    "failed",
)


MERGE_MAX_CHARS = 512 * 1024  # per text given to git merge-file
MERGE_TIMEOUT_SECONDS = 10.0
MAX_COMBINED = 8  # experiments per combine call


class PromotionRefused(ValueError):
    """A promotion or combination that cannot be done; the message says what to do instead."""


class LadderLab(RunQueue, Protocol):
    """What the ladder needs from the lab (server.lab.Lab provides it; the ladder never imports it)."""

    settings: LabSettings
    store: Store
    hardware: str
    machines: LevelMachines
    baseline_files: dict[str, str]
    _submit_lock: AbstractContextManager[Any]

    def experiment(self, experiment_id: int) -> ExperimentRow: ...
    def level(self, scale: str | None) -> ScaleLevel: ...
    def level_budget(self, scale: str | None) -> float: ...
    def plan_baselines(
        self, repeats: int | None = None, scale: str = "S"
    ) -> list[dict[str, Any]]: ...
    def noise(self, scale: str = "S") -> Noise: ...
    def confirmation_stats(self, experiment_id: int) -> dict[str, Any] | None: ...
    def leaderboard(self, limit: int = 10, scale: str = "S") -> list[dict[str, Any]]: ...
    def resolve_retry(self, experiment: ExperimentRow) -> ExperimentRow: ...
    def _check_quota(self, requester: str, new_runs: int = 1) -> None: ...


class PromotionLadder:
    """Promotions between scale levels and the transfer record, stored in the `promotions` table."""

    def __init__(self, lab: LadderLab) -> None:
        self.lab = lab
        self._lock = threading.RLock()
        self.promotions = lab.store.promotions
        self.promotions.ensure_table()

    # ------------------------------------------------------------ levels

    def levels(self) -> list[ScaleLevel]:
        return list(self.lab.settings.scales)

    def next_level(self, scale: str) -> ScaleLevel | None:
        names = [level.name for level in self.levels()]
        index = names.index(scale) if scale in names else 0
        return self.levels()[index + 1] if index + 1 < len(names) else None

    def level_device_hours(self, scale: str) -> float:
        return self.lab.store.seconds_at_scale(scale) / 3600

    # ------------------------------------------------------------ promote

    def promote(
        self, agent: str | None, experiment_id: int, level: str | None = None
    ) -> dict[str, Any]:
        """Queue the paired runs that measure whether a confirmed win transfers to `level` (default: the next).

        Only the experiment's author promotes it (or the operator: `agent` None, the CLI, the
        Lab API and auto-promotion). The promotion's runs are credited to the author and
        charged to whoever asked, through the same quota check as run_experiment: its paired
        runs and any baseline runs the level still lacks, all at once.
        """
        lab = self.lab
        experiment = lab.experiment(experiment_id)
        experiment_id = experiment["id"]
        author = experiment["agent"]
        if agent is not None and agent != author:
            raise PromotionRefused(
                f"#{experiment_id} is {author}'s; ask {author} or the operator to promote it "
                "(you may confirm_experiment it: confirmations credit the author)"
            )
        from_level = experiment.get("scale") or "S"
        if experiment["status"] != OK or experiment["kind"] not in ("experiment", "promotion"):
            raise PromotionRefused(
                f"experiment #{experiment_id} is a {experiment['kind']} run with status {experiment['status']}; "
                "only a successful experiment can be promoted"
            )
        if not is_confirmed(experiment, lab.confirmation_stats(experiment_id)):
            raise PromotionRefused(
                f"experiment #{experiment_id} is not a confirmed improvement (verdict "
                f"{experiment.get('verdict')}): only wins the server confirmed on fresh seeds "
                "(verdict improved) are promoted"
            )
        target = self._target_level(experiment_id, from_level, level)
        repeats = max(1, lab.settings.promotion_repeats)
        seeds = [lab.settings.seed + n for n in range(repeats)]
        # Planned before any lock: the code's hash, its diffs and review (bounded, but not free).
        template = lab.plan_run(
            author,
            f"promote #{experiment_id} {from_level}->{target.name}",
            kind="promotion",
            files=experiment["code"],
            parent_id=experiment_id,
            scale=target.name,
        )
        with self._lock, lab._submit_lock:
            existing = self.promotions.live_for(experiment_id, target.name)
            if existing:
                return existing
            if target.device_hours_quota is not None:
                used = self.level_device_hours(target.name)
                if used >= target.device_hours_quota:
                    raise PromotionRefused(
                        f"level {target.name} has used {used:.2f} of its {target.device_hours_quota:g} device-hours; "
                        "ask the operator to raise the quota"
                    )
            baselines = lab.plan_baselines(repeats, scale=target.name)
            runs = [
                {
                    **template,
                    "kind": "promotion" if n == 0 else "confirmation",
                    "seed": seed,
                    "description": f"promote #{experiment_id} {from_level}->{target.name} (seed {seed}): "
                    f"{experiment['description']}"[:480],
                }
                for n, seed in enumerate(seeds)
            ]
            # One quota check for everything this promotion queues, then the inserts.
            queued = lab.queue_runs(
                baselines + runs, agent, check_quota=agent is not None, reuse=False
            )
            run_ids = [run_id for run_id, _ in queued[len(baselines) :]]
            if len(run_ids) > 1:  # the later seeds are confirmations of the first promotion run
                lab.store.set_confirms(run_ids[1:], run_ids[0])
            baseline_ids = [self._baseline_for(target.name, seed) for seed in seeds]
            promotion_id = self.promotions.add(
                experiment_id=experiment_id,
                agent=author,
                requested_by=agent,
                from_level=from_level,
                to_level=target.name,
                run_ids=run_ids,
                baseline_ids=baseline_ids,
                seeds=seeds,
            )
            return self.promotion(promotion_id)

    def _target_level(self, experiment_id: int, from_level: str, level: str | None) -> ScaleLevel:
        """The level to promote to: `level`, or the next one above `from_level`."""
        names = [lv.name for lv in self.levels()]
        if level is None:
            target = self.next_level(from_level)
            if target is None:
                raise PromotionRefused(
                    f"#{experiment_id} is at the top level {from_level}; there is nothing above it"
                )
            return target
        if level not in names:
            raise PromotionRefused(
                f"level {level!r} does not exist; the levels are {', '.join(names)}"
            )
        if names.index(level) <= names.index(from_level):
            raise PromotionRefused(
                f"level {level} is not above {from_level}; promote to one of "
                f"{', '.join(names[names.index(from_level) + 1 :]) or '(none)'}"
            )
        return self.lab.level(level)

    def _baseline_for(self, scale: str, seed: int) -> int:
        run_id = self.lab.store.baseline_run_for(
            scale=scale,
            seed=seed,
            hardware=self.lab.machines.of(scale).hardware,
            budget_seconds=self.lab.level_budget(scale),
        )
        if run_id is None:
            raise PromotionRefused(
                f"no baseline run at level {scale} for seed {seed}; the baseline could not be queued"
            )
        return run_id

    # ------------------------------------------------------------ results

    def on_run_finished(self, experiment_id: int) -> None:
        """Called by the lab after every finished (or cancelled) run: completes promotions whose runs are all final."""
        with self._lock:
            self.settle()
            if self.lab.settings.auto_promote:
                self._maybe_auto_promote(experiment_id)

    def settle(self) -> list[int]:
        """Finish every `running` promotion whose runs are all final; returns their ids.

        Checked for all running promotions (there are few), not only the one whose run just
        finished: a run cancelled while queued, or re-queued after a server crash (followed
        to its retry), must not leave a promotion `running` forever. Also called at startup.
        """
        settled = []
        with self._lock:
            pending = self.promotions.running()
            for promotion in pending:
                rows: list[Mapping[str, Any]] = []
                for run_id in promotion["run_ids"] + promotion["baseline_ids"]:
                    try:
                        rows.append(self.lab.resolve_retry(self.lab.store.get_experiment(run_id)))
                    except ExperimentNotFound:
                        rows.append({"id": run_id, "kind": "run", "status": "missing"})
                if all(r["status"] in (*FINAL_STATUSES, "missing") for r in rows):
                    count = len(promotion["run_ids"])
                    self._finalize(promotion, rows[:count], rows[count:])
                    settled.append(promotion["id"])
        return settled

    def _finalize(
        self,
        promotion: dict[str, Any],
        runs: Sequence[Mapping[str, Any]],
        baselines: Sequence[Mapping[str, Any]],
    ) -> None:
        """Record the transfer verdict; a promotion whose runs failed ends `failed` with the reason.

        Never leaves the promotion `running`: whatever goes wrong while scoring it (an
        unmeasured small-level baseline, a missing run) ends in a final state with a note.
        """
        try:
            fields = self._score(promotion, runs, baselines)
        except Exception as exc:  # never `running` forever
            log.exception("promotion %s could not be scored", promotion["id"])
            fields = {
                "status": "failed",
                "verdict": FAILED,
                "note": f"the promotion could not be scored: {type(exc).__name__}",
            }
        fields.setdefault("finished_at", utc_now())
        self.promotions.update(promotion["id"], fields)

    def _score(
        self,
        promotion: dict[str, Any],
        runs: Sequence[Mapping[str, Any]],
        baselines: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        lab, to_level, from_level = self.lab, promotion["to_level"], promotion["from_level"]
        failed = [r for r in [*runs, *baselines] if r["status"] != OK]
        small_gain = published(self._small_gain(promotion["experiment_id"], from_level))
        if failed:
            first = failed[0]
            what = "the baseline" if first["kind"] == "baseline" else "the promoted code"
            # The run's own failure reason is not copied here: it may quote the author's model
            # (names in a rejected artifact), and this note is shown to everyone as it is.
            return {
                "status": "failed",
                "verdict": FAILED,
                "small_gain": small_gain,
                "note": f"{what} failed at level {to_level}: run #{first['id']} {first['status']} "
                f"(get_experiment({first['id']}) shows why)",
            }
        direction = lab.store.direction
        differences = [
            gain(r["metric_value"], b["metric_value"], direction)
            for r, b in zip(runs, baselines, strict=True)
        ]  # positive = better
        large_gain = round(statistics.fmean(differences), PUBLISHED_DIGITS)  # as published
        noise = lab.noise(to_level)
        n = len(differences)
        threshold = lab.settings.noise_k * noise.sd * math.sqrt(2.0 / n)
        if large_gain > threshold:
            verdict = TRANSFERS
        elif large_gain < -threshold:
            verdict = DOES_NOT_TRANSFER
        else:
            verdict = WITHIN_NOISE
        small = (
            f"gain {small_gain:+.4f} at {from_level} (confirmed mean vs its baseline)"
            if small_gain is not None
            else f"gain at {from_level} unknown (its baseline is not measured on this hardware and budget)"
        )
        return {
            "status": "done",
            "small_gain": small_gain,
            "large_gain": large_gain,
            "large_sd": published(statistics.stdev(differences)) if n > 1 else None,
            "threshold": published(threshold),
            "verdict": verdict,
            "note": f"{small}, {large_gain:+.4f} at {to_level} (mean of {n} paired differences, "
            f"threshold {threshold:.4f})",
        }

    def _small_gain(self, experiment_id: int, scale: str) -> float | None:
        stats = self.lab.confirmation_stats(experiment_id)
        mean = stats["mean"] if stats else self.lab.experiment(experiment_id).get("metric_value")
        base = self.lab.noise(scale).mean
        return None if mean is None or base is None else gain(mean, base, self.lab.store.direction)

    def _maybe_auto_promote(self, experiment_id: int) -> None:
        """After a confirmation run: promote the experiment it confirms once the server's
        confirmation turned it `improved` (server.verdicts: fresh seeds, the campaign's error budget)."""
        row = self.lab.store.get_experiment(experiment_id)
        original_id = row.get("confirms_id")
        if row["kind"] != "confirmation" or original_id is None:
            return
        original = self.lab.store.get_experiment(original_id)
        if original["kind"] != "experiment" or original.get("verdict") != IMPROVED:
            return
        if self.lab.store.live_confirmation_count(original_id):
            return
        try:
            self.promote(None, original_id)  # the operator's policy: charged to nobody
        except PromotionRefused as exc:
            log.info("not auto-promoting #%s: %s", original_id, exc)

    # ------------------------------------------------------------ reading

    def promotion(self, promotion_id: int) -> dict[str, Any]:
        promotion = self.promotions.get(promotion_id)
        if promotion is None:
            raise PromotionRefused(f"promotion {promotion_id} does not exist")
        return promotion

    def ladder(self, experiment_id: int) -> dict[str, Any]:
        """One idea's climb: its result at its own level and every promotion with both gains."""
        experiment = self.lab.experiment(experiment_id)
        experiment_id = experiment["id"]
        stats = self.lab.confirmation_stats(experiment_id)
        promotions = self.promotions.of_experiment(experiment_id)
        return {
            "experiment_id": experiment_id,
            "description": agent_text(experiment["description"], experiment["agent"]),
            "level": experiment.get("scale") or "S",
            "metric_value": experiment.get("metric_value"),
            "confirmed": stats,
            "promotions": promotions,
            "levels": self.lab.machines.describe(),  # where each level runs: device, data, clock
        }

    # ------------------------------------------------------------ combine

    def combine(
        self,
        agent: str | None,
        experiment_ids: list[int],
        scale: str = "S",
        description: str | None = None,
    ) -> dict[str, Any]:
        """Three-way merge several experiments' diffs onto the best of `scale` and queue the result.

        The combination is a new experiment of `agent` (who asks and is charged, through the
        same quota check as run_experiment; None: the operator). The quota is looked at before
        any merge work, and again when the run is queued.
        """
        lab = self.lab
        if len(experiment_ids) < 2 or len(set(experiment_ids)) != len(experiment_ids):
            raise PromotionRefused("send two or more distinct experiment ids to combine")
        if len(experiment_ids) > MAX_COMBINED:
            raise PromotionRefused(
                f"{len(experiment_ids)} experiments is too many to combine at once; send at most {MAX_COMBINED}"
            )
        lab.level(scale)
        experiments = [lab.experiment(i) for i in experiment_ids]
        for e in experiments:
            if e["status"] != OK:
                raise PromotionRefused(
                    f"experiment #{e['id']} is {e['status']}; combine only successful experiments"
                )
        if agent is not None:
            lab._check_quota(agent)  # before the merges: a refused request costs no merge work
        board = lab.leaderboard(limit=1, scale=scale)
        base_id = board[0]["id"] if board else None
        merged = (
            dict(lab.experiment(base_id)["code"])
            if base_id is not None
            else dict(lab.baseline_files)
        )
        base_authors = lab.store.code_authors_of(base_id)
        unconfirmed = []
        for experiment in experiments:
            if not is_confirmed(experiment, lab.confirmation_stats(experiment["id"])):
                unconfirmed.append(experiment["id"])
            parent_id = experiment.get("parent_id")
            parent_code = (
                lab.experiment(parent_id)["code"]
                if parent_id is not None
                else dict(lab.baseline_files)
            )
            for name, theirs in experiment["code"].items():
                ours = merged.get(name, "")
                base = parent_code.get(name, lab.baseline_files.get(name, ""))
                text, conflicts = three_way_merge(ours, base, theirs)
                if conflicts:
                    # The hunks quote several agents' code: one untrusted block labelled with
                    # every author involved (plain only to a reader who wrote all of it).
                    involved = {a for e in experiments for a in code_authors(e)} | set(base_authors)
                    raise PromotionRefused(
                        f"experiment #{experiment['id']} conflicts with the code being combined in {name} "
                        f"({len(conflicts)} conflicting hunk(s)); nothing was queued. Conflicts:\n"
                        + (agent_text("\n".join(conflicts), sorted(involved)) or "")
                    )
                merged[name] = text
        label = description or "combine " + " + ".join(f"#{i}" for i in experiment_ids)
        run_id, reused = lab.submit(
            agent or SERVER_AGENT,
            label,
            requested_by=agent,
            files=merged,
            parent_id=base_id,
            scale=scale,
            code_from=experiment_ids,
        )
        return {
            "experiment_id": run_id,
            "reused_from": reused,
            "base_id": base_id,
            "combined": experiment_ids,
            "unconfirmed": unconfirmed,
        }


def three_way_merge(ours: str, base: str, theirs: str) -> tuple[str, list[str]]:
    """`git merge-file` on three texts: the merged text and, for a conflict, each conflicting hunk.

    Bounded: each text at most MERGE_MAX_CHARS (editable files are capped well below that) and
    the merge at most MERGE_TIMEOUT_SECONDS; it runs under no lock of the server's.
    """
    for label, text in (("current", ours), ("base", base), ("incoming", theirs)):
        if len(text) > MERGE_MAX_CHARS:
            raise PromotionRefused(
                f"the {label} code is {len(text):,} characters, more than the {MERGE_MAX_CHARS:,} a merge "
                "accepts; combine smaller changes"
            )
    with tempfile.TemporaryDirectory(prefix="ar-merge-") as tmp:
        paths = []
        for label, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / label
            path.write_text(text)
            paths.append(str(path))
        try:
            proc = subprocess.run(
                [
                    "git",
                    "merge-file",
                    "-p",
                    "-L",
                    "current",
                    "-L",
                    "base",
                    "-L",
                    "incoming",
                    *paths,
                ],
                capture_output=True,
                text=True,
                timeout=MERGE_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PromotionRefused(
                f"the three-way merge took longer than {MERGE_TIMEOUT_SECONDS:g} s; nothing was queued. "
                "Combine fewer or smaller changes, or apply one on top of the other by hand"
            ) from None
    if proc.returncode < 0 or proc.returncode > 127:
        raise PromotionRefused(f"the merge failed: {proc.stderr.strip()[:200]}")
    conflicts: list[str] = []
    if proc.returncode > 0:
        block: list[str] = []
        inside = False
        for line in proc.stdout.splitlines():
            if line.startswith("<<<<<<< "):
                inside, block = True, [line]
            elif inside:
                block.append(line)
                if line.startswith(">>>>>>> "):
                    conflicts.append("\n".join(block))
                    inside = False
    return proc.stdout, conflicts
