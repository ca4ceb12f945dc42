"""Stored responses: retrieve, delete, input_items, previous_response_id, and key scoping."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import ResponseFunctionToolCallItem, ResponseInputMessageItem

from dialects.openai_responses.store import messages_from_json, messages_to_json
from runtime.events import ToolCallEnd
from runtime.ir import ImagePart, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart
from tests.conftest import FakeServer


def test_retrieve_returns_the_created_response(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue("Stored answer.")
    created = client.responses.create(model="m", input="hi", metadata={"k": "v"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "Stored answer."
    assert fetched.status == "completed" and fetched.metadata == {"k": "v"}
    assert fetched.output[0].id == created.output[0].id  # type: ignore[union-attr]
    assert (Path(fake_server.server.app.state.runtime.config.data_dir) / "responses.sqlite3").exists()


def test_a_streamed_response_is_stored_before_the_stream_ends(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue("One two three")
    with client.responses.stream(model="m", input="count") as stream:
        for event in stream:
            if event.type == "response.completed":
                # The terminal event arrives only after the save: chaining at once must work.
                assert client.responses.retrieve(event.response.id).output_text == "One two three"
        final = stream.get_final_response()
    client.responses.create(model="m", previous_response_id=final.id, input="more")
    assert [m.text for m in fake_server.engine.requests[-1].messages] == ["count", "One two three", "more"]


def test_delete(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    created = client.responses.create(model="m", input="hi")
    raw = httpx.delete(
        f"{fake_server.base_url}/v1/responses/{created.id}", headers={"Authorization": f"Bearer {fake_server.key}"}
    )
    assert raw.status_code == 200
    assert raw.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="m", input="again", previous_response_id=created.id)

    other = client.responses.create(model="m", input="hi")
    assert client.responses.delete(other.id) is None  # the SDK's own delete call succeeds


def test_input_items_lists_the_turn_input(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    fake_server.engine.enqueue([ToolCallEnd(0, "call_9", "lookup", '{"q": "x"}')])
    first = client.responses.create(
        model="m",
        input="look it up",
        tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    )
    response = client.responses.create(
        model="m",
        previous_response_id=first.id,
        instructions="not an input item",
        input=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "input_text", "text": "u1"}]},
            {"type": "function_call", "call_id": "call_7", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_7", "output": "found"},
        ],
    )
    newest_first = client.responses.input_items.list(response.id)
    kinds = [(item.type, getattr(item, "role", None)) for item in newest_first.data]
    assert kinds == [
        ("function_call_output", None),
        ("function_call", None),
        ("message", "user"),
        ("message", "system"),
    ]
    assert newest_first.has_more is False
    assert all(item.id for item in newest_first.data)
    user = newest_first.data[2]
    assert isinstance(user, ResponseInputMessageItem) and user.content[0].text == "u1"  # type: ignore[union-attr]
    assert isinstance(newest_first.data[1], ResponseFunctionToolCallItem)

    page = client.responses.input_items.list(response.id, order="asc", limit=1)
    assert [item.type for item in page.data] == ["message"] and page.has_more is True
    everything = list(client.responses.input_items.list(response.id, order="asc", limit=1))  # follows `after`
    assert [item.id for item in everything] == [item.id for item in reversed(newest_first.data)]

    [only] = client.responses.input_items.list(first.id).data
    assert isinstance(only, ResponseInputMessageItem) and only.content[0].text == "look it up"  # type: ignore[union-attr]


def test_another_key_sees_404_everywhere(fake_server: FakeServer) -> None:
    owner = fake_server.openai()
    stranger = fake_server.openai(key=fake_server.keys.create("other")[1])
    created = owner.responses.create(model="m", input="secret")

    for attempt in (
        lambda: stranger.responses.retrieve(created.id),
        lambda: stranger.responses.delete(created.id),
        lambda: stranger.responses.input_items.list(created.id),
        lambda: stranger.responses.create(model="m", input="more", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert caught.value.body["type"] == "not_found_error"  # type: ignore[index]
        assert created.id in caught.value.message
    assert owner.responses.retrieve(created.id).output_text == created.output_text  # untouched
    requests_before = len(fake_server.engine.requests)
    assert requests_before == 1  # the refused follow-up never reached the model


def test_store_false_is_not_retrievable(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    response = client.responses.create(model="m", input="hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="m", input="hi", previous_response_id=response.id)
    streamed = list(client.responses.create(model="m", input="hi", store=False, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(streamed[-1].response.id)  # type: ignore[union-attr]


def test_conversation_codec_round_trips_every_part() -> None:
    messages = [
        Message("system", [TextPart("sys")]),
        Message(
            "user",
            [TextPart("look"), ImagePart(data=b"\x89PNG", media_type="image/png"), ImagePart(url="https://x/y.png")],
        ),
        Message("assistant", [ReasoningPart("hmm"), TextPart("calling"), ToolCallPart("c1", "f", '{"a": 1}')]),
        Message("tool", [ToolResultPart("c1", "oops", is_error=True, name="f")]),
    ]
    assert messages_from_json(messages_to_json(messages)) == messages
