"""The `python` tool with real sandboxed Jupyter kernels: persistence, isolation, timeouts, crashes."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pluggy
import pytest

import plugins.python_tool
from plugins.bash_tool import BashTool
from plugins.python_tool import STATE_KEY, PythonTool
from plugins.python_tool.kernel import SessionKernel, _purge_stale_runtime_dirs
from runtime import hookspecs
from runtime.sandbox import SESSION_STATE_KEY, SandboxConfig, SandboxRunner, bwrap_available
from runtime.sessions import Session
from runtime.tools import Tool, ToolContext

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
]


@pytest.fixture
def tool() -> PythonTool:
    return PythonTool()


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[Session]:
    session = Session(key_id="key", session_id="one", workspace=tmp_path / "one")
    yield session
    await session.close()


@pytest.fixture
async def other_session(tmp_path: Path) -> AsyncIterator[Session]:
    session = Session(key_id="key", session_id="two", workspace=tmp_path / "two")
    yield session
    await session.close()


def context(session: Session, seconds: float = 60) -> ToolContext:
    return ToolContext(session=session, deadline=time.monotonic() + seconds)


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A valid red RGB PNG, built by hand so the test needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_registers_through_the_hook() -> None:
    pm = pluggy.PluginManager("toolstudio")
    pm.add_hookspecs(hookspecs)
    pm.register(plugins.python_tool)
    registered: list[Tool] = []
    pm.hook.register_tools(register=registered.append, search_provider=None)
    assert [tool.name for tool in registered] == ["python"]
    assert isinstance(registered[0], Tool)


async def test_state_persists_across_calls(tool: PythonTool, session: Session) -> None:
    first = await tool.run({"code": "x = 41"}, context(session))
    assert (first.text, first.is_error) == ("(no output)", False)
    second = await tool.run({"code": "x + 1"}, context(session))
    assert second.text == "42"


async def test_sessions_are_isolated(tool: PythonTool, session: Session, other_session: Session) -> None:
    await tool.run({"code": "secret = 'one'\nopen('mine.txt', 'w').write('one')"}, context(session))
    out = await tool.run({"code": "import os\nprint(os.listdir('.'))\nsecret"}, context(other_session))
    assert "NameError" in out.text
    assert "[]" in out.text
    assert session.state[STATE_KEY] is not other_session.state[STATE_KEY]


async def test_file_written_by_bash_is_visible_to_python(tool: PythonTool, session: Session) -> None:
    await BashTool().run({"command": "echo 'from bash' > shared.txt"}, context(session))
    out = await tool.run({"code": "print(open('/workspace/shared.txt').read().strip())"}, context(session))
    assert out.text == "from bash"


async def test_stdout_stderr_and_traceback(tool: PythonTool, session: Session) -> None:
    code = "import sys\nprint('to out')\nsys.stdout.flush()\nprint('to err', file=sys.stderr)\nsys.stderr.flush()\n1/0"
    out = await tool.run({"code": code}, context(session))
    assert out.is_error  # a cell that raised is an error result (its output is kept)
    assert out.text.startswith("to out\n[stderr]\nto err\n")
    assert "ZeroDivisionError: division by zero" in out.text
    assert "Traceback" in out.text
    assert "\x1b[" not in out.text  # ANSI colours stripped


async def test_long_output_is_truncated(tool: PythonTool, session: Session) -> None:
    out = await tool.run({"code": "for i in range(100000):\n    print(i)\nprint('END')"}, context(session))
    assert out.text.startswith("0\n1\n2\n")
    assert out.text.endswith("99999\nEND")
    assert "output truncated" in out.text
    assert len(out.text) < 70_000


async def test_timeout_interrupts_and_keeps_state(tool: PythonTool, session: Session) -> None:
    await tool.run({"code": "kept = 'yes'"}, context(session))
    started = time.monotonic()
    out = await tool.run({"code": "import time\nprint('working')\ntime.sleep(60)", "timeout": 1}, context(session))
    assert time.monotonic() - started < 5
    assert out.text.startswith("working\n")
    assert "timed out after 1 s" in out.text and "kept" in out.text
    assert "KeyboardInterrupt" not in out.text
    after = await tool.run({"code": "kept"}, context(session))
    assert after.text == "'yes'"


async def test_cancelled_call_interrupts_the_cell(tool: PythonTool, session: Session) -> None:
    await tool.run({"code": "kept = 7"}, context(session))
    call = asyncio.ensure_future(tool.run({"code": "import time\ntime.sleep(60)"}, context(session)))
    await asyncio.sleep(0.5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    started = time.monotonic()
    out = await tool.run({"code": "kept", "timeout": 5}, context(session))
    assert out.text == "7"
    assert time.monotonic() - started < 2


async def test_crash_restarts_and_says_state_was_lost(tool: PythonTool, session: Session) -> None:
    await tool.run({"code": "x = 1"}, context(session))
    crashed = await tool.run({"code": "import os\nos._exit(1)"}, context(session))
    assert crashed.is_error
    assert "restarted" in crashed.text and "gone" in crashed.text
    after = await tool.run({"code": "x"}, context(session))
    assert "NameError" in after.text


async def test_death_between_calls_is_reported(tool: PythonTool, session: Session) -> None:
    code = "import os, threading\nthreading.Timer(0.2, lambda: os._exit(3)).start()\nvalue = 5"
    await tool.run({"code": code}, context(session))
    await asyncio.sleep(0.6)
    out = await tool.run({"code": "print('fresh')"}, context(session))
    assert out.text.startswith("fresh\n")
    assert "had died since the last call" in out.text


async def test_kernel_ignoring_interrupt_is_killed_and_restarted(tool: PythonTool, session: Session) -> None:
    runner = tool.runner_for(session.state)
    kernel = SessionKernel(runner, session.workspace, interrupt_grace=1.0)
    session.state[STATE_KEY] = kernel  # the tool uses an existing session kernel as is
    session.add_cleanup(kernel.shutdown)
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
    started = time.monotonic()
    out = await tool.run({"code": code, "timeout": 1}, context(session))
    assert time.monotonic() - started < 8
    assert "did not stop when interrupted" in out.text
    assert (await tool.run({"code": "1 + 1"}, context(session))).text == "2"


async def test_png_display_becomes_an_attachment(tool: PythonTool, session: Session) -> None:
    png = tiny_png()
    code = (
        "import base64\nfrom IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode({base64.b64encode(png).decode()!r})))"
    )
    out = await tool.run({"code": code}, context(session))
    assert [a.media_type for a in out.attachments] == ["image/png"]
    assert base64.b64decode(out.attachments[0].data) == png
    assert "image/png image 1 attached" in out.text


async def test_kernel_is_sandboxed(tool: PythonTool, session: Session) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = (
        "import os, socket\n"
        "print(os.getcwd(), os.getuid() != 0, len([p for p in os.listdir('/proc') if p.isdigit()]) < 6)\n"
        "try:\n    open('/etc/shadow').read()\nexcept PermissionError:\n    print('shadow denied')\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "except OSError as exc:\n    print('no network:', type(exc).__name__)\n"
        "try:\n    open('/usr/escape', 'w')\nexcept OSError:\n    print('usr read-only')"
    )
    async with server:
        out = await tool.run({"code": code}, context(session))
    assert out.text.splitlines() == [
        "/workspace True True",
        "shadow denied",
        "no network: ConnectionRefusedError",
        "usr read-only",
    ]


async def test_session_close_shuts_the_kernel_down(tool: PythonTool, tmp_path: Path) -> None:
    session = Session(key_id="key", session_id="closing", workspace=tmp_path / "closing")
    await tool.run({"code": "1"}, context(session))
    kernel = session.state[STATE_KEY]
    runtime_dir = str(kernel.runtime_dir)
    assert _processes_mentioning(runtime_dir)
    await session.close()
    await asyncio.sleep(0.2)
    assert _processes_mentioning(runtime_dir) == []
    assert not Path(runtime_dir).exists()


async def test_unavailable_sandbox_is_an_error_result(tool: PythonTool, session: Session) -> None:
    session.state[SESSION_STATE_KEY] = SandboxRunner(SandboxConfig(bwrap="/nonexistent/bwrap"))
    out = await tool.run({"code": "1"}, context(session))
    assert out.is_error
    assert "apt-get install bubblewrap" in out.text


async def test_missing_interpreter_is_an_error_result(session: Session) -> None:
    out = await PythonTool(interpreter="/usr/bin/no-such-python").run({"code": "1"}, context(session))
    assert out.is_error
    assert "failed to start" in out.text and "ipykernel" in out.text


async def test_stale_kernel_directories_are_purged(tool: PythonTool, session: Session, tmp_path: Path) -> None:
    await tool.run({"code": "1"}, context(session))  # a live kernel: its directory must survive
    live = session.state[STATE_KEY].runtime_dir
    stale = tmp_path / "kernel-left-by-a-crash"
    stale.mkdir()
    (stale / "kernel.json").write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    os.utime(live, (time.time() - 3600, time.time() - 3600))
    young = tmp_path / "kernel-just-made"
    young.mkdir()
    _purge_stale_runtime_dirs.__wrapped__(tmp_path)
    _purge_stale_runtime_dirs.__wrapped__(live.parent)
    assert not stale.exists()
    assert young.exists() and live.exists()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("tool_name", ["python", "bash"])
async def test_deleting_a_session_stops_its_running_call_at_once(tmp_path: Path, tool_name: str) -> None:
    from runtime.agent import execute_tool
    from runtime.plugins import load_plugins
    from runtime.sessions import SessionManager

    registry = load_plugins([], load_entry_points=False, search_provider=None)
    tool = registry.get(tool_name)
    assert tool is not None
    arguments = '{"code": "import time\\nprint(1, flush=True)\\ntime.sleep(40)"}'
    if tool_name == "bash":
        arguments = '{"command": "echo 1; sleep 40"}'
    async with SessionManager(tmp_path / "sessions", idle_seconds=600, max_sessions=4) as manager:
        async with manager.session("key", "long") as session:
            if tool_name == "python":  # start the kernel first: what is measured is the cancel
                assert not (await execute_tool(tool, '{"code": "1"}', registry, session, 60)).is_error
            call = asyncio.ensure_future(execute_tool(tool, arguments, registry, session, 60))
            await asyncio.sleep(1.5)
            assert not call.done()
            started = time.monotonic()
            assert await manager.delete("key", "long")
            deleted_in = time.monotonic() - started
            output = await asyncio.wait_for(call, 5)
        assert deleted_in < 1.0, deleted_in
        assert output.is_error and "deleted" in output.text
        assert not session.workspace.exists()
        if tool_name == "bash":
            await asyncio.sleep(0.5)
            assert not _processes_mentioning("sleep 40")
