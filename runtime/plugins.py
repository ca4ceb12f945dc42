"""Loading plugins, and the registry of the tools they register.

Built-in tools are ordinary plugins listed in `DEFAULT_PLUGINS`; third-party ones load from the
`toolstudio` entry-point group. `load_plugins()` builds a fresh `PluginManager` each call (no
module-level manager), so one server's plugins never leak into another's, or into a test's.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pluggy
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator

from runtime import hookspecs
from runtime.errors import InvalidRequest
from runtime.search import SearchHit, SearchProvider
from runtime.tools import Tool

if TYPE_CHECKING:
    from runtime.sandbox import SandboxRunner

log = logging.getLogger(__name__)

DEFAULT_PLUGINS: tuple[str, ...] = ("plugins.python_tool", "plugins.bash_tool", "plugins.web_search", "plugins.mcp")
ENTRY_POINT_GROUP = "toolstudio"
DEFAULT_SEARCH_PROVIDER = "ddgs"
# Accepted in `enabled_tools` for another tool; `terminal` is the reference server's name for bash.
TOOL_ALIASES: Mapping[str, str] = {"terminal": "bash"}

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# Plugins added by `register_plugin()`: every later `load_plugins()` includes them. This exists
# so a test can put a fake plugin behind an app it builds with `create_app()`; see the
# `extra_plugin` fixture in tests/unit/test_plugins.py, which always unregisters.
_extra_plugins: dict[str, object] = {}


class PluginError(RuntimeError):
    """A plugin is broken or clashes with another: the server must not start with it."""


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    tool: Tool
    plugin: str  # the name of the plugin that registered it
    validator: Validator  # compiled once from `tool.parameters`


class ToolRegistry:
    """Tool name -> tool, with the plugin that registered each, and the chosen search provider."""

    def __init__(
        self,
        tools: Iterable[RegisteredTool],
        search_provider: SearchProvider,
        aliases: Mapping[str, str] = TOOL_ALIASES,
    ) -> None:
        self._tools = {entry.tool.name: entry for entry in tools}
        self.search_provider = search_provider
        # An alias whose target is not loaded (e.g. no bash plugin) is not offered.
        self.aliases = {alias: target for alias, target in aliases.items() if target in self._tools}
        # Toolsets: a tool's optional `toolset` name enables it with its siblings in
        # `enabled_tools` (an MCP server's name enables all its tools). A tool name or alias wins.
        self.toolsets: dict[str, list[str]] = {}
        for name in sorted(self._tools):
            toolset = getattr(self._tools[name].tool, "toolset", None)
            if isinstance(toolset, str) and toolset not in self._tools and toolset not in self.aliases:
                self.toolsets.setdefault(toolset, []).append(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools or name in self.aliases

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return (entry.tool for entry in self._tools.values())

    def names(self) -> list[str]:
        return sorted(self._tools)

    def entries(self) -> list[RegisteredTool]:
        return [self._tools[name] for name in self.names()]

    def get(self, name: str) -> Tool | None:
        entry = self._tools.get(self.aliases.get(name, name))
        return entry.tool if entry else None

    def plugin_of(self, name: str) -> str:
        """Which plugin registered `name` (an alias counts as its target)."""
        return self._tools[self.aliases.get(name, name)].plugin

    def resolve(self, names: Iterable[str]) -> list[Tool]:
        """The tools a request enabled, in order, each once (`bash` and `terminal` are one tool;
        a toolset's name stands for all its tools)."""
        tools: list[Tool] = []
        for name in names:
            tool = self.get(name)
            members = [tool] if tool is not None else [self._tools[n].tool for n in self.toolsets.get(name, ())]
            if not members:
                raise InvalidRequest(
                    f"unknown tool {name!r} in enabled_tools; available: {self._describe_available()}",
                    param="enabled_tools",
                    code="unknown_tool",
                )
            tools.extend(member for member in members if member not in tools)
        return tools

    async def aclose(self) -> None:
        """Server shutdown: await `aclose()` of every tool that has one (e.g. an MCP server that
        runs once for all sessions), each once; a failure is logged, never raised."""
        for entry in self.entries():
            close = getattr(entry.tool, "aclose", None)
            if close is None:
                continue
            try:
                await close()
            except Exception:
                log.exception("closing tool %s failed", entry.tool.name)

    def validate_arguments(self, tool: Tool, arguments: object) -> str | None:
        """An error message the model can act on, or None when `arguments` fit `tool.parameters`."""
        if not isinstance(arguments, dict):
            return f"arguments for tool {tool.name!r} must be a JSON object, got {type(arguments).__name__}"
        entry = self._tools.get(tool.name)
        validator = entry.validator if entry and entry.tool is tool else _compile(tool.parameters)
        error = best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        return f"invalid arguments for tool {tool.name!r}: {error.json_path}: {error.message}"

    def _describe_available(self) -> str:
        names = ", ".join(self.names()) or "(none)"
        if self.aliases:
            names += " (aliases: " + ", ".join(f"{a} -> {t}" for a, t in sorted(self.aliases.items())) + ")"
        if self.toolsets:
            names += " (toolsets: " + ", ".join(f"{s} = {len(t)} tools" for s, t in sorted(self.toolsets.items())) + ")"
        return names


def register_plugin(plugin: object, name: str) -> None:
    """Include `plugin` in every later `load_plugins()` until `unregister_plugin(name)`."""
    if name in _extra_plugins:
        raise ValueError(f"a plugin named {name!r} is already registered")
    _extra_plugins[name] = plugin


def unregister_plugin(name: str) -> None:
    _extra_plugins.pop(name, None)


def create_plugin_manager(
    extra_plugins: Iterable[object | str] = (),
    *,
    load_entry_points: bool = True,
    default_plugins: Iterable[str] = DEFAULT_PLUGINS,
) -> pluggy.PluginManager:
    """A manager holding the defaults, entry-point plugins, `register_plugin()`'s and `extra_plugins`
    (module names or plugin objects), checked so a misspelled hook fails here, loudly."""
    pm = pluggy.PluginManager("toolstudio")
    pm.add_hookspecs(hookspecs)
    for module_name in default_plugins:
        _register(pm, importlib.import_module(module_name), module_name)
    if load_entry_points:
        try:
            count = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(f"loading plugins from the {ENTRY_POINT_GROUP!r} entry points failed: {exc}") from exc
        log.debug("loaded %d plugin(s) from entry points", count)
    for name, plugin in _extra_plugins.items():
        _register(pm, plugin, name)
    for plugin in extra_plugins:
        if isinstance(plugin, str):
            _register(pm, importlib.import_module(plugin), plugin)
        else:
            _register(pm, plugin, getattr(plugin, "__name__", None) or type(plugin).__name__)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def load_plugins(
    extra_modules: Iterable[object | str] = (),
    load_entry_points: bool = True,
    *,
    default_plugins: Iterable[str] = DEFAULT_PLUGINS,
    search_provider: str | None = DEFAULT_SEARCH_PROVIDER,
    mcp_config: Path | None = None,
    sandbox: SandboxRunner | None = None,
) -> ToolRegistry:
    """Load every plugin and return the tools they register.

    `search_provider` names the web search backend tools get; None means none (searches then
    fail as tool errors). `mcp_config` is the operator's `--mcp-config` file (docs/mcp.md); its
    servers, and those plugins contribute, reach `register_tools` as `mcp_servers`. `sandbox` is
    handed to `register_tools` as is. Raises `PluginError` for a broken plugin, an invalid tool,
    a name clash, an unknown search provider or an unreadable MCP config.
    """
    pm = create_plugin_manager(extra_modules, load_entry_points=load_entry_points, default_plugins=default_plugins)
    provider = _choose_provider(_collect_providers(pm), search_provider)
    mcp_servers = _collect_mcp_servers(pm, mcp_config)
    tools: dict[str, RegisteredTool] = {}

    def add_tool(plugin: str, tool: Tool) -> None:
        validator = _check_tool(plugin, tool)
        if tool.name in tools:
            raise PluginError(
                f"tool {tool.name!r} is registered by both {tools[tool.name].plugin!r} and {plugin!r}; "
                "uninstall one of them"
            )
        if tool.name in TOOL_ALIASES:
            raise PluginError(f"plugin {plugin!r}: tool name {tool.name!r} is reserved as an alias")
        tools[tool.name] = RegisteredTool(tool=tool, plugin=plugin, validator=validator)

    def tool_hook_kwargs(plugin: str) -> dict[str, Any]:
        return {
            "register": _bind(add_tool, plugin),
            "search_provider": provider,
            "mcp_servers": mcp_servers,
            "sandbox": sandbox,
        }

    _call_each_plugin(pm, "register_tools", tool_hook_kwargs)
    registry = ToolRegistry(tools.values(), provider)
    log.info("tools: %s", ", ".join(f"{e.tool.name} ({e.plugin})" for e in registry.entries()) or "none")
    return registry


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"cannot register plugin {name!r}: {exc}") from exc


def _call_each_plugin(pm: pluggy.PluginManager, hook_name: str, kwargs_for: Callable[[str], dict[str, Any]]) -> None:
    """Call a registration hook one plugin at a time, so each `register` call (and each failure)
    is attributed to the plugin that made it; a single `pm.hook.<name>()` call cannot say who."""
    everyone = pm.get_plugins()
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):  # pluggy's own call order
        caller = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in everyone if p is not impl.plugin])
        try:
            caller(**kwargs_for(impl.plugin_name))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc!r}") from exc


def _bind(add: Callable[[str, Any], None], plugin: str) -> Callable[[Any], None]:
    def register(item: Any) -> None:
        add(plugin, item)

    return register


def _collect_providers(pm: pluggy.PluginManager) -> dict[str, tuple[str, SearchProvider]]:
    providers: dict[str, tuple[str, SearchProvider]] = {}

    def add_provider(plugin: str, provider: SearchProvider) -> None:
        name = getattr(provider, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(f"plugin {plugin!r}: search provider name must match {_NAME.pattern}, got {name!r}")
        if not inspect.iscoroutinefunction(getattr(provider, "search", None)):
            raise PluginError(f"plugin {plugin!r}: search provider {name!r} needs an `async def search`")
        if name in providers:
            raise PluginError(f"search provider {name!r} is registered by both {providers[name][0]!r} and {plugin!r}")
        providers[name] = (plugin, provider)

    _call_each_plugin(pm, "register_search_providers", lambda plugin: {"register": _bind(add_provider, plugin)})
    return providers


def read_mcp_config(path: Path) -> dict[str, dict[str, Any]]:
    """The `mcpServers` object of an MCP config file (`{"mcpServers": {name: {...}}}`, the shape
    Claude Desktop, Cursor and llama-server read; VS Code's `{"servers": ...}` too), name ->
    definition. Only the outer shape is checked here; plugins/mcp checks each definition.
    Raises `PluginError` naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PluginError(f"--mcp-config {path}: cannot read it: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise PluginError(f"--mcp-config {path}: not valid JSON: {exc}") from exc
    servers = data.get("mcpServers", data.get("servers")) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise PluginError(f'--mcp-config {path}: expected {{"mcpServers": {{"NAME": {{...}}, ...}}}}')
    for name, definition in servers.items():
        if not isinstance(definition, dict):
            raise PluginError(f"--mcp-config {path}: server {name!r} must be a JSON object")
    return servers


def _collect_mcp_servers(pm: pluggy.PluginManager, config: Path | None) -> dict[str, dict[str, Any]]:
    """MCP server definitions from `register_mcp_servers` and then `config` (which wins)."""
    servers: dict[str, tuple[str, dict[str, Any]]] = {}

    def add_server(plugin: str, name: Any, definition: Any = None) -> None:
        if not isinstance(name, str) or not isinstance(definition, Mapping):
            raise PluginError(f"plugin {plugin!r}: register_mcp_servers needs register(name: str, definition: dict)")
        if name in servers:
            raise PluginError(f"MCP server {name!r} is contributed by both {servers[name][0]!r} and {plugin!r}")
        servers[name] = (plugin, dict(definition))

    def register_for(plugin: str) -> dict[str, Any]:
        def register(name: Any, definition: Any = None) -> None:
            add_server(plugin, name, definition)

        return {"register": register}

    _call_each_plugin(pm, "register_mcp_servers", register_for)
    if config is not None:
        for name, definition in read_mcp_config(config).items():
            if name in servers:
                log.info("MCP server %r from %s replaces the one plugin %r contributes", name, config, servers[name][0])
            servers[name] = (f"--mcp-config {config}", definition)
    if servers:
        log.info("MCP servers: %s", ", ".join(f"{name} (from {source})" for name, (source, _) in servers.items()))
    return {name: definition for name, (_, definition) in servers.items()}


def _choose_provider(providers: Mapping[str, tuple[str, SearchProvider]], name: str | None) -> SearchProvider:
    if name is None:
        return _NoSearchProvider()
    if name not in providers:
        available = ", ".join(sorted(providers)) or "(none)"
        raise PluginError(f"search provider {name!r} is not registered; available: {available}")
    return providers[name][1]


class _NoSearchProvider:
    """Stands in when the operator chose no provider, so tools always get one to call."""

    name = "none"

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        raise RuntimeError("web search is not configured on this server")


def _check_tool(plugin: str, tool: object) -> Validator:
    name = getattr(tool, "name", None)
    where = f"plugin {plugin!r}, tool {name!r}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginError(f"{where}: the name must match {_NAME.pattern}")
    description = getattr(tool, "description", None)
    if not isinstance(description, str) or not description.strip():
        raise PluginError(f"{where}: needs a non-empty string description")
    if not inspect.iscoroutinefunction(getattr(tool, "run", None)):
        raise PluginError(f"{where}: `run` must be `async def run(self, arguments, context)`")
    parameters = getattr(tool, "parameters", None)
    # Models are shown the arguments as one object (OpenAI/Anthropic function parameters).
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise PluginError(f'{where}: parameters must be a JSON Schema with "type": "object"')
    try:
        return _compile(parameters)
    except SchemaError as exc:
        raise PluginError(f"{where}: parameters are not a valid JSON Schema: {exc.message}") from exc


def _compile(schema: dict[str, Any]) -> Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)
