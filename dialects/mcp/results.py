"""A tool run's `ToolResult` as an MCP `CallToolResult`.

- the tool's text output -> one `TextContent` (left out only when it is empty and attachments
  carry the result, e.g. a cell whose only output is a figure);
- image attachments a model can be shown (PNG, JPEG, GIF, WebP) -> `ImageContent` (base64 data
  and `mimeType`, as MCP clients pass images on to their model);
- text-like attachments (HTML tables, SVG, JSON, any `text/*`) -> an embedded resource with
  `TextResourceContents` (the decoded UTF-8 text and its `mimeType`); anything else, or text that
  is not UTF-8 -> an embedded resource with `BlobResourceContents` (base64). Their URIs
  (`toolstudio://tool-results/<call id>/<index>`) name the attachment; this server does not
  offer them through `resources/read`;
- `is_error` -> `isError`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from mcp import types

from runtime.events import ToolResult

# What MCP clients hand to their model as an image (the image types the Claude and OpenAI APIs
# take); other image/* types, SVG above all, travel as resources instead.
MCP_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_TEXT_TYPES = ("image/svg+xml", "application/json", "application/xml", "application/javascript")


def to_call_result(result: ToolResult) -> types.CallToolResult:
    """The MCP result of one tool run (see the module docstring for the mapping)."""
    content: list[types.ContentBlock] = []
    if result.output or not result.attachments:
        content.append(types.TextContent(type="text", text=result.output))
    for index, attachment in enumerate(result.attachments):
        content.append(attachment_block(attachment, f"toolstudio://tool-results/{result.call_id}/{index}"))
    return types.CallToolResult(content=content, isError=result.is_error)


def attachment_block(attachment: dict[str, Any], uri: str) -> types.ContentBlock:
    """One attachment (`{"type", "media_type", "data"}`, data base64 as in `Attachment.wire()`)."""
    media_type = str(attachment.get("media_type") or "application/octet-stream")
    data = str(attachment.get("data") or "")
    if media_type in MCP_IMAGE_TYPES:
        return types.ImageContent(type="image", data=data, mimeType=media_type)
    resource: types.TextResourceContents | types.BlobResourceContents
    text = _utf8(data) if _is_text(media_type) else None
    if text is not None:
        resource = types.TextResourceContents(uri=uri, mimeType=media_type, text=text)  # type: ignore[arg-type]
    else:
        resource = types.BlobResourceContents(uri=uri, mimeType=media_type, blob=data)  # type: ignore[arg-type]
    return types.EmbeddedResource(type="resource", resource=resource)


def _is_text(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip().lower()
    return base.startswith("text/") or base in _TEXT_TYPES or base.endswith(("+json", "+xml"))


def _utf8(data: str) -> str | None:
    """The attachment's text, or None when its data is not base64 of UTF-8 (sent as a blob then)."""
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
