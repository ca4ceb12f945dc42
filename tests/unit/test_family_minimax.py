"""MiniMax M2 `<minimax:tool_call>` / `<invoke>` calls, on llama.cpp's real template and
canned outputs (tests/test-chat.cpp, "MiniMax-M2 tests")."""

from __future__ import annotations

import pytest

from runtime.engine.reasoning import THINK, starts_thinking
from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls.minimax import MiniMaxFormat
from runtime.ir import Message, TextPart, ToolChoice
from tests.family_checks import detected, render_prompt
from tests.grammar_check import accepts, real_vocab
from tests.unit.test_family_qwen3_coder import (
    PYTHON,
    SPECIAL,
    SPECIAL_OPT,
    TOOLS,
    UNRELATED,
    history,
    same_however_split,
)
from tests.upstream import template

CALL = (
    '<minimax:tool_call>\n<invoke name="special_function">\n<parameter name="arg1">1</parameter>\n</invoke>\n'
    "</minimax:tool_call>"
)
TWO = (
    '<minimax:tool_call>\n<invoke name="special_function">\n<parameter name="arg1">1</parameter>\n</invoke>\n'
    '<invoke name="python">\n<parameter name="code">print("a < b")\n</parameter>\n</invoke>\n</minimax:tool_call>'
)
EMPTY = '<minimax:tool_call>\n<invoke name="empty_args">\n</invoke>\n</minimax:tool_call>'


def test_the_template_is_detected() -> None:
    assert isinstance(detected("MiniMax-M2"), MiniMaxFormat)


@pytest.mark.parametrize("name", [*UNRELATED, "Qwen3-Coder", "GLM-4.6"])
def test_other_templates_are_not(name: str) -> None:
    assert not MiniMaxFormat.detect(template(name))  # MiniMax-M1 and M3 write calls otherwise


def test_prompt_lists_the_tools_renders_history_and_opens_thinking() -> None:
    fmt = MiniMaxFormat()
    prompt = render_prompt("MiniMax-M2", history(), [SPECIAL], fmt=fmt)
    assert "special_function" in prompt and "The special_function tool" in prompt
    assert CALL in prompt and "Sunny, 18C" in prompt
    fresh = ChatTemplate(template("MiniMax-M2")).render([Message("user", [TextPart("Hi")])], tools=[SPECIAL])
    assert starts_thinking(fresh, THINK)


CASES = [
    ("Hello, world!\nWhat's up?", "", "Hello, world!\nWhat's up?", []),
    ("I'm\nthinking\n</think>\n\nHello, world!\nWhat's up?", "I'm\nthinking\n", "Hello, world!\nWhat's up?", []),
    ("Let's call a tool:\n</think>\n\n" + EMPTY, "Let's call a tool:\n", "", [("empty_args", {})]),
    ("\n</think>\n\n" + CALL, "", "", [("special_function", {"arg1": 1})]),
    ("</think>" + TWO, "", "", [("special_function", {"arg1": 1}), ("python", {"code": 'print("a < b")\n'})]),
    ("</think>Sure.\n" + CALL + "\nDone.", "", "Sure.\nDone.", [("special_function", {"arg1": 1})]),
]


@pytest.mark.parametrize(("text", "reasoning", "content", "calls"), CASES)
def test_canned_outputs_parse_the_same_however_split(
    text: str, reasoning: str, content: str, calls: list[object]
) -> None:
    got = same_however_split(MiniMaxFormat(), text, TOOLS, tags=THINK, thinking="</think>" in text)
    assert got == (reasoning, content, calls)


def test_a_call_cut_short_comes_back_with_valid_json() -> None:
    cut = TWO[: TWO.index("a < b")]
    assert same_however_split(MiniMaxFormat(), cut, TOOLS) == (
        "",
        "",
        [("special_function", {"arg1": 1}), ("python", {"code": 'print("'})],
    )


@pytest.mark.parametrize(
    "cut", ["<minimax:tool_call>", "<minimax:tool_call>\n<inv", '<minimax:tool_call>\n<invoke name="spec']
)
def test_markup_with_no_name_is_dropped(cut: str) -> None:
    assert same_however_split(MiniMaxFormat(), "Hi " + cut, TOOLS) == ("", "Hi ", [])


def test_markup_that_is_not_a_call_is_content() -> None:
    text = "The tag <minimax:tool_call> opens calls."
    assert same_however_split(MiniMaxFormat(), text, TOOLS) == ("", text, [])


@pytest.mark.parametrize(
    ("choice", "text"), [(ToolChoice("required"), TWO), (ToolChoice("function", "empty_args"), EMPTY)]
)
def test_grammar_accepts_the_canned_calls(choice: ToolChoice, text: str) -> None:
    assert accepts(real_vocab("qwen2"), MiniMaxFormat().grammar(TOOLS, choice, True).gbnf, text)


@pytest.mark.parametrize(
    "text",
    [CALL.replace("special_function", "rm_rf"), CALL.replace(">1<", ">one<"), CALL.replace("</invoke>", ""), TWO],
)
def test_grammar_rejects_wrong_calls(text: str) -> None:
    gbnf = MiniMaxFormat().grammar([SPECIAL, SPECIAL_OPT, PYTHON], ToolChoice("required"), False).gbnf
    assert not accepts(real_vocab("qwen2"), gbnf, text)
