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

import json
import logging
import math
import statistics
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.store import FINAL_STATUSES, OK, utc_now, write_transaction

if TYPE_CHECKING:
    from server.lab import Lab, ScaleLevel

log = logging.getLogger(__name__)

TRANSFERS, DOES_NOT_TRANSFER, WITHIN_NOISE, FAILED = (
    "transfers",
    "does_not_transfer",
    "within_noise",
    "failed",
)


class PromotionRefused(ValueError):
    """A promotion or combination that cannot be done; the message says what to do instead."""


class PromotionLadder:
    """Promotions between scale levels and the transfer record, stored in the `promotions` table."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._lock = threading.RLock()
        db = lab.store.db
        with write_transaction(db):
            if "promotions" not in db.table_names():
                db.table("promotions").create(
                    {
                        "id": int,
                        "experiment_id": int,
                        "agent": str,
                        "from_level": str,
                        "to_level": str,
                        "status": str,
                        "run_ids": str,
                        "baseline_ids": str,
                        "seeds": str,
                        "small_gain": float,
                        "large_gain": float,
                        "large_sd": float,
                        "threshold": float,
                        "verdict": str,
                        "note": str,
                        "created_at": str,
                        "finished_at": str,
                    },
                    pk="id",
                )
                db.table("promotions").create_index(["experiment_id"])

    # ------------------------------------------------------------ levels

    def levels(self) -> list[ScaleLevel]:
        return list(self.lab.settings.scales)

    def next_level(self, scale: str) -> ScaleLevel | None:
        names = [level.name for level in self.levels()]
        index = names.index(scale) if scale in names else 0
        return self.levels()[index + 1] if index + 1 < len(names) else None

    def level_device_hours(self, scale: str) -> float:
        row = self.lab.store.db.execute(
            "SELECT COALESCE(SUM(total_seconds), 0) FROM experiments WHERE COALESCE(scale, 'S') = ?",
            [scale],
        ).fetchone()
        return float(row[0]) / 3600

    # ------------------------------------------------------------ promote

    def promote(self, agent: str, experiment_id: int, level: str | None = None) -> dict[str, Any]:
        """Queue the paired runs that measure whether a confirmed win transfers to `level` (default: the next)."""
        lab = self.lab
        with self._lock:
            experiment = lab.experiment(experiment_id)
            from_level = experiment.get("scale") or "S"
            if experiment["status"] != OK or experiment["kind"] not in ("experiment", "promotion"):
                raise PromotionRefused(
                    f"experiment #{experiment_id} is a {experiment['kind']} run with status {experiment['status']}; "
                    "only a successful experiment can be promoted"
                )
            stats = lab.confirmation_stats(experiment_id)
            if not stats or stats["n"] < 2:
                raise PromotionRefused(
                    f"experiment #{experiment_id} was never confirmed; run confirm_experiment({experiment_id}, repeats=2) "
                    "first: only wins that survive more seeds are promoted"
                )
            names = [lv.name for lv in self.levels()]
            if level is None:
                target = self.next_level(from_level)
                if target is None:
                    raise PromotionRefused(
                        f"#{experiment_id} is at the top level {from_level}; there is nothing above it"
                    )
            else:
                if level not in names:
                    raise PromotionRefused(
                        f"level {level!r} does not exist; the levels are {', '.join(names)}"
                    )
                target = lab.level(level)
                if names.index(level) <= names.index(from_level):
                    raise PromotionRefused(
                        f"level {level} is not above {from_level}; promote to one of "
                        f"{', '.join(names[names.index(from_level) + 1 :]) or '(none)'}"
                    )
            existing = list(
                lab.store.db.query(
                    "SELECT * FROM promotions WHERE experiment_id = ? AND to_level = ? AND COALESCE(verdict, '') != 'failed'",
                    [experiment_id, target.name],
                )
            )
            if existing:
                return self._decode(existing[0])
            if target.device_hours_quota is not None:
                used = self.level_device_hours(target.name)
                if used >= target.device_hours_quota:
                    raise PromotionRefused(
                        f"level {target.name} has used {used:.2f} of its {target.device_hours_quota:g} device-hours; "
                        "ask the operator to raise the quota"
                    )
            repeats = max(1, lab.settings.promotion_repeats)
            lab.ensure_baseline(repeats, scale=target.name)
            seeds = [lab.settings.seed + n for n in range(repeats)]
            baseline_ids = [self._baseline_for(target.name, seed) for seed in seeds]
            run_ids: list[int] = []
            for seed in seeds:
                first = run_ids[0] if run_ids else None
                run_id, _ = lab.submit(
                    agent,
                    f"promote #{experiment_id} {from_level}->{target.name} (seed {seed}): {experiment['description']}"[
                        :480
                    ],
                    kind="promotion" if first is None else "confirmation",
                    files=experiment["code"],
                    parent_id=experiment_id,
                    confirms_id=first,
                    seed=seed,
                    check_quota=False,
                    reuse=False,
                    scale=target.name,
                )
                run_ids.append(run_id)
            with write_transaction(lab.store.db):
                promotion_id = (
                    lab.store.db.table("promotions")
                    .insert(
                        {
                            "experiment_id": experiment_id,
                            "agent": agent,
                            "from_level": from_level,
                            "to_level": target.name,
                            "status": "running",
                            "run_ids": json.dumps(run_ids),
                            "baseline_ids": json.dumps(baseline_ids),
                            "seeds": json.dumps(seeds),
                            "created_at": utc_now(),
                        }
                    )
                    .last_pk
                )
            return self.promotion(int(promotion_id))  # type: ignore[arg-type]

    def _baseline_for(self, scale: str, seed: int) -> int:
        rows = list(
            self.lab.store.db.query(
                "SELECT id FROM experiments WHERE kind = 'baseline' AND COALESCE(scale, 'S') = ? AND seed = ? "
                "AND hardware = ? AND budget_seconds = ? AND status NOT IN ('crash', 'timeout', 'integrity_fail', "
                "'cancelled', 'interrupted') ORDER BY id DESC LIMIT 1",
                [scale, seed, self.lab.hardware, self.lab.level_budget(scale)],
            )
        )
        if not rows:
            raise PromotionRefused(
                f"no baseline run at level {scale} for seed {seed}; the baseline could not be queued"
            )
        return int(rows[0]["id"])

    # ------------------------------------------------------------ results

    def on_run_finished(self, experiment_id: int) -> None:
        """Called by the lab after every finished run: completes promotions whose runs are all final."""
        with self._lock:
            pending = [
                self._decode(r)
                for r in self.lab.store.db.query(
                    "SELECT * FROM promotions WHERE status = 'running'"
                )
            ]
            for promotion in pending:
                ids = promotion["run_ids"] + promotion["baseline_ids"]
                if experiment_id not in ids:
                    continue
                rows = [self.lab.store.get_experiment(i) for i in ids]
                if all(r["status"] in FINAL_STATUSES for r in rows):
                    self._finalize(
                        promotion,
                        rows[: len(promotion["run_ids"])],
                        rows[len(promotion["run_ids"]) :],
                    )
            if self.lab.settings.auto_promote:
                self._maybe_auto_promote(experiment_id)

    def _finalize(
        self, promotion: dict[str, Any], runs: list[dict[str, Any]], baselines: list[dict[str, Any]]
    ) -> None:
        lab, to_level = self.lab, promotion["to_level"]
        failed = [r for r in runs + baselines if r["status"] != OK]
        small_gain = self._small_gain(promotion["experiment_id"], promotion["from_level"])
        fields: dict[str, Any] = {
            "status": "done",
            "finished_at": utc_now(),
            "small_gain": small_gain,
        }
        if failed:
            first = failed[0]
            what = "the baseline" if first["kind"] == "baseline" else "the promoted code"
            fields.update(
                verdict=FAILED,
                note=f"{what} failed at level {to_level}: run #{first['id']} {first['status']}: "
                f"{first.get('failure_reason') or ''}".strip(),
            )
        else:
            differences = [
                b["val_bpb"] - r["val_bpb"] for r, b in zip(runs, baselines, strict=True)
            ]  # positive = better
            large_gain = statistics.fmean(differences)
            noise = lab.noise(to_level)
            n = len(differences)
            threshold = lab.settings.noise_k * noise.sd * math.sqrt(2.0 / n)
            if large_gain > threshold:
                verdict = TRANSFERS
            elif large_gain < -threshold:
                verdict = DOES_NOT_TRANSFER
            else:
                verdict = WITHIN_NOISE
            fields.update(
                large_gain=large_gain,
                large_sd=statistics.stdev(differences) if n > 1 else None,
                threshold=threshold,
                verdict=verdict,
                note=f"gain {small_gain:+.4f} at {promotion['from_level']} (confirmed mean vs its baseline), "
                f"{large_gain:+.4f} at {to_level} (mean of {n} paired differences, threshold {threshold:.4f})",
            )
        with write_transaction(lab.store.db):
            lab.store.db.table("promotions").update(promotion["id"], fields)

    def _small_gain(self, experiment_id: int, scale: str) -> float | None:
        stats = self.lab.confirmation_stats(experiment_id)
        mean = stats["mean"] if stats else self.lab.experiment(experiment_id).get("val_bpb")
        base = self.lab.noise(scale).mean
        return None if mean is None or base is None else base - mean

    def _maybe_auto_promote(self, experiment_id: int) -> None:
        """After a confirmation run: promote the confirmed experiment if its mean beats the best by the noise."""
        row = self.lab.store.get_experiment(experiment_id)
        original_id = row.get("confirms_id")
        if row["kind"] != "confirmation" or original_id is None:
            return
        original = self.lab.store.get_experiment(original_id)
        if original["kind"] != "experiment":
            return
        live = self.lab.store.db.execute(
            "SELECT COUNT(*) FROM experiments WHERE confirms_id = ? AND status IN ('queued', 'running')",
            [original_id],
        ).fetchone()[0]
        stats = self.lab.confirmation_stats(original_id)
        if live or not stats or stats["n"] < 2:
            return
        scale = original.get("scale") or "S"
        noise = self.lab.noise(scale)
        if noise.mean is None or noise.mean - stats["mean"] <= self.lab.settings.noise_k * noise.sd:
            return
        try:
            self.promote(original["agent"], original_id)
        except PromotionRefused as exc:
            log.info("not auto-promoting #%s: %s", original_id, exc)

    # ------------------------------------------------------------ reading

    def promotion(self, promotion_id: int) -> dict[str, Any]:
        rows = list(
            self.lab.store.db.query("SELECT * FROM promotions WHERE id = ?", [promotion_id])
        )
        if not rows:
            raise PromotionRefused(f"promotion {promotion_id} does not exist")
        return self._decode(rows[0])

    def ladder(self, experiment_id: int) -> dict[str, Any]:
        """One idea's climb: its result at its own level and every promotion with both gains."""
        experiment = self.lab.experiment(experiment_id)
        stats = self.lab.confirmation_stats(experiment_id)
        promotions = [
            self._decode(r)
            for r in self.lab.store.db.query(
                "SELECT * FROM promotions WHERE experiment_id = ? ORDER BY id", [experiment_id]
            )
        ]
        return {
            "experiment_id": experiment_id,
            "description": experiment["description"],
            "level": experiment.get("scale") or "S",
            "val_bpb": experiment.get("val_bpb"),
            "confirmed": stats,
            "promotions": promotions,
        }

    @staticmethod
    def _decode(row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        for key in ("run_ids", "baseline_ids", "seeds"):
            row[key] = json.loads(row.get(key) or "[]")
        return row

    # ------------------------------------------------------------ combine

    def combine(
        self,
        agent: str,
        experiment_ids: list[int],
        scale: str = "S",
        description: str | None = None,
    ) -> dict[str, Any]:
        """Three-way merge several experiments' diffs onto the best of `scale` and queue the result."""
        lab = self.lab
        if len(experiment_ids) < 2 or len(set(experiment_ids)) != len(experiment_ids):
            raise PromotionRefused("send two or more distinct experiment ids to combine")
        lab.level(scale)
        experiments = [lab.experiment(i) for i in experiment_ids]
        for e in experiments:
            if e["status"] != OK:
                raise PromotionRefused(
                    f"experiment #{e['id']} is {e['status']}; combine only successful experiments"
                )
        board = lab.leaderboard(limit=1, scale=scale)
        base_id = board[0]["id"] if board else None
        merged = (
            dict(lab.experiment(base_id)["code"])
            if base_id is not None
            else dict(lab.baseline_files)
        )
        unconfirmed = []
        for experiment in experiments:
            stats = lab.confirmation_stats(experiment["id"])
            if not stats or stats["n"] < 2:
                unconfirmed.append(experiment["id"])
            parent_code = (
                lab.experiment(experiment["parent_id"])["code"]
                if experiment.get("parent_id") is not None
                else dict(lab.baseline_files)
            )
            for name, theirs in experiment["code"].items():
                ours = merged.get(name, "")
                base = parent_code.get(name, lab.baseline_files.get(name, ""))
                text, conflicts = three_way_merge(ours, base, theirs)
                if conflicts:
                    raise PromotionRefused(
                        f"experiment #{experiment['id']} conflicts with the code being combined in {name} "
                        f"({len(conflicts)} conflicting hunk(s)); nothing was queued. Conflicts:\n"
                        + "\n".join(conflicts)
                    )
                merged[name] = text
        label = description or "combine " + " + ".join(f"#{i}" for i in experiment_ids)
        run_id, reused = lab.submit(agent, label, files=merged, parent_id=base_id, scale=scale)
        return {
            "experiment_id": run_id,
            "reused_from": reused,
            "base_id": base_id,
            "combined": experiment_ids,
            "unconfirmed": unconfirmed,
        }


def three_way_merge(ours: str, base: str, theirs: str) -> tuple[str, list[str]]:
    """`git merge-file` on three texts: the merged text and, for a conflict, each conflicting hunk."""
    with tempfile.TemporaryDirectory(prefix="ar-merge-") as tmp:
        paths = []
        for label, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / label
            path.write_text(text)
            paths.append(str(path))
        proc = subprocess.run(
            ["git", "merge-file", "-p", "-L", "current", "-L", "base", "-L", "incoming", *paths],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
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
