"""Kimi K2 (Instruct, Thinking): calls in a section of special tokens, each call named by
its id `functions.NAME:INDEX`.

    <|tool_calls_section_begin|>
    <|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>
    <|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>{}<|tool_call_end|>
    <|tool_calls_section_end|>

The model strays from it: the section markers and `<|tool_call_end|>` may be missing, and
K2 Thinking may call from inside its `<think>` block without closing it. The parser takes
all of those; the grammar writes the canonical form. Reasoning (`<think>...</think>`, K2
Thinking only) is split by the engine (runtime/engine/reasoning.py), which keeps calls made
inside it as calls.

Reference: llama.cpp common/parsers/kimi-k2.cpp (`common_chat_params_init_kimi_k2`: section
markers optional, `<|tool_call_end|>` optional, lazy on `<|tool_call_begin|>`), detection in
common/chat.cpp `common_chat_try_specialized_template`, tests/test-chat.cpp ("Kimi-K2-Thinking
tests", "Kimi-K2 old template"), models/templates/{moonshotai-Kimi-K2,Kimi-K2-Instruct,
Kimi-K2-Thinking}.jinja.
"""

from __future__ import annotations

import re

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import ToolFormat, arguments_rule, repeat
from runtime.engine.toolcalls.marked import MarkedCallsParser, json_arguments, skip_optional
from runtime.engine.toolcalls.snapshot import CallSnapshot
from runtime.ir import Message, ToolCallPart, ToolResultPart, ToolSpec

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGS_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
_CALL_ID = re.compile(r"(?:functions\.)?(?P<name>.+?)(?::\d+)?")


class KimiParser(MarkedCallsParser):
    """`<|tool_call_begin|>functions.NAME:N<|tool_call_argument_begin|>{...}<|tool_call_end|>`,
    repeated, in an optional `<|tool_calls_section_begin|>...<|tool_calls_section_end|>`."""

    section_begin = SECTION_BEGIN
    section_end = SECTION_END
    call_begin = CALL_BEGIN

    def read_call(self, text: str, pos: int, final: bool) -> tuple[CallSnapshot | None, int | None]:
        args = text.find(ARGS_BEGIN, pos)
        if args < 0:
            return None, None
        match = _CALL_ID.fullmatch(text[pos:args].strip())
        if match is None or "<|" in match["name"] or any(c.isspace() for c in match["name"]):
            return None, pos  # no call id before the arguments: not a call, the rest is text
        call, end = json_arguments(match["name"], text, args + len(ARGS_BEGIN), final)
        if end is None:
            return call, None
        return call, skip_optional(text, end, (CALL_END,), final)


class KimiK2Format(ToolFormat):
    """Kimi K2: `<|tool_call_begin|>functions.NAME:N<|tool_call_argument_begin|>{...}<|tool_call_end|>`."""

    name = "kimi-k2"
    parser_class = KimiParser
    # The section marker usually comes first; K2 Thinking sometimes starts at a bare call.
    triggers = (GrammarTrigger(SECTION_BEGIN), GrammarTrigger(CALL_BEGIN))

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return SECTION_BEGIN in template_source and CALL_BEGIN in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            head = f"{literal(CALL_BEGIN + 'functions.' + tool.name + ':')} [0-9]{{1,3}} {literal(ARGS_BEGIN)}"
            body = f"{head} {arguments_rule(b, tool, i)} {literal(CALL_END)}"
            alternatives.append(b.rule(f"{tool.name}-call", body))
        call = b.rule("call", " | ".join(alternatives))
        calls = b.rule("calls", repeat(call, "", single))
        # Optional section markers: a lazy grammar may start at a bare call (llama.cpp's too).
        return f"{literal(SECTION_BEGIN)}? {calls} {literal(SECTION_END)}?"

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return with_kimi_ids(messages)


def with_kimi_ids(messages: list[Message]) -> list[Message]:
    """Call ids as Kimi writes them, `functions.NAME:INDEX` (INDEX: the call's place in its
    message, as the moonshotai-Kimi-K2 template numbers them), results pointing at them.

    Only the original K2 template prints `tool_call_id` (`## Return of ...`); K2 Instruct and
    Thinking number the calls themselves, across the conversation."""
    renamed: dict[str, str] = {}
    out = []
    for m in messages:
        parts = []
        index = 0
        for p in m.parts:
            if isinstance(p, ToolCallPart):
                renamed[p.id] = f"functions.{p.name}:{index}"
                index += 1
                p = ToolCallPart(renamed[p.id], p.name, p.arguments)
            elif isinstance(p, ToolResultPart) and p.call_id in renamed:
                p = ToolResultPart(renamed[p.call_id], p.content, p.is_error, p.name)
            parts.append(p)
        out.append(Message(m.role, parts))
    return out
