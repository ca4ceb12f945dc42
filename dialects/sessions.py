"""Tool sessions over HTTP (OpenAI-style bodies and errors):

GET /v1/sessions, DELETE /v1/sessions/{id}, and POST /v1/sessions/{id}/tools/{name}, which
runs one tool directly with JSON arguments (for UIs, notebooks and plugin authors' tests);
GET /v1/tools lists the server-side tools a request may enable. A session's files:
dialects/session_files.py.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, delete, get, post
from litestar.params import FromPath

from dialects.common import new_id, utf8_error
from runtime.agent import execute_tool, to_result
from runtime.errors import InvalidRequest, NotFound
from runtime.events import ToolResult
from runtime.http import api_key_of, runtime_of, unless_disconnected
from runtime.keys import KeyRecord
from runtime.service import Runtime
from runtime.tools import DEFAULT_SERVER_TOOLS, Tool


async def run_in_session(
    runtime: Runtime, key: KeyRecord, session_id: str | None, tool: Tool, arguments: str
) -> ToolResult:
    """Run one tool call outside the agent loop, in `key`'s session `session_id` (created if
    new; None: a throwaway one), and count it in the metrics. `arguments` is the call's JSON
    text; bad JSON or arguments that break the tool's schema come back as an `is_error` result,
    as every tool failure does. Raises `Overloaded` when every tool session is in use.

    The one path for direct calls: this route and the `/mcp` endpoint (dialects/mcp) both use it.
    """
    async with runtime.open_session(key, session_id) as session:
        output = await execute_tool(tool, arguments, runtime.tools, session, runtime.config.tools.tool_timeout)
    result = to_result(new_id("call_"), tool.name, arguments, output)
    runtime.metrics.record_tool(result)
    return result


@get("/v1/tools")
async def list_tools(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """`{"object": "list", "data": [{"name", "object": "tool", "description", "parameters" (JSON
    Schema), "plugin", "default"}], "aliases": {alias: name}}`; `default`: enabled by
    `enable_tools: true` without `enabled_tools`."""
    registry = runtime_of(request).tools
    data = [
        {
            "name": entry.tool.name,
            "object": "tool",
            "description": entry.tool.description,
            "parameters": entry.tool.parameters,
            "plugin": entry.plugin,
            "default": entry.tool.name in DEFAULT_SERVER_TOOLS,
        }
        for entry in registry.entries()
    ]
    return {"object": "list", "data": data, "aliases": dict(registry.aliases)}


@get("/v1/sessions")
async def list_sessions(request: Request[Any, Any, Any]) -> dict[str, Any]:
    runtime = runtime_of(request)
    infos = await runtime.sessions.list(str(api_key_of(request).id))
    data = [
        {
            "id": i.session_id,
            "object": "session",
            "created": int(i.created),
            "last_used": int(i.last_used),
            "file_count": i.file_count,
            "size_bytes": i.size_bytes,
            "live": i.live,
        }
        for i in infos
    ]
    return {"object": "list", "data": data}


@delete("/v1/sessions/{session_id:str}", status_code=200)
async def delete_session(request: Request[Any, Any, Any], session_id: FromPath[str]) -> dict[str, Any]:
    if not await runtime_of(request).sessions.delete(str(api_key_of(request).id), session_id):
        raise NotFound(f"no session {session_id!r}")
    return {"id": session_id, "object": "session.deleted", "deleted": True}


@post("/v1/sessions/{session_id:str}/tools/{name:str}", status_code=200)
async def run_session_tool(
    request: Request[Any, Any, Any], session_id: FromPath[str], name: FromPath[str]
) -> dict[str, Any]:
    runtime = runtime_of(request)
    tool = runtime.tools.get(name)
    if tool is None:
        raise NotFound(f"no tool {name!r}; available: {', '.join(runtime.tools.names())}")
    body = await request.body()
    utf8_error(body)  # as `decode_body` words it for every other endpoint
    arguments = body.decode("utf-8").strip() or "{}"
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the body must be the tool's JSON arguments: {type(exc).__name__}") from exc
    # The caller here is a program, not a model: arguments that break the tool's schema are
    # its mistake, a 400 naming the argument, not a tool result to read.
    if problem := runtime.tools.validate_arguments(tool, parsed):
        raise InvalidRequest(problem, param=name)

    async def run() -> dict[str, Any]:
        result = await run_in_session(runtime, api_key_of(request), session_id, tool, arguments)
        return {
            "object": "tool_result",
            "session_id": session_id,
            "tool": result.name,
            "output": result.output,
            "is_error": result.is_error,
            "attachments": result.attachments,
            "session_restored": result.session_restored,
        }

    return await unless_disconnected(request, run())
