"""Llama 3.1 / 3.2 / 3.3 on Meta's real templates: the reply is the call itself,
`{"name": ..., "parameters": {...}}` (or after `<|python_tag|>`), one call per message, and
tool results go back under the `ipython` header.

Canned outputs are the ones older llama.cpp tests/test-chat.cpp used for these templates
(`test_parse_tool_call(llama_tool_call_style::Llama31, ...)`; the current file has no Llama
call case); grammars run in llama.cpp's grammar engine with the llama-bpe vocabulary.
"""

from __future__ import annotations

import json

import pytest

from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls import Llama3Format, ToolFormat
from runtime.ir import Message, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.family_checks import SPECIAL, detected, parse_however_split, render_prompt
from tests.grammar_check import accepts, real_vocab
from tests.upstream import template

LLAMA3 = (
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
)
OTHERS = (
    "meetkai-functionary-medium-v3.1",  # Llama 3 headers and <|python_tag|>, its own call syntax
    "fireworks-ai-llama-3-firefunction-v2",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "Qwen-Qwen2.5-7B-Instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "google-gemma-2-2b-it",
)

# tests/test-chat.cpp's special_function_tool and python_tool.
TOOLS = [
    SPECIAL,
    ToolSpec(
        "python",
        "an ipython interpreter",
        {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code to execute."}},
            "required": ["code"],
        },
    ),
]
ONE = ("special_function", {"arg1": 1})
CANNED = '{"name": "special_function", "parameters": {"arg1": 1}}'


def parse(fmt: ToolFormat, text: str, *, parallel: bool = True) -> tuple[str, list[tuple[str, object]]]:
    return parse_however_split(fmt, TOOLS, text, parallel=parallel)


# -- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LLAMA3)
def test_llama3_templates_detect_as_llama3(name: str) -> None:
    assert isinstance(detected(name), Llama3Format)


@pytest.mark.parametrize("name", OTHERS)
def test_other_families_are_not_llama3(name: str) -> None:
    assert not isinstance(detected(name), Llama3Format)


# -- the prompt --------------------------------------------------------------------------


@pytest.mark.parametrize("name", LLAMA3)
def test_tools_reach_the_prompt_through_the_template(name: str) -> None:
    prompt = ChatTemplate(template(name)).render([Message("user", [TextPart("Hi")])], tools=TOOLS)
    assert "Environment: ipython" in prompt
    assert '"parameters": dictionary of argument name and its value' in prompt
    assert '"name": "special_function"' in prompt and '"description": "I\'m special"' in prompt
    assert '"name": "python"' in prompt


# -- parsing canned outputs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
        (CANNED, "", [ONE]),
        ('{\n  "name": "special_function", "parameters": {"arg1": 1}}', "", [ONE]),
        ('{\n\t"name": "special_function", "parameters": {"arg1": 1}}', "", [ONE]),
        ("<|python_tag|>" + CANNED, "", [ONE]),
        ("Let me check. <|python_tag|>" + CANNED, "Let me check. ", [ONE]),
        # Llama 3.2 often writes a "type" key first: still a call.
        ('{"type": "function", "name": "special_function", "parameters": {"arg1": 1}}', "", [ONE]),
        # Not one of the tools: the JSON is the answer (llama.cpp's `unknown_function` case).
        (
            '{"name": "unknown_function", "arguments": {"arg1": 1}}',
            '{"name": "unknown_function", "arguments": {"arg1": 1}}',
            [],
        ),
        ('{"answer": 42}', '{"answer": 42}', []),
    ],
)
def test_outputs_parse_however_the_stream_is_split(text: str, content: str, calls: list[object]) -> None:
    assert parse(Llama3Format(), text) == (content, calls)


def test_a_call_cut_short_closes_into_valid_json() -> None:
    text = '{"name": "python", "parameters": {"code": "print(\'hi'
    assert parse(Llama3Format(), text) == ("", [("python", {"code": "print('hi"})])
    assert parse(Llama3Format(), '{"name": "special_function", "parameters": {"ar') == ("", [("special_function", {})])


@pytest.mark.parametrize("text", ["<|python_tag|>", '<|python_tag|>{"name": "spec', '<|python_tag|>{"na'])
def test_markup_with_no_name_yet_is_dropped_not_content(text: str) -> None:
    assert parse(Llama3Format(), "Hi " + text) == ("Hi ", [])


# -- history round trip --------------------------------------------------------------------


def history(calls: int) -> list[Message]:
    parts = [ToolCallPart(f"call_{i}", "special_function", json.dumps({"arg1": i + 1})) for i in range(calls)]
    return [
        Message("system", [TextPart("Be brief.")]),
        Message("user", [TextPart("Call it.")]),
        Message("assistant", [TextPart("Sure."), *parts]),
        *[Message("tool", [ToolResultPart(f"call_{i}", f"result {i}", name="special_function")]) for i in range(calls)],
    ]


def render(name: str, messages: list[Message]) -> str:
    return render_prompt(name, messages, TOOLS, bos_token="<|begin_of_text|>")


@pytest.mark.parametrize("name", LLAMA3)
def test_history_renders_the_call_and_an_ipython_result(name: str) -> None:
    prompt = render(name, history(1))
    turn = "<|start_header_id|>assistant<|end_header_id|>\n\n" + CANNED + "<|eot_id|>"
    assert turn + '<|start_header_id|>ipython<|end_header_id|>\n\n"result 0"<|eot_id|>' in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # What the template writes back is what the parser reads.
    assert parse(Llama3Format(), CANNED) == ("", [ONE])


@pytest.mark.parametrize("name", LLAMA3)
def test_several_earlier_calls_become_one_message_each(name: str) -> None:
    """Meta's templates raise "This model only supports single tool-calls at once!"."""
    prompt = render(name, history(2))
    call = '<|start_header_id|>assistant<|end_header_id|>\n\n{{"name": "special_function", "parameters": {{"arg1": {}}}}}<|eot_id|>'
    result = '<|start_header_id|>ipython<|end_header_id|>\n\n"result {}"<|eot_id|>'
    assert call.format(1) + result.format(0) + call.format(2) + result.format(1) in prompt


def test_splitting_keeps_results_with_their_calls() -> None:
    messages = history(2)
    messages[3], messages[4] = messages[4], messages[3]  # results in the other order
    out = Llama3Format().prepare_messages(messages, TOOLS)
    assert [m.role for m in out] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert out[2].text == "Sure." and out[4].text == ""
    assert [p.call_id for m in out[3::2] for p in m.parts if isinstance(p, ToolResultPart)] == ["call_0", "call_1"]


# -- grammar ----------------------------------------------------------------------------------


def gbnf(choice: ToolChoice, parallel: bool = True) -> str:
    return Llama3Format().grammar(TOOLS, choice, parallel).gbnf


def test_grammar_takes_the_canned_call() -> None:
    vocab, required = real_vocab("llama-bpe"), gbnf(ToolChoice("required"))
    for text in (CANNED, "<|python_tag|>" + CANNED, '{"name": "python", "parameters": {"code": "print(1)"}}'):
        assert accepts(vocab, required, text), text
    named = gbnf(ToolChoice("function", "python"))
    assert accepts(vocab, named, '{"name": "python", "parameters": {"code": "x"}}')
    assert not accepts(vocab, named, CANNED)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "other_function", "parameters": {"arg1": 1}}',
        '{"name": "special_function", "arguments": {"arg1": 1}}',
        '{"name": "special_function", "parameters": {"arg1": "one"}}',
        '{"name": "special_function", "parameters": {"arg1": 1}',
        CANNED + "; " + CANNED,  # one call per message (parallel calls are not this family's)
    ],
)
def test_grammar_rejects_wrong_names_and_markup(text: str) -> None:
    assert not accepts(real_vocab("llama-bpe"), gbnf(ToolChoice("required")), text)


def test_auto_grammar_waits_for_a_leading_brace_or_the_python_tag() -> None:
    triggers = Llama3Format().grammar(TOOLS, ToolChoice(), True).triggers
    assert [(t.text, t.at_start) for t in triggers] == [("{", True), ("<|python_tag|>", False)]
