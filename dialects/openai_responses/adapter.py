"""Responses request -> the neutral `ChatRequest`, plus the turn's input as listable items.

A turn's conversation is: the stored conversation of `previous_response_id` (earlier inputs,
outputs, function calls and their outputs), then this request's `input`. `instructions`
go first as a system message but are never stored with the conversation: OpenAI does not
carry them over to the next response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from dialects.common import forcible_tool_names, image_from_url, new_id, server_tools
from dialects.openai_responses.protocol import (
    ITEM_TYPES,
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputFile,
    InputImage,
    InputItem,
    InputText,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)
from runtime.errors import InvalidRequest, UnsupportedFeature
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

_ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(slots=True)
class Turn:
    chat: ChatRequest
    conversation: list[Message]  # prior conversation + this input, without instructions
    input_items: list[dict[str, Any]] = field(default_factory=list)  # for GET .../input_items


# -- items ------------------------------------------------------------------------------------


def _decode_item(raw: dict[str, Any], index: int) -> InputItem:
    kind = raw.get("type", "message")  # "easy" input messages leave out the type
    cls = ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        supported = ", ".join(ITEM_TYPES)
        raise InvalidRequest(
            f"input[{index}] has type {kind!r}, which this server does not support (supported: {supported})",
            param=f"input[{index}].type",
        )
    try:
        return msgspec.convert({k: v for k, v in raw.items() if k != "type"}, cls)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid input[{index}] ({kind}): {exc}", param=f"input[{index}]") from exc


def _content_part(part: ContentPart, role: str, param: str) -> tuple[Part, dict[str, Any]]:
    """One content part as IR, and as the part an input_items listing shows."""
    assistant = role == "assistant"
    match part:
        case InputText(text=text) | OutputText(text=text):
            if assistant:
                return TextPart(text), {"type": "output_text", "text": text, "annotations": []}
            return TextPart(text), {"type": "input_text", "text": text}
        case Refusal(refusal=refusal):
            return TextPart(refusal), {"type": "refusal", "refusal": refusal}
        case InputImage(image_url=url, file_id=file_id, detail=detail):
            if assistant:
                raise InvalidRequest(
                    f"images are only allowed in user, system or developer messages ({param})", param=param
                )
            if file_id is not None and url is None:
                raise UnsupportedFeature(
                    "input_image with file_id is not supported (this server has no Files API): "
                    "send image_url as a data: URI or an http(s) URL",
                    param=param,
                )
            if not url:
                raise InvalidRequest(f"input_image needs image_url ({param})", param=param)
            wire = {"type": "input_image", "image_url": url, "file_id": None, "detail": detail or "auto"}
            return image_from_url(url, param=param), wire
        case InputFile():
            raise UnsupportedFeature(f"input_file content is not supported ({param})", param=param)
    raise AssertionError(part)  # pragma: no cover - the union is exhausted above


def _output_text(output: str | list[ContentPart], param: str) -> str:
    if isinstance(output, str):
        return output
    texts = []
    for part in output:
        if not isinstance(part, InputText | OutputText):
            raise UnsupportedFeature(f"function_call_output may only hold text ({param})", param=param)
        texts.append(part.text)
    return "".join(texts)


class _Conversation:
    """Builds IR messages from items, merging what a chat template expects in one assistant
    turn (reasoning, text, function calls) and naming each function output after its call."""

    def __init__(self, prior: list[Message]) -> None:
        self.messages = list(prior)
        self.added: list[Message] = []
        self.items: list[dict[str, Any]] = []
        self.calls = {p.id: p.name for m in prior for p in m.parts if isinstance(p, ToolCallPart)}

    def _append(self, message: Message) -> None:
        self.messages.append(message)
        self.added.append(message)

    def _assistant(self, *, reuse: bool) -> Message:
        if reuse and self.added and self.added[-1].role == "assistant":
            return self.added[-1]
        message = Message("assistant", [])
        self._append(message)
        return message

    def add(self, item: InputItem, index: int) -> None:
        param = f"input[{index}]"
        match item:
            case MessageItem():
                self._message(item, param)
            case FunctionCallItem(call_id=call_id, name=name, arguments=arguments):
                self._assistant(reuse=True).parts.append(ToolCallPart(call_id, name, arguments or "{}"))
                self.calls[call_id] = name
                self.items.append(
                    {
                        "id": item.id or new_id("fc_"),
                        "type": "function_call",
                        "call_id": call_id,
                        "name": name,
                        "arguments": arguments,
                        "status": "completed",
                    }
                )
            case FunctionCallOutputItem(call_id=call_id, output=output):
                if call_id not in self.calls:
                    raise InvalidRequest(
                        f"{param}: no function_call with call_id {call_id!r} in this conversation; send the "
                        "function_call item too, or previous_response_id of the response that made the call",
                        param=f"{param}.call_id",
                    )
                text = _output_text(output, param)
                self._append(Message("tool", [ToolResultPart(call_id=call_id, content=text, name=self.calls[call_id])]))
                wire_output = output if isinstance(output, str) else msgspec.to_builtins(output)
                self.items.append(
                    {
                        "id": item.id or new_id("fco_"),
                        "type": "function_call_output",
                        "call_id": call_id,
                        "output": wire_output,
                        "status": "completed",
                    }
                )
            case ReasoningItem(content=content, summary=summary):
                text = "".join(c.text for c in content) if content else "\n".join(s.text for s in summary)
                self._assistant(reuse=False).parts.append(ReasoningPart(text))
                self.items.append(
                    {
                        "id": item.id or new_id("rs_"),
                        "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": s.text} for s in summary],
                        "content": [{"type": "reasoning_text", "text": c.text} for c in content or []],
                        "status": "completed",
                    }
                )

    def _message(self, item: MessageItem, param: str) -> None:
        role = _ROLES[item.role]
        if isinstance(item.content, str):
            pairs = [_content_part(InputText(item.content), item.role, f"{param}.content")]
        else:
            pairs = [_content_part(p, item.role, f"{param}.content[{j}]") for j, p in enumerate(item.content)]
        parts = [ir for ir, _ in pairs]
        if role == "assistant":
            # Text after a reasoning item belongs to the same assistant turn.
            last = self.added[-1] if self.added else None
            if last is not None and last.role == "assistant" and all(isinstance(p, ReasoningPart) for p in last.parts):
                last.parts.extend(parts)
            else:
                self._append(Message("assistant", parts))
        else:
            self._append(Message(role, parts))
        wire: dict[str, Any] = {
            "id": item.id or new_id("msg_"),
            "type": "message",
            "role": item.role,
            "status": "completed",
            "content": [w for _, w in pairs],
        }
        self.items.append(wire)


# -- options ----------------------------------------------------------------------------------


def _tools(raw: list[dict[str, Any]] | None) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, spec in enumerate(raw or []):
        kind = spec.get("type")
        if kind != "function":
            raise UnsupportedFeature(
                f"tools[{i}] has type {kind!r}: only function tools are supported (server-side python, bash "
                "and web_search are enabled with the enable_tools / enabled_tools extension fields)",
                param=f"tools[{i}].type",
            )
        try:
            tool = msgspec.convert({k: v for k, v in spec.items() if k != "type"}, FunctionTool)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"invalid tools[{i}]: {exc}", param=f"tools[{i}]") from exc
        if any(t.name == tool.name for t in tools):
            raise InvalidRequest(f"tools[{i}]: the function name {tool.name!r} is used twice", param=f"tools[{i}].name")
        tools.append(
            ToolSpec(
                name=tool.name,
                description=tool.description or "",
                parameters=tool.parameters or {"type": "object", "properties": {}},
                strict=bool(tool.strict),
            )
        )
    return tools


def _tool_choice(choice: str | dict[str, Any] | None, forcible: set[str]) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto")
    if isinstance(choice, str):
        if choice == "required" and not forcible:
            raise InvalidRequest("tool_choice 'required' needs at least one tool", param="tool_choice")
        return ToolChoice(choice)  # type: ignore[arg-type]  # the protocol Literal admits only valid modes
    if choice.get("type") != "function":
        raise UnsupportedFeature(
            f"tool_choice type {choice.get('type')!r} is not supported; use 'auto', 'none', 'required' "
            "or {'type': 'function', 'name': ...}",
            param="tool_choice",
        )
    name = choice.get("name")
    if not isinstance(name, str) or name not in forcible:
        raise InvalidRequest(f"tool_choice names {name!r}, which is not a function in tools", param="tool_choice.name")
    return ToolChoice("function", name)


def _output_format(wire: ResponsesRequest) -> OutputFormat:
    fmt = wire.text.format if wire.text else None
    if isinstance(fmt, TextFormatJSONObject):
        return OutputFormat("json_object")
    if isinstance(fmt, TextFormatJSONSchema):
        return OutputFormat("json_schema", schema=fmt.schema, name=fmt.name, strict=bool(fmt.strict))
    return OutputFormat()


def _reasoning(wire: ResponsesRequest) -> bool | None:
    kwargs = wire.chat_template_kwargs or {}
    if isinstance(kwargs.get("enable_thinking"), bool):
        return kwargs["enable_thinking"]  # type: ignore[no-any-return]
    effort = wire.reasoning.effort if wire.reasoning else None
    return None if effort is None else effort != "none"


def _effort(wire: ResponsesRequest) -> str | None:
    effort = wire.reasoning.effort if wire.reasoning else None
    return effort if effort != "none" else None


def _refuse_unsupported(wire: ResponsesRequest) -> None:
    """Options whose silent omission would change what the caller gets."""
    if wire.conversation is not None:
        raise UnsupportedFeature(
            "the Conversations API is not supported; chain turns with previous_response_id", param="conversation"
        )


# -- the whole request ------------------------------------------------------------------------


def to_ir(wire: ResponsesRequest, prior: list[Message]) -> Turn:
    _refuse_unsupported(wire)
    conversation = _Conversation(prior)
    if isinstance(wire.input, str):
        conversation.add(MessageItem(role="user", content=wire.input), 0)
    else:
        if not wire.input:
            raise InvalidRequest("input is an empty list; send a string or at least one item", param="input")
        for i, raw in enumerate(wire.input):
            conversation.add(_decode_item(raw, i), i)
    stop = [wire.stop] if isinstance(wire.stop, str) else list(wire.stop or [])
    if len(stop) > 16:
        raise InvalidRequest("at most 16 stop sequences are allowed", param="stop")
    tools = _tools(wire.tools)
    system = [Message("system", [TextPart(wire.instructions)])] if wire.instructions else []
    server = server_tools(
        wire.enable_tools, wire.enabled_tools, wire.session_id, wire.max_tool_calls_per_message or wire.max_tool_calls
    )
    chat = ChatRequest(
        model=wire.model or "default",
        messages=system + conversation.messages,
        sampling=Sampling(
            temperature=wire.temperature,
            top_p=wire.top_p,
            top_k=wire.top_k,
            min_p=wire.min_p,
            repeat_penalty=wire.repeat_penalty,
            presence_penalty=wire.presence_penalty,
            frequency_penalty=wire.frequency_penalty,
            seed=wire.seed,
            max_tokens=wire.max_output_tokens,
            stop=stop,
            # Token logprobs only when `include` asks for them: computing them costs a pass
            # over the vocabulary per token.
            logprobs=(wire.top_logprobs or 0) if "message.output_text.logprobs" in (wire.include or ()) else None,
        ),
        tools=tools,
        tool_choice=_tool_choice(wire.tool_choice, forcible_tool_names(tools, server)),
        parallel_tool_calls=wire.parallel_tool_calls is not False,
        output_format=_output_format(wire),
        reasoning=_reasoning(wire),
        reasoning_effort=_effort(wire),
        server_tools=server,
        template_kwargs=dict(wire.chat_template_kwargs or {}),
    )
    return Turn(chat=chat, conversation=conversation.messages, input_items=conversation.items)
