"""HTTP plumbing shared by every dialect: auth guard, error responses, disconnect watch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler

from runtime import errors
from runtime.keys import KeyRecord
from runtime.service import Runtime
from runtime.storage import StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class ErrorDialect(Protocol):
    def error_body(self, exc: errors.ToolstudioError) -> dict[str, Any]: ...
    def error_status(self, exc: errors.ToolstudioError) -> int: ...


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    return connection.app.state.runtime  # type: ignore[no-any-return]


def presented_keys(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    keys = []
    authorization = connection.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    if api_key := connection.headers.get("x-api-key", "").strip():
        keys.append(api_key)
    return keys


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard for every /v1 route. Either header may hold the key: the Anthropic SDK sends
    `x-api-key` (often a dummy) and users add `Authorization: Bearer` next to it.

    Every request reads the key database, on the event loop (0.04 ms on SQLite, 0.14 ms on a
    local PostgreSQL): a guard that awaits lets uvicorn answer a malformed body (a bad chunk)
    before the app's own answer, which then fails on the dead connection. There is
    deliberately no cache of valid keys: a key revoked on any front-end is refused by all of
    them from the next request on. A database that cannot answer is a 503
    (`StorageUnavailable`), never a 401."""
    candidates = presented_keys(connection)
    if not candidates:
        raise errors.AuthenticationFailed(
            "missing API key: send `Authorization: Bearer sk-unsloth-...` or `x-api-key: sk-unsloth-...`"
        )
    store = runtime_of(connection).keys
    for candidate in candidates:
        if record := store.verify(candidate):
            connection.state.api_key = record
            return
    raise errors.AuthenticationFailed("invalid or revoked API key")


def api_key_of(request: Request[Any, Any, Any]) -> KeyRecord:
    return request.state.api_key  # type: ignore[no-any-return]


def as_toolstudio_error(exc: Exception) -> errors.ToolstudioError:
    if isinstance(exc, StorageUnavailable):
        log.warning("%s", exc)  # the detail (which database, why) is for the operator, not the client
        return exc
    if isinstance(exc, errors.ToolstudioError):
        return exc
    if isinstance(exc, HTTPException):
        by_status: dict[int, type[errors.ToolstudioError]] = {
            401: errors.AuthenticationFailed,
            403: errors.PermissionDenied,
            404: errors.NotFound,
            405: errors.MethodNotAllowed,
            413: errors.PayloadTooLarge,
        }
        cls = by_status.get(exc.status_code, errors.InvalidRequest if exc.status_code < 500 else errors.EngineFailure)
        message = exc.detail if exc.status_code != 404 else "no such route"
        return cls(message)
    log.exception("unhandled error", exc_info=exc)
    return errors.EngineFailure("internal server error")


def error_response(exc: Exception, dialect: ErrorDialect) -> Response[Any]:
    err = as_toolstudio_error(exc)
    headers = {"Retry-After": str(err.retry_after)} if isinstance(err, errors.Overloaded) else None
    return Response(dialect.error_body(err), status_code=dialect.error_status(err), headers=headers)


class ClientGone(Exception):
    pass


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client hangs up first (non-streaming requests:
    nothing else would notice, and the engine would decode for nobody)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()
