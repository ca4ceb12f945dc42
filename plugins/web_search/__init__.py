"""The built-in `web_search` tool and the default `ddgs` search provider.

An ordinary plugin: it uses the same two hooks a third-party plugin would (see docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable

from plugins.web_search.ddgs_provider import DdgsProvider
from plugins.web_search.tool import WebSearchTool, format_hits
from runtime.hookspecs import hookimpl
from runtime.search import SearchProvider
from runtime.tools import Tool

__all__ = ["DdgsProvider", "WebSearchTool", "format_hits", "register_search_providers", "register_tools"]


@hookimpl
def register_search_providers(register: Callable[[SearchProvider], None]) -> None:
    register(DdgsProvider())


@hookimpl
def register_tools(register: Callable[[Tool], None], search_provider: SearchProvider) -> None:
    register(WebSearchTool(search_provider))
