"""The IR as a Chat Completions request, and an upstream's stream chunks as our events.

`request_body` is the one place that decides what reaches the upstream; `ChunkReader` turns one
choice's chunks back into `TextDelta`/`ReasoningDelta`/`ToolCall*` events, holding what the
servers do differently (a name repeated in every chunk, calls without ids, reasoning under two
field names, usage with or without cached tokens).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from runtime.config import SamplingDefaults
from runtime.engine.stops import StopMatcher
from runtime.engine.upstream.profiles import Profile
from runtime.errors import InvalidRequest, UnsupportedFeature
from runtime.events import (
    Event,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    TopLogprob,
    Usage,
)
from runtime.ir import ChatRequest, ImagePart, Message, ReasoningPart, TextPart, ToolCallPart, ToolResultPart
from runtime.observability import warn_client

# A response format's schema goes to the upstream as-is; its name must match OpenAI's pattern.
_DEFAULT_SCHEMA_NAME = "response"


def check_supported(request: ChatRequest, profile: Profile, *, tools: bool | None = None) -> None:
    """Refuse, naming the feature, what this kind of upstream would silently do differently.

    `tools`: whether the backend's chat template can offer tools at all (llama-server says so
    in `/props`; None: unknown). Without, llama-server drops the tools and answers in text
    (measured): a forced call is refused, and with `auto` the client is warned."""
    if request.tools and tools is False:
        if request.tool_choice.mode in ("required", "function"):
            raise UnsupportedFeature(
                f"tool calls are not supported by this server's upstream ({profile.kind}: its model's chat "
                "template has no tool support)",
                param="tool_choice",
            )
        if request.tool_choice.mode == "auto":
            warn_client(f"tools not offered: the upstream ({profile.kind}) model's chat template has no tool support")
    if request.tool_choice.mode == "required" and request.tools and not profile.tool_choice_required:
        raise UnsupportedFeature(
            f"tool_choice 'required' is not supported by this server's upstream ({profile.kind} ignores it); "
            "name the tool to force it, or use 'auto'",
            param="tool_choice",
        )
    if request.prefill and profile.prefill is None:
        raise UnsupportedFeature(
            f"a prefilled assistant reply (a final assistant message) is not supported by this server's "
            f"upstream ({profile.kind} cannot continue a message)",
            param="messages",
        )
    if request.tool_choice.mode in ("required", "function") and not request.tools:
        raise InvalidRequest(f"tool_choice {request.tool_choice.mode!r} needs at least one tool", param="tool_choice")
    if request.tool_choice.mode == "function" and request.tool_choice.name not in {t.name for t in request.tools}:
        raise InvalidRequest(
            f"tool_choice names {request.tool_choice.name!r}, which is not among the tools", param="tool_choice"
        )
    if request.output_format.kind == "json_schema" and not isinstance(request.output_format.schema, dict):
        raise InvalidRequest("a json_schema response format needs a schema object", param="response_format")


def request_body(
    request: ChatRequest,
    *,
    model: str,
    profile: Profile,
    defaults: SamplingDefaults,
    vision: bool,
    seed_offset: int = 0,
) -> dict[str, Any]:
    """One streaming Chat Completions request for `request` (one choice: `n` runs as `n` requests).

    Stop sequences are not sent: the engine matches them itself, so it can say which one
    ended the reply (Anthropic's `stop_sequence`), and closes the stream when one hits.
    """
    messages = [m for message in request.messages for m in _messages(message, vision)]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.prefill:
        messages.append({"role": "assistant", "content": request.prefill})
        if profile.prefill == "continue":
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
    _sampling(body, request, profile, defaults, seed_offset)
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    **({"strict": True} if t.strict else {}),
                },
            }
            for t in request.tools
        ]
        choice = request.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.mode == "function" else choice.mode
        )
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    _response_format(body, request, profile)
    kwargs = dict(request.template_kwargs)
    if request.reasoning is not None:
        kwargs.setdefault("enable_thinking", request.reasoning)
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    if request.reasoning_effort:
        body["reasoning_effort"] = request.reasoning_effort
    return body


def _sampling(
    body: dict[str, Any], request: ChatRequest, profile: Profile, defaults: SamplingDefaults, seed_offset: int
) -> None:
    """The request's sampling, the front-end's defaults where it says nothing (as with a local model)."""
    s = request.sampling
    body["temperature"] = defaults.temperature if s.temperature is None else s.temperature
    body["top_p"] = defaults.top_p if s.top_p is None else s.top_p
    if profile.extended_sampling:
        body["top_k"] = defaults.top_k if s.top_k is None else s.top_k
        body["min_p"] = defaults.min_p if s.min_p is None else s.min_p
    elif s.top_k is not None or s.min_p is not None:
        raise UnsupportedFeature(
            f"top_k and min_p are not supported by this server's upstream ({profile.kind})", param="top_k"
        )
    repeat = defaults.repeat_penalty if s.repeat_penalty is None else s.repeat_penalty
    if profile.repeat_penalty is not None:
        body[profile.repeat_penalty] = repeat
    elif s.repeat_penalty is not None and s.repeat_penalty != 1.0:
        raise UnsupportedFeature(
            f"repeat_penalty is not supported by this server's upstream ({profile.kind})", param="repeat_penalty"
        )
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.seed is not None:
        body["seed"] = s.seed + seed_offset  # choice i of n: seed + i, as the local engine does
    max_tokens = s.max_tokens if s.max_tokens is not None else defaults.max_tokens
    if max_tokens is not None:
        if max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        body["max_tokens"] = max_tokens
    if s.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = s.logprobs


def _response_format(body: dict[str, Any], request: ChatRequest, profile: Profile) -> None:
    out = request.output_format
    if out.kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif out.kind == "json_schema":
        if profile.json_schema == "json_object_schema":
            body["response_format"] = {"type": "json_object", "schema": out.schema}
        else:
            spec: dict[str, Any] = {"name": out.name or _DEFAULT_SCHEMA_NAME, "schema": out.schema}
            if out.strict:
                spec["strict"] = True
            body["response_format"] = {"type": "json_schema", "json_schema": spec}


def _image_url(part: ImagePart) -> str:
    if part.data is not None:
        return f"data:{part.media_type or 'image/png'};base64,{base64.b64encode(part.data).decode()}"
    if part.url is None:
        raise InvalidRequest("an image part has neither data nor a URL")
    return part.url


def _messages(message: Message, vision: bool) -> list[dict[str, Any]]:
    """One IR message as Chat Completions messages (a tool message per result)."""
    if message.role == "tool":
        out = []
        for part in message.parts:
            if isinstance(part, ToolResultPart):
                out.append({"role": "tool", "tool_call_id": part.call_id, "content": part.content})
            elif isinstance(part, TextPart) and part.text:
                out.append({"role": "user", "content": part.text})
        return out
    texts = [p.text for p in message.parts if isinstance(p, TextPart)]
    images = [p for p in message.parts if isinstance(p, ImagePart)]
    item: dict[str, Any] = {"role": message.role}
    if images and vision:
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
        item["content"] = content
    else:
        # Without vision the images are left out (the runtime has told the client so). An
        # empty string, not null: llama-cpp-python refuses a null assistant content (measured).
        item["content"] = "".join(texts)
    if message.role == "assistant":
        reasoning = "".join(p.text for p in message.parts if isinstance(p, ReasoningPart))
        if reasoning:
            item["reasoning_content"] = reasoning
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        if calls:
            item["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                for c in calls
            ]
    return [item]


# -- reading the stream ----------------------------------------------------------------------


class ControlEscaper:
    """Escapes raw control characters inside JSON strings, fragment by fragment.

    llama-cpp-python's JSON-Schema grammar lets a string hold a raw newline, so a "constrained"
    call's arguments are not JSON (`{"code": "a = 1<LF>print(a)"}`; measured). Escaping them as
    the fragments pass keeps the streamed deltas and the final arguments the same valid JSON;
    valid JSON has no such characters in strings, so it passes through unchanged."""

    __slots__ = ("escaped", "in_string")

    def __init__(self) -> None:
        self.in_string = False
        self.escaped = False  # the previous character was a backslash inside a string

    def feed(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                elif ord(char) < 0x20:
                    out.append(json.dumps(char)[1:-1])
                    continue
            elif char == '"':
                self.in_string = True
            out.append(char)
        return "".join(out)


@dataclass(slots=True)
class _Call:
    index: int  # ours: dense, in order of appearance
    id: str = ""
    name: str = ""
    arguments: str = ""
    started: bool = False
    escaper: ControlEscaper = field(default_factory=ControlEscaper)


@dataclass(slots=True)
class ChunkReader:
    """One choice's `delta`s -> events. Feed each choice object; `finish()` at the end."""

    stops: StopMatcher
    # An echo of the prefill to drop from the start of the content (llama-server repeats it).
    echo: str = ""
    held: str = ""  # content that may still be the start of that echo
    calls: dict[int, _Call] = field(default_factory=dict)  # by the upstream's index
    finish_reason: str | None = None
    stop_hit: str | None = None
    generated: int = 0  # chunks that carried output: the completion estimate without usage
    chars: int = 0  # characters of output, for the same estimate
    pending: list[TokenLogprob] = field(default_factory=list)

    @classmethod
    def new(cls, stops: list[str], *, echo: str = "") -> ChunkReader:
        return cls(StopMatcher(stops), echo=echo)

    def _unecho(self, content: str) -> str:
        """`content` without the echoed prefill at the start of the reply."""
        if not self.echo:
            return content
        text = self.held + content
        if self.echo.startswith(text):
            self.held = text  # all of it may still be the echo
            return ""
        self.held = ""
        echo, self.echo = self.echo, ""
        return text[len(echo) :] if text.startswith(echo) else text

    def feed(self, choice: dict[str, Any]) -> list[Event]:
        """Events for one `choices[i]` object of a chunk."""
        events: list[Event] = []
        delta = choice.get("delta") or {}
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.pending += [_token_logprob(entry) for entry in logprobs["content"] if isinstance(entry, dict)]
        # vLLM's reasoning parsers wrote `reasoning_content`, newer ones `reasoning`.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._count(reasoning)
            events.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._count(content)
            text, hit = self.stops.feed(self._unecho(content))
            if text:
                events.append(self._text(text))
            if hit is not None:
                self.stop_hit = hit
                return events
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                events += self._call(call)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        return events

    def _count(self, text: str) -> None:
        self.generated += 1
        self.chars += len(text)

    def _text(self, text: str) -> TextDelta:
        logprobs, self.pending = tuple(self.pending), []
        return TextDelta(text, logprobs)

    def _call(self, call: dict[str, Any]) -> list[Event]:
        upstream_index = call.get("index", len(self.calls))
        state = self.calls.get(upstream_index)
        if state is None:
            state = self.calls[upstream_index] = _Call(index=len(self.calls))
        function = call.get("function") or {}
        if call.get("id") and not state.id:
            state.id = str(call["id"])
        name = function.get("name")
        # llama-cpp-python repeats the whole name (and id) in every chunk of a call (measured);
        # OpenAI sends it once. Either way the first non-empty name is the name.
        if isinstance(name, str) and name and not state.started:
            state.name = name
        fragment = function.get("arguments")
        fragment = state.escaper.feed(fragment) if isinstance(fragment, str) else ""
        events: list[Event] = []
        if fragment:
            self._count(fragment)
        if not state.started and state.name:
            state.started = True
            state.id = state.id or f"call_{uuid.uuid4().hex[:24]}"  # some servers send none
            events.append(ToolCallStart(state.index, state.id, state.name))
            fragment = state.arguments + fragment  # what came before the name
            state.arguments = ""
        if fragment:
            state.arguments += fragment
            if state.started:
                events.append(ToolCallDelta(state.index, fragment))
        return events

    def finish(self) -> tuple[list[Event], FinishReason]:
        """The text still held back, the calls' ends, and the finish reason."""
        events: list[Event] = []
        if self.stop_hit is None and (tail := self.stops.flush()):
            events.append(self._text(tail))
        for state in self.calls.values():
            if not state.started:
                continue  # a call that never got a name is not a call
            events.append(ToolCallEnd(state.index, state.id, state.name, state.arguments or "{}"))
        if self.stop_hit is not None:
            return events, "stop_sequence"
        if self.finish_reason == "length":
            return events, "length"
        # A call is a call whatever the server's finish reason says (some say "stop").
        return events, "tool_calls" if any(s.started for s in self.calls.values()) else "stop"


def _token_logprob(entry: dict[str, Any]) -> TokenLogprob:
    def text_bytes(item: dict[str, Any]) -> bytes:
        raw = item.get("bytes")
        # llama-cpp-python sends `bytes: null` (measured): the token's text is all there is.
        return bytes(raw) if isinstance(raw, list) else str(item.get("token", "")).encode()

    top = tuple(
        TopLogprob(text_bytes(t), float(t.get("logprob", 0.0)))
        for t in entry.get("top_logprobs") or []
        if isinstance(t, dict)
    )
    return TokenLogprob(text_bytes(entry), float(entry.get("logprob", 0.0)), top)


def usage_of(chunk: dict[str, Any]) -> Usage | None:
    """A chunk's usage (prompt, completion, cached prompt tokens), if it carries one.

    Cached tokens: OpenAI's `prompt_tokens_details.cached_tokens`, else llama-server's
    `timings.cache_n`."""
    usage = chunk.get("usage")
    if not isinstance(usage, dict) or "prompt_tokens" not in usage:
        return None
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None and isinstance(chunk.get("timings"), dict):
        cached = chunk["timings"].get("cache_n")
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), int(cached or 0))


def error_of(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """An in-band error object (`data: {"error": {...}}`), as llama-server and toolstudio send."""
    error = chunk.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return None


def flatten_text(request: ChatRequest) -> str:
    """The request's text (roles, contents, calls, tool specs) as one string, for counting
    tokens where the upstream cannot render its template for us."""
    lines: list[str] = []
    for message in request.messages:
        lines.append(message.role)
        for part in message.parts:
            if isinstance(part, TextPart | ReasoningPart):
                lines.append(part.text)
            elif isinstance(part, ToolCallPart):
                lines.append(f"{part.name} {part.arguments}")
            elif isinstance(part, ToolResultPart):
                lines.append(part.content)
    for tool in request.tools:
        lines.append(json.dumps({"name": tool.name, "description": tool.description, "parameters": tool.parameters}))
    lines.append(request.prefill)
    return "\n".join(lines)
