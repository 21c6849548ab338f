"""The memory tools: what was tried, by whom, and what happened (similar_experiments, get_briefing)."""

from mcp.server import MCPServer

from server.lab import Lab
from server.tool_support import AgentName


def register_memory_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""
