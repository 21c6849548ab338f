"""Ablations of stacked wins: which parts of a change carry its gain, and whether they add up.

`ablate` re-runs an experiment that made several changes at once, leaving out one part at a
time. The parts are the ideas a `combine` merged (its description "combine #a + #b ..." names
them, and merging them again onto its parent must give exactly its code), else the hunks of its
diff against its parent. For each of a few fresh seeds (server.verdicts.fresh_seed, the same
seeds for every variant: paired), the server runs the full change, the parent's code (base) and
every "all parts but one" variant, as runs of kind `ablation`: never ranked, never noise, no
verdict. The whole ablation is one request, charged to whoever asked and checked against its
quota at once.

The analysis is computed on read once every run is final: a part's contribution is the mean
over seeds of how much better the full change is than the change without the part (positive:
the part helps, in the target's direction) with its paired sd; the total gain is the mean of
how much better full is than the base; the sum of contributions
is compared with the total gain against the server's noise sd (lab.noise): "adds up",
"sub-additive" (the parts overlap: together they gain less than separately) or "interacting"
(each part needs the others: together they gain more).
"""

from __future__ import annotations

import math
import re
import statistics
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.lab import Lab
from server.ladder import PromotionRefused, three_way_merge
from server.orientation import MINIMIZE, gain
from server.record import FINAL_STATUSES, LIVE_STATUSES, OK, code_authors
from server.refusals import LabError
from server.store import ExperimentNotFound
from server.store.ablations import AblationStore
from server.untrusted import agent_text
from server.verdicts import fresh_seed, published

MAX_PARTS = 6  # parts per ablation: (parts + 2) x seeds runs
ABLATION_SEEDS = 2
LABEL_CHARS = 160
_COMBINE_LABEL = re.compile(r"^combine (#\d+(?: \+ #\d+)+)$")
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_create_lock = threading.Lock()  # one ablation per experiment, however many ask at once


@dataclass
class Hunk:
    """One hunk of a stored unified diff: where it starts in the old file, its old and new lines."""

    name: str
    header: str
    old_start: int
    old_lines: list[str] = field(default_factory=list)
    new_lines: list[str] = field(default_factory=list)

    def label(self) -> str:
        removed = next((line for line in self.old_lines if line not in self.new_lines), "")
        added = next((line for line in self.new_lines if line not in self.old_lines), "")
        change = f"{removed.strip()} -> {added.strip()}" if removed else f"+ {added.strip()}"
        return f"{self.name} {self.header}: {change}"[:LABEL_CHARS]


@dataclass
class Part:
    """One part of a change and the code of the change without it (None: it does not apply)."""

    label: str
    without: dict[str, str] | None
    note: str = ""
    author: str | None = (
        None  # whose code the label quotes (a combined idea's authors, comma-joined); None: the experiment's
    )


def parse_hunks(diff: str) -> list[Hunk]:
    """The hunks of a unified diff as the server stores it (a/ b/ prefixes, no binary entries).

    Each hunk's body is read as far as its header's line counts say, so a removed line that
    looks like a file header is still a removed line."""
    hunks: list[Hunk] = []
    name: str | None = None
    current: Hunk | None = None
    old_left = new_left = 0
    for line in diff.splitlines(keepends=True):
        if current is not None and (old_left > 0 or new_left > 0):
            tag, body = line[:1], line[1:]
            if tag in (" ", "-"):
                current.old_lines.append(body)
                old_left -= 1
            if tag in (" ", "+"):
                current.new_lines.append(body)
                new_left -= 1
            if tag not in (" ", "-", "+"):
                return []  # a malformed body: no parts
            continue
        if line.startswith("+++ b/"):
            name = line[6:].rstrip("\n")
        elif (m := _HUNK_HEADER.match(line)) and name is not None:
            header = "@@" + line.split("@@")[1] + "@@"
            current = Hunk(name, header, int(m.group(1)))
            old_left = int(m.group(2)) if m.group(2) is not None else 1
            new_left = int(m.group(4)) if m.group(4) is not None else 1
            hunks.append(current)
    return hunks


def apply_hunks(code: Mapping[str, str], hunks: Sequence[Hunk]) -> dict[str, str] | None:
    """`code` with `hunks` applied at their recorded places; None when one does not match there."""
    out = dict(code)
    by_file: dict[str, list[Hunk]] = {}
    for hunk in hunks:
        by_file.setdefault(hunk.name, []).append(hunk)
    for name, file_hunks in by_file.items():
        lines = out.get(name, "").splitlines(keepends=True)
        result: list[str] = []
        position = 0
        for hunk in sorted(file_hunks, key=lambda h: h.old_start):
            start = hunk.old_start - 1 if hunk.old_lines else hunk.old_start
            if start < position or lines[start : start + len(hunk.old_lines)] != hunk.old_lines:
                return None
            result.extend(lines[position:start])
            result.extend(hunk.new_lines)
            position = start + len(hunk.old_lines)
        result.extend(lines[position:])
        out[name] = "".join(result)
    return out


class Ablations:
    """Queue ablations through the lab and read them back with their analysis."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.table = AblationStore(lab.store.db)
        self.table.ensure_table()

    # ------------------------------------------------------------ parts

    def parts(self, experiment: Mapping[str, Any]) -> tuple[str, dict[str, str], list[Part]]:
        """(what the parts are, the parent's code, the parts) of an experiment."""
        lab = self.lab
        parent_id = experiment.get("parent_id")
        parent_code = (
            dict(lab.experiment(parent_id)["code"])
            if parent_id is not None
            else dict(lab.baseline_files)
        )
        combined = self._combined_parts(experiment, parent_code)
        if combined is not None:
            return "combined experiments", parent_code, combined
        hunks = parse_hunks(str(experiment.get("diff_parent") or ""))
        if apply_hunks(parent_code, hunks) != experiment["code"]:
            raise LabError(
                f"#{experiment['id']}'s recorded diff does not rebuild its code from its parent's "
                "(a diff too large to store whole); it cannot be split into parts"
            )
        self._check_count(experiment["id"], len(hunks), "hunks")
        parts = []
        for index, hunk in enumerate(hunks):
            without = apply_hunks(parent_code, [h for i, h in enumerate(hunks) if i != index])
            note = "" if without is not None else "the other hunks do not apply without it"
            parts.append(Part(hunk.label(), without, note))
        return "hunks", parent_code, parts

    def _combined_parts(
        self, experiment: Mapping[str, Any], parent_code: dict[str, str]
    ) -> list[Part] | None:
        """The ideas a combine merged, when its label names them and merging them again onto its
        parent gives exactly its code (anything else: None, and the hunks are the parts)."""
        match = _COMBINE_LABEL.match(str(experiment.get("description") or ""))
        if not match:
            return None
        ids = [int(token.strip(" #")) for token in match.group(1).split("+")]
        if len(set(ids)) != len(ids) or len(ids) > MAX_PARTS:
            return None
        try:
            ideas = [self.lab.experiment(i) for i in ids]
            if self._merge(parent_code, ideas) != experiment["code"]:
                return None
            parts = []
            for idea in ideas:
                others = [other for other in ideas if other["id"] != idea["id"]]
                try:
                    without: dict[str, str] | None = self._merge(parent_code, others)
                    note = ""
                except PromotionRefused as exc:
                    without, note = None, f"the others do not merge without it: {str(exc)[:200]}"
                label = f"#{idea['id']} {idea['description']}"[:LABEL_CHARS]
                parts.append(Part(label, without, note, author=",".join(code_authors(idea))))
            return parts
        except (LabError, PromotionRefused):
            return None

    def _merge(
        self, parent_code: dict[str, str], ideas: Sequence[Mapping[str, Any]]
    ) -> dict[str, str]:
        """The ideas' changes three-way merged onto `parent_code` (as combine does); refuses a conflict."""
        lab = self.lab
        merged = dict(parent_code)
        for idea in ideas:
            base_id = idea.get("parent_id")
            base_code = (
                lab.experiment(base_id)["code"] if base_id is not None else lab.baseline_files
            )
            for name, theirs in idea["code"].items():
                base = base_code.get(name, lab.baseline_files.get(name, ""))
                text, conflicts = three_way_merge(merged.get(name, ""), base, theirs)
                if conflicts:
                    raise PromotionRefused(f"#{idea['id']} conflicts in {name}")
                merged[name] = text
        return merged

    @staticmethod
    def _check_count(experiment_id: int, count: int, what: str) -> None:
        if count < 2:
            raise LabError(
                f"#{experiment_id} has {count} part(s) ({what} of its diff vs its parent); an "
                "ablation needs at least 2: ablate a change that made several edits or a combine"
            )
        if count > MAX_PARTS:
            raise LabError(
                f"#{experiment_id} has {count} parts ({what}); an ablation takes at most {MAX_PARTS}: "
                "ablate a smaller change, or combine a few ideas and ablate that"
            )

    # ------------------------------------------------------------ ablate

    def _standing(self, experiment_id: int) -> dict[str, Any] | None:
        """The experiment's latest ablation, unless none of its runs is live or succeeded (all
        cancelled or failed): then anyone may ask for a new one, so nobody can take an
        experiment's ablation by queueing it and cancelling every run."""
        recorded = self.table.of_experiment(experiment_id)
        if not recorded:
            return None
        latest = recorded[-1]
        lab = self.lab
        statuses = [
            lab.resolve_retry(lab.store.get_experiment(r["run_id"]))["status"]
            for r in latest["runs"]
        ]
        if any(status in (*LIVE_STATUSES, OK) for status in statuses):
            return latest
        return None

    def ablate(self, requester: str | None, experiment_id: int) -> dict[str, Any]:
        """Queue the runs of an ablation of `experiment_id`, charged to `requester` (None: the
        operator), or return the ablation already recorded for it."""
        lab = self.lab
        experiment = lab.experiment(experiment_id)
        experiment_id = experiment["id"]
        existing = self._standing(experiment_id)
        if existing is not None:
            return self.view(existing)
        if experiment["kind"] != "experiment" or experiment["status"] != OK:
            raise LabError(
                f"#{experiment_id} is a {experiment['kind']} run with status {experiment['status']}; "
                "only a successful experiment can be ablated"
            )
        part_kind, parent_code, parts = self.parts(experiment)
        runnable = [(index, part) for index, part in enumerate(parts) if part.without is not None]
        variants: list[tuple[str, int | None, dict[str, str]]] = [
            ("full", None, dict(experiment["code"])),
            ("base", None, parent_code),
        ]
        variants += [(f"without part {i + 1}", i, dict(p.without or {})) for i, p in runnable]
        seeds: list[int] = []
        while len(seeds) < ABLATION_SEEDS:
            seed = fresh_seed(lab.settings.seed)
            if seed not in seeds:
                seeds.append(seed)
        scale = experiment.get("scale") or "S"
        agent = requester or experiment["agent"]
        planned_variants = [
            lab.plan_run(
                agent,
                f"ablation of #{experiment_id}: {role}",
                kind="ablation",
                files=files,
                parent_id=experiment_id,
                scale=scale,
                code_from=[p] if (p := experiment.get("parent_id")) is not None else [],
            )  # the base variant is the parent's code
            for role, _, files in variants
        ]
        planned = [
            {**plan, "seed": seed, "description": f"{plan['description']} (seed {n + 1})"}
            for n, seed in enumerate(seeds)
            for plan in planned_variants
        ]
        with _create_lock:
            existing = self._standing(experiment_id)
            if existing is not None:
                return self.view(existing)
            queued = lab.queue_runs(
                planned, requester, check_quota=requester is not None, reuse=False
            )
            layout = [(n, variant) for n in range(len(seeds)) for variant in variants]
            runs = [
                {"role": role, "part": part, "seed_index": n, "run_id": run_id}
                for (run_id, _), (n, (role, part, _files)) in zip(queued, layout, strict=True)
            ]
            ablation_id = self.table.add(
                experiment_id=experiment_id,
                requested_by=requester,
                part_kind=part_kind,
                parts=[
                    {
                        "label": p.label,
                        "applies": p.without is not None,
                        "note": p.note,
                        "author": p.author,
                    }
                    for p in parts
                ],
                seeds=seeds,
                runs=runs,
                skipped=[
                    {"part": i, "note": p.note} for i, p in enumerate(parts) if p.without is None
                ],
            )
        ablation = self.table.get(ablation_id)
        assert ablation is not None
        return self.view(ablation)

    # ------------------------------------------------------------ reading

    def get(
        self, ablation_id: int | None = None, experiment_id: int | None = None
    ) -> dict[str, Any]:
        """An ablation with its status and analysis, by its id or by the experiment's."""
        if (ablation_id is None) == (experiment_id is None):
            raise LabError("send either ablation_id or experiment_id (one of them)")
        if ablation_id is not None:
            ablation = self.table.get(ablation_id)
            if ablation is None:
                raise LabError(
                    f"ablation {ablation_id} does not exist; ablate(experiment_id) starts one and "
                    "get_ablation(experiment_id=...) finds one by its experiment"
                )
            return self.view(ablation)
        assert experiment_id is not None
        found = self.of_experiment(self.lab.experiment(experiment_id)["id"])
        if found is None:
            raise LabError(
                f"#{experiment_id} has not been ablated; ablate(experiment_id={experiment_id}) starts one"
            )
        return found

    def of_experiment(self, experiment_id: int) -> dict[str, Any] | None:
        """The latest ablation of an experiment with its analysis, or None."""
        rows = self.table.of_experiment(experiment_id)
        return self.view(rows[-1]) if rows else None

    def view(self, ablation: Mapping[str, Any]) -> dict[str, Any]:
        """What an agent and the dashboard see: the parts, every run and, once all are final, the analysis."""
        lab = self.lab
        runs = []
        for run in ablation["runs"]:
            try:
                row = lab.resolve_retry(lab.store.get_experiment(run["run_id"]))
                status: str = row["status"]
                value, run_id = row.get("metric_value"), row["id"]
            except ExperimentNotFound:
                status, value, run_id = "missing", None, run["run_id"]
            runs.append({**run, "run_id": run_id, "status": status, "metric_value": value})
        done = all(r["status"] in (*FINAL_STATUSES, "missing") for r in runs)
        experiment = lab.store.get_experiment(ablation["experiment_id"])
        view: dict[str, Any] = {
            "ablation_id": ablation["id"],
            "experiment_id": ablation["experiment_id"],
            "requested_by": ablation.get("requested_by"),
            "part_kind": ablation["part_kind"],
            "parts": [
                {
                    "index": i + 1,
                    **p,
                    "label": agent_text(p["label"], p.get("author") or code_authors(experiment)),
                }
                for i, p in enumerate(ablation["parts"])
            ],
            "seeds": len(ablation["seeds"]),
            "status": "done" if done else "running",
            "runs": runs,
            "analysis": None,
        }
        if done:
            noise = lab.noise(experiment.get("scale") or "S")
            view["analysis"] = analyse(
                runs,
                len(ablation["parts"]),
                noise.sd if noise.measured else None,
                lab.settings.noise_k,
                direction=lab.target.direction,
            )
        return view


def analyse(
    runs: Sequence[Mapping[str, Any]],
    part_count: int,
    noise_sd: float | None,
    k: float,
    direction: str = MINIMIZE,
) -> dict[str, Any]:
    """Contributions per part, the total gain and the additivity verdict from final runs
    (gains positive = better in the target's `direction`)."""
    by_seed: dict[int, dict[tuple[str, int | None], float]] = {}
    for run in runs:
        if run["status"] == OK and run.get("metric_value") is not None:
            key = ("without" if run["part"] is not None else run["role"], run["part"])
            by_seed.setdefault(run["seed_index"], {})[key] = float(run["metric_value"])
    total_diffs = [
        gain(values[("full", None)], values[("base", None)], direction)
        for values in by_seed.values()
        if ("base", None) in values and ("full", None) in values
    ]
    parts = []
    for index in range(part_count):
        diffs = [
            gain(values[("full", None)], values[("without", index)], direction)
            for values in by_seed.values()
            if ("without", index) in values and ("full", None) in values
        ]
        parts.append(_paired(index, diffs, noise_sd, k))
    total = _paired(None, total_diffs, noise_sd, k)
    failed = sum(1 for r in runs if r["status"] != OK)
    result: dict[str, Any] = {
        "parts": parts,
        "total_gain": total["mean"],
        "total_sd": total["sd"],
        "pairs": total["n"],
        "noise_sd": published(noise_sd),
        "failed_runs": failed,
    }
    measured = [p["mean"] for p in parts if p["mean"] is not None]
    if total["mean"] is None or len(measured) < part_count:
        result.update(
            sum_of_contributions=published(sum(measured)) if measured else None,
            additivity="unknown",
            summary="not every variant has a successful paired run: contributions are incomplete"
            + (f" ({failed} run(s) failed)" if failed else ""),
        )
        return result
    n = min(total["n"], *(p["n"] for p in parts))
    contributions = float(sum(measured))
    gap = contributions - float(total["mean"])
    result["sum_of_contributions"] = published(contributions)
    if noise_sd is None:
        result.update(
            additivity="unknown",
            summary=f"sum of contributions {contributions:+.4f} vs total gain {total['mean']:+.4f}; "
            "the server's noise is not measured yet, so whether they add up is not judged",
        )
        return result
    # Per seed, sum(without_i) - (K - 1) full - base: K + (K - 1)^2 + 1 independent run noises.
    tolerance = k * noise_sd * math.sqrt((part_count + (part_count - 1) ** 2 + 1) / n)
    if abs(gap) <= tolerance:
        additivity = "adds up"
    elif gap < 0:
        additivity = "sub-additive"
    else:
        additivity = "interacting"
    result["tolerance"] = published(tolerance)
    result["additivity"] = additivity
    result["summary"] = (
        f"{additivity}: sum of contributions {contributions:+.4f} vs total gain "
        f"{total['mean']:+.4f} (gap {gap:+.4f}, tolerance {tolerance:.4f} = {k:g} x noise sd "
        f"{noise_sd:.4f} over {n} paired seed(s))"
    )
    return result


def _paired(
    index: int | None, diffs: Sequence[float], noise_sd: float | None, k: float
) -> dict[str, Any]:
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else None
    sd = statistics.stdev(diffs) if n > 1 else None
    out: dict[str, Any] = {"mean": published(mean), "sd": published(sd), "n": n}
    if index is not None:
        out["part"] = index + 1
        out["effect"] = "unknown"
        if mean is not None and noise_sd is not None:
            threshold = k * noise_sd * math.sqrt(2.0 / n)
            out["threshold"] = published(threshold)
            out["effect"] = (
                "helps" if mean > threshold else "hurts" if mean < -threshold else "within noise"
            )
    return out
