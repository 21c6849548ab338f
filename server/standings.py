"""Who leads: the leaderboard (confirmed means first-class, the baseline as one entry), each
experiment's confirmation statistics, and every agent's totals. Reads only."""

from __future__ import annotations

from typing import Any

from server.record import SERVER_AGENT
from server.store import Store
from server.verdicts import mean_sd, published


def confirmation_stats(store: Store, experiment_id: int) -> dict[str, Any] | None:
    """Mean and sd of an experiment's val_bpb over itself and its confirmation runs."""
    rows = store.ok_confirmations(experiment_id)
    if not rows:
        return None  # the common case (every leaderboard row asks): no need to read the row
    original = store.get_experiment(experiment_id)
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


def leaderboard(
    store: Store,
    *,
    hardware: str,
    budget_seconds: float,
    budget_kind: str,
    scale: str,
    limit: int,
) -> list[dict[str, Any]]:
    """Ranked by confirmed mean where confirmations exist, else the single run; disqualified runs excluded.

    The baseline is one entry: the mean of its runs on this hardware, budget and level (its
    runs are repeats of the same code with the server's seeds).
    """
    rows = store.ranked_candidates(
        hardware=hardware, budget_seconds=budget_seconds, scale=scale, limit=max(limit * 5, 50)
    )
    entries = []
    for row in rows:
        stats = confirmation_stats(store, row["id"])
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
    baseline = store.baseline(
        hardware=hardware, scale=scale, budget_kind=budget_kind, budget_seconds=budget_seconds
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


def per_agent(store: Store) -> list[dict[str, Any]]:
    """Each agent's experiments, improvements and best qualified result, best first."""
    out = []
    for agent, n, wins, best in store.per_agent_totals():
        best_id = store.first_ok_with_value(agent, best) if best is not None else None
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
