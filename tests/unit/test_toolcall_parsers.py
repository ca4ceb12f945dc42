"""Streaming tool-call parsers: events from text deltas, however the text is split."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engine.toolcalls import (
    GenericFormat,
    GenericParser,
    HermesFormat,
    HermesParser,
    Llama3Format,
    Llama3Parser,
    MistralFormat,
    MistralParser,
    ToolCallParser,
    ToolFormat,
    detect_format,
)
from runtime.engine.toolcalls.generic import prepare_generic
from runtime.engine.toolcalls.jsonscan import JsonScanner
from runtime.events import Event, TextDelta, ToolCallEnd
from runtime.ir import Message, TextPart, ToolCallPart, ToolResultPart, ToolSpec
from tests.family_checks import check_call_events, splits


def make(cls: type[ToolCallParser], **kwargs: object) -> ToolCallParser:
    counter = itertools.count()
    return cls(new_id=lambda: f"call_{next(counter)}", **kwargs)  # type: ignore[arg-type]


def run(cls: type[ToolCallParser], chunks: list[str], **kwargs: object) -> list[Event]:
    parser = make(cls, **kwargs)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.finish()


def outcome(events: list[Event]) -> tuple[str, list[tuple[str, str, str]]]:
    """(all text, [(id, name, arguments)]) - what a client ends up with."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [(e.id, e.name, e.arguments) for e in events if isinstance(e, ToolCallEnd)]
    return text, calls


HERMES_TWO = (
    "Let me look that up.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
)
MISTRAL_TWO = (
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "get_time", "arguments": {"tz": "CET"}, "id": "a1b2c3d4e"}]'
)
LLAMA3_TWO = '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}'
GENERIC_TWO = (
    '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
    '{"name": "get_time", "arguments": {"tz": "CET"}}]}'
)

CASES = [
    (
        HermesParser,
        HERMES_TWO,
        "Let me look that up.\n",
        [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("get_time", '{"tz": "Europe/Paris"}')],
    ),
    (MistralParser, MISTRAL_TWO, "", [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]),
    (Llama3Parser, LLAMA3_TWO, "", [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]),
    (GenericParser, GENERIC_TWO, "", [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]),
    (
        Llama3Parser,
        'Checking. <|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        "Checking. ",
        [("get_weather", '{"city": "Oslo"}')],
    ),
]


@pytest.mark.parametrize(("cls", "text", "want_text", "want_calls"), CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_two_calls_parse_the_same_however_the_stream_is_split(
    cls: type[ToolCallParser], text: str, want_text: str, want_calls: list[tuple[str, str]]
) -> None:
    for chunks in splits(text):
        events = run(cls, chunks)
        check_call_events(events)
        got_text, calls = outcome(events)
        assert got_text == want_text, chunks
        assert [(name, args) for _, name, args in calls] == want_calls, chunks
        assert [call_id for call_id, _, _ in calls] == [f"call_{i}" for i in range(len(want_calls))]


@pytest.mark.parametrize(
    ("cls", "marker"),
    [(HermesParser, "<tool_call>"), (MistralParser, "[TOOL_CALLS]"), (Llama3Parser, "<|python_tag|>")],
)
def test_a_partial_marker_is_held_back_never_sent_as_text(cls: type[ToolCallParser], marker: str) -> None:
    parser = make(cls)
    for k in range(1, len(marker)):
        parser = make(cls)
        events = parser.feed("Sure. " + marker[:k])
        assert outcome(events)[0] == "Sure. ", marker[:k]
    # ...and released once it turns out not to be a marker.
    events = parser.feed("x") + parser.finish()
    assert outcome(events)[0] == marker[:-1] + "x"


def test_arguments_stream_in_fragments_between_start_and_end() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2, 3]}}</tool_call>'
    events = run(HermesParser, list(text))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "ToolCallStart" and kinds[-1] == "ToolCallEnd"
    assert kinds.count("ToolCallDelta") > 5
    check_call_events(events)


@pytest.mark.parametrize(
    ("cls", "text"),
    [
        (HermesParser, "I think <tool_call>not json at all</tool_call> is it."),
        (HermesParser, '<tool_call>{"name": "get_weather" "arguments": {}}</tool_call>'),
        (HermesParser, '<tool_call>{"name": "get_weather", "arguments": {"city": Paris}}'),
        (MistralParser, "[TOOL_CALLS] oops"),
        (Llama3Parser, '{"answer": 42, "name": "not a call"}'),
        (GenericParser, '{"country": "Peru", "reason": "llamas"}'),
        (GenericParser, '{"tool_calls": [{"name": "get_weather", "arguments": {"city": '),
    ],
)
def test_malformed_calls_degrade_to_text_and_never_raise(cls: type[ToolCallParser], text: str) -> None:
    for chunks in splits(text):
        events = run(cls, chunks, names=["get_weather"])
        got_text, calls = outcome(events)
        if calls:  # committed before it broke: arguments closed into valid JSON
            assert len(calls) == 1
            json.loads(calls[0][2])
        else:
            assert got_text == text, chunks


def test_broken_off_arguments_are_closed_into_valid_json() -> None:
    events = run(HermesParser, ['<tool_call>{"name": "f", "arguments": {"q": "caf', "\\u00e"])
    check_call_events(events)
    assert outcome(events)[1] == [("call_0", "f", '{"q": "caf\\u00e0"}')]


def test_calls_to_unknown_tools_are_dropped_not_shown_as_content() -> None:
    text = 'Sure. <tool_call>{"name": "rm_rf", "arguments": {}}</tool_call> Done.'
    for chunks in splits(text):
        assert outcome(run(HermesParser, chunks, names=["get_weather"])) == ("Sure. Done.", [])
    # With no tool allowed at all (the agent loop's last round), markup is still not content.
    assert outcome(run(HermesParser, [text], names=[])) == ("Sure. Done.", [])


def test_call_markup_cut_by_max_tokens_is_not_content() -> None:
    for text in ["<tool_call>\n", '<tool_call>\n{"na', 'Hi <tool_call>{"name": "get_wea']:
        assert outcome(run(HermesParser, [text]))[0] == ("Hi " if text.startswith("Hi") else "")


def test_arguments_in_another_key_order_or_as_a_string_still_parse() -> None:
    text = '<tool_call>{"arguments": "{\\"city\\": \\"Rome\\"}", "name": "get_weather"}</tool_call>'
    for chunks in splits(text):
        events = run(HermesParser, chunks)
        check_call_events(events)
        assert outcome(events)[1] == [("call_0", "get_weather", '{"city": "Rome"}')]


def test_at_most_max_calls_are_emitted() -> None:
    events = run(GenericParser, [GENERIC_TWO], max_calls=1)
    assert [name for _, name, _ in outcome(events)[1]] == ["get_weather"]
    assert outcome(events)[0] == ""


def test_generic_envelope_only_counts_at_the_start() -> None:
    text = 'Here is JSON: {"tool_calls": []}'
    assert outcome(run(GenericParser, [text])) == (text, [])
    assert outcome(run(GenericParser, ["  \n", "Hi"])) == ("  \nHi", [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(HERMES_TWO)), max_size=12))
def test_any_chunking_gives_the_same_events_as_one_piece(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [HERMES_TWO[a:b] for a, b in zip([0, *points], [*points, len(HERMES_TWO)], strict=True)]
    assert outcome(run(HermesParser, chunks)) == outcome(run(HermesParser, [HERMES_TWO]))


def test_detect_format_from_template_source() -> None:
    assert isinstance(detect_format("{{ '<tool_call>' }}{{ tools | tojson }}"), HermesFormat)
    assert isinstance(detect_format("[AVAILABLE_TOOLS] {{ tools }} [TOOL_CALLS]"), MistralFormat)
    assert isinstance(detect_format("<|start_header_id|>ipython ... <|python_tag|>"), Llama3Format)
    assert isinstance(detect_format("{% for m in messages %}{{ m['content'] }}{% endfor %}"), GenericFormat)
    assert isinstance(detect_format(None), GenericFormat)


def test_generic_history_renders_calls_and_results_as_plain_messages() -> None:
    tools = [ToolSpec("get_weather", "Weather for a city", {"type": "object", "properties": {"city": {}}})]
    messages = [
        Message("system", [TextPart("Be brief.")]),
        Message("user", [TextPart("Weather in Paris and Rome?")]),
        Message(
            "assistant",
            [
                ToolCallPart("call_1", "get_weather", '{"city": "Paris"}'),
                ToolCallPart("call_2", "get_weather", '{"city": "Rome"}'),
            ],
        ),
        Message("tool", [ToolResultPart("call_1", "18C")]),
        Message("tool", [ToolResultPart("call_2", "25C")]),
    ]
    out = prepare_generic(messages, tools)
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].text.startswith("Be brief.\n\n# Tools") and '"name": "get_weather"' in out[0].text
    assert json.loads(out[2].text) == {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_weather", "arguments": {"city": "Rome"}},
        ]
    }
    # Results in plain text: a small model answers from them instead of copying JSON back.
    assert out[3].text == "Result of get_weather:\n18C\n\nResult of get_weather:\n25C"
    # Without tools on offer the history is still rewritten, and no tools block is added.
    assert [m.role for m in prepare_generic(messages, [])] == ["system", "user", "assistant", "user"]
    assert "# Tools" not in prepare_generic(messages, [])[0].text


def test_mistral_history_gets_nine_character_ids() -> None:
    messages = [
        Message("assistant", [ToolCallPart("call_abcdef0123456789", "f", "{}")]),
        Message("tool", [ToolResultPart("call_abcdef0123456789", "ok")]),
    ]
    out = MistralFormat().prepare_messages(messages, [])
    call, result = out[0].parts[0], out[1].parts[0]
    assert isinstance(call, ToolCallPart) and isinstance(result, ToolResultPart)
    assert len(call.id) == 9 and call.id.isalnum() and call.id == result.call_id


def test_an_unfinished_call_after_complete_ones_is_dropped_not_sent_as_text() -> None:
    text = '{"tool_calls": [{"name": "get_time", "arguments": {}}, {"'
    for chunks in splits(text):
        assert outcome(run(GenericParser, chunks)) == ("", [("call_0", "get_time", "{}")])


@pytest.mark.parametrize(
    ("prefix", "healed"),
    [
        ('{"a": 1,', '{"a": 1}'),
        ('{"a', "{}"),
        ('{"a": ', "{}"),
        ('{"a": "x\\', '{"a": "x\\\\"}'),
        ('{"a": "\\u00', '{"a": "\\u0000"}'),
        ('{"a": [1, {"b": -', '{"a": [1, {"b": -0}]}'),
        ('{"a": 1.', '{"a": 1.0}'),
        ('{"a": tr', '{"a": true}'),
        ("[1, 2", "[1, 2]"),
    ],
)
def test_json_scanner_closes_a_broken_off_value(prefix: str, healed: str) -> None:
    scan = JsonScanner()
    assert scan.feed(prefix) == len(prefix)
    assert prefix[: scan.safe] + scan.heal() == healed
    json.loads(healed)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_every_prefix_of_valid_json_heals_into_valid_json(value: object, ascii_only: bool) -> None:
    text = json.dumps({"v": value}, ensure_ascii=ascii_only)
    for cut in range(len(text) + 1):
        scan = JsonScanner()
        assert scan.feed(text[:cut]) == cut
        assert not scan.failed
        json.loads(text[: scan.safe] + scan.heal())
    scan = JsonScanner()
    scan.feed(text + " tail")
    assert scan.done and scan.consumed == len(text)


@pytest.mark.parametrize("fmt", [GenericFormat(), HermesFormat()], ids=lambda f: f.name)
def test_the_last_round_grammar_allows_any_answer_but_no_call(fmt: ToolFormat) -> None:
    # The agent loop's last round (no tool left to run): the model must answer in text.
    from tests.grammar_check import accepts, real_vocab

    gbnf = fmt.no_calls_grammar()
    assert gbnf is not None
    vocab = real_vocab("llama-bpe")
    assert accepts(vocab, gbnf, "The answer is 56088.")
    assert accepts(vocab, gbnf, "A set {1, 2} and a brace } are fine inside the text.")
    call = '{"tool_calls": [{"name": "python", "arguments": {}}]}' if fmt.name == "generic" else "<tool_call>"
    assert not accepts(vocab, gbnf, call)
