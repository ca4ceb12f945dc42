"""KernelPool with a real sandbox and kernel, without HTTP: the hand-over when the spare is a
plain directory (no disk image: moved by rename), restored sessions, and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugins.python_tool import PythonTool
from plugins.python_tool.kernel import SessionKernel
from plugins.python_tool.pool import KernelPool
from runtime.sandbox import SandboxConfig, SandboxRunner, bwrap_available
from runtime.sessions import SessionManager
from runtime.tools import ToolContext

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
]


@pytest.fixture
async def pooled(tmp_path: Path) -> AsyncIterator[tuple[SessionManager, KernelPool]]:
    runner = SandboxRunner(SandboxConfig(session_disk_bytes=None))  # no disk image: the rename path
    manager = SessionManager(tmp_path / "sessions", idle_seconds=3600, max_sessions=4, on_create=runner.open_workspace)
    pool = PythonTool(runner).kernel_pool(runner, manager.root / ".pool", 1)
    manager.spares = pool
    manager.start()
    try:
        yield manager, pool
    finally:
        await manager.close()


async def until_ready(pool: KernelPool, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.ready < 1:
        assert time.monotonic() < deadline, "no spare kernel became ready"
        await asyncio.sleep(0.05)


async def test_a_new_session_takes_the_spare_whole(pooled: tuple[SessionManager, KernelPool]) -> None:
    manager, pool = pooled
    await until_ready(pool)
    session = await manager.get("key", "s1")
    kernel = session.state.get("python")
    assert isinstance(kernel, SessionKernel) and kernel.started and kernel.workspace == session.workspace
    assert pool.handed_over == 1 and not list((manager.root / ".pool").glob("spare-*"))  # moved, not copied
    out = await PythonTool().run(
        {"code": "open('made-inside.txt', 'w').write('x'); import os; os.getcwd()"},
        ToolContext(session=session, deadline=time.monotonic() + 30),
    )
    assert "/workspace" in out.text and (session.workspace / "made-inside.txt").exists()
    await manager.release(session)
    await until_ready(pool)  # refilled in the background
    await manager.delete("key", "s1")
    assert not kernel.started  # the session's kernel died with it


async def test_a_restored_session_does_not_take_a_spare(pooled: tuple[SessionManager, KernelPool]) -> None:
    manager, pool = pooled
    await until_ready(pool)
    first = await manager.get("key", "kept")
    await manager.release(first)
    await manager.close()  # closed, files kept: the next get() restores it
    manager.start()
    await until_ready(pool)
    again = await manager.get("key", "kept")
    assert again.restored and "python" not in again.state and pool.ready == 1
    await manager.release(again)


async def test_closing_removes_the_spares(tmp_path: Path, pooled: tuple[SessionManager, KernelPool]) -> None:
    manager, pool = pooled
    await until_ready(pool)
    spare_dir = manager.root / ".pool"
    assert list(spare_dir.glob("spare-*"))
    await manager.close()
    assert not list(spare_dir.iterdir()) and pool.ready == 0
