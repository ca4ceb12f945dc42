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


@dataclass(frozen=True, slots=True)
class Attachment:
    """Binary output, e.g. a matplotlib figure. `data` is base64."""

    media_type: str
    data: str


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
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema for the arguments object

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput: ...
