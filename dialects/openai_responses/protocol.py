"""OpenAI Responses wire structs. Field names are the API's, verbatim.

Unknown fields are accepted (the SDKs' `extra_body`, and fields newer SDKs add). Input
items and tools stay raw dicts in `ResponsesRequest` and are converted one by one in the
adapter: message items may omit `type`, and an unsupported item or tool type deserves a
400 that names it, not a union-decoding message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

NonNegInt = Annotated[int, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]  # OpenAI's bound

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]

# -- content parts --------------------------------------------------------------------------


class InputText(Struct, tag_field="type", tag="input_text"):
    text: str


class OutputText(Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] | None = None


class Refusal(Struct, tag_field="type", tag="refusal"):
    refusal: str


class InputImage(Struct, tag_field="type", tag="input_image"):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(Struct, tag_field="type", tag="input_file"):
    file_id: str | None = None
    filename: str | None = None


ContentPart = InputText | OutputText | Refusal | InputImage | InputFile

# -- input items ----------------------------------------------------------------------------


class MessageItem(Struct):
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(Struct):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Struct):
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class SummaryText(Struct):
    text: str
    type: str = "summary_text"


class ReasoningText(Struct):
    text: str
    type: str = "reasoning_text"


class ReasoningItem(Struct):
    id: str | None = None
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem

ITEM_TYPES: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}

# -- tools, formats, options -----------------------------------------------------------------


class FunctionTool(Struct):
    name: str
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class TextFormatText(Struct, tag_field="type", tag="text"):
    pass


class TextFormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


class TextFormatJSONSchema(Struct, tag_field="type", tag="json_schema"):
    schema: dict[str, Any]
    name: str = "response"
    strict: bool | None = None
    description: str | None = None


TextFormat = TextFormatText | TextFormatJSONObject | TextFormatJSONSchema


class TextConfig(Struct):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(Struct):
    effort: Effort | None = None
    summary: str | None = None
    generate_summary: str | None = None


# What `include` may name (openai-python's `ResponseIncludable`); only the logprobs change
# what this server returns, the rest name outputs of tools it does not have.
Includable = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]


class ResponsesRequest(Struct):
    input: str | list[dict[str, Any]]
    model: str | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    max_output_tokens: PositiveInt | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    stream: bool = False
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    max_tool_calls: PositiveInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    top_logprobs: TopLogprobs | None = None
    include: list[Includable] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    # llama.cpp-style sampling knobs the OpenAI API lacks; the chat dialect accepts them too
    seed: int | None = None
    top_k: NonNegInt | None = None
    min_p: Probability | None = None
    repeat_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    stop: str | list[str] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # toolstudio extension: server-side tools
    enable_tools: bool | None = None
    enabled_tools: list[str] | None = None
    session_id: str | None = None
    max_tool_calls_per_message: PositiveInt | None = None
