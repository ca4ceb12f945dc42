"""The event -> Responses wire renderer on its own: every frame and body must validate against
the SDK's pydantic models strictly (what a client with strict response validation sees)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from dialects.openai_responses.render import Meta, OutputBuilder, collect, render_stream, response_body
from runtime.errors import EngineFailure
from runtime.events import (
    Event,
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
from runtime.ir import Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

STREAM_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
META = Meta(
    id="resp_test",
    created_at=1,
    model="fake-model",
    echo={"tools": [], "tool_choice": "auto", "parallel_tool_calls": True, "store": True},
)
EXTENSION_TYPES = {"tool_call", "tool_result"}


async def scripted(events: Sequence[Event], fail: Exception | None = None) -> AsyncIterator[Event]:
    for event in events:
        yield event
    if fail is not None:
        raise fail


async def render(events: Sequence[Event], fail: Exception | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
    saved: list[Any] = []

    async def on_done(body: dict[str, Any], builder: OutputBuilder) -> None:
        saved.append((body, builder.conversation()))

    frames = []
    async for message in render_stream(scripted(events, fail), META, on_done):
        data = json.loads(message.data)  # type: ignore[arg-type]
        assert message.event == data["type"]
        frames.append(data)
    return frames, saved


def check_strictly(frames: list[dict[str, Any]]) -> None:
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    for frame in frames:
        if frame["type"] not in EXTENSION_TYPES:
            STREAM_EVENT.validate_python(frame)


EVERYTHING = [
    ReasoningDelta("Think"),
    ReasoningDelta("ing."),
    TextDelta("Calling "),
    TextDelta("two tools."),
    ToolCallStart(0, "call_a", "f"),
    ToolCallDelta(0, '{"x"'),
    ToolCallDelta(0, ": 1}"),
    ToolCallEnd(0, "call_a", "f", '{"x": 1}'),
    ToolCallEnd(1, "call_b", "g", "{}"),  # an engine may report a whole call at once
    Usage(prompt_tokens=10, completion_tokens=9, cached_tokens=4),
    Finished("tool_calls"),
]


async def test_every_frame_and_the_final_body_validate_strictly() -> None:
    frames, saved = await render(EVERYTHING)
    check_strictly(frames)
    final = Response.model_validate(frames[-1]["response"])
    assert frames[-1]["type"] == "response.completed"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert [getattr(item, "call_id", None) for item in final.output[2:]] == ["call_a", "call_b"]
    assert final.output_text == "Calling two tools."
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.output_tokens_details.reasoning_tokens == 2

    added = [f for f in frames if f["type"] == "response.output_item.added"]
    assert [f["output_index"] for f in added] == [0, 1, 2, 3]
    deltas = [f for f in frames if f["type"] == "response.function_call_arguments.delta"]
    assert all(f["item_id"] == final.output[2].id for f in deltas)

    [(body, conversation)] = saved
    assert body == frames[-1]["response"]
    assert conversation == [
        Message(
            "assistant",
            [
                ReasoningPart("Thinking."),
                TextPart("Calling two tools."),
                ToolCallPart("call_a", "f", '{"x": 1}'),
                ToolCallPart("call_b", "g", "{}"),
            ],
        )
    ]


async def test_stream_and_collect_build_the_same_output() -> None:
    frames, _ = await render(EVERYTHING)
    builder = await collect(scripted(EVERYTHING))
    streamed = frames[-1]["response"]["output"]
    collected = response_body(META, builder, builder.status)["output"]
    strip = lambda items: [{k: v for k, v in item.items() if k != "id"} for item in items]  # noqa: E731
    assert strip(streamed) == strip(collected)


async def test_an_error_after_the_headers_is_an_error_event_then_response_failed() -> None:
    frames, saved = await render([TextDelta("partial")], fail=EngineFailure("decode failed"))
    check_strictly(frames)
    types = [f["type"] for f in frames]
    assert types[-2:] == ["error", "response.failed"]
    assert frames[-2]["message"] == "decode failed"
    failed = Response.model_validate(frames[-1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert failed.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert saved and saved[0][0]["status"] == "failed"


async def test_an_unexpected_exception_is_reported_without_its_text() -> None:
    frames, _ = await render([], fail=RuntimeError("secret internals"))
    assert frames[-2]["type"] == "error" and "secret" not in frames[-2]["message"]


async def test_server_tool_runs_are_extension_frames_and_kept_in_the_transcript() -> None:
    frames, saved = await render(
        [
            TextDelta("Running."),
            ToolRunStart("srv", "python", '{"code": "1+1"}'),
            ToolResult("srv", "python", '{"code": "1+1"}', "2"),
            TextDelta("Two."),
        ]
    )
    check_strictly(frames)
    extension = [f for f in frames if f["type"] in EXTENSION_TYPES]
    assert [f["type"] for f in extension] == ["tool_call", "tool_result"]
    assert extension[0]["status"] == "running" and extension[1]["output"] == "2"
    body, conversation = saved[0]
    assert [item["type"] for item in body["output"]] == ["message", "message"]
    assert body["tool_results"][0]["call_id"] == "srv"
    assert conversation == [
        Message("assistant", [TextPart("Running."), ToolCallPart("srv", "python", '{"code": "1+1"}')]),
        Message("tool", [ToolResultPart("srv", "2", name="python")]),
        Message("assistant", [TextPart("Two.")]),
    ]


@pytest.mark.parametrize("reason", ["length"])
async def test_length_leaves_open_items_incomplete(reason: str) -> None:
    frames, _ = await render([TextDelta("cut"), ToolCallStart(0, "c", "f"), ToolCallDelta(0, '{"a'), Finished(reason)])  # type: ignore[arg-type]
    check_strictly(frames)
    final = Response.model_validate(frames[-1]["response"])
    assert frames[-1]["type"] == "response.incomplete"
    assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
    assert [item.status for item in final.output] == ["completed", "incomplete"]  # type: ignore[union-attr]
    assert final.output[1].arguments == '{"a'  # type: ignore[union-attr]


async def test_empty_output_is_still_a_valid_response() -> None:
    frames, _ = await render([])
    check_strictly(frames)
    assert Response.model_validate(frames[-1]["response"]).output == []
