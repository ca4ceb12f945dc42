"""Cohere Command R7B: every part of the answer is wrapped in its own special tokens.

    <|START_THINKING|>plan<|END_THINKING|>
    <|START_ACTION|>[
        {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}
    ]<|END_ACTION|>
    <|START_RESPONSE|>the answer<|END_RESPONSE|>

So the parser owns reasoning (`owns_reasoning`): it runs on every output, takes the thinking
block as reasoning, the response block as content (tags dropped) and the action block's JSON
list as calls. The template writes the generation prompt's empty thinking block itself
(`<|START_THINKING|><|END_THINKING|>`) unless `enable_thinking` is set.

Reference: llama.cpp tests/test-chat.cpp ("CohereForAI Command-R 7B (2024-tool_use)": canned
outputs and the messages they parse to), common/chat-auto-parser*.cpp (the template is handled
by the autoparser: a JSON list of `tool_call_id`/`tool_name`/`parameters` objects between the
action tokens), models/templates/CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja.
Cohere2 MoE (`<|START_TEXT|>`, common/parsers/cohere2moe.cpp) is a different family.
"""

from __future__ import annotations

import json

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import ToolFormat, arguments_rule, repeat
from runtime.engine.toolcalls.jsonscan import JsonScanner
from runtime.engine.toolcalls.marked import json_arguments, skip_optional, skip_space
from runtime.engine.toolcalls.snapshot import (
    CallSnapshot,
    Content,
    Item,
    Reasoning,
    SnapshotParser,
    held_suffix_of,
)
from runtime.ir import ToolSpec

START_THINKING = "<|START_THINKING|>"
END_THINKING = "<|END_THINKING|>"
START_RESPONSE = "<|START_RESPONSE|>"
END_RESPONSE = "<|END_RESPONSE|>"
START_ACTION = "<|START_ACTION|>"
END_ACTION = "<|END_ACTION|>"
CALL_OPEN = '{"tool_call_id": "'  # the grammar writes the keys in the template's order and spacing
TAGS = (START_THINKING, END_THINKING, START_RESPONSE, END_RESPONSE, START_ACTION, END_ACTION)


class CommandRParser(SnapshotParser):
    """Thinking, action and response blocks of Command R7B (see the module docstring).

    Text outside any block is content too, but whitespace alone between blocks is layout.
    """

    def parse(self, text: str, final: bool) -> list[Item]:
        items: list[Item] = []
        pos, block = 0, ""  # block: the open tag whose text we are in ("" = none)
        while True:
            found = [(at, tag) for tag in TAGS if (at := text.find(tag, pos)) >= 0]
            if not found:
                tail = text[pos:]
                # At the end, a held prefix of a tag is text (the tags are special tokens).
                keep = 0 if final else held_suffix_of(tail, TAGS)
                tail = tail[: len(tail) - keep]
                if block == "" and not tail.strip():
                    tail = ""  # layout (or not known yet to be more than layout)
                items.append(Reasoning(tail) if block == START_THINKING else Content(tail))
                return items
            at, tag = min(found)
            piece = text[pos:at]
            if block == START_THINKING:
                items.append(Reasoning(piece))
            elif block or piece.strip():
                items.append(Content(piece))
            pos = at + len(tag)
            block = tag if tag in (START_THINKING, START_RESPONSE) else ""
            if tag == START_ACTION:
                calls, end = _action(text, pos, final)
                items += calls
                if end is None:
                    return items
                pos = end


def _action(text: str, pos: int, final: bool) -> tuple[list[CallSnapshot], int | None]:
    """The calls of the JSON list at `pos`, and where the text after `<|END_ACTION|>` starts
    (None while unfinished). Malformed JSON ends the action: what follows is text."""
    calls: list[CallSnapshot] = []
    at = skip_space(text, pos)
    if at < len(text) and text[at] == "[":
        at += 1
    elif at < len(text) and text[at] != "{":
        return calls, at
    while True:
        at = skip_space(text, at)
        if at == len(text):
            return calls, None
        if text[at] == ",":
            at += 1
        elif text[at] == "]":
            return calls, skip_optional(text, at + 1, (END_ACTION,), final)
        elif text[at] == "{":
            call, end = _call(text, at + 1, final)
            if call is not None:
                calls.append(call)
            if end is None:
                return calls, None
            at = end
        else:
            return calls, at


def _call(text: str, pos: int, final: bool) -> tuple[CallSnapshot | None, int | None]:
    """One `{"tool_call_id": ..., "tool_name": ..., "parameters": {...}}` object, keys in any
    order: the call once its name is known, and where the object ends (None while open)."""
    name: str | None = None
    params: str | None = None  # complete parameters read before the name
    call: CallSnapshot | None = None
    at = pos
    while True:
        at = skip_space(text, at)
        if at == len(text):
            return call, None
        if text[at] == "}":
            if name is not None and (call is None or not call.done):
                call = CallSnapshot(name, "{}", done=True)
            return call, at + 1
        if text[at] == ",":
            at += 1
            continue
        key = _value(text, at)
        if key is None:
            return call, None
        if isinstance(key, int):
            return call, key  # malformed: the rest is text
        raw, at = key
        field = json.loads(raw)
        at = skip_space(text, at)
        if at == len(text):
            return call, None
        if text[at] != ":":
            return call, at
        at += 1
        if field == "parameters" and name is not None:
            call, end = json_arguments(name, text, at, final)
            if end is None:
                return call, None
            at = end
            continue
        value = _value(text, skip_space(text, at))
        if value is None:
            return call, None
        if isinstance(value, int):
            return call, value
        raw, at = value
        if field == "parameters":
            params = raw if raw.startswith("{") else "{}"
        elif field == "tool_name" and isinstance(parsed := json.loads(raw), str) and name is None:
            name = parsed
            call = CallSnapshot(name, params, done=True) if params is not None else CallSnapshot(name)


def _value(text: str, at: int) -> tuple[str, int] | int | None:
    """The complete JSON value at `at` and its end; None while unfinished; its position when malformed."""
    scan = JsonScanner()
    n = scan.feed(text[at:])
    if scan.done:
        return text[at : at + n], at + n
    return at if scan.failed else None


class CommandR7BFormat(ToolFormat):
    """Command R7B: `<|START_ACTION|>[{"tool_call_id": "0", "tool_name": ..., "parameters": {...}}]<|END_ACTION|>`."""

    name = "command-r7b"
    parser_class = CommandRParser
    owns_reasoning = True
    triggers = (GrammarTrigger(START_ACTION),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        # Cohere2 MoE also writes actions, but its answer is in `<|START_TEXT|>` (llama.cpp
        # common_chat_try_specialized_template gives it its own parser).
        return START_ACTION in template_source and "<|START_TEXT|>" not in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        space = b.rule("action-space", "[ \\n]{0,12}")
        alternatives = []
        for i, tool in enumerate(tools):
            rest = f'", "tool_name": {json.dumps(tool.name, ensure_ascii=False)}, "parameters": '
            head = f"{literal(CALL_OPEN)} [0-9]{{1,3}} {literal(rest)}"
            alternatives.append(b.rule(f"{tool.name}-call", f'{head} {arguments_rule(b, tool, i)} "}}"'))
        call = b.rule("call", " | ".join(alternatives))
        calls = b.rule("calls", repeat(call, f'"," {space}', single))
        # A forced call may still be planned first (with `enable_thinking` the prompt leaves it open).
        plan = f"({literal(START_THINKING)} {b.excluding(END_THINKING, 'plan')} {literal(END_THINKING)})?"
        return f"{plan} {literal(START_ACTION + '[')} {space} {calls} {space} {literal(']' + END_ACTION)}"
