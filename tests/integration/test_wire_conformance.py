"""Issue #14 items on the real server (the packaged SmolLM2, greedy) through the official SDKs,
where the other tests reach them only below the HTTP layer: grammar literals of any code point
(`const`/`enum` outside the BMP, in all three dialects and in tool-call arguments), `not: {}` and
`false` schemas as pydantic and MCP servers write them, and each dialect's stream read by three
SSE parsers (the openai SDK's decoder, the anthropic SDK's decoder, a plain split on a blank LF
line), which must see the same events."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic._streaming import SSEDecoder as AnthropicDecoder
from openai._streaming import SSEDecoder as OpenAIDecoder

from tests.servers import CliServer

pytestmark = pytest.mark.integration

PARTY = "\U0001f389"  # 🎉: four UTF-8 bytes, outside the BMP (was U+FFFD before #14)
CHOICES = [
    "\U0001d518nicode",
    "\U0001f600\U0001f44d\U0001f3fd",
    "caf\u00e9 \u6771\u4eac",
]  # fraktur U, emoji with a skin tone, Latin-1 and CJK
LITERALS = {
    "type": "object",
    "properties": {"s": {"const": PARTY}, "e": {"enum": CHOICES}},
    "required": ["s", "e"],
    "additionalProperties": False,
}
# What pydantic writes for a field that excludes a type, and what MCP servers forward from it.
NOT_EMPTY = {
    "type": "object",
    "properties": {
        "flag": {"anyOf": [{"anyOf": [{"not": {}}, {"type": "boolean"}]}, {"type": "null"}]},
        "other": {"anyOf": [False, {"type": "integer"}]},
        "gone": {"not": {}},  # a property that can never be present
    },
    "required": ["flag", "other"],
    "additionalProperties": {"not": {}},  # = additionalProperties: false
}
ASK = "Fill in the JSON object."
DIALECTS = ["chat", "responses", "messages"]


def check_literals(value: Any) -> None:
    assert value == {"s": PARTY, "e": value["e"]}, value
    assert value["e"] in CHOICES


def check_not_empty(value: Any) -> None:
    assert set(value) == {"flag", "other"}, value
    assert value["flag"] in (True, False, None) and isinstance(value["other"], int)


def structured(
    dialect: str, oai: openai.OpenAI, claude: anthropic.Anthropic, schema: dict[str, Any], stream: bool
) -> str:
    """The reply text of a structured-output request (json_schema, strict) in one dialect."""
    if dialect == "chat":
        kwargs: Any = {
            "model": "m",
            "messages": [{"role": "user", "content": ASK}],
            "max_tokens": 80,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
        }
        if not stream:
            return oai.chat.completions.create(**kwargs).choices[0].message.content or ""
        chunks = oai.chat.completions.create(**kwargs, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if dialect == "responses":
        text: Any = {"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}}
        if not stream:
            return oai.responses.create(model="m", input=ASK, max_output_tokens=80, text=text).output_text
        events = oai.responses.create(model="m", input=ASK, max_output_tokens=80, text=text, stream=True)
        return "".join(e.delta for e in events if e.type == "response.output_text.delta")
    output_config: Any = {"format": {"type": "json_schema", "schema": schema}}
    messages: Any = [{"role": "user", "content": ASK}]
    if not stream:
        message = claude.messages.create(model="m", max_tokens=80, messages=messages, output_config=output_config)
        return "".join(b.text for b in message.content if b.type == "text")
    with claude.messages.stream(model="m", max_tokens=80, messages=messages, output_config=output_config) as s:
        return "".join(s.text_stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_astral_const_and_enum_are_exact_in_every_dialect(
    oai: openai.OpenAI, claude: anthropic.Anthropic, dialect: str, stream: bool
) -> None:
    # Streamed, an emoji spans several tokens: no delta may carry a half character as U+FFFD.
    text = structured(dialect, oai, claude, LITERALS, stream)
    assert "\ufffd" not in text, text
    check_literals(json.loads(text))


def call_arguments(dialect: str, oai: openai.OpenAI, claude: anthropic.Anthropic, schema: dict[str, Any]) -> Any:
    """The arguments of one forced call to `fill`, whose parameters are `schema`."""
    description = "Record the values."
    if dialect == "chat":
        tool: Any = {
            "type": "function",
            "function": {"name": "fill", "description": description, "parameters": schema, "strict": True},
        }
        choice: Any = {"type": "function", "function": {"name": "fill"}}
        message = (
            oai.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": ASK}],
                tools=[tool],
                tool_choice=choice,
                parallel_tool_calls=False,
                max_tokens=120,
            )
            .choices[0]
            .message
        )
        assert message.tool_calls, message
        return json.loads(message.tool_calls[0].function.arguments)  # type: ignore[union-attr]
    if dialect == "responses":
        tool = {"type": "function", "name": "fill", "description": description, "parameters": schema, "strict": True}
        response = oai.responses.create(
            model="m",
            input=ASK,
            tools=[tool],
            tool_choice={"type": "function", "name": "fill"},
            parallel_tool_calls=False,
            max_output_tokens=120,
        )
        calls = [item for item in response.output if item.type == "function_call"]
        assert calls, response.output
        return json.loads(calls[0].arguments)  # type: ignore[union-attr]
    message = claude.messages.create(
        model="m",
        max_tokens=120,
        messages=[{"role": "user", "content": ASK}],
        tools=[{"name": "fill", "description": description, "input_schema": schema}],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "fill", "disable_parallel_tool_use": True},
    )
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses, message.content
    return uses[0].input  # type: ignore[union-attr]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_astral_literals_in_tool_call_arguments(oai: openai.OpenAI, claude: anthropic.Anthropic, dialect: str) -> None:
    check_literals(call_arguments(dialect, oai, claude, LITERALS))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_not_empty_and_false_schemas_are_served_exactly(
    oai: openai.OpenAI, claude: anthropic.Anthropic, dialect: str
) -> None:
    # Before #14 each of these was a 400 ("keyword 'not' is not supported").
    check_not_empty(json.loads(structured(dialect, oai, claude, NOT_EMPTY, stream=False)))
    check_not_empty(call_arguments(dialect, oai, claude, NOT_EMPTY))


def test_any_other_not_is_still_a_400_naming_it_in_each_dialects_shape(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}, "required": ["a"]}
    for dialect in ("chat", "responses"):
        with pytest.raises(openai.BadRequestError) as caught:
            structured(dialect, oai, claude, schema, stream=False)
        assert "not" in caught.value.message, dialect
    with pytest.raises(anthropic.BadRequestError) as refused:
        structured("messages", oai, claude, schema, stream=False)
    body: Any = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "not" in body["error"]["message"]


# -- three SSE parsers, one stream ---------------------------------------------------------------

STREAMS: dict[str, tuple[str, dict[str, Any]]] = {
    # n=2 with logprobs: the frames carry choice indexes and nested JSON.
    "chat": (
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 12,
            "n": 2,
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    "responses": (
        "/v1/responses",
        {
            "model": "m",
            "input": "Name three colours.",
            "max_output_tokens": 12,
            "include": ["message.output_text.logprobs"],
            "top_logprobs": 2,
            "stream": True,
        },
    ),
    "messages": (
        "/v1/messages",
        {
            "model": "m",
            "max_tokens": 12,
            "messages": [{"role": "user", "content": "Name three colours."}],
            "stream": True,
        },
    ),
}


def split_on_blank_lines(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) of each event, the way hand-written clients read SSE (one `data:` line)."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) <= {"event", "data"}, block
        events.append((fields.get("event"), fields["data"]))
    return events


def in_pieces(raw: bytes, size: int) -> Iterator[bytes]:
    """The body as a network might deliver it: cut anywhere, mid-line and mid-character."""
    return (raw[i : i + size] for i in range(0, len(raw), size))


def sdk_text(dialect: str, oai: openai.OpenAI, claude: anthropic.Anthropic) -> dict[int, str]:
    """Each choice's text as the SDK client's own stream reads it."""
    body = {k: v for k, v in STREAMS[dialect][1].items() if k != "stream"}
    if dialect == "chat":
        text = {0: "", 1: ""}
        for chunk in oai.chat.completions.create(**body, stream=True):
            for choice in chunk.choices:
                text[choice.index] += choice.delta.content or ""
        return text
    if dialect == "responses":
        events = oai.responses.create(**body, stream=True)
        return {0: "".join(e.delta for e in events if e.type == "response.output_text.delta")}
    with claude.messages.stream(**body) as stream:
        return {0: "".join(stream.text_stream)}


def wire_text(dialect: str, events: list[tuple[str | None, str]]) -> dict[int, str]:
    """Each choice's text from the parsed events' JSON."""
    payloads = [json.loads(data) for _, data in events if data != "[DONE]"]
    if dialect == "chat":
        text = {0: "", 1: ""}
        for chunk in payloads:
            for choice in chunk["choices"]:
                text[choice["index"]] += choice["delta"].get("content") or ""
        return text
    kind = "response.output_text.delta" if dialect == "responses" else "content_block_delta"
    return {
        0: "".join(p["delta"]["text"] if dialect == "messages" else p["delta"] for p in payloads if p["type"] == kind)
    }


@pytest.mark.parametrize("dialect", DIALECTS)
def test_three_sse_parsers_read_the_same_events(
    real_server: CliServer, real_key: str, oai: openai.OpenAI, claude: anthropic.Anthropic, dialect: str
) -> None:
    path, body = STREAMS[dialect]
    headers = {"Authorization": f"Bearer {real_key}", "x-api-key": real_key}
    with httpx.stream("POST", f"{real_server.base_url}{path}", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    assert b"\r" not in raw and raw.endswith(b"\n\n")  # LF framing, as OpenAI and Anthropic send

    split = split_on_blank_lines(raw)
    decoders: dict[str, Callable[[], Any]] = {"openai": OpenAIDecoder, "anthropic": AnthropicDecoder}
    for name, decoder in decoders.items():
        for size in (len(raw), 7, 1):
            decoded = [(sse.event, sse.data) for sse in decoder().iter_bytes(in_pieces(raw, size))]
            assert decoded == split, (name, size)
    assert len(split) >= 6

    if dialect == "chat":
        assert split[-1] == (None, "[DONE]")
        indexes = {c["index"] for _, d in split[:-1] for c in json.loads(d)["choices"]}
        assert indexes == {0, 1}
    else:  # named events: the `event:` line is the payload's type
        assert all(event == json.loads(data)["type"] for event, data in split)
    # Greedy: the SDK client's own stream of the same request reads the same text.
    text = wire_text(dialect, split)
    assert all(text.values()) and text == sdk_text(dialect, oai, claude)
