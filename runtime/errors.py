"""The runtime's one exception hierarchy.

Each dialect maps these, by type, to its own error body and status code. Never match on
message text.
"""

from __future__ import annotations


class ToolstudioError(Exception):
    """Base class. `status` is the HTTP status a dialect should answer with."""

    status: int = 500

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(ToolstudioError):
    status = 400


class ContextLengthExceeded(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages", code="context_length_exceeded")


class UnsupportedFeature(InvalidRequest):
    """The request asks for something this server cannot honour exactly (e.g. a schema keyword)."""


class PayloadTooLarge(InvalidRequest):
    status = 413


class AuthenticationFailed(ToolstudioError):
    status = 401


class PermissionDenied(ToolstudioError):
    status = 403


class NotFound(ToolstudioError):
    status = 404


class MethodNotAllowed(ToolstudioError):
    status = 405


class Overloaded(ToolstudioError):
    """Every slot is busy and the wait queue is full."""

    status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, code="overloaded")
        self.retry_after = retry_after


class ModelNotReady(ToolstudioError):
    status = 503


class ServerShuttingDown(ModelNotReady):
    """The server is stopping (SIGTERM): a generation in flight was cut short. Streams end with
    the dialect's error frame, never with a normal finish, so a client can tell the answer is
    not whole; the OpenAI SDKs retry a non-streaming 503 (on another replica, or later)."""

    def __init__(self, message: str = "the server is shutting down; the generation was cut short") -> None:
        super().__init__(message, code="server_shutting_down")


class EngineFailure(ToolstudioError):
    """The engine broke (decode error, model crash): not the caller's fault."""

    status = 500
