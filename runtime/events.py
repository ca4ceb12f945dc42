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
class TopLogprob:
    """One of the most likely tokens at a position: its text bytes and log probability."""

    token: bytes
    logprob: float  # natural log, <= 0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log probability, only when the request asked for logprobs.

    The distribution is the model's own: a log-softmax over the whole vocabulary of the raw
    logits at the sampled position, before temperature, top-k/top-p/min-p, penalties or a
    grammar (what OpenAI reports; llama.cpp's server reports post-sampling probabilities by
    default). `top` holds the `top_logprobs` most likely tokens, most likely first; the
    sampled token may or may not be among them."""

    token: bytes  # the token's text (may be part of a UTF-8 character)
    logprob: float  # natural log, <= 0
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    # The tokens this text came from, when the request asked for logprobs; otherwise empty.
    logprobs: tuple[TokenLogprob, ...] = ()


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
    # The first call in a session that came back after eviction or a restart: its files are
    # there, its process state (Python variables) is not. The output says so too.
    session_restored: bool = False


@dataclass(frozen=True, slots=True)
class PromptUsage:
    """The prompt is in the KV cache: its size and how much of it was reused from cache.
    The engine emits it once per generation, before any output (Anthropic's `message_start`
    reports it; the totals come later in `Usage`).

    `cache_write_tokens`: of the tokens up to the client's cache breakpoint
    (`ChatRequest.cache_point`), those this generation computed anew rather than read from
    cache, i.e. wrote to it; 0 without a breakpoint. `prompt_tokens` includes both counts."""

    prompt_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a whole request (summed over an agent loop's generations); the cache
    counts as in `PromptUsage`, and part of `prompt_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class ChoiceEvent:
    """With `n > 1` (several choices for one prompt), every per-choice event (text,
    reasoning, tool calls, `Finished`) comes wrapped in one of these, `index` 0..n-1. The
    request's single `PromptUsage` and `Usage` (prompt counted once, completion tokens of
    all choices summed) stay unwrapped. With n = 1 nothing is wrapped."""

    index: int
    event: Event


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
    | ChoiceEvent
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
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the text's tokens, when asked for
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    finish: Finished = field(default_factory=lambda: Finished("stop"))


def apply(completion: Completion, event: Event) -> None:
    """Fold one event into `completion` (in place)."""
    match event:
        case TextDelta(text=text, logprobs=logprobs):
            completion.text += text
            completion.logprobs += logprobs
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
