"""Events -> Chat Completions wire: one JSON body, or SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from litestar.response import ServerSentEventMessage

from dialects.common import tool_result_body
from dialects.openai_errors import error_body
from dialects.sse import json_data
from runtime.events import (
    ChoiceEvent,
    Completion,
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
    apply,
)
from runtime.http import as_toolstudio_error

FINISH_REASONS = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls"}


@dataclass(frozen=True, slots=True)
class Meta:
    id: str
    created: int
    model: str


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _token_text(token: bytes) -> str:
    # A token may hold part of a UTF-8 character; `bytes` carries it exactly.
    return token.decode("utf-8", "backslashreplace")


def logprobs_body(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """`choices[].logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [{token,
    logprob, bytes}]}], "refusal": null}; logprobs are natural logs of the model's raw
    distribution (see `TokenLogprob`)."""
    return {
        "content": [
            {
                "token": _token_text(e.token),
                "logprob": e.logprob,
                "bytes": list(e.token),
                "top_logprobs": [
                    {"token": _token_text(t.token), "logprob": t.logprob, "bytes": list(t.token)} for t in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


async def fold_choices(events: AsyncIterator[Event], n: int) -> list[Completion]:
    """The non-streaming fold for `n` choices: with n > 1 the events of choice i come as
    `ChoiceEvent(i, ...)`; the request's one `Usage` (prompt counted once) goes to every
    choice's completion, the body reports it once."""
    choices = [Completion() for _ in range(n)]
    async for event in events:
        if isinstance(event, ChoiceEvent):
            apply(choices[event.index], event.event)
        elif n == 1 or isinstance(event, Usage):
            for completion in choices:
                apply(completion, event)
    return choices


def render_response(completion: Completion | list[Completion], meta: Meta, *, logprobs: bool = False) -> dict[str, Any]:
    """The `chat.completion` body; a list gives one choice per completion (n > 1)."""
    completions = completion if isinstance(completion, list) else [completion]
    first = completions[0]
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": index,
                "message": _message(choice),
                "logprobs": logprobs_body(choice.logprobs) if logprobs else None,
                "finish_reason": FINISH_REASONS[choice.finish.reason],
            }
            for index, choice in enumerate(completions)
        ],
        "usage": usage_body(first.usage),
    }
    if first.tool_results:
        body["tool_results"] = [tool_result_body(r) for r in first.tool_results]
    return body


def _message(completion: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion.text or None}
    if completion.reasoning:
        message["reasoning_content"] = completion.reasoning
    if completion.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ]
    elif message["content"] is None:
        message["content"] = ""
    return message


class ChunkWriter:
    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    def chunk(
        self,
        delta: dict[str, Any] | None = None,
        finish: str | None = None,
        *,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        choices = [] if delta is None else [choice]
        return json_data(
            {
                "id": self.meta.id,
                "object": "chat.completion.chunk",
                "created": self.meta.created,
                "model": self.meta.model,
                "system_fingerprint": None,
                "choices": choices,
                **extra,
            }
        )


async def render_stream(
    events: AsyncIterator[Event], meta: Meta, *, include_usage: bool, logprobs: bool = False, n: int = 1
) -> AsyncIterator[str | ServerSentEventMessage]:
    """SSE chunks. With n > 1 every chunk carries its choice's `index` (the events come as
    `ChoiceEvent`); with `logprobs`, content chunks carry their tokens' logprobs."""
    out = ChunkWriter(meta)
    for choice in range(n):
        yield out.chunk({"role": "assistant", "content": ""}, index=choice)
    usage: Usage | None = None
    try:
        async for wrapped in events:
            choice, event = (wrapped.index, wrapped.event) if isinstance(wrapped, ChoiceEvent) else (0, wrapped)
            match event:
                case TextDelta(text=text, logprobs=entries):
                    lp = logprobs_body(entries) if logprobs else None
                    yield out.chunk({"content": text}, index=choice, logprobs=lp)
                case ReasoningDelta(text=text):
                    yield out.chunk({"reasoning_content": text}, index=choice)
                case ToolCallStart(index=index, id=call_id, name=name):
                    call = {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                    yield out.chunk({"tool_calls": [call]}, index=choice)
                case ToolCallDelta(index=index, arguments=arguments):
                    delta = {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
                    yield out.chunk(delta, index=choice)
                case ToolRunStart(call_id=call_id, name=name, arguments=arguments):
                    body = out.chunk(
                        tool_call={"id": call_id, "name": name, "arguments": arguments, "status": "running"}
                    )
                    yield ServerSentEventMessage(data=body, event="tool_call")
                case ToolResult():
                    yield ServerSentEventMessage(
                        data=out.chunk(tool_result=tool_result_body(event)), event="tool_result"
                    )
                case Usage():
                    usage = event
                case Finished(reason=reason) if n == 1 or wrapped is not event:
                    yield out.chunk({}, FINISH_REASONS[reason], index=choice)
    except Exception as raised:
        # Headers are gone; the SDKs raise on a data frame holding an `error` object. A stream
        # cut by shutdown (ServerShuttingDown) ends here too, never with a finish_reason: "stop"
        # would pass a cut answer off as whole, "length" would blame max_tokens.
        yield json_data(error_body(as_toolstudio_error(raised)))
        return
    if include_usage and usage is not None:
        yield out.chunk(usage=usage_body(usage))
    yield "[DONE]"
