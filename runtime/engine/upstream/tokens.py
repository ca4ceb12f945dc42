"""Counting prompt tokens on an upstream, or estimating them where it cannot say.

Exact where the upstream renders its own template and tokenizes the result:
- toolstudio: `POST /v1/messages/count_tokens` with the request as an Anthropic body;
- llama-server: `POST /apply-template`, then `POST /tokenize` of the rendered prompt;
- vLLM: `POST /tokenize` with the chat messages.
Approximate:
- llama-cpp-python: `POST /extras/tokenize/count` of the messages' text (its tokenizer, but
  no template), plus `TEMPLATE_TOKENS_PER_MESSAGE` for each message's role markers;
- anything else: `estimate`, one token per `ESTIMATE_BYTES_PER_TOKEN` UTF-8 bytes of that text
  (English BPE averages about 4 bytes a token, so this overcounts, on purpose: the count decides
  whether tool output still fits the context) plus the same per-message allowance, and
  `ESTIMATE_IMAGE_TOKENS` per image.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from runtime.engine.upstream.profiles import Tokenizer
from runtime.engine.upstream.wire import flatten_text
from runtime.ir import ChatRequest, ImagePart, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

ESTIMATE_BYTES_PER_TOKEN = 3
TEMPLATE_TOKENS_PER_MESSAGE = 4
ESTIMATE_IMAGE_TOKENS = 768


def _images(request: ChatRequest) -> int:
    return sum(1 for m in request.messages for p in m.parts if isinstance(p, ImagePart))


def overhead(request: ChatRequest) -> int:
    """Tokens the text count leaves out: role markers and images."""
    return TEMPLATE_TOKENS_PER_MESSAGE * (len(request.messages) + 1) + ESTIMATE_IMAGE_TOKENS * _images(request)


def estimate(request: ChatRequest) -> int:
    """The documented estimate: see the module docstring."""
    return math.ceil(len(flatten_text(request).encode()) / ESTIMATE_BYTES_PER_TOKEN) + overhead(request)


def count_request(tokenizer: Tokenizer, request: ChatRequest, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The first HTTP call (path, JSON body) of an exact or text count. `body` is the
    generation request `request_body` would send (messages and tools as the upstream reads them)."""
    if tokenizer == "anthropic-count":
        return "/v1/messages/count_tokens", anthropic_body(request, model=str(body["model"]))
    if tokenizer == "text":
        return "/extras/tokenize/count", {"input": flatten_text(request)}
    keep = ("model", "messages", "tools", "chat_template_kwargs", "continue_final_message", "add_generation_prompt")
    chat = {k: v for k, v in body.items() if k in keep}
    if tokenizer == "apply-template":
        return "/apply-template", chat
    return "/tokenize", {"add_generation_prompt": True, **chat}  # vLLM's chat form


def count_from(tokenizer: Tokenizer, request: ChatRequest, answer: Any) -> int | None:
    """The token count one answer gives (None: the answer is not what was expected)."""
    if not isinstance(answer, dict):
        return None
    if tokenizer == "anthropic-count" and isinstance(answer.get("input_tokens"), int):
        return int(answer["input_tokens"])
    if tokenizer == "text" and isinstance(answer.get("count"), int):
        return int(answer["count"]) + overhead(request)
    if isinstance(answer.get("count"), int):
        return int(answer["count"])
    if isinstance(answer.get("tokens"), list):
        return len(answer["tokens"])
    return None


def anthropic_body(request: ChatRequest, *, model: str) -> dict[str, Any]:
    """`request` as an Anthropic Messages body, for toolstudio's exact `count_tokens`."""
    system = "\n\n".join(m.text for m in request.messages if m.role == "system")
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks  # Anthropic alternates roles: merge neighbours
        else:
            turns.append({"role": role, "content": blocks})

    for message in request.messages:
        blocks: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart) and part.text and message.role != "system":
                blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ReasoningPart) and part.text:
                # A thinking block needs a signature; counted as text, the tokens are the same.
                blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart) and part.data is not None:
                data = base64.b64encode(part.data).decode()
                source = {"type": "base64", "media_type": part.media_type or "image/png", "data": data}
                blocks.append({"type": "image", "source": source})
            elif isinstance(part, ImagePart) and part.url:
                blocks.append({"type": "image", "source": {"type": "url", "url": part.url}})
            elif isinstance(part, ToolCallPart):
                try:
                    arguments = json.loads(part.arguments or "{}")
                except ValueError:
                    arguments = {}
                if not isinstance(arguments, dict):
                    arguments = {}
                blocks.append({"type": "tool_use", "id": part.id, "name": part.name, "input": arguments})
            elif isinstance(part, ToolResultPart):
                blocks.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": part.call_id,
                        "content": part.content,
                        "is_error": part.is_error,
                    }
                )
        if message.role != "system":
            add("assistant" if message.role == "assistant" else "user", blocks)
    if request.prefill:
        add("assistant", [{"type": "text", "text": request.prefill}])
    body: dict[str, Any] = {"model": model, "messages": turns or [{"role": "user", "content": ""}]}
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
        ]
        choice = request.tool_choice
        body["tool_choice"] = {
            "auto": {"type": "auto"},
            "none": {"type": "none"},
            "required": {"type": "any"},
            "function": {"type": "tool", "name": choice.name},
        }[choice.mode]
    return body
