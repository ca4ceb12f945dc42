"""The MCP dialect: `/mcp` serves the server's tools to MCP clients (Claude Code, Cursor, the
`mcp` SDK) over streamable HTTP, through the same registry and sessions as every other route.

`routes.py` mounts it and reads the headers, `server.py` answers `tools/list` and `tools/call`,
`results.py` maps a tool result to MCP content, `errors.py` shapes refusals as JSON-RPC errors.
"""
