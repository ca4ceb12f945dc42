"""The Hermes / Qwen family on the real templates: `<tool_call>\\n{"name": ..., "arguments":
{...}}\\n</tool_call>` per call (Hermes 2 Pro and 3, Qwen 2.5, Qwen3, QwQ).

Canned outputs are llama.cpp's (tests/test-chat.cpp); templates are llama.cpp's
models/templates (tests/upstream.py); grammars run in llama.cpp's grammar engine with the
qwen2 vocabulary.
"""

from __future__ import annotations

import json
import re

import pytest

from runtime.engine.reasoning import THINK, starts_thinking, tags_for_template
from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls import HermesFormat, ToolFormat
from runtime.events import ReasoningDelta, ToolCallEnd
from runtime.ir import Message, ReasoningPart, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.family_checks import (
    SPECIAL,
    SPECIAL_OPT,
    check_call_events,
    detected,
    engine_events,
    outcome,
    parse_however_split,
    render_prompt,
    splits,
)
from tests.grammar_check import accepts, real_vocab
from tests.upstream import template

HERMES = (
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "Qwen-QwQ-32B",
)
OTHERS = (
    "meta-llama-Llama-3.1-8B-Instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "Mistral-Small-3.2-24B-Instruct-2506",
    "openai-gpt-oss-120b",
    "google-gemma-2-2b-it",
    "microsoft-Phi-3.5-mini-instruct",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
)

# tests/test-chat.cpp's special_function_tool and special_function_tool_with_optional_param,
# and a tool with no properties at all (templates index `parameters.properties`).
TOOLS = [SPECIAL, SPECIAL_OPT, ToolSpec("ping", "", {"type": "object"})]
ONE = ("special_function", {"arg1": 1})
TWO = ("special_function_with_opt", {"arg1": 1, "arg2": 2})
CALL = '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>'
CALL_OPT = '<tool_call>\n{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2": 2}}\n</tool_call>'


def parse(fmt: ToolFormat, text: str, *, parallel: bool = True) -> tuple[str, list[tuple[str, object]]]:
    return parse_however_split(fmt, TOOLS, text, parallel=parallel)


# -- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", HERMES)
def test_hermes_and_qwen_templates_detect_as_hermes(name: str) -> None:
    assert isinstance(detected(name), HermesFormat)


@pytest.mark.parametrize("name", OTHERS)
def test_other_families_are_not_hermes(name: str) -> None:
    assert not isinstance(detected(name), HermesFormat)


# -- the prompt --------------------------------------------------------------------------


@pytest.mark.parametrize("name", HERMES)
def test_tools_reach_the_prompt_through_the_template(name: str) -> None:
    prompt = ChatTemplate(template(name)).render([Message("user", [TextPart("Hi")])], tools=TOOLS)
    tools = prompt[prompt.rindex("<tools>") : prompt.rindex("</tools>")]
    for tool in TOOLS:
        assert f'"name": "{tool.name}"' in tools
    assert "I'm special but have optional stuff" in tools
    assert "<tool_call>" in prompt  # the template shows the call syntax


# -- parsing canned outputs (tests/test-chat.cpp) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
        (CALL, "", [ONE]),  # Hermes 3, Qwen 2.5
        ('<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>', "", [ONE]),  # Hermes 2 Pro
        (
            'Hello, world!\nWhat\'s up?<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>',
            "Hello, world!\nWhat's up?",
            [ONE],
        ),
        ("Hello, world!\nWhat's up?\n" + CALL, "Hello, world!\nWhat's up?\n", [ONE]),
        (CALL + "\n" + CALL_OPT, "", [ONE, TWO]),  # parallel calls (the Reka-Edge case)
    ],
)
def test_outputs_parse_however_the_stream_is_split(text: str, content: str, calls: list[object]) -> None:
    assert parse(HermesFormat(), text) == (content, calls)


def test_a_call_cut_short_closes_into_valid_json() -> None:
    # message_assist_call_cutoff_args: `{"arg` is all the arguments there are.
    text = '<tool_call>\n{"name": "special_function", "arguments": {"arg'
    assert parse(HermesFormat(), text) == ("", [("special_function", {})])
    text = '<tool_call>\n{"name": "special_function_with_opt", "arguments": {"arg1": 1, "arg2'
    assert parse(HermesFormat(), text) == ("", [("special_function_with_opt", {"arg1": 1})])


@pytest.mark.parametrize("text", ["<tool_call>", "<tool_call>\n", '<tool_call>\n{"na', '<tool_call>\n{"name": "spec'])
def test_markup_with_no_name_yet_is_dropped_not_content(text: str) -> None:
    assert parse(HermesFormat(), "Hi " + text) == ("Hi ", [])


def test_only_one_call_when_parallel_calls_are_off() -> None:
    assert parse(HermesFormat(), CALL + "\n" + CALL_OPT, parallel=False) == ("", [ONE])


@pytest.mark.parametrize(
    ("name", "text", "thinking"),
    [
        # Qwen3: the model opens the block itself.
        ("Qwen-Qwen3-0.6B", "<think>\nI'm\nthinking\n</think>\n\n" + CALL, False),
        # QwQ: the generation prompt opens it (tests/test-chat.cpp "QwQ always has thinking forced open").
        ("Qwen-QwQ-32B", "I'm\nthinking\n</think>\n\n" + CALL, True),
    ],
)
def test_reasoning_is_split_before_the_call(name: str, text: str, thinking: bool) -> None:
    """The engine splits `<think>` (runtime/engine/reasoning.py) and feeds the answer to the
    parser, as runtime/engine/llama.py does."""
    source = template(name)
    assert tags_for_template(source) == THINK
    prompt = ChatTemplate(source).render([Message("user", [TextPart("Hi")])], tools=TOOLS, enable_thinking=True)
    assert starts_thinking(prompt, THINK) is thinking
    for chunks in splits(text):
        events = engine_events(HermesFormat().parser(TOOLS, ToolChoice(), True), chunks, inside=thinking)
        check_call_events(events)
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)).strip() == "I'm\nthinking"
        assert [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCallEnd)] == [ONE]
        assert outcome(events)[0].strip() == ""


# -- history round trip --------------------------------------------------------------------


def history() -> list[Message]:
    return [
        Message("system", [TextPart("Be brief.")]),
        Message("user", [TextPart("Call both.")]),
        Message(
            "assistant",
            [
                ReasoningPart("Two calls."),
                ToolCallPart("call_1", "special_function", '{"arg1": 1}'),
                ToolCallPart("call_2", "special_function_with_opt", '{"arg1": 1, "arg2": 2}'),
            ],
        ),
        Message("tool", [ToolResultPart("call_1", "result one", name="special_function")]),
        Message("tool", [ToolResultPart("call_2", "result two", name="special_function_with_opt")]),
    ]


@pytest.mark.parametrize("name", HERMES)
def test_history_renders_calls_and_results_in_the_family_syntax(name: str) -> None:
    prompt = render_prompt(name, history(), TOOLS)
    assert CALL + "\n" + CALL_OPT + "<|im_end|>" in prompt
    assert re.search(
        r"<tool_response>\nresult one\n</tool_response>\n<tool_response>\nresult two\n</tool_response>", prompt
    )
    assert prompt.count("Be brief.") == 1
    # What the template writes back is what the parser reads.
    turn = prompt[prompt.index(CALL) : prompt.index("<|im_end|>", prompt.index(CALL))]
    assert parse(detected(name), turn) == ("", [ONE, TWO])


# -- grammar ----------------------------------------------------------------------------------


def gbnf(choice: ToolChoice, parallel: bool = True) -> str:
    return HermesFormat().grammar(TOOLS, choice, parallel).gbnf


def test_grammar_takes_the_canned_calls() -> None:
    vocab, required = real_vocab("qwen2"), gbnf(ToolChoice("required"))
    for text in (
        CALL,
        '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>',
        CALL + "\n" + CALL_OPT,
        '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>',
    ):
        assert accepts(vocab, required, text), text
    named = gbnf(ToolChoice("function", "special_function"))
    assert accepts(vocab, named, CALL)
    assert not accepts(vocab, named, CALL_OPT)
    assert not accepts(vocab, gbnf(ToolChoice("required"), parallel=False), CALL + "\n" + CALL_OPT)


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "other_function", "arguments": {"arg1": 1}}\n</tool_call>',
        '<tool_call>\n{"name": "special_function", "parameters": {"arg1": 1}}\n</tool_call>',
        '<tool_call>\n{"name": "special_function", "arguments": {"arg1": "one"}}\n</tool_call>',
        '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}',
        '{"name": "special_function", "arguments": {"arg1": 1}}',
    ],
)
def test_grammar_rejects_wrong_names_and_markup(text: str) -> None:
    assert not accepts(real_vocab("qwen2"), gbnf(ToolChoice("required")), text)


def test_auto_grammar_waits_for_the_marker() -> None:
    assert [t.text for t in HermesFormat().grammar(TOOLS, ToolChoice(), True).triggers] == ["<tool_call>"]
