"""A streamable-HTTP MCP server for the tests: `python http_echo.py PORT` serves /mcp on
127.0.0.1:PORT with `echo` (its text back), `header` (the value of a request header, to prove
the configured headers arrive) and a per-MCP-session counter."""

from __future__ import annotations

import sys

from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("http-echo", host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
counts: dict[str, int] = {}


@server.tool()
def echo(text: str) -> str:
    """Return `text` unchanged."""
    return text


@server.tool()
def header(name: str, ctx: Context) -> str:  # type: ignore[type-arg]
    """The value of request header `name` as this server received it ('' if absent)."""
    request = ctx.request_context.request
    return request.headers.get(name, "") if request is not None else ""


@server.tool()
def increment(ctx: Context) -> str:  # type: ignore[type-arg]
    """Count calls in this MCP session."""
    session = str(id(ctx.session))
    counts[session] = counts.get(session, 0) + 1
    return f"count={counts[session]}"


if __name__ == "__main__":
    server.run("streamable-http")
