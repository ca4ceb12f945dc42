"""POST /v1/chat/completions"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import ServerSentEvent

from dialects.common import decode_body, new_id, now
from dialects.openai_chat.adapter import to_ir
from dialects.openai_chat.protocol import ChatCompletionRequest
from dialects.openai_chat.render import Meta, render_response, render_stream
from dialects.sse import primed, sse_response
from runtime.events import fold
from runtime.http import api_key_of, runtime_of, unless_disconnected


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any] | ServerSentEvent:
    wire = decode_body(await request.body(), ChatCompletionRequest)
    chat = to_ir(wire)
    runtime = runtime_of(request)
    events = runtime.run(chat, api_key_of(request))
    meta = Meta(id=new_id("chatcmpl-"), created=now(), model=runtime.config.model_id)
    if wire.stream:
        include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
        stream = render_stream(await primed(events), meta, include_usage=include_usage)
        return sse_response(stream)
    completion = await unless_disconnected(request, fold(events))
    return Response(render_response(completion, meta))
