"""Anthropic Messages wire structs. Field names are the API's, verbatim.

Unknown fields are accepted (`citations`, `metadata` keys, newer API fields and the SDK's
`extra_body`); wrong types and out-of-range values fail decoding with a message naming the
field. `cache_control` is read where Anthropic allows it (tools, system text blocks, message
content blocks, and the top level for automatic caching): it decides what usage reports as
written to the cache. Content blocks and sources are tagged unions on `type`, so an unknown block type is
a 400 that names it rather than something silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

NonNegInt = Annotated[int, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
# Anthropic's own limit on tool names.
ToolName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]


# -- content blocks ------------------------------------------------------------------------------


class CacheControl(Struct, tag_field="type", tag="ephemeral"):
    """A prompt-cache breakpoint: the prompt up to and including the block carrying it is to
    be cached. `ttl` is echoed in usage (`cache_creation`); this server keeps every prefix
    while RAM allows, whatever the ttl."""

    ttl: Literal["5m", "1h"] = "5m"


class TextBlock(Struct, tag_field="type", tag="text"):
    text: str
    cache_control: CacheControl | None = None


class Base64Source(Struct, tag_field="type", tag="base64"):
    media_type: str
    data: str


class URLSource(Struct, tag_field="type", tag="url"):
    url: str


class FileSource(Struct, tag_field="type", tag="file"):
    file_id: str


class ImageBlock(Struct, tag_field="type", tag="image"):
    source: Base64Source | URLSource | FileSource
    cache_control: CacheControl | None = None


class PlainTextSource(Struct, tag_field="type", tag="text"):
    data: str
    media_type: str = "text/plain"


class ContentSource(Struct, tag_field="type", tag="content"):
    content: str | list[TextBlock | ImageBlock]


class DocumentBlock(Struct, tag_field="type", tag="document"):
    source: PlainTextSource | ContentSource | Base64Source | URLSource | FileSource
    title: str | None = None
    context: str | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(Struct, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | DocumentBlock] | None = None
    is_error: bool = False
    cache_control: CacheControl | None = None


class ThinkingBlock(Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Struct, tag_field="type", tag="redacted_thinking"):
    data: str


ContentBlock = (
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)


class InputMessage(Struct):
    # "system" turns inside `messages` are newer API surface; accepted so such clients work.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# -- tools ---------------------------------------------------------------------------------------


class Tool(Struct):
    """A custom tool (`type` absent or "custom") or one of Anthropic's versioned built-ins
    (`bash_20250124`, `web_search_20250305`, ...): which is which is decided in the adapter."""

    name: ToolName
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None


class ToolChoiceAuto(Struct, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(Struct, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(Struct, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(Struct, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


# -- thinking and output -------------------------------------------------------------------------


class ThinkingConfig(Struct):
    """`enabled` (with `budget_tokens`), `disabled`, `adaptive`, or a newer mode. Kept loose on
    purpose: an unknown mode falls back to the model's default instead of failing the request."""

    type: str
    budget_tokens: PositiveInt | None = None


class JSONOutputFormat(Struct):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(Struct):
    format: JSONOutputFormat | None = None
    effort: str | None = None


# -- requests ------------------------------------------------------------------------------------


class MessageInputs(Struct, kw_only=True):
    """Everything that shapes the prompt: the body of `count_tokens`, and of `create` minus
    the generation-only fields."""

    model: str
    messages: Annotated[list[InputMessage], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    # The beta `output_format`, and the GA `output_config.format` the current SDK sends.
    output_format: JSONOutputFormat | None = None
    output_config: OutputConfig | None = None
    # Automatic caching: a breakpoint on the last cacheable block, wherever that is.
    cache_control: CacheControl | None = None
    # toolstudio extension: server-side tools
    enable_tools: bool | None = None
    enabled_tools: list[str] | None = None
    session_id: str | None = None
    max_tool_calls_per_message: PositiveInt | None = None


class CreateMessageRequest(MessageInputs, kw_only=True):
    max_tokens: PositiveInt
    stop_sequences: list[str] | None = None
    temperature: Probability | None = None
    top_p: Probability | None = None
    top_k: NonNegInt | None = None
    metadata: dict[str, Any] | None = None
    stream: bool = False


class CountTokensRequest(MessageInputs, kw_only=True):
    pass
