"""POST /v1/messages and POST /v1/messages/count_tokens"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import ServerSentEvent

from dialects.anthropic.adapter import cache_ttl, to_ir
from dialects.anthropic.protocol import CountTokensRequest, CreateMessageRequest
from dialects.anthropic.render import Meta, render_message, render_stream
from dialects.common import decode_body, new_id
from dialects.sse import primed, sse_response
from runtime.events import fold
from runtime.http import api_key_of, runtime_of, unless_disconnected


@post("/v1/messages", status_code=200)
async def create_message(request: Request[Any, Any, Any]) -> Response[Any] | ServerSentEvent:
    wire = decode_body(await request.body(), CreateMessageRequest)
    chat = to_ir(wire)
    runtime = runtime_of(request)
    events = runtime.run(chat, api_key_of(request))
    meta = Meta(id=new_id("msg_"), model=runtime.config.model_id, cache_ttl=cache_ttl(wire))
    if wire.stream:
        return sse_response(render_stream(await primed(events), meta))
    completion = await unless_disconnected(request, fold(events))
    return Response(render_message(completion, meta))


@post("/v1/messages/count_tokens", status_code=200)
async def count_message_tokens(request: Request[Any, Any, Any]) -> dict[str, int]:
    wire = decode_body(await request.body(), CountTokensRequest)
    chat = to_ir(wire)
    # The engine renders the real chat template (tools included) and tokenizes it.
    return {"input_tokens": await runtime_of(request).count_tokens(chat)}
