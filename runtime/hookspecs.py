"""The plugin hook surface. Every hook is documented, with an example, in docs/plugins.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from runtime.search import SearchProvider
    from runtime.tools import Tool

hookspec = pluggy.HookspecMarker("toolstudio")
hookimpl = pluggy.HookimplMarker("toolstudio")


@hookspec
def register_tools(register: Callable[[Tool], None], search_provider: SearchProvider) -> None:
    """Register server-side tools by calling `register(tool)` once per tool.

    `search_provider` is the operator's chosen web search provider, for tools that search;
    take only the arguments you need. Returns nothing; the host validates each tool and
    rejects a name another plugin already registered.
    """


@hookspec
def register_search_providers(register: Callable[[SearchProvider], None]) -> None:
    """Register web search backends by calling `register(provider)` once per provider.

    The operator picks one by `provider.name`; `web_search` (and any tool that asks for
    `search_provider`) uses it. Returns nothing.
    """
