"""The memory tools: what was tried, by whom, and what happened (similar_experiments, get_briefing)."""

from mcp.server import MCPServer

from server.briefing import Briefing, briefing
from server.lab import Lab
from server.tool_support import READ_ONLY, AgentName, in_thread, refusals


def register_memory_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""

    @mcp.tool(annotations=READ_ONLY)
    async def get_briefing() -> Briefing:
        """The research so far in one short answer, for an agent that lost its context or just
        joined: the best result, the confirmed changes that moved it, the latest dead ends and
        why they failed, open claims, your live runs, the rule a result must pass, and cost."""
        with refusals():
            name = agent()
            return await in_thread(lambda: briefing(lab, name))
