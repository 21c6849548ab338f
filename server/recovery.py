"""Recovery after a crash: processes a killed server's jails left behind are killed, runs left
`running` become `interrupted`, and each interrupted run is queued again once, as a new row
(`retry_of` the old one, attempt 2). The Lab drives it at startup and when a machine is lost."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sandbox.jail import kill_orphans
from server.record import QUEUED

log = logging.getLogger(__name__)

# Columns a retry does not copy from the interrupted run: its identity, its outcome, its attempt.
NOT_COPIED_TO_RETRY = (
    "id",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "failure_reason",
    "log_tail",
    "metrics",
    "verdict",
    "attempt",
    "retry_of",
)


def kill_leftover_processes(runs_dir: Path) -> None:
    """Kill any process left under `runs_dir` by a killed server's jails (they normally die with
    the server: PR_SET_PDEATHSIG)."""
    orphans = kill_orphans(runs_dir)
    if orphans:
        log.warning(
            "killed %d process(es) left behind by a previous server: %s", len(orphans), orphans
        )


def retry_row(old: Mapping[str, Any]) -> dict[str, Any] | None:
    """The new row that queues an interrupted run again, or None after its second attempt."""
    if (old.get("attempt") or 1) >= 2:
        return None
    return {
        **{k: v for k, v in old.items() if k not in NOT_COPIED_TO_RETRY},
        "status": QUEUED,
        "attempt": (old.get("attempt") or 1) + 1,
        "retry_of": old["id"],
    }
