"""The suggest tool: the next values of train.py's numeric hyperparameters from an Optuna study of everything tried."""

import dataclasses
from typing import Annotated, Any

from mcp.server import MCPServer
from pydantic import Field

from server import authorship
from server.lab import Lab
from server.suggest import SamplerName, suggester_for
from server.tool_support import EDITS, AgentName, OwnThreads, in_thread, refusals
from server.untrusted import agent_text
from server.wire import WireModel

MAX_PARAMETER_NAMES = 64


class SuggestionResult(WireModel):
    """A proposal for train.py's numeric hyperparameters and the edit that applies it."""

    suggestion_id: int = Field(description="this suggestion's id in the record")
    values: dict[str, int | float] = Field(description="the proposed value of each parameter")
    sampler: str = Field(description="the Optuna sampler used: tpe, cmaes or random")
    sampler_note: str = Field(description="why that sampler")
    trials_complete: int = Field(description="finished runs fed to the study (metric_value known)")
    trials_failed: int = Field(description="crashed or timed-out runs fed as failures")
    trials_running: int = Field(
        description="queued/running runs and unclaimed suggestions fed as running"
    )
    trials_dropped: int = Field(description="runs left out: a value outside the search space")
    best: dict[str, Any] | None = Field(
        description="the best trial so far: experiment_id, metric_value, values"
    )
    space: dict[str, str] = Field(description="the search space of each parameter")
    diff: str = Field(
        description="a unified diff of YOUR current train.py setting these values: pass it to "
        "apply_patch, or ignore it ('' when your file already has them)"
    )
    not_in_workspace: list[str] = Field(
        description="parameters your train.py no longer sets as a plain constant (not in the diff)"
    )
    recent: list[dict[str, Any]] = Field(
        description="your latest suggestions and the outcome of the runs that took them"
    )
    note: str = Field(description="how to use this")


NOTE = (
    "Values from a study shared by every agent: each finished run whose train.py differs from "
    "the baseline only in these constants is a trial, and a run of this diff links back to "
    "this suggestion. Parameters you did not name stay at the baseline's values in the trials "
    "fed. Apply the diff with apply_patch, then run_experiment; or ignore it."
)


def register_suggest_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""

    # Studies run one at a time (a lock per lab, up to ~1 s each): one thread of their own, so a
    # burst of suggest calls queues here instead of holding the shared worker threads.
    threads = OwnThreads(1)

    @mcp.tool(annotations=EDITS)
    async def suggest(
        parameters: Annotated[
            list[Annotated[str, Field(max_length=64)]] | None,
            Field(
                description="names of train.py's numeric constants to search (e.g. ['MATRIX_LR', "
                "'WARMDOWN_FRAC']); leave out for all of them. Unknown names are refused with "
                "the list of valid ones",
                max_length=MAX_PARAMETER_NAMES,
            ),
        ] = None,
        sampler: Annotated[
            SamplerName,
            Field(
                description="auto: TPE, or CMA-ES once enough runs exist; tpe, cmaes or random "
                "to choose"
            ),
        ] = "auto",
    ) -> SuggestionResult:
        """Next values for train.py's numeric hyperparameters from an Optuna study of every agent's runs that changed only them, as a diff of your train.py to apply or ignore."""
        with refusals():
            name = agent()

            def suggested() -> dict[str, Any]:
                with authorship.workspace_lock(lab, name):
                    found = dataclasses.asdict(
                        suggester_for(lab).suggest(name, parameters, sampler)
                    )
                    # Its context lines are the workspace's: another agent's after a checkout.
                    authors = authorship.workspace_authors(lab, name)
                found["diff"] = agent_text(found["diff"], authors) or found["diff"]
                return found

            return SuggestionResult(**await in_thread(suggested, threads.get()), note=NOTE)
