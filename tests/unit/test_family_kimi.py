"""Kimi K2: detection, prompt, parsing, history and grammar on the real templates.

Canned outputs are llama.cpp's (tests/test-chat.cpp, "Kimi-K2-Thinking tests" and "Kimi-K2
old template"). K2 Thinking's `<think>` is split by the engine before the parser
(`engine_like`). There is no Kimi vocabulary among llama.cpp's test files: grammars are checked
on qwen2's, at the text level.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from runtime.engine.reasoning import THINK, tags_for_template
from runtime.engine.toolcalls.kimi import CALL_BEGIN, SECTION_BEGIN, KimiK2Format, KimiParser
from runtime.ir import Message, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
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
from tests.upstream import template

TEMPLATES = ["moonshotai-Kimi-K2", "Kimi-K2-Instruct", "Kimi-K2-Thinking"]
# K2 Instruct and Thinking keep their call ids in a list (`tool_response_queue.ids.append(...)`),
# which runtime/engine/template.py's ImmutableSandboxedEnvironment refuses; llama.cpp's engine allows it.
RENDERED_HISTORY = TEMPLATES  # Instruct and Thinking build lists with `append`/`pop`
OTHERS = [
    "Qwen-Qwen2.5-7B-Instruct",
    "meta-llama-Llama-3.1-8B-Instruct",
    "deepseek-ai-DeepSeek-V3.1",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "Kimi-K3",  # `<|open|>`/`<|close|>` markup: another family
]
NAMES = ["special_function", "special_function_with_opt", "python", "html", "empty_args", "execute_command"]


def kimi(text: str, *, thinking: bool = True, names: list[str] | None = NAMES) -> Outcome:
    """`thinking`: K2 Thinking, whose `<think>` the engine splits; the others have none."""
    if not thinking:
        return same_however_split(lambda chunks: engine_like(KimiParser, chunks, names=names, tags=None), text)
    return same_however_split(lambda chunks: engine_like(KimiParser, chunks, names=names), text)


# -- detection and prompt ---------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_kimi_template_detects_as_kimi(name: str) -> None:
    assert isinstance(detected(name), KimiK2Format)


@pytest.mark.parametrize("other", OTHERS)
def test_other_templates_are_not_kimi(other: str) -> None:
    assert not isinstance(detected(other), KimiK2Format)


def render(name: str, messages: list[Message], tools: list[ToolSpec]) -> str:
    return render_prompt(name, messages, tools, fmt=KimiK2Format())


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_template_declares_the_tools(name: str) -> None:
    prompt = render(name, [Message("user", [TextPart("Time in Paris?")])], [GET_TIME, GET_WEATHER])
    assert "<|im_system|>tool_declare<|im_middle|>" in prompt
    for tool in (GET_TIME, GET_WEATHER):
        assert f'"name": "{tool.name}"' in prompt and tool.description in prompt
    assert prompt.endswith("<|im_assistant|>assistant<|im_middle|>")
    # only K2 Thinking has a thinking block, which the engine splits
    assert tags_for_template(template(name)) == (THINK if name == "Kimi-K2-Thinking" else None)


# -- parsing (llama.cpp's canned outputs) -------------------------------------------------------

ONE = (
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>"
    '{"arg1": 1}<|tool_call_end|><|tool_calls_section_end|>'
)
TWO = (
    "<|tool_calls_section_begin|>"
    '<|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|>'
    '<|tool_call_begin|>functions.python:1<|tool_call_argument_begin|>{"code": "print(\'hey\')"}<|tool_call_end|>'
    "<|tool_calls_section_end|>"
)
CALL = ("special_function", {"arg1": 1})
PYTHON = ("python", {"code": "print('hey')"})


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (CONTENT, (CONTENT, "", [])),
        (ONE, ("", "", [CALL])),
        ("<think>I'm thinking about this</think>" + ONE, ("", "I'm thinking about this", [CALL])),
        (CONTENT + ONE, (CONTENT, "", [CALL])),
        (
            "<|tool_calls_section_begin|>"
            '<|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|>'
            "<|tool_call_begin|>functions.special_function_with_opt:1<|tool_call_argument_begin|>"
            '{"arg1": 1, "arg2": 2}<|tool_call_end|><|tool_calls_section_end|>',
            ("", "", [CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
        ),
        ("<think>I need to call two functions</think>" + TWO, ("", "I need to call two functions", [CALL, PYTHON])),
        (
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.python:0<|tool_call_argument_begin|>"
            '{"code": "def hello():\\n    print(\\"Hello, world!\\")\\n\\nhello()"}<|tool_call_end|>'
            "<|tool_calls_section_end|>",
            ("", "", [("python", {"code": 'def hello():\n    print("Hello, world!")\n\nhello()'})]),
        ),
        (
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.empty_args:0<|tool_call_argument_begin|>"
            "{}<|tool_call_end|><|tool_calls_section_end|>",
            ("", "", [("empty_args", {})]),
        ),
        (
            TWO.replace("<|tool_calls_section_end|>", "")
            + '<|tool_call_begin|>functions.html:2<|tool_call_argument_begin|>{"markup": "<p>test</p>"}'
            + "<|tool_call_end|><|tool_calls_section_end|>",
            ("", "", [CALL, PYTHON, ("html", {"markup": "<p>test</p>"})]),
        ),
        # calls inside the thinking block, with and without the section and end markers
        ("<think>I need to call two functions" + TWO, ("", "I need to call two functions", [CALL, PYTHON])),
        (
            "<think>I need to call two functions"
            '<|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>{"arg1": 1}'
            '<|tool_call_begin|>functions.python:1<|tool_call_argument_begin|>{"code": "print(\'hey\')"}',
            ("", "I need to call two functions", [CALL, PYTHON]),
        ),
        (
            '<|tool_call_begin|>functions.execute_command:0<|tool_call_argument_begin|>{"command": "ls -lah"'
            ', "cwd": "/home/user/development/exllamav3", "timeout": 10}',
            (
                "",
                "",
                [("execute_command", {"command": "ls -lah", "cwd": "/home/user/development/exllamav3", "timeout": 10})],
            ),
        ),
    ],
)
def test_canned_outputs_parse_the_same_however_split(text: str, want: Outcome) -> None:
    assert kimi(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (ONE.removesuffix("1}<|tool_call_end|><|tool_calls_section_end|>"), {}),  # {"arg1": (llama.cpp's partial)
        (ONE.removesuffix("}<|tool_call_end|><|tool_calls_section_end|>"), {"arg1": 1}),
        (ONE.removesuffix("<|tool_call_end|><|tool_calls_section_end|>"), {"arg1": 1}),
        (ONE.removesuffix('{"arg1": 1}<|tool_call_end|><|tool_calls_section_end|>'), {}),
        (
            ONE.removesuffix('{"arg1": 1}<|tool_call_end|><|tool_calls_section_end|>') + '{"arg1": 1}<|tool_ca',
            {"arg1": 1},
        ),
    ],
)
def test_a_call_cut_short_comes_back_with_valid_json(text: str, want: dict[str, object]) -> None:
    assert kimi("Sure. " + text) == ("Sure. ", "", [("special_function", want)])


@pytest.mark.parametrize(
    "cut",
    [
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_fun",
        "<|tool_call_begin|>functions.special_function:0",
        "<|tool_call_begin|>functions.special_function:0<|tool_call_argu",
    ],
)
def test_markup_with_no_name_is_dropped_not_content(cut: str) -> None:
    assert kimi("Sure. " + cut) == ("Sure. ", "", [])


@pytest.mark.parametrize("tail", ["<", "<|", "<|tool_calls_sect"])
def test_a_marker_prefix_at_the_end_is_text_the_model_wrote(tail: str) -> None:
    # The markers are special tokens, sampled whole: a prefix of one is text, however long.
    assert kimi("Sure. " + tail) == ("Sure. " + tail, "", [])


def test_the_old_templates_have_no_thinking_block_and_parse_the_same() -> None:
    assert kimi(CONTENT + TWO, thinking=False) == (CONTENT, "", [CALL, PYTHON])


def test_calls_to_unknown_tools_are_dropped() -> None:
    assert kimi(TWO, names=["python"]) == ("", "", [PYTHON])
    assert outcome(engine_like(KimiParser, [TWO], names=[]))[2] == []


# -- history ----------------------------------------------------------------------------------

HISTORY = paris_history(TextPart("Checking."))
WRITTEN = (
    "Checking.<|tool_calls_section_begin|>"
    '<|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
    '<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
    "<|tool_calls_section_end|>"
)


@pytest.mark.parametrize("name", RENDERED_HISTORY)
def test_history_renders_the_calls_with_kimi_ids_and_parses_back(name: str) -> None:
    prompt = render(name, HISTORY, [GET_TIME, GET_WEATHER])
    assert WRITTEN in prompt
    # every template names the results by the Kimi id (the old one prints `tool_call_id` as given)
    assert "## Return of functions.get_time:0" in prompt and "10:00" in prompt
    assert "## Return of functions.get_weather:1" in prompt and "sunny" in prompt
    assert outcome(engine_like(KimiParser, [WRITTEN], names=["get_time", "get_weather"])) == (
        "Checking.",
        "",
        [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})],
    )


def test_kimi_ids_number_the_calls_of_each_message() -> None:
    out = KimiK2Format().prepare_messages(HISTORY, [GET_TIME, GET_WEATHER])
    calls = [p.id for m in out for p in m.parts if isinstance(p, ToolCallPart)]
    results = [p.call_id for m in out for p in m.parts if isinstance(p, ToolResultPart)]
    assert calls == results == ["functions.get_time:0", "functions.get_weather:1"]


# -- grammar ----------------------------------------------------------------------------------

GOOD_ONE = (
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>"
    '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
)
GOOD_TWO = (
    "<|tool_calls_section_begin|>"
    '<|tool_call_begin|>functions.get_time:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
    '<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>{"city": "Rome"}<|tool_call_end|>'
    "<|tool_calls_section_end|>"
)
BAD = [
    GOOD_ONE.replace("get_time", "get_tme"),
    GOOD_ONE.replace("functions.", ""),
    GOOD_ONE.replace(":0", ""),
    GOOD_ONE.replace("<|tool_call_argument_begin|>", ""),
    GOOD_ONE.replace("<|tool_call_end|>", ""),
    GOOD_ONE.replace('"city"', '"town"'),
]


@pytest.mark.parametrize("mode", ["required", "function"])
def test_forced_grammar_takes_the_canned_calls_and_rejects_wrong_ones(mode: str) -> None:
    vocab = real_vocab("qwen2")
    choice = ToolChoice(mode, "get_time" if mode == "function" else None)  # type: ignore[arg-type]
    grammar = KimiK2Format().grammar([GET_TIME, GET_WEATHER], choice, parallel=True)
    assert grammar.triggers == ()
    assert accepts(vocab, grammar.gbnf, GOOD_ONE)
    assert accepts(vocab, grammar.gbnf, GOOD_TWO) == (mode == "required")
    for text in BAD:
        assert not accepts(vocab, grammar.gbnf, text), text


def test_auto_grammar_is_lazy_and_may_start_at_a_bare_call() -> None:
    grammar = KimiK2Format().grammar([GET_TIME], ToolChoice(), parallel=True)
    assert {t.text for t in grammar.triggers} == {SECTION_BEGIN, CALL_BEGIN}
    vocab = real_vocab("qwen2")
    bare = GOOD_ONE.removeprefix(SECTION_BEGIN)
    assert accepts(vocab, grammar.gbnf, GOOD_ONE) and accepts(vocab, grammar.gbnf, bare)


KIMI_PIECES = [
    SECTION_BEGIN, "<|tool_calls_section_end|>", CALL_BEGIN, "<|tool_call_argument_begin|>", "<|tool_call_end|>",
    "functions.special_function:0", "functions.", "python", ":1", '{"arg1": 1}', "{", "}", '"', "<|", "Hi ", "\n",
    "<think>", "</think>",
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(markup(KIMI_PIECES))
def test_any_markup_parses_the_same_however_split(case: tuple[str, list[int]]) -> None:
    check_any_markup(lambda chunks: engine_like(KimiParser, chunks, names=NAMES), *case)
