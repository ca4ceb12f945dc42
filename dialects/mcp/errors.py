"""The runtime's errors as JSON-RPC 2.0 error responses, the shape MCP clients parse:
`{"jsonrpc": "2.0", "id": null, "error": {"code", "message", "data": {"type", "status"}}}`.

These answer requests refused before the MCP layer (a missing or wrong API key, a bad
`X-Enabled-Tools` header); the id is null because the request was not read (JSON-RPC's rule for
an error whose request id is unknown). The HTTP status stays the runtime's (401, 400, ...), so a
client that only looks at the status still sees why.
"""

from __future__ import annotations

from typing import Any

from mcp.types import INTERNAL_ERROR, INVALID_REQUEST

from dialects import openai_errors
from runtime import errors


def error_body(exc: errors.ToolstudioError) -> dict[str, Any]:
    # JSON-RPC has no code for "unauthorised" or "overloaded": every refusal of the caller's
    # request is INVALID_REQUEST, a server fault INTERNAL_ERROR; `data.type` says which kind.
    code = INVALID_REQUEST if exc.status < 500 else INTERNAL_ERROR
    data = {"type": openai_errors.error_type(exc), "status": exc.status}
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": exc.message, "data": data}}


def error_status(exc: errors.ToolstudioError) -> int:
    return exc.status
