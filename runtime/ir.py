"""The neutral request IR every dialect maps *to*.

A dialect parses its wire body into a `ChatRequest`; the runtime and the engine only ever
see these types. Nothing here knows about HTTP or any one API's field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image, either inline bytes or a URL still to be fetched."""

    data: bytes | None = None
    url: str | None = None
    media_type: str | None = None
    # The part's path in the client's request, for error messages; not part of the image.
    where: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A call the assistant made. `arguments` is JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    call_id: str
    content: str
    is_error: bool = False
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    text: str


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart | ReasoningPart


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call. `parameters` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


@dataclass(slots=True)
class Sampling:
    """Per-request sampling. `None` means: use the server default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    # None: no logprobs (nothing computed). k in 0..20: each generated text token's log
    # probability plus the k most likely tokens at its position.
    logprobs: int | None = None


@dataclass(frozen=True, slots=True)
class OutputFormat:
    kind: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False


@dataclass(slots=True)
class ServerTools:
    """The toolstudio extension: tools the server runs itself between generations."""

    enabled: bool | None = None  # None: the request did not say (the server default applies)
    names: list[str] = field(default_factory=list)
    session_id: str | None = None
    max_calls: int | None = None  # server tool calls per request (OpenAI's `max_tool_calls`), not rounds


@dataclass(frozen=True, slots=True)
class CachePoint:
    """Where the prompt prefix a client asked to have cached ends (Anthropic's last
    `cache_control` breakpoint), in this request's own terms: the first `tools` tool specs
    (None: all), then the first `messages` messages, the last of them cut to its first
    `parts` parts (None: whole). The engine renders that prefix to find its length in
    tokens, and reports how many of them it newly wrote to the cache (`cache_write_tokens`)."""

    tools: int | None = None
    messages: int = 0
    parts: int | None = None


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    sampling: Sampling = field(default_factory=Sampling)
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    output_format: OutputFormat = field(default_factory=OutputFormat)
    reasoning: bool | None = None
    reasoning_budget: int | None = None  # most thinking tokens before the engine closes the block
    reasoning_effort: str | None = None  # OpenAI's low/medium/high, for templates that read it
    server_tools: ServerTools = field(default_factory=ServerTools)
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Tools were offered earlier in this exchange but none may be called now (the agent
    # loop's last round): the engine forbids the family's call marker and drops call markup.
    calls_forbidden: bool = False
    # Text the assistant's reply already starts with (Anthropic's final assistant message):
    # generation continues it, and the reply does not repeat it.
    prefill: str = ""
    # Cached prompt prefixes (slot KV, host cache) are shared only within one scope, the API
    # key: otherwise time to first token would tell one key what another key's prompts start with.
    cache_scope: str = ""
    # Choices to generate for this one prompt (OpenAI's `n`): the prompt is prefilled once;
    # with n > 1 the engine's events come wrapped in `ChoiceEvent`.
    n: int = 1
    # The end of the prefix the client asked to cache (None: no breakpoint). Every prefix
    # is cached anyway; this only decides what usage reports as written to the cache.
    cache_point: CachePoint | None = None
