"""Anthropic content blocks -> IR parts, one turn at a time.

A user turn may hold `tool_result` blocks next to text and images; the IR keeps tool results
as their own `tool` messages (one per call, as chat templates expect), so one Anthropic user
turn can become several IR messages.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json

from dialects.anthropic.protocol import (
    ContentBlock,
    ContentSource,
    DocumentBlock,
    FileSource,
    ImageBlock,
    PlainTextSource,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
)
from dialects.common import image_from_url
from runtime.errors import InvalidRequest, UnsupportedFeature
from runtime.ir import ImagePart, Message, Part, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

Located = tuple[str, ContentBlock]  # (the block's path in the request, the block)


def image_part(block: ImageBlock, param: str) -> ImagePart:
    source = block.source
    if isinstance(source, URLSource):
        return dataclasses.replace(image_from_url(source.url, param=f"{param}.source.url"), where=param)
    if isinstance(source, FileSource):
        raise UnsupportedFeature(
            "image file_id sources need the Files API, which this server does not have; "
            "send the image as a base64 or url source",
            param=f"{param}.source",
        )
    try:
        data = base64.b64decode(source.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{param}.source.data: the image is not valid base64: {exc}", param=param) from exc
    # The runtime decodes every image (Pillow) before the engine sees it, so bytes that are no
    # image still become a 400 there; the declared type is only a hint.
    return ImagePart(data=data, media_type=source.media_type, where=param)


def _document_parts(block: DocumentBlock, param: str) -> list[Part]:
    source = block.source
    header = "".join(f"{line}\n\n" for line in (block.title, block.context) if line)
    if isinstance(source, PlainTextSource):
        return [TextPart(header + source.data)]
    if isinstance(source, ContentSource):
        if isinstance(source.content, str):
            return [TextPart(header + source.content)]
        parts: list[Part] = [TextPart(header)] if header else []
        for j, item in enumerate(source.content):
            parts.append(TextPart(item.text) if isinstance(item, TextBlock) else image_part(item, f"{param}[{j}]"))
        return parts
    kind = "file_id" if isinstance(source, FileSource) else "PDF"
    raise UnsupportedFeature(
        f"{param}: {kind} documents are not supported by this server; send text (a text or content source)",
        param=f"{param}.source",
    )


def system_text(content: str | list[Located]) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for param, block in content:
        if not isinstance(block, TextBlock):
            raise InvalidRequest(f"{param}: system content may only hold text blocks", param=param)
        texts.append(block.text)
    return "\n".join(texts)


def _misplaced(param: str, block: ContentBlock, role: str) -> InvalidRequest:
    kind = type(block).__struct_config__.tag
    return InvalidRequest(f"{param}: `{kind}` blocks are not allowed in {role} messages", param=param)


def assistant_parts(blocks: list[Located]) -> list[Part]:
    parts: list[Part] = []
    for param, block in blocks:
        match block:
            case TextBlock(text=text):
                if text:
                    parts.append(TextPart(text))
            case ThinkingBlock(thinking=thinking):
                parts.append(ReasoningPart(thinking))
            case RedactedThinkingBlock():
                pass  # opaque, encrypted by Anthropic: nothing a local model could read
            case ToolUseBlock(id=call_id, name=name, input=arguments):
                parts.append(ToolCallPart(call_id, name, json.dumps(arguments, ensure_ascii=False)))
            case _:
                raise _misplaced(param, block, "assistant")
    return parts


def _tool_result(block: ToolResultBlock, param: str, previous_calls: dict[str, str]) -> tuple[Message, list[Part]]:
    """The IR tool message, and any images it carried (the IR's tool results are text)."""
    if block.tool_use_id not in previous_calls:
        raise InvalidRequest(
            f"{param}: unexpected `tool_use_id` found in `tool_result` blocks: {block.tool_use_id}. "
            "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
            param=f"{param}.tool_use_id",
        )
    texts: list[str] = []
    images: list[Part] = []
    content = block.content
    if isinstance(content, str):
        texts.append(content)
    for j, item in enumerate(content if isinstance(content, list) else []):
        where = f"{param}.content[{j}]"
        if isinstance(item, TextBlock):
            texts.append(item.text)
        elif isinstance(item, ImageBlock):
            images.append(image_part(item, where))
        else:
            for part in _document_parts(item, where):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                else:
                    images.append(part)
    result = ToolResultPart(
        call_id=block.tool_use_id,
        content="\n".join(texts),
        is_error=block.is_error,
        name=previous_calls[block.tool_use_id],
    )
    return Message("tool", [result]), images


def user_messages(blocks: list[Located], previous_calls: dict[str, str]) -> list[Message]:
    """Tool results first (they answer the previous turn), then whatever the user added."""
    results: list[Message] = []
    parts: list[Part] = []
    for param, block in blocks:
        match block:
            case TextBlock(text=text):
                if text:
                    parts.append(TextPart(text))
            case ImageBlock():
                parts.append(image_part(block, param))
            case DocumentBlock():
                parts.extend(_document_parts(block, param))
            case ToolResultBlock():
                message, images = _tool_result(block, param, previous_calls)
                results.append(message)
                parts.extend(images)
            case _:
                raise _misplaced(param, block, "user")
    return results + ([Message("user", parts)] if parts else [])
