"""Small MCP servers the tests mount (written with the official `mcp` SDK's FastMCP)."""
