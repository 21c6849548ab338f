"""Red-team tests: one patch per known metric hack, applied through the MCP tools and run for real."""
