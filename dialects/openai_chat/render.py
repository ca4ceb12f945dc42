"""Events -> Chat Completions wire: one JSON body, or SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar.response import ServerSentEventMessage

from dialects.common import tool_result_body
from dialects.openai_errors import error_body
from dialects.sse import json_data
from runtime.errors import ToolstudioError
from runtime.events import (
    Completion,
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
)

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


def render_response(completion: Completion, meta: Meta) -> dict[str, Any]:
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
    body: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS[completion.finish.reason],
            }
        ],
        "usage": usage_body(completion.usage),
    }
    if completion.tool_results:
        body["tool_results"] = [tool_result_body(r) for r in completion.tool_results]
    return body


class ChunkWriter:
    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    def chunk(self, delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
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
    events: AsyncIterator[Event], meta: Meta, *, include_usage: bool
) -> AsyncIterator[str | ServerSentEventMessage]:
    out = ChunkWriter(meta)
    yield out.chunk({"role": "assistant", "content": ""})
    usage: Usage | None = None
    try:
        async for event in events:
            match event:
                case TextDelta(text=text):
                    yield out.chunk({"content": text})
                case ReasoningDelta(text=text):
                    yield out.chunk({"reasoning_content": text})
                case ToolCallStart(index=index, id=call_id, name=name):
                    call = {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                    yield out.chunk({"tool_calls": [call]})
                case ToolCallDelta(index=index, arguments=arguments):
                    yield out.chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
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
                case Finished(reason=reason):
                    yield out.chunk({}, FINISH_REASONS[reason])
    except ToolstudioError as exc:
        # Headers are gone; the SDKs raise on a data frame holding an `error` object.
        yield json_data(error_body(exc))
        return
    if include_usage and usage is not None:
        yield out.chunk(usage=usage_body(usage))
    yield "[DONE]"
