"""The built-in MCP plugin: the tools of configured MCP servers as server-side tools.

`register_tools` gets the server definitions (`--mcp-config`, and `register_mcp_servers` of
other plugins) as `mcp_servers`, asks each server for its tools once — all servers at once, each
within its `startup_timeout`, in a throwaway instance — and registers every tool as
`SERVER__TOOL` (`McpTool`), with the server's name as its toolset, so `enabled_tools: ["SERVER"]`
enables them all. A server that fails to start or to list its tools is logged and left out; the
server boots without it. A malformed definition is a `PluginError` (the operator must fix it).

Instances, calls and result mapping: plugins/mcp/server.py; the sandboxed command line:
plugins/mcp/launch.py. Users' guide: docs/mcp.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from mcp import types

from plugins.mcp.config import McpConfigError, StdioServer, parse_server
from plugins.mcp.server import McpServer, McpTool, tool_name
from runtime.hookspecs import hookimpl
from runtime.plugins import PluginError
from runtime.sandbox import SandboxConfig, SandboxRunner
from runtime.tools import Tool

log = logging.getLogger(__name__)

T = TypeVar("T")


@hookimpl
def register_tools(
    register: Callable[[Tool], None], mcp_servers: Mapping[str, Mapping[str, Any]], sandbox: SandboxRunner | None
) -> None:
    if not mcp_servers:
        return
    servers: list[McpServer] = []
    for name, definition in mcp_servers.items():
        try:
            spec = parse_server(name, definition)
        except McpConfigError as exc:
            raise PluginError(str(exc)) from exc
        if spec is not None:
            if isinstance(spec, StdioServer) and sandbox is None:
                sandbox = SandboxRunner(SandboxConfig())
            servers.append(McpServer(spec, sandbox))
    outcomes = _run_in_own_loop(_discover_all(servers))
    for server, outcome in zip(servers, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.warning("MCP server %r (%s) left out: %s", server.name, server.describe(), _reason(outcome))
            continue
        tools, seconds = outcome
        names = _register_all(register, server, tools)
        log.info(
            "MCP server %r (%s): %d tool(s) in %.2f s: %s",
            server.name,
            server.describe(),
            len(names),
            seconds,
            ", ".join(names) or "none",
        )


def _register_all(register: Callable[[Tool], None], server: McpServer, tools: list[types.Tool]) -> list[str]:
    """Register each tool, leaving out (and logging) one the registry refuses."""
    names: list[str] = []
    for remote in tools:
        name = tool_name(server.name, remote.name)
        if name in names:
            log.warning("MCP server %r: tool %r left out: its name %s is taken", server.name, remote.name, name)
            continue
        try:
            register(McpTool(server, remote, name))
        except PluginError as exc:  # an invalid schema, a name clash: this tool only
            log.warning("MCP server %r: tool %r left out: %s", server.name, remote.name, exc)
            continue
        names.append(name)
    return names


async def _discover_all(servers: list[McpServer]) -> list[tuple[list[types.Tool], float] | BaseException]:
    return await asyncio.gather(*(server.discover() for server in servers), return_exceptions=True)


def _run_in_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to the end in a fresh event loop on a thread of its own: plugins load
    synchronously, possibly from code already inside an event loop (an app built in a test)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mcp-discovery") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__
