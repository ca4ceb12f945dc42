"""POST /v1/responses, GET/DELETE /v1/responses/{id} (GET with `stream=true` resumes a streamed
background response), POST /v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items;
POST /v1/responses/compact answers 404 (not offered)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, route
from litestar.params import FromPath
from litestar.response import ServerSentEvent

from dialects.common import decode_body, new_id, now
from dialects.openai_responses.adapter import Turn, to_ir
from dialects.openai_responses.background import REPLAY_SECONDS, UNFINISHED, BackgroundRuns, as_seen
from dialects.openai_responses.protocol import ResponsesRequest
from dialects.openai_responses.render import Meta, OutputBuilder, Status, collect, render_stream, response_body
from dialects.openai_responses.store import STORE_FILE, ResponseStore, StoredResponse
from dialects.sse import primed, sse_response
from runtime.config import SamplingDefaults
from runtime.errors import ContextLengthExceeded, InvalidRequest, NotFound, ToolstudioError
from runtime.events import Event
from runtime.http import api_key_of, runtime_of, unless_disconnected
from runtime.ir import Message

_RUNS_STATE_KEY = "openai_responses_background"


def store_of(request: Request[Any, Any, Any]) -> ResponseStore:
    """The app's store: `create_app` puts it on `app.state.responses`, in the storage backend
    the server runs with (SQLite, or the PostgreSQL database front-ends share)."""
    state = request.app.state
    store: ResponseStore | None = state.get("responses")
    if store is None:  # an app assembled without create_app: the SQLite file, as before
        store = state["responses"] = ResponseStore(runtime_of(request).config.data_dir / STORE_FILE)
    return store


def runs_of(request: Request[Any, Any, Any]) -> BackgroundRuns:
    """The app's live background generations (one registry per app, like the store)."""
    state = request.app.state
    runs: BackgroundRuns | None = state.get(_RUNS_STATE_KEY)
    if runs is None:
        runs = state[_RUNS_STATE_KEY] = BackgroundRuns()
    return runs


def _not_found(response_id: str, param: str) -> NotFound:
    # Another key's response answers exactly like a missing one: ids must not leak.
    return NotFound(f"Response with id {response_id!r} not found.", param=param)


async def _stored(request: Request[Any, Any, Any], response_id: str, param: str) -> StoredResponse:
    record = await store_of(request).get(response_id, api_key_of(request).id)
    if record is None:
        raise _not_found(response_id, param)
    return record


def _echo(wire: ResponsesRequest, turn: Turn, defaults: SamplingDefaults) -> dict[str, Any]:
    """The request settings every response object repeats, with the values actually used."""
    chat = turn.chat
    text: dict[str, Any] = {"format": {"type": "text"}}
    if wire.text is not None:
        if wire.text.format is not None:
            text["format"] = msgspec.to_builtins(wire.text.format)
        if wire.text.verbosity is not None:
            text["verbosity"] = wire.text.verbosity
    choice = chat.tool_choice
    return {
        "instructions": wire.instructions,
        "max_output_tokens": wire.max_output_tokens,
        "max_tool_calls": wire.max_tool_calls,
        "metadata": wire.metadata or {},
        "parallel_tool_calls": chat.parallel_tool_calls,
        "previous_response_id": wire.previous_response_id,
        "reasoning": {
            "effort": wire.reasoning.effort if wire.reasoning else None,
            "summary": wire.reasoning.summary if wire.reasoning else None,
        },
        "store": wire.store is not False,
        "temperature": wire.temperature if wire.temperature is not None else defaults.temperature,
        "top_p": wire.top_p if wire.top_p is not None else defaults.top_p,
        "text": text,
        "tool_choice": {"type": "function", "name": choice.name} if choice.mode == "function" else choice.mode,
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description or None,
                "parameters": t.parameters,
                "strict": t.strict,
            }
            for t in chat.tools
        ],
        "truncation": wire.truncation or "disabled",
        "user": wire.user,
        "background": wire.background is True,
        # The rest of the current `Response` object (openai-python's `Response` model and the
        # Open Responses spec): what this server did with each, not a placeholder.
        "presence_penalty": wire.presence_penalty or 0.0,
        "frequency_penalty": wire.frequency_penalty or 0.0,
        "top_logprobs": wire.top_logprobs or 0,
        "service_tier": "default",  # one local tier, whatever was asked
        "safety_identifier": wire.safety_identifier,
        "prompt_cache_key": wire.prompt_cache_key,
        "prompt_cache_retention": None,
        "prompt": None,
        "conversation": None,
    }


async def _input_named(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The engine names the conversation `messages` when it does not fit; here it is `input`."""
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                yield event
        except ContextLengthExceeded as exc:
            exc.param = "input"
            raise


def _check_background(wire: ResponsesRequest) -> None:
    if wire.background and wire.store is False:
        raise InvalidRequest("background responses must be stored: send store=true (or leave it out)", param="store")


@post("/v1/responses", status_code=200)
async def create_response(request: Request[Any, Any, Any]) -> Response[Any] | ServerSentEvent:
    wire = decode_body(await request.body(), ResponsesRequest)
    _check_background(wire)
    key = api_key_of(request)
    prior: list[Message] = []
    if wire.previous_response_id is not None:
        previous = await _stored(request, wire.previous_response_id, "previous_response_id")
        status = as_seen(previous.body, runs_of(request).live(previous.id))["status"]
        if status in UNFINISHED:
            raise InvalidRequest(
                f"previous response {previous.id!r} is still {status}; wait until it finishes",
                param="previous_response_id",
            )
        prior = previous.conversation
    turn = to_ir(wire, prior)
    runtime = runtime_of(request)
    meta = Meta(
        id=new_id("resp_"),
        created_at=now(),
        model=runtime.config.model_id,
        echo=_echo(wire, turn, runtime.config.sampling),
    )
    store = store_of(request)

    async def save(body: dict[str, Any], builder: OutputBuilder | None) -> None:
        if wire.store is False:
            return
        record = StoredResponse(
            id=meta.id,
            key_id=key.id,
            created_at=meta.created_at,
            body=body,
            input_items=turn.input_items,
            conversation=turn.conversation + (builder.conversation() if builder is not None else []),
        )
        await store.save(record)

    events = _input_named(runtime.run(turn.chat, key))
    if wire.background:
        queued = response_body(meta, None, "queued")

        def describe(status: Status, builder: OutputBuilder | None, error: ToolstudioError | None) -> dict[str, Any]:
            return response_body(meta, builder, status, error)

        saving = asyncio.ensure_future(save(queued, None))
        stream = runs_of(request).start(
            meta.id, events, queued=saving, describe=describe, save=save, stream=bool(wire.stream)
        )
        # Saved before the answer: a client may GET (or resume) it at once.
        await asyncio.shield(saving)
        if stream is not None:
            # The run goes on without this reader: a client that drops resumes with GET.
            return sse_response(stream.follow())
        return Response(queued)
    if wire.stream:
        return sse_response(render_stream(await primed(events), meta, save))
    builder = await unless_disconnected(request, collect(events))
    body = response_body(meta, builder, builder.status)
    await save(body, builder)
    return Response(body)


def _starting_after(raw: str | None) -> int:
    if raw is None:
        return -1
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest(
            "starting_after must be a non-negative integer (a sequence_number)", param="starting_after"
        )
    return int(raw)


@get("/v1/responses/{response_id:str}")
async def retrieve_response(
    request: Request[Any, Any, Any], response_id: FromPath[str]
) -> Response[Any] | ServerSentEvent:
    """The stored response; with `stream=true`, the stream of a background response created
    with `stream: true`: its events after `starting_after` (all without it), then live ones
    until it ends."""
    query = request.query_params
    streamed = query.get("stream", "false").lower() == "true"
    after = _starting_after(query.get("starting_after")) if streamed else -1
    record = await _stored(request, response_id, "response_id")
    runs = runs_of(request)
    if not streamed:
        return Response(as_seen(record.body, runs.live(response_id)))
    log = runs.events(response_id)
    if log is None:
        raise InvalidRequest(
            "only a background response created with stream=true can be streamed, while it runs and for "
            f"{int(REPLAY_SECONDS)} s after it ends; GET it without stream=true",
            param="stream",
        )
    return sse_response(log.follow(after))


@post("/v1/responses/{response_id:str}/cancel", status_code=200)
async def cancel_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> dict[str, Any]:
    """Stop a background response's generation: it becomes `cancelled` (with the output it had).
    Cancelling it again returns it unchanged; a response created without background, or one
    that already ended otherwise, is a 400 (as OpenAI answers)."""
    record = await _stored(request, response_id, "response_id")
    if not record.body.get("background"):
        raise InvalidRequest("only responses created with background=true can be cancelled", param="response_id")
    runs = runs_of(request)
    if await runs.cancel(response_id):
        record = await _stored(request, response_id, "response_id")
    body = as_seen(record.body, runs.live(response_id))
    if body["status"] != "cancelled":
        raise InvalidRequest(f"cannot cancel a response that is already {body['status']}", param="response_id")
    return body


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> dict[str, Any]:
    key_id = api_key_of(request).id
    store = store_of(request)
    if await store.get(response_id, key_id) is not None:
        # A running background response is stopped first, or its end would save it again.
        await runs_of(request).cancel(response_id)
        runs_of(request).forget(response_id)
    if not await store.delete(response_id, key_id):
        raise _not_found(response_id, "response_id")
    return {"id": response_id, "object": "response", "deleted": True}


@route("/v1/responses/compact", http_method=["POST"])
async def compact_response(request: Request[Any, Any, Any]) -> None:
    """Not offered: a 404 in OpenAI's shape (without this route the path matched
    /v1/responses/{id}, which has no POST, and answered 405)."""
    raise NotFound(
        "POST /v1/responses/compact (conversation compaction) is not supported by this server; "
        "chain turns with previous_response_id instead",
        code="unsupported_endpoint",
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit")
    return int(raw)


@get("/v1/responses/{response_id:str}/input_items")
async def list_input_items(request: Request[Any, Any, Any], response_id: FromPath[str]) -> dict[str, Any]:
    record = await _stored(request, response_id, "response_id")
    query = request.query_params
    limit = _limit(query.get("limit"))
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    items = record.input_items if order == "asc" else record.input_items[::-1]
    if (after := query.get("after")) is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"no input item with id {after!r} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


route_handlers = [
    create_response,
    retrieve_response,
    cancel_response,
    delete_response,
    compact_response,
    list_input_items,
]
