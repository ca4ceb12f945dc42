"""`background: true` responses: the generation runs as a task of the server's event loop.

The create call answers at once with the response `queued`. The stored response then goes
`queued` (saved before the create call answers) → `in_progress` (the engine produced its
first event) → `completed` / `incomplete` / `failed`, or `cancelled` (POST .../cancel). Each
state is saved in that order, so `GET /v1/responses/{id}` polls it. A client going away does
not stop a background generation; `cancel` (or SIGTERM: `failed`, code server_error) does.

A response a previous process left `queued`/`in_progress` (killed before it could save its
end) has no run here any more: `as_seen` shows it `failed`, never forever in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dialects.openai_responses.render import Body, OutputBuilder, Status
from runtime import errors
from runtime.events import Event
from runtime.http import as_toolstudio_error

log = logging.getLogger(__name__)

# Saves the response in the given state: (status, the output so far or None, the error).
SaveState = Callable[[Status, OutputBuilder | None, errors.ToolstudioError | None], Awaitable[None]]

UNFINISHED: frozenset[str] = frozenset({"queued", "in_progress"})


@dataclass(eq=False)
class _Run:
    task: asyncio.Task[None] | None = None
    generation: asyncio.Task[None] | None = None
    progress: asyncio.Task[None] | None = None  # the `in_progress` save, awaited before the last one
    cancel_requested: bool = False


class BackgroundRuns:
    """The live background generations of one app, by response id."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def live(self, response_id: str) -> bool:
        return response_id in self._runs

    def start(
        self, response_id: str, events: AsyncIterator[Event], *, queued: Awaitable[None], save: SaveState
    ) -> None:
        """Run `events` to the end in a task. `queued` is the pending save of the `queued`
        state: the run waits for it, so no later state can be overwritten by it."""
        run = _Run()
        self._runs[response_id] = run
        run.task = asyncio.get_running_loop().create_task(
            self._run(response_id, run, events, queued, save), name=f"background response {response_id}"
        )

    async def cancel(self, response_id: str) -> bool:
        """Stop the run's generation and wait until its final state is saved (`cancelled`, or
        whatever it reached first if it was already ending). False when no run is live."""
        run = self._runs.get(response_id)
        if run is None or run.task is None:
            return False
        run.cancel_requested = True
        if run.generation is not None:
            run.generation.cancel()
        # asyncio.wait: if this request is itself cancelled, the run still saves its end.
        await asyncio.wait({run.task})
        return True

    async def _run(
        self, response_id: str, run: _Run, events: AsyncIterator[Event], queued: Awaitable[None], save: SaveState
    ) -> None:
        builder = OutputBuilder()
        status: Status
        error: errors.ToolstudioError | None = None
        try:
            await queued
            if run.cancel_requested:  # cancelled before it started
                await events.aclose()  # type: ignore[attr-defined]
                await save("cancelled", builder, None)
                return

            def started() -> None:
                run.progress = asyncio.ensure_future(save("in_progress", None, None))

            run.generation = asyncio.ensure_future(_consume(events, builder, started))
            await asyncio.wait({run.generation})
            if run.generation.cancelled():
                status = "cancelled"
            elif (raised := run.generation.exception()) is not None:
                status, error = "failed", as_toolstudio_error(raised)  # type: ignore[arg-type]
            else:
                status = builder.status
            builder.close(status)
            if run.progress is not None:
                await run.progress
            await save(status, builder, error)
        except Exception:  # the store failed: GET shows the run `failed` once it is gone
            log.exception("background response %s could not be saved", response_id)
        finally:
            del self._runs[response_id]


async def _consume(events: AsyncIterator[Event], builder: OutputBuilder, started: Callable[[], None]) -> None:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        first = True
        async for event in events:
            if first:
                first = False
                started()
            builder.feed(event)


def as_seen(body: Body, live: bool) -> Body:
    """The stored body as clients see it: an unfinished response with no live run (the
    process that ran it stopped before saving its end) is `failed`."""
    if body.get("status") not in UNFINISHED or live:
        return body
    error: dict[str, Any] = {"code": "server_error", "message": "the server stopped before this response finished"}
    return {**body, "status": "failed", "error": error}
