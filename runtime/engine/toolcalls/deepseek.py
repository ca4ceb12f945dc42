# ruff: noqa: RUF001, RUF002, RUF003  (DeepSeek's special tokens are spelled with U+FF5C "｜")
"""DeepSeek R1 and V3.1: the name between special tokens, then the JSON arguments.

- R1 (R1 0528, the R1 Distill templates, llama.cpp's own models/templates/llama-cpp-deepseek-r1.jinja):
  `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>`,
  parallel calls separated by a newline, then `<｜tool▁calls▁end｜>`.
- V3.1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`.

Reasoning is `<think>...</think>`, split by the engine (runtime/engine/reasoning.py); the R1
templates open it in the generation prompt, V3.1's when `thinking`/`enable_thinking` is on.

Reference: llama.cpp common/chat-diff-analyzer.cpp (the "DeepSeek-R1-Distill-Qwen" patch:
per-call start `<｜tool▁call▁begin｜>function`, the name after `<｜tool▁sep｜>`, closed by
```` ``` ````), tests/test-chat.cpp (the canned outputs of deepseek-ai-DeepSeek-V3.1,
llama-cpp-deepseek-r1 and deepseek-ai-DeepSeek-R1-Distill-Qwen-32B), models/templates/*.jinja.

The section scanner is `marked.MarkedCallsParser`, shared with Kimi K2.
"""

from __future__ import annotations

import json

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import ToolFormat, arguments_rule, repeat
from runtime.engine.toolcalls.marked import MarkedCallsParser, json_arguments, skip_optional, skip_space
from runtime.engine.toolcalls.snapshot import CallSnapshot
from runtime.ir import Message, TextPart, ToolCallPart, ToolSpec

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE = "```"
R1_TYPE = "function"  # R1 writes the call's type before the separator, the name after it


class DeepSeekParser(MarkedCallsParser):
    """Both DeepSeek spellings of a call: V3.1's `NAME<｜tool▁sep｜>{...}` and R1's
    `function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```` (told apart by the word before the
    separator: `function` followed by anything but a JSON object is R1's call type)."""

    section_begin = CALLS_BEGIN
    section_end = CALLS_END
    call_begin = CALL_BEGIN

    def read_call(self, text: str, pos: int, final: bool) -> tuple[CallSnapshot | None, int | None]:
        sep = text.find(SEP, pos)
        if sep < 0:
            return None, None
        before = text[pos:sep].strip()
        after = skip_space(text, sep + len(SEP))
        if before == R1_TYPE and after == len(text) and not final:
            return None, None  # R1's name or V3.1's arguments: not known yet
        if before == R1_TYPE and not text.startswith("{", after):
            return self._r1_call(text, after, final)
        if not before or "<｜" in before or "\n" in before:
            return None, pos  # no name before the separator: not a call, the rest is text
        call, end = json_arguments(before, text, sep + len(SEP), final)
        if end is None:
            return call, None
        return call, skip_optional(text, end, (CALL_END,), final)

    def _r1_call(self, text: str, at: int, final: bool) -> tuple[CallSnapshot | None, int | None]:
        ends = [i for i in (text.find("\n", at), text.find(FENCE, at)) if i >= 0]
        if not ends or not text[at : min(ends)].strip():
            return None, None  # the name is still being written (or never was)
        name_end = min(ends)
        name = text[at:name_end].strip()
        args_at = skip_optional(text, name_end, (FENCE, "json"), final)
        if args_at is None:
            return CallSnapshot(name), None
        call, end = json_arguments(name, text, args_at, final)
        if end is None:
            return call, None
        return call, skip_optional(text, end, (FENCE, CALL_END), final)


# -- formats ---------------------------------------------------------------------------------


class DeepSeekV31Format(ToolFormat):
    """DeepSeek V3.1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>...`.

    Its template reads no `tools` (llama.cpp only warns that the template "does not natively
    describe tools"), so the tools go into the system prompt in the words of DeepSeek's V3.1
    model card (also Ollama's model/renderers/deepseek3.go).
    """

    name = "deepseek-v3.1"
    parser_class = DeepSeekParser
    triggers = (GrammarTrigger(CALLS_BEGIN),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return CALLS_BEGIN in template_source and SEP in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            body = f"{literal(CALL_BEGIN + tool.name + SEP)} {arguments_rule(b, tool, i)} {literal(CALL_END)}"
            alternatives.append(b.rule(f"{tool.name}-call", body))
        call = b.rule("call", " | ".join(alternatives))
        calls = b.rule("calls", repeat(call, "", single))
        return f"{literal(CALLS_BEGIN)} {calls} {literal(CALLS_END)}"

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return with_system_block(messages, v31_tools_prompt(tools)) if tools else messages


class DeepSeekR1Format(DeepSeekV31Format):
    """DeepSeek R1: `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>`,
    calls separated by a newline, all inside `<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>`.
    The template (llama-cpp-deepseek-r1.jinja) describes the tools itself."""

    name = "deepseek-r1"

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return super().detect(template_source) and "```json" in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            head = literal(f"{CALL_BEGIN}{R1_TYPE}{SEP}{tool.name}\n{FENCE}json\n")
            body = f'{head} {arguments_rule(b, tool, i)} "\\n"? {literal(FENCE + CALL_END)}'
            alternatives.append(b.rule(f"{tool.name}-call", body))
        call = b.rule("call", " | ".join(alternatives))
        calls = b.rule("calls", repeat(call, '"\\n"?', single))  # the templates put a newline between calls
        return f"{literal(CALLS_BEGIN)} {calls} {literal(CALLS_END)}"

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return messages


class DeepSeekR1DistillFormat(DeepSeekR1Format):
    """The R1 Distill templates (Llama 8B, Qwen 1.5B-32B): R1's call syntax, but the template
    reads no `tools`, and renders an earlier call only when the message's content is None
    (Llama) or as an extra empty turn (Qwen).

    So the tools are described in the system prompt (in the words of llama.cpp's own
    llama-cpp-deepseek-r1.jinja), and earlier calls reach the template already written out
    as the assistant's text, in R1's syntax.
    """

    name = "deepseek-r1-distill"

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return super().detect(template_source) and "tools" not in template_source

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        out: list[Message] = []
        for m in messages:
            calls = [p for p in m.parts if isinstance(p, ToolCallPart)]
            if m.role == "assistant" and calls:
                kept = [p for p in m.parts if not isinstance(p, ToolCallPart)]
                m = Message(m.role, [*kept, TextPart(r1_calls_text(calls))])
            out.append(m)
        return with_system_block(out, r1_tools_prompt(tools)) if tools else out


def with_system_block(messages: list[Message], block: str) -> list[Message]:
    """`block` at the end of the last system message (the R1 Distill templates keep only
    that one; V3.1's joins them all), or as a system message of its own."""
    system = [i for i, m in enumerate(messages) if m.role == "system"]
    if not system:
        return [Message("system", [TextPart(block)]), *messages]
    out = list(messages)
    i = system[-1]
    out[i] = Message("system", [*out[i].parts, TextPart("\n\n" + block)])
    return out


def r1_calls_text(calls: list[ToolCallPart]) -> str:
    """Calls as R1 writes them (the spelling of llama-cpp-deepseek-r1.jinja)."""
    written = [f"{CALL_BEGIN}{R1_TYPE}{SEP}{c.name}\n{FENCE}json\n{c.arguments}\n{FENCE}{CALL_END}" for c in calls]
    return CALLS_BEGIN + "\n".join(written) + CALLS_END


def r1_tools_prompt(tools: list[ToolSpec]) -> str:
    """The tools block of llama-cpp-deepseek-r1.jinja, for templates that print no tools."""
    specs = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]
    example = f'{CALL_BEGIN}{R1_TYPE}{SEP}example_function_name\n{FENCE}json\n{{\n  "arg1": "some_value"\n  ...\n}}\n{FENCE}\n'
    return (
        "You can call any of the following function tools to satisfy the user's requests: "
        f"{json.dumps(specs, indent=2, ensure_ascii=False)}\n\n"
        f"Example function tool call syntax:\n\n{CALLS_BEGIN}{example}{CALL_END}{CALLS_END}"
    )


def v31_tools_prompt(tools: list[ToolSpec]) -> str:
    """The tools section of DeepSeek V3.1's model card."""
    lines = ["## Tools", "You have access to the following tools:"]
    for t in tools:
        parameters = json.dumps(t.parameters, ensure_ascii=False)
        lines += ["", f"### {t.name}", f"Description: {t.description}", "", f"Parameters: {parameters}"]
    syntax = f"{CALLS_BEGIN}{CALL_BEGIN}tool_call_name{SEP}tool_call_arguments{CALL_END}{{{{additional_tool_calls}}}}{CALLS_END}"
    return "\n".join(
        [
            *lines,
            "",
            "IMPORTANT: ALWAYS adhere to this exact format for tool use:",
            syntax,
            "",
            "Where:",
            "",
            "- `tool_call_name` must be an exact match to one of the available tools",
            "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema",
            "- For multiple tool calls, chain them directly without separators or spaces",
        ]
    )
