"""Gemma 4: detection, prompt, parsing, history and grammar on the real templates.

Canned outputs are llama.cpp's (tests/test-chat.cpp, "Google Gemma 4"); grammars are checked
with the gemma-4 vocabulary.
"""

from __future__ import annotations

import pytest

from runtime.engine.template import ChatTemplate, message_to_template, tool_to_template
from runtime.engine.toolcalls.gemma4 import Gemma4Format, Gemma4Parser
from runtime.events import Event
from runtime.ir import Message, ReasoningPart, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.family_checks import CONTENT, Outcome, check_call_events, detected, engine_like, outcome, same_however_split
from tests.grammar_check import accepts, real_vocab
from tests.upstream import template

NAMES = ["google-gemma-4-31B-it", "google-gemma-4-31B-it-interleaved"]
GET_TIME = ToolSpec(
    "get_time",
    "Get the time in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CONFIG = ToolSpec(
    "set_config",
    "Set the config",
    {"type": "object", "properties": {"config": {"type": "object"}, "count": {"type": "integer"}}},
)


def run(chunks: list[str], names: list[str] | None = None) -> list[Event]:
    return engine_like(Gemma4Parser, chunks, names=names, tags=None)


def gemma4(text: str, names: list[str] | None = None) -> Outcome:
    return same_however_split(lambda chunks: run(chunks, names), text)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "other",
    ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct", "google-gemma-2-2b-it", "openai-gpt-oss-120b"],
)
def test_detection(name: str, other: str) -> None:
    assert isinstance(detected(name), Gemma4Format)
    assert not Gemma4Format.detect(template(other))


@pytest.mark.parametrize("name", NAMES)
def test_prompt_declares_the_tools_through_the_template(name: str) -> None:
    prompt = ChatTemplate(template(name)).render([Message("user", [TextPart("Hi")])], tools=[GET_TIME])
    assert '<|tool>declaration:get_time{description:<|"|>Get the time in a city<|"|>' in prompt
    assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")


@pytest.mark.parametrize(
    ("text", "content", "reasoning"),
    [
        ("Hello, world!", "Hello, world!", ""),
        ("<|channel>thought\nI'm\nthinking<channel|>Hello, world!\nWhat's up?", CONTENT, "I'm\nthinking"),
        ("<|channel>thought<channel|>Hello, world!\nWhat's up?", CONTENT, ""),
        ("<|channel>thought\n<channel|>Hello, world!\nWhat's up?<channel|>", CONTENT, ""),
        ("<|channel>thought\n<channel|>Hello, world!\nWhat's up?<|channel>thought\n<channel|>", CONTENT, ""),
        ("<|channel>thought\n<channel|>Hello, world!\nWhat's up?<|channel>thought\n<channel|><channel|>", CONTENT, ""),
        ("<|channel><|channel>thought\n<channel|>Hello, world!\nWhat's up?", CONTENT, ""),
        ("<|channel>thought\nI'm\nthinking", "", "I'm\nthinking"),
    ],
)
def test_thought_channel_splits_reasoning_from_content(text: str, content: str, reasoning: str) -> None:
    assert gemma4(text) == (content, reasoning, [])


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ('<|tool_call>call:get_time{city:<|"|>London<|"|>}<tool_call|>', "get_time", {"city": "London"}),
        ('<|tool_call>call:get_time{city:<|"|>San Francisco<|"|>}<tool_call|>', "get_time", {"city": "San Francisco"}),
        ("<|tool_call>call:empty_args{}<tool_call|>", "empty_args", {}),
        ("<|tool_call>call:special_function{arg1:42}<tool_call|>", "special_function", {"arg1": 42}),
        ("<|tool_call>call:special_function{arg1:-7}<tool_call|>", "special_function", {"arg1": -7}),
        ("<|tool_call>call:amount{orig:3.14}<tool_call|>", "amount", {"orig": 3.14}),
        ("<|tool_call>call:amount{orig:1.5e10}<tool_call|>", "amount", {"orig": 1.5e10}),
        ("<|tool_call>call:toggle{enabled:true}<tool_call|>", "toggle", {"enabled": True}),
        ("<|tool_call>call:toggle{enabled:false}<tool_call|>", "toggle", {"enabled": False}),
        ("<|tool_call>call:set_nullable{value:null}<tool_call|>", "set_nullable", {"value": None}),
        (
            '<|tool_call>call:todo_list{todos:[<|"|>buy milk<|"|>,<|"|>walk dog<|"|>]}<tool_call|>',
            "todo_list",
            {"todos": ["buy milk", "walk dog"]},
        ),
        (
            '<|tool_call>call:set_config{config:{theme:<|"|>dark<|"|>,count:3}}<tool_call|>',
            "set_config",
            {"config": {"theme": "dark", "count": 3}},
        ),
        ("<|tool_call>call:todo_list{todos:[]}<tool_call|>", "todo_list", {"todos": []}),
        ("<|tool_call>call:set_config{config:{}}<tool_call|>", "set_config", {"config": {}}),
        (
            '<|tool_call>call:say{text:<|"|>a "quoted", {odd} text\n<|"|>}<tool_call|>',
            "say",
            {"text": 'a "quoted", {odd} text\n'},
        ),
    ],
)
def test_call_arguments_become_json(text: str, name: str, args: object) -> None:
    assert gemma4(text, [name]) == ("", "", [(name, args)])


def test_content_reasoning_and_parallel_calls() -> None:
    text = (
        "<|channel>thought\nI'm\nthinking<channel|>Hello, world!\nWhat's up?"
        '<|tool_call>call:get_time{city:<|"|>London<|"|>}<tool_call|>'
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
    )
    assert gemma4(text, ["get_time", "get_weather"]) == (
        CONTENT,
        "I'm\nthinking",
        [("get_time", {"city": "London"}), ("get_weather", {"city": "Paris"})],
    )


def test_a_call_cut_short_is_closed_into_valid_json() -> None:
    for cut, args in [
        ('<|tool_call>call:get_time{city:<|"|>Lon', {"city": "Lon"}),
        ("<|tool_call>call:set_config{config:{count:3", {"config": {"count": 3}}),
        ("<|tool_call>call:get_time{", {}),
        ("<|tool_call>call:get_time", {}),
    ]:
        events = run([cut], ["get_time", "set_config"])
        check_call_events(events)
        assert outcome(events)[2] == [(cut.split(":")[1].split("{")[0], args)], cut


@pytest.mark.parametrize("cut", ["<|tool_call>", "<|tool_call>call:", "<|channel>tho"])
def test_markup_with_no_name_is_dropped(cut: str) -> None:
    assert outcome(run(["Hi " + cut], ["get_time"])) == ("Hi ", "", [])


@pytest.mark.parametrize("tail", ["<", "<|tool_", "<|chan"])
def test_a_marker_prefix_at_the_end_is_text_the_model_wrote(tail: str) -> None:
    # The markers are special tokens, sampled whole: a prefix of one is text, however long.
    assert outcome(run(["Hi " + tail], ["get_time"])) == ("Hi " + tail, "", [])


def test_calls_without_tools_are_dropped() -> None:
    text = 'Sure.<|tool_call>call:get_time{city:<|"|>Paris<|"|>}<tool_call|>'
    assert outcome(run([text], [])) == ("Sure.", "", [])


def history() -> list[Message]:
    return [
        Message("user", [TextPart("Time in Paris?")]),
        Message(
            "assistant",
            [ReasoningPart("Need the tool."), ToolCallPart("c0", "get_time", '{"city": "Paris", "n": 5}')],
        ),
        Message("tool", [ToolResultPart("c0", "12:00", name="get_time")]),
    ]


def test_history_renders_calls_and_results_in_gemma_syntax() -> None:
    fmt = Gemma4Format()
    messages = fmt.prepare_messages(history(), [GET_TIME])
    prompt = ChatTemplate(template(NAMES[0])).render(messages, tools=[GET_TIME], string_arguments=fmt.string_arguments)
    assert prompt.endswith(
        "<|turn>model\n<|channel>thought\nNeed the tool.\n<channel|>"
        '<|tool_call>call:get_time{city:<|"|>Paris<|"|>,n:5}<tool_call|>'
        '<|tool_response>response:get_time{value:<|"|>12:00<|"|>}<tool_response|>'
    )


def test_older_template_gets_results_as_tool_responses() -> None:
    """google-gemma-4-31B-it-interleaved has no role:tool scan: llama.cpp's workaround."""
    fmt = Gemma4Format()
    source = template(NAMES[1])
    dicts = fmt.template_messages([message_to_template(m) for m in history()], source)
    tmpl = ChatTemplate(source)
    prompt = tmpl._template.render(messages=dicts, tools=[tool_to_template(GET_TIME)], add_generation_prompt=True)
    assert '<|tool_call>call:get_time{city:<|"|>Paris<|"|>,n:5}<tool_call|>' in prompt
    assert '<|tool_response>response:get_time{value:<|"|>12:00<|"|>}<tool_response|>' in prompt
    assert "<|turn>tool" not in prompt
    # the current template handles role:tool itself
    assert fmt.template_messages(dicts, template(NAMES[0])) is dicts


def test_a_model_turn_is_opened_after_content_beside_a_call() -> None:
    assert Gemma4Format().finish_prompt("...Let me check.<turn|>\n") == "...Let me check.<turn|>\n<|turn>model\n"
    assert Gemma4Format().finish_prompt("...<tool_response|>") == "...<tool_response|>"


GOOD = [
    '<|tool_call>call:get_time{city:<|"|>Paris<|"|>}<tool_call|>',
    '<|channel>thought\nNeed the time.<channel|><|tool_call>call:get_time{city:<|"|>Paris<|"|>}<tool_call|>',
]
BAD = [
    '<|tool_call>call:get_tme{city:<|"|>Paris<|"|>}<tool_call|>',
    '<|tool_call>call:get_time{town:<|"|>Paris<|"|>}<tool_call|>',
    '<|tool_call>call:get_time{city:"Paris"}<tool_call|>',
    '<|tool_call>call:get_time{city:<|"|>Paris<|"|>}',
    "Sure.",
]


@pytest.mark.parametrize("mode", ["required", "function"])
def test_forced_grammar_takes_calls_and_rejects_wrong_ones(mode: str) -> None:
    choice = ToolChoice(mode, "get_time" if mode == "function" else None)  # type: ignore[arg-type]
    grammar = Gemma4Format().grammar([GET_TIME, CONFIG], choice, parallel=False)
    vocab = real_vocab("gemma-4")
    assert grammar.triggers == ()
    for text in GOOD:
        assert accepts(vocab, grammar.gbnf, text), text
    for text in BAD:
        assert not accepts(vocab, grammar.gbnf, text), text
    assert not accepts(vocab, grammar.gbnf, GOOD[0] + GOOD[0])  # one call only


def test_auto_grammar_is_lazy_and_takes_parallel_calls() -> None:
    grammar = Gemma4Format().grammar([GET_TIME, CONFIG], ToolChoice(), parallel=True)
    assert [t.text for t in grammar.triggers] == ["<|tool_call>"]
    vocab = real_vocab("gemma-4")
    second = '<|tool_call>call:set_config{config:{theme:<|"|>dark<|"|>,n:[1,2.5,null]},count:3}<tool_call|>'
    assert accepts(vocab, grammar.gbnf, GOOD[0] + second)
