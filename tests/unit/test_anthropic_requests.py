"""Anthropic Messages requests: what reaches the IR, and clear 4xx answers for bad bodies."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import msgspec
import pytest

from dialects.anthropic.adapter import to_ir
from dialects.anthropic.protocol import CreateMessageRequest
from runtime.ir import ImagePart, ReasoningPart, TextPart, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tests.conftest import FakeServer

# A 1x1 PNG: the adapter checks that image bytes really are an image.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.standard_b64encode(PNG).decode()
HI: list[Any] = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_tool_result_turn_reaches_the_ir(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("It is sunny in Paris and raining in Oslo.")
    fake_server.anthropic().messages.create(
        model="m",
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "two calls", "signature": "c2ln"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_b",
                        "content": [{"type": "text", "text": "service"}, {"type": "text", "text": "down"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "Summarise please."},
                ],
            },
        ],
    )
    user, assistant, first, second, follow_up = fake_server.engine.requests[-1].messages
    assert user.role == "user" and user.parts == [TextPart("Weather in Paris and Oslo?")]
    assert assistant.role == "assistant"
    assert assistant.parts == [
        ReasoningPart("two calls"),
        TextPart("Checking."),
        ToolCallPart("toolu_a", "get_weather", '{"city": "Paris"}'),
        ToolCallPart("toolu_b", "get_weather", '{"city": "Oslo"}'),
    ]
    assert first.role == "tool" and first.parts == [ToolResultPart("toolu_a", "sunny", name="get_weather")]
    assert second.parts == [ToolResultPart("toolu_b", "service\ndown", is_error=True, name="get_weather")]
    assert follow_up.role == "user" and follow_up.parts == [TextPart("Summarise please.")]


def test_images_become_image_parts(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("a pixel")
    fake_server.anthropic().messages.create(
        model="m",
        max_tokens=5,
        messages=[
            {
                "role": "user",
                "content": [
                    # Declared jpeg, really a png: the runtime's decode decides.
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG_B64}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    parts = fake_server.engine.requests[-1].messages[0].parts
    assert parts == [ImagePart(data=PNG, media_type="image/png"), TextPart("What is this?")]


def test_url_images_are_left_for_the_fetcher() -> None:
    # Straight through the adapter: the server would try to fetch the URL (no network in tests).
    source = {"type": "url", "url": "https://example.com/cat.png"}
    wire = msgspec.convert(
        {"model": "m", "max_tokens": 5, "messages": user({"type": "image", "source": source})}, CreateMessageRequest
    )
    assert to_ir(wire).messages[0].parts == [ImagePart(url="https://example.com/cat.png")]


def test_request_fields_reach_the_ir(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("ok")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    fake_server.anthropic().messages.create(
        model="claude-sonnet-4-5",
        max_tokens=300,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=HI,
        stop_sequences=["END"],
        metadata={"user_id": "u1"},
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 100},
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body={
            # This SDK release dropped the sampling keywords; older ones and raw clients still send them.
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 5,
            "enable_tools": True,
            "enabled_tools": ["python"],
            "session_id": "s1",
            "vendor_x": {"y": 1},
        },
    )
    request = fake_server.engine.requests[-1]
    assert request.model == "claude-sonnet-4-5"
    assert request.messages[0].role == "system" and request.messages[0].text == "Be brief.\nBe kind."
    s = request.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.stop) == (0.3, 0.9, 5, 300, ["END"])
    # The agent loop (server tools are on) appends its own tools after the client's.
    assert request.tools[0] == ToolSpec("get_weather", "", WEATHER["input_schema"])  # type: ignore[arg-type]
    assert request.tool_choice == ToolChoice("function", "get_weather")
    assert request.parallel_tool_calls is False
    assert request.reasoning is True
    assert (request.output_format.kind, request.output_format.schema, request.output_format.strict) == (
        "json_schema",
        schema,
        True,
    )
    assert request.server_tools.enabled and request.server_tools.names == ["python"]
    assert request.server_tools.session_id == "s1"


@pytest.mark.parametrize(
    ("extra", "choice", "parallel", "reasoning"),
    [
        ({}, ToolChoice("auto"), True, None),
        ({"tool_choice": {"type": "auto"}}, ToolChoice("auto"), True, None),
        ({"tool_choice": {"type": "any"}}, ToolChoice("required"), True, None),
        ({"tool_choice": {"type": "none"}}, ToolChoice("none"), True, None),
        ({"tool_choice": {"type": "any", "disable_parallel_tool_use": True}}, ToolChoice("required"), False, None),
        ({"thinking": {"type": "disabled"}}, ToolChoice("auto"), True, False),
        ({"thinking": {"type": "adaptive"}}, ToolChoice("auto"), True, True),
        ({"thinking": {"type": "some_future_mode"}}, ToolChoice("auto"), True, None),
    ],
)
def test_tool_choice_and_thinking_modes(
    fake_server: FakeServer, extra: dict[str, Any], choice: ToolChoice, parallel: bool, reasoning: bool | None
) -> None:
    fake_server.engine.enqueue("ok")
    body = {"model": "m", "max_tokens": 5, "messages": HI, "tools": [WEATHER], **extra}
    response = httpx.post(f"{fake_server.base_url}/v1/messages", json=body, headers={"x-api-key": fake_server.key})
    assert response.status_code == 200, response.text
    request = fake_server.engine.requests[-1]
    assert (request.tool_choice, request.parallel_tool_calls, request.reasoning) == (choice, parallel, reasoning)


def test_beta_output_format_and_builtin_client_tools(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("ok")
    fake_server.anthropic().messages.create(
        model="m",
        max_tokens=5,
        messages=HI,
        tools=[{"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "edit"}],
        extra_body={"output_format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    request = fake_server.engine.requests[-1]
    assert request.output_format.kind == "json_schema" and request.output_format.schema == {"type": "object"}
    bash, editor = request.tools
    assert bash.name == "bash" and "command" in bash.parameters["properties"]
    assert editor.name == "edit" and "old_str" in editor.parameters["properties"]


def test_consecutive_turns_merge_and_system_turns_are_kept(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("ok")
    fake_server.anthropic().messages.create(
        model="m",
        max_tokens=5,
        system="top",
        messages=[
            {"role": "system", "content": "inline system"},  # type: ignore[list-item]
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": ""},  # an empty final assistant turn is dropped
        ],
    )
    messages = fake_server.engine.requests[-1].messages
    assert [(m.role, [p.text for p in m.parts]) for m in messages] == [  # type: ignore[union-attr]
        ("system", ["top"]),
        ("system", ["inline system"]),
        ("user", ["one", "two"]),
        ("assistant", ["reply"]),
        ("user", ["three"]),
    ]


def test_a_final_assistant_turn_is_a_prefill(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(" Paris.")
    message = fake_server.anthropic().messages.create(
        model="m",
        max_tokens=5,
        messages=[
            {"role": "user", "content": "The capital of France?"},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "The capital"}, {"type": "text", "text": " is"}],
            },
        ],
    )
    request = fake_server.engine.requests[-1]
    assert request.prefill == "The capital is"
    assert [m.role for m in request.messages] == ["user"]  # not rendered as a finished turn
    assert message.content[0].text == " Paris."  # type: ignore[union-attr]  # the continuation only, as Anthropic


def test_count_tokens_takes_the_same_inputs_without_max_tokens(fake_server: FakeServer) -> None:
    response = httpx.post(
        f"{fake_server.base_url}/v1/messages/count_tokens",
        json={"model": "m", "messages": HI, "tools": [WEATHER], "tool_choice": {"type": "any"}},
        headers={"Authorization": f"Bearer {fake_server.key}"},
    )
    assert response.status_code == 200
    assert response.json() == {"input_tokens": 5}


# -- malformed requests -------------------------------------------------------------------------


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 10, "messages": HI, **fields}).encode()


def user(*blocks: Any) -> list[Any]:
    return [{"role": "user", "content": list(blocks)}]


def image(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "source": source}


CALLED = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
]

MALFORMED: list[tuple[str, bytes, str]] = [
    ("bad json", b'{"model": "m", "max_tokens": 5, "messages": [', "not valid JSON"),
    ("empty body", b"", "empty"),
    ("not an object", b"[1, 2]", "Expected `object`"),
    ("missing max_tokens", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', "max_tokens"),
    ("missing messages", b'{"model": "m", "max_tokens": 5}', "messages"),
    ("missing model", b'{"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ("empty messages", body(messages=[]), "messages"),
    ("messages not a list", body(messages="hi"), "messages"),
    ("unknown role", body(messages=[{"role": "wizard", "content": "hi"}]), "role"),
    ("content wrong type", body(messages=[{"role": "user", "content": 5}]), "content"),
    ("bad block type", body(messages=user({"type": "video", "url": "x"})), "video"),
    ("text block without text", body(messages=user({"type": "text"})), "text"),
    ("negative max_tokens", body(max_tokens=-1), "max_tokens"),
    ("zero max_tokens", body(max_tokens=0), "max_tokens"),
    ("max_tokens string", body(max_tokens="10"), "max_tokens"),
    ("temperature above 1", body(temperature=1.5), "temperature"),
    ("top_p above 1", body(top_p=2), "top_p"),
    ("negative top_k", body(top_k=-3), "top_k"),
    ("stream wrong type", body(stream="yes"), "stream"),
    ("empty stop sequence", body(stop_sequences=[""]), "stop_sequences"),
    ("tool_choice unknown tool", body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), "nope"),
    ("tool_choice any without tools", body(tool_choice={"type": "any"}), "tool"),
    ("tool_choice unknown type", body(tools=[WEATHER], tool_choice={"type": "sometimes"}), "tool_choice"),
    ("tool without input_schema", body(tools=[{"name": "f"}]), "input_schema"),
    ("tool schema not an object", body(tools=[{"name": "f", "input_schema": {"type": "string"}}]), "object"),
    ("bad tool name", body(tools=[{"name": "a b", "input_schema": {"type": "object"}}]), "name"),
    ("duplicate tool names", body(tools=[WEATHER, WEATHER]), "unique"),
    ("anthropic server tool", body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "enable_tools"),
    ("image bad base64", body(messages=user(image({"type": "base64", "media_type": "image/png", "data": "@@"}))), "base64"),
    ("image not an image", body(messages=user(image({"type": "base64", "media_type": "image/png", "data": "aGVsbG8="}))), "image format"),
    ("image ftp url", body(messages=user(image({"type": "url", "url": "ftp://x/y.png"}))), "http"),
    ("image file source", body(messages=user(image({"type": "file", "file_id": "file_1"}))), "Files API"),
    ("pdf document", body(messages=user({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}})), "PDF"),
    ("image in assistant turn", body(messages=[*HI, {"role": "assistant", "content": [image({"type": "url", "url": "https://x/y.png"})]}, *HI]), "assistant"),
    ("tool_use in user turn", body(messages=user({"type": "tool_use", "id": "t", "name": "f", "input": {}})), "tool_use"),
    ("tool_result without tool_use", body(messages=user({"type": "tool_result", "tool_use_id": "toolu_x", "content": "1"})), "toolu_x"),
    ("tool_result for another id", body(messages=[*CALLED, *user({"type": "tool_result", "tool_use_id": "toolu_2"})]), "toolu_2"),
    ("tool_use input not an object", body(messages=[*HI, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}, *HI]), "input"),
    ("first message from assistant", body(messages=[{"role": "assistant", "content": "hi"}, *HI]), "first message"),
    ("prefill with a tool_use block", body(messages=[*HI, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]), "prefill"),
    ("prefill ending in whitespace", body(messages=[*HI, {"role": "assistant", "content": "The answer is "}]), "trailing whitespace"),
    ("empty user content", body(messages=[{"role": "user", "content": []}]), "non-empty"),
    ("empty user string", body(messages=[{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}, *HI]), "non-empty"),
    ("system with an image", body(system=[image({"type": "url", "url": "https://x/y.png"})]), "system"),
    ("thinking without budget", body(thinking={"type": "enabled"}), "budget_tokens"),
    ("thinking budget over max_tokens", body(max_tokens=100, thinking={"type": "enabled", "budget_tokens": 100}), "budget_tokens"),
    ("output format without schema", body(output_config={"format": {"type": "json_schema"}}), "schema"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "raw", "needle"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_a_clear_4xx(fake_server: FakeServer, name: str, raw: bytes, needle: str) -> None:
    response = httpx.post(
        f"{fake_server.base_url}/v1/messages",
        content=raw,
        headers={"x-api-key": fake_server.key, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert needle.lower() in payload["error"]["message"].lower()
    assert fake_server.engine.requests == []  # nothing reached the model


def test_count_tokens_rejects_bad_bodies_in_anthropic_shape(fake_server: FakeServer) -> None:
    response = httpx.post(
        f"{fake_server.base_url}/v1/messages/count_tokens",
        json={"model": "m", "messages": []},
        headers={"x-api-key": fake_server.key},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_method_and_missing_key_are_anthropic_errors(fake_server: FakeServer) -> None:
    wrong_method = httpx.get(f"{fake_server.base_url}/v1/messages", headers={"x-api-key": fake_server.key})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["type"] == "error"
    missing_key = httpx.post(f"{fake_server.base_url}/v1/messages", content=body())
    assert missing_key.status_code == 401
    assert missing_key.json()["error"]["type"] == "authentication_error"
