"""Tool-call formats: how tools reach the prompt, which grammar constrains a call, how the
output is parsed. One class per family; `registry.detect_format` picks one from the chat template.

Native formats (Hermes/Qwen and Llama 3 here, the other families in modules of their own)
render tools through the template's own `tools` variable and parse what the family was
trained to write. Templates without tool
support get the generic format: a system-prompt block describing the tools, and calls as
one JSON envelope `{"tool_calls": [{"name": ..., "arguments": {...}}]}` that the grammar
writes with fixed keys and spacing, so a tiny model only has to fill in the arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from runtime.engine.grammar import GrammarBuilder, cache, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls import parsers
from runtime.engine.toolcalls.generic import prepare_generic
from runtime.engine.toolcalls.parser import ToolCallParser
from runtime.engine.toolcalls.snapshot import SnapshotParser
from runtime.ir import ChatRequest, Message, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec

# Parallel calls per message the grammar allows: a small model left unbounded can loop.
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True, slots=True)
class CallGrammar:
    """GBNF for tool calls; with `triggers`, the grammar waits for one (`auto` mode)."""

    gbnf: str
    triggers: tuple[GrammarTrigger, ...] = ()


class ToolFormat:
    """One model family's way of calling tools (and, for some, of writing reasoning).

    A family is detected from its chat template's source (`detect`, markers the template
    renders; never the model's name). `registry.FORMATS` is the ordered table of families.
    """

    name: ClassVar[str]
    native: ClassVar[bool] = True  # tools go through the template's `tools` variable
    # The parser also splits reasoning (channels): it runs on every output, tools or not,
    # and the engine's `<think>` splitter stays off.
    owns_reasoning: ClassVar[bool] = False
    parser_class: ClassVar[type[ToolCallParser] | type[SnapshotParser]]
    triggers: ClassVar[tuple[GrammarTrigger, ...]]
    # Earlier calls' arguments reach the template as JSON text rather than an object.
    string_arguments: ClassVar[bool] = False

    @classmethod
    def detect(cls, template_source: str) -> bool:
        """Whether a chat template was written for this family."""
        return False

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        """The conversation as this format's template should see it."""
        return messages

    def template_messages(self, messages: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
        """The message dicts handed to the template (after the IR -> template conversion),
        for templates that read history in a family-specific shape."""
        return messages

    def finish_prompt(self, prompt: str) -> str:
        """The rendered prompt, completed where the family's template leaves it unfinished."""
        return prompt

    def answer_grammar(self, response: dict[str, Any], strict: bool) -> str | None:
        """With a JSON response format and no tools: the grammar of the whole output, for
        families whose answer sits inside channel markup. None: the plain schema grammar."""
        return None

    def template_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """Extra template variables this family's template reads (e.g. `reasoning_effort`)."""
        return {}

    def parser(self, tools: list[ToolSpec], choice: ToolChoice, parallel: bool) -> ToolCallParser | SnapshotParser:
        """A fresh parser for one output. With no tools (`owns_reasoning` formats only),
        it splits reasoning and treats any call markup as a call to drop."""
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
        root = self.calls_rule(b, tools, single)
        if response is not None:
            answer = b.schema(response, "answer", param="response_format", strict=response_strict)
            root = f"({root}) | {answer}"
        return b.build(root)

    def no_calls_grammar(self) -> str | None:
        """A grammar for free text without the family's call marker (the agent loop's last
        round, when no tool may be called); None when the family has no marker to forbid."""
        markers = [t.text for t in self.triggers if not t.at_start]
        if not markers:
            return None
        b = GrammarBuilder()
        return cache.get(["no-calls", markers[0]], lambda: b.build(b.excluding(markers[0], "text")))

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        """GBNF for the family's call section: one call if `single`, else up to
        `MAX_PARALLEL_CALLS`, starting at the family's marker (the lazy grammar's trigger)."""
        raise NotImplementedError


def arguments_rule(b: GrammarBuilder, tool: ToolSpec, index: int) -> str:
    """The rule for one tool's JSON arguments object (its `parameters` schema)."""
    return b.schema(tool.parameters, f"{tool.name}-args", param=f"tools[{index}]", strict=tool.strict)


def repeat(call: str, separator: str, single: bool) -> str:
    """`call`, or up to `MAX_PARALLEL_CALLS` of them with `separator` between."""
    return call if single else f"{call} ({separator} {call}){{0,{MAX_PARALLEL_CALLS - 1}}}"


class JsonCallsFormat(ToolFormat):
    """Families whose call is one JSON object `{"name": ..., "<args_key>": {...}}`,
    inside a family-specific section (`section`)."""

    parser_class: ClassVar[type[ToolCallParser]]
    args_key: ClassVar[str] = "arguments"
    separator: ClassVar[str] = '"," " "?'  # between parallel calls

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            args = arguments_rule(b, tool, i)
            head = literal(f'{{"name": {json.dumps(tool.name, ensure_ascii=False)}, "{self.args_key}": ')
            alternatives.append(b.rule(f"{tool.name}-call", f'{head} {args} "}}"'))
        call = b.rule("call", " | ".join(alternatives))
        return self.section(b, b.rule("calls", repeat(call, self.separator, single)))

    def section(self, b: GrammarBuilder, calls: str) -> str:
        """The root body around the call list (markers, envelope)."""
        raise NotImplementedError


class HermesFormat(JsonCallsFormat):
    """Hermes 2 Pro / Qwen 2.5+: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`."""

    name = "hermes"
    parser_class = parsers.HermesParser

    @classmethod
    def detect(cls, template_source: str) -> bool:
        src = template_source
        # Not the families that only mention `<tool_call>`: MiniMax-M3 (namespaced markers)
        # and Apriel (a `<tool_calls>[...]` list); the generic format serves them until they
        # have formats of their own, rather than a grammar for syntax they do not write.
        others = "]<]minimax[>[" in src or "<tool_calls>[" in src
        return "<tool_call>" in src and not others

    triggers = (GrammarTrigger("<tool_call>"),)
    # Each call has its own tags, so between two calls comes a closing and an opening tag.
    separator = '"\\n"? "</tool_call>" "\\n"? "<tool_call>" "\\n"?'

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"<tool_call>" "\\n"? {calls} "\\n"? "</tool_call>"'


class Llama3Format(JsonCallsFormat):
    """Llama 3.1-3.3: the message is `{"name": ..., "parameters": {...}}` (or after `<|python_tag|>`).

    One call per message: Meta's templates (models/templates/meta-llama-Llama-3.*.jinja)
    raise "This model only supports single tool-calls at once!" on an assistant message with
    two, which llama.cpp reads as no parallel calls (common/jinja/caps.cpp). So the grammar
    writes one call, and an earlier message with several is split into one call each, every
    call followed by its result. Results go to the template as `tool` messages, which it
    writes under the `ipython` header.
    """

    name = "llama3"
    parser_class = parsers.Llama3Parser

    @classmethod
    def detect(cls, template_source: str) -> bool:
        # The call as Meta's templates write it (`{"name": "...", "parameters": ...}` inside
        # Llama 3 headers) or its `<|python_tag|>`; Functionary v3.1 has the tag too but
        # writes `<function=name>` calls (llama.cpp checked it before Llama 3.x).
        src = template_source
        llama = "<|python_tag|>" in src or ("<|start_header_id|>" in src and '"parameters"' in src)
        return llama and "<function=" not in src

    triggers = (GrammarTrigger("{", at_start=True), GrammarTrigger("<|python_tag|>"))
    args_key = "parameters"
    separator = '";" " "?'

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        return super().calls_rule(b, tools, True)

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"<|python_tag|>"? {calls}'

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return one_call_per_message(messages)


def one_call_per_message(messages: list[Message]) -> list[Message]:
    """Assistant messages with several calls become one message per call, each followed by
    the `tool` messages answering it (results answering none keep their place at the end)."""
    out: list[Message] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        i += 1
        if message.role != "assistant" or len(calls) < 2:
            out.append(message)
            continue
        results: list[Message] = []
        while i < len(messages) and messages[i].role == "tool":
            results.append(messages[i])
            i += 1
        others = [p for p in message.parts if not isinstance(p, ToolCallPart)]
        for n, call in enumerate(calls):
            out.append(Message("assistant", [*(others if n == 0 else []), call]))
            answers = [r for r in results if _answers(r, call.id)]
            out += answers
            results = [r for r in results if not any(r is a for a in answers)]
        out += results
    return out


def _answers(message: Message, call_id: str) -> bool:
    return any(isinstance(p, ToolResultPart) and p.call_id == call_id for p in message.parts)


class GenericFormat(JsonCallsFormat):
    """Any template without tool support (SmolLM2): prompt-described tools, JSON envelope."""

    name = "generic"
    native = False
    parser_class = parsers.GenericParser

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return True  # the fallback: any template

    triggers = (GrammarTrigger("{", at_start=True),)

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"{{\\"tool_calls\\": [" {calls} "]}}"'

    def no_calls_grammar(self) -> str | None:
        # A call is a whole message starting with `{`: an answer that starts otherwise is
        # never one (after that first character, any text).
        return "root ::= [ \\t\\n]* ([^{ \\t\\n] [^\\x00]*)?\n"

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return prepare_generic(messages, tools)
