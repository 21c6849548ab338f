"""Who leads: the leaderboard (confirmed means first-class, the baseline as one entry), each
experiment's confirmation statistics, and every agent's totals. Reads only."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from server.baselines import comparable_baseline_runs, is_comparable
from server.orientation import gain, loss
from server.record import IMPROVED, SERVER_AGENT, is_server_run
from server.store import Store
from server.verdicts import Reference, mean_sd, published


def _fresh_runs(store: Store, experiment_id: int) -> list[dict[str, Any]]:
    """The successful, comparable fresh-seed runs of an experiment: the server's own where it
    ran any (they decide its verdict and its reference), else the agents' confirm_experiment runs."""
    return _fresh_of(store.confirmation_runs(experiment_id))


def _fresh_of(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """_fresh_runs over an experiment's confirmation runs already read."""
    rows = [
        r
        for r in runs
        if r["status"] == "ok"
        and r["metric_value"] is not None
        and is_comparable(r)
        and not any(f.get("name") == "over_budget" for f in r.get("flags") or [])
    ]
    server = [r for r in rows if is_server_run(r)]
    return server or rows


def confirmation_stats(
    store: Store, experiment_id: int, runs: list[dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """Mean and sd of an experiment's metric_value over its fresh-seed runs (the server's own where it
    ran any: an author's later confirm_experiment runs cannot move a confirmed mean).

    The experiment's own run is not in the mean: it was compared first and selected for looking
    good (a candidate), so it is biased; it is reported beside the mean as `screening_run`.
    `runs`: its confirmation runs, where the caller read them already (Store.confirmation_runs_of).
    """
    rows = _fresh_runs(store, experiment_id) if runs is None else _fresh_of(runs)
    if not rows:
        return None  # the common case (every leaderboard row asks): no need to read the row
    original = store.experiment_figures(experiment_id, ["metric_value"])
    values = [r["metric_value"] for r in rows]
    mean, sd = mean_sd(values)
    return {
        "mean": published(mean),
        "sd": published(sd),
        "n": len(values),
        "values": values,
        "run_ids": [r["id"] for r in rows],
        "screening_run": original.get("metric_value"),
    }


def is_confirmed(experiment: Mapping[str, Any], stats: Mapping[str, Any] | None) -> bool:
    """A win the server confirmed on fresh seeds (`improved`); a promotion run, once a second
    seed reproduced it. An agent's confirm_experiment runs alone never make an idea confirmed."""
    if experiment.get("kind") == "promotion":
        return bool(stats and stats["n"] >= 1)
    return experiment.get("verdict") == IMPROVED


def fresh_seed_values(store: Store, experiment_id: int) -> list[float]:
    """metric_value of the server's comparable fresh-seed runs of an experiment, oldest first."""
    return [r["metric_value"] for r in _fresh_runs(store, experiment_id) if is_server_run(r)]


def reference(
    store: Store,
    *,
    hardware: str,
    budget_seconds: float,
    budget_kind: str,
    scale: str,
    exclude_id: int | None = None,
) -> Reference | None:
    """The incumbent a new result must beat: the lowest of the baseline's mean (its comparable
    runs) and each confirmed improvement's fresh-seed mean (never a single or screening run).

    Read from `experiments` alone, so kept until it changes (server.store.read_cache): every
    leaderboard and briefing asks, and it walks every improvement (50-100 ms at 5,000 of them)."""
    return store.read_cache.get(
        store.db,
        ("reference", hardware, budget_seconds, budget_kind, scale, exclude_id),
        lambda: _reference(
            store,
            hardware=hardware,
            budget_seconds=budget_seconds,
            budget_kind=budget_kind,
            scale=scale,
            exclude_id=exclude_id,
        ),
    )


def _reference(
    store: Store,
    *,
    hardware: str,
    budget_seconds: float,
    budget_kind: str,
    scale: str,
    exclude_id: int | None,
) -> Reference | None:
    options: list[Reference] = []
    baseline = comparable_baseline_runs(
        store,
        hardware=hardware,
        scale=scale,
        budget_kind=budget_kind,
        budget_seconds=budget_seconds,
    )
    if baseline:
        n = len(baseline)
        options.append(
            Reference(
                mean=mean_sd([r["metric_value"] for r in baseline])[0],
                runs=n,
                experiment_id=None,
                label=f"the baseline (mean of {n} run{'s' if n > 1 else ''})",
                direction=store.direction,
            )
        )
    improved = store.experiments_with_verdict(
        IMPROVED, hardware=hardware, budget_seconds=budget_seconds, scale=scale
    )
    # One query for every improvement's runs (one per improvement took 0.3 s at 5,000 of them).
    runs = store.confirmation_runs_of(improved)
    for experiment_id in improved:
        if experiment_id == exclude_id:
            continue
        values = [
            r["metric_value"] for r in _fresh_of(runs.get(experiment_id, [])) if is_server_run(r)
        ]
        if values:
            options.append(
                Reference(
                    mean=mean_sd(values)[0],
                    runs=len(values),
                    experiment_id=experiment_id,
                    label=f"the best confirmed, #{experiment_id} (mean of its {len(values)} fresh-seed runs)",
                    direction=store.direction,
                )
            )
    return min(options, key=lambda r: loss(r.mean, store.direction)) if options else None


def leaderboard(
    store: Store,
    *,
    hardware: str,
    budget_seconds: float,
    budget_kind: str,
    scale: str,
    limit: int,
) -> list[dict[str, Any]]:
    """Confirmed entries first (the baseline and the server-confirmed improvements, by their
    fresh-seed means), then single runs not confirmed (yet), each part best first; disqualified
    runs excluded.

    The baseline is one entry: the mean of its comparable runs on this hardware, budget and level
    (its runs are repeats of the same code with the server's seeds).
    """
    rows = store.ranked_candidates(
        hardware=hardware, budget_seconds=budget_seconds, scale=scale, limit=max(limit * 5, 50)
    )
    entries = []
    # one query for every candidate's confirmation runs
    confirmations = store.confirmation_runs_of([row["id"] for row in rows])
    for row in rows:
        stats = confirmation_stats(store, row["id"], confirmations.get(row["id"], []))
        entries.append(
            {
                "id": row["id"],
                "agent": row["agent"],
                "description": row["description"],
                "metric_value": stats["mean"] if stats else row["metric_value"],
                "sd": stats["sd"] if stats and stats["n"] > 1 else None,
                "runs": stats["n"] if stats else 1,
                "confirmed": is_confirmed(row, stats),
                "verdict": row.get("verdict"),
            }
        )
    baseline = store.baseline(
        hardware=hardware, scale=scale, budget_kind=budget_kind, budget_seconds=budget_seconds
    )
    if baseline and baseline["values"]:
        runs = len(baseline["values"])
        entries.append(
            {
                "id": baseline["experiment_ids"][0],
                "agent": SERVER_AGENT,
                "description": f"baseline (the target's code as shipped; mean of {runs} run{'s' if runs > 1 else ''})",
                "metric_value": published(baseline["mean"]),
                "sd": published(baseline["sd"]) if runs > 1 else None,
                "runs": runs,
                "confirmed": runs >= 2,
                "verdict": "baseline",
            }
        )
    _add_holdout(store, entries, baseline)
    # Stable: equal values keep the store's order (its tie-break, then the older run first).
    entries.sort(key=lambda e: (not e["confirmed"], loss(e["metric_value"], store.direction)))
    shown = entries[:limit]
    _add_cost(store, shown, baseline)
    for rank, entry in enumerate(shown, start=1):
        entry["rank"] = rank
    return shown


def _add_cost(store: Store, entries: list[dict[str, Any]], baseline: dict[str, Any] | None) -> None:
    """Each entry's device-seconds: its own run and every run that confirms it (the baseline
    entry: all of its runs)."""
    base_ids = [int(i) for i in baseline["experiment_ids"]] if baseline else []
    spent = store.device_seconds_of([e["id"] for e in entries] + base_ids)
    for entry in entries:
        if entry["agent"] == SERVER_AGENT and entry.get("verdict") == "baseline":
            seconds = sum(spent.get(i, 0.0) for i in base_ids)
        else:
            seconds = spent.get(entry["id"], 0.0)
        entry["device_seconds"] = round(seconds, 1)


def _add_holdout(
    store: Store, entries: list[dict[str, Any]], baseline: dict[str, Any] | None
) -> None:
    """Each entry's sealed holdout mean beside its val mean, and a flag where a val gain over the
    baseline does not show on the holdout (less than half of it): fitting the val set by selection."""
    base_ids = list(baseline["experiment_ids"]) if baseline else []
    base_holdout = list(store.sealed.holdout_values(base_ids).values())
    base_mean = statistics.fmean(base_holdout) if base_holdout else None
    for entry in entries:
        if entry["agent"] == SERVER_AGENT and entry.get("verdict") == "baseline":
            values = base_holdout
        elif entry.get("confirmed"):
            stats = confirmation_stats(store, entry["id"])
            values = list(store.sealed.holdout_values(stats["run_ids"] if stats else []).values())
        else:
            values = []
        entry["holdout_value"] = published(statistics.fmean(values)) if values else None
        entry["holdout_runs"] = len(values)
        entry["holdout_flag"] = None
        if values and base_mean is not None and baseline and entry.get("verdict") != "baseline":
            val_gain = gain(float(entry["metric_value"]), float(baseline["mean"]), store.direction)
            holdout_gain = gain(statistics.fmean(values), base_mean, store.direction)
            if val_gain > 0 and holdout_gain < val_gain / 2:
                entry["holdout_flag"] = (
                    f"its val gain ({val_gain:+.4f} vs the baseline) does not show on the sealed "
                    f"holdout ({holdout_gain:+.4f}): it may fit the val set rather than the task"
                )


def per_agent(store: Store) -> list[dict[str, Any]]:
    """Each agent's experiments, improvements, best qualified result and cost (the device-seconds
    of every run it asked for, and per kept improvement), best first. Read from `experiments`
    alone, so kept until it changes (one lookup per agent: 100 of them on every leaderboard)."""
    return store.read_cache.get(store.db, ("per_agent",), lambda: _per_agent(store))


def _per_agent(store: Store) -> list[dict[str, Any]]:
    spent = store.device_seconds_by_requester()
    out = []
    for agent, n, wins, best in store.per_agent_totals():
        best_id = store.first_ok_with_value(agent, best) if best is not None else None
        seconds = spent.get(agent, 0.0)
        out.append(
            {
                "agent": agent,
                "best_id": best_id,
                "best_metric_value": best,
                "experiments": n,
                "improvements": wins or 0,
                "device_seconds": round(seconds, 1),
                "device_seconds_per_improvement": round(seconds / wins, 1) if wins else None,
            }
        )
    # Agents that only confirmed, promoted or ablated others' work spent device time too.
    listed = {entry["agent"] for entry in out}
    for requester, seconds in sorted(spent.items(), key=lambda item: str(item[0])):
        if requester is not None and requester not in listed:
            out.append(
                {
                    "agent": requester,
                    "best_id": None,
                    "best_metric_value": None,
                    "experiments": 0,
                    "improvements": 0,
                    "device_seconds": round(seconds, 1),
                    "device_seconds_per_improvement": None,
                }
            )
    return out


def cost_summary(store: Store) -> dict[str, Any]:
    """Where the device time went: the agents' runs (theirs and the confirmations charged to
    them), the server's own (baseline, drift checks), and the device-seconds per kept
    improvement (a server-confirmed `improved`) over the whole record."""
    spent = store.device_seconds_by_requester()
    server_seconds = spent.get(None, 0.0)
    agent_seconds = sum(v for k, v in spent.items() if k is not None)
    kept = len(store.experiments_with_verdict_anywhere(IMPROVED))
    total = server_seconds + agent_seconds
    return {
        "device_seconds": round(total, 1),
        "agents_device_seconds": round(agent_seconds, 1),
        "server_device_seconds": round(server_seconds, 1),
        "kept_improvements": kept,
        "device_seconds_per_improvement": round(total / kept, 1) if kept else None,
    }
