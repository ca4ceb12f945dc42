"""`/mcp`: the server's tools as a streamable-HTTP MCP server (MCP spec 2025-06-18 and later).

Mounted into the Litestar app as an ASGI app behind the same API-key guard as every /v1 route
(`Authorization: Bearer` or `x-api-key`): a missing or wrong key is a 401 before any MCP
processing. Headers read on every request:

- `X-Session-Id: NAME` (optional): the tool session calls run in, the same one
  `session_id: NAME` reaches from the chat dialects and `/v1/sessions/NAME/tools/...`. Without
  it each MCP session has its own tool session (see dialects/mcp/server.py).
- `X-Enabled-Tools: python,bash` (optional): only these tools are listed and callable (names as
  in `enabled_tools`, aliases accepted). An unknown name is a 400 naming it.

Each MCP session is also bound to the API key that opened it (the SDK compares the caller of
every later request with it and answers 404 to another key), and closes after
`--session-idle` seconds with no request in flight and no open event stream.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from litestar import asgi
from litestar.connection import ASGIConnection
from litestar.types import Receive, Scope, Send
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from dialects.common import check_session_id
from dialects.mcp.server import CALLER_SCOPE_KEY, Caller, build_server
from runtime.errors import InvalidRequest, NotFound
from runtime.keys import KeyRecord
from runtime.plugins import ToolRegistry
from runtime.service import Runtime

MCP_PATH = "/mcp"
SESSION_HEADER = "x-session-id"
ENABLED_TOOLS_HEADER = "x-enabled-tools"


class McpEndpoint:
    """The MCP server and its streamable-HTTP session manager for one app. `run()` must be
    entered in the app's lifespan (the manager's task group lives there) before requests come."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.manager = StreamableHTTPSessionManager(
            build_server(runtime),
            session_idle_timeout=runtime.config.tools.session_idle_seconds,
            max_request_body_size=runtime.config.max_body_bytes,
        )

    def run(self) -> AbstractAsyncContextManager[None]:
        return self.manager.run()

    async def handle(self, scope: Scope, receive: Receive, send: Send, key: KeyRecord) -> None:
        """Serve one authenticated HTTP request (POST, GET or DELETE) to /mcp."""
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope=scope, receive=receive)
        caller = Caller(
            key=key,
            session_id=session_header(connection.headers.get(SESSION_HEADER)),
            enabled=enabled_tools_header(connection.headers.get(ENABLED_TOOLS_HEADER), self.runtime.tools),
        )
        mutable = cast(dict[str, Any], scope)
        mutable[CALLER_SCOPE_KEY] = caller
        # The SDK binds each MCP session to the identity that opened it (`client_id`): another
        # key presenting the same Mcp-Session-Id gets 404, as if it did not exist.
        mutable["user"] = AuthenticatedUser(AccessToken(token=f"key:{key.id}", client_id=f"key:{key.id}", scopes=[]))
        await self.manager.handle_request(mutable, receive, send)  # type: ignore[arg-type]


def session_header(value: str | None) -> str | None:
    """The tool session named by `X-Session-Id`, or None when the header is absent."""
    if value is None:
        return None
    if not value.strip():
        raise InvalidRequest("the X-Session-Id header is empty: name a session or leave the header out")
    check_session_id(value.strip(), param="X-Session-Id")
    return value.strip()


def enabled_tools_header(value: str | None, tools: ToolRegistry) -> tuple[str, ...] | None:
    """The canonical tool names `X-Enabled-Tools` lists (comma-separated, names as in
    `enabled_tools`: a tool, an alias, or an MCP server's name standing for all its
    `SERVER__TOOL` tools), or None when absent. Raises `InvalidRequest` (400) for an unknown
    name or an empty list."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise InvalidRequest("the X-Enabled-Tools header names no tools; leave it out to offer all of them")
    canonical: list[str] = []
    for name in names:
        try:
            members = tools.resolve([name])  # as `enabled_tools`: an alias, or an MCP server's name for all its tools
        except InvalidRequest:
            available = ", ".join(tools.names() + sorted(tools.toolsets)) or "(none)"
            raise InvalidRequest(f"unknown tool {name!r} in X-Enabled-Tools; available: {available}") from None
        canonical += [tool.name for tool in members if tool.name not in canonical]
    return tuple(canonical)


def is_mcp_request(scope: Scope) -> bool:
    """Whether `scope` was routed to /mcp (a mount's own `scope["path"]` is its sub-path, so the
    app's error handler asks this to answer in JSON-RPC's shape)."""
    handler = scope.get("route_handler")
    return getattr(handler, "fn", None) is mcp_endpoint.fn  # the router holds a copy of the handler


@asgi(MCP_PATH, is_mount=True, copy_scope=True)
async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry: the router's `require_api_key` guard has run (a 401 never gets here)."""
    if scope["type"] != "http":
        raise NotFound("/mcp speaks streamable HTTP (POST, GET, DELETE), not WebSocket")
    connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope=scope, receive=receive)
    endpoint: McpEndpoint = connection.app.state.mcp
    await endpoint.handle(scope, receive, send, connection.state.api_key)
