"""Streamed background responses on the real server (the packaged model): the stream of
`background: true, stream: true` survives its reader, and `GET ...?stream=true&starting_after=N`
resumes it; through the `openai` SDK and as raw bytes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.servers import CliServer

pytestmark = pytest.mark.integration

PROMPT = "Write three sentences about the sea."


def test_drop_and_resume_gives_the_whole_answer(oai: openai.OpenAI) -> None:
    stream = oai.responses.create(
        model="m", input=PROMPT, background=True, stream=True, max_output_tokens=40, temperature=0
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) >= 8:
            break
    stream.close()  # the client goes away; the generation does not
    assert [e.type for e in seen[:3]] == ["response.created", "response.queued", "response.in_progress"]
    response_id = seen[0].response.id  # type: ignore[union-attr]
    cut = seen[-1].sequence_number

    resumed = list(oai.responses.retrieve(response_id, stream=True, starting_after=cut))
    numbers = [e.sequence_number for e in [*seen, *resumed]]
    assert numbers == list(range(len(numbers)))  # nothing lost, nothing repeated
    assert resumed[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in [*seen, *resumed] if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    final = oai.responses.retrieve(response_id)
    assert text == final.output_text and text
    assert final.status == resumed[-1].response.status  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens > 0


def test_the_wire_bytes(real_server: CliServer, real_key: str) -> None:
    headers = {"Authorization": f"Bearer {real_key}"}
    body: dict[str, Any] = {
        "model": "m",
        "input": PROMPT,
        "background": True,
        "stream": True,
        "max_output_tokens": 8,
        "temperature": 0,
    }
    with httpx.stream("POST", f"{real_server.base_url}/v1/responses", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert "\r" not in raw
    chunks = [c for c in raw.split("\n\n") if c.strip()]  # a plain split on blank lines
    events = [json.loads(c.split("data: ", 1)[1]) for c in chunks]
    assert [c.split("\n", 1)[0] for c in chunks] == [f"event: {e['type']}" for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    response_id = events[0]["response"]["id"]

    url = f"{real_server.base_url}/v1/responses/{response_id}?stream=true&starting_after=2"
    with httpx.stream("GET", url, headers=headers, timeout=120) as r:
        replay = r.read().decode()
    assert replay == "\n\n".join(chunks[3:]) + "\n\n"  # the same bytes, from event 3 on
