"""Responses: `background: true`, `POST /v1/responses/{id}/cancel`, `POST /v1/responses/compact`,
and the parameter a context overflow names; through the official `openai` SDK against the
scripted FakeEngine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import Response

from dialects.openai_responses.store import STORE_FILE, ResponseStore, StoredResponse
from runtime.engine.fake import FakeEngine
from runtime.errors import ContextLengthExceeded, EngineFailure
from tests.conftest import FakeServer, serve_fake

LONG = " ".join(f"word{i}" for i in range(200))  # 200 events: 10 s at the slow engine's pace


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[FakeServer]:
    """A server whose engine takes 50 ms per event, so a generation is still running when
    the test acts on it."""
    with serve_fake(tmp_path, FakeEngine(delay=0.05)) as server:
        yield server


def poll(client: openai.OpenAI, response_id: str, until: Callable[[Response], bool], timeout: float = 10) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if until(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def finished(response: Response) -> bool:
    return response.status not in ("queued", "in_progress")


def test_background_returns_at_once_and_polls_to_completed(slow_server: FakeServer) -> None:
    words = " ".join(f"w{i}" for i in range(20))
    slow_server.engine.enqueue(words)
    client = slow_server.openai()
    started = time.monotonic()
    created = client.responses.create(model="m", input="count", background=True)
    assert time.monotonic() - started < 0.5  # the generation alone takes over a second
    assert created.status == "queued" and created.background is True
    assert created.output == [] and created.usage is None

    seen = poll(client, created.id, lambda r: r.status == "in_progress")
    assert seen.status == "in_progress"
    done = poll(client, created.id, finished)
    assert done.status == "completed"
    assert done.output_text == words
    assert done.background is True and done.usage is not None and done.error is None


def test_background_follow_up_chains_with_previous_response_id(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue("Blue.", "Noted.")
    client = fake_server.openai()
    first = poll(client, client.responses.create(model="m", input="Pick a colour.", background=True).id, finished)
    assert first.status == "completed"
    client.responses.create(model="m", input="Why?", previous_response_id=first.id)
    assert [m.text for m in fake_server.engine.requests[-1].messages] == ["Pick a colour.", "Blue.", "Why?"]


def test_previous_response_id_of_an_unfinished_response_is_a_400(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.openai()
    created = client.responses.create(model="m", input="long", background=True)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input="next", previous_response_id=created.id)
    assert caught.value.param == "previous_response_id"
    client.responses.cancel(created.id)


def test_a_background_failure_is_stored_as_failed(fake_server: FakeServer) -> None:
    fake_server.engine.enqueue(EngineFailure("the model crashed"))
    client = fake_server.openai()
    created = client.responses.create(model="m", input="hi", background=True)
    done = poll(client, created.id, finished)
    assert done.status == "failed"
    assert done.error is not None and done.error.code == "server_error"


def test_cancel_stops_the_generation(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.openai()
    created = client.responses.create(model="m", input="long", background=True)
    poll(client, created.id, lambda r: r.status == "in_progress")

    started = time.monotonic()
    cancelled = client.responses.cancel(created.id)
    assert time.monotonic() - started < 1.0
    assert cancelled.status == "cancelled" and cancelled.id == created.id
    assert slow_server.engine.active == 0  # the engine is no longer generating for it
    assert client.responses.retrieve(created.id).status == "cancelled"
    # Cancelling again is idempotent: the same cancelled response.
    assert client.responses.cancel(created.id).status == "cancelled"


def test_cancel_before_the_generation_starts(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.openai()
    created = client.responses.create(model="m", input="long", background=True)
    assert client.responses.cancel(created.id).status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"


def test_cancel_of_a_non_background_or_finished_response_is_a_400(fake_server: FakeServer) -> None:
    client = fake_server.openai()
    plain = client.responses.create(model="m", input="hi")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(plain.id)
    assert "background" in caught.value.message
    done = poll(client, client.responses.create(model="m", input="hi", background=True).id, finished)
    assert done.status == "completed"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(done.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_missing")


def test_another_key_cannot_cancel(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    created = slow_server.openai().responses.create(model="m", input="long", background=True)
    _, other = slow_server.keys.create("other")
    with pytest.raises(openai.NotFoundError):
        slow_server.openai(other).responses.cancel(created.id)
    assert slow_server.openai().responses.cancel(created.id).status == "cancelled"


def test_deleting_a_running_background_response_stops_it_for_good(slow_server: FakeServer) -> None:
    slow_server.engine.enqueue(LONG)
    client = slow_server.openai()
    created = client.responses.create(model="m", input="long", background=True)
    poll(client, created.id, lambda r: r.status == "in_progress")
    client.responses.delete(created.id)
    assert slow_server.engine.active == 0
    time.sleep(0.2)  # its end must not save it again
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_an_unfinished_response_left_by_a_previous_process_reads_as_failed(fake_server: FakeServer) -> None:
    created = fake_server.openai().responses.create(model="m", input="hi")
    record = fake_server.keys.verify(fake_server.key)
    assert record is not None
    store = ResponseStore(Path(fake_server.server.app.state.runtime.config.data_dir) / STORE_FILE)
    body = {**created.model_dump(), "status": "in_progress", "background": True}
    asyncio.run(store.save(StoredResponse(created.id, record.id, created.created_at, body, [], [])))

    seen = fake_server.openai().responses.retrieve(created.id)
    assert seen.status == "failed" and seen.error is not None


def test_streaming_a_stored_response_is_a_400(fake_server: FakeServer) -> None:
    created = fake_server.openai().responses.create(model="m", input="hi")
    response = httpx.get(
        f"{fake_server.base_url}/v1/responses/{created.id}?stream=true",
        headers={"Authorization": f"Bearer {fake_server.key}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "stream"


def test_compact_is_a_404_in_openai_shape(fake_server: FakeServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        fake_server.openai().responses.compact(model="m", input="hi")
    assert caught.value.status_code == 404
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert "compact" in body["message"]
    assert fake_server.engine.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_names_input(fake_server: FakeServer, stream: bool) -> None:
    fake_server.engine.enqueue(ContextLengthExceeded("the prompt is 9000 tokens; the context holds 4096"))
    with pytest.raises(openai.BadRequestError) as caught:
        fake_server.openai().responses.create(model="m", input="long", stream=stream)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "input"
