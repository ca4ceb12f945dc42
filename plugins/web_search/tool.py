"""The `web_search` tool: ask the configured provider, never raise, always answer in time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runtime.search import SearchHit, SearchProvider
from runtime.tools import ToolContext, ToolOutput

log = logging.getLogger(__name__)

DEFAULT_RESULTS = 5
MAX_RESULTS = 10
# ddgs with timeout=5 can take ~20 s when the network hangs; the tool answers well before.
DEFAULT_TIMEOUT = 10.0
_MAX_TITLE = 200
_MAX_SNIPPET = 500


class WebSearchTool:
    name = "web_search"
    description = (
        "Search the web. Returns numbered results, each with a title, URL and snippet. "
        "Use it for recent events or facts you are unsure of."
    )
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "description": "What to search for."},
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_RESULTS,
                "description": f"How many results to return (default {DEFAULT_RESULTS}).",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, provider: SearchProvider, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.provider = provider
        self.timeout = timeout

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        query = str(arguments.get("query", "")).strip()
        if not query:
            return ToolOutput("web_search needs a non-empty query", is_error=True)
        max_results = int(arguments.get("max_results", DEFAULT_RESULTS))
        max_results = min(max(max_results, 1), MAX_RESULTS)
        budget = min(self.timeout, context.seconds_left)
        if budget <= 0:
            return ToolOutput("web search skipped: no time left for this request", is_error=True)
        try:
            # The outer deadline: a provider's own timeout is not trusted to hold.
            hits = await asyncio.wait_for(self.provider.search(query, max_results), timeout=budget)
        except TimeoutError:
            log.warning("web search (%s) gave no answer within %.1f s", self.provider.name, budget)
            return ToolOutput(f"web search timed out after {budget:.0f} s; try again later", is_error=True)
        except Exception as exc:
            # Every provider failure (rate limit, DNS, HTTP, a bug) is the model's to see, not a 500.
            log.warning("web search (%s) failed: %r", self.provider.name, exc)
            return ToolOutput(f"web search failed: {type(exc).__name__}: {exc}", is_error=True)
        if not hits:
            return ToolOutput(f"No results for {query!r}.")
        return ToolOutput(format_hits(hits[:max_results]))


def format_hits(hits: list[SearchHit]) -> str:
    """Numbered results, one block each: title, URL, snippet."""
    blocks = []
    for number, hit in enumerate(hits, start=1):
        lines = [f"{number}. {_clip(hit.title, _MAX_TITLE) or '(untitled)'}", f"   {hit.url}"]
        if snippet := _clip(hit.snippet, _MAX_SNIPPET):
            lines.append(f"   {snippet}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
