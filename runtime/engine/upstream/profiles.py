"""What each kind of OpenAI-compatible server does differently, and how to tell them apart.

All of them speak Chat Completions, but not the same Chat Completions. A `Profile` records the
differences that change what the upstream engine sends or how it reads the answer; the kind is
detected from `GET /v1/models` (`owned_by`) when a backend is probed. Differences measured
against a real server are marked so; the others come from the servers' documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["toolstudio", "llama-cpp-python", "llama-server", "vllm", "generic"]
Tokenizer = Literal["anthropic-count", "text", "apply-template", "messages", "estimate"]


@dataclass(frozen=True, slots=True)
class Profile:
    kind: Kind
    # How a JSON Schema response format is sent: OpenAI's `json_schema`, or llama-cpp-python's
    # own `{"type": "json_object", "schema": ...}` (its request model refuses `json_schema`
    # with a 500; measured).
    json_schema: Literal["json_schema", "json_object_schema"] = "json_schema"
    # Does `tool_choice: "required"` force a call? llama-cpp-python accepts it and ignores it
    # (the model answers in text; measured): refused with a 400 naming it instead.
    tool_choice_required: bool = True
    # Does the stream end with a usage chunk when `stream_options.include_usage` is set?
    # llama-cpp-python never sends one (measured): usage is then estimated.
    stream_usage: bool = True
    # The name of the repetition penalty (vLLM's differs; None: the server has none).
    repeat_penalty: str | None = "repeat_penalty"
    # Can the reply continue a final assistant message (Anthropic's prefill)?
    # "final": llama-server continues a trailing assistant message by itself, and its reply
    # starts with that message again (measured: the engine strips it);
    # "continue": vLLM's `continue_final_message`; None: not supported.
    prefill: Literal["final", "continue"] | None = None
    # How prompt tokens are counted: toolstudio's Anthropic `count_tokens`; llama-cpp-python's
    # `/extras/tokenize/count` over the messages' text (no template); llama-server's
    # `/apply-template` + `/tokenize`; vLLM's `/tokenize` with `messages`; or the estimate.
    tokenizer: Tokenizer = "estimate"
    # Does the server take `top_k`, `min_p` (llama.cpp's and vLLM's extensions)?
    extended_sampling: bool = True
    # Send our `x-request-id` on, to match log lines? Only toolstudio takes it as given:
    # llama-cpp-python answers 400 with an empty body unless it is a UUID (measured), and vLLM
    # makes it its own request id, which the rounds of an agent loop would then repeat.
    forward_request_id: bool = False


PROFILES: dict[Kind, Profile] = {
    "toolstudio": Profile("toolstudio", tokenizer="anthropic-count", forward_request_id=True),
    "llama-cpp-python": Profile(
        "llama-cpp-python",
        json_schema="json_object_schema",
        tool_choice_required=False,
        stream_usage=False,
        tokenizer="text",
    ),
    "llama-server": Profile("llama-server", prefill="final", tokenizer="apply-template"),
    "vllm": Profile("vllm", repeat_penalty="repetition_penalty", prefill="continue", tokenizer="messages"),
    # Anything else (SGLang, a hosted API, a proxy): standard fields only.
    "generic": Profile("generic", repeat_penalty=None, extended_sampling=False),
}

# `owned_by` in `GET /v1/models`, as each server fills it in.
_OWNERS: dict[str, Kind] = {
    "toolstudio": "toolstudio",
    "me": "llama-cpp-python",
    "llamacpp": "llama-server",
    "vllm": "vllm",
}


def kind_from_models(body: object) -> Kind:
    """The server kind a `GET /v1/models` body reveals (`generic` when it does not)."""
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return _OWNERS.get(str(data[0].get("owned_by", "")), "generic")
    return "generic"


def model_ids(body: object) -> list[str]:
    """The model ids a `GET /v1/models` body lists."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return []
    return [str(m["id"]) for m in body["data"] if isinstance(m, dict) and "id" in m]


def context_from_models(body: object) -> int | None:
    """vLLM lists `max_model_len` with each model."""
    if isinstance(body, dict) and isinstance(body.get("data"), list) and body["data"]:
        first = body["data"][0]
        if isinstance(first, dict) and isinstance(first.get("max_model_len"), int):
            return int(first["max_model_len"])
    return None
