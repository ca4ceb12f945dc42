"""A generation cut by shutdown (SIGTERM drains the engine: `Runtime.drain`) must not look
complete in any dialect: Chat ends with an `{"error": ...}` frame (no finish_reason), Responses
with `response.failed`, Anthropic with `event: error` (overloaded_error); a non-streaming
request gets a 503. Through the official SDKs against the scripted FakeEngine; the same with a
real process and SIGTERM is tests/integration/test_shutdown.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from runtime.engine.fake import FakeEngine
from tests.conftest import FakeServer, serve_fake

LONG = " ".join(f"word{i}" for i in range(200))  # 200 events: 10 s at the engine's pace


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, FakeEngine(delay=0.05)) as server:
        yield server


def drain(server: FakeServer) -> None:
    """What SIGTERM does first (runtime/cli.py DrainingServer)."""
    server.server.app.state.runtime.drain()


def test_chat_stream_cut_by_shutdown_raises_instead_of_finishing(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    stream = slow_server.openai().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "long"}], stream=True
    )
    finishes: list[str] = []
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.finish_reason is not None:
                    finishes.append(choice.finish_reason)
            if "word2" in text and not slow_server.engine.draining:
                drain(slow_server)
    assert finishes == []  # neither "stop" nor "length": the answer is not whole
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "server_shutting_down"
    assert "word2" in text and "word199" not in text


def test_responses_stream_cut_by_shutdown_ends_failed(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.openai()
    types: list[str] = []
    response_id = ""
    with client.responses.stream(model="m", input="long") as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta" and not slow_server.engine.draining:
                drain(slow_server)
            if event.type == "error":
                assert event.code == "server_shutting_down"
            if event.type == "response.failed":
                assert event.response.status == "failed" and event.response.error is not None
    assert "response.completed" not in types and "response.incomplete" not in types
    assert types[-2:] == ["error", "response.failed"]
    assert client.responses.retrieve(response_id).status == "failed"  # the store says the same


def test_anthropic_stream_cut_by_shutdown_is_an_overloaded_error(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.anthropic()
    kinds: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model="m", max_tokens=1000, messages=[{"role": "user", "content": "long"}]) as stream,
    ):
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and not slow_server.engine.draining:
                drain(slow_server)
    assert "message_delta" not in kinds and "message_stop" not in kinds
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"


def test_non_streaming_request_cut_by_shutdown_is_a_503(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    threading.Timer(0.5, drain, args=(slow_server,)).start()
    with pytest.raises(openai.InternalServerError) as caught:
        slow_server.openai().chat.completions.create(model="m", messages=[{"role": "user", "content": "long"}])
    assert caught.value.status_code == 503


def test_background_response_cut_by_shutdown_is_stored_failed(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.openai()
    created = client.responses.create(model="m", input="long", background=True)
    time.sleep(0.3)
    drain(slow_server)
    deadline = time.monotonic() + 5
    while (seen := client.responses.retrieve(created.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, seen.status
        time.sleep(0.05)
    assert seen.status == "failed"
    assert seen.error is not None and seen.error.code == "server_error"
