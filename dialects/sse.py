"""Small helpers shared by the dialects' SSE renderers."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from litestar.response import ServerSentEvent, ServerSentEventMessage

T = TypeVar("T")

_encoder = msgspec.json.Encoder()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(frames: AsyncIterator[str | ServerSentEventMessage]) -> ServerSentEvent:
    """A text/event-stream response framed with LF line endings.

    The SSE spec allows CRLF (Litestar's default), but OpenAI and Anthropic send LF and
    common hand-written clients split events on `\n\n`.
    """

    async def lf_framed() -> AsyncIterator[ServerSentEventMessage]:
        async with contextlib.aclosing(frames):  # type: ignore[type-var]
            async for frame in frames:
                if isinstance(frame, ServerSentEventMessage):
                    yield dataclasses.replace(frame, sep="\n")
                else:
                    yield ServerSentEventMessage(data=frame, sep="\n")

    return ServerSentEvent(lf_framed(), headers=SSE_HEADERS)


def json_data(body: Any) -> str:
    return _encoder.encode(body).decode()


async def primed(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Pull the first item before any header is sent, so request errors (context too long,
    a bad grammar, a full queue) still become a proper 4xx instead of a broken stream."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
        empty = True
    else:
        empty = False

    async def chained() -> AsyncIterator[T]:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            if not empty:
                yield first  # type: ignore[misc]
                async for item in events:
                    yield item

    return chained()
