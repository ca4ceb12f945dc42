"""Malformed Responses requests: each one a 4xx in OpenAI's `{"error": {...}}` shape, never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import FakeServer

PIXEL_OK = "data:image/png;base64,iVBORw0KGgo="


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# (case id, raw body or JSON-able body, expected status, a word the message must contain)
CASES: list[tuple[str, Any, int, str]] = [
    ("bad json", b'{"model": "m", "input": ', 400, "JSON"),
    ("empty body", b"", 400, "empty"),
    ("not an object", [1, 2], 400, "object"),
    ("missing input", {"model": "m"}, 400, "input"),
    ("input wrong type", {"model": "m", "input": 42}, 400, "input"),
    ("input empty list", {"model": "m", "input": []}, 400, "input"),
    ("item not an object", {"model": "m", "input": ["hi"]}, 400, "input"),
    (
        "unknown item type",
        {"model": "m", "input": [{"type": "computer_call_output", "call_id": "c"}]},
        400,
        "computer_call_output",
    ),
    ("unknown role", {"model": "m", "input": [{"role": "robot", "content": "beep"}]}, 400, "robot"),
    (
        "unknown content part",
        {"model": "m", "input": [user([{"type": "input_audio", "data": "x"}])]},
        400,
        "input_audio",
    ),
    ("message without content", {"model": "m", "input": [{"role": "user"}]}, 400, "content"),
    (
        "bad tool type",
        {"model": "m", "input": "x", "tools": [{"type": "web_search_preview"}]},
        400,
        "web_search_preview",
    ),
    ("tool without name", {"model": "m", "input": "x", "tools": [{"type": "function", "parameters": {}}]}, 400, "name"),
    (
        "duplicate tool name",
        {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "f"}]},
        400,
        "twice",
    ),
    ("negative max_output_tokens", {"model": "m", "input": "x", "max_output_tokens": -5}, 400, "max_output_tokens"),
    ("temperature out of range", {"model": "m", "input": "x", "temperature": 7}, 400, "temperature"),
    ("metadata not strings", {"model": "m", "input": "x", "metadata": {"a": 1}}, 400, "metadata"),
    ("unknown text format", {"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, 400, "xml"),
    (
        "json_schema without schema",
        {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
        400,
        "schema",
    ),
    ("unknown reasoning effort", {"model": "m", "input": "x", "reasoning": {"effort": "extreme"}}, 400, "effort"),
    (
        "tool_choice names a missing tool",
        {"model": "m", "input": "x", "tool_choice": {"type": "function", "name": "nope"}},
        400,
        "nope",
    ),
    ("tool_choice required without tools", {"model": "m", "input": "x", "tool_choice": "required"}, 400, "required"),
    (
        "tool_choice of a hosted tool",
        {"model": "m", "input": "x", "tool_choice": {"type": "file_search"}},
        400,
        "file_search",
    ),
    (
        "unknown previous_response_id",
        {"model": "m", "input": "x", "previous_response_id": "resp_nope"},
        404,
        "resp_nope",
    ),
    (
        "function_call_output without call_id",
        {"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
        400,
        "call_id",
    ),
    (
        "function_call_output for an unknown call",
        {"model": "m", "input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]},
        400,
        "c9",
    ),
    (
        "function_call without name",
        {"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
        400,
        "name",
    ),
    (
        "bad image data URI",
        {"model": "m", "input": [user([{"type": "input_image", "image_url": "data:image/png;base64,@@@"}])]},
        400,
        "base64",
    ),
    (
        "image URL not http or data",
        {"model": "m", "input": [user([{"type": "input_image", "image_url": "ftp://x/y.png"}])]},
        400,
        "http",
    ),
    (
        "image by file_id",
        {"model": "m", "input": [user([{"type": "input_image", "file_id": "file-1"}])]},
        400,
        "file_id",
    ),
    (
        "image in an assistant message",
        {"model": "m", "input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": PIXEL_OK}]}]},
        400,
        "image",
    ),
    ("background without store", {"model": "m", "input": "x", "background": True, "store": False}, 400, "store"),
    ("conversation", {"model": "m", "input": "x", "conversation": "conv_1"}, 400, "previous_response_id"),
]


@pytest.mark.parametrize(("body", "status", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_create_is_a_4xx_in_openai_shape(fake_server: FakeServer, body: Any, status: int, word: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{fake_server.base_url}/v1/responses",
        content=content,
        headers={"Authorization": f"Bearer {fake_server.key}", "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert word.lower() in error["message"].lower()
    assert fake_server.engine.requests == []  # nothing reached the model


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/responses/resp_missing", 404),
        ("DELETE", "/v1/responses/resp_missing", 404),
        ("GET", "/v1/responses/resp_missing/input_items", 404),
    ],
)
def test_unknown_ids_are_404(fake_server: FakeServer, method: str, path: str, status: int) -> None:
    response = httpx.request(
        method, fake_server.base_url + path, headers={"Authorization": f"Bearer {fake_server.key}"}
    )
    assert response.status_code == status
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("query", ["limit=0", "limit=500", "limit=abc", "order=sideways", "after=msg_nope"])
def test_bad_input_items_queries_are_400(fake_server: FakeServer, query: str) -> None:
    created = fake_server.openai().responses.create(model="m", input="hi")
    response = httpx.get(
        f"{fake_server.base_url}/v1/responses/{created.id}/input_items?{query}",
        headers={"Authorization": f"Bearer {fake_server.key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_no_key_is_401(fake_server: FakeServer) -> None:
    response = httpx.post(f"{fake_server.base_url}/v1/responses", json={"model": "m", "input": "hi"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
