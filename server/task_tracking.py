"""How the MCP tasks of the long tools follow the record (server/mcp_tasks.py): a task is
`working` while any of its runs is queued or running (or its experiment is a candidate the
server is still confirming), then `completed` with the tool's usual result, `failed` when
the experiment failed (crash, timeout, integrity failure: the reason as the message, the
result as data) or `cancelled`. tasks/cancel cancels the task's live runs, with the same
rules as cancel_experiment (an agent cancels only what it asked for; never the server's runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from server import presentation as views
from server.lab import Lab, LabError
from server.mcp_tasks import ExperimentTasks, TaskView, structured
from server.record import CANCELLED, CANDIDATE, FINAL_STATUSES, LIVE_STATUSES, OK, code_authors
from server.store.tasks import TaskRow
from server.untrusted import agent_text


def install_trackers(tasks: ExperimentTasks, lab: Lab) -> None:
    """Teach `tasks` how run_experiment, confirm_experiment, promote and combine are followed."""
    tasks.follow("run_experiment", _one_experiment(lab), _canceller(lab))
    tasks.follow("combine", _one_experiment(lab, combine=True), _canceller(lab))
    tasks.follow("confirm_experiment", _confirmation(lab), _canceller(lab))
    tasks.follow("promote", _promotion(lab), _canceller(lab))


def _one_experiment(lab: Lab, combine: bool = False) -> Callable[[TaskRow], TaskView]:
    def track(row: TaskRow) -> TaskView:
        experiment = lab.resolve_retry(lab.experiment(row.experiment_ids[0]))
        status = experiment["status"]
        if status not in FINAL_STATUSES:
            live = lab.scheduler.progress(experiment["id"])
            return TaskView("working", live.message() if live else str(status))
        if experiment.get("verdict") == CANDIDATE:
            return TaskView("working", "candidate: the server is confirming it on fresh seeds")
        result = views.experiment_result(lab, experiment)
        output: Any = result
        if combine:
            output = {**row.subject, "experiment": result.model_dump(mode="json")}
        if status == CANCELLED:
            return TaskView("cancelled", "the run was cancelled")
        if status != OK:
            return TaskView(
                "failed",
                agent_text(experiment.get("failure_reason"), code_authors(experiment))
                or str(status),
                structured(output),
            )
        return TaskView("completed", None, structured(output))

    return track


def _confirmation(lab: Lab) -> Callable[[TaskRow], TaskView]:
    def track(row: TaskRow) -> TaskView:
        runs = [lab.resolve_retry(lab.experiment(i)) for i in row.experiment_ids]
        live = sum(1 for r in runs if r["status"] in LIVE_STATUSES)
        if live:
            return TaskView("working", f"{len(runs) - live} of {len(runs)} confirmation runs done")
        if all(r["status"] == CANCELLED for r in runs):
            return TaskView("cancelled", "every confirmation run was cancelled")
        return TaskView(
            "completed", None, structured([views.experiment_result(lab, r) for r in runs])
        )

    return track


def _promotion(lab: Lab) -> Callable[[TaskRow], TaskView]:
    def track(row: TaskRow) -> TaskView:
        runs = [lab.experiment(i) for i in row.experiment_ids]
        live = sum(1 for r in runs if r["status"] in LIVE_STATUSES)
        if live:
            return TaskView("working", f"{len(runs) - live} of {len(runs)} promotion runs done")
        assert lab.ladder is not None
        climb = lab.ladder.ladder(int(row.subject["experiment_id"]))
        if all(r["status"] == CANCELLED for r in runs):
            return TaskView("cancelled", "the promotion's runs were cancelled")
        return TaskView("completed", None, structured(climb))

    return track


def _canceller(lab: Lab) -> Callable[[TaskRow, str], None]:
    def cancel(row: TaskRow, agent: str) -> None:
        for experiment_id in row.experiment_ids:
            if lab.experiment(experiment_id)["status"] in LIVE_STATUSES:
                try:
                    lab.cancel(agent, experiment_id)
                except LabError as exc:
                    raise MCPError(INVALID_PARAMS, str(exc)) from None

    return cancel
