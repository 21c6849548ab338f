"""Quotas: how many runs an agent may have live, in all, and in device-hours; every run an
agent causes is charged to it (its experiments, the confirmations, promotions and merges it
asks for). The operator sets the limits (LabSettings, or per agent with `agents quota`)."""

from __future__ import annotations

from typing import Any

from server.record import LIVE_STATUSES
from server.refusals import LabError
from server.settings import LabSettings
from server.store import Store


def live_runs(store: Store, requester: str) -> list[dict[str, Any]]:
    """The queued and running runs `requester` asked for (its own, confirmations, promotions)."""
    return store.list_experiments(
        requested_by=requester,
        status=list(LIVE_STATUSES),
        order="oldest",
        limit=100,
        columns=["id", "status", "kind", "confirms_id"],
    )


def check_quota(store: Store, settings: LabSettings, requester: str, new_runs: int = 1) -> None:
    """Refuse a request that would take `requester` past its limits (LabError says which and what to do).

    Every run an agent causes counts: its experiments, the confirmations and promotions it
    asks for (including the baselines a promotion queues) and the merges it combines. A
    request may queue a bounded batch (confirm: at most 10 runs; a promotion: its paired
    runs and any missing baselines) when the agent has fewer live runs than its limit; the
    experiments-in-all cap counts every run of the batch. Re-queues after a crash of the
    server are not charged (they count as live, not in the totals).
    """
    live = live_runs(store, requester)
    row = store.agent(requester) or {}
    max_live = row.get("max_queued") or settings.max_live_per_agent
    if len(live) >= max_live:
        first = live[0]
        if first.get("kind") == "confirmation" and first.get("confirms_id") is not None:
            of = first["confirms_id"]
            raise LabError(
                f"experiment #{of} is being confirmed on fresh seeds (run #{first['id']} is {first['status']}); "
                f"you may have {max_live} live at a time and its confirmation runs count. Call "
                f"wait_experiment({of}) for its verdict"
            )
        raise LabError(
            f"experiment #{first['id']} is still {first['status']}; you may have {max_live} live at a time. "
            f"Call wait_experiment({first['id']}) for its result, or cancel_experiment({first['id']})"
        )
    max_total = row.get("max_experiments") or settings.max_experiments_per_agent
    if max_total:
        used = store.charged_runs(requester)
        if used + new_runs > max_total:
            asked = f"; this request would queue {new_runs} runs" if new_runs > 1 else ""
            raise LabError(
                f"quota reached: agent {requester} may run {max_total} experiments in all (confirmation "
                f"and promotion runs count too) and has run {used}{asked}; ask the operator to raise it"
            )
    max_hours = row.get("max_device_hours")
    if max_hours:
        used_hours = store.charged_seconds(requester) / 3600
        if used_hours >= max_hours:
            raise LabError(
                f"quota reached: agent {requester} has used {used_hours:.2f} of {max_hours:g} device-hours "
                "(confirmation and promotion runs count too); ask the operator to raise it"
            )
