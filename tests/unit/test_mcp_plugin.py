"""The MCP plugin in-process: servers contributed by a plugin hook and by `--mcp-config`,
discovery at load (a server that never starts is left out, in time), toolsets in
`enabled_tools`, and instances per session or shared, closed with the session or at shutdown.

Runs tests/mcp_servers/counter.py for real, unsandboxed (the sandboxed path is covered by
tests/integration/test_mcp_servers.py), so it needs no bubblewrap.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import InvalidRequest
from runtime.hookspecs import hookimpl
from runtime.plugins import ToolRegistry, load_plugins
from runtime.sandbox import SandboxConfig, SandboxRunner
from runtime.sessions import Session
from runtime.tools import ToolContext
from tests.servers import alive

COUNTER = {"command": sys.executable, "args": [str(Path(__file__).parent.parent / "mcp_servers" / "counter.py")]}


class ContributesServers:
    """A plugin shipping MCP servers, as a pip-installable one would."""

    @hookimpl
    def register_mcp_servers(self, register: Any) -> None:
        register("counter", COUNTER)
        register("shared", {**COUNTER, "shared": True})
        register("stuck", {"command": "sleep", "args": ["600"], "startup_timeout": 1})  # never speaks MCP
        register("replaced", {"command": "/nonexistent"})


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolRegistry]:
    config = tmp_path_factory.mktemp("mcp") / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"replaced": COUNTER}}))  # the operator's file wins
    runner = SandboxRunner(SandboxConfig(unsafe_no_sandbox=True, session_disk_bytes=None))
    handler, logger = Collect(), logging.getLogger("plugins.mcp")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = time.monotonic()
    loaded = load_plugins(
        [ContributesServers()],
        load_entry_points=False,
        default_plugins=("plugins.mcp",),
        search_provider=None,
        mcp_config=config,
        sandbox=runner,
    )
    loaded.load_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    logger.removeHandler(handler)
    logger.setLevel(level)
    loaded.load_log = handler.lines  # type: ignore[attr-defined]
    yield loaded


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def context(session: Session) -> ToolContext:
    return ToolContext(session=session, deadline=time.monotonic() + 60)


def session(tmp_path: Path, name: str) -> Session:
    workspace = tmp_path / name
    workspace.mkdir()
    return Session("key", name, workspace)


def test_hook_and_config_servers_are_discovered_and_a_stuck_one_left_out(registry: ToolRegistry) -> None:
    assert {"counter__increment", "shared__increment", "replaced__increment"} <= set(registry.names())
    assert not [name for name in registry.names() if name.startswith("stuck__")]
    assert registry.plugin_of("counter__increment") == "plugins.mcp"
    log = "\n".join(registry.load_log)  # type: ignore[attr-defined]
    assert "MCP server 'stuck' (stdio, one per session) left out: " in log and "within 1 s" in log
    assert "MCP server 'shared' (stdio, shared by all sessions): 10 tool(s)" in log
    # All servers are asked at once: the stuck one costs its startup_timeout, not a queue's worth.
    assert registry.load_seconds < 60  # type: ignore[attr-defined]


def test_a_server_name_in_enabled_tools_enables_all_its_tools(registry: ToolRegistry) -> None:
    tools = registry.resolve(["shared", "counter__increment"])
    assert [t.name for t in tools][:1] == ["shared__connect"]
    assert {t.name for t in tools} == {n for n in registry.names() if n.startswith("shared__")} | {"counter__increment"}
    with pytest.raises(InvalidRequest, match="toolsets: counter = 10 tools"):
        registry.resolve(["nope"])


async def test_sessions_get_their_own_instance_and_closing_one_stops_it(registry: ToolRegistry, tmp_path: Path) -> None:
    increment = registry.get("counter__increment")
    whereami = registry.get("counter__whereami")
    assert increment is not None and whereami is not None
    one, two = session(tmp_path, "one"), session(tmp_path, "two")
    assert (await increment.run({"by": 2}, context(one))).text.startswith("count=2 ")
    first = await increment.run({}, context(one))
    second = await increment.run({}, context(two))
    assert first.text.startswith("count=3 ") and second.text.startswith("count=1 ")
    assert f"cwd={one.workspace}" in (await whereami.run({}, context(one))).text  # unsandboxed: the workspace itself
    pid = one.state["mcp"]["counter"].instance.pid
    assert pid is not None and alive(pid)
    await one.close()
    assert not alive(pid)
    await two.close()


async def test_a_shared_server_is_one_instance_stopped_at_shutdown(registry: ToolRegistry, tmp_path: Path) -> None:
    increment = registry.get("shared__increment")
    assert increment is not None
    a, b = session(tmp_path, "a"), session(tmp_path, "b")
    first = (await increment.run({}, context(a))).text.split()[0]
    second = (await increment.run({}, context(b))).text.split()[0]
    assert int(second.removeprefix("count=")) == int(first.removeprefix("count=")) + 1
    assert "mcp" not in a.state  # nothing per session
    connection = increment.server._shared  # type: ignore[attr-defined]
    pid = connection.instance.pid
    assert alive(pid)
    await registry.aclose()
    assert not alive(pid)
