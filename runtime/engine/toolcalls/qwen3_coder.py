"""Qwen3-Coder, Qwen3.5/3.6, Nemotron 3 Nano, StepFun 3.5 Flash: XML-parameter calls.

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    VALUE
    </parameter>
    </function>
    </tool_call>

One `<tool_call>` block per call; values are raw text between newlines, typed by the tool's
schema (xmlargs.py). Qwen3-Coder sometimes leaves out the first `<tool_call>` and starts at
`<function=NAME>`, so that (with a tool's full name) also opens a call and triggers the grammar.
Reasoning (Qwen3.5, Nemotron, StepFun) is `<think>…</think>`, split by the engine before this
parser; a call written inside an unclosed thinking block is still a call (the engine feeds
thinking text through the parser too).
Reference: llama.cpp common/chat.cpp `common_chat_try_specialized_template` (detection),
common/parsers/qwen3-coder.cpp `common_chat_params_init_qwen3_coder` (parser, grammar,
triggers), tests/test-chat.cpp (the Qwen3.5 and Qwen3-Coder canned outputs).
"""

from __future__ import annotations

import json
from typing import Any

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import MAX_PARALLEL_CALLS, CallGrammar
from runtime.engine.toolcalls.snapshot import Item
from runtime.engine.toolcalls.xmlargs import (
    MALFORMED,
    ArgSyntax,
    Block,
    XmlArgsFormat,
    XmlCallParser,
    args_rule,
    call_snapshot,
    is_prefix,
    plausible_name,
    scan_args,
    skip_ws,
    split_output,
)
from runtime.ir import Message, ToolCallPart, ToolChoice, ToolSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNCTION = "<function="
SYNTAX = ArgSyntax(
    key_open="<parameter=",
    key_close=">",
    value_open="",
    value_close="</parameter>",
    body_close="</function>",
    wrapped=True,
    after_value='"\\n"',
)


class Qwen3CoderParser(XmlCallParser):
    """Content, then `<tool_call>` blocks (the first may start at `<function=NAME>`)."""

    def parse(self, text: str, final: bool) -> list[Item]:
        bare = [f"{FUNCTION}{n}>" for n in sorted(self.names or ())]
        return split_output(text, final, [OPEN, *bare], self._block)

    def _block(self, text: str, at: int, marker: str, final: bool) -> Block | None:
        i = at
        if marker == OPEN:
            i = skip_ws(text, at + len(OPEN))
            if not text.startswith(FUNCTION, i):
                if is_prefix(text[i:], FUNCTION):
                    return Block([], len(text) if final else None)  # no name yet: dropped at the end
                return MALFORMED
        start = i + len(FUNCTION)
        end = text.find(">", start)
        name = text[start:] if end < 0 else text[start:end]
        if name and not plausible_name(name):
            return MALFORMED
        if end < 0:
            return Block([], len(text) if final else None)
        args, body_end = scan_args(text, end + 1, SYNTAX, final)
        call = call_snapshot(name, args, body_end, self.types)
        if body_end is None:
            return Block([call], None)
        j = skip_ws(text, body_end)
        if text.startswith(CLOSE, j):
            return Block([call], j + len(CLOSE))
        if not final and text[j:] and is_prefix(text[j:], CLOSE):
            return Block([call], None)  # `</tool_call>` is being written
        return Block([call], body_end)


class Qwen3CoderFormat(XmlArgsFormat):
    """`<tool_call>\\n<function=NAME>\\n<parameter=K>\\nV\\n</parameter>\\n</function>\\n</tool_call>`."""

    name = "qwen3-coder"
    parser_class = Qwen3CoderParser
    triggers = (GrammarTrigger(OPEN),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        src = template_source
        return (
            OPEN in src
            and FUNCTION in src
            and SYNTAX.key_open in src
            # templates writing `<tool_call><function=` without the newline are another format
            and "'<tool_call><function=' ~ tool_call.name ~ '>'" not in src
        )

    def grammar(
        self,
        tools: list[ToolSpec],
        choice: ToolChoice,
        parallel: bool,
        response: dict[str, Any] | None = None,
        response_strict: bool = False,
    ) -> CallGrammar:
        out = super().grammar(tools, choice, parallel, response, response_strict)
        if not out.triggers:
            return out
        # A call may start at `<function=NAME>` (the grammar's opening `<tool_call>` is optional).
        named = [t for t in tools if choice.mode != "function" or t.name == choice.name]
        return CallGrammar(out.gbnf, out.triggers + tuple(GrammarTrigger(f"{FUNCTION}{t.name}>") for t in named))

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        functions = []
        for i, tool in enumerate(tools):
            args = args_rule(b, tool, i, SYNTAX)
            head = literal(f"{FUNCTION}{tool.name}>\n")
            functions.append(b.rule(f"{tool.name}-call", f'{head} {args} "</function>\\n" "</tool_call>"'))
        body = b.rule("call-body", " | ".join(functions))
        call = b.rule("call", f'"<tool_call>\\n" {body}')
        first = b.rule("first-call", f'"<tool_call>\\n"? {body}')
        return first if single else f'{first} ("\\n"? {call}){{0,{MAX_PARALLEL_CALLS - 1}}}'

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        # The templates print a scalar argument with Jinja's `string` filter: a boolean
        # would come out as Python's `True`. Give them the JSON text the model writes.
        return [Message(m.role, [_json_scalars(p) for p in m.parts]) for m in messages]


def _json_scalars(part: Any) -> Any:
    if not isinstance(part, ToolCallPart):
        return part
    try:
        args = json.loads(part.arguments)
    except ValueError:
        return part
    if not isinstance(args, dict):
        return part
    fixed = {k: json.dumps(v) if v is None or isinstance(v, bool) else v for k, v in args.items()}
    return ToolCallPart(part.id, part.name, json.dumps(fixed, ensure_ascii=False))
