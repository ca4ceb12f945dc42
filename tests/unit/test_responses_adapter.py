"""Responses request -> IR, without a server: item merging, naming, and the listable items."""

from __future__ import annotations

from typing import Any

import msgspec
import pydantic
import pytest
from openai.types.responses import ResponseItem

from dialects.openai_responses.adapter import to_ir
from dialects.openai_responses.protocol import ResponsesRequest
from runtime.errors import InvalidRequest
from runtime.ir import ImagePart, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

RESPONSE_ITEM = pydantic.TypeAdapter(ResponseItem)


def wire(**fields: Any) -> ResponsesRequest:
    return msgspec.convert({"model": "m", **fields}, ResponsesRequest)


def test_an_http_image_url_is_kept_for_the_fetcher() -> None:
    turn = to_ir(
        wire(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.test/a.png"}]}]),
        [],
    )
    assert turn.chat.messages[0].parts == [ImagePart(url="https://x.test/a.png")]


def test_assistant_text_reasoning_and_calls_merge_into_one_turn() -> None:
    turn = to_ir(
        wire(
            input=[
                {"role": "user", "content": "q"},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}]},
                {"role": "assistant", "content": "calling"},
                {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "b", "name": "g", "arguments": ""},
                {"type": "function_call_output", "call_id": "a", "output": "A"},
                {"type": "function_call_output", "call_id": "b", "output": [{"type": "input_text", "text": "B"}]},
            ]
        ),
        [],
    )
    assert turn.chat.messages == [
        Message("user", [TextPart("q")]),
        Message(
            "assistant",
            [ReasoningPart("plan"), TextPart("calling"), ToolCallPart("a", "f", "{}"), ToolCallPart("b", "g", "{}")],
        ),
        Message("tool", [ToolResultPart("a", "A", name="f")]),
        Message("tool", [ToolResultPart("b", "B", name="g")]),
    ]


def test_outputs_may_answer_calls_from_the_prior_conversation() -> None:
    prior = [Message("user", [TextPart("q")]), Message("assistant", [ToolCallPart("c1", "lookup", "{}")])]
    turn = to_ir(
        wire(instructions="sys", input=[{"type": "function_call_output", "call_id": "c1", "output": "x"}]), prior
    )
    assert turn.chat.messages[0] == Message("system", [TextPart("sys")])
    assert turn.chat.messages[-1] == Message("tool", [ToolResultPart("c1", "x", name="lookup")])
    assert turn.conversation == turn.chat.messages[1:]  # stored without the instructions
    with pytest.raises(InvalidRequest, match="c2"):
        to_ir(wire(input=[{"type": "function_call_output", "call_id": "c2", "output": "x"}]), prior)


def test_input_items_have_ids_and_validate_as_sdk_items() -> None:
    turn = to_ir(
        wire(
            input=[
                {"role": "developer", "content": "d"},
                {"role": "user", "content": [{"type": "input_image", "image_url": "https://x.test/a.png"}]},
                {"role": "assistant", "id": "msg_given", "content": "a"},
                {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "r"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "o"},
            ]
        ),
        [],
    )
    items = turn.input_items
    assert items[2]["id"] == "msg_given"  # a replayed item keeps its id
    assert [item["id"][:3] for item in items] == ["msg", "msg", "msg", "rs_", "fc_", "fco"]
    for item in items:
        RESPONSE_ITEM.validate_python(item)
    assert items[1]["content"] == [
        {"type": "input_image", "image_url": "https://x.test/a.png", "file_id": None, "detail": "auto"}
    ]
    assert items[2]["content"] == [{"type": "output_text", "text": "a", "annotations": []}]


def test_a_string_input_is_one_user_item() -> None:
    turn = to_ir(wire(input="hello"), [])
    assert turn.chat.messages == [Message("user", [TextPart("hello")])]
    [item] = turn.input_items
    assert (item["role"], item["content"]) == ("user", [{"type": "input_text", "text": "hello"}])
