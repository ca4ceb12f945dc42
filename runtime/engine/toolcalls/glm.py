"""GLM 4.5 / 4.6 / 4.7 (and the templates that copied its syntax): tagged key/value calls.

    <tool_call>NAME
    <arg_key>KEY</arg_key>
    <arg_value>VALUE</arg_value>
    </tool_call>

GLM-4.6 puts newlines between the tags, GLM-4.7 none; both are read. Values are raw text
typed by the tool's schema (xmlargs.py). One `<tool_call>` block per call. Reasoning is
`<think>…</think>` (GLM-4.7's prompt opens it), split by the engine before this parser.
The templates also contain `<tool_call>`, so this family is detected before Hermes.
Reference: llama.cpp common/chat-auto-parser-generator.cpp `build_tool_parser_tag_tagged`
(llama.cpp reads GLM through its template autoparser), common/parsers/ling3.cpp (the same
call syntax written out), tests/test-chat.cpp (the GLM-4.6 and GLM-4.7-Flash canned outputs).
"""

from __future__ import annotations

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import repeat
from runtime.engine.toolcalls.snapshot import Item
from runtime.engine.toolcalls.xmlargs import (
    MALFORMED,
    ArgSyntax,
    Block,
    XmlArgsFormat,
    XmlCallParser,
    args_rule,
    call_snapshot,
    plausible_name,
    scan_args,
    skip_ws,
    split_output,
)
from runtime.ir import ToolSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"
SYNTAX = ArgSyntax(
    key_open="<arg_key>",
    key_close="</arg_key>",
    value_open="<arg_value>",
    value_close="</arg_value>",
    body_close=CLOSE,
    key_gap='"\\n"?',
    after_value='"\\n"?',
)


class GlmParser(XmlCallParser):
    """Content, then `<tool_call>NAME<arg_key>…</tool_call>` blocks."""

    def parse(self, text: str, final: bool) -> list[Item]:
        return split_output(text, final, [OPEN], self._block)

    def _block(self, text: str, at: int, marker: str, final: bool) -> Block | None:
        start = skip_ws(text, at + len(OPEN))
        ends = [p for p in (text.find("\n", start), text.find("<", start)) if p >= 0]
        end = min(ends) if ends else -1
        name = (text[start:] if end < 0 else text[start:end]).strip()
        if (name or end >= 0) and not plausible_name(name):
            return MALFORMED
        if end < 0:
            return Block([], len(text) if final else None)  # no name yet: dropped at the end
        args, body_end = scan_args(text, end, SYNTAX, final)
        return Block([call_snapshot(name, args, body_end, self.types)], body_end)


class GlmFormat(XmlArgsFormat):
    """`<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>`."""

    name = "glm"
    parser_class = GlmParser
    triggers = (GrammarTrigger(OPEN),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        src = template_source
        return OPEN in src and SYNTAX.key_open in src and SYNTAX.value_open in src

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        alternatives = []
        for i, tool in enumerate(tools):
            args = args_rule(b, tool, i, SYNTAX)
            alternatives.append(b.rule(f"{tool.name}-call", f'{literal(tool.name)} "\\n"? {args}'.rstrip()))
        call = b.rule("call", f'"{OPEN}" ( {" | ".join(alternatives)} ) "{CLOSE}"')
        return repeat(call, '"\\n"?', single)
