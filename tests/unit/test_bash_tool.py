"""The `bash` tool through its public surface: hook registration and `run(arguments, context)`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pluggy
import pytest

import plugins.bash_tool
from plugins.bash_tool import BashTool
from runtime import hookspecs
from runtime.sandbox import SESSION_STATE_KEY, SandboxConfig, SandboxRunner, bwrap_available
from runtime.sessions import Session
from runtime.tools import Tool, ToolContext

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
]


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    session = Session(key_id="key", session_id="bash-test", workspace=tmp_path / "ws")
    yield session
    await session.close()


def context(session: Session, seconds: float = 60) -> ToolContext:
    return ToolContext(session=session, deadline=time.monotonic() + seconds)


def test_registers_through_the_hook() -> None:
    pm = pluggy.PluginManager("toolstudio")
    pm.add_hookspecs(hookspecs)
    pm.register(plugins.bash_tool)
    registered: list[Tool] = []
    pm.hook.register_tools(register=registered.append, search_provider=None)
    assert [tool.name for tool in registered] == ["bash"]
    assert isinstance(registered[0], Tool)
    assert registered[0].parameters["required"] == ["command"]


async def test_output_has_stdout_stderr_and_exit_code(session: Session) -> None:
    out = await BashTool().run({"command": "echo hello; echo warn >&2; exit 4"}, context(session))
    assert not out.is_error  # a failing command is an answer, not a tool failure
    assert out.text == "hello\n[stderr]\nwarn\n[exit code: 4]"


async def test_files_persist_in_the_workspace(session: Session) -> None:
    tool = BashTool()
    await tool.run({"command": "echo 42 > answer.txt"}, context(session))
    out = await tool.run({"command": "cat answer.txt; pwd"}, context(session))
    assert out.text == "42\n/workspace\n[exit code: 0]"
    assert (session.workspace / "answer.txt").read_text() == "42\n"


async def test_timeout_note(session: Session) -> None:
    started = time.monotonic()
    out = await BashTool().run({"command": "echo before; sleep 30", "timeout": 1}, context(session))
    assert time.monotonic() - started < 4
    assert not out.is_error
    assert out.text.startswith("before\n")
    assert "timed out after 1 s" in out.text


async def test_request_deadline_bounds_the_timeout(session: Session) -> None:
    started = time.monotonic()
    out = await BashTool().run({"command": "sleep 30", "timeout": 60}, context(session, seconds=1.5))
    assert time.monotonic() - started < 4
    assert "timed out" in out.text


async def test_shared_runner_from_session_state(session: Session) -> None:
    # The host puts its runner (with the operator's settings) in session.state["sandbox"].
    session.state[SESSION_STATE_KEY] = SandboxRunner(SandboxConfig(output_cap_bytes=100))
    out = await BashTool().run({"command": "seq 1 10000"}, context(session))
    assert "output truncated" in out.text


async def test_unavailable_sandbox_is_an_error_result(session: Session) -> None:
    session.state[SESSION_STATE_KEY] = SandboxRunner(SandboxConfig(bwrap="/nonexistent/bwrap"))
    out = await BashTool().run({"command": "echo hi"}, context(session))
    assert out.is_error
    assert "apt-get install bubblewrap" in out.text and "--unsafe-no-sandbox" in out.text
