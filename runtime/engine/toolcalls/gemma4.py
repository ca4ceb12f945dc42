"""Gemma 4: calls in its own object syntax, reasoning in a thought channel.

    <|channel>thought
    thinking<channel|>Some text<|tool_call>call:get_time{city:<|"|>Paris<|"|>,n:5}<tool_call|>

Arguments are not JSON: keys are bare, strings sit between `<|"|>` quotes, numbers, booleans,
`null`, `[...]` and `{...}` are as in JSON. They are converted to JSON text here, as llama.cpp's
`gemma4_to_json` does (common/chat-peg-parser.cpp); parallel calls follow each other with no
separator. `<|tool_response>` and `<turn|>` end the generation (and, if they reach the text,
the output). Reference: common/parsers/gemma4.cpp (`common_chat_params_init_gemma4`: markers,
PEG parser, grammar, the legacy `tool_responses` workaround) and tests/test-chat.cpp
("Google Gemma 4").
"""

from __future__ import annotations

import json
import re
from typing import Any

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import ToolFormat, repeat
from runtime.engine.toolcalls.jsonscan import JsonScanner
from runtime.engine.toolcalls.snapshot import CallSnapshot, Content, Item, Reasoning, SnapshotParser, held_suffix_of
from runtime.ir import ToolSpec

THOUGHT_OPEN = "<|channel>"
THOUGHT_CLOSE = "<channel|>"
CALL_OPEN = "<|tool_call>"
CALL_CLOSE = "<tool_call|>"
QUOTE = '<|"|>'
OUTPUT_ENDS = ("<|tool_response>", "<turn|>")  # end-of-generation tokens
MARKERS = (THOUGHT_OPEN, THOUGHT_CLOSE, CALL_OPEN, *OUTPUT_ENDS)
TURN_START = "<|turn>model\n"
# A chat template written for Gemma 4 renders calls with this (common_chat_try_specialized_template).
DETECT = "'<|tool_call>call:'"
# Templates without it predate role:tool support and want results as `tool_responses`.
CURRENT_TEMPLATE = "{#- OpenAI Chat Completions:"

INVALID_NAME = re.compile(r"[^a-zA-Z0-9-]+")
_NAME = re.compile(r"(?:call:)?([^{<\s]*)")
_BARE_END = re.compile(r"[,}\]\s<]")


class Gemma4Parser(SnapshotParser):
    """Splits a Gemma 4 output into reasoning, content and calls (see the module docstring)."""

    def parse(self, text: str, final: bool) -> list[Item]:
        items: list[Item] = []
        pos = len(TURN_START) if text.startswith(TURN_START) else 0
        while pos < len(text):
            hits = [(at, m) for m in MARKERS if (at := text.find(m, pos)) >= 0]
            if not hits:
                rest = text[pos:]
                # At the end, a held prefix of a marker is text (the markers are special tokens,
                # sampled whole, never cut short).
                held = 0 if final else held_suffix_of(rest, MARKERS)
                items.append(Content(rest[: len(rest) - held]))
                break
            at, marker = min(hits)
            items.append(Content(text[pos:at]))
            pos = at + len(marker)
            if marker in OUTPUT_ENDS:
                break
            if marker == THOUGHT_CLOSE:
                continue  # a stray close: dropped (llama.cpp stops content at it)
            if marker == THOUGHT_OPEN:
                rest = text[pos:]
                if not rest.startswith("thought"):
                    if "thought".startswith(rest) and (rest or not final):
                        break  # the channel name is still being written (or was cut off)
                    continue  # an empty `<|channel>`: dropped, as llama.cpp consumes it
                end = text.find(THOUGHT_CLOSE, pos)
                thought = text[pos + len("thought") : end if end >= 0 else len(text)]
                if end < 0 and not final:
                    thought = thought[: len(thought) - held_suffix_of(thought, MARKERS)]
                items.append(Reasoning(thought.lstrip()))
                if end < 0:
                    break
                pos = end + len(THOUGHT_CLOSE)
                continue
            call, pos = _call(text, pos, final)
            if call is not None:
                items.append(call)
            if pos < 0:
                break
        return items


def _call(text: str, pos: int, final: bool) -> tuple[CallSnapshot | None, int]:
    """The call after `<|tool_call>` at `pos`, and where the text goes on (-1: it does not)."""
    close = text.find(CALL_CLOSE, pos)
    region = text[pos : close if close >= 0 else len(text)]
    name_match = _NAME.match(region)
    name = name_match.group(1) if name_match else ""
    brace = name_match.end() if name_match else 0
    if brace >= len(region) or region[brace] != "{":
        # No arguments yet: a name is known only once its `{` (or the end) is there.
        done = final or close >= 0
        return (CallSnapshot(name) if done and name else None), (close + len(CALL_CLOSE) if close >= 0 else -1)
    src = region[brace:]
    if close < 0 and not final:
        src = src[: len(src) - held_suffix_of(src, (CALL_CLOSE, QUOTE))]
    converted, complete = gemma_to_json(src, final=final or close >= 0)
    if complete:
        call = CallSnapshot(name, converted, done=True)
    else:
        scan = JsonScanner()
        scan.feed(converted)
        call = CallSnapshot(name, converted[: scan.safe])
    return call, (close + len(CALL_CLOSE) if close >= 0 else -1)


def gemma_to_json(src: str, *, final: bool) -> tuple[str, bool]:
    """Gemma 4 object text (from its `{`) as JSON: (the JSON so far, whether the object closed).

    The JSON only grows as `src` grows: a bare value (number, `true`...) is written once
    something ends it, a key once its `:` is there, a string as it goes. Anything that is
    not the syntax stops the conversion (the call is then closed as far as it got).
    """
    out: list[str] = []
    stack: list[str] = []
    state, i, n = "value", 0, len(src)
    first = True
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        if state == "value":
            if src.startswith(QUOTE, i):
                end = src.find(QUOTE, i + len(QUOTE))
                raw = src[i + len(QUOTE) : end if end >= 0 else n]
                if end < 0:
                    out.append('"' + json.dumps(raw, ensure_ascii=False)[1:-1])
                    break
                out.append(json.dumps(raw, ensure_ascii=False))
                i, state = end + len(QUOTE), "after"
            elif c in "{[":
                stack.append(c)
                out.append(c)
                i, state, first = i + 1, ("key" if c == "{" else "value"), True
                continue
            elif c == "]" and first and stack and stack[-1] == "[":
                state = "after"
                continue  # closed below
            elif QUOTE.startswith(src[i:]) and not final:
                break
            else:
                m = _BARE_END.search(src, i)
                if m is None and not final:
                    break  # the value may go on
                token = src[i : m.start() if m else n]
                if not token:
                    break
                out.append(_bare(token))
                i, state = i + len(token), "after"
            first = False
        elif state == "key":
            if c == "}" and first:
                state = "after"
                continue
            if src.startswith(QUOTE, i):  # a quoted key: `<|"|>key<|"|>:`
                end = src.find(QUOTE, i + len(QUOTE))
                if end < 0 or end + len(QUOTE) >= n:
                    break
                key, colon = src[i + len(QUOTE) : end], end + len(QUOTE)
            else:
                colon = src.find(":", i)
                if colon < 0:
                    break
                key = src[i:colon].strip()
            if src[colon] != ":" or not key or any(ch in key for ch in "{}[],"):
                break
            out.append(json.dumps(key, ensure_ascii=False) + ":")
            i, state, first = colon + 1, "value", False
        else:  # after a value
            if c == "," and stack:
                out.append(",")
                i, state, first = i + 1, ("key" if stack[-1] == "{" else "value"), False
            elif stack and c == {"{": "}", "[": "]"}[stack[-1]]:
                stack.pop()
                out.append(c)
                i += 1
                if not stack:
                    return "".join(out), True
            else:
                break
    return "".join(out), False


def _bare(token: str) -> str:
    """A bare value as JSON: a number, true/false/null as they are; anything else a string."""
    try:
        value = json.loads(token)
    except ValueError:
        return json.dumps(token, ensure_ascii=False)
    return token if isinstance(value, int | float | bool) or value is None else json.dumps(token, ensure_ascii=False)


class Gemma4Format(ToolFormat):
    """Gemma 4 (both llama.cpp templates). Parallel calls follow each other directly."""

    name = "gemma4"
    owns_reasoning = True
    parser_class = Gemma4Parser
    triggers = (GrammarTrigger(CALL_OPEN),)

    @classmethod
    def detect(cls, template_source: str) -> bool:
        return DETECT in template_source

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        """An optional thought block (a forced call may think first), then the calls.
        Arguments follow the Gemma syntax and the tool's schema at the top level: its
        required properties, in order, then any of the optional ones, in order; each value
        of the property's type (string enums as their literals). Deeper values are any Gemma
        value (llama.cpp leaves even the top level free)."""
        _value_rules(b)
        alternatives = []
        for tool in tools:
            args = _arguments_rule(b, tool)
            head = literal(f"{CALL_OPEN}call:{tool.name}")
            alternatives.append(b.rule(f"{tool.name}-call", f'{head} {args} "<tool_call|>"'))
        call = b.rule("gemma4-call", " | ".join(alternatives))
        body = b.excluding(THOUGHT_CLOSE, "gemma4-thought-body")
        thought = b.rule("gemma4-thought", f'"<|channel>thought" {body} "<channel|>"')
        return f"{thought}? {repeat(call, '', single)}"

    def template_messages(self, messages: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
        """The template's messages as the template at `source` wants them: older Gemma 4
        templates (without the role:tool scan) read results from the assistant turn's
        `tool_responses`. llama.cpp's `workaround::convert_tool_responses_gemma4`."""
        if CURRENT_TEMPLATE in source:
            return messages
        return convert_tool_responses(messages)

    def finish_prompt(self, prompt: str) -> str:
        """A prompt that ends a model turn (`<turn|>`, after content written beside a call)
        gets the next model turn opened, as llama.cpp's init_gemma4 does."""
        return prompt + TURN_START if prompt.endswith("<turn|>\n") else prompt


def _value_rules(b: GrammarBuilder) -> str:
    """llama.cpp's gemma4-value rules (common/parsers/gemma4.cpp)."""
    text = b.excluding(QUOTE, "gemma4-string-body")
    b.rule("gemma4-string", f'"<|\\"|>" {text} "<|\\"|>"')
    b.rule("gemma4-number", '"-"? ("0" | [1-9] [0-9]{0,20}) ("." [0-9]{1,20})? ([eE] [-+]? [0-9]{1,4})?')
    b.rule("gemma4-key", "[^:{}<,\\[\\] \\n]+")
    b.rule("gemma4-dict", '"{" ("}" | gemma4-key ":" gemma4-value ("," " "? gemma4-key ":" gemma4-value)* "}")')
    b.rule("gemma4-array", '"[" ("]" | gemma4-value ("," " "? gemma4-value)* "]")')
    return b.rule(
        "gemma4-value",
        'gemma4-string | gemma4-dict | gemma4-array | gemma4-number | "true" | "false" | "null"',
    )


def _arguments_rule(b: GrammarBuilder, tool: ToolSpec) -> str:
    """`{key:value,...}` for one tool, by its JSON Schema's top-level properties."""
    schema = tool.parameters or {}
    props: dict[str, Any] = schema.get("properties") or {}
    if not props:
        return "gemma4-dict" if schema.get("additionalProperties", True) is not False else '"{}"'
    required = [name for name in props if name in (schema.get("required") or [])]
    optional = [name for name in props if name not in required]
    prefix = INVALID_NAME.sub("-", tool.name)

    def kv(name: str) -> str:
        return f'{literal(name)} ":" {_typed_value(props[name])}'

    sep = '"," " "?'
    # rest-i: any of optional[i:], in order, each after a separator.
    rest = '""'
    for i in reversed(range(len(optional))):
        rest = b.rule(f"{prefix}-rest-{i}", f"({sep} {kv(optional[i])})? {rest}")
    rest0 = rest
    if required:
        body = f" {sep} ".join(kv(name) for name in required) + f" {rest0}"
    else:
        # first-i: nothing, or one of optional[i:] and then any of those after it.
        first = '""'
        for i in reversed(range(len(optional))):
            after = f"{prefix}-rest-{i + 1}" if i + 1 < len(optional) else '""'
            first = b.rule(f"{prefix}-first-{i}", f"{kv(optional[i])} {after} | {first}")
        body = first
    return f'"{{" {body} "}}"'


def _typed_value(schema: Any) -> str:
    """The Gemma value rule for a property's schema (its `type` and string `enum`)."""
    if not isinstance(schema, dict):
        return "gemma4-value"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        return "(" + " | ".join(literal(QUOTE + v + QUOTE) for v in enum) + ")"
    kind = schema.get("type")
    rules = {
        "string": "gemma4-string",
        "integer": '"-"? ("0" | [1-9] [0-9]{0,20})',
        "number": "gemma4-number",
        "boolean": '("true" | "false")',
        "null": '"null"',
        "array": "gemma4-array",
        "object": "gemma4-dict",
    }
    return f"({rules[kind]})" if isinstance(kind, str) and kind in rules else "gemma4-value"


def convert_tool_responses(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """assistant(calls) + tool results (+ a final assistant answer) -> one assistant message
    with `tool_calls`, `tool_responses` (name, response) and `content`, as llama.cpp's
    `gemma4_model_turn_builder` does (results that are JSON are passed as objects)."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(messages):
        msg = messages[i]
        i += 1
        if msg.get("role") != "assistant" or not msg.get("tool_calls"):
            out.append(msg)
            continue
        turn: dict[str, Any] = {"role": "assistant", "tool_calls": msg["tool_calls"]}
        if msg.get("reasoning_content"):
            turn["reasoning_content"] = msg["reasoning_content"]
        responses = []
        while i < len(messages) and messages[i].get("role") == "tool":
            result = messages[i]
            i += 1
            try:
                response = json.loads(result.get("content") or "")
            except ValueError:
                response = result.get("content")
            calls = msg["tool_calls"]
            k = len(responses)
            name = calls[k]["function"]["name"] if k < len(calls) else result.get("tool_call_id", "")
            responses.append({"name": name, "response": response})
        if responses:
            turn["tool_responses"] = responses
        answer = messages[i] if i < len(messages) else {}
        if answer.get("role") == "assistant" and not answer.get("tool_calls") and answer.get("content"):
            turn["content"] = answer["content"]
            i += 1
        out.append(turn)
    return out
