"""The suggest tool: the next values of train.py's numeric hyperparameters from an Optuna study of everything tried."""

from mcp.server import MCPServer

from server.lab import Lab
from server.tool_support import AgentName


def register_suggest_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""
