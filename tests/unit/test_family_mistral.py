"""Mistral's tool-call formats on the real templates: v11 (`[TOOL_CALLS]name[ARGS]{...}`,
Mistral Small 3.2 / Devstral / Ministral 3) and v3 (`[TOOL_CALLS][{...}]`, Nemo).

Canned outputs are llama.cpp's (tests/test-chat.cpp); templates are llama.cpp's
models/templates (tests/upstream.py); grammars run in llama.cpp's grammar engine.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engine.reasoning import tags_for_template
from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls import MistralFormat, MistralToolsFormat, ToolFormat
from runtime.engine.toolcalls.mistral import mistral_id
from runtime.events import ReasoningDelta, ToolCallEnd
from runtime.ir import Message, ReasoningPart, TextPart, ToolCallPart, ToolChoice, ToolResultPart
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

V11 = ("Mistral-Small-3.2-24B-Instruct-2506", "unsloth-mistral-Devstral-Small-2507")
MINISTRAL = "mistralai-Ministral-3-14B-Reasoning-2512"
NEMO = "mistralai-Mistral-Nemo-Instruct-2407"
OTHERS = (
    "Qwen-Qwen2.5-7B-Instruct",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
    "meta-llama-Llama-3.1-8B-Instruct",
    "openai-gpt-oss-120b",
    "google-gemma-2-2b-it",
    "microsoft-Phi-3.5-mini-instruct",
)

TOOLS = [SPECIAL, SPECIAL_OPT]
ONE = ("special_function", {"arg1": 1})
TWO = ("special_function_with_opt", {"arg1": 1, "arg2": 2})


def parse(fmt: ToolFormat, text: str, *, parallel: bool = True) -> tuple[str, list[tuple[str, object]]]:
    return parse_however_split(fmt, TOOLS, text, parallel=parallel)


# -- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*V11, MINISTRAL])
def test_v11_templates_detect_as_mistral_v11(name: str) -> None:
    assert isinstance(detected(name), MistralToolsFormat)


def test_nemo_keeps_the_v3_format() -> None:
    fmt = detected(NEMO)
    assert type(fmt) is MistralFormat


@pytest.mark.parametrize("name", OTHERS)
def test_other_families_are_not_mistral(name: str) -> None:
    assert not isinstance(detected(name), MistralFormat | MistralToolsFormat)


# -- the prompt --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*V11, MINISTRAL, NEMO])
def test_tools_reach_the_prompt_through_the_template(name: str) -> None:
    prompt = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>").render(
        [Message("user", [TextPart("Hi")])], tools=TOOLS
    )
    block = re.search(r"\[AVAILABLE_TOOLS\](.*)\[/AVAILABLE_TOOLS\]", prompt, re.S)
    assert block is not None
    listed = json.loads(block.group(1))
    assert [t["function"]["name"] for t in listed] == ["special_function", "special_function_with_opt"]
    assert listed[0]["function"]["description"] == "I'm special"


# -- parsing canned outputs (tests/test-chat.cpp) -----------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", []),
        ('[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{"arg1": 1}', "", [ONE]),
        (
            '[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{"arg1": 1}'
            '[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]{"arg1": 1, "arg2": 2}',
            "",
            [ONE, TWO],
        ),
        ('[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', "", [ONE]),
        ('[TOOL_CALLS]special_function[ARGS]{"arg1":1}', "", [ONE]),
        (
            'Hello, world!\nWhat\'s up?[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
            "Hello, world!\nWhat's up?",
            [ONE],
        ),
        (
            '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}'
            '[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1, "arg2": 2}',
            "",
            [ONE, TWO],
        ),
        # Text after a finished call is content again (its leading whitespace dropped).
        ('[TOOL_CALLS]special_function[ARGS]{"arg1": 1}\n Done.', "Done.", [ONE]),
    ],
)
def test_v11_outputs_parse_however_the_stream_is_split(text: str, content: str, calls: list[object]) -> None:
    assert parse(MistralToolsFormat(), text) == (content, calls)


def test_v11_a_call_cut_short_closes_into_valid_json() -> None:
    text = 'Sure.[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1, "arg2'
    assert parse(MistralToolsFormat(), text) == ("Sure.", [("special_function_with_opt", {"arg1": 1})])
    assert parse(MistralToolsFormat(), "[TOOL_CALLS]special_function[ARGS]") == ("", [("special_function", {})])


@pytest.mark.parametrize(
    "text",
    [
        "[TOOL_CALLS]",
        "[TOOL_CALLS]special_fun",
        "[TOOL_CALLS]special_function[",
        "[TOOL_CALLS]special_function[CALL_ID]12",
    ],
)
def test_v11_markup_with_no_name_yet_is_dropped_not_content(text: str) -> None:
    assert parse(MistralToolsFormat(), "Hi " + text) == ("Hi ", [])


def test_v11_calls_to_unknown_tools_and_beyond_one_are_dropped() -> None:
    text = '[TOOL_CALLS]rm_rf[ARGS]{"path": "/"}[TOOL_CALLS]special_function[ARGS]{"arg1": 1}'
    assert parse(MistralToolsFormat(), text) == ("", [ONE])
    two = '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}[TOOL_CALLS]special_function[ARGS]{"arg1": 2}'
    assert parse(MistralToolsFormat(), two, parallel=False) == ("", [ONE])


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ("[TOOL_CALLS]not a call", "not a call", []),
        ("[TOOL_CALLS]special_function[NOPE]x", "special_function[NOPE]x", []),
        ("[TOOL_CALLS]special_function[ARGS]oops", "oops", [("special_function", {})]),
        ('[TOOL_CALLS]special_function[ARGS]{"arg1": x}', "x}", [("special_function", {})]),
    ],
)
def test_v11_malformed_markup_never_raises(text: str, content: str, calls: list[object]) -> None:
    assert parse(MistralToolsFormat(), text) == (content, calls)


PIECES = ["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "123456789", "special_function", *"{}[ x1", '"arg1"', ": "]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10))
def test_v11_any_text_parses_the_same_however_split_and_never_raises(pieces: list[str]) -> None:
    parse(MistralToolsFormat(), "".join(pieces))


def test_nemo_v3_output_with_its_call_id_parses() -> None:
    text = '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]'
    assert parse(MistralFormat(), text) == ("", [ONE])


def test_ministral_reasoning_is_split_before_the_call() -> None:
    """The engine splits `[THINK]...[/THINK]` (runtime/engine/reasoning.py) and feeds the
    answer to the parser, as runtime/engine/llama.py does."""
    tags = tags_for_template(template(MINISTRAL))
    assert tags is not None and (tags.open, tags.close) == ("[THINK]", "[/THINK]")
    text = '[THINK]I\'m\nthinking[/THINK][TOOL_CALLS]special_function[ARGS]{"arg1":1}'
    for chunks in splits(text):
        events = engine_events(MistralToolsFormat().parser(TOOLS, ToolChoice(), True), chunks, tags=tags)
        check_call_events(events)
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "I'm\nthinking"
        assert [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCallEnd)] == [ONE]
        assert outcome(events)[0] == ""


# -- history round trip --------------------------------------------------------------------


def history(calls: int) -> list[Message]:
    parts = [ToolCallPart(f"call_{i}abcdef0123", "special_function", json.dumps({"arg1": i + 1})) for i in range(calls)]
    return [
        Message("system", [TextPart("Be brief.")]),
        Message("user", [TextPart("Call it.")]),
        Message("assistant", [ReasoningPart("Let me see."), *parts]),
        *[Message("tool", [ToolResultPart(f"call_{i}abcdef0123", f"result {i}")]) for i in range(calls)],
    ]


def render(name: str, messages: list[Message]) -> str:
    return render_prompt(name, messages, TOOLS, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("name", [*V11, MINISTRAL])
def test_v11_history_renders_calls_and_results_in_the_family_syntax(name: str) -> None:
    prompt = render(name, history(2))
    ids = [mistral_id(f"call_{i}abcdef0123") for i in range(2)]
    if "[CALL_ID]" in template(name):
        written = [f'[TOOL_CALLS]special_function[CALL_ID]{ids[i]}[ARGS]{{"arg1": {i + 1}}}' for i in range(2)]
        assert f"[TOOL_RESULTS]{ids[0]}[TOOL_CONTENT]result 0[/TOOL_RESULTS]" in prompt
    else:
        written = [f'[TOOL_CALLS]special_function[ARGS]{{"arg1": {i + 1}}}' for i in range(2)]
        assert "[TOOL_RESULTS]result 0[/TOOL_RESULTS][TOOL_RESULTS]result 1[/TOOL_RESULTS]" in prompt
    assert "".join(written) + "</s>" in prompt
    # What the template writes back is what the parser reads.
    section = prompt[prompt.index(written[0]) : prompt.index("</s>", prompt.index(written[0]))]
    assert parse(MistralToolsFormat(), section) == ("", [ONE, ("special_function", {"arg1": 2})])


def test_nemo_history_renders_calls_with_nine_character_ids() -> None:
    prompt = render(NEMO, history(1))
    call_id = mistral_id("call_0abcdef0123")
    assert f'[TOOL_CALLS][{{"name": "special_function", "arguments": {{"arg1": 1}}, "id": "{call_id}"}}]</s>' in prompt
    assert f'"call_id": "{call_id}"}}[/TOOL_RESULTS]' in prompt


# -- grammar ----------------------------------------------------------------------------------

SMALL_ONE = '[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{"arg1": 1}'
V11_ONE = '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}'
V11_TWO = V11_ONE + '[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1, "arg2": 2}'


def gbnf(fmt: ToolFormat, choice: ToolChoice, parallel: bool = True) -> str:
    return fmt.grammar(TOOLS, choice, parallel).gbnf


def test_v11_grammar_takes_the_canned_calls() -> None:
    vocab, fmt = real_vocab("llama-bpe"), MistralToolsFormat()
    required = gbnf(fmt, ToolChoice("required"))
    for text in (SMALL_ONE, V11_ONE, V11_TWO, '[TOOL_CALLS]special_function[ARGS]{"arg1":1}'):
        assert accepts(vocab, required, text), text
    named = gbnf(fmt, ToolChoice("function", "special_function"))
    assert accepts(vocab, named, V11_ONE)
    assert not accepts(vocab, named, V11_TWO)  # a named choice is one call to that tool
    assert not accepts(vocab, gbnf(fmt, ToolChoice("required"), parallel=False), V11_TWO)


@pytest.mark.parametrize(
    "text",
    [
        '[TOOL_CALLS]other_function[ARGS]{"arg1": 1}',
        '[TOOL_CALLS]special_function{"arg1": 1}',
        '[TOOL_CALLS]special_function[ARGS]{"arg1": "one"}',
        '[TOOL_CALLS]special_function[CALL_ID]12345[ARGS]{"arg1": 1}',
        '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}}]',
    ],
)
def test_v11_grammar_rejects_wrong_names_and_markup(text: str) -> None:
    assert not accepts(real_vocab("llama-bpe"), gbnf(MistralToolsFormat(), ToolChoice("required")), text)


def test_v11_auto_grammar_waits_for_the_marker() -> None:
    grammar = MistralToolsFormat().grammar(TOOLS, ToolChoice(), True)
    assert [t.text for t in grammar.triggers] == ["[TOOL_CALLS]"]


def test_nemo_grammar_takes_the_canned_call_with_its_id() -> None:
    vocab, required = real_vocab("llama-bpe"), gbnf(MistralFormat(), ToolChoice("required"))
    canned = '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]'
    assert accepts(vocab, required, canned)
    assert accepts(vocab, required, '[TOOL_CALLS] [{"name": "special_function", "arguments": {"arg1": 1}}]')
    assert not accepts(vocab, required, canned.replace("special_function", "other_function"))
    assert not accepts(vocab, required, canned.replace("123456789", "12345"))
