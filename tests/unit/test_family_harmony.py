"""gpt-oss (harmony): detection, prompt, parsing, history and grammar on the real template.

Canned outputs are llama.cpp's (tests/test-chat.cpp, "GPT-OSS format tests"); there is no
gpt-oss vocabulary among llama.cpp's test files, so grammars are checked on qwen2's.
"""

from __future__ import annotations

import pytest

from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls.harmony import HarmonyFormat, HarmonyParser
from runtime.events import Event
from runtime.ir import ChatRequest, Message, ReasoningPart, TextPart, ToolCallPart, ToolChoice, ToolResultPart
from tests.family_checks import (
    CONTENT,
    GET_WEATHER,
    SPECIAL,
    Outcome,
    check_call_events,
    detected,
    engine_like,
    outcome,
    render_prompt,
    same_however_split,
)
from tests.grammar_check import accepts, real_vocab
from tests.upstream import template

NAME = "openai-gpt-oss-120b"


def run(chunks: list[str], names: list[str] | None = None) -> list[Event]:
    return engine_like(HarmonyParser, chunks, names=names, tags=None)


def harmony(text: str, names: list[str] | None = None) -> Outcome:
    return same_however_split(lambda chunks: run(chunks, names), text)


@pytest.mark.parametrize(
    "other",
    [
        "Qwen-Qwen2.5-7B-Instruct",
        "meta-llama-Llama-3.1-8B-Instruct",
        "google-gemma-4-31B-it",
        "mistralai-Mistral-Nemo-Instruct-2407",
    ],
)
def test_detection(other: str) -> None:
    assert isinstance(detected(NAME), HarmonyFormat)
    assert not HarmonyFormat.detect(template(other))


def test_prompt_lists_the_tools_through_the_template() -> None:
    prompt = ChatTemplate(template(NAME)).render([Message("user", [TextPart("Hi")])], tools=[GET_WEATHER, SPECIAL])
    assert "type get_weather = (_: {" in prompt and "// Get the weather in a city" in prompt
    assert "type special_function" in prompt and prompt.endswith("<|start|>assistant")


def test_reasoning_effort_reaches_the_template() -> None:
    fmt = HarmonyFormat()
    kwargs = fmt.template_kwargs(ChatRequest(model="m", messages=[], reasoning_effort="high"))
    assert kwargs == {"reasoning_effort": "high"}
    assert fmt.template_kwargs(ChatRequest(model="m", messages=[], reasoning=False)) == {"reasoning_effort": "low"}
    assert fmt.template_kwargs(ChatRequest(model="m", messages=[])) == {}
    prompt = ChatTemplate(template(NAME)).render([Message("user", [TextPart("Hi")])], **kwargs)
    assert "Reasoning: high" in prompt


@pytest.mark.parametrize(
    ("text", "content", "reasoning"),
    [
        ("<|channel|>final<|message|>Hello, world!\nWhat's up?", CONTENT, ""),
        ("<|channel|>commentary<|message|>Hello, world!\nWhat's up?", CONTENT, ""),
        (
            "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>"
            "Hello, world!\nWhat's up?",
            CONTENT,
            "I'm\nthinking",
        ),
        ("<|channel|>analysis<|message|>I'm\nthinking", "", "I'm\nthinking"),
        (
            "<|channel|>commentary to=assistant<|channel|>analysis<|message|>I'm\nthinking<|end|>"
            "<|start|>assistant<|channel|>commentary to=assistant<|channel|>final<|message|>Hello, world!\nWhat's up?",
            CONTENT,
            "I'm\nthinking",
        ),
        # messages to built-in tools are dropped
        (
            "<|channel|>analysis<|message|>I will execute python to say hello<|end|>"
            "<|start|>assistant to=container.exec<|channel|>commentary<|message|>python3 -c 'print(\"hello\")'",
            "",
            "I will execute python to say hello",
        ),
        (
            "<|channel|>analysis<|message|>I will execute python to say hello<|end|>"
            '<|start|>assistant<|channel|>commentary to=python <|constrain|>code<|message|>print("hello")',
            "",
            "I will execute python to say hello",
        ),
    ],
)
def test_channels_split_into_reasoning_and_content(text: str, content: str, reasoning: str) -> None:
    assert harmony(text) == (content, reasoning, [])


@pytest.mark.parametrize(
    "text",
    [
        ' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
        '<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}',
        ' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}',
        '<|channel|>commentary to=functions.special_function<|message|>{"arg1": 1}',
        '<|channel|>commentary to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}<|call|>',
    ],
)
def test_calls_in_either_header_form(text: str) -> None:
    assert harmony(text, ["special_function"]) == ("", "", [("special_function", {"arg1": 1})])


def test_reasoning_then_call() -> None:
    text = (
        "<|channel|>analysis<|message|>Thinking about edit...<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.edit <|constrain|>json"
        '<|message|>{"oldString": "if (part < railCount - 1) {", "newString": "if (part < 4) {", "replaceAll": false}'
    )
    args = {"oldString": "if (part < railCount - 1) {", "newString": "if (part < 4) {", "replaceAll": False}
    assert harmony(text, ["edit"]) == ("", "Thinking about edit...", [("edit", args)])


def test_a_call_cut_short_is_closed_into_valid_json() -> None:
    text = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Par'
    events = run([text], ["get_weather"])
    check_call_events(events)
    assert outcome(events) == ("", "", [("get_weather", {"city": "Par"})])
    # cut inside the header: the name is known, the arguments are empty
    assert outcome(run(["<|channel|>commentary to=functions.get_weather <|cons"], ["get_weather"]))[2] == [
        ("get_weather", {})
    ]


@pytest.mark.parametrize("cut", ["<|channel|>commentary to=functi", " to=functions.", "<|chan", " t", "<|start|>assi"])
def test_markup_with_no_name_is_dropped(cut: str) -> None:
    assert outcome(run([cut], ["get_weather"])) == ("", "", [])


def test_calls_without_tools_are_dropped_but_channels_still_split() -> None:
    text = "<|channel|>analysis<|message|>hm<|end|><|start|>assistant to=functions.x<|channel|>commentary<|message|>{}"
    assert outcome(run([text], [])) == ("", "hm", [])


def test_history_renders_calls_and_results_in_harmony() -> None:
    fmt = HarmonyFormat()
    messages = [
        Message("user", [TextPart("Weather in Paris and Rome?")]),
        Message(
            "assistant",
            [
                ReasoningPart("Need both cities."),
                TextPart("Let me check."),
                ToolCallPart("c1", "get_weather", '{"city": "Paris"}'),
                ToolCallPart("c2", "get_weather", '{"city": "Rome"}'),
            ],
        ),
        Message("tool", [ToolResultPart("c2", "cloudy", name="get_weather")]),
        Message("tool", [ToolResultPart("c1", "sunny", name="get_weather")]),
    ]
    prompt = render_prompt(NAME, messages, [GET_WEATHER], fmt=fmt)
    assert prompt.endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Need both cities.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny"<|end|>'
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Rome"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"cloudy"<|end|>'
        "<|start|>assistant"
    )


def test_single_call_history_is_unchanged_apart_from_reasoning() -> None:
    fmt = HarmonyFormat()
    messages = [
        Message("user", [TextPart("Hi")]),
        Message("assistant", [TextPart("Checking."), ToolCallPart("c1", "get_weather", '{"city": "Paris"}')]),
        Message("tool", [ToolResultPart("c1", "sunny", name="get_weather")]),
        Message("assistant", [TextPart("It is sunny.")]),
        Message("user", [TextPart("Thanks")]),
    ]
    assert fmt.prepare_messages(messages, [GET_WEATHER]) == messages
    prompt = ChatTemplate(template(NAME)).render(messages, tools=[GET_WEATHER])
    assert "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>" in prompt
    assert "Checking." not in prompt  # a later final answer drops the call turn's analysis, as the template wants


GOOD = [
    ' to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}',
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}',
    "<|channel|>analysis<|message|>The user wants weather.<|end|><|start|>assistant"
    '<|channel|>commentary to=functions.get_weather json<|message|>{"city": "Paris"}',
]
BAD = [
    ' to=functions.get_wether<|channel|>commentary<|message|>{"city": "Paris"}',
    ' to=functions.get_weather<|channel|>commentary<|message|>{"town": "Paris"}',
    '<|channel|>final<|message|>{"city": "Paris"}',
    ' to=functions.get_weather<|message|>{"city": "Paris"}',
]


@pytest.mark.parametrize("mode", ["required", "function"])
def test_forced_grammar_takes_calls_and_rejects_wrong_ones(mode: str) -> None:
    choice = ToolChoice(mode, "get_weather" if mode == "function" else None)  # type: ignore[arg-type]
    grammar = HarmonyFormat().grammar([GET_WEATHER, SPECIAL], choice, parallel=True)
    assert grammar.triggers == ()
    vocab = real_vocab("qwen2")
    for text in GOOD:
        assert accepts(vocab, grammar.gbnf, text), text
    for text in BAD:
        assert not accepts(vocab, grammar.gbnf, text), text


def test_auto_grammar_is_lazy_and_starts_at_the_recipient() -> None:
    grammar = HarmonyFormat().grammar([GET_WEATHER], ToolChoice(), parallel=True)
    assert {t.text for t in grammar.triggers} >= {" to=functions.", "<|channel|>commentary to=functions."}
    vocab = real_vocab("qwen2")
    assert accepts(vocab, grammar.gbnf, GOOD[0]) and accepts(vocab, grammar.gbnf, GOOD[1])


def test_a_json_answer_format_goes_in_the_final_channel() -> None:
    grammar = HarmonyFormat().grammar([GET_WEATHER], ToolChoice(), True, response={"type": "object"})
    vocab = real_vocab("qwen2")
    assert grammar.triggers == ()
    assert accepts(vocab, grammar.gbnf, '<|channel|>final<|message|>{"a": 1}')
    assert accepts(vocab, grammar.gbnf, GOOD[2])
    assert not accepts(vocab, grammar.gbnf, '{"a": 1}')


def test_a_json_answer_without_tools_still_goes_in_the_final_channel() -> None:
    # The engine asks the format for the whole-output grammar when there are no tools.
    vocab = real_vocab("qwen2")
    gbnf = HarmonyFormat().answer_grammar({"type": "object", "properties": {"a": {"type": "integer"}}}, True)
    assert gbnf is not None
    assert accepts(vocab, gbnf, '<|channel|>final<|message|>{"a": 1}')
    assert accepts(
        vocab, gbnf, '<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>{"a": 2}'
    )
    assert not accepts(vocab, gbnf, '{"a": 1}')
