"""The MCP plugin in-process: servers contributed by a plugin hook and by `--mcp-config`,
discovery at load (a server that never starts is left out, in time), toolsets in
`enabled_tools`, and instances per session or shared, closed with the session or at shutdown.

Runs tests/mcp_servers/counter.py for real, unsandboxed (the sandboxed path is covered by
tests/integration/test_mcp_servers.py), so it needs no bubblewrap.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dialects.mcp.routes import enabled_tools_header
from plugins.mcp.connection import LineBuffer
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


def test_the_mcp_endpoints_header_takes_a_server_name_like_enabled_tools(registry: ToolRegistry) -> None:
    # `X-Enabled-Tools` is documented as taking the names `enabled_tools` takes (docs/mcp.md).
    enabled = enabled_tools_header("counter, shared__increment, counter__increment", registry)
    counter = [name for name in registry.names() if name.startswith("counter__")]
    assert enabled == (*counter, "shared__increment")
    with pytest.raises(InvalidRequest, match=r"unknown tool 'nope' in X-Enabled-Tools; available: .*counter"):
        enabled_tools_header("counter,nope", registry)


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


async def test_a_large_result_costs_the_event_loop_little(registry: ToolRegistry, tmp_path: Path) -> None:
    # 16 MB of text comes back as one JSON line of about 32 MB (FastMCP sends it twice: as text
    # and as structuredContent), read from the pipe in 64 KiB chunks. Joining each chunk to all
    # before it once cost the event loop's thread (every other request's) 6 s of CPU, now 0.2 s.
    read_file = registry.get("counter__read_file")
    assert read_file is not None
    big = session(tmp_path, "big")
    (big.workspace / "big.txt").write_text("0123456789abcde\n" * 1_000_000)
    cpu = time.thread_time()  # this thread's CPU seconds: the event loop's, not the server's
    try:
        output = await read_file.run({"path": "big.txt"}, context(big))
        cpu = time.thread_time() - cpu
    finally:
        await big.close()
    assert not output.is_error and len(output.text) == 16_000_000
    assert cpu < 2.0, f"the event loop spent {cpu:.2f} s of CPU on one result"


def test_stdout_is_split_into_lines_across_chunks() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b'{"a"') == [] and buffer.pending == 4
    assert buffer.feed(b': 1}\n{"b": 2}\n\n{"c"') == [b'{"a": 1}', b'{"b": 2}', b""]
    assert buffer.pending == 4
    assert buffer.feed(b": 3}\n") == [b'{"c": 3}'] and buffer.pending == 0
    started = time.monotonic()
    for _ in range(1024):  # one 64 MiB line without its end: linear, not 32 GB of copying
        buffer.feed(b"y" * 65536)
    assert buffer.pending == 64 * 1024 * 1024 and time.monotonic() - started < 2


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


# Loads one server that floods stdout with `y` lines and never speaks MCP, in a fresh interpreter
# (what matters happens when its event loop closes), and prints how long loading took.
NEVER_ANSWERS = textwrap.dedent(
    """
    import time
    from runtime.hookspecs import hookimpl
    from runtime.plugins import load_plugins
    from runtime.sandbox import SandboxConfig, SandboxRunner

    class Plugin:
        @hookimpl
        def register_mcp_servers(self, register):
            register("yes", {"command": "yes", "startup_timeout": 1})

    runner = SandboxRunner(SandboxConfig(unsafe_no_sandbox=True, session_disk_bytes=None))
    started = time.monotonic()
    tools = load_plugins(
        [Plugin()], load_entry_points=False, default_plugins=("plugins.mcp",), search_provider=None, sandbox=runner
    )
    print(len(tools), time.monotonic() - started)
    """
)


def test_a_server_that_never_answers_costs_its_startup_timeout_and_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NEVER_ANSWERS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent.parent,
    )
    assert done.returncode == 0, done.stderr
    count, seconds = done.stdout.split()
    assert count == "0"
    # Killed at its 1 s startup_timeout (it was once asked to stop, unheard, for 5 s more).
    assert float(seconds) < 4.0, seconds
    # Its pipes were once left for the garbage collector after the discovery loop had closed:
    # "Exception ignored ... RuntimeError: Event loop is closed" on the server's stderr.
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
