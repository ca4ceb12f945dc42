"""Checks shared by the tool-call family tests (tests/unit/test_family_*.py).

A family test feeds a model's canned output to its parser the way the engine does
(runtime/engine/llama.py: `<think>` split first, then the call parser), in one piece, cut at
every position and char by char, and checks that every split gives the same outcome and well
formed call events. The tool specs are llama.cpp's (tests/test-chat.cpp) and the few more the
families share; templates are llama.cpp's models/templates (tests/upstream.py).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

from hypothesis import strategies as st

from runtime.engine.reasoning import THINK, ReasoningSplitter, ThinkingTags
from runtime.engine.template import ChatTemplate
from runtime.engine.toolcalls import SnapshotParser, ToolCallParser, ToolFormat, detect_format
from runtime.engine.toolcalls.jsonscan import JsonScanner
from runtime.events import Event, ReasoningDelta, TextDelta, ToolCallDelta, ToolCallEnd, ToolCallStart
from runtime.ir import Message, Part, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.upstream import template

Outcome = tuple[str, str, list[tuple[str, object]]]
"""(content, reasoning, [(tool name, arguments parsed from JSON)]): what a client ends up with."""
Run = Callable[[list[str]], list[Event]]
"""Feeds the text chunks to a fresh parser and returns every event, `finish()`'s included."""

CONTENT = "Hello, world!\nWhat's up?"  # test-chat.cpp's message_assist content

# tests/test-chat.cpp's special_function_tool and special_function_tool_with_optional_param.
SPECIAL = ToolSpec(
    "special_function",
    "I'm special",
    {"type": "object", "properties": {"arg1": {"type": "integer", "description": "The arg."}}, "required": ["arg1"]},
)
SPECIAL_OPT = ToolSpec(
    "special_function_with_opt",
    "I'm special but have optional stuff",
    {"type": "object", "properties": {"arg1": {"type": "integer"}, "arg2": {"type": "integer"}}, "required": ["arg1"]},
)
GET_TIME = ToolSpec(
    "get_time",
    "Get the current time in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
GET_WEATHER = ToolSpec(
    "get_weather",
    "Get the weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


# -- streams ----------------------------------------------------------------------------------


def splits(text: str) -> list[list[str]]:
    """The text in one piece, cut in two at every position, and char by char."""
    return [[text]] + [[text[:k], text[k:]] for k in range(1, len(text))] + [list(text)]


def check_call_events(events: list[Event]) -> None:
    """Start, then deltas, then End per call; every streamed prefix of the arguments is valid
    JSON so far, and the deltas concatenate to End's arguments, which parse. AssertionError
    otherwise."""
    open_calls: dict[int, tuple[str, list[str]]] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            assert e.index not in open_calls
            assert e.id.startswith("call_")
            open_calls[e.index] = (e.id, [])
        elif isinstance(e, ToolCallDelta):
            assert e.index in open_calls
            open_calls[e.index][1].append(e.arguments)
            scan = JsonScanner()
            scan.feed("".join(open_calls[e.index][1]))
            assert not scan.failed, "every streamed prefix is valid JSON so far"
        elif isinstance(e, ToolCallEnd):
            call_id, parts = open_calls.pop(e.index)
            assert e.id == call_id
            assert "".join(parts) == e.arguments
            json.loads(e.arguments)
    assert not open_calls


def new_ids() -> Callable[[], str]:
    """A deterministic call-id maker: `call_0`, `call_1`, ..."""
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def engine_events(
    parser: ToolCallParser | SnapshotParser,
    chunks: list[str],
    *,
    tags: ThinkingTags | None = THINK,
    inside: bool = False,
) -> list[Event]:
    """The events the engine makes of `chunks` (runtime/engine/llama.py `_convert`): `tags`
    split first (`inside`: the prompt opened the thinking block), then `parser` on every
    segment, told when a thinking block ends; text in a thinking block becomes reasoning,
    calls there stay calls. `tags=None`: the parser alone. Ends with `parser.finish()`."""
    if tags is None:
        return [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    splitter = ReasoningSplitter(tags, inside=inside)
    thinking = [inside]

    def convert(segments: list[tuple[bool, str]]) -> list[Event]:
        out: list[Event] = []
        for is_thinking, segment in segments:
            if thinking[0] and not is_thinking:
                parser.start_answer()
            thinking[0] = is_thinking
            out += [
                ReasoningDelta(e.text) if is_thinking and isinstance(e, TextDelta) else e for e in parser.feed(segment)
            ]
        return out

    events: list[Event] = []
    for chunk in chunks:
        events += convert(splitter.feed(chunk))
    return events + convert(splitter.flush()) + parser.finish()


def engine_like(
    parser_class: type[SnapshotParser],
    chunks: list[str],
    *,
    inside: bool = False,
    names: list[str] | None = None,
    tags: ThinkingTags | None = THINK,
) -> list[Event]:
    """`engine_events` with a fresh `parser_class(names=names)` and deterministic ids
    (`names=None`: any tool name is a call)."""
    return engine_events(parser_class(names=names, new_id=new_ids()), chunks, tags=tags, inside=inside)


# -- outcomes ---------------------------------------------------------------------------------


def outcome(events: list[Event]) -> Outcome:
    """(content, reasoning, [(name, arguments as JSON)]) of the events."""
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    return content, reasoning, [(e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCallEnd)]


def same_however_split(run: Run, text: str) -> Outcome:
    """The outcome of `text`, checked (AssertionError) to be the same for every split of the
    stream (`splits`), each with well formed call events (`check_call_events`)."""
    whole = outcome(run([text]))
    for chunks in splits(text):
        events = run(chunks)
        check_call_events(events)
        assert outcome(events) == whole, chunks
    return whole


def parse_however_split(
    fmt: ToolFormat, tools: list[ToolSpec], text: str, *, parallel: bool = True
) -> tuple[str, list[tuple[str, object]]]:
    """(content, [(name, arguments as JSON)]) of `fmt`'s parser (auto choice) on `text`,
    checked to be the same - arguments byte for byte - for every split, each with well formed
    call events. The parser alone: no thinking split."""
    results = []
    for chunks in splits(text):
        parser = fmt.parser(tools, ToolChoice(), parallel)
        events: list[Event] = []
        for chunk in chunks:
            events += parser.feed(chunk)
        events += parser.finish()
        check_call_events(events)
        content = "".join(e.text for e in events if isinstance(e, TextDelta))
        results.append((content, [(e.name, e.arguments) for e in events if isinstance(e, ToolCallEnd)]))
    assert all(r == results[0] for r in results), "the split changed the outcome"
    content, calls = results[0]
    return content, [(name, json.loads(arguments)) for name, arguments in calls]


def markup(pieces: list[str]) -> st.SearchStrategy[tuple[str, list[int]]]:
    """Texts made of a family's markup fragments (any order, up to 14), with up to 4 cut
    points (character offsets) for the stream."""
    text = st.lists(st.sampled_from(pieces), max_size=14).map("".join)
    return text.flatmap(lambda t: st.tuples(st.just(t), st.lists(st.integers(0, len(t)), max_size=4)))


def check_any_markup(run: Run, text: str, cuts: list[int]) -> None:
    """Never raises; calls well formed; the same outcome in one piece, cut at `cuts`, and char
    by char."""
    bounds = [0, *sorted(cuts), len(text)]
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole = run([text])
    for events in (whole, run(chunks), run(list(text))):
        check_call_events(events)
        assert outcome(events) == outcome(whole), chunks


# -- templates --------------------------------------------------------------------------------


def detected(name: str) -> ToolFormat:
    """The format `detect_format` picks for llama.cpp's template `name` (tests/upstream.py)."""
    return detect_format(template(name))


def render_prompt(
    name: str,
    messages: list[Message],
    tools: list[ToolSpec],
    *,
    fmt: ToolFormat | None = None,
    bos_token: str = "",
    eos_token: str = "",
    **kwargs: object,
) -> str:
    """The prompt template `name` renders for `messages` and `tools` after `fmt` (default: the
    detected format) prepared the messages, with its `string_arguments`; `kwargs` go to the
    template (`enable_thinking=...`)."""
    fmt = fmt or detected(name)
    return ChatTemplate(template(name), bos_token=bos_token, eos_token=eos_token).render(
        fmt.prepare_messages(messages, tools), tools=tools, string_arguments=fmt.string_arguments, **kwargs
    )


def paris_history(*said: Part, ids: tuple[str, str] = ("call_a", "call_b")) -> list[Message]:
    """A finished round: the user asks for the time and weather in Paris, the assistant says
    `said` then calls get_time and get_weather (ids `ids`), the results "10:00" and "sunny"
    come back in order."""
    return [
        Message("user", [TextPart("Time and weather in Paris?")]),
        Message(
            "assistant",
            [
                *said,
                ToolCallPart(ids[0], "get_time", '{"city": "Paris"}'),
                ToolCallPart(ids[1], "get_weather", '{"city": "Paris"}'),
            ],
        ),
        Message("tool", [ToolResultPart(ids[0], "10:00", name="get_time")]),
        Message("tool", [ToolResultPart(ids[1], "sunny", name="get_weather")]),
    ]
