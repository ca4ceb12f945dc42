"""Events -> Anthropic Messages wire: one `message` body, or the SSE event sequence.

Stream: `message_start`, then per content block `content_block_start` / `content_block_delta`*
/ `content_block_stop` (a `ping` after the first start), then `message_delta` and
`message_stop`. Every frame carries `event: <type>` and a JSON body with the same `type`.

Server-side tools add two extension frames, `tool_call` (a tool is running) and `tool_result`.
The SDK's stream decoder has no model for them; it builds them leniently (as its first union
member, keeping our fields) and passes them through untouched: `text_stream` ignores them and
`get_final_message()` does not fold them in. `Anthropic(_strict_response_validation=True)` would
reject them, which is why they carry nothing a client needs for the conversation itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar.response import ServerSentEventMessage

from dialects.anthropic.errors import error_body
from dialects.sse import json_data
from runtime.events import (
    Completion,
    Event,
    Finished,
    PromptUsage,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
)
from runtime.http import as_toolstudio_error

log = logging.getLogger(__name__)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "stop_sequence": "stop_sequence"}


@dataclass(frozen=True, slots=True)
class Meta:
    id: str
    model: str
    cache_ttl: str = "5m"  # the last cache breakpoint's ttl: where usage counts cache writes


def tool_use_id(call_id: str) -> str:
    """Anthropic ids read `toolu_…`; the mapping is pure, so stream and body agree."""
    return call_id if call_id.startswith("toolu_") else f"toolu_{call_id.removeprefix('call_')}"


def signature(thinking: str) -> str:
    """An opaque `signature` for a thinking block. The SDK's type requires one, and clients pass
    thinking blocks back with it; a digest of the text is stable across stream and non-stream."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def tool_input(arguments: str) -> dict[str, Any]:
    """`input` must be an object. The engine constrains calls to JSON; if one still isn't an
    object, answer with an empty input (logged) rather than a 500 for the whole response."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("tool call arguments are not a JSON object: %.200r", arguments)
        return {}
    return value


def stop_reason(finish: Finished, client_calls: bool) -> str:
    # Server-side tool runs end in an answer, never in a call for the client to execute.
    if finish.reason == "tool_calls" and not client_calls:
        return "end_turn"
    return STOP_REASONS[finish.reason]


def usage_body(usage: Usage, ttl: str = "5m") -> dict[str, Any]:
    """Anthropic's split of the prompt: `cache_read_input_tokens` were served from the KV
    cache, `cache_creation_input_tokens` lie up to the last `cache_control` breakpoint and
    were computed (so written) this time, `input_tokens` are the rest; the three add up to
    the prompt (`count_tokens`). Without a breakpoint nothing counts as written, though
    every prefix is kept (see README, API notes)."""
    written = usage.cache_write_tokens
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens - written,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written if ttl != "1h" else 0,
            "ephemeral_1h_input_tokens": written if ttl == "1h" else 0,
        },
    }


def tool_result_body(result: ToolResult) -> dict[str, Any]:
    """dialects/common.py's body (attachments included, same shape), keyed by `tool_use_id`."""
    return {
        "tool_use_id": tool_use_id(result.call_id),
        "name": result.name,
        "arguments": result.arguments,
        "output": result.output,
        "is_error": result.is_error,
        "attachments": result.attachments,
        "session_restored": result.session_restored,
    }


def render_message(completion: Completion, meta: Meta) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if completion.reasoning:
        content.append(
            {"type": "thinking", "thinking": completion.reasoning, "signature": signature(completion.reasoning)}
        )
    if completion.text:
        content.append({"type": "text", "text": completion.text})
    for call in completion.tool_calls:
        content.append(
            {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": tool_input(call.arguments)}
        )
    if not content:
        content.append({"type": "text", "text": ""})  # `message.content[0].text` must not IndexError
    finish = completion.finish
    body: dict[str, Any] = {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": content,
        "stop_reason": stop_reason(finish, bool(completion.tool_calls)),
        "stop_sequence": finish.stop_sequence if finish.reason == "stop_sequence" else None,
        "usage": usage_body(completion.usage, meta.cache_ttl),
    }
    if completion.tool_results:
        body["tool_results"] = [tool_result_body(r) for r in completion.tool_results]
    return body


def frame(body: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json_data(body), event=body["type"])


@dataclass(slots=True)
class BlockWriter:
    """Opens and closes content blocks as the kind of output changes."""

    index: int = -1
    kind: str | None = None  # the open block's type
    thinking: str = ""  # the open thinking block's text, for its signature
    pinged: bool = False
    client_calls: bool = False
    calls: dict[int, int] = field(default_factory=dict)  # event call index -> block index
    streamed: set[int] = field(default_factory=set)  # call indices that had argument deltas

    def start(self, block: dict[str, Any]) -> list[ServerSentEventMessage]:
        frames = self.stop()
        self.index += 1
        self.kind = block["type"]
        frames.append(frame({"type": "content_block_start", "index": self.index, "content_block": block}))
        if not self.pinged:
            frames.append(self.ping())
        return frames

    def ping(self) -> ServerSentEventMessage:
        self.pinged = True
        return frame({"type": "ping"})

    def delta(self, delta: dict[str, Any], index: int | None = None) -> ServerSentEventMessage:
        return frame({"type": "content_block_delta", "index": self.index if index is None else index, "delta": delta})

    def stop(self) -> list[ServerSentEventMessage]:
        if self.kind is None:
            return []
        frames = []
        if self.kind == "thinking":
            frames.append(self.delta({"type": "signature_delta", "signature": signature(self.thinking)}))
            self.thinking = ""
        frames.append(frame({"type": "content_block_stop", "index": self.index}))
        self.kind = None
        return frames

    def text(self, text: str) -> list[ServerSentEventMessage]:
        frames = [] if self.kind == "text" else self.start({"type": "text", "text": ""})
        return [*frames, self.delta({"type": "text_delta", "text": text})]

    def reasoning(self, text: str) -> list[ServerSentEventMessage]:
        frames = [] if self.kind == "thinking" else self.start({"type": "thinking", "thinking": "", "signature": ""})
        self.thinking += text
        return [*frames, self.delta({"type": "thinking_delta", "thinking": text})]

    def call_start(self, event: ToolCallStart) -> list[ServerSentEventMessage]:
        self.client_calls = True
        frames = self.start({"type": "tool_use", "id": tool_use_id(event.id), "name": event.name, "input": {}})
        self.calls[event.index] = self.index
        return frames

    def call_delta(self, event: ToolCallDelta) -> list[ServerSentEventMessage]:
        if not event.arguments or event.index not in self.calls:
            return []
        self.streamed.add(event.index)
        return [self.delta({"type": "input_json_delta", "partial_json": event.arguments}, self.calls[event.index])]

    def call_end(self, event: ToolCallEnd) -> list[ServerSentEventMessage]:
        frames = [] if event.index in self.calls else self.call_start(ToolCallStart(event.index, event.id, event.name))
        if event.index not in self.streamed and event.arguments:
            # An engine that only knows the arguments at the end still fills `input`.
            frames.append(
                self.delta({"type": "input_json_delta", "partial_json": event.arguments}, self.calls[event.index])
            )
        if self.kind == "tool_use" and self.calls[event.index] == self.index:
            frames.extend(self.stop())
        return frames

    def finish(self) -> list[ServerSentEventMessage]:
        if self.index < 0:
            # Same as the non-stream body: always at least one (possibly empty) text block.
            return [*self.start({"type": "text", "text": ""}), *self.stop()]
        frames = self.stop()
        if not self.pinged:
            frames.append(self.ping())
        return frames


def _message_start(meta: Meta, prompt: PromptUsage | None) -> ServerSentEventMessage:
    # The prompt's counts are known once it is in the KV cache (`PromptUsage`); `message_delta`
    # repeats them with the totals (an agent loop's later generations included), and the
    # SDK takes `input_tokens` and the cache fields from there.
    usage = Usage(prompt.prompt_tokens, 0, prompt.cached_tokens, prompt.cache_write_tokens) if prompt else Usage(0, 0)
    message = {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_body(usage, meta.cache_ttl),
    }
    return frame({"type": "message_start", "message": message})


async def render_stream(events: AsyncIterator[Event], meta: Meta) -> AsyncIterator[ServerSentEventMessage]:
    blocks = BlockWriter()
    usage = Usage(0, 0)
    finish = Finished("stop")
    started = False
    try:
        async for event in events:
            if not started:
                # Anthropic counts the prompt in `message_start` (Claude Code's context meter
                # reads it there): the engine says it before any output.
                started = True
                yield _message_start(meta, event if isinstance(event, PromptUsage) else None)
            frames: list[ServerSentEventMessage] = []
            match event:
                case TextDelta(text=text) if text:
                    frames = blocks.text(text)
                case ReasoningDelta(text=text) if text:
                    frames = blocks.reasoning(text)
                case ToolCallStart():
                    frames = blocks.call_start(event)
                case ToolCallDelta():
                    frames = blocks.call_delta(event)
                case ToolCallEnd():
                    frames = blocks.call_end(event)
                case ToolRunStart(call_id=call_id, name=name, arguments=arguments):
                    running = {"id": tool_use_id(call_id), "name": name, "arguments": arguments, "status": "running"}
                    frames = [frame({"type": "tool_call", **running})]
                case ToolResult():
                    frames = [frame({"type": "tool_result", **tool_result_body(event)})]
                case Usage():
                    usage = event
                case Finished():
                    finish = event
            for item in frames:
                yield item
    except Exception as exc:
        # Headers are gone: Anthropic's `event: error` frame, which the SDK raises as an APIError.
        # A generation cut by SIGTERM (ServerShuttingDown) ends here as `overloaded_error`, with
        # no `message_delta`/`message_stop`: an `end_turn` would pass the cut answer off as whole.
        if not started:
            yield _message_start(meta, None)
        yield frame(error_body(as_toolstudio_error(exc)))
        return
    if not started:
        yield _message_start(meta, None)
    for item in blocks.finish():
        yield item
    delta = {
        "stop_reason": stop_reason(finish, blocks.client_calls),
        "stop_sequence": finish.stop_sequence if finish.reason == "stop_sequence" else None,
    }
    # MessageDeltaUsage has no `cache_creation` breakdown: message_start carried it.
    body = usage_body(usage, meta.cache_ttl)
    del body["cache_creation"]
    yield frame({"type": "message_delta", "delta": delta, "usage": body})
    yield frame({"type": "message_stop"})
