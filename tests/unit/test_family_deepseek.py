# ruff: noqa: RUF001, RUF003  (DeepSeek's special tokens are spelled with U+FF5C "｜")
"""DeepSeek R1 / V3.1: detection, prompt, parsing, history and grammar on the real templates.

Canned outputs are llama.cpp's (tests/test-chat.cpp: the deepseek-ai-DeepSeek-V3.1,
llama-cpp-deepseek-r1 and deepseek-ai-DeepSeek-R1-Distill-* cases). Reasoning (`<think>`) is
split by the engine before the parser: `engine_like` feeds both the way runtime/engine/llama.py
does.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from runtime.engine.reasoning import THINK, starts_thinking, tags_for_template
from runtime.engine.toolcalls import ToolFormat
from runtime.engine.toolcalls.deepseek import (
    CALLS_BEGIN,
    CALLS_END,
    DeepSeekParser,
    DeepSeekR1DistillFormat,
    DeepSeekR1Format,
    DeepSeekV31Format,
)
from runtime.ir import Message, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.family_checks import (
    CONTENT,
    GET_TIME,
    GET_WEATHER,
    SPECIAL,
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

TEMPLATES: dict[str, type[ToolFormat]] = {
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": DeepSeekR1DistillFormat,
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": DeepSeekR1DistillFormat,
    "llama-cpp-deepseek-r1": DeepSeekR1Format,
    "deepseek-ai-DeepSeek-V3.1": DeepSeekV31Format,
}
# llama-cpp-deepseek-r1.jinja writes `tools | map(attribute='function') | tojson(indent=2)`: the
# template layer's `tojson` (runtime/engine/template.py `_tojson`) cannot serialise map()'s generator.
RENDERED = TEMPLATES  # llama-cpp-deepseek-r1 pipes a generator (`map`) into `tojson`
OTHERS = [
    "Qwen-Qwen2.5-7B-Instruct",
    "meta-llama-Llama-3.1-8B-Instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "Kimi-K2-Instruct",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "deepseek-ai-DeepSeek-V3.2",  # DSML markup: another family
    "deepseek-ai-DeepSeek-V4",
]
ALL = [SPECIAL.name, GET_TIME.name, GET_WEATHER.name]


def deepseek(text: str, *, inside: bool = False, names: list[str] | None = ALL) -> Outcome:
    return same_however_split(lambda chunks: engine_like(DeepSeekParser, chunks, inside=inside, names=names), text)


# -- detection and prompt ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), TEMPLATES.items())
def test_each_deepseek_template_detects_as_its_family(name: str, cls: type[ToolFormat]) -> None:
    assert type(detected(name)) is cls


@pytest.mark.parametrize("other", OTHERS)
def test_other_templates_are_not_deepseek(other: str) -> None:
    assert not isinstance(detected(other), DeepSeekV31Format)


def render(name: str, messages: list[Message], tools: list[ToolSpec], **kwargs: object) -> str:
    return render_prompt(name, messages, tools, bos_token="<｜begin▁of▁sentence｜>", **kwargs)


@pytest.mark.parametrize("name", RENDERED)
def test_the_prompt_describes_the_tools_and_the_call_syntax(name: str) -> None:
    user = [Message("system", [TextPart("Be brief.")]), Message("user", [TextPart("What time is it in Paris?")])]
    prompt = render(name, user, [GET_TIME, SPECIAL])
    for tool in (GET_TIME, SPECIAL):
        assert tool.name in prompt and tool.description in prompt
    assert "Be brief." in prompt
    assert CALLS_BEGIN in prompt  # the example of the family's own call syntax
    # With thinking on, the prompt opens the thinking block: the engine knows from the prompt.
    assert tags_for_template(template(name)) == THINK
    assert starts_thinking(render(name, user, [], enable_thinking=True), THINK)
    if name == "llama-cpp-deepseek-r1" or name.endswith("Llama-8B"):
        assert starts_thinking(prompt, THINK)  # R1 always thinks
    else:
        assert not starts_thinking(render(name, user, [], enable_thinking=False), THINK)


def test_no_tools_leaves_the_conversation_alone() -> None:
    messages = [Message("user", [TextPart("Hi")])]
    for cls in set(TEMPLATES.values()):
        assert cls().prepare_messages(messages, []) == messages


# -- parsing (llama.cpp's canned outputs) -------------------------------------------------------

R1_CALL = (
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n"
    '```json\n{"arg1": 1}```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)
V31_TWO = (
    '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
    '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)


@pytest.mark.parametrize(
    ("text", "inside", "want"),
    [
        # llama-cpp-deepseek-r1 / R1 Distill: the prompt opened the thinking block
        ("</think>" + R1_CALL, True, ("", "", [("special_function", {"arg1": 1})])),
        (R1_CALL, False, ("", "", [("special_function", {"arg1": 1})])),
        ("I'm\nthinking</think>" + CONTENT, True, (CONTENT, "I'm\nthinking", [])),
        ("</think>" + CONTENT, True, (CONTENT, "", [])),
        # V3.1
        (
            '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "XYZCITY"}'
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            False,
            ("", "", [("get_time", {"city": "XYZCITY"})]),
        ),
        (
            'REASONING</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Tokyo"}'
            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            True,
            ("", "REASONING", [("get_time", {"city": "Tokyo"})]),
        ),
        (
            "REASONING</think>CONTENT" + V31_TWO,
            True,
            ("CONTENT", "REASONING", [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})]),
        ),
        ("REASONING</think>\nCONTENT", True, ("CONTENT", "REASONING", [])),
        ("CONTENT", False, ("CONTENT", "", [])),
    ],
)
def test_canned_outputs_parse_the_same_however_split(text: str, inside: bool, want: Outcome) -> None:
    assert deepseek(text, inside=inside) == want


def test_r1_parallel_calls_as_the_template_writes_them() -> None:
    text = (
        "Checking both.<｜tool▁calls▁begin｜>"
        '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n'
        '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Rome"}\n```<｜tool▁call▁end｜>'
        "<｜tool▁calls▁end｜>"
    )
    want = ("Checking both.", "", [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])
    assert deepseek(text) == want


def test_a_call_made_inside_the_thinking_block_is_still_a_call() -> None:
    text = "Let me check." + V31_TWO
    assert deepseek(text, inside=True) == (
        "",
        "Let me check.",
        [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})],
    )


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Par', {"city": "Par"}),
        ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>", {}),
        ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{"ci', {}),
        (
            '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{"city": "X"}',
            {"city": "X"},
        ),
        ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n``", {}),
    ],
)
def test_a_call_cut_short_comes_back_with_valid_json(text: str, want: dict[str, object]) -> None:
    assert deepseek("Sure. " + text) == ("Sure. ", "", [("get_time", want)])


@pytest.mark.parametrize(
    "cut",
    [
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_ti",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_ti",
        "<｜tool▁calls▁begin｜><｜tool▁call▁be",
    ],
)
def test_markup_with_no_name_is_dropped_not_content(cut: str) -> None:
    assert deepseek("Sure. " + cut) == ("Sure. ", "", [])


@pytest.mark.parametrize("tail", ["<", "<｜", "<｜tool▁call"])
def test_a_marker_prefix_at_the_end_is_text_the_model_wrote(tail: str) -> None:
    # The markers are special tokens, sampled whole: a prefix of one that ends the output was
    # written character by character, so it is content, however long.
    assert deepseek("Sure. " + tail) == ("Sure. " + tail, "", [])


def test_a_partial_marker_is_held_back_then_released() -> None:
    parser = DeepSeekParser(names=ALL)
    assert outcome(parser.feed("Sure. <｜tool▁cal")) == ("Sure. ", "", [])
    assert outcome(parser.feed("culator") + parser.finish()) == ("<｜tool▁calculator", "", [])


def test_calls_to_unknown_tools_and_beyond_the_limit_are_dropped() -> None:
    assert deepseek(V31_TWO, names=["get_weather"]) == ("", "", [("get_weather", {"city": "Paris"})])
    parser = DeepSeekParser(names=ALL, max_calls=1)
    assert outcome(parser.feed(V31_TWO) + parser.finish())[2] == [("get_time", {"city": "Paris"})]


# -- history ----------------------------------------------------------------------------------

HISTORY = paris_history(ids=("c1", "c2"))
R1_WRITTEN = (
    '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n'
    '<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>'
)
V31_WRITTEN = (
    '<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
    '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
)


@pytest.mark.parametrize("name", RENDERED)
def test_history_renders_the_calls_in_the_family_syntax_and_parses_back(name: str) -> None:
    prompt = render(name, HISTORY, [GET_TIME, GET_WEATHER])
    written = V31_WRITTEN if TEMPLATES[name] is DeepSeekV31Format else R1_WRITTEN
    assert CALLS_BEGIN + written + CALLS_END in prompt
    assert "10:00" in prompt and "sunny" in prompt
    section = prompt[prompt.index(CALLS_BEGIN, prompt.index("Time and weather")) :]
    section = section[: section.index(CALLS_END) + len(CALLS_END)]
    assert outcome(engine_like(DeepSeekParser, [section], names=ALL))[2] == [
        ("get_time", {"city": "Paris"}),
        ("get_weather", {"city": "Paris"}),
    ]


def test_distill_history_keeps_the_text_before_the_calls() -> None:
    messages = [
        Message("user", [TextPart("Time?")]),
        Message("assistant", [TextPart("Checking."), ToolCallPart("c1", "get_time", '{"city": "Oslo"}')]),
        Message("tool", [ToolResultPart("c1", "10:00")]),
        Message("assistant", [TextPart("It is 10:00.")]),
        Message("user", [TextPart("Thanks")]),
    ]
    prompt = render("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", messages, [GET_TIME])
    assert "<｜Assistant｜>Checking." + CALLS_BEGIN in prompt
    assert "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>10:00<｜tool▁output▁end｜>" in prompt


# -- grammar ----------------------------------------------------------------------------------

V31_ONE = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
R1_ONE = (
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n"
    '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)
R1_TWO = CALLS_BEGIN + R1_WRITTEN + CALLS_END
GRAMMAR_CASES = [
    # (format, good with two tools and parallel calls, good for `function` get_time, bad for any)
    (
        DeepSeekV31Format,
        [V31_TWO, V31_ONE],
        [V31_ONE],
        [
            V31_ONE.replace("get_time", "get_tme"),
            V31_ONE.replace('"city"', '"town"'),
            V31_ONE.removesuffix(CALLS_END),
            V31_ONE.replace("<｜tool▁sep｜>", ""),
            R1_ONE,
        ],
    ),
    (
        DeepSeekR1Format,
        [R1_TWO, R1_ONE, R1_CALL.replace("special_function", "get_time").replace('"arg1": 1', '"city": "Paris"')],
        [R1_ONE],
        [
            R1_ONE.replace("get_time", "get_tme"),
            R1_ONE.replace("```json", "```"),
            R1_ONE.removesuffix(CALLS_END),
            V31_ONE,
        ],
    ),
]


@pytest.mark.parametrize("vocab_name", ["deepseek-llm", "deepseek-coder"])
@pytest.mark.parametrize(("cls", "good", "good_one", "bad"), GRAMMAR_CASES, ids=["v3.1", "r1"])
def test_forced_grammars_take_the_canned_calls_and_reject_wrong_ones(
    vocab_name: str, cls: type[ToolFormat], good: list[str], good_one: list[str], bad: list[str]
) -> None:
    vocab = real_vocab(vocab_name)
    fmt = cls()
    required = fmt.grammar([GET_TIME, GET_WEATHER], ToolChoice("required"), parallel=True)
    named = fmt.grammar([GET_TIME, GET_WEATHER], ToolChoice("function", "get_time"), parallel=True)
    assert required.triggers == () and named.triggers == ()
    for text in good:
        assert accepts(vocab, required.gbnf, text), text
    for text in good_one:
        assert accepts(vocab, named.gbnf, text), text
    assert not accepts(vocab, named.gbnf, good[0])  # two calls, or a call to another tool
    for text in bad:
        assert not accepts(vocab, required.gbnf, text), text
        assert not accepts(vocab, named.gbnf, text), text


def test_auto_grammar_is_lazy_and_starts_at_the_calls_marker() -> None:
    for cls in (DeepSeekV31Format, DeepSeekR1Format, DeepSeekR1DistillFormat):
        grammar = cls().grammar([GET_TIME], ToolChoice(), parallel=False)
        assert [t.text for t in grammar.triggers] == [CALLS_BEGIN]
    one = DeepSeekV31Format().grammar([GET_TIME, GET_WEATHER], ToolChoice(), parallel=False)
    assert accepts(real_vocab("deepseek-llm"), one.gbnf, V31_ONE)
    assert not accepts(real_vocab("deepseek-llm"), one.gbnf, V31_TWO)  # parallel_tool_calls: false


DEEPSEEK_PIECES = [
    CALLS_BEGIN, CALLS_END, "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "function", "get_time",
    "\n", "```", "json", '{"city": "Paris"}', '{"a": [1, {"b": "x"}]}', "{", "}", '"', "<｜", "Hi ", "</think>",
]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(markup(DEEPSEEK_PIECES))
def test_any_markup_parses_the_same_however_split(case: tuple[str, list[int]]) -> None:
    check_any_markup(lambda chunks: engine_like(DeepSeekParser, chunks, inside=True, names=ALL), *case)
