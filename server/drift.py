"""Drift checks: every N finished experiments the server re-runs the best with its own seed;
the same code should score the same, and a re-run beyond k x sd means the machine drifted
(a slower machine, a thermal limit, a noisy neighbour). The Lab queues the re-run; this
module decides when one is due and what its result says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.record import OK
from server.store import Store
from server.verdicts import published


def drift_check_due(finished_experiments: int, every: int) -> bool:
    """True after every `every`-th finished experiment (never with every = 0)."""
    return bool(every) and finished_experiments != 0 and finished_experiments % every == 0


def drift_metrics(
    row: Mapping[str, Any], original: Mapping[str, Any], threshold: float
) -> dict[str, Any] | None:
    """The drift check's metrics with drift, threshold and drifted added; None when it failed
    or the original has no metric_value (nothing to compare)."""
    if row["status"] != OK or original.get("metric_value") is None:
        return None
    drift = row["metric_value"] - original["metric_value"]
    metrics = dict(row.get("metrics") or {})
    metrics.update(
        drift=published(drift),
        drift_threshold=published(threshold),
        drifted=abs(drift) > threshold,
    )
    return metrics


def last_drift_check(store: Store) -> dict[str, Any] | None:
    """The latest successful drift check: its id, the run it re-ran, the drift and when."""
    rows = store.latest_of_kind("drift_check", ["id", "confirms_id", "metrics", "finished_at"])
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
