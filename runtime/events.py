"""The one internal event stream, and the fold that turns it into a complete answer.

Streaming responses render these events one by one; non-streaming responses render
`fold(events)`. Both come from the same events, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "tool_calls", "stop_sequence"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A client-visible tool call begins. Argument fragments follow as `ToolCallDelta`."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolRunStart:
    """A server-side tool is about to run (so a UI can say "running python…")."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A server-side tool finished. Never something the client must execute."""

    call_id: str
    name: str
    arguments: str
    output: str
    is_error: bool = False
    attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """The prompt is in the KV cache: its size and how much of it was reused from cache.
    The engine emits it once per generation, before any output (Anthropic's `message_start`
    reports it; the totals come later in `Usage`)."""

    prompt_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    stop_sequence: str | None = None


Event = (
    TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
    | ToolRunStart
    | ToolResult
    | Usage
    | Finished
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Completion:
    """Everything a non-streaming response needs, folded from the events."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    finish: Finished = field(default_factory=lambda: Finished("stop"))


def apply(completion: Completion, event: Event) -> None:
    """Fold one event into `completion` (in place)."""
    match event:
        case TextDelta(text=text):
            completion.text += text
        case ReasoningDelta(text=text):
            completion.reasoning += text
        case ToolCallEnd(id=call_id, name=name, arguments=arguments):
            completion.tool_calls.append(ToolCall(call_id, name, arguments))
        case ToolResult():
            completion.tool_results.append(event)
        case Usage():
            completion.usage = event
        case Finished():
            completion.finish = event


async def fold(events: AsyncIterator[Event]) -> Completion:
    completion = Completion()
    async for event in events:
        apply(completion, event)
    return completion
