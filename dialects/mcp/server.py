"""The MCP server behind `/mcp`: `tools/list` and `tools/call` over the server's tool registry.

One low-level `mcp.server.lowlevel.Server` serves every MCP session. Each JSON-RPC message
arrives with the HTTP request that carried it; `routes.py` has already checked the API key and
put a `Caller` (the key, the `X-Session-Id` and `X-Enabled-Tools` headers) into that request's
ASGI scope, so every message is answered for the caller who sent it.

A call runs through `dialects.sessions.run_in_session`, the code path of
`POST /v1/sessions/{id}/tools/{name}`: the same registry, sessions, argument validation,
timeout, locking and metrics as every other tool call.

Sessions: with `X-Session-Id: NAME` a call runs in the key's session NAME (the one
`session_id: NAME` reaches from the chat dialects). Without it, each MCP session gets its own
tool session, `mcp-<Mcp-Session-Id>`, which is deleted, files and all, when the MCP session
ends (the client's DELETE, the idle timeout, or server shutdown): its name dies with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from starlette.requests import Request

from dialects.mcp.results import to_call_result
from dialects.sessions import run_in_session
from runtime.errors import ToolstudioError
from runtime.keys import KeyRecord
from runtime.service import Runtime
from runtime.tools import Tool

log = logging.getLogger(__name__)

SERVER_NAME = "toolstudio"
CALLER_SCOPE_KEY = "toolstudio.mcp_caller"  # where routes.py leaves the `Caller` in the ASGI scope
DEFAULT_SESSION_PREFIX = "mcp-"
CLOSE_SECONDS = 30.0  # at most this long to delete an ended MCP session's tool sessions


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent one HTTP request to /mcp, read from its headers by routes.py."""

    key: KeyRecord
    session_id: str | None  # X-Session-Id; None: the MCP session's own tool session
    enabled: tuple[str, ...] | None  # X-Enabled-Tools, canonical names; None: every registered tool


@dataclass(eq=False)
class Connection:
    """Per MCP session (the low-level server's lifespan context): the default tool sessions it
    used, as (key id, session id), to delete when it ends."""

    default_sessions: set[tuple[str, str]] = field(default_factory=set)


def build_server(runtime: Runtime) -> Server[Connection, Request]:
    """The MCP server for one app; `runtime` gives the registry and the sessions."""

    @asynccontextmanager
    async def connection_lifespan(_: Server[Connection, Request]) -> AsyncIterator[Connection]:
        connection = Connection()
        try:
            yield connection
        finally:
            # Runs while the MCP session's task is being cancelled (DELETE, idle timeout,
            # shutdown): shielded, or the first await would be cancelled too.
            with anyio.move_on_after(CLOSE_SECONDS, shield=True):
                for key_id, session_id in sorted(connection.default_sessions):
                    log.info("MCP session ended: deleting its tool session %s", session_id)
                    await runtime.sessions.delete(key_id, session_id)

    server: Server[Connection, Request] = Server(
        SERVER_NAME,
        version=_version(),
        instructions=(
            "Server-side tools of toolstudio, run in a persistent sandboxed session: the python tool "
            "keeps its variables between calls; python and bash share one workspace directory."
        ),
        lifespan=connection_lifespan,
    )

    def current() -> tuple[Caller, Request, Connection]:
        context = server.request_context
        request = context.request
        if request is None or CALLER_SCOPE_KEY not in request.scope:
            raise RuntimeError("an MCP message arrived without its HTTP request")  # only /mcp feeds this server
        return request.scope[CALLER_SCOPE_KEY], request, context.lifespan_context

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        caller, _, _ = current()
        return [_mcp_tool(tool) for tool in offered(runtime, caller)]

    # Arguments are validated by the tool-running path itself (the registry's compiled schema,
    # its wording), as for the agent loop; the SDK's own check would be a second, different one.
    @server.call_tool(validate_input=False)
    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        caller, request, connection = current()
        tools = offered(runtime, caller)
        tool = runtime.tools.get(name)
        if tool is None or tool not in tools:
            available = ", ".join(t.name for t in tools) or "(none)"
            return _error(f"no tool {name!r} on this MCP endpoint; available: {available}")
        session_id = caller.session_id
        if session_id is None:
            mcp_session = request.headers.get(MCP_SESSION_ID_HEADER)
            if not mcp_session:  # the SDK only lets tools/call through an initialised session
                return _error("no MCP session id on the request: send X-Session-Id or initialise a session first")
            session_id = DEFAULT_SESSION_PREFIX + mcp_session
            connection.default_sessions.add((str(caller.key.id), session_id))
        try:
            result = await run_in_session(runtime, caller.key, session_id, tool, json.dumps(arguments))
        except ToolstudioError as exc:  # e.g. every tool session busy: the model reads why
            return _error(exc.message)
        return to_call_result(result)

    return server


def offered(runtime: Runtime, caller: Caller) -> list[Tool]:
    """The tools this caller sees: every registered tool (built-ins, plugins, mounted MCP
    servers) by name, or those its `X-Enabled-Tools` named, in its order."""
    if caller.enabled is None:
        return [entry.tool for entry in runtime.tools.entries()]
    return runtime.tools.resolve(caller.enabled)


def _mcp_tool(tool: Tool) -> types.Tool:
    return types.Tool(name=tool.name, description=tool.description, inputSchema=tool.parameters)


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], isError=True)


def _version() -> str:
    try:
        return version("toolstudio")
    except PackageNotFoundError:  # running from a bare checkout
        return "0"
