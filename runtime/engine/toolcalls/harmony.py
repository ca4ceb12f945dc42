"""gpt-oss (OpenAI harmony): every output is a run of channel messages.

The prompt ends with `<|start|>assistant`; the model then writes messages like

    <|channel|>analysis<|message|>thinking<|end|>
    <|start|>assistant<|channel|>final<|message|>the answer
    <|start|>assistant to=functions.NAME<|channel|>commentary <|constrain|>json<|message|>{...}<|call|>

`analysis` is reasoning, `final` (and a `commentary` message without a recipient, the
"preamble") is the answer, and a message addressed `to=functions.NAME` - in the role header
or after the channel - is a call whose body is the JSON arguments. `<|call|>` and `<|return|>`
end the generation and usually never reach the text, so the end of the text closes a call.
Messages to other recipients (the built-in `python`, `browser.*`, `container.*`) are dropped.
Reference: llama.cpp common/parsers/gpt-oss.cpp (`common_chat_params_init_gpt_oss`, its PEG
parser and grammar) and the canned outputs in tests/test-chat.cpp ("GPT-OSS format tests").
"""

from __future__ import annotations

import re
from typing import Any

from runtime.engine.grammar import GrammarBuilder, cache, literal
from runtime.engine.sampler import GrammarTrigger
from runtime.engine.toolcalls.formats import ToolFormat, arguments_rule
from runtime.engine.toolcalls.jsonscan import JsonScanner
from runtime.engine.toolcalls.snapshot import CallSnapshot, Content, Item, Reasoning, SnapshotParser, held_suffix_of
from runtime.ir import ChatRequest, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart, ToolSpec

START = "<|start|>"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
RECIPIENT = " to="
# What ends a message body: its own end tokens, or the next message's header starting.
BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>", START, CHANNEL)
NEXT_MESSAGE = (START, CHANNEL)  # these belong to the next message; the others are consumed
HEADER_STARTS = (START, CHANNEL, RECIPIENT)
# Messages the grammar lets the model write before a forced call (analysis, preamble).
MAX_MESSAGES_BEFORE_CALL = 4
EFFORTS = {"minimal": "low", "none": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}

_CHANNEL_NAME = re.compile(r"<\|channel\|>(\w*)")
_RECIPIENT = re.compile(r"to=([^\s<]+)")


class HarmonyParser(SnapshotParser):
    """Splits a harmony output into reasoning, content and calls (see the module docstring)."""

    def parse(self, text: str, final: bool) -> list[Item]:
        items: list[Item] = []
        pos = 0
        while pos < len(text):
            rest = text[pos:]
            if rest.startswith(START):
                # `<|start|>assistant`: the role name runs up to the header.
                role = re.match(r"<\|start\|>[^<\s]*", rest)
                end = pos + role.end() if role else len(text)
                if end == len(text):
                    break  # the role may go on
                pos = end
                continue
            if rest.startswith((CHANNEL, RECIPIENT)):
                at = text.find(MESSAGE, pos)
                if at < 0:
                    if final:  # cut off inside a header: a named call is still a call
                        name = _call_name(rest)
                        if name:
                            items.append(CallSnapshot(name))
                    break
                kind, name = _kind(text[pos:at])
                pos = at + len(MESSAGE)
            elif any(m.startswith(rest) for m in HEADER_STARTS) or (not final and rest.isspace()):
                break  # may still become a header; at the end, an unfinished header is dropped
            else:
                kind, name = "bare", ""
            body, pos, ended = _body(text, pos, final)
            if kind == "call":
                items.append(_call(name, body, ended or final))
            elif kind == "reasoning":
                items.append(Reasoning(body))
            elif kind == "content":
                items.append(Content(body))
            elif kind == "bare":
                items.append(Content(body.lstrip()))
            # "other": a message to a built-in tool we do not run; dropped
        return items


def _kind(header: str) -> tuple[str, str]:
    """What a complete header (up to `<|message|>`) makes of its message: (kind, call name)."""
    name = _call_name(header)
    if name:
        return "call", name
    if any(r != "assistant" for r in _RECIPIENT.findall(header)):
        return "other", ""
    channels = _CHANNEL_NAME.findall(header)
    return ("reasoning" if channels and channels[-1] == "analysis" else "content"), ""


def _call_name(header: str) -> str:
    for recipient in _RECIPIENT.findall(header):
        if recipient.startswith("functions.") and len(recipient) > len("functions."):
            return recipient[len("functions.") :]
    return ""


def _body(text: str, start: int, final: bool) -> tuple[str, int, bool]:
    """The body from `start`: (text, where the next message starts, whether it ended)."""
    ends = [(at, end) for end in BODY_ENDS if (at := text.find(end, start)) >= 0]
    if ends:
        at, end = min(ends)
        return text[start:at], at if end in NEXT_MESSAGE else at + len(end), True
    body = text[start:]
    if not final:
        body = body[: len(body) - held_suffix_of(body, BODY_ENDS)]
    return body, len(text), False


def _call(name: str, body: str, closed: bool) -> CallSnapshot:
    """A call whose arguments are the JSON prefix of `body` written so far."""
    body = body.lstrip()
    scan = JsonScanner()
    scan.feed(body)
    if closed:
        scan.end_of_input()
    if scan.done:
        return CallSnapshot(name, body[: scan.consumed], done=True)
    return CallSnapshot(name, body[: scan.safe])


class HarmonyFormat(ToolFormat):
    """gpt-oss. One call per output (`<|call|>` ends the generation), so `parallel` is moot."""

    name = "harmony"
    owns_reasoning = True
    parser_class = HarmonyParser
    # The recipient in the role header (` to=` right after `<|start|>assistant`, or at the
    # very start of the output) or after the channel. Both end at the same character, and
    # the sampler starts the grammar at the earliest trigger, so one root takes both.
    triggers = (
        GrammarTrigger(f"{CHANNEL}commentary to=functions."),
        GrammarTrigger(f"{CHANNEL}analysis to=functions."),
        GrammarTrigger(" to=functions."),
    )

    @classmethod
    def detect(cls, template_source: str) -> bool:
        # common_chat_try_specialized_template: "<|channel|>" alone picks GPT-OSS.
        return CHANNEL in template_source

    def template_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        # The template reads `reasoning_effort` (low/medium/high, default medium). The engine
        # passes the request's value too, with `setdefault`, so this mapped one wins; a
        # client's explicit `chat_template_kwargs` win over both.
        effort = EFFORTS.get(request.reasoning_effort or "")
        if effort is None and request.reasoning is False:
            effort = "low"  # gpt-oss cannot stop reasoning; the least it does is low
        return {"reasoning_effort": effort} if effort else {}

    def prepare_messages(self, messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        """What llama.cpp's init_gpt_oss does to history, in IR terms: the template renders an
        assistant tool-call turn's `content` as its analysis message, and only its first call
        (`tool_calls[0]`) with the tool name it infers for the next results. So a turn's
        reasoning takes the place of its content, and a turn with several calls becomes one
        turn per call, each followed by its own result. Other messages pass unchanged."""
        out: list[Message] = []
        i = 0
        while i < len(messages):
            m = messages[i]
            calls = [p for p in m.parts if isinstance(p, ToolCallPart)]
            i += 1
            if m.role != "assistant" or not calls:
                out.append(m)
                continue
            reasoning = "".join(p.text for p in m.parts if isinstance(p, ReasoningPart))
            analysis = TextPart(reasoning) if reasoning else TextPart(m.text)
            results: list[Message] = []
            while i < len(messages) and messages[i].role == "tool":
                results.append(messages[i])
                i += 1
            for n, call in enumerate(calls):
                out.append(Message("assistant", ([analysis] if n == 0 and analysis.text else []) + [call]))
                mine = [r for r in results if _result_for(r) == call.id]
                if len(calls) == 1:
                    mine = results
                out += mine
                results = [r for r in results if not any(r is x for x in mine)]
            out += results  # results that match no call: after the last one
        return out

    def calls_rule(self, b: GrammarBuilder, tools: list[ToolSpec], single: bool) -> str:
        return self._root(b, tools, None)

    def answer_grammar(self, response: dict[str, Any], strict: bool) -> str | None:
        return cache.get(["harmony-answer", response, strict], lambda: self._build([], True, response, strict))

    def _build(
        self, tools: list[ToolSpec], single: bool, response: dict[str, Any] | None, response_strict: bool
    ) -> str:
        # A JSON answer format goes in the final channel, not instead of the whole output.
        b = GrammarBuilder()
        answer = None
        if response is not None:
            answer = b.schema(response, "answer", param="response_format", strict=response_strict)
        return b.build(self._root(b, tools, answer))

    def _root(self, b: GrammarBuilder, tools: list[ToolSpec], answer: str | None) -> str:
        """Optional analysis/preamble messages, then the call (or the final answer), as in
        llama.cpp's `zero_or_more(start + any) + start + tool_call`. In lazy mode the
        grammar starts at a trigger, which only the call alternative matches."""
        channel = b.rule("harmony-channel", '"<|channel|>" ("commentary" | "analysis")')
        # ` <|constrain|>json` (or ` json`): a short content type after the recipient, never
        # glued to it, or the name could go on (`get_weather_x`).
        word = "[A-Za-z0-9_-]{1,24}"
        constrain = b.rule("harmony-constrain", f'(" "? "<|constrain|>" {word} | " " {word})?')
        alternatives = []
        for i, tool in enumerate(tools):
            args = arguments_rule(b, tool, i)
            recipient = literal(f" to=functions.{tool.name}")
            in_role = f'{recipient} {channel} {constrain} "<|message|>" {args}'
            in_channel = f'{channel} {recipient} {constrain} "<|message|>" {args}'
            alternatives.append(b.rule(f"{tool.name}-call", f"{in_role} | {in_channel}"))
        end = literal("<|end|>")
        body = b.excluding("<|end|>", "harmony-body")
        before = b.rule(
            "harmony-before",
            f'("<|channel|>analysis<|message|>" | "<|channel|>commentary<|message|>") {body} {end} "<|start|>assistant"',
        )
        if answer is not None:
            alternatives.append(f'"<|channel|>final" {constrain} "<|message|>" {answer}')
        call = b.rule("harmony-call", " | ".join(alternatives))
        return f"{before}{{0,{MAX_MESSAGES_BEFORE_CALL}}} {call}"


def _result_for(message: Message) -> str | None:
    return next((p.call_id for p in message.parts if isinstance(p, ToolResultPart)), None)
