"""The runtime's errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from runtime import errors

_TYPES: list[tuple[type[errors.ToolstudioError], str]] = [
    (errors.AuthenticationFailed, "authentication_error"),
    (errors.PermissionDenied, "permission_error"),
    (errors.NotFound, "not_found_error"),
    (errors.Overloaded, "rate_limit_error"),
    (errors.InvalidRequest, "invalid_request_error"),
    (errors.MethodNotAllowed, "invalid_request_error"),
    (errors.ModelNotReady, "server_error"),
]


def error_type(exc: errors.ToolstudioError) -> str:
    for cls, name in _TYPES:
        if isinstance(exc, cls):
            return name
    return "server_error"


def error_body(exc: errors.ToolstudioError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": error_type(exc), "param": exc.param, "code": exc.code}}


def error_status(exc: errors.ToolstudioError) -> int:
    return exc.status
