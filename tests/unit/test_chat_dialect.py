"""Chat Completions wire behaviour with a scripted engine, through the official openai SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from runtime.errors import ContextLengthExceeded, Overloaded
from runtime.events import (
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolResult,
    ToolRunStart,
    Usage,
)
from runtime.ir import ToolCallPart, ToolResultPart
from tests.conftest import FakeServer

HI = [{"role": "user", "content": "hi"}]
CALL = [
    ToolCallStart(0, "call_1", "get_weather"),
    ToolCallDelta(0, '{"city": '),
    ToolCallDelta(0, '"Paris"}'),
    ToolCallEnd(0, "call_1", "get_weather", '{"city": "Paris"}'),
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_text_and_usage(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("Hello there friend")
    response = fake_server.openai().chat.completions.create(model="anything", messages=HI)
    assert response.choices[0].message.content == "Hello there friend"
    assert response.model == "fake-model"
    assert response.usage is not None and response.usage.completion_tokens == 3


def test_tool_calls_non_stream_and_stream_agree(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue(CALL, CALL)
    whole = client.chat.completions.create(model="m", messages=HI, tools=TOOLS)
    assert whole.choices[0].finish_reason == "tool_calls"
    call = whole.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )

    chunks = list(client.chat.completions.create(model="m", messages=HI, tools=TOOLS, stream=True))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id == "call_1" and deltas[0].function.name == "get_weather"  # id and name come first
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_history_reaches_the_ir(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("It is sunny.")
    fake_server.openai().chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=TOOLS,
    )
    messages = fake_server.engine.requests[-1].messages
    assert messages[1].parts == [ToolCallPart("call_1", "get_weather", "{}")]
    assert messages[2].parts == [ToolResultPart(call_id="call_1", content="sunny")]


def test_reasoning_content(fake_server: FakeServer) -> None:
    script = [ReasoningDelta("think "), ReasoningDelta("hard"), TextDelta("42")]
    fake_server.engine.enqueue(script, script)
    client = fake_server.openai()
    message = client.chat.completions.create(model="m", messages=HI).choices[0].message
    assert message.content == "42"
    assert message.model_extra["reasoning_content"] == "think hard"
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert reasoning == "think hard"


def test_server_tool_frames_are_valid_chunks_and_never_client_calls(fake_server: FakeServer) -> None:
    script = [
        ToolRunStart("call_9", "python", '{"code": "1+1"}'),
        ToolResult("call_9", "python", '{"code": "1+1"}', "2"),
        TextDelta("The answer is 2."),
        Finished("stop"),
    ]
    fake_server.engine.enqueue(script, script)
    client = fake_server.openai()
    chunks = list(client.chat.completions.create(model="m", messages=HI, stream=True))
    results = [c.model_extra["tool_result"] for c in chunks if (c.model_extra or {}).get("tool_result")]
    assert results == [
        {
            "call_id": "call_9",
            "name": "python",
            "arguments": '{"code": "1+1"}',
            "output": "2",
            "is_error": False,
            "attachments": [],
            "session_restored": False,
        }
    ]
    assert all(not c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"

    whole = client.chat.completions.create(model="m", messages=HI)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content == "The answer is 2."
    assert whole.model_extra["tool_results"][0]["output"] == "2"


def test_raw_sse_event_names(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue([ToolResult("c", "bash", "{}", "ok"), TextDelta("done")])
    with httpx.stream(
        "POST",
        f"{fake_server.base_url}/v1/chat/completions",
        json={"model": "m", "messages": HI, "stream": True},
        headers={"Authorization": f"Bearer {fake_server.key}"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    frames = [f for f in body.split("\n\n") if f.strip()]
    assert any(f.startswith("event: tool_result\ndata: ") for f in frames)
    assert frames[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True}),
        ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
        ("/v1/messages", {"model": "m", "messages": HI, "max_tokens": 20, "stream": True}),
    ],
)
def test_every_dialect_frames_sse_with_lf_only(fake_server: FakeServer, path: str, body: dict[str, object]) -> None:
    # OpenAI and Anthropic send LF; hand-written clients split events on a blank LF line.
    fake_server.engine.enqueue([ToolResult("c", "bash", "{}", "line1\r\nline2"), TextDelta("a\nb")])
    with httpx.stream(
        "POST", f"{fake_server.base_url}{path}", json=body, headers={"Authorization": f"Bearer {fake_server.key}"}
    ) as response:
        raw = response.read()
    assert response.status_code == 200
    assert b"\r" not in raw
    frames = [f for f in raw.decode().split("\n\n") if f.strip()]
    assert len(frames) >= 4
    for frame in frames:
        lines = frame.split("\n")
        assert all(line.startswith(("event: ", "data: ")) for line in lines), frame
        data = [line[6:] for line in lines if line.startswith("data: ")]
        assert len(data) == 1
        if data[0] != "[DONE]":
            json.loads(data[0])


def test_request_errors_before_the_stream_are_plain_4xx(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(ContextLengthExceeded("too long"), Overloaded("busy", retry_after=3))
    client = fake_server.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        list(client.chat.completions.create(model="m", messages=HI, stream=True))
    assert caught.value.code == "context_length_exceeded"
    response = httpx.post(
        f"{fake_server.base_url}/v1/chat/completions",
        json={"model": "m", "messages": HI},
        headers={"Authorization": f"Bearer {fake_server.key}"},
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_request_fields_reach_the_ir(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("ok")
    fake_server.openai().chat.completions.create(
        model="m",
        messages=HI,
        temperature=0.2,
        top_p=0.5,
        seed=7,
        stop="END",
        max_completion_tokens=9,
        presence_penalty=0.5,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
        },
        extra_body={
            "top_k": 3,
            "min_p": 0.2,
            "enable_tools": True,
            "enabled_tools": ["python"],
            "session_id": "s1",
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    request = fake_server.engine.requests[-1]
    s = request.sampling
    assert (s.temperature, s.top_p, s.seed, s.stop, s.max_tokens, s.top_k, s.min_p) == (0.2, 0.5, 7, ["END"], 9, 3, 0.2)
    assert request.output_format.kind == "json_schema" and request.output_format.strict
    assert request.server_tools.enabled and request.server_tools.names == ["python"]
    assert request.server_tools.session_id == "s1"
    assert request.reasoning is False


def test_usage_counts_pass_through(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue([TextDelta("x"), Usage(prompt_tokens=11, completion_tokens=1, cached_tokens=7)])
    usage = fake_server.openai().chat.completions.create(model="m", messages=HI).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 1, 12)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 7
