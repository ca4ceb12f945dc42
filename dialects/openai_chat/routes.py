"""POST /v1/chat/completions"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import ServerSentEvent

from dialects.common import decode_body, new_id, now
from dialects.openai_chat.adapter import to_ir
from dialects.openai_chat.protocol import ChatCompletionRequest
from dialects.openai_chat.render import Meta, fold_choices, render_response, render_stream
from dialects.sse import primed, sse_response
from runtime.config import ServerConfig
from runtime.errors import InvalidRequest
from runtime.http import api_key_of, runtime_of, unless_disconnected
from runtime.ir import ChatRequest


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any] | ServerSentEvent:
    wire = decode_body(await request.body(), ChatCompletionRequest)
    chat = to_ir(wire)
    runtime = runtime_of(request)
    _check_n(chat, runtime.config)
    events = runtime.run(chat, api_key_of(request))
    meta = Meta(id=new_id("chatcmpl-"), created=now(), model=runtime.config.model_id)
    logprobs = chat.sampling.logprobs is not None
    if wire.stream:
        include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
        stream = render_stream(await primed(events), meta, include_usage=include_usage, logprobs=logprobs, n=chat.n)
        return sse_response(stream)
    choices = await unless_disconnected(request, fold_choices(events, chat.n))
    return Response(render_response(choices, meta, logprobs=logprobs))


def _check_n(chat: ChatRequest, config: ServerConfig) -> None:
    """`n` up to `--max-n`; several choices cannot share one server-side tool loop."""
    if chat.n > config.engine.max_n:
        raise InvalidRequest(f"n is {chat.n}; this server allows at most {config.engine.max_n}", param="n")
    tools = chat.server_tools.enabled
    if chat.n > 1 and (tools if tools is not None else config.tools.enable_by_default):
        raise InvalidRequest("n > 1 cannot be combined with server-side tools (enable_tools)", param="n")
