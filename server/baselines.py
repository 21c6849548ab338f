"""The baseline: the shipped code measured several times per hardware, budget and level, with
the server's paired seeds; its spread is the noise every verdict is judged against."""

from __future__ import annotations

from typing import Any

from server.record import OK, QUEUED, RUNNING
from server.store import Store
from server.verdicts import Noise, mean_sd


def noise(
    store: Store, *, hardware: str, scale: str, budget_kind: str, budget_seconds: float
) -> Noise:
    """The measured (or, before two baseline runs, assumed) noise of one setting."""
    row = store.baseline(
        hardware=hardware, scale=scale, budget_kind=budget_kind, budget_seconds=budget_seconds
    )
    return Noise.from_values(row["values"] if row else [])


def update_baseline_stats(
    store: Store, *, hardware: str, scale: str, budget_kind: str, budget_seconds: float
) -> None:
    """Recompute the stored mean and sd from every successful baseline run of one setting."""
    rows = store.list_experiments(
        kind="baseline",
        status=OK,
        order="oldest",
        limit=1000,
        columns=["id", "val_bpb", "hardware", "budget_seconds", "budget_kind", "scale"],
    )
    rows = [
        r
        for r in rows
        if r["hardware"] == hardware
        and r["budget_seconds"] == budget_seconds
        and r["budget_kind"] == budget_kind
        and (r["scale"] or "S") == scale
    ]
    if not rows:
        return
    values = [r["val_bpb"] for r in rows]
    mean, sd = mean_sd(values)
    store.set_baseline(
        hardware=hardware,
        scale=scale,
        budget_kind=budget_kind,
        budget_seconds=budget_seconds,
        values=values,
        experiment_ids=[r["id"] for r in rows],
        mean=mean,
        sd=sd,
    )


def live_or_ok_baseline_runs(
    store: Store, *, hardware: str, scale: str, budget_seconds: float
) -> list[dict[str, Any]]:
    """The baseline runs of one setting that succeeded or may still succeed."""
    return [
        r
        for r in store.list_experiments(
            kind="baseline",
            order="oldest",
            limit=1000,
            columns=["id", "status", "hardware", "budget_seconds", "scale"],
        )
        if r["hardware"] == hardware
        and r["budget_seconds"] == budget_seconds
        and (r["scale"] or "S") == scale
        and r["status"] in (OK, QUEUED, RUNNING)
    ]


def baseline_run_plans(
    template: dict[str, Any], *, existing: int, repeats: int, seed: int, scale: str
) -> list[dict[str, Any]]:
    """The planned baseline runs n = existing .. repeats-1, each with seed + n (paired seeds)."""
    planned = []
    for n in range(existing, repeats):
        run_seed = seed + n
        description = (
            f"baseline measurement {n + 1}/{repeats}"
            + (f" at level {scale}" if scale != "S" else "")
            + f" (server-owned seed {run_seed})"
        )
        planned.append({**template, "seed": run_seed, "description": description})
    return planned
