"""Upstream failures, as the runtime's own errors (each dialect maps them by type).

A request the upstream refuses for its content becomes an `InvalidRequest` (400); everything
here is the upstream's fault, never the client's: 5xx, or 429/503 with `Retry-After`.
"""

from __future__ import annotations

from runtime.errors import EngineFailure, Overloaded


class UpstreamError(EngineFailure):
    """The upstream failed this request: it broke off mid-stream, answered 5xx, or refused
    this server's own credentials or model name (a configuration error, not the client's)."""

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message, code="upstream_error")


class UpstreamTimeout(UpstreamError):
    """The upstream did not send the next byte within `--upstream-timeout`."""

    status = 504


class UpstreamOverloaded(Overloaded):
    """Every backend answered 429: the client should come back later (`Retry-After`)."""


class UpstreamUnavailable(Overloaded):
    """No backend is reachable now (all are out, backing off): 503 with `Retry-After` set to
    the seconds until the first one is tried again."""

    status = 503

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, retry_after=retry_after)
        self.code = "upstream_unavailable"
