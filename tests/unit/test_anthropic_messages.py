"""Anthropic Messages responses with a scripted engine, through the official anthropic SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from runtime.errors import ContextLengthExceeded, EngineFailure, Overloaded
from runtime.events import (
    Event,
    Finished,
    PromptUsage,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
)
from runtime.ir import ChatRequest
from tests.conftest import FakeServer

HI: list[Any] = [{"role": "user", "content": "hi"}]
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
CALL = [
    TextDelta("Let me check."),
    ToolCallStart(0, "call_1", "get_weather"),
    ToolCallDelta(0, '{"city": '),
    ToolCallDelta(0, '"Paris"}'),
    ToolCallEnd(0, "call_1", "get_weather", '{"city": "Paris"}'),
]


def dump(content: list[Any]) -> list[dict[str, Any]]:
    """Blocks as plain dicts: the stream helper's `Parsed*` block classes compare unequal to the
    plain ones even with identical fields."""
    return [{k: v for k, v in block.to_dict().items() if k != "parsed_output"} for block in content]


def sse_frames(server: FakeServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) for each frame of a raw streamed response."""
    with httpx.stream(
        "POST", f"{server.base_url}/v1/messages", json={**body, "stream": True}, headers={"x-api-key": server.key}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = []
    for chunk in raw.replace("\r\n", "\n").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.strip().splitlines() if ": " in line)
        if lines:
            frames.append((lines["event"], json.loads(lines["data"])))
    return frames


def test_create_text(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue([TextDelta("Hello"), TextDelta(" there"), Usage(12, 2)])
    message = fake_server.anthropic().messages.create(model="claude-whatever", max_tokens=50, messages=HI)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "fake-model")
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello there")]  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 2)
    assert message.usage.cache_creation_input_tokens == 0
    assert fake_server.engine.requests[-1].sampling.max_tokens == 50


def test_cached_tokens_are_apart_from_input_tokens(fake_server: FakeServer) -> None:
    script = [TextDelta("x"), Usage(prompt_tokens=100, completion_tokens=1, cached_tokens=60)]
    fake_server.engine.enqueue(script, script)
    client = fake_server.anthropic()
    usage = client.messages.create(model="m", max_tokens=5, messages=HI).usage
    # Anthropic's total prompt is input + cache_read + cache_creation.
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (40, 60, 0)
    with client.messages.stream(model="m", max_tokens=5, messages=HI) as stream:
        assert stream.get_final_message().usage == usage


def test_message_start_counts_the_prompt(fake_server: FakeServer) -> None:
    # Claude Code's context meter reads the prompt size from `message_start`, not the end.
    script = [PromptUsage(100, 60), TextDelta("x"), Usage(prompt_tokens=100, completion_tokens=1, cached_tokens=60)]
    fake_server.engine.enqueue(script)
    frames = sse_frames(fake_server, {"model": "m", "max_tokens": 9, "messages": HI})
    assert frames[0][0] == "message_start"
    usage = frames[0][1]["message"]["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (40, 60, 0)


def test_stream_text_and_final_message(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("Hello there friend", "Hello there friend")
    client = fake_server.anthropic()
    whole = client.messages.create(model="m", max_tokens=50, messages=HI)
    with client.messages.stream(model="m", max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there friend"
    assert dump(final.content) == dump(whole.content)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == whole.usage.input_tokens > 0
    assert final.usage.output_tokens == whole.usage.output_tokens == 3


def test_stream_event_sequence(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue([TextDelta("a"), TextDelta("b"), Usage(7, 2)])
    frames = sse_frames(fake_server, {"model": "m", "max_tokens": 9, "messages": HI})
    assert [name for name, _ in frames] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in frames)
    start = frames[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert frames[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert frames[3][1]["delta"] == {"type": "text_delta", "text": "a"}
    assert frames[6][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert frames[6][1]["usage"]["output_tokens"] == 2 and frames[6][1]["usage"]["input_tokens"] == 7


def test_empty_answer_still_has_a_text_block(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue([Usage(3, 0)], [Usage(3, 0)])
    message = fake_server.anthropic().messages.create(model="m", max_tokens=5, messages=HI)
    assert message.content[0].text == ""  # type: ignore[union-attr]
    names = [name for name, _ in sse_frames(fake_server, {"model": "m", "max_tokens": 5, "messages": HI})]
    assert names[1:4] == ["content_block_start", "ping", "content_block_stop"]


def test_tool_use_non_stream(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(CALL)
    message = fake_server.anthropic().messages.create(model="m", max_tokens=50, messages=HI, tools=TOOLS)
    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert call.type == "tool_use"
    assert call.id.startswith("toolu_")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})


def test_tool_use_stream_input_json_deltas(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(CALL, CALL)
    client = fake_server.anthropic()
    whole = client.messages.create(model="m", max_tokens=50, messages=HI, tools=TOOLS)
    with client.messages.stream(model="m", max_tokens=50, messages=HI, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partial = [e.partial_json for e in events if e.type == "input_json"]
    assert "".join(partial) == '{"city": "Paris"}' and len(partial) == 2
    assert final.stop_reason == "tool_use"
    assert dump(final.content) == dump(whole.content)  # the SDK assembled the input from the deltas
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["text", "tool_use"]


def test_tool_call_arguments_only_at_the_end(fake_server: FakeServer) -> None:
    script = [ToolCallStart(0, "c", "get_weather"), ToolCallEnd(0, "c", "get_weather", '{"city": "Oslo"}')]
    fake_server.engine.enqueue(script)
    with fake_server.anthropic().messages.stream(model="m", max_tokens=5, messages=HI, tools=TOOLS) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]


def test_thinking_block_with_signature(fake_server: FakeServer) -> None:
    script = [ReasoningDelta("think "), ReasoningDelta("hard"), TextDelta("42")]
    fake_server.engine.enqueue(script, script)
    client = fake_server.anthropic()
    kwargs: dict[str, Any] = dict(
        model="m", max_tokens=2048, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    whole = client.messages.create(**kwargs)
    thinking, text = whole.content
    assert thinking.type == "thinking" and thinking.thinking == "think hard" and thinking.signature
    assert text.type == "text" and text.text == "42"
    with client.messages.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert "".join(e.thinking for e in events if e.type == "thinking") == "think hard"
    assert [e.signature for e in events if e.type == "signature"] == [thinking.signature]
    assert dump(final.content) == dump(whole.content)
    assert fake_server.engine.requests[-1].reasoning is True


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_and_max_tokens_finishes(fake_server: FakeServer, stream: bool) -> None:
    fake_server.engine.enqueue(
        [TextDelta("one two"), Finished("stop_sequence", stop_sequence="END")],
        [TextDelta("one two"), Finished("length")],
    )
    client = fake_server.anthropic()
    kwargs: dict[str, Any] = dict(model="m", max_tokens=2, messages=HI, stop_sequences=["END", "STOP"])
    if stream:
        with client.messages.stream(**kwargs) as s:
            first = s.get_final_message()
        with client.messages.stream(**kwargs) as s:
            second = s.get_final_message()
    else:
        first = client.messages.create(**kwargs)
        second = client.messages.create(**kwargs)
    assert (first.stop_reason, first.stop_sequence) == ("stop_sequence", "END")
    assert (second.stop_reason, second.stop_sequence) == ("max_tokens", None)
    assert fake_server.engine.requests[-1].sampling.stop == ["END", "STOP"]


def test_server_tool_frames_are_tolerated_by_the_sdk(fake_server: FakeServer) -> None:
    script = [
        TextDelta("Computing."),
        ToolRunStart("call_9", "python", '{"code": "1+1"}'),
        ToolResult("call_9", "python", '{"code": "1+1"}', "2"),
        TextDelta(" The answer is 2."),
        Finished("tool_calls"),  # the loop's inner finish must never surface as a client tool call
    ]
    fake_server.engine.enqueue(script, script, script, script)
    client = fake_server.anthropic()

    with client.messages.stream(model="m", max_tokens=50, messages=HI) as stream:
        assert "".join(stream.text_stream) == "Computing. The answer is 2."
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert [b.type for b in final.content] == ["text"]

    with client.messages.stream(model="m", max_tokens=50, messages=HI) as stream:
        extra = [e for e in stream if e.type in ("tool_call", "tool_result")]
    assert [e.type for e in extra] == ["tool_call", "tool_result"]
    assert extra[1].model_extra is not None and extra[1].model_extra["output"] == "2"

    frames = sse_frames(fake_server, {"model": "m", "max_tokens": 50, "messages": HI})
    by_name = {name: data for name, data in frames}
    assert by_name["tool_call"] == {
        "type": "tool_call",
        "id": "toolu_9",
        "name": "python",
        "arguments": '{"code": "1+1"}',
        "status": "running",
    }
    assert by_name["tool_result"] == {
        "type": "tool_result",
        "tool_use_id": "toolu_9",
        "name": "python",
        "arguments": '{"code": "1+1"}',
        "output": "2",
        "is_error": False,
        "attachments": [],
        "session_restored": False,
    }

    whole = client.messages.create(model="m", max_tokens=50, messages=HI)
    assert whole.stop_reason == "end_turn"
    assert [b.type for b in whole.content] == ["text"]
    assert whole.model_extra is not None and whole.model_extra["tool_results"][0]["output"] == "2"


def test_errors_before_the_stream_are_plain_responses(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(ContextLengthExceeded("too long"), Overloaded("busy"))
    client = fake_server.anthropic()
    with (
        pytest.raises(anthropic.BadRequestError) as caught,
        client.messages.stream(model="m", max_tokens=5, messages=HI) as stream,
    ):
        stream.get_final_message()
    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": "too long"}}
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.create(model="m", max_tokens=5, messages=HI)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_error_after_headers_is_an_error_event(fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def breaks_midway(request: ChatRequest) -> AsyncIterator[Event]:
        yield TextDelta("partial")
        raise EngineFailure("the model crashed")

    monkeypatch.setattr(fake_server.engine, "generate", breaks_midway)
    frames = sse_frames(fake_server, {"model": "m", "max_tokens": 5, "messages": HI})
    assert frames[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "the model crashed"}})
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        fake_server.anthropic().messages.stream(model="m", max_tokens=5, messages=HI) as stream,
    ):
        stream.get_final_message()
    assert caught.value.body["error"]["message"] == "the model crashed"  # type: ignore[index]


def test_both_auth_styles_and_a_bad_key(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("one", "two")
    assert fake_server.anthropic().messages.create(model="m", max_tokens=5, messages=HI).content
    # The seed documentation's style: a dummy x-api-key, the real key as a Bearer token.
    seed_style = anthropic.Anthropic(
        base_url=fake_server.base_url,
        api_key="dummy",
        default_headers={"Authorization": f"Bearer {fake_server.key}"},
        max_retries=0,
    )
    assert seed_style.messages.create(model="default", max_tokens=5, messages=HI).content[0].text == "two"  # type: ignore[union-attr]
    with pytest.raises(anthropic.AuthenticationError) as caught:
        fake_server.anthropic(key="sk-unsloth-" + "0" * 32).messages.create(model="m", max_tokens=5, messages=HI)
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        fake_server.anthropic(key="wrong").messages.count_tokens(model="m", messages=HI)


def test_count_tokens_uses_the_engine(fake_server: FakeServer) -> None:
    client = fake_server.anthropic()
    counted = client.messages.count_tokens(
        model="m", system="be brief", messages=[{"role": "user", "content": "a b c"}]
    )
    # FakeEngine counts words + 4 per message: system (2 + 4) and user (3 + 4).
    assert counted.input_tokens == 13
    assert fake_server.engine.requests == []  # counting generates nothing
