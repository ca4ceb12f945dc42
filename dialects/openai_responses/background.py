"""`background: true` responses: the generation runs as a task of the server's event loop.

The create call answers at once with the response `queued`. The stored response then goes
`queued` (saved before the create call answers) → `in_progress` (the engine produced its
first event) → `completed` / `incomplete` / `failed`, or `cancelled` (POST .../cancel). Each
state is saved in that order, so `GET /v1/responses/{id}` polls it. A client going away does
not stop a background generation; `cancel` (or SIGTERM: `failed`, code server_error) does.

With `stream: true` as well, the run also writes the response's stream events, numbered by
`sequence_number`, to an `EventLog`: the create call streams it from the start, and
`GET /v1/responses/{id}?stream=true&starting_after=N` replays what came after event N and then
follows live, as often as clients reconnect. The stream is `response.created` and
`response.queued` (both `queued`), `response.in_progress` once the engine starts, the output
events of a foreground stream, and one terminal event: `response.completed` /
`response.incomplete`, `error` + `response.failed`, or `response.cancelled` (this server's
name for the end of a cancelled run; the SDKs pass an unknown event type through). A finished
run's log is kept in memory for `REPLAY_SECONDS` (at most `REPLAY_RUNS` of them), not across
restarts: after that the response can still be read with a plain GET.

A response a previous process left `queued`/`in_progress` (killed before it could save its
end) has no run here any more: `as_seen` shows it `failed`, never forever in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from litestar.response import ServerSentEventMessage

from dialects.openai_errors import error_type
from dialects.openai_responses.render import Body, OutputBuilder, Status
from dialects.sse import json_data
from runtime import errors
from runtime.events import Event
from runtime.http import as_toolstudio_error

log = logging.getLogger(__name__)

# The response object in a given state: (status, the output so far or None, the error).
Describe = Callable[[Status, OutputBuilder | None, errors.ToolstudioError | None], Body]
# Saves a response object (and the turn's transcript, when there is output).
Save = Callable[[Body, OutputBuilder | None], Awaitable[None]]

UNFINISHED: frozenset[str] = frozenset({"queued", "in_progress"})
REPLAY_SECONDS = 600.0  # how long a finished run's stream can still be replayed
REPLAY_RUNS = 64  # finished runs whose streams are kept at most


class EventLog:
    """The numbered stream events of one streamed background response, kept for its readers.

    Written by the run (on the event loop), read by any number of `follow` generators, each
    from its own position; a reader waits for the next event, never polls."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str]] = []  # (event type, JSON data); index = sequence_number
        self.closed = False
        self.closed_at = 0.0  # time.monotonic() at close
        self._wake = asyncio.Event()

    def append(self, body: Body) -> Body:
        """Number `body` (its `sequence_number` is its index) and publish it; returns it."""
        body["sequence_number"] = len(self.frames)
        self.frames.append((body["type"], json_data(body)))  # encoded now: later changes to its dicts don't leak in
        self._publish()
        return body

    def close(self) -> None:
        if not self.closed:
            self.closed, self.closed_at = True, time.monotonic()
            self._publish()

    def _publish(self) -> None:
        # Waking everyone waiting now; later waiters wait for the next event.
        self._wake.set()
        self._wake = asyncio.Event()

    async def follow(self, after: int = -1) -> AsyncIterator[ServerSentEventMessage]:
        """The events with a sequence number above `after`: those written already, then each
        new one as it comes, until the run ends."""
        index = max(after + 1, 0)
        while True:
            while index < len(self.frames):
                kind, data = self.frames[index]
                index += 1
                yield ServerSentEventMessage(data=data, event=kind)
            if self.closed:
                return
            await self._wake.wait()


@dataclass(eq=False)
class _Run:
    task: asyncio.Task[None] | None = None
    generation: asyncio.Task[None] | None = None
    progress: asyncio.Task[None] | None = None  # the `in_progress` save, awaited before the last one
    cancel_requested: bool = False
    events: EventLog | None = None  # streamed runs only


class BackgroundRuns:
    """The live background generations of one app, by response id, and the event logs of
    the streamed ones (live, and finished ones for a while)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._logs: OrderedDict[str, EventLog] = OrderedDict()  # oldest first

    def live(self, response_id: str) -> bool:
        return response_id in self._runs

    def events(self, response_id: str) -> EventLog | None:
        """The stream of a streamed background response: while it runs, and for
        `REPLAY_SECONDS` after (None once dropped, or when it was not streamed)."""
        self._prune()
        return self._logs.get(response_id)

    def forget(self, response_id: str) -> None:
        """Drop a deleted response's stream (a reader still attached reads to its end)."""
        self._logs.pop(response_id, None)

    def _prune(self) -> None:
        now = time.monotonic()
        finished = [k for k, v in self._logs.items() if v.closed]
        expired = [k for k in finished if now - self._logs[k].closed_at > REPLAY_SECONDS]
        excess = finished[: max(0, len(finished) - REPLAY_RUNS)]
        for key in {*expired, *excess}:
            del self._logs[key]

    def start(
        self,
        response_id: str,
        events: AsyncIterator[Event],
        *,
        queued: Awaitable[None],
        describe: Describe,
        save: Save,
        stream: bool = False,
    ) -> EventLog | None:
        """Run `events` to the end in a task. `queued` is the pending save of the `queued`
        state: the run waits for it, so no later state can be overwritten by it. With
        `stream`, returns the run's event log, its first two events (`response.created`,
        `response.queued`) already written."""
        run = _Run()
        if stream:
            self._prune()
            run.events = self._logs[response_id] = EventLog()
            body = describe("queued", None, None)
            run.events.append({"type": "response.created", "response": body})
            run.events.append({"type": "response.queued", "response": body})
        self._runs[response_id] = run
        run.task = asyncio.get_running_loop().create_task(
            self._run(response_id, run, events, queued, describe, save), name=f"background response {response_id}"
        )
        return run.events

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
        self,
        response_id: str,
        run: _Run,
        events: AsyncIterator[Event],
        queued: Awaitable[None],
        describe: Describe,
        save: Save,
    ) -> None:
        builder = OutputBuilder()
        stream = run.events
        error: errors.ToolstudioError | None = None
        try:
            await queued
            if run.cancel_requested:  # cancelled before it started
                await events.aclose()  # type: ignore[attr-defined]
                body = describe("cancelled", builder, None)
                await save(body, builder)
                if stream is not None:
                    stream.append({"type": "response.cancelled", "response": body})
                return

            def started() -> None:
                body = describe("in_progress", None, None)
                run.progress = asyncio.ensure_future(save(body, None))
                if stream is not None:
                    stream.append({"type": "response.in_progress", "response": body})

            publish = stream.append if stream is not None else None
            run.generation = asyncio.ensure_future(_consume(events, builder, started, publish))
            await asyncio.wait({run.generation})
            status: Status
            if run.generation.cancelled():
                status = "cancelled"
            elif (raised := run.generation.exception()) is not None:
                status, error = "failed", as_toolstudio_error(raised)  # type: ignore[arg-type]
            else:
                status = builder.status
            closing = builder.close(status)
            body = describe(status, builder, error)
            if run.progress is not None:
                await run.progress
            # Saved before the terminal event, so a client that chains `previous_response_id`
            # the moment the stream ends finds the response stored.
            await save(body, builder)
            if stream is not None:
                for frame in closing:
                    stream.append(frame)
                if error is not None:
                    code = error.code or error_type(error)
                    stream.append({"type": "error", "code": code, "message": error.message, "param": error.param})
                stream.append({"type": f"response.{status}", "response": body})
        except Exception:  # the store failed: GET shows the run `failed` once it is gone
            log.exception("background response %s could not be saved", response_id)
        finally:
            del self._runs[response_id]
            if stream is not None:
                stream.close()


async def _consume(
    events: AsyncIterator[Event],
    builder: OutputBuilder,
    started: Callable[[], None],
    publish: Callable[[Body], Body] | None,
) -> None:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        first = True
        async for event in events:
            if first:
                first = False
                started()
            frames = builder.feed(event)
            if publish is not None:
                for frame in frames:
                    publish(frame)


def as_seen(body: Body, live: bool) -> Body:
    """The stored body as clients see it: an unfinished response with no live run (the
    process that ran it stopped before saving its end) is `failed`."""
    if body.get("status") not in UNFINISHED or live:
        return body
    error: dict[str, Any] = {"code": "server_error", "message": "the server stopped before this response finished"}
    return {**body, "status": "failed", "error": error}
