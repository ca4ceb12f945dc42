"""Events -> Responses wire: output items, the response object, and the SSE event sequence.

`OutputBuilder` consumes the runtime's events in order and produces both the stream events
and the final output items, so a streamed response and a non-streamed one are the same
object. It also keeps the turn's IR transcript (assistant turns, server tool calls and their
results) for the store, so `previous_response_id` can rebuild the whole conversation.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from litestar.response import ServerSentEventMessage

from dialects.common import new_id, now, tool_result_body
from dialects.openai_errors import error_type
from dialects.sse import json_data
from runtime import errors
from runtime.events import (
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
)
from runtime.http import as_toolstudio_error
from runtime.ir import Message, Part, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

# "queued" and "cancelled" only occur for `background: true` responses (routes.py).
Status = Literal["completed", "incomplete", "failed", "in_progress", "queued", "cancelled"]
Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Meta:
    """What every response object of one request repeats: its id, and the request's settings."""

    id: str
    created_at: int
    model: str
    echo: Body = field(default_factory=dict)  # instructions, tools, sampling, text, store, ...


class OutputBuilder:
    """Open items are appended to `output` when they start and completed in place."""

    def __init__(self) -> None:
        self.output: list[Body] = []
        self._index: dict[str, int] = {}  # item id -> output_index
        self._open: Body | None = None  # the message or reasoning item text deltas go to
        self._calls: dict[int, Body] = {}  # tool-call index -> its function_call item
        self.tool_results: list[ToolResult] = []
        self.usage = Usage(0, 0)
        self.finish = Finished("stop")
        self.reasoning_deltas = 0
        self.transcript: list[Message] = [Message("assistant", [])]

    @property
    def status(self) -> Status:
        return "incomplete" if self.finish.reason == "length" else "completed"

    @property
    def output_text(self) -> str:
        return "".join(
            c["text"] for item in self.output if item["type"] == "message" for c in item["content"] if "text" in c
        )

    def conversation(self) -> list[Message]:
        return [m for m in self.transcript if m.parts]

    def _add_part(self, part: Part) -> None:
        self.transcript[-1].parts.append(part)

    # -- items --------------------------------------------------------------------------------

    def _start(self, item: Body) -> list[Body]:
        index = self._index[item["id"]] = len(self.output)
        self.output.append(item)
        return [{"type": "response.output_item.added", "output_index": index, "item": _in_progress(item)}]

    def _open_item(self, kind: Literal["message", "reasoning"]) -> list[Body]:
        if self._open is not None and self._open["type"] == kind:
            return []
        frames = self._close_open("completed")
        if kind == "message":
            item: Body = {"id": new_id("msg_"), "type": "message", "role": "assistant", "status": "in_progress"}
            part: Body = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": new_id("rs_"), "type": "reasoning", "summary": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        item["content"] = [part]
        self._open = item
        frames += self._start(item)
        frames.append({"type": "response.content_part.added", **self._where(item), "part": dict(part)})
        return frames

    def _where(self, item: Body) -> Body:
        return {"item_id": item["id"], "output_index": self._index[item["id"]], "content_index": 0}

    def _close_open(self, status: Status) -> list[Body]:
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = status
        part = item["content"][0]
        where = self._where(item)
        if item["type"] == "message":
            self._add_part(TextPart(part["text"]))
            logprobs = [_without_bytes(e) for e in part["logprobs"]]
            done: Body = {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": logprobs}
        else:
            self._add_part(ReasoningPart(part["text"]))
            done = {"type": "response.reasoning_text.done", **where, "text": part["text"]}
        return [
            done,
            {"type": "response.content_part.done", **where, "part": dict(part)},
            {"type": "response.output_item.done", "output_index": where["output_index"], "item": item},
        ]

    def _start_call(self, index: int, call_id: str, name: str) -> list[Body]:
        frames = self._close_open("completed")
        item: Body = {
            "id": new_id("fc_"),
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        self._calls[index] = item
        return frames + self._start(item)

    def _end_call(self, item: Body, arguments: str, status: Status) -> list[Body]:
        item["arguments"] = arguments
        item["status"] = status
        self._add_part(ToolCallPart(item["call_id"], item["name"], arguments))
        where = {"item_id": item["id"], "output_index": self._index[item["id"]]}
        return [
            {"type": "response.function_call_arguments.done", **where, "arguments": arguments},
            {"type": "response.output_item.done", "output_index": where["output_index"], "item": item},
        ]

    # -- events -------------------------------------------------------------------------------

    def feed(self, event: Event) -> list[Body]:
        """Apply one event; returns the stream events it causes (no sequence numbers yet)."""
        match event:
            case TextDelta(text=text) | ReasoningDelta(text=text) if not text:
                return []
            case TextDelta(text=text, logprobs=entries):
                frames = self._open_item("message")
                assert self._open is not None
                part = self._open["content"][0]
                part["text"] += text
                part["logprobs"] += [part_logprob(e) for e in entries]
                deltas = [event_logprob(e) for e in entries]
                return [
                    *frames,
                    {
                        "type": "response.output_text.delta",
                        **self._where(self._open),
                        "delta": text,
                        "logprobs": deltas,
                    },
                ]
            case ReasoningDelta(text=text):
                frames = self._open_item("reasoning")
                assert self._open is not None
                self._open["content"][0]["text"] += text
                self.reasoning_deltas += 1
                return [*frames, {"type": "response.reasoning_text.delta", **self._where(self._open), "delta": text}]
            case ToolCallStart(index=index, id=call_id, name=name):
                return self._start_call(index, call_id, name)
            case ToolCallDelta(index=index, arguments=arguments):
                item = self._calls.get(index)
                if item is None or not arguments:
                    return []
                item["arguments"] += arguments
                where = {"item_id": item["id"], "output_index": self._index[item["id"]]}
                return [{"type": "response.function_call_arguments.delta", **where, "delta": arguments}]
            case ToolCallEnd(index=index, id=call_id, name=name, arguments=arguments):
                frames = [] if index in self._calls else self._start_call(index, call_id, name)
                return frames + self._end_call(self._calls.pop(index), arguments, "completed")
            case ToolRunStart(call_id=call_id, name=name, arguments=arguments):
                frames = self._close_open("completed")
                run = {"call_id": call_id, "name": name, "arguments": arguments, "status": "running"}
                return [*frames, {"type": "tool_call", **run}]
            case ToolResult():
                frames = self._close_open("completed")
                self.tool_results.append(event)
                # The transcript records the server's call and its result, so a follow-up turn
                # sees what the tool returned; the client never has to execute it.
                self._add_part(ToolCallPart(event.call_id, event.name, event.arguments))
                result = ToolResultPart(event.call_id, event.output, is_error=event.is_error, name=event.name)
                self.transcript += [Message("tool", [result]), Message("assistant", [])]
                return [*frames, {"type": "tool_result", **tool_result_body(event)}]
            case Usage():
                self.usage = event
            case Finished():
                self.finish = event
        return []

    def close(self, status: Status) -> list[Body]:
        """Complete whatever is still open, with the item status the response ended in."""
        item_status: Status = "incomplete" if status != "completed" else "completed"
        frames = self._close_open(item_status)
        for index in list(self._calls):
            item = self._calls.pop(index)
            frames += self._end_call(item, item["arguments"], item_status)
        return frames


def _token_text(token: bytes) -> str:
    return token.decode("utf-8", "backslashreplace")  # part of a UTF-8 character: `bytes` has it exactly


def part_logprob(entry: TokenLogprob) -> Body:
    """An `output_text` part's logprob: {token, logprob, bytes, top_logprobs: [{token,
    logprob, bytes}]} (natural logs of the model's raw distribution, see `TokenLogprob`)."""
    return {
        "token": _token_text(entry.token),
        "logprob": entry.logprob,
        "bytes": list(entry.token),
        "top_logprobs": [
            {"token": _token_text(t.token), "logprob": t.logprob, "bytes": list(t.token)} for t in entry.top
        ],
    }


def event_logprob(entry: TokenLogprob) -> Body:
    """A `response.output_text.delta`/`.done` event's logprob: as the part's, without `bytes`."""
    return _without_bytes(part_logprob(entry))


def _without_bytes(logprob: Body) -> Body:
    top = [{"token": t["token"], "logprob": t["logprob"]} for t in logprob["top_logprobs"]]
    return {"token": logprob["token"], "logprob": logprob["logprob"], "top_logprobs": top}


def _in_progress(item: Body) -> Body:
    """The item as `output_item.added` shows it: no content yet (parts arrive separately)."""
    return {**item, "content": []} if "content" in item else dict(item)


# -- the response object ------------------------------------------------------------------------


def usage_body(builder: OutputBuilder) -> Body:
    usage = builder.usage
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        # Engines report no reasoning count; each reasoning delta is one decoded token.
        "output_tokens_details": {"reasoning_tokens": min(builder.reasoning_deltas, usage.completion_tokens)},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _error_code(exc: errors.ToolstudioError) -> str:
    """`Response.error.code` is a closed set in the SDK; pick the nearest member."""
    if isinstance(exc, errors.Overloaded):
        return "rate_limit_exceeded"
    if isinstance(exc, errors.InvalidRequest):
        return "invalid_prompt"
    return "server_error"


def response_body(
    meta: Meta, builder: OutputBuilder | None, status: Status, error: errors.ToolstudioError | None = None
) -> Body:
    done = builder is not None and status not in ("in_progress", "queued")
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    body: Body = {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created_at,
        "status": status,
        "completed_at": now() if status == "completed" else None,
        "error": {"code": _error_code(error), "message": error.message} if error else None,
        "incomplete_details": incomplete,
        "model": meta.model,
        "output": builder.output if done and builder else [],
        "output_text": builder.output_text if done and builder else "",
        "usage": usage_body(builder) if done and builder else None,
        **meta.echo,
    }
    if done and builder and builder.tool_results:
        body["tool_results"] = [tool_result_body(r) for r in builder.tool_results]
    return body


async def collect(events: AsyncIterator[Event]) -> OutputBuilder:
    """The non-streaming path: the same builder, its stream events discarded."""
    builder = OutputBuilder()
    async for event in events:
        builder.feed(event)
    builder.close(builder.status)
    return builder


# -- SSE --------------------------------------------------------------------------------------

OnDone = Callable[[Body, OutputBuilder], Awaitable[None]]


async def render_stream(
    events: AsyncIterator[Event], meta: Meta, on_done: OnDone
) -> AsyncIterator[ServerSentEventMessage]:
    """Every frame carries `event: <type>` and the same `type` in its data, numbered in order.
    `on_done` (the store) runs before the terminal event, so a client that chains a
    `previous_response_id` the moment the stream ends finds the response saved.

    A failure after the headers (the engine broke, or SIGTERM cut the generation:
    `ServerShuttingDown`) ends with an `error` event (its `code` says which, e.g.
    `server_shutting_down`) and `response.failed` (`error.code` "server_error"), and the
    response is stored as failed. Not `response.incomplete`: its `incomplete_details.reason`
    is a closed set (`max_output_tokens`, `content_filter`) and neither would be true, and a
    client checking for `response.completed` must not take a cut answer for a whole one."""
    numbers = itertools.count()
    builder = OutputBuilder()

    def frame(body: Body) -> ServerSentEventMessage:
        body["sequence_number"] = next(numbers)
        return ServerSentEventMessage(data=json_data(body), event=body["type"])

    yield frame({"type": "response.created", "response": response_body(meta, None, "in_progress")})
    yield frame({"type": "response.in_progress", "response": response_body(meta, None, "in_progress")})
    try:
        async for event in events:
            for body in builder.feed(event):
                yield frame(body)
    except Exception as raised:  # headers are gone: report in-band, as OpenAI does
        exc = as_toolstudio_error(raised)
        for body in builder.close("failed"):
            yield frame(body)
        code = exc.code or error_type(exc)
        yield frame({"type": "error", "code": code, "message": exc.message, "param": exc.param})
        final = response_body(meta, builder, "failed", exc)
        await on_done(final, builder)
        yield frame({"type": "response.failed", "response": final})
        return
    status = builder.status
    for body in builder.close(status):
        yield frame(body)
    final = response_body(meta, builder, status)
    await on_done(final, builder)
    yield frame({"type": f"response.{status}", "response": final})
