"""The runtime's errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""

from __future__ import annotations

from typing import Any

from runtime import errors

_TYPES: list[tuple[type[errors.ToolstudioError], str]] = [
    (errors.AuthenticationFailed, "authentication_error"),
    (errors.PermissionDenied, "permission_error"),
    (errors.NotFound, "not_found_error"),
    (errors.PayloadTooLarge, "request_too_large"),
    (errors.Overloaded, "overloaded_error"),
    (errors.InvalidRequest, "invalid_request_error"),
    (errors.MethodNotAllowed, "invalid_request_error"),
    (errors.ModelNotReady, "overloaded_error"),
]


def error_type(exc: errors.ToolstudioError) -> str:
    for cls, name in _TYPES:
        if isinstance(exc, cls):
            return name
    return "api_error"


def error_body(exc: errors.ToolstudioError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(exc), "message": exc.message}}


def error_status(exc: errors.ToolstudioError) -> int:
    # Anthropic answers "no capacity" with 529 overloaded_error rather than 429.
    return 529 if isinstance(exc, errors.Overloaded) else exc.status
