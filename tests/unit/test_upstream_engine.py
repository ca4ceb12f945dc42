"""`UpstreamEngine` against scripted Chat Completions servers (real HTTP, uvicorn in a thread):
the answers real upstreams give only when something is wrong — 429, 503, a context overflow,
an error after output — and where each lands. tests/integration/test_upstream.py covers the
real servers."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar, Request, Response, get, post
from litestar.response import Stream

from runtime.config import SamplingDefaults, UpstreamConfig
from runtime.engine.upstream import UpstreamEngine
from runtime.engine.upstream.errors import UpstreamError, UpstreamOverloaded, UpstreamUnavailable
from runtime.errors import ContextLengthExceeded, InvalidRequest
from runtime.events import Event, Finished, TextDelta, Usage
from runtime.ir import ChatRequest, Message, Sampling, TextPart
from tests.servers import ThreadedServer, free_port

Script = tuple[int, Any, dict[str, str]]  # status, body (a list: SSE chunks), headers


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Scripted:
    """A Chat Completions server that answers each request with the next script."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.bodies: list[dict[str, Any]] = []

        @get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}  # what ThreadedServer waits for

        @get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "scripted", "owned_by": "vllm", "max_model_len": 2048}]}

        @post("/v1/chat/completions", status_code=200)
        async def complete(request: Request[Any, Any, Any]) -> Response[Any]:
            self.bodies.append(await request.json())
            status, body, headers = self.scripts.popleft() if self.scripts else (200, [chunk("ok", "stop")], {})
            if status != 200 or not isinstance(body, list):
                return Response(body, status_code=status, headers=headers)

            async def frames() -> AsyncIterator[bytes]:
                for item in body:
                    yield f"data: {json.dumps(item)}\n\n".encode()
                yield b"data: [DONE]\n\n"

            return Stream(frames(), media_type="text/event-stream")

        self.server = ThreadedServer(Litestar([health, models, complete], openapi_config=None))

    @property
    def url(self) -> str:
        return self.server.base_url


@pytest.fixture
def upstreams() -> Iterator[list[Scripted]]:
    servers = [Scripted(), Scripted()]
    for s in servers:
        s.server.__enter__()
    yield servers
    for s in servers:
        s.server.__exit__()


def engine_for(*urls: str) -> UpstreamEngine:
    return UpstreamEngine(UpstreamConfig(urls=urls), model_id="front", defaults=SamplingDefaults(), ctx_size=4096)


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", [TextPart("hi")])], **kw)


async def run(engine: UpstreamEngine, req: ChatRequest) -> list[Event]:
    try:
        return [e async for e in engine.generate(req)]
    finally:
        await engine.close()


async def test_probe_reads_kind_and_context_and_a_dead_backend_starts_out(upstreams: list[Scripted]) -> None:
    engine = engine_for(upstreams[0].url, f"http://127.0.0.1:{free_port()}")
    assert engine.info.context_length == 2048  # vLLM's max_model_len
    live, dead = engine.balancer.backends
    assert live.profile.kind == "vllm" and live.model == "scripted" and not dead.up
    await engine.close()


async def test_503_moves_the_request_on_unseen_and_takes_the_backend_out(upstreams: list[Scripted]) -> None:
    first, second = upstreams
    engine = engine_for(first.url, second.url)
    first.scripts.append((503, {"error": {"message": "loading"}}, {}))  # the first pick (a tie goes to it)
    events = await run(engine, request())
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta("ok")]
    assert len(first.bodies) == 1 and len(second.bodies) == 1
    assert [b.up for b in engine.balancer.backends] == [False, True]


async def test_429_everywhere_is_overload_with_the_upstreams_retry_after(upstreams: list[Scripted]) -> None:
    engine = engine_for(*(s.url for s in upstreams))
    for s in upstreams:
        s.scripts.append((429, {"error": {"message": "busy"}}, {"Retry-After": "7"}))
    with pytest.raises(UpstreamOverloaded) as caught:
        await run(engine, request())
    assert caught.value.retry_after == 7 and caught.value.status == 429
    assert all(b.up for b in engine.balancer.backends)  # busy is not broken


async def test_a_context_overflow_and_a_bad_request_are_the_clients(upstreams: list[Scripted]) -> None:
    engine = engine_for(upstreams[0].url)
    upstreams[0].scripts.append((400, {"error": {"message": "too long", "type": "exceed_context_size_error"}}, {}))
    with pytest.raises(ContextLengthExceeded):
        await run(engine, request())
    engine = engine_for(upstreams[0].url)
    upstreams[0].scripts.append((422, {"detail": "bad field"}, {}))
    with pytest.raises(InvalidRequest) as caught:
        await run(engine, request())
    assert "bad field" in caught.value.message and engine.balancer.backends[0].up


async def test_an_error_after_output_is_an_upstream_failure_mid_stream(upstreams: list[Scripted]) -> None:
    engine = engine_for(upstreams[0].url)
    upstreams[0].scripts.append((200, [chunk("partial"), {"error": {"message": "boom"}}], {}))
    seen: list[Event] = []
    with pytest.raises(UpstreamError):
        async for event in engine.generate(request()):
            seen.append(event)
    await engine.close()
    assert seen == [TextDelta("partial")]


async def test_every_backend_down_is_503_with_retry_after() -> None:
    engine = engine_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UpstreamUnavailable) as caught:
        await run(engine, request())
    assert caught.value.status == 503 and caught.value.retry_after >= 1


async def test_a_stop_sequence_ends_the_reply_and_names_itself(upstreams: list[Scripted]) -> None:
    engine = engine_for(upstreams[0].url)
    body = [chunk("one two "), chunk("THE END more"), chunk(" text", "stop")]
    upstreams[0].scripts.append((200, body, {}))
    events = await run(engine, request(sampling=Sampling(stop=["THE END"])))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two "
    assert events[-1] == Finished("stop_sequence", stop_sequence="THE END")
    assert isinstance(events[-2], Usage) and "stop" not in upstreams[0].bodies[0]


async def test_a_bare_done_is_a_cut_stream(upstreams: list[Scripted]) -> None:
    """llama-cpp-python's interrupted stream: [DONE] with no finish reason."""
    engine = engine_for(upstreams[0].url)
    upstreams[0].scripts.append((200, [chunk("half")], {}))
    with pytest.raises(UpstreamError):
        await run(engine, request())
