"""The ablate tool: which parts of a stacked change carry its gain, and whether they add up."""

from mcp.server import MCPServer

from server.lab import Lab
from server.tool_support import AgentName


def register_ablation_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""
