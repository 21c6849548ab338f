"""The memory tools: what was tried, by whom, and what happened (similar_experiments, get_briefing)."""

from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from server import memory
from server.briefing import Briefing, briefing
from server.lab import Lab
from server.models import SimilarExperiments
from server.tool_support import READ_ONLY, AgentName, in_thread, refusals


def register_memory_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""

    @mcp.tool(annotations=READ_ONLY)
    async def get_briefing() -> Briefing:
        """The research so far in one short answer: the best result, what moved it, recent dead ends and why, open claims, your live runs, the rule and the cost."""
        with refusals():
            name = agent()
            return await in_thread(lambda: briefing(lab, name))

    @mcp.tool(annotations=READ_ONLY)
    async def similar_experiments(
        diff: Annotated[
            str | None,
            Field(
                description="a unified diff of train.py (vs the baseline or your workspace "
                "parent); leave out, with description, to compare your current workspace",
                max_length=memory.MAX_DIFF,
            ),
        ] = None,
        description: Annotated[
            str | None,
            Field(description="an idea in words, matched against descriptions", max_length=480),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=memory.MAX_SIMILAR)] = 10,
    ) -> SimilarExperiments:
        """Was this tried, by whom, and what happened: earlier experiments (failed, worse and within-noise ones too) with the same or a similar change or description."""
        with refusals():
            name = agent()
            return await in_thread(
                lambda: memory.similar_experiments(lab, name, diff, description, limit)
            )
