"""Mistral's two tool-call formats.

- v3 (Mistral 7B v0.3, Nemo; tokenizer v3): one JSON list after the marker,
  `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "<9 chars>"}, ...]`.
- v11 (Mistral Small 3.2, Devstral, Ministral/Magistral 3; tokenizer v11+): one marker per
  call, the name in plain text, then the arguments: `[TOOL_CALLS]name[ARGS]{...}`; Mistral
  Small 3.2's template also writes the call id, `[TOOL_CALLS]name[CALL_ID]123456789[ARGS]{...}`.
  Reasoning (Ministral 3 Reasoning, Magistral) is `[THINK]...[/THINK]`, split by the engine
  (runtime/engine/reasoning.py) before this parser sees the text.

Reference: llama.cpp common/parsers/ministral3.cpp (`common_chat_params_init_ministral_3`:
`"[TOOL_CALLS]" name "[ARGS]" json`, repeated for parallel calls, lazy on `[TOOL_CALLS]`),
the `[CALL_ID]` case in tests/test-chat.cpp ("Mistral Small 3.2 - FUNC_BRACKET_TAG format"),
and the templates models/templates/{Mistral-Small-3.2-24B-Instruct-2506,
unsloth-mistral-Devstral-Small-2507, mistralai-Ministral-3-14B-Reasoning-2512,
mistralai-Mistral-Nemo-Instruct-2407}.jinja. Both template generations insist on call ids of
exactly 9 alphanumeric characters in the history (`mistral_id`).
"""

from __future__ import annotations

import hashlib
import json

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls import parsers
from runtime.engine.toolcalls.formats import JsonCallsFormat, ToolFormat, arguments_rule, repeat
from runtime.engine.toolcalls.jsonscan import WHITESPACE, JsonScanner
from runtime.engine.toolcalls.snapshot import CallSnapshot, Content, Item, SnapshotParser, held_suffix_of
from runtime.ir import Message, ToolCallPart, ToolResultPart, ToolSpec

CALLS = "[TOOL_CALLS]"
CALL_ID = "[CALL_ID]"
ARGS = "[ARGS]"
# Grammar for a call id as Mistral's templates require it: 9 alphanumeric characters.
ID_RULE = "[a-zA-Z0-9]{9}"
MALFORMED = -1  # `_header`: the text after a marker is no call header


def mistral_id(call_id: str) -> str:
    """`call_id` as Mistral templates accept it: 9 alphanumeric characters (stable per id)."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def with_mistral_ids(messages: list[Message]) -> list[Message]:
    """The conversation with every call id (and the results' references) as `mistral_id`."""
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


class MistralFormat(JsonCallsFormat):
    """Mistral v0.3 / Nemo: `[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": ...}, ...]`.

    The Nemo template writes each earlier call back with its `"id"`, so the model writes one
    too: the grammar allows it after the arguments (llama.cpp's old Nemo handler required it).
    """

    name = "mistral"
    parser_class = parsers.MistralParser
    triggers = (GrammarTrigger(CALLS),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return CALLS in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            args = arguments_rule(b, tool, i)
            head = literal(f'{{"name": {json.dumps(tool.name, ensure_ascii=False)}, "arguments": ')
            call_id = f'({literal(", ")} "\\"id\\": \\"" {ID_RULE} "\\"")?'
            alternatives.append(b.rule(f"{tool.name}-call", f'{head} {args} {call_id} "}}"'))
        call = b.rule("call", " | ".join(alternatives))
        return self.section(b, b.rule("calls", repeat(call, self.separator, single)))

    def section(self, b: GrammarBuilder, calls: str) -> str:
        return f'"{CALLS}" " "? "[" {calls} "]"'

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return with_mistral_ids(messages)


class MistralToolsParser(SnapshotParser):
    """`[TOOL_CALLS]name[ARGS]{...}` (optionally `[CALL_ID]id` before `[ARGS]`), repeated.

    Text before a marker is content; so is text after a finished call (its leading
    whitespace dropped). A call is committed once its name is closed by `[ARGS]`; a header
    that turns out malformed drops the marker and goes on as content.
    """

    def parse(self, text: str, final: bool) -> list[Item]:
        items: list[Item] = []
        pos, after_call = 0, False
        while True:
            at = text.find(CALLS, pos)
            segment = text[pos : at if at >= 0 else len(text)]
            if after_call:
                segment = segment.lstrip(WHITESPACE)
            if at < 0:
                keep = 0 if final else held_suffix_of(segment, [CALLS])
                items.append(Content(segment[: len(segment) - keep]))
                return items
            items.append(Content(segment))
            start = at + len(CALLS)
            header = _header(text, start)
            if header is None:  # still being written (or cut short: no name, dropped)
                return items
            if isinstance(header, int):  # MALFORMED: the marker is dropped, the rest is text
                pos, after_call = start, False
                continue
            name, args_at = header
            call, end = _arguments(name, text, args_at)
            items.append(call)
            if not call.done:
                return items
            pos, after_call = end, True


def _header(text: str, start: int) -> tuple[str, int] | int | None:
    """`name` and where the arguments start; None while incomplete; `MALFORMED`."""
    bracket = text.find("[", start)
    name = text[start : bracket if bracket >= 0 else len(text)]
    if any(c in WHITESPACE or c in "{}\"'" for c in name):
        return MALFORMED
    if bracket < 0:
        return None
    if not name:
        return MALFORMED
    rest = text[bracket:]
    if rest.startswith(CALL_ID):
        id_at = bracket + len(CALL_ID)
        bracket = text.find("[", id_at)
        call_id = text[id_at : bracket if bracket >= 0 else len(text)]
        if call_id and not call_id.isalnum():
            return MALFORMED
        if bracket < 0:
            return None
        rest = text[bracket:]
    elif CALL_ID.startswith(rest):
        return None
    if rest.startswith(ARGS):
        return name, bracket + len(ARGS)
    return None if ARGS.startswith(rest) else MALFORMED


def _arguments(name: str, text: str, at: int) -> tuple[CallSnapshot, int]:
    """The call's arguments from `at` on, and where the text after the call starts."""
    body = text[at:]
    lead = len(body) - len(body.lstrip(WHITESPACE))
    if lead == len(body):
        return CallSnapshot(name), len(text)
    if body[lead] != "{":  # not an object: the call keeps no arguments, the rest is text
        return CallSnapshot(name, "{}", done=True), at + lead
    scan = JsonScanner()
    n = scan.feed(body[lead:])
    value = body[lead : lead + n]
    if scan.done:
        return CallSnapshot(name, value, done=True), at + lead + n
    if scan.failed:  # closed at its last safe point; what follows is text
        return CallSnapshot(name, value[: scan.safe] + scan.heal(), done=True), at + lead + n
    return CallSnapshot(name, value[: scan.safe]), len(text)


class MistralToolsFormat(ToolFormat):
    """Mistral tokenizer v11+ (Small 3.2, Devstral, Ministral 3): `[TOOL_CALLS]name[ARGS]{...}`
    per call, Mistral Small 3.2 optionally with `[CALL_ID]<9 chars>` before `[ARGS]`."""

    name = "mistral-v11"
    parser_class = MistralToolsParser
    triggers = (GrammarTrigger(CALLS),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        # The v3 templates (Nemo) have `[TOOL_CALLS]` but no `[ARGS]` (llama.cpp's
        # common_chat_try_specialized_template uses the same markers for Ministral 3).
        return CALLS in template_source and ARGS in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            args = arguments_rule(b, tool, i)
            call_id = f'("{CALL_ID}" {ID_RULE})?'
            body = f'"{CALLS}" {literal(tool.name)} {call_id} "{ARGS}" {args}'
            alternatives.append(b.rule(f"{tool.name}-call", body))
        call = b.rule("call", " | ".join(alternatives))
        return b.rule("calls", repeat(call, "", single))

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        return with_mistral_ids(messages)
