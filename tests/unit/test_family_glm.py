"""GLM 4.5-4.7 `<arg_key>`/`<arg_value>` calls, on llama.cpp's real templates and canned
outputs (tests/test-chat.cpp, the GLM-4.6 and GLM-4.7-Flash tests)."""

from __future__ import annotations

import pytest

from runtime.engine.reasoning import THINK, starts_thinking
from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls.glm import GlmFormat
from runtime.ir import Message, TextPart, ToolChoice
from tests.family_checks import detected, render_prompt
from tests.grammar_check import accepts, real_vocab
from tests.unit.test_family_qwen3_coder import (
    SPECIAL,
    SPECIAL_OPT,
    TOOLS,
    UNRELATED,
    history,
    same_however_split,
    tool,
)
from tests.upstream import template

# GLM's own templates, and others written in the same call syntax (llama.cpp reads Ling 3
# with a parser of its own for its `<role>` sections; its calls are the same).
FAMILY = ["GLM-4.6", "GLM-4.7-Flash", "Spark2.5", "poolside-Laguna-XS.2", "inclusionai-ling-3.0-flash"]
MAGIC = tool("magic_int", {"ref": {"type": "integer"}, "name": {"type": "string"}}, ["ref", "name"])
CONFIG = tool("set_config", {"config": {"type": "object"}}, ["config"])
NESTED = tool("nested_args", {"tags": {"type": "array", "items": {"type": "string"}}}, ["tags"])
DIFF = tool("read_file_diff_md", {"review_id": {"type": "string"}, "file_id": {"type": "string"}})
ALL = [*TOOLS, MAGIC, CONFIG, NESTED, DIFF]


@pytest.mark.parametrize("name", FAMILY)
def test_family_templates_are_detected(name: str) -> None:
    assert isinstance(detected(name), GlmFormat)


@pytest.mark.parametrize("name", [*UNRELATED, "Qwen3-Coder", "Qwen3.5-4B", "MiniMax-M2", "tencent-Hy3"])
def test_other_templates_are_not(name: str) -> None:
    assert not GlmFormat.detect(template(name))


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("GLM-4.6", "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"),
        ("GLM-4.7-Flash", "<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>"),
    ],
)
def test_prompt_lists_the_tools_and_renders_history(name: str, call: str) -> None:
    fmt = GlmFormat()
    prompt = render_prompt(name, history(), [SPECIAL], fmt=fmt)
    assert "special_function" in prompt and "The special_function tool" in prompt
    assert call in prompt and "Sunny, 18C" in prompt


@pytest.mark.parametrize(("enabled", "opens"), [(True, True), (False, False)])
def test_glm47_prompt_opens_the_thinking_block(enabled: bool, opens: bool) -> None:
    tmpl = ChatTemplate(template("GLM-4.7-Flash"))
    prompt = tmpl.render([Message("user", [TextPart("Hi")])], tools=[SPECIAL], enable_thinking=enabled)
    assert starts_thinking(prompt, THINK) is opens


CALL_46 = "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"
CALL_47 = "<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>"
TWO = (
    CALL_47 + "<tool_call>special_function_with_opt<arg_key>arg1</arg_key><arg_value>1</arg_value>"
    "<arg_key>arg2</arg_key><arg_value>2</arg_value></tool_call>"
)
MANY = (
    "Preparing updates.<tool_call>magic_int<arg_key>ref</arg_key><arg_value>42</arg_value>"
    "<arg_key>name</arg_key><arg_value>上海</arg_value></tool_call>"
    '<tool_call>set_config<arg_key>config</arg_key><arg_value>{"source": "spark", "options": {"strict": true}}'
    "</arg_value></tool_call>"
    '<tool_call>nested_args<arg_key>tags</arg_key><arg_value>["alpha", "测试"]</arg_value></tool_call>'
    "<tool_call>empty_args</tool_call>"
)
CASES = [
    ("Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (CALL_46, "", [("special_function", {"arg1": 1})]),
    (CALL_47, "", [("special_function", {"arg1": 1})]),
    (TWO, "", [("special_function", {"arg1": 1}), ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    (
        MANY,
        "Preparing updates.",
        [
            ("magic_int", {"ref": 42, "name": "上海"}),
            ("set_config", {"config": {"source": "spark", "options": {"strict": True}}}),
            ("nested_args", {"tags": ["alpha", "测试"]}),
            ("empty_args", {}),
        ],
    ),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_canned_outputs_parse_the_same_however_split(text: str, content: str, calls: list[object]) -> None:
    assert same_however_split(GlmFormat(), text, ALL) == ("", content, calls)


def test_reasoning_in_the_opened_thinking_block_then_a_call_with_no_arguments() -> None:
    text = "Let me read the diff content.</think><tool_call>read_file_diff_md</tool_call>"
    got = same_however_split(GlmFormat(), text, ALL, tags=THINK, thinking=True)
    assert got == ("Let me read the diff content.", "", [("read_file_diff_md", {})])
    text = "I'm\nthinking</think>" + CALL_47
    got = same_however_split(GlmFormat(), text, ALL, tags=THINK, thinking=True)
    assert got == ("I'm\nthinking", "", [("special_function", {"arg1": 1})])


def test_a_call_cut_short_comes_back_with_valid_json() -> None:
    cut = "<tool_call>magic_int<arg_key>ref</arg_key><arg_value>42</arg_value><arg_key>name</arg_key><arg_value>上"
    assert same_however_split(GlmFormat(), cut, ALL) == ("", "", [("magic_int", {"ref": 42, "name": "上"})])


@pytest.mark.parametrize("cut", ["<tool_call>", "<tool_call>\n", "<tool_call>special_func"])
def test_markup_with_no_name_is_dropped(cut: str) -> None:
    assert same_however_split(GlmFormat(), "Hi " + cut, ALL) == ("", "Hi ", [])


@pytest.mark.parametrize(
    "text", ["I think <tool_call>not a call</tool_call> ok", '<tool_call>{"name": "x"}</tool_call>']
)
def test_markup_that_is_not_a_call_is_content(text: str) -> None:
    assert same_however_split(GlmFormat(), text, ALL) == ("", text, [])


@pytest.mark.parametrize(
    ("choice", "text"),
    [
        (ToolChoice("required"), TWO),
        (ToolChoice("required"), CALL_46),
        (ToolChoice("function", "magic_int"), MANY[MANY.index("<tool_call>") : MANY.index("</tool_call>") + 12]),
    ],
)
def test_grammar_accepts_the_canned_calls(choice: ToolChoice, text: str) -> None:
    assert accepts(real_vocab("qwen2"), GlmFormat().grammar(ALL, choice, True).gbnf, text)


@pytest.mark.parametrize(
    "text",
    [
        CALL_47.replace("special_function", "rm_rf"),
        CALL_47.replace(">1<", ">one<"),
        CALL_47.replace("</arg_value>", ""),
        TWO,  # two calls where one is allowed
    ],
)
def test_grammar_rejects_wrong_calls(text: str) -> None:
    gbnf = GlmFormat().grammar([SPECIAL, SPECIAL_OPT], ToolChoice("required"), False).gbnf
    assert not accepts(real_vocab("qwen2"), gbnf, text)
