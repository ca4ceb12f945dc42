"""toolstudio example plugin: a `word_count` tool and an offline `example` search provider.

This is the worked example of docs/plugins.md. Install it (`pip install -e .`) into the
server's environment and enable the tool with `"enabled_tools": ["word_count"]`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.hookspecs import hookimpl
from runtime.search import SearchHit, SearchProvider
from runtime.tools import Tool, ToolContext, ToolOutput

MAX_FILE_BYTES = 10 * 1024 * 1024


class WordCount:
    name = "word_count"
    description = (
        "Count the lines, words and characters of some text, or of a file in the session workspace. "
        "Give exactly one of `text` or `path`."
    )
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "The text to count."},
            "path": {"type": "string", "description": "A file in the workspace, relative to it."},
        },
        "oneOf": [{"required": ["text"]}, {"required": ["path"]}],
        "additionalProperties": False,
    }

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        # `arguments` already matched `parameters`: exactly one of text/path, both strings.
        if "text" in arguments:
            return ToolOutput(_counts(arguments["text"]))
        workspace = context.session.workspace.resolve()
        target = (workspace / arguments["path"]).resolve()
        # A path must not lead out of the workspace (../../etc/passwd, or a symlink).
        if not target.is_relative_to(workspace):
            return ToolOutput(f"{arguments['path']!r} is outside the workspace", is_error=True)
        try:
            text = await asyncio.to_thread(_read_text, target)
        except (OSError, ValueError) as exc:
            return ToolOutput(f"cannot read {arguments['path']!r}: {exc}", is_error=True)
        return ToolOutput(_counts(text))


class ExampleSearch:
    """A search provider that needs no network: it searches a fixed list of pages."""

    name = "example"
    pages = (
        SearchHit("toolstudio plugins", "https://example.invalid/docs/plugins", "How to write a toolstudio plugin."),
        SearchHit("pluggy", "https://pluggy.readthedocs.io/", "A minimalist production ready plugin system."),
        SearchHit("JSON Schema", "https://json-schema.org/", "A vocabulary to annotate and validate JSON."),
    )

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        words = query.lower().split()
        hits = [p for p in self.pages if any(w in f"{p.title} {p.snippet}".lower() for w in words)]
        return hits[:max_results]


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    register(WordCount())


@hookimpl
def register_search_providers(register: Callable[[SearchProvider], None]) -> None:
    register(ExampleSearch())


def _counts(text: str) -> str:
    return f"lines: {len(text.splitlines())}, words: {len(text.split())}, characters: {len(text)}"


def _read_text(path: Path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return path.read_text(encoding="utf-8", errors="replace")
