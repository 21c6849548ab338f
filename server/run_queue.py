"""How the lab queues runs, as the modules that queue them on its behalf see it: the ladder
(promotions, combinations) and a run's lifecycle (baselines, drift checks, re-queues) work on
the Lab through this Protocol and never import server.lab (no import cycle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from server.record import Kind


class RunQueue(Protocol):
    """Plan a run without a lock, queue planned runs under the submit lock, or both at once."""

    def plan_run(
        self,
        agent: str,
        description: str,
        *,
        paper_ids: Sequence[str] = (),
        kind: Kind = "experiment",
        files: dict[str, str] | None = None,
        parent_id: int | None = None,
        confirms_id: int | None = None,
        seed: int | None = None,
        scale: str = "S",
        code_from: Sequence[int] = (),
    ) -> dict[str, Any]: ...
    def queue_runs(
        self,
        planned: Sequence[dict[str, Any]],
        requester: str | None,
        *,
        check_quota: bool = True,
        reuse: bool = True,
    ) -> list[tuple[int, int | None]]: ...
    def submit(
        self,
        agent: str,
        description: str,
        *,
        requested_by: Any = ...,
        check_quota: bool = True,
        reuse: bool = True,
        paper_ids: Sequence[str] = (),
        kind: Kind = "experiment",
        files: dict[str, str] | None = None,
        parent_id: int | None = None,
        confirms_id: int | None = None,
        seed: int | None = None,
        scale: str = "S",
        code_from: Sequence[int] = (),
    ) -> tuple[int, int | None]: ...
