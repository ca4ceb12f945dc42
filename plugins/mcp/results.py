"""An MCP `CallToolResult` as a `ToolOutput`, faithfully:

- text content -> the result text (blocks joined by newlines);
- image content -> an image `Attachment` (as the python tool's figures), and a line in the text
  saying it is attached; audio and binary resources -> `file` attachments likewise;
- embedded text resources -> their text, under their URI; resource links -> a line naming them;
- `structuredContent` -> its JSON in the text, unless a text block already carries the same JSON
  (servers are asked to send both; the model should not read it twice);
- `isError` -> `is_error`.
"""

from __future__ import annotations

import json
from typing import Any

from mcp import types

from runtime.tools import Attachment, ToolOutput

EMPTY = "(the tool returned no content)"


def to_output(result: types.CallToolResult) -> ToolOutput:
    lines: list[str] = []
    attachments: list[Attachment] = []
    texts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            texts.append(block.text)
            lines.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            attachments.append(Attachment(block.mimeType, block.data))
            lines.append(f"[{block.type} attached: {block.mimeType}]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                lines.append(f"[resource {resource.uri}]\n{resource.text}")
            else:
                media_type = resource.mimeType or "application/octet-stream"
                attachments.append(Attachment(media_type, resource.blob))
                lines.append(f"[resource {resource.uri} attached: {media_type}]")
        elif isinstance(block, types.ResourceLink):
            described = f": {block.description}" if block.description else ""
            lines.append(f"[resource link {block.name} <{block.uri}>{described}]")
    structured = result.structuredContent
    if structured is not None and not _echoed(texts, structured):
        lines.append(json.dumps(structured, ensure_ascii=False, indent=1))
    text = "\n".join(lines) if lines else EMPTY
    return ToolOutput(text, is_error=bool(result.isError), attachments=attachments)


def _echoed(texts: list[str], structured: dict[str, Any]) -> bool:
    """Whether the text blocks already say what `structured` says: the same JSON, or — as
    FastMCP wraps a plain return value in `{"result": value}` — that one value (a list of values
    as one block each)."""
    candidates: list[Any] = [structured]
    if len(structured) == 1:
        candidates.append(next(iter(structured.values())))
    joined = "\n".join(texts)
    for value in candidates:
        if value == joined or _json_equals(joined, value) or any(_json_equals(text, value) for text in texts):
            return True
        same_items = isinstance(value, list) and len(value) == len(texts) > 0
        if same_items and all(
            text == item or _json_equals(text, item) for text, item in zip(texts, value, strict=True)
        ):
            return True
    return False


def _json_equals(text: str, value: Any) -> bool:
    try:
        return bool(json.loads(text) == value)
    except (ValueError, RecursionError):
        return False
