"""Anthropic `tools` -> IR tool specs, including Anthropic's versioned built-in tool types.

Anthropic-defined *client* tools (bash, text editor, memory) carry no `input_schema` on the wire:
the client runs them, so serving them only needs their documented input shape. Tools that
Anthropic runs on *its* side (web search, code execution, ...) are refused with a 400: accepting
them would let the model "call" something nobody executes. toolstudio's own server-side tools
are asked for with `enable_tools` / `enabled_tools` instead.
"""

from __future__ import annotations

from typing import Any

from dialects.anthropic.protocol import Tool
from runtime.errors import InvalidRequest, UnsupportedFeature
from runtime.ir import ToolSpec

_PATH = {"type": "string", "description": "Absolute path to a file or directory."}

_EDITOR_FIELDS: dict[str, Any] = {
    "path": _PATH,
    "file_text": {"type": "string", "description": "Content of the file to create."},
    "old_str": {"type": "string", "description": "Exact text to replace."},
    "new_str": {"type": "string", "description": "Replacement text."},
    "insert_line": {"type": "integer", "description": "Line after which to insert."},
    "insert_text": {"type": "string", "description": "Text to insert."},
    "view_range": {"type": "array", "items": {"type": "integer"}, "description": "[start, end] lines to view."},
}

# Input shapes as Anthropic documents them, keyed by the type's family (the part before the date).
_CLIENT_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash": (
        "Run a command in a persistent bash shell.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to run."},
                "restart": {"type": "boolean", "description": "Restart the shell."},
            },
        },
    ),
    "text_editor": (
        "View, create and edit files.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"]},
                **_EDITOR_FIELDS,
            },
            "required": ["command", "path"],
        },
    ),
    "memory": (
        "Read and write files in the /memories directory.",
        {
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
                },
                "old_path": _PATH,
                "new_path": _PATH,
                **_EDITOR_FIELDS,
            },
            "required": ["command"],
        },
    ),
}


def _family(tool_type: str) -> str:
    """`text_editor_20250728` -> `text_editor`."""
    head, _, tail = tool_type.rpartition("_")
    return head if head and tail.isdigit() else tool_type


def tool_spec(tool: Tool, index: int) -> ToolSpec:
    param = f"tools[{index}]"
    if tool.type in (None, "custom"):
        schema = tool.input_schema
        if schema is None:
            raise InvalidRequest(f"{param}.input_schema: Field required", param=f"{param}.input_schema")
        if schema.get("type") != "object":
            raise InvalidRequest(
                f"{param}.input_schema.type: Input should be 'object'", param=f"{param}.input_schema.type"
            )
        return ToolSpec(name=tool.name, description=tool.description or "", parameters=schema, strict=bool(tool.strict))
    family = _family(tool.type)
    if family in _CLIENT_TOOLS:
        description, schema = _CLIENT_TOOLS[family]
        return ToolSpec(name=tool.name, description=tool.description or description, parameters=schema)
    raise UnsupportedFeature(
        f"{param}: the tool type {tool.type!r} runs on Anthropic's servers and is not available here; "
        "use a custom tool with an input_schema, or toolstudio's server-side tools "
        '(`"enable_tools": true, "enabled_tools": ["web_search", "python", "bash"]`)',
        param=f"{param}.type",
    )


def tool_specs(tools: list[Tool] | None) -> list[ToolSpec]:
    specs = [tool_spec(t, i) for i, t in enumerate(tools or [])]
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise InvalidRequest(f"tools: tool names must be unique ({spec.name!r} repeats)", param=f"tools[{i}].name")
        seen.add(spec.name)
    return specs
