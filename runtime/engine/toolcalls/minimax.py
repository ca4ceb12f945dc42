"""MiniMax M2: `<invoke>` calls inside one `<minimax:tool_call>` section.

    <minimax:tool_call>
    <invoke name="NAME">
    <parameter name="KEY">VALUE</parameter>
    </invoke>
    </minimax:tool_call>

Parallel calls are several `<invoke>`s in the one section. Values are raw text typed by the
tool's schema (xmlargs.py). Reasoning is `<think>…</think>` (the prompt opens it), split by
the engine before this parser. MiniMax-M1 (JSON in `<tool_calls>`) and MiniMax-M3 (a
namespace token before every tag, the parameter name as the tag) are other syntaxes.
Reference: llama.cpp common/chat-auto-parser-generator.cpp `build_tool_parser_tag_tagged`
(llama.cpp reads MiniMax-M2 through its template autoparser), tests/test-chat.cpp
("MiniMax-M2 tests"), models/templates/MiniMax-M2.jinja.
"""

from __future__ import annotations

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import repeat
from runtime.engine.toolcalls.snapshot import CallSnapshot, Item
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
from runtime.ir import ToolSpec

OPEN, CLOSE = "<minimax:tool_call>", "</minimax:tool_call>"
INVOKE, NAME_END = '<invoke name="', '">'
NEWLINE = '"\\n"'  # GBNF
SYNTAX = ArgSyntax(
    key_open='<parameter name="',
    key_close='">',
    value_open="",
    value_close="</parameter>",
    body_close="</invoke>",
    after_value='"\\n"',
)


class MiniMaxParser(XmlCallParser):
    """Content, then `<minimax:tool_call>` sections of `<invoke>` calls."""

    def parse(self, text: str, final: bool) -> list[Item]:
        return split_output(text, final, [OPEN], self._block)

    def _block(self, text: str, at: int, marker: str, final: bool) -> Block | None:
        calls: list[CallSnapshot] = []
        i = at + len(OPEN)
        while True:
            i = skip_ws(text, i)
            if text.startswith(CLOSE, i):
                return Block(calls, i + len(CLOSE))
            if text.startswith(INVOKE, i):
                start = i + len(INVOKE)
                end = text.find(NAME_END, start)
                name = text[start:] if end < 0 else text[start:end]
                if name and not plausible_name(name.rstrip('"')):
                    return MALFORMED if not calls else Block(calls, i)
                if end < 0:
                    return Block(calls, len(text) if final else None)  # no name yet: dropped at the end
                args, body_end = scan_args(text, end + len(NAME_END), SYNTAX, final)
                calls.append(call_snapshot(name, args, body_end, self.types))
                if body_end is None:
                    return Block(calls, None)
                i = body_end
                continue
            if is_prefix(text[i:], CLOSE, INVOKE):
                return Block(calls, len(text) if final else None)
            # Not a call: before any call the marker was not one; after, the section ends here.
            return Block(calls, i) if calls else MALFORMED


class MiniMaxFormat(XmlArgsFormat):
    """`<minimax:tool_call>\\n<invoke name="NAME">\\n<parameter name="K">V</parameter>\\n</invoke>\\n…`."""

    name = "minimax-m2"
    parser_class = MiniMaxParser
    triggers = (GrammarTrigger(OPEN),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        src = template_source
        return OPEN in src and INVOKE in src and SYNTAX.key_open in src

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            args = args_rule(b, tool, i, SYNTAX)
            head = literal(f"{INVOKE}{tool.name}{NAME_END}\n")
            alternatives.append(b.rule(f"{tool.name}-call", f'{head} {args} "{SYNTAX.body_close}"'))
        call = b.rule("call", " | ".join(alternatives))
        calls = repeat(call, NEWLINE, single)
        return f'"{OPEN}\\n" {calls} "\\n{CLOSE}"'
