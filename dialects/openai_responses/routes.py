"""POST /v1/responses, GET/DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath
from litestar.response import ServerSentEvent

from dialects.common import decode_body, new_id, now
from dialects.openai_responses.adapter import Turn, to_ir
from dialects.openai_responses.protocol import ResponsesRequest
from dialects.openai_responses.render import Meta, OutputBuilder, collect, render_stream, response_body
from dialects.openai_responses.store import STORE_FILE, ResponseStore, StoredResponse
from dialects.sse import primed, sse_response
from runtime.config import SamplingDefaults
from runtime.errors import InvalidRequest, NotFound
from runtime.http import api_key_of, runtime_of, unless_disconnected
from runtime.ir import Message

_STORE_STATE_KEY = "openai_responses_store"


def store_of(request: Request[Any, Any, Any]) -> ResponseStore:
    """One store per app (and so per Runtime), created on first use."""
    state = request.app.state
    store: ResponseStore | None = state.get(_STORE_STATE_KEY)
    if store is None:
        store = ResponseStore(runtime_of(request).config.data_dir / STORE_FILE)
        state[_STORE_STATE_KEY] = store
    return store


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
        "background": False,
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


@post("/v1/responses", status_code=200)
async def create_response(request: Request[Any, Any, Any]) -> Response[Any] | ServerSentEvent:
    wire = decode_body(await request.body(), ResponsesRequest)
    key = api_key_of(request)
    prior: list[Message] = []
    if wire.previous_response_id is not None:
        prior = (await _stored(request, wire.previous_response_id, "previous_response_id")).conversation
    turn = to_ir(wire, prior)
    runtime = runtime_of(request)
    meta = Meta(
        id=new_id("resp_"),
        created_at=now(),
        model=runtime.config.model_id,
        echo=_echo(wire, turn, runtime.config.sampling),
    )
    store = store_of(request)

    async def on_done(body: dict[str, Any], builder: OutputBuilder) -> None:
        if wire.store is False:
            return
        record = StoredResponse(
            id=meta.id,
            key_id=key.id,
            created_at=meta.created_at,
            body=body,
            input_items=turn.input_items,
            conversation=turn.conversation + builder.conversation(),
        )
        await store.save(record)

    events = runtime.run(turn.chat, key)
    if wire.stream:
        return sse_response(render_stream(await primed(events), meta, on_done))
    builder = await unless_disconnected(request, collect(events))
    body = response_body(meta, builder, builder.status)
    await on_done(body, builder)
    return Response(body)


@get("/v1/responses/{response_id:str}")
async def retrieve_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> dict[str, Any]:
    return (await _stored(request, response_id, "response_id")).body


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> dict[str, Any]:
    if not await store_of(request).delete(response_id, api_key_of(request).id):
        raise _not_found(response_id, "response_id")
    return {"id": response_id, "object": "response", "deleted": True}


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


route_handlers = [create_response, retrieve_response, delete_response, list_input_items]
