"""The per-family parsers: which markers open calls, and what sits around them."""

from __future__ import annotations

from runtime.engine.toolcalls.parser import Mismatch, More, ToolCallParser, expect, json_string, skip_ws


class HermesParser(ToolCallParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call."""

    markers = ("<tool_call>",)
    closer = "</tool_call>"

    def next_call(self, s: str, i: int) -> tuple[bool, int]:
        return False, expect(s, skip_ws(s, i), "</tool_call>")


class MistralParser(ToolCallParser):
    """`[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`"""

    markers = ("[TOOL_CALLS]",)

    def open_section(self, s: str, i: int) -> int:
        return expect(s, skip_ws(s, i), "[")

    def next_call(self, s: str, i: int) -> tuple[bool, int]:
        i = skip_ws(s, i)
        if i < len(s) and s[i] == ",":
            return True, i + 1
        return False, expect(s, i, "]")


class Llama3Parser(ToolCallParser):
    """Llama 3.x: the message itself is `{"name": ..., "parameters": {...}}` (several
    separated by `;`), or the call follows `<|python_tag|>`."""

    markers = ("<|python_tag|>",)
    at_start = True
    args_keys = ("parameters", "arguments")

    def next_call(self, s: str, i: int) -> tuple[bool, int]:
        i = skip_ws(s, i)
        if i < len(s) and s[i] == ";":
            return True, i + 1
        if i < len(s) and s[i] == "{":
            return True, i
        if i >= len(s):
            raise More  # a separator may follow
        raise Mismatch


class GenericParser(ToolCallParser):
    """The generic envelope, only as the whole message: `{"tool_calls": [call, ...]}`."""

    at_start = True
    envelope = True

    def open_section(self, s: str, i: int) -> int:
        i = skip_ws(s, expect(s, i, "{"))
        key, i = json_string(s, i)
        if key != "tool_calls":
            raise Mismatch  # some other JSON object: an answer, not a call
        i = skip_ws(s, expect(s, skip_ws(s, i), ":"))
        return expect(s, i, "[")

    def next_call(self, s: str, i: int) -> tuple[bool, int]:
        i = skip_ws(s, i)
        if i < len(s) and s[i] == ",":
            return True, i + 1
        i = skip_ws(s, expect(s, i, "]"))
        return False, expect(s, i, "}")
