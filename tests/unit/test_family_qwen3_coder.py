"""Qwen3-Coder / Qwen3.5 XML-parameter calls, on llama.cpp's real templates and canned
outputs (tests/test-chat.cpp). The helpers here are shared by the GLM and MiniMax tests."""

from __future__ import annotations

import pytest

from runtime.engine.reasoning import THINK, ThinkingTags, starts_thinking
from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls.qwen3_coder import Qwen3CoderFormat
from runtime.engine.toolcalls.xmlargs import XmlArgsFormat, convert, value_types
from runtime.events import Event
from runtime.ir import Message, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.family_checks import (
    Outcome,
    check_call_events,
    detected,
    engine_events,
    new_ids,
    outcome,
    render_prompt,
)
from tests.family_checks import same_however_split as check_splits
from tests.grammar_check import accepts, real_vocab
from tests.upstream import template

FAMILY = ["Qwen3-Coder", "Qwen3.5-4B", "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "StepFun3.5-Flash"]
# Templates of other families (none may be read as an XML-parameter family they are not).
UNRELATED = [
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "meta-llama-Llama-3.1-8B-Instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "ByteDance-Seed-OSS",
    "meetkai-functionary-medium-v3.1",
    "MiniMax-M1",
    "MiniMax-M3",
    "NVIDIA-Nemotron-Nano-v2",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
]


def tool(name: str, properties: dict[str, object], required: list[str] | None = None) -> ToolSpec:
    return ToolSpec(name, f"The {name} tool", {"type": "object", "properties": properties, "required": required or []})


SPECIAL = tool("special_function", {"arg1": {"type": "integer"}}, ["arg1"])
SPECIAL_OPT = tool("special_function_with_opt", {"arg1": {"type": "integer"}, "arg2": {"type": "integer"}}, ["arg1"])
PYTHON = tool("python", {"code": {"type": "string"}}, ["code"])
EDIT = tool(
    "edit",
    {"filename": {"type": "string"}, "oldString": {"type": "string"}, "newString": {"type": "string"}},
    ["filename", "oldString", "newString"],
)
TODO = tool("todo_list", {"todos": {"type": "array", "items": {"type": "object"}}}, ["todos"])
UNION = tool("set_union", {"value": {"type": ["string", "object"]}, "amount": {"type": ["string", "number"]}})
NULLABLE = tool("set_nullable_str", {"name": {"type": ["string", "null"]}})
TERMINAL = tool("run_in_terminal", {"command": {"type": "string"}}, ["command"])
EMPTY = tool("empty_args", {})
TOOLS = [SPECIAL, SPECIAL_OPT, PYTHON, EDIT, TODO, UNION, NULLABLE, TERMINAL, EMPTY]


# -- helpers shared with test_family_glm / test_family_minimax ------------------------------


def xml_events(
    fmt: XmlArgsFormat,
    chunks: list[str],
    tools: list[ToolSpec],
    *,
    tags: ThinkingTags | None = None,
    thinking: bool = False,
    choice: ToolChoice | None = None,
) -> list[Event]:
    """What the engine emits for `fmt`'s parser (`engine_events`), with deterministic ids."""
    parser = fmt.parser(tools, choice or ToolChoice(), True)
    parser.new_id = new_ids()
    return engine_events(parser, chunks, tags=tags, inside=thinking)


def result(events: list[Event]) -> Outcome:
    """(reasoning, content, [(name, arguments as JSON)]), call events checked."""
    check_call_events(events)
    content, reasoning, calls = outcome(events)
    return reasoning, content, calls


def same_however_split(fmt: XmlArgsFormat, text: str, tools: list[ToolSpec], **kwargs: object) -> Outcome:
    """(reasoning, content, calls), checked to be the same for every split of the stream."""
    content, reasoning, calls = check_splits(lambda chunks: xml_events(fmt, chunks, tools, **kwargs), text)  # type: ignore[arg-type]
    return reasoning, content, calls


def history() -> list[Message]:
    return [
        Message("user", [TextPart("Weather in Paris?")]),
        Message("assistant", [ToolCallPart("call_1", "special_function", '{"arg1": 1}')]),
        Message("tool", [ToolResultPart("call_1", "Sunny, 18C", name="special_function")]),
    ]


# -- detection and prompt ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY)
def test_family_templates_are_detected(name: str) -> None:
    assert isinstance(detected(name), Qwen3CoderFormat)


@pytest.mark.parametrize("name", [*UNRELATED, "GLM-4.6", "MiniMax-M2"])
def test_other_templates_are_not(name: str) -> None:
    assert not Qwen3CoderFormat.detect(template(name))


@pytest.mark.parametrize("name", FAMILY)
def test_prompt_lists_the_tools_and_renders_history(name: str) -> None:
    fmt = Qwen3CoderFormat()
    prompt = render_prompt(name, history(), [SPECIAL], fmt=fmt)
    assert "special_function" in prompt and "The special_function tool" in prompt
    assert "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>" in prompt
    assert "Sunny, 18C" in prompt


def test_history_booleans_reach_the_template_as_json() -> None:
    msgs = [
        Message("user", [TextPart("Hi")]),
        Message("assistant", [ToolCallPart("c1", "toggle", '{"on": true, "x": null, "n": 2}')]),
        Message("tool", [ToolResultPart("c1", "ok")]),
    ]
    fmt = Qwen3CoderFormat()
    prompt = ChatTemplate(template("Qwen3-Coder")).render(fmt.prepare_messages(msgs, []), tools=[SPECIAL])
    assert "<parameter=on>\ntrue\n</parameter>" in prompt and "<parameter=x>\nnull\n</parameter>" in prompt
    assert "<parameter=n>\n2\n</parameter>" in prompt


@pytest.mark.parametrize(("enabled", "ending"), [(True, "<think>\n"), (False, "<think>\n\n</think>\n\n")])
def test_enable_thinking_switches_the_qwen35_prompt(enabled: bool, ending: str) -> None:
    tmpl = ChatTemplate(template("Qwen3.5-4B"))
    assert tmpl.supports_thinking_switch
    prompt = tmpl.render([Message("user", [TextPart("Hi")])], tools=[SPECIAL], enable_thinking=enabled)
    assert prompt.endswith(ending)
    assert starts_thinking(prompt, THINK) is enabled


# -- parsing the canned outputs ---------------------------------------------------------------

CALL = "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>"
TWO_CALLS = (
    CALL + "\n<tool_call>\n<function=special_function_with_opt>\n<parameter=arg1>\n1\n</parameter>\n"
    "<parameter=arg2>\n2\n</parameter>\n</function>\n</tool_call>"
)
CASES = [
    ("Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
    (CALL, "", [("special_function", {"arg1": 1})]),
    (TWO_CALLS, "", [("special_function", {"arg1": 1}), ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    # Qwen3-Coder may leave out the first `<tool_call>`.
    (CALL.removeprefix("<tool_call>\n"), "", [("special_function", {"arg1": 1})]),
    (
        "Let me call it.\n" + CALL.removeprefix("<tool_call>\n"),
        "Let me call it.\n",
        [("special_function", {"arg1": 1})],
    ),
    (
        '<tool_call>\n<function=python>\n<parameter=code>\ndef hello():\n    print("Hello, world!")\n\nhello()\n'
        "</parameter>\n</function>\n</tool_call>",
        "",
        [("python", {"code": 'def hello():\n    print("Hello, world!")\n\nhello()'})],
    ),
    # A value ending in a newline keeps it: only the one before `</parameter>` is layout.
    (
        "<tool_call>\n<function=edit>\n<parameter=filename>\nfoo.c\n</parameter>\n<parameter=oldString>\n"
        "#iclunde\n</parameter>\n<parameter=newString>\n#include\n\n</parameter>\n</function>\n</tool_call>",
        "",
        [("edit", {"filename": "foo.c", "oldString": "#iclunde", "newString": "#include\n"})],
    ),
    (
        "<tool_call>\n<function=python>\n<parameter=code>\n格 <html>\n</parameter>\n</function>\n</tool_call>",
        "",
        [("python", {"code": "格 <html>"})],
    ),
    (
        '<tool_call>\n<function=todo_list>\n<parameter=todos>\n[{"item": "Check stuff", "selected": false}]\n'
        "</parameter>\n</function>\n</tool_call>",
        "",
        [("todo_list", {"todos": [{"item": "Check stuff", "selected": False}]})],
    ),
    (
        '<tool_call>\n<function=set_union>\n<parameter=value>\n{"a": 1}\n</parameter>\n<parameter=amount>\n'
        "2 dollars\n</parameter>\n</function>\n</tool_call>",
        "",
        [("set_union", {"value": {"a": 1}, "amount": "2 dollars"})],
    ),
    (
        "<tool_call>\n<function=set_union>\n<parameter=value>\n{not valid json\n</parameter>\n<parameter=amount>\n"
        "42\n</parameter>\n</function>\n</tool_call>",
        "",
        [("set_union", {"value": "{not valid json", "amount": 42})],
    ),
    (
        "<tool_call>\n<function=set_nullable_str>\n<parameter=name>\nnull\n</parameter>\n</function>\n</tool_call>",
        "",
        [("set_nullable_str", {"name": None})],
    ),
    ("<tool_call>\n<function=empty_args>\n</function>\n</tool_call>", "", [("empty_args", {})]),
    ("Sure.\n" + CALL + "\nDone.", "Sure.\nDone.", [("special_function", {"arg1": 1})]),
]


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_canned_outputs_parse_the_same_however_split(text: str, content: str, calls: list[object]) -> None:
    assert same_however_split(Qwen3CoderFormat(), text, TOOLS) == ("", content, calls)


TERMINAL_CALL = (
    "<tool_call>\n<function=run_in_terminal>\n<parameter=command>\npwd\n</parameter>\n</function>\n</tool_call>"
)


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        (
            "I should inspect the directory.\n</think>\n\nLet me inspect it now.\n" + TERMINAL_CALL,
            "I should inspect the directory.\n",
            "Let me inspect it now.\n",
        ),
        # A call ends the thinking block even without `</think>` (still a call, not reasoning).
        ("Need to inspect the current directory.\n" + TERMINAL_CALL, "Need to inspect the current directory.\n", ""),
        (TERMINAL_CALL, "", ""),
    ],
)
def test_qwen35_reasoning_then_call(text: str, reasoning: str, content: str) -> None:
    got = same_however_split(Qwen3CoderFormat(), text, [TERMINAL], tags=THINK, thinking=True)
    assert got == (reasoning, content, [("run_in_terminal", {"command": "pwd"})])


def test_a_call_cut_short_comes_back_with_valid_json() -> None:
    cut = "<tool_call>\n<function=edit>\n<parameter=filename>\nfoo.c\n</parameter>\n<parameter=oldString>\n#icl"
    assert same_however_split(Qwen3CoderFormat(), cut, TOOLS) == (
        "",
        "",
        [("edit", {"filename": "foo.c", "oldString": "#icl"})],
    )
    cut = "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1"
    assert same_however_split(Qwen3CoderFormat(), cut, TOOLS) == ("", "", [("special_function", {})])


@pytest.mark.parametrize("cut", ["<tool_call>", "<tool_call>\n<func", "<tool_call>\n<function=special_func"])
def test_markup_with_no_name_is_dropped(cut: str) -> None:
    assert same_however_split(Qwen3CoderFormat(), "Hi " + cut, TOOLS) == ("", "Hi ", [])


@pytest.mark.parametrize(
    "text", ["I think <tool_call>not a call</tool_call> is it.", "Use <function=other> here", "a < b <tool_call>\n{}"]
)
def test_markup_that_is_not_a_call_is_content(text: str) -> None:
    assert same_however_split(Qwen3CoderFormat(), text, TOOLS) == ("", text, [])


def test_calls_to_other_tools_and_beyond_one_are_dropped() -> None:
    events = xml_events(Qwen3CoderFormat(), [TWO_CALLS], TOOLS, choice=ToolChoice("function", "special_function"))
    assert result(events)[2] == [("special_function", {"arg1": 1})]


def test_string_values_stream_as_they_are_written() -> None:
    text = (
        "<tool_call>\n<function=python>\n<parameter=code>\nprint(1)\nprint(2)\n</parameter>\n</function>\n</tool_call>"
    )
    events = xml_events(Qwen3CoderFormat(), list(text), [PYTHON])
    deltas = [e for e in events if type(e).__name__ == "ToolCallDelta"]
    assert len(deltas) > 10  # not all at the end


def test_value_conversion_follows_the_schema() -> None:
    assert convert("42", value_types({"type": "string"})) == "42"
    assert convert("42", value_types({"type": "integer"})) == 42
    assert convert("42", value_types({"type": ["string", "null"]})) == "42"
    assert convert("NaN", value_types({"type": "number"})) == "NaN"
    assert convert("1.5", value_types({"anyOf": [{"type": "number"}, {"type": "string"}]})) == 1.5
    assert convert("x", value_types({"enum": ["x", "y"]})) == "x"
    assert convert("true", None) is True


# -- grammar ----------------------------------------------------------------------------------

FORCED = [
    ("qwen2", ToolChoice("required"), TWO_CALLS),
    ("qwen2", ToolChoice("function", "special_function"), CALL),
    ("qwen35", ToolChoice("required"), CASES[6][0]),
    ("qwen35", ToolChoice("function", "python"), CASES[5][0]),
    ("qwen2", ToolChoice("required"), CASES[8][0]),
    ("qwen2", ToolChoice("required"), CASES[9][0]),
]


@pytest.mark.parametrize(("vocab", "choice", "text"), FORCED)
def test_grammar_accepts_the_canned_calls(vocab: str, choice: ToolChoice, text: str) -> None:
    gbnf = Qwen3CoderFormat().grammar(TOOLS, choice, True).gbnf
    assert accepts(real_vocab(vocab), gbnf, text)


@pytest.mark.parametrize(
    "text",
    [
        CALL.replace("special_function", "rm_rf"),
        CALL.replace("\n1\n", "\none\n"),  # an integer parameter
        CALL.replace("</parameter>", "</param>"),
        CALL.replace("<parameter=arg1>\n1\n</parameter>\n", ""),  # a required parameter missing
    ],
)
def test_grammar_rejects_wrong_calls(text: str) -> None:
    gbnf = Qwen3CoderFormat().grammar(TOOLS, ToolChoice("required"), True).gbnf
    assert not accepts(real_vocab("qwen35"), gbnf, text)


def test_single_call_grammar_and_lazy_triggers() -> None:
    fmt = Qwen3CoderFormat()
    single = fmt.grammar(TOOLS, ToolChoice("required"), False).gbnf
    assert accepts(real_vocab("qwen2"), single, CALL) and not accepts(real_vocab("qwen2"), single, TWO_CALLS)
    lazy = fmt.grammar([SPECIAL], ToolChoice("auto"), True)
    assert [t.text for t in lazy.triggers] == ["<tool_call>", "<function=special_function>"]
    assert accepts(real_vocab("qwen2"), lazy.gbnf, CALL.removeprefix("<tool_call>\n"))
