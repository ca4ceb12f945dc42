"""Rendering the model's own Jinja chat template (from the GGUF metadata)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from runtime.errors import InvalidRequest
from runtime.ir import ImagePart, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart, ToolSpec

# Used when a GGUF carries no template at all.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IMAGE_PLACEHOLDER = "[image]"  # what a text-only model reads where an image was


class GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}`, transformers' marker for the assistant's own
    tokens (training masks): rendered as its body, as transformers does for inference."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    # HF templates call tojson with Python's json options; Jinja's own filter HTML-escapes.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, default=_jsonable)


def _jsonable(value: Any) -> Any:
    # `tools | map(attribute='function') | tojson` hands over a generator (DeepSeek R1's template).
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML_TEMPLATE
        # Sandboxed (no attribute access to internals), but not immutable: Kimi K2's templates
        # build lists with `append`/`pop`, as llama.cpp's minja allows.
        env = SandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", GenerationTag]
        )
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.source

    @property
    def supports_thinking_switch(self) -> bool:
        return "enable_thinking" in self.source

    @functools.cached_property
    def supports_system_role(self) -> bool:
        """Whether the template renders a system message (Gemma 2/3 raise an error instead,
        others silently drop it). Probed once, as llama.cpp's template capabilities are."""
        probe = "\u2063system-probe\u2063"
        messages = [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}]
        try:
            text = self._template.render(
                messages=messages, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
            )
        except Exception:  # the template's own raise_exception, or anything it trips over
            return False
        return probe in text

    def render(
        self,
        messages: list[Message],
        *,
        tools: list[ToolSpec] | None = None,
        add_generation_prompt: bool = True,
        image_marker: str = IMAGE_PLACEHOLDER,
        string_arguments: bool = False,
        transform: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text. `string_arguments`: earlier calls' arguments reach the template
        as JSON text (templates that print them as they are), not as an object; `transform`
        reshapes the message dicts for a family's template (`ToolFormat.template_messages`)."""
        if messages and messages[0].role == "system" and not self.supports_system_role:
            messages = fold_system_message(messages)
        dicts = [message_to_template(m, image_marker, string_arguments) for m in messages]
        variables: dict[str, Any] = {
            "messages": transform(dicts) if transform is not None else dicts,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **kwargs,
        }
        if tools:
            variables["tools"] = [tool_to_template(t) for t in tools]
        try:
            return self._template.render(**variables)
        except jinja2.exceptions.TemplateError as exc:
            # Templates reject some conversations on purpose (e.g. roles out of order).
            raise InvalidRequest(f"the model's chat template rejected the conversation: {exc}") from exc


def fold_system_message(messages: list[Message]) -> list[Message]:
    """For templates without a system role: the system text opens the first user message
    (llama.cpp's `workaround::system_message_not_supported` does the same)."""
    system, rest = messages[0], messages[1:]
    if rest and rest[0].role == "user":
        return [Message("user", [TextPart(system.text + "\n\n"), *rest[0].parts]), *rest[1:]]
    return [Message("user", list(system.parts)), *rest]


def tool_to_template(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _arguments_value(arguments: str) -> Any:
    # Templates index into arguments (`tool_call.arguments | tojson`): give them the object.
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def message_to_template(
    message: Message, image_marker: str = IMAGE_PLACEHOLDER, string_arguments: bool = False
) -> dict[str, Any]:
    text: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    result: ToolResultPart | None = None
    for part in message.parts:
        match part:
            case TextPart(text=t):
                text.append(t)
            case ImagePart():
                text.append(image_marker)
            case ReasoningPart(text=t):
                reasoning.append(t)
            case ToolCallPart(id=call_id, name=name, arguments=arguments):
                tool_calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": arguments if string_arguments else _arguments_value(arguments),
                        },
                    }
                )
            case ToolResultPart():
                result = part
                text.append(part.content)
    out: dict[str, Any] = {"role": message.role, "content": "".join(text)}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        out["tool_calls"] = tool_calls
    if result is not None:
        out["tool_call_id"] = result.call_id
        if result.name:
            out["name"] = result.name
    return out
