"""The plugin hook surface. Every hook is documented, with an example, in docs/plugins.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from runtime.sandbox import SandboxRunner
    from runtime.search import SearchProvider
    from runtime.tools import Tool

hookspec = pluggy.HookspecMarker("toolstudio")
hookimpl = pluggy.HookimplMarker("toolstudio")


@hookspec
def register_tools(
    register: Callable[[Tool], None],
    search_provider: SearchProvider,
    mcp_servers: Mapping[str, Mapping[str, Any]],
    sandbox: SandboxRunner | None,
) -> None:
    """Register server-side tools by calling `register(tool)` once per tool.

    `search_provider` is the operator's chosen web search provider, for tools that search;
    `mcp_servers` the MCP server definitions (name -> one `mcpServers` entry of docs/mcp.md,
    from `--mcp-config` and `register_mcp_servers`) that the built-in MCP plugin mounts;
    `sandbox` the operator's sandbox runner (None: none was built, make a default one if
    needed). Take only the arguments you need. Returns nothing; the host validates each tool
    and rejects a name another plugin already registered.
    """


@hookspec
def register_search_providers(register: Callable[[SearchProvider], None]) -> None:
    """Register web search backends by calling `register(provider)` once per provider.

    The operator picks one by `provider.name`; `web_search` (and any tool that asks for
    `search_provider`) uses it. Returns nothing.
    """


@hookspec
def register_mcp_servers(register: Callable[[str, Mapping[str, Any]], None]) -> None:
    """Contribute MCP servers by calling `register(name, definition)` once per server.

    `definition` has the shape of one `mcpServers` entry of `--mcp-config` (docs/mcp.md), e.g.
    `{"command": "/opt/venv/bin/my-mcp-server", "args": []}` or `{"url": "https://…/mcp"}`;
    their tools become `NAME__TOOL`. The operator's `--mcp-config` wins over a plugin's server
    of the same name. Returns nothing.
    """
