"""Responses `background: true, stream: true`: the stream is numbered, outlives its reader, and
`GET /v1/responses/{id}?stream=true&starting_after=N` resumes it; through the `openai` SDK and
raw HTTP against the scripted FakeEngine (50 ms per event, so a run is still going when the
test acts on it)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from runtime.engine.fake import FakeEngine
from runtime.errors import EngineFailure
from tests.conftest import FakeServer, serve_fake

WORDS = " ".join(f"w{i}" for i in range(30))


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, FakeEngine(delay=0.05)) as server:
        yield server


def raw_events(server: FakeServer, method: str, path: str, **kwargs: Any) -> tuple[str, list[dict[str, Any]]]:
    """The raw SSE text of a request and its events' data, split on blank lines."""
    headers = {"Authorization": f"Bearer {server.key}"}
    with httpx.stream(method, f"{server.base_url}{path}", headers=headers, timeout=30, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for chunk in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        if lines:
            data = json.loads(lines["data"])
            assert lines["event"] == data["type"]
            events.append(data)
    return raw, events


def test_sdk_stream_drop_and_resume(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(WORDS)
    client = slow_server.openai()
    stream = client.responses.create(model="m", input="count", background=True, stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 8:
            break  # the client drops the connection mid-answer
    stream.close()
    assert [e.type for e in seen[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert seen[0].response.status == "queued" and seen[0].response.background is True  # type: ignore[union-attr]
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    response_id = seen[0].response.id  # type: ignore[union-attr]
    last = seen[-1].sequence_number

    # The run went on without a reader; resuming gives exactly what came after.
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    assert [e.sequence_number for e in resumed] == list(range(last + 1, last + 1 + len(resumed)))
    assert resumed[-1].type == "response.completed"
    deltas = [e.delta for e in [*seen, *resumed] if e.type == "response.output_text.delta"]  # type: ignore[union-attr]
    assert "".join(deltas) == WORDS
    assert client.responses.retrieve(response_id).output_text == WORDS

    # After the end the whole stream can still be replayed, by the SDK's own helper too.
    with client.responses.stream(response_id=response_id) as replay:
        final = replay.get_final_response()
    assert final.output_text == WORDS and final.status == "completed"


def test_two_readers_see_the_same_events(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue("one two three four five")
    client = slow_server.openai()
    stream = client.responses.create(model="m", input="x", background=True, stream=True)
    first = next(iter(stream))
    response_id = first.response.id  # type: ignore[union-attr]
    _, other = raw_events(slow_server, "GET", f"/v1/responses/{response_id}?stream=true")
    mine = [first, *stream]
    assert [e["sequence_number"] for e in other] == [e.sequence_number for e in mine]
    assert [e["type"] for e in other] == [e.type for e in mine]


def test_wire_bytes_lf_framed_and_numbered(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue("alpha beta")
    body = {"model": "m", "input": "x", "background": True, "stream": True}
    raw, events = raw_events(slow_server, "POST", "/v1/responses", json=body)
    assert "\r" not in raw and raw.startswith("event: response.created\ndata: {")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    response_id = events[0]["response"]["id"]
    _, tail = raw_events(slow_server, "GET", f"/v1/responses/{response_id}?stream=true&starting_after=3")
    assert tail == events[4:]


def test_cancel_ends_the_stream_as_cancelled(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(" ".join(f"w{i}" for i in range(200)))
    client = slow_server.openai()
    stream = client.responses.create(model="m", input="long", background=True, stream=True)
    events = []
    for event in stream:
        events.append(event)
        if event.type == "response.output_text.delta" and events[-2].type != "response.output_text.delta":
            assert client.responses.cancel(events[0].response.id).status == "cancelled"  # type: ignore[union-attr]
    # Not an event type the SDK knows: it passes it through as it came.
    last = events[-1].to_dict()
    assert last["type"] == "response.cancelled" and last["response"]["status"] == "cancelled"
    assert slow_server.engine.active == 0


def test_failure_ends_with_error_and_failed(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(EngineFailure("the model crashed"))
    client = slow_server.openai()
    events = list(client.responses.create(model="m", input="x", background=True, stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    response_id = events[0].response.id  # type: ignore[union-attr]
    assert client.responses.retrieve(response_id).status == "failed"


def test_what_cannot_be_streamed(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue("a", "b")
    client = slow_server.openai()
    polled = client.responses.create(model="m", input="x", background=True)  # not streamed
    with pytest.raises(openai.BadRequestError) as caught:
        list(client.responses.retrieve(polled.id, stream=True))
    assert caught.value.param == "stream"
    with pytest.raises(openai.NotFoundError):
        list(client.responses.retrieve("resp_missing", stream=True))

    stream = client.responses.create(model="m", input="x", background=True, stream=True)
    response_id = next(iter(stream)).response.id  # type: ignore[union-attr]
    stream.close()
    _, other_key = slow_server.keys.create("other")
    with pytest.raises(openai.NotFoundError):
        list(slow_server.openai(other_key).responses.retrieve(response_id, stream=True))
    bad = httpx.get(
        f"{slow_server.base_url}/v1/responses/{response_id}?stream=true&starting_after=-1",
        headers={"Authorization": f"Bearer {slow_server.key}"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "starting_after"

    # Deleted: its stream goes with it.
    deadline = time.monotonic() + 10
    while client.responses.retrieve(response_id).status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    client.responses.delete(response_id)
    with pytest.raises(openai.NotFoundError):
        list(client.responses.retrieve(response_id, stream=True))
