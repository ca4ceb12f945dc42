"""Tool-call formats: how tools reach the prompt, which grammar constrains a call, how the
output is parsed. One class per family; `detect_format` picks one from the chat template.

Native formats (Hermes/Qwen, Llama 3, Mistral) render tools through the template's own
`tools` variable and parse what the family was trained to write. Templates without tool
support get the generic format: a system-prompt block describing the tools, and calls as
one JSON envelope `{"tool_calls": [{"name": ..., "arguments": {...}}]}` that the grammar
writes with fixed keys and spacing, so a tiny model only has to fill in the arguments.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from runtime.engine.grammar import GrammarBuilder, cache, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls import parsers
from runtime.engine.toolcalls.generic import prepare_generic
from runtime.engine.toolcalls.parser import ToolCallParser
from runtime.ir import Message, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec

# Parallel calls per message the grammar allows: a small model left unbounded can loop.
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True, slots=True)
class CallGrammar:
    """GBNF for tool calls; with `triggers`, the grammar waits for one (`auto` mode)."""

    gbnf: str
    triggers: tuple[GrammarTrigger, ...] = ()


class ToolFormat:
    name: ClassVar[str]
    native: ClassVar[bool] = True  # tools go through the template's `tools` variable
    parser_class: ClassVar[type[ToolCallParser]]
    triggers: ClassVar[tuple[GrammarTrigger, ...]]
    args_key: ClassVar[str] = "arguments"
    separator: ClassVar[str] = '"," " "?'  # between parallel calls

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        """The conversation as this format's template should see it."""
        return messages

    def parser(self, tools: list[ToolSpec], choice: ToolChoice, parallel: bool) -> ToolCallParser:
        single = choice.mode == "function" or not parallel
        names = [choice.name] if choice.mode == "function" and choice.name else [t.name for t in tools]
        return self.parser_class(names=names, max_calls=1 if single else MAX_PARALLEL_CALLS)

    def grammar(
        self,
        tools: list[ToolSpec],
        choice: ToolChoice,
        parallel: bool,
        response: dict[str, Any] | None = None,
        response_strict: bool = False,
    ) -> CallGrammar:
        """The call grammar for `tool_choice` `auto`, `required` or a named function.

        `response`: the JSON Schema a non-call answer must follow (a JSON response format).
        In `auto` mode without one the grammar is lazy: it starts at a call marker.
        """
        if choice.mode == "function":
            tools = [t for t in tools if t.name == choice.name]
        single = choice.mode == "function" or not parallel
        if choice.mode != "auto":
            response = None  # a call is forced: the answer format does not apply to it
        key = ["tools", self.name, [[t.name, t.parameters, t.strict] for t in tools], single, response, response_strict]
        gbnf = cache.get(key, lambda: self._build(tools, single, response, response_strict))
        lazy = choice.mode == "auto" and response is None
        return CallGrammar(gbnf, self.triggers if lazy else ())

    def _build(
        self, tools: list[ToolSpec], single: bool, response: dict[str, Any] | None, response_strict: bool
    ) -> str:
        b = GrammarBuilder()
        alternatives = []
        for i, tool in enumerate(tools):
            args = b.schema(tool.parameters, f"{tool.name}-args", param=f"tools[{i}]", strict=tool.strict)
            head = literal(f'{{"name": {json.dumps(tool.name, ensure_ascii=False)}, "{self.args_key}": ')
            alternatives.append(b.rule(f"{tool.name}-call", f'{head} {args} "}}"'))
        call = b.rule("call", " | ".join(alternatives))
        calls = call if single else f"{call} ({self.separator} {call}){{0,{MAX_PARALLEL_CALLS - 1}}}"
        root = self.section(b, b.rule("calls", calls))
        if response is not None:
            answer = b.schema(response, "answer", param="response_format", strict=response_strict)
            root = f"({root}) | {answer}"
        return b.build(root)

    def section(self, b: GrammarBuilder, calls: str) -> str:
        """The root body around the call list (markers, envelope)."""
        raise NotImplementedError


class HermesFormat(ToolFormat):
    """Hermes 2 Pro / Qwen 2.5+: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`."""

    name = "hermes"
    parser_class = parsers.HermesParser
    triggers = (GrammarTrigger("<tool_call>"),)
    # Each call has its own tags, so between two calls comes a closing and an opening tag.
    separator = '"\\n"? "</tool_call>" "\\n"? "<tool_call>" "\\n"?'

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"<tool_call>" "\\n"? {calls} "\\n"? "</tool_call>"'


class MistralFormat(ToolFormat):
    """Mistral v0.3 / Nemo: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`."""

    name = "mistral"
    parser_class = parsers.MistralParser
    triggers = (GrammarTrigger("[TOOL_CALLS]"),)

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"[TOOL_CALLS]" " "? "[" {calls} "]"'

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        # Mistral templates insist on 9-character alphanumeric call ids.
        out = []
        for m in messages:
            parts = []
            for p in m.parts:
                if isinstance(p, ToolCallPart):
                    p = ToolCallPart(mistral_id(p.id), p.name, p.arguments)
                elif isinstance(p, ToolResultPart):
                    p = ToolResultPart(mistral_id(p.call_id), p.content, p.is_error, p.name)
                parts.append(p)
            out.append(Message(m.role, parts))
        return out


def mistral_id(call_id: str) -> str:
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


class Llama3Format(ToolFormat):
    """Llama 3.1-3.3: the message is `{"name": ..., "parameters": {...}}` (or after `<|python_tag|>`)."""

    name = "llama3"
    parser_class = parsers.Llama3Parser
    triggers = (GrammarTrigger("{", at_start=True), GrammarTrigger("<|python_tag|>"))
    args_key = "parameters"
    separator = '";" " "?'

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"<|python_tag|>"? {calls}'


class GenericFormat(ToolFormat):
    """Any template without tool support (SmolLM2): prompt-described tools, JSON envelope."""

    name = "generic"
    native = False
    parser_class = parsers.GenericParser
    triggers = (GrammarTrigger("{", at_start=True),)

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"{{\\"tool_calls\\": [" {calls} "]}}"'

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return prepare_generic(messages, tools)


FORMATS: dict[str, type[ToolFormat]] = {f.name: f for f in (HermesFormat, MistralFormat, Llama3Format, GenericFormat)}


def detect_format(template_source: str | None) -> ToolFormat:
    """The tool-call family a chat template was written for (generic when unknown)."""
    src = template_source or ""
    if "<tool_call>" in src and "<function=" not in src:
        return HermesFormat()
    if "[TOOL_CALLS]" in src:
        return MistralFormat()
    if "<|python_tag|>" in src or ("<|start_header_id|>" in src and '"parameters"' in src):
        return Llama3Format()
    return GenericFormat()
