"""What a server-side tool is, and what it gets to work with.

A plugin registers `Tool` objects through the `register_tools` hook (see
`runtime/hookspecs.py`). The agent loop calls `await tool.run(arguments, context)`;
`arguments` has already been validated against `tool.parameters`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from runtime.sessions import Session


# What `enable_tools: true` without `enabled_tools` turns on (those that are installed).
DEFAULT_SERVER_TOOLS = ("python", "bash", "web_search")


# The media types a model with a projector is shown (on its next turn) when a tool attaches
# them; any other attachment only reaches the client.
MODEL_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif")


@dataclass(frozen=True, slots=True)
class Attachment:
    """Rich output that is not text for the model, e.g. a matplotlib figure or a DataFrame's
    HTML table. `media_type` is its MIME type (`image/png`, `image/jpeg`, `image/svg+xml`,
    `text/html`, ...); `data` is base64 of its bytes, for text types too (UTF-8), so a client
    decodes every attachment the same way.

    On the wire (every dialect's `tool_result`) it is `{"type": kind, "media_type", "data"}`.
    """

    media_type: str
    data: str

    @property
    def kind(self) -> str:
        """`image` for image/* types, `html` for text/html, else `file`."""
        if self.media_type.startswith("image/"):
            return "image"
        return "html" if self.media_type == "text/html" else "file"

    def wire(self) -> dict[str, str]:
        return {"type": self.kind, "media_type": self.media_type, "data": self.data}


@dataclass(frozen=True, slots=True)
class ToolOutput:
    text: str
    is_error: bool = False
    attachments: list[Attachment] = field(default_factory=list)
    session_restored: bool = False  # set by the runtime, not by tools (see `ToolResult`)


@dataclass(slots=True)
class ToolContext:
    session: Session
    deadline: float  # time.monotonic() by which the tool must have answered

    @property
    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@runtime_checkable
class Tool(Protocol):
    """A server-side tool. Two optional attributes are read with `getattr`, so a tool may lack
    them: `toolset: str`, a name that enables the tool together with its siblings in
    `enabled_tools` (an MCP server's name), and `async def aclose()`, awaited once at server
    shutdown (for state shared by all sessions; per-session state uses `Session.add_cleanup`)."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema for the arguments object

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput: ...
