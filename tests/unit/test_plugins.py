"""Plugin loading, tool validation and the tool registry.

Needs the example plugin installed into the venv (CI too):
    pip install -e tests/plugins/toolstudio_example_plugin
"""

from __future__ import annotations

import inspect
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import hookspecs
from runtime.errors import InvalidRequest
from runtime.hookspecs import hookimpl
from runtime.plugins import (
    DEFAULT_PLUGINS,
    PluginError,
    ToolRegistry,
    load_plugins,
    register_plugin,
    unregister_plugin,
)
from runtime.search import SearchHit
from runtime.sessions import Session
from runtime.tools import ToolContext, ToolOutput

REPO = Path(__file__).resolve().parents[2]
OBJECT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


class FakeTool:
    def __init__(self, name: str = "echo", parameters: Any = None, description: Any = "Echo the text.") -> None:
        self.name = name
        self.description = description
        self.parameters = OBJECT if parameters is None else parameters

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput(f"{self.name}: {arguments['text']}")


class SyncRunTool(FakeTool):
    def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:  # type: ignore[override]
        return ToolOutput("sync")


class ToolsPlugin:
    """A plugin object registering the given tools, like the fake plugins in llm's conftest."""

    def __init__(self, name: str, *tools: object) -> None:
        self.__name__ = name
        self.tools = tools

    @hookimpl
    def register_tools(self, register: Callable[[Any], None]) -> None:
        for tool in self.tools:
            register(tool)


class FakeSearch:
    def __init__(self, name: str = "fake") -> None:
        self.name = name

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        return [SearchHit(f"about {query}", "https://example.invalid/", "a snippet")][:max_results]


class SearchPlugin:
    def __init__(self, name: str, *providers: object) -> None:
        self.__name__ = name
        self.providers = providers

    @hookimpl
    def register_search_providers(self, register: Callable[[Any], None]) -> None:
        for provider in self.providers:
            register(provider)


def load(*plugins: object, search_provider: str | None = None) -> ToolRegistry:
    """Only the given plugins: no built-ins, no installed ones."""
    return load_plugins(plugins, load_entry_points=False, default_plugins=(), search_provider=search_provider)


def context(tmp_path: Path) -> ToolContext:
    return ToolContext(Session("key", "s", tmp_path), deadline=time.monotonic() + 10)


@pytest.fixture
def extra_plugin() -> Iterator[Callable[[object, str], None]]:
    """Register plugins process-wide (as an app test would need) and always unregister them."""
    names: list[str] = []

    def add(plugin: object, name: str) -> None:
        register_plugin(plugin, name)
        names.append(name)

    try:
        yield add
    finally:
        for name in names:
            unregister_plugin(name)


def test_default_plugins_load_as_ordinary_plugins() -> None:
    registry = load_plugins(load_entry_points=False)
    assert {"python", "bash", "web_search"} <= set(registry.names())
    assert registry.plugin_of("bash") == "plugins.bash_tool"
    assert registry.plugin_of("python") == "plugins.python_tool"
    assert registry.plugin_of("web_search") == "plugins.web_search"
    assert registry.get("terminal") is registry.get("bash")
    assert DEFAULT_PLUGINS == ("plugins.python_tool", "plugins.bash_tool", "plugins.web_search", "plugins.mcp")


async def test_hook_register_tools(tmp_path: Path) -> None:
    registry = load(ToolsPlugin("my-plugin", FakeTool("echo"), FakeTool("shout")))
    assert registry.names() == ["echo", "shout"]
    assert registry.plugin_of("echo") == "my-plugin"
    [tool] = registry.resolve(["shout"])
    assert (await tool.run({"text": "hi"}, context(tmp_path))).text == "shout: hi"


async def test_hook_register_search_providers(tmp_path: Path) -> None:
    provider = FakeSearch("fake")
    registry = load_plugins(
        [SearchPlugin("search-plugin", provider)],
        load_entry_points=False,
        default_plugins=("plugins.web_search",),
        search_provider="fake",
    )
    assert registry.search_provider is provider
    [web_search] = registry.resolve(["web_search"])
    output = await web_search.run({"query": "cats"}, context(tmp_path))
    assert not output.is_error
    assert "about cats" in output.text


def test_hook_register_mcp_servers() -> None:
    """Definitions reach `register_tools` as `mcp_servers` (the MCP plugin mounts them: see
    tests/unit/test_mcp_plugin.py); one name from two plugins is refused, naming both."""
    seen: dict[str, Any] = {}

    class Ships:
        def __init__(self, name: str) -> None:
            self.__name__ = name

        @hookimpl
        def register_mcp_servers(self, register: Callable[[str, dict[str, Any]], None]) -> None:
            register("demo", {"command": "demo-mcp-server", "args": ["--quiet"]})

    class Sees:
        __name__ = "sees"

        @hookimpl
        def register_tools(self, register: Callable[[Any], None], mcp_servers: dict[str, Any]) -> None:
            seen.update(mcp_servers)

    load(Ships("ships-mcp"), Sees())
    assert seen == {"demo": {"command": "demo-mcp-server", "args": ["--quiet"]}}
    with pytest.raises(PluginError, match=r"'demo' is contributed by both '(one|two)' and '(one|two)'"):
        load(Ships("one"), Ships("two"))


def test_tools_get_the_chosen_search_provider() -> None:
    seen: list[object] = []

    class Wants:
        __name__ = "wants-search"

        @hookimpl
        def register_tools(self, register: Callable[[Any], None], search_provider: object) -> None:
            seen.append(search_provider)

    chosen = FakeSearch("b")
    load(SearchPlugin("p", FakeSearch("a"), chosen), Wants(), search_provider="b")
    assert seen == [chosen]


def test_unknown_search_provider_fails_listing_the_available_ones() -> None:
    with pytest.raises(PluginError, match=r"'nope' is not registered; available: a, b"):
        load(SearchPlugin("p", FakeSearch("a"), FakeSearch("b")), search_provider="nope")


async def test_no_search_provider_makes_searches_fail_as_tool_errors(tmp_path: Path) -> None:
    registry = load_plugins(load_entry_points=False, default_plugins=("plugins.web_search",), search_provider=None)
    output = await registry.resolve(["web_search"])[0].run({"query": "x"}, context(tmp_path))
    assert output.is_error
    assert "not configured" in output.text


def test_duplicate_tool_names_are_rejected_naming_both_plugins() -> None:
    with pytest.raises(PluginError, match=r"'echo' is registered by both '(first|second)' and '(first|second)'"):
        load(ToolsPlugin("first", FakeTool("echo")), ToolsPlugin("second", FakeTool("echo")))


def test_duplicate_search_providers_are_rejected_naming_both_plugins() -> None:
    with pytest.raises(PluginError, match=r"provider 'fake' is registered by both '(one|two)' and '(one|two)'"):
        load(SearchPlugin("one", FakeSearch()), SearchPlugin("two", FakeSearch()))


@pytest.mark.parametrize(
    ("tool", "problem"),
    [
        (FakeTool("has space"), "name must match"),
        (FakeTool("x" * 65), "name must match"),
        (FakeTool(""), "name must match"),
        (FakeTool("ok", description=""), "description"),
        (FakeTool("ok", description=None), "description"),
        (FakeTool("ok", parameters={"type": "string"}), '"type": "object"'),
        (FakeTool("ok", parameters=[]), '"type": "object"'),
        (FakeTool("ok", parameters={"type": "object", "properties": {"a": {"type": "nonsense"}}}), "not a valid"),
        (FakeTool("ok", parameters={"type": "object", "required": "text"}), "not a valid"),
        (SyncRunTool("ok"), "async def run"),
        (object(), "name must match"),
    ],
)
def test_invalid_tools_are_rejected_naming_the_plugin(tool: object, problem: str) -> None:
    with pytest.raises(PluginError, match=re.escape(problem)) as raised:
        load(ToolsPlugin("sloppy", tool))
    assert "'sloppy'" in str(raised.value)


def test_terminal_is_an_alias_of_bash() -> None:
    registry = load(ToolsPlugin("shell", FakeTool("bash"), FakeTool("python")))
    bash = registry.get("bash")
    assert registry.resolve(["terminal"]) == [bash]
    assert registry.resolve(["bash", "terminal", "python"]) == [bash, registry.get("python")]
    assert "terminal" in registry
    assert registry.plugin_of("terminal") == "shell"


def test_alias_is_not_offered_without_its_target() -> None:
    registry = load(ToolsPlugin("p", FakeTool("echo")))
    assert "terminal" not in registry
    with pytest.raises(InvalidRequest):
        registry.resolve(["terminal"])


def test_a_tool_cannot_take_an_alias_name() -> None:
    with pytest.raises(PluginError, match="reserved as an alias"):
        load(ToolsPlugin("p", FakeTool("terminal")))


def test_unknown_tool_names_raise_invalid_request_listing_available_ones() -> None:
    registry = load(ToolsPlugin("p", FakeTool("bash"), FakeTool("echo")))
    with pytest.raises(InvalidRequest) as raised:
        registry.resolve(["echo", "pyhton"])
    error = raised.value
    assert error.param == "enabled_tools"
    assert error.status == 400
    assert "'pyhton'" in error.message
    assert "available: bash, echo (aliases: terminal -> bash)" in error.message


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"text": "hi"}, None),
        ({}, "'text' is a required property"),
        ({"text": 3}, "$.text: 3 is not of type 'string'"),
        (["hi"], "must be a JSON object, got list"),
        ("hi", "must be a JSON object, got str"),
    ],
)
def test_validate_arguments(arguments: object, expected: str | None) -> None:
    registry = load(ToolsPlugin("p", FakeTool("echo")))
    error = registry.validate_arguments(registry.get("echo"), arguments)  # type: ignore[arg-type]
    if expected is None:
        assert error is None
    else:
        assert error is not None
        assert expected in error
        assert "'echo'" in error


def test_validate_arguments_rejects_extra_properties_when_the_schema_does() -> None:
    schema = {**OBJECT, "additionalProperties": False}
    registry = load(ToolsPlugin("p", FakeTool("strict", parameters=schema)))
    error = registry.validate_arguments(registry.get("strict"), {"text": "a", "oops": 1})  # type: ignore[arg-type]
    assert error is not None
    assert "oops" in error


def test_a_misspelled_hook_fails_loudly() -> None:
    class Typo:
        __name__ = "typo"

        @hookimpl
        def register_tool(self, register: Callable[[Any], None]) -> None:  # the spec is register_tools
            pass

    with pytest.raises(PluginError, match="unknown hook 'register_tool'"):
        load(Typo())


def test_a_hook_argument_the_spec_lacks_fails_loudly() -> None:
    class Extra:
        __name__ = "extra-arg"

        @hookimpl
        def register_tools(self, register: Callable[[Any], None], config: object) -> None:
            pass

    with pytest.raises(PluginError, match="extra-arg"):
        load(Extra())


def test_a_plugin_raising_in_its_hook_is_named() -> None:
    class Broken:
        __name__ = "broken"

        @hookimpl
        def register_tools(self, register: Callable[[Any], None]) -> None:
            raise KeyError("missing setting")

    with pytest.raises(PluginError, match="plugin 'broken' failed in register_tools"):
        load(Broken())


def test_entry_point_plugins_load() -> None:
    registry = load_plugins(default_plugins=(), search_provider="example")
    assert registry.plugin_of("word_count") == "toolstudio_example_plugin"
    assert registry.search_provider.name == "example"
    assert "word_count" not in load(search_provider=None)  # load_entry_points=False skips them


async def test_example_plugin_word_count(tmp_path: Path) -> None:
    registry = load_plugins(default_plugins=(), search_provider=None)
    [tool] = registry.resolve(["word_count"])
    ctx = context(tmp_path)
    assert (await tool.run({"text": "one two\nthree"}, ctx)).text == "lines: 2, words: 3, characters: 13"
    (tmp_path / "notes.txt").write_text("a b c\n")
    assert (await tool.run({"path": "notes.txt"}, ctx)).text == "lines: 1, words: 3, characters: 6"
    escape = await tool.run({"path": "../../etc/passwd"}, ctx)
    assert escape.is_error
    assert "outside the workspace" in escape.text
    missing = await tool.run({"path": "nope.txt"}, ctx)
    assert missing.is_error
    assert registry.validate_arguments(tool, {"text": "a", "path": "b"}) is not None  # exactly one of them
    assert registry.validate_arguments(tool, {}) is not None


def test_extra_plugin_fixture_registers_until_the_test_ends(extra_plugin: Callable[[object, str], None]) -> None:
    extra_plugin(ToolsPlugin("ignored", FakeTool("fixture_tool")), "fixture-plugin")
    registry = load_plugins(load_entry_points=False, default_plugins=(), search_provider=None)
    assert registry.plugin_of("fixture_tool") == "fixture-plugin"


def test_extra_plugins_are_gone_after_their_test() -> None:
    # Runs after the test above: its fixture must have unregistered the plugin.
    assert "fixture_tool" not in load()


def _hookspecs() -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, "toolstudio_spec")}


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_every_hook_is_documented_and_tested(name: str) -> None:
    spec = _hookspecs()[name]
    assert (spec.__doc__ or "").strip(), f"hookspec {name} has no docstring"
    signature = f"{name}({', '.join(inspect.signature(spec).parameters)})"
    docs = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert re.search(rf"^#+ {re.escape(signature)}$", docs, re.MULTILINE), f"docs/plugins.md lacks '## {signature}'"
    assert callable(getattr(sys.modules[__name__], f"test_hook_{name}", None)), f"no test_hook_{name} test"


def test_the_worked_example_in_the_docs_is_the_tested_package() -> None:
    source = (REPO / "tests/plugins/toolstudio_example_plugin/toolstudio_example_plugin.py").read_text(encoding="utf-8")
    code = source[source.index("import asyncio") :]  # after the module docstring and __future__ import
    docs = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert f"```python\n{code}```" in docs
    pyproject = (REPO / "tests/plugins/toolstudio_example_plugin/pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.toolstudio]\ntoolstudio_example_plugin = "toolstudio_example_plugin"' in pyproject
    assert "[project.entry-points.toolstudio]\ntoolstudio_example_plugin" in docs
