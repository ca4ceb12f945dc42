"""Command R7B: detection, prompt, parsing, history and grammar on the real template.

Canned outputs are llama.cpp's (tests/test-chat.cpp, "CohereForAI Command-R 7B
(2024-tool_use)"; the parallel and array cases come from its Cohere2 MoE block, whose action
syntax is the same). The parser owns reasoning: it runs on every output, with no `<think>`
splitter in front (`tags=None`).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from runtime.engine.toolcalls.command_r import START_ACTION, CommandR7BFormat, CommandRParser
from runtime.ir import Message, ReasoningPart, TextPart, ToolChoice, ToolSpec
from tests.family_checks import (
    CONTENT,
    GET_TIME,
    GET_WEATHER,
    Outcome,
    check_any_markup,
    detected,
    engine_like,
    markup,
    outcome,
    paris_history,
    render_prompt,
    same_however_split,
)
from tests.grammar_check import accepts, real_vocab

NAME = "CohereForAI-c4ai-command-r7b-12-2024-tool_use"
OTHERS = [
    "Qwen-Qwen2.5-7B-Instruct",
    "meta-llama-Llama-3.1-8B-Instruct",
    "deepseek-ai-DeepSeek-V3.1",
    "Kimi-K2-Instruct",
    "Cohere2MoE",  # `<|START_TEXT|>` answers: llama.cpp's own parser (common/parsers/cohere2moe.cpp)
    "CohereForAI-c4ai-command-r-plus-tool_use",  # "Action: ```json" - another format
]
NAMES = ["special_function", "python", "todo_list"]


def command_r(text: str, names: list[str] | None = NAMES) -> Outcome:
    return same_however_split(lambda chunks: engine_like(CommandRParser, chunks, names=names, tags=None), text)


# -- detection and prompt ---------------------------------------------------------------------


def test_the_template_detects_as_command_r7b() -> None:
    fmt = detected(NAME)
    assert isinstance(fmt, CommandR7BFormat) and fmt.owns_reasoning


@pytest.mark.parametrize("other", OTHERS)
def test_other_templates_are_not_command_r7b(other: str) -> None:
    assert not isinstance(detected(other), CommandR7BFormat)


def render(messages: list[Message], tools: list[ToolSpec], **kwargs: object) -> str:
    return render_prompt(NAME, messages, tools, fmt=CommandR7BFormat(), **kwargs)


def test_the_template_lists_the_tools() -> None:
    prompt = render([Message("user", [TextPart("Time in Paris?")])], [GET_TIME, GET_WEATHER])
    assert "## Available Tools" in prompt
    for tool in (GET_TIME, GET_WEATHER):
        assert f'{{"name": "{tool.name}", "description": "{tool.description}"' in prompt
    # the template closes an empty thinking block itself unless thinking is on
    assert prompt.endswith("<|CHATBOT_TOKEN|><|START_THINKING|><|END_THINKING|>")
    thinking = render([Message("user", [TextPart("Hi")])], [GET_TIME], enable_thinking=True)
    assert thinking.endswith("<|CHATBOT_TOKEN|>")


# -- parsing (llama.cpp's canned outputs) -------------------------------------------------------

ONE = (
    "<|START_ACTION|>[\n"
    '    {"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}}\n'
    "]<|END_ACTION|>"
)
TWO = (
    "<|START_ACTION|>[\n"
    '    {"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}},\n'
    '    {"tool_call_id": "1", "tool_name": "python", "parameters": {"code": "print(\'hey\')"}}\n'
    "]<|END_ACTION|>"
)
CALL = ("special_function", {"arg1": 1})


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("<|START_RESPONSE|>Hello, world!\nWhat's up?<|END_RESPONSE|>", (CONTENT, "", [])),
        (
            "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_RESPONSE|>Hello, world!\nWhat's up?<|END_RESPONSE|>",
            (CONTENT, "I'm\nthinking", []),
        ),
        ("<|START_THINKING|>I'm\nthinking<|END_THINKING|>" + ONE, ("", "I'm\nthinking", [CALL])),
        ("<|START_THINKING|><|END_THINKING|>" + ONE, ("", "", [CALL])),
        (ONE, ("", "", [CALL])),
        (
            "<|START_THINKING|>I'm\nthinking<|END_THINKING|>" + TWO,
            ("", "I'm\nthinking", [CALL, ("python", {"code": "print('hey')"})]),
        ),
        (
            "<|START_ACTION|>[\n"
            '    {"tool_call_id": "0", "tool_name": "todo_list", "parameters": {"todos": ["buy milk", "walk dog"]}}\n'
            "]<|END_ACTION|>",
            ("", "", [("todo_list", {"todos": ["buy milk", "walk dog"]})]),
        ),
        # keys in another order, the parameters before the name
        (
            '<|START_ACTION|>[{"parameters": {"arg1": 1}, "tool_name": "special_function", "tool_call_id": "0"}]<|END_ACTION|>',
            ("", "", [CALL]),
        ),
        ("Plain text, no blocks.", ("Plain text, no blocks.", "", [])),
    ],
)
def test_canned_outputs_parse_the_same_however_split(text: str, want: Outcome) -> None:
    assert command_r(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # llama.cpp's partial case: the name is known, the parameters are not written yet
        ('<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "special_function", ', {}),
        (
            '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1',
            {"arg1": 1},
        ),
        (
            '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}}',
            {"arg1": 1},
        ),
        (
            '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}}]<|END_AC',
            {"arg1": 1},
        ),
    ],
)
def test_a_call_cut_short_comes_back_with_valid_json(text: str, want: dict[str, object]) -> None:
    assert command_r("<|START_THINKING|>I'm\nthinking<|END_THINKING|>" + text) == (
        "",
        "I'm\nthinking",
        [("special_function", want)],
    )


@pytest.mark.parametrize(
    "cut",
    [
        "<|START_ACTION|>",
        "<|START_ACTION|>[\n    ",
        '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_na',
        '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "special_func',
    ],
)
def test_markup_with_no_name_is_dropped_not_content(cut: str) -> None:
    assert command_r("<|START_THINKING|>plan<|END_THINKING|>" + cut) == ("", "plan", [])


def test_a_tag_prefix_at_the_end_is_text_the_model_wrote() -> None:
    # The tags are special tokens, sampled whole: a prefix of one is text, however long.
    assert command_r("<|START_THINKING|>plan<|END_THINKING|>x <|START_ACT") == ("x <|START_ACT", "plan", [])


def test_a_partial_tag_is_held_back_then_released() -> None:
    parser = CommandRParser(names=NAMES)
    assert outcome(parser.feed("<|START_RESPONSE|>Hi <|START_R")) == ("Hi ", "", [])
    assert outcome(parser.feed("ed|> there") + parser.finish()) == ("<|START_Red|> there", "", [])


def test_without_tools_the_parser_still_splits_reasoning_and_drops_calls() -> None:
    parser = CommandR7BFormat().parser([], ToolChoice(), True)
    events = parser.feed("<|START_THINKING|>plan<|END_THINKING|>" + ONE + "<|START_RESPONSE|>Done.<|END_RESPONSE|>")
    assert outcome(events + parser.finish()) == ("Done.", "plan", [])


# -- history ----------------------------------------------------------------------------------

HISTORY = paris_history(ReasoningPart("Both tools."))
WRITTEN = (
    "<|START_THINKING|>Both tools.<|END_THINKING|><|START_ACTION|>[\n"
    '    {"tool_call_id": "0", "tool_name": "get_time", "parameters": {"city": "Paris"}},\n'
    '    {"tool_call_id": "1", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n'
    "]<|END_ACTION|>"
)


def test_history_renders_the_calls_as_an_action_and_parses_back() -> None:
    prompt = render(HISTORY, [GET_TIME, GET_WEATHER])
    assert WRITTEN in prompt
    assert '"tool_call_id": "1",\n        "results": {\n            "0": "sunny"' in prompt
    assert outcome(engine_like(CommandRParser, [WRITTEN], names=["get_time", "get_weather"], tags=None)) == (
        "",
        "Both tools.",
        [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})],
    )


# -- grammar ----------------------------------------------------------------------------------

GOOD_ONE = (
    "<|START_ACTION|>[\n"
    '    {"tool_call_id": "0", "tool_name": "get_time", "parameters": {"city": "Paris"}}\n'
    "]<|END_ACTION|>"
)
GOOD_TWO = WRITTEN.removeprefix("<|START_THINKING|>Both tools.<|END_THINKING|>")
BAD = [
    GOOD_ONE.replace('"get_time"', '"get_tme"'),
    GOOD_ONE.replace('"city"', '"town"'),
    GOOD_ONE.replace('"tool_call_id": "0", ', ""),
    GOOD_ONE.replace("<|END_ACTION|>", ""),
    GOOD_ONE.replace("[", ""),
    "<|START_RESPONSE|>Paris<|END_RESPONSE|>",
]


@pytest.mark.parametrize("mode", ["required", "function"])
def test_forced_grammar_takes_the_canned_calls_and_rejects_wrong_ones(mode: str) -> None:
    vocab = real_vocab("command-r")
    choice = ToolChoice(mode, "get_time" if mode == "function" else None)  # type: ignore[arg-type]
    grammar = CommandR7BFormat().grammar([GET_TIME, GET_WEATHER], choice, parallel=True)
    assert grammar.triggers == ()
    assert accepts(vocab, grammar.gbnf, GOOD_ONE)
    assert accepts(vocab, grammar.gbnf, "<|START_THINKING|>I'll check.<|END_THINKING|>" + GOOD_ONE)
    assert accepts(vocab, grammar.gbnf, GOOD_TWO) == (mode == "required")
    for text in BAD:
        assert not accepts(vocab, grammar.gbnf, text), text


def test_auto_grammar_is_lazy_and_starts_at_the_action() -> None:
    grammar = CommandR7BFormat().grammar([GET_TIME], ToolChoice(), parallel=False)
    assert [t.text for t in grammar.triggers] == [START_ACTION]
    assert accepts(real_vocab("command-r"), grammar.gbnf, GOOD_ONE)


COMMAND_R_PIECES = [
    "<|START_THINKING|>", "<|END_THINKING|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", START_ACTION, "<|END_ACTION|>",
    "[", "]", "{", "}", ",", '"tool_name": ', '"special_function"', '"parameters": ', '{"arg1": 1}',
    '"tool_call_id": "0"', "<|", "Hi ", "\n", '"', ":",
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(markup(COMMAND_R_PIECES))
def test_any_markup_parses_the_same_however_split(case: tuple[str, list[int]]) -> None:
    check_any_markup(lambda chunks: engine_like(CommandRParser, chunks, names=NAMES, tags=None), *case)
