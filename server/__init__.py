"""The MCP server and everything shared between agents: store, scheduler, papers, web, CLI."""
