"""Anthropic Messages request -> the neutral `ChatRequest`.

The checks here are the ones Anthropic's API makes too (first turn from the user, non-empty
turns, tool results answering a `tool_use` of the previous turn, block types by role), each a
400 naming the offending field, so a bad conversation never reaches the template as garbage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dialects.anthropic.caching import breakpoints, cut_at
from dialects.anthropic.content import assistant_parts, system_text, user_messages
from dialects.anthropic.protocol import (
    ContentBlock,
    CreateMessageRequest,
    MessageInputs,
    TextBlock,
    ThinkingConfig,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolUseBlock,
)
from dialects.anthropic.tools import tool_specs
from dialects.common import forcible_tool_names, server_tools
from runtime.errors import InvalidRequest, ToolstudioError, UnsupportedFeature
from runtime.ir import (
    CachePoint,
    ChatRequest,
    Message,
    OutputFormat,
    Sampling,
    ServerTools,
    TextPart,
    ToolChoice,
    ToolSpec,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Turn:
    """Consecutive messages of one role, merged as Anthropic merges them. Each block keeps the
    path of where it came from, so errors point at the client's own indices."""

    role: str
    index: int
    blocks: list[tuple[str, ContentBlock]] = field(default_factory=list)


def _turns(wire: MessageInputs) -> list[Turn]:
    turns: list[Turn] = []
    for i, message in enumerate(wire.messages):
        if not turns or turns[-1].role != message.role:
            turns.append(Turn(message.role, i))
        content = [TextBlock(message.content)] if isinstance(message.content, str) else message.content
        turns[-1].blocks.extend((f"messages[{i}].content[{j}]", block) for j, block in enumerate(content))
    return turns


def _is_empty(turn: Turn) -> bool:
    return all(isinstance(block, TextBlock) and not block.text for _, block in turn.blocks)


def _prefill(turn: Turn) -> str:
    """The text a final assistant turn puts in the model's mouth."""
    for where, block in turn.blocks:
        if not isinstance(block, TextBlock):
            raise UnsupportedFeature(
                f"a final assistant message (prefill) can only hold text, not {type(block).__struct_config__.tag} blocks",
                param=where,
            )
    text = "".join(block.text for _, block in turn.blocks if isinstance(block, TextBlock))
    if text != text.rstrip():
        # As Anthropic's API: the model would otherwise continue after a dangling space.
        raise InvalidRequest(
            "final assistant content cannot end with trailing whitespace", param=f"messages[{turn.index}].content"
        )
    return text


def _messages(wire: MessageInputs, *, cut: bool = False) -> tuple[list[Message], str]:
    """The conversation as IR messages, and the prefill (a final assistant turn's text).

    `cut`: `wire` is a request cut short at a cache breakpoint (`caching.cut_at`), already
    checked whole: it may hold no conversation yet, and a final assistant turn is an ended
    turn like the others, not a prefill."""
    messages: list[Message] = []
    prefill = ""
    if wire.system:
        system = (
            wire.system if isinstance(wire.system, str) else [(f"system[{j}]", b) for j, b in enumerate(wire.system)]
        )
        messages.append(Message("system", [TextPart(system_text(system))]))
    turns = _turns(wire)
    conversation = [t for t in turns if t.role != "system"]
    if not conversation and not cut:
        raise InvalidRequest("messages: at least one user message is required", param="messages")
    if conversation and conversation[0].role != "user":
        raise InvalidRequest(
            'messages: first message must use the "user" role', param=f"messages[{conversation[0].index}].role"
        )
    if turns and turns[-1].role == "assistant" and not cut:
        # Rendered after the generation prompt, not as a finished turn: the reply continues it.
        prefill = "" if _is_empty(turns[-1]) else _prefill(turns[-1])
        turns.pop()
    previous_calls: dict[str, str] = {}
    for turn in turns:
        if _is_empty(turn):
            raise InvalidRequest(
                f"messages[{turn.index}]: all messages must have non-empty content "
                "except for the optional final assistant message",
                param=f"messages[{turn.index}].content",
            )
        if turn.role == "system":
            messages.append(Message("system", [TextPart(system_text(turn.blocks))]))
        elif turn.role == "assistant":
            messages.append(Message("assistant", assistant_parts(turn.blocks)))
            previous_calls = {b.id: b.name for _, b in turn.blocks if isinstance(b, ToolUseBlock)}
        else:
            messages.extend(user_messages(turn.blocks, previous_calls))
            previous_calls = {}
    return messages, prefill


def _tool_choice(wire: MessageInputs, tools: list[ToolSpec], server: ServerTools) -> tuple[ToolChoice, bool]:
    """The IR choice, and whether parallel calls stay allowed."""
    choice = wire.tool_choice
    if choice is None:
        return ToolChoice("auto"), True
    parallel = not getattr(choice, "disable_parallel_tool_use", False)
    # Forcing a server-side tool is legitimate when the request enables it.
    callable_names = forcible_tool_names(tools, server)
    if isinstance(choice, ToolChoiceNone):
        return ToolChoice("none"), parallel
    if isinstance(choice, ToolChoiceTool):
        if choice.name not in callable_names:
            raise InvalidRequest(f"tool_choice.name: tool {choice.name!r} is not in tools", param="tool_choice.name")
        return ToolChoice("function", choice.name), parallel
    if isinstance(choice, ToolChoiceAny):
        if not callable_names:
            raise InvalidRequest("tool_choice: 'any' needs at least one tool in tools", param="tool_choice")
        return ToolChoice("required"), parallel
    return ToolChoice("auto"), parallel


def _reasoning(thinking: ThinkingConfig | None, max_tokens: int | None) -> bool | None:
    if thinking is None:
        return None
    if thinking.type == "enabled":
        if thinking.budget_tokens is None:
            raise InvalidRequest("thinking.enabled.budget_tokens: Field required", param="thinking.budget_tokens")
        if max_tokens is not None and thinking.budget_tokens >= max_tokens:
            raise InvalidRequest(
                "`max_tokens` must be greater than `thinking.budget_tokens`", param="thinking.budget_tokens"
            )
        return True
    if thinking.type == "disabled":
        return False
    if thinking.type == "adaptive":
        return True
    return None  # a mode this server doesn't know: leave the model's default


def _output_format(wire: MessageInputs) -> OutputFormat:
    fmt = (wire.output_config.format if wire.output_config else None) or wire.output_format
    if fmt is None:
        return OutputFormat()
    # Anthropic's structured outputs are always enforced, never best-effort.
    return OutputFormat("json_schema", schema=fmt.schema, name="output", strict=True)


def _sampling(wire: MessageInputs) -> Sampling:
    if not isinstance(wire, CreateMessageRequest):
        return Sampling()
    stop = list(wire.stop_sequences or [])
    for i, sequence in enumerate(stop):
        if not sequence:
            raise InvalidRequest("stop_sequences: each stop sequence must be non-empty", param=f"stop_sequences[{i}]")
    return Sampling(
        temperature=wire.temperature,
        top_p=wire.top_p,
        top_k=wire.top_k,
        max_tokens=wire.max_tokens,
        stop=stop,
    )


def cache_ttl(wire: MessageInputs) -> str:
    """The ttl of the last breakpoint ("5m" without one): the bucket usage reports writes in."""
    marks = breakpoints(wire)
    return marks[-1].ttl if marks else "5m"


def _cache_point(wire: MessageInputs) -> CachePoint | None:
    """The last breakpoint as a position in the IR the whole request maps to: the cut request
    is mapped the same way, and its length is the position (the mapping of a cut request is
    a prefix of the whole one's, but for the system text, which is one message, so a
    breakpoint on any system block counts the whole system prompt)."""
    marks = breakpoints(wire)
    if not marks:
        return None
    last = marks[-1]
    if last.kind == "tools":
        return CachePoint(tools=last.index[0] + 1, messages=0)
    try:
        messages, _ = _messages(cut_at(wire, last), cut=True)
    except ToolstudioError:  # a cut the checks refuse (an empty block at the cut): claim nothing
        log.debug("cache breakpoint at %s %s not mapped", last.kind, last.index, exc_info=True)
        return None
    if last.kind != "messages" or not messages:
        return CachePoint(messages=len(messages))
    return CachePoint(messages=len(messages), parts=len(messages[-1].parts))


def to_ir(wire: MessageInputs) -> ChatRequest:
    """Map a `create` or `count_tokens` body; only `create` carries sampling and `max_tokens`."""
    tools = tool_specs(wire.tools)
    server = server_tools(wire.enable_tools, wire.enabled_tools, wire.session_id, wire.max_tool_calls_per_message)
    choice, parallel = _tool_choice(wire, tools, server)
    sampling = _sampling(wire)
    messages, prefill = _messages(wire)
    return ChatRequest(
        model=wire.model,
        messages=messages,
        prefill=prefill,
        sampling=sampling,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        output_format=_output_format(wire),
        reasoning=_reasoning(wire.thinking, sampling.max_tokens),
        reasoning_budget=wire.thinking.budget_tokens if wire.thinking and wire.thinking.type == "enabled" else None,
        server_tools=server,
        cache_point=_cache_point(wire),
    )
