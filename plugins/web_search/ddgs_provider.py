"""The default search provider: the `ddgs` metasearch library (successor of duckduckgo-search)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.search import SearchHit


class DdgsProvider:
    name = "ddgs"

    def __init__(self, *, timeout: int = 5, max_threads: int = 4) -> None:
        self.timeout = timeout
        # ddgs blocks; a hung search keeps its thread after the tool gave up on it. A pool of its
        # own means hung searches can exhaust only this pool, not the loop's default executor.
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="ddgs")

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._executor, self._search_blocking, query, max_results)
        return [_hit(row) for row in rows[:max_results]]

    def _search_blocking(self, query: str, max_results: int) -> list[dict[str, Any]]:
        from ddgs import DDGS  # imported on first use: it pulls in an HTTP stack

        return DDGS(timeout=self.timeout).text(query, max_results=max_results)


def _hit(row: dict[str, Any]) -> SearchHit:
    return SearchHit(
        title=str(row.get("title") or ""), url=str(row.get("href") or ""), snippet=str(row.get("body") or "")
    )
