"""Chat Completions request -> the neutral `ChatRequest`."""

from __future__ import annotations

from dialects.common import forcible_tool_names, image_from_url, server_tools
from dialects.openai_chat.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice, TextContent
from runtime.errors import InvalidRequest
from runtime.ir import (
    ChatRequest,
    Message,
    OutputFormat,
    Part,
    ReasoningPart,
    Role,
    Sampling,
    TextPart,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
)

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


def _content_parts(message: ChatMessage, index: int) -> list[Part]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for j, part in enumerate(content):
        if isinstance(part, TextContent):
            parts.append(TextPart(part.text))
        else:
            if message.role not in ("user", "system", "developer"):
                raise InvalidRequest(
                    f"images are only allowed in user messages (messages[{index}])", param=f"messages[{index}]"
                )
            parts.append(image_from_url(part.image_url.url, param=f"messages[{index}].content[{j}]"))
    return parts


def _message(message: ChatMessage, index: int) -> Message:
    role = _ROLES[message.role]
    parts = _content_parts(message, index)
    if role == "tool":
        if not message.tool_call_id and message.role == "tool":
            raise InvalidRequest(f"messages[{index}] has role 'tool' but no tool_call_id", param=f"messages[{index}]")
        text = "".join(p.text for p in parts if isinstance(p, TextPart))
        return Message("tool", [ToolResultPart(call_id=message.tool_call_id or "", content=text, name=message.name)])
    if role == "assistant":
        if message.reasoning_content:
            parts.insert(0, ReasoningPart(message.reasoning_content))
        for call in message.tool_calls or []:
            parts.append(ToolCallPart(call.id, call.function.name, call.function.arguments or "{}"))
    elif message.content is None:
        raise InvalidRequest(f"messages[{index}] ({message.role}) has no content", param=f"messages[{index}].content")
    return Message(role, parts)


def _tool_choice(choice: str | NamedToolChoice | None, forcible: set[str]) -> ToolChoice:
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in forcible:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
        return ToolChoice("function", name)
    if choice == "required" and not forcible:
        raise InvalidRequest("tool_choice 'required' needs at least one tool", param="tool_choice")
    if choice in ("none", "auto", "required"):
        return ToolChoice(choice)
    return ToolChoice("auto")


def _output_format(wire: ChatCompletionRequest) -> OutputFormat:
    fmt = wire.response_format
    if fmt is None or fmt.type == "text":
        return OutputFormat()
    if fmt.type == "json_object":
        return OutputFormat("json_object")
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise InvalidRequest(
            "response_format json_schema needs json_schema.schema", param="response_format.json_schema"
        )
    return OutputFormat(
        "json_schema", schema=fmt.json_schema.schema, name=fmt.json_schema.name, strict=bool(fmt.json_schema.strict)
    )


def _reasoning(wire: ChatCompletionRequest) -> bool | None:
    kwargs = wire.chat_template_kwargs or {}
    if isinstance(kwargs.get("enable_thinking"), bool):
        return kwargs["enable_thinking"]
    if wire.reasoning_effort is not None:
        return wire.reasoning_effort != "none"
    return None


def _logprobs(wire: ChatCompletionRequest) -> int | None:
    """`logprobs: true` with `top_logprobs` alternatives (0-20) -> the IR's count; None: off."""
    if wire.top_logprobs is not None and not wire.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    return (wire.top_logprobs or 0) if wire.logprobs else None


def to_ir(wire: ChatCompletionRequest) -> ChatRequest:
    """The wire request as IR. `n` is checked against the server's bound by the route."""
    stop = [wire.stop] if isinstance(wire.stop, str) else list(wire.stop or [])
    if len(stop) > 16:
        raise InvalidRequest("at most 16 stop sequences are allowed", param="stop")
    tools = [
        ToolSpec(
            name=t.function.name,
            description=t.function.description or "",
            parameters=t.function.parameters or {"type": "object", "properties": {}},
            strict=bool(t.function.strict),
        )
        for t in wire.tools or []
    ]
    server = server_tools(wire.enable_tools, wire.enabled_tools, wire.session_id, wire.max_tool_calls_per_message)
    return ChatRequest(
        model=wire.model,
        messages=[_message(m, i) for i, m in enumerate(wire.messages)],
        sampling=Sampling(
            temperature=wire.temperature,
            top_p=wire.top_p,
            top_k=wire.top_k,
            min_p=wire.min_p,
            repeat_penalty=wire.repeat_penalty,
            presence_penalty=wire.presence_penalty,
            frequency_penalty=wire.frequency_penalty,
            seed=wire.seed,
            max_tokens=wire.max_completion_tokens or wire.max_tokens,
            stop=stop,
            logprobs=_logprobs(wire),
        ),
        tools=tools,
        tool_choice=_tool_choice(wire.tool_choice, forcible_tool_names(tools, server)),
        parallel_tool_calls=wire.parallel_tool_calls is not False,
        output_format=_output_format(wire),
        reasoning=_reasoning(wire),
        reasoning_effort=wire.reasoning_effort if wire.reasoning_effort != "none" else None,
        server_tools=server,
        template_kwargs=dict(wire.chat_template_kwargs or {}),
        n=wire.n or 1,
    )
