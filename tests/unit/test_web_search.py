"""The web_search tool, through the plugin hooks, with a local fake provider (no internet here)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import ddgs.ddgs
import pytest
from ddgs.exceptions import DDGSException, RatelimitException

from plugins.web_search import DdgsProvider, WebSearchTool
from runtime.hookspecs import hookimpl
from runtime.plugins import ToolRegistry, load_plugins
from runtime.search import SearchHit
from runtime.sessions import Session
from runtime.tools import Tool, ToolContext, ToolOutput

HITS = [
    SearchHit("Python (programming language)", "https://en.wikipedia.org/wiki/Python", "Python is a language."),
    SearchHit("Welcome to Python.org", "https://www.python.org/", "The official home of Python."),
    SearchHit("Monty Python", "https://example.invalid/monty", "A comedy troupe."),
]


class FakeSearch:
    """Answers from a fixed list and records what it was asked."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        self.calls.append((query, max_results))
        return HITS[:max_results]


class FakeSearchPlugin:
    __name__ = "fake-search"

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @hookimpl
    def register_search_providers(self, register: Any) -> None:
        register(self.provider)


def registry_with(provider: Any) -> ToolRegistry:
    return load_plugins(
        [FakeSearchPlugin(provider)],
        load_entry_points=False,
        default_plugins=("plugins.web_search",),
        search_provider=provider.name,
    )


def context(tmp_path: Path, seconds: float = 30) -> ToolContext:
    return ToolContext(Session("key", "s", tmp_path), deadline=time.monotonic() + seconds)


async def search(tool: Tool, tmp_path: Path, **arguments: Any) -> ToolOutput:
    return await tool.run(arguments, context(tmp_path))


async def test_results_are_numbered_title_url_snippet(tmp_path: Path) -> None:
    provider = FakeSearch()
    tool = registry_with(provider).resolve(["web_search"])[0]
    output = await search(tool, tmp_path, query="python", max_results=2)
    assert not output.is_error
    assert output.text == (
        "1. Python (programming language)\n   https://en.wikipedia.org/wiki/Python\n   Python is a language.\n\n"
        "2. Welcome to Python.org\n   https://www.python.org/\n   The official home of Python."
    )
    assert provider.calls == [("python", 2)]


async def test_max_results_defaults_to_five(tmp_path: Path) -> None:
    provider = FakeSearch()
    await search(registry_with(provider).resolve(["web_search"])[0], tmp_path, query="  python  ")
    assert provider.calls == [("python", 5)]


@pytest.mark.parametrize(
    "arguments", [{}, {"query": 3}, {"query": "x", "max_results": 0}, {"query": "x", "max_results": 11}, {"q": "x"}]
)
def test_arguments_are_validated_against_the_schema(arguments: dict[str, Any]) -> None:
    registry = registry_with(FakeSearch())
    assert registry.validate_arguments(registry.resolve(["web_search"])[0], arguments) is not None


def test_valid_arguments_pass() -> None:
    registry = registry_with(FakeSearch())
    tool = registry.resolve(["web_search"])[0]
    assert registry.validate_arguments(tool, {"query": "x", "max_results": 10}) is None


async def test_no_results_is_an_answer_not_an_error(tmp_path: Path) -> None:
    class Empty(FakeSearch):
        async def search(self, query: str, max_results: int) -> list[SearchHit]:
            return []

    output = await search(WebSearchTool(Empty()), tmp_path, query="zzzz")
    assert not output.is_error
    assert output.text == "No results for 'zzzz'."


@pytest.mark.parametrize(
    "exc",
    [
        RatelimitException("202 Ratelimit"),
        DDGSException("DNSError"),
        OSError("Name or service not known"),
        ValueError("bug"),
    ],
)
async def test_provider_failures_become_error_output(tmp_path: Path, exc: Exception) -> None:
    class Failing(FakeSearch):
        async def search(self, query: str, max_results: int) -> list[SearchHit]:
            raise exc

    output = await search(WebSearchTool(Failing()), tmp_path, query="x")
    assert output.is_error
    assert str(exc) in output.text
    assert type(exc).__name__ in output.text


async def test_a_hanging_provider_is_cut_off_by_the_outer_deadline(tmp_path: Path) -> None:
    class Hanging(FakeSearch):
        async def search(self, query: str, max_results: int) -> list[SearchHit]:
            await asyncio.sleep(3600)
            return []

    started = time.monotonic()
    output = await search(WebSearchTool(Hanging(), timeout=0.2), tmp_path, query="x")
    assert time.monotonic() - started < 2
    assert output.is_error
    assert "timed out" in output.text


async def test_a_provider_blocked_in_a_thread_is_cut_off_too(tmp_path: Path) -> None:
    # Like ddgs on a hung network: the thread keeps going, the tool answers anyway.
    class BlockedThread(FakeSearch):
        async def search(self, query: str, max_results: int) -> list[SearchHit]:
            await asyncio.to_thread(time.sleep, 1.5)
            return HITS

    started = time.monotonic()
    output = await search(WebSearchTool(BlockedThread(), timeout=0.2), tmp_path, query="x")
    assert time.monotonic() - started < 1
    assert output.is_error


async def test_the_request_deadline_bounds_the_search(tmp_path: Path) -> None:
    class Hanging(FakeSearch):
        async def search(self, query: str, max_results: int) -> list[SearchHit]:
            await asyncio.sleep(3600)
            return []

    tool = WebSearchTool(Hanging(), timeout=60)
    started = time.monotonic()
    output = await tool.run({"query": "x"}, context(tmp_path, seconds=0.2))
    assert time.monotonic() - started < 2
    assert output.is_error
    spent = await tool.run({"query": "x"}, context(tmp_path, seconds=0))
    assert spent.is_error
    assert "no time left" in spent.text


async def test_long_titles_and_snippets_are_clipped(tmp_path: Path) -> None:
    class Verbose(FakeSearch):
        async def search(self, query: str, max_results: int) -> list[SearchHit]:
            return [SearchHit("T" * 1000, "https://example.invalid/", "word\n" * 1000)]

    output = await search(WebSearchTool(Verbose()), tmp_path, query="x")
    assert len(output.text) < 800
    assert "\nword word" not in output.text  # whitespace collapsed: one line per field


async def test_ddgs_provider_maps_rows_to_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int | None]] = []

    def fake_text(self: Any, query: str, **kwargs: Any) -> list[dict[str, str]]:
        asked.append((query, kwargs.get("max_results")))
        return [{"title": "T", "href": "https://h.invalid/", "body": "B"}, {"title": "T2", "href": "u2", "body": ""}]

    monkeypatch.setattr(ddgs.ddgs.DDGS, "text", fake_text)  # the real class; `ddgs.DDGS` is a lazy proxy
    hits = await DdgsProvider().search("q", 1)
    assert hits == [SearchHit("T", "https://h.invalid/", "B")]
    assert asked == [("q", 1)]


async def test_real_ddgs_provider_fails_fast_offline_as_error_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused proxy makes it fail the way an offline machine does, even where there is internet.
    monkeypatch.setenv("DDGS_PROXY", "http://127.0.0.1:9")
    registry = load_plugins(load_entry_points=False, default_plugins=("plugins.web_search",))
    assert registry.search_provider.name == "ddgs"
    started = time.monotonic()
    output = await search(registry.resolve(["web_search"])[0], tmp_path, query="toolstudio")
    assert time.monotonic() - started < 10
    assert output.is_error
    assert output.text.startswith("web search failed: DDGSException")
