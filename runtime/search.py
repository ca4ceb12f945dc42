"""What a web search provider is: the `register_search_providers` hook hands these to the host.

Kept in the runtime (not in `plugins/web_search/`) so a third-party provider depends on the
runtime's types only, never on another plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class SearchHit:
    title: str
    url: str
    snippet: str


@runtime_checkable
class SearchProvider(Protocol):
    name: str  # how an operator picks it, e.g. "ddgs"

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        """Return at most `max_results` hits. Raise on failure: the caller turns any exception
        (and its own deadline) into a tool error result."""
        ...
