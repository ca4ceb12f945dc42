"""Per-session isolation with real bwrap sandboxes and real kernels: one session's fork bomb,
thread bomb or full disk never makes another session's call, or a new session, fail."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from plugins.bash_tool import BashTool
from plugins.python_tool import PythonTool
from runtime.sandbox import Limits, SandboxConfig, SandboxRunner, _count_tasks, _mounts_under, bwrap_available
from runtime.sessions import Session, SessionManager
from runtime.tools import ToolContext

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a uid and a disk per session need root"),
]

_MiB = 1024 * 1024
FORK_BOMB = "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
THREAD_BOMB = (
    "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
)
THREAD_POOL = (
    "from concurrent.futures import ThreadPoolExecutor\n"
    "import time\n"
    "with ThreadPoolExecutor(120) as pool:\n"
    "    print(sum(pool.map(lambda i: time.sleep(0.2) or i, range(120))))\n"
)


class Harness:
    """A session manager wired to one runner, as build_runtime wires them, and the two tools."""

    def __init__(self, root: Path, config: SandboxConfig) -> None:
        self.runner = SandboxRunner(config)
        self.root = root
        self.manager = SessionManager(
            root,
            idle_seconds=3600,
            max_sessions=8,
            on_create=self.runner.open_workspace,
            on_remove=self.runner.close_workspace,
            on_close=functools.partial(self.runner.close_workspace, keep_files=True),
        )
        self.python = PythonTool(self.runner)
        self.bash = BashTool(self.runner)

    async def session(self, name: str) -> Session:
        session = await self.manager.get("key", name)
        await self.manager.release(session)  # stays alive: it is named
        return session

    async def py(self, session: Session, code: str, timeout: float = 20) -> tuple[str, bool]:
        out = await self.python.run({"code": code, "timeout": timeout}, _context(session))
        return out.text, out.is_error

    async def sh(self, session: Session, command: str, timeout: float = 20) -> tuple[str, bool]:
        out = await self.bash.run({"command": command, "timeout": timeout}, _context(session))
        return out.text, out.is_error

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.manager.close(), 30)
        finally:  # whatever happened: nothing mounted, no process left
            await asyncio.to_thread(self.runner.close_workspace, self.root)


def _context(session: Session) -> ToolContext:
    return ToolContext(session=session, deadline=time.monotonic() + 60)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "sessions", SandboxConfig(default_timeout=20, session_disk_bytes=32 * _MiB))
    try:
        yield h
    finally:
        await h.close()


@pytest.mark.parametrize("bomb", [FORK_BOMB, THREAD_BOMB], ids=["fork", "threads"])
async def test_a_bomb_in_one_session_leaves_the_others_working(
    harness: Harness, bomb: str, caplog: pytest.LogCaptureFixture
) -> None:
    calm, noisy = await harness.session("calm"), await harness.session("noisy")
    assert (await harness.py(calm, "x = 41"))[1] is False  # a warm kernel before the bomb
    with caplog.at_level(logging.WARNING):
        text, is_error = await harness.py(noisy, bomb)
    assert is_error  # the code raised (a failed cell), with the reason added
    assert "process/thread limit (256" in text
    assert "process/thread limit" in caplog.text  # the log says why, too
    uid = harness.runner.uid_for(noisy.workspace)[0]
    assert _count_tasks(uid) >= 200  # the bomb's processes or threads are still there, holding the limit

    assert await harness.sh(calm, "echo fine; ls /workspace") == ("fine\n[exit code: 0]", False)
    assert await harness.py(calm, "x + 1") == ("42", False)
    assert await harness.py(calm, THREAD_POOL) == (str(sum(range(120))), False)
    fresh = await harness.session("fresh")
    assert await harness.py(fresh, "1 + 1") == ("2", False)  # a new kernel starts
    assert await harness.sh(fresh, "echo hi") == ("hi\n[exit code: 0]", False)

    assert await harness.manager.delete("key", "noisy")
    deadline = time.monotonic() + 5  # a dying pid namespace takes a moment to be reaped
    while _count_tasks(uid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _count_tasks(uid) == 0  # everything the session's uid ran is gone


async def test_sessions_run_as_different_uids(harness: Harness) -> None:
    one, two = await harness.session("one"), await harness.session("two")
    uid_one, _ = await harness.sh(one, "id -u")
    uid_two, _ = await harness.py(two, "import os; print(os.getuid())")
    same_one, _ = await harness.py(one, "import os; print(os.getuid())")
    assert uid_one.splitlines()[0] == same_one != uid_two
    assert int(same_one) != 0 and int(uid_two) != 0


async def test_kernel_reaps_children_nobody_waits_for(harness: Harness) -> None:
    session = await harness.session("forky")
    code = (
        "import os, subprocess, time\n"
        "tracked = subprocess.Popen(['sh', '-c', 'exit 5'])\n"
        "for _ in range(50):\n"
        "    if os.fork() == 0:\n"
        "        os._exit(0)\n"
        "time.sleep(3)\n"
        "def zombies():\n"
        "    found = 0\n"
        "    for task in os.listdir('/proc/self/task'):\n"
        "        for child in open(f'/proc/self/task/{task}/children').read().split():\n"
        "            found += open(f'/proc/{child}/stat').read().rpartition(')')[2].split()[0] == 'Z'\n"
        "    return found\n"
        "print(zombies(), tracked.wait(), subprocess.run(['sh', '-c', 'exit 3']).returncode, zombies())"
    )
    # 1 zombie left: the Popen nobody has waited for yet (its exit status is kept for wait()).
    assert await harness.py(session, code) == ("1 5 3 0", False)


async def test_a_full_disk_stops_at_the_quota_and_the_next_call_works(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    if harness.runner.disk_quota is None:
        pytest.skip(f"no session disks here: {harness.runner.disk_quota_problem}")
    full, other = await harness.session("full"), await harness.session("other")
    with caplog.at_level(logging.WARNING):
        text, is_error = await harness.sh(full, "dd if=/dev/zero of=big bs=1M count=64 status=none; echo done")
    assert not is_error
    assert "disk quota (32 MiB) is full" in text
    assert "disk quota" in caplog.text
    assert (full.workspace / "big").stat().st_size <= 32 * _MiB
    text, _ = await harness.py(full, "open('more.bin', 'wb').write(b'x' * (8 << 20))")
    assert "OSError" in text and "disk quota (32 MiB) is full" in text
    # Another session's disk is its own.
    assert await harness.sh(other, "head -c 16M /dev/zero > f && stat -c %s f") == ("16777216\n[exit code: 0]", False)
    # The next call in the full session works, and both tools see the same files.
    assert await harness.sh(full, "rm big more.bin && echo hello > note && echo ok") == ("ok\n[exit code: 0]", False)
    assert await harness.py(full, "print(open('note').read().strip())") == ("hello", False)
    image = full.workspace.with_name(full.workspace.name + ".img")
    assert image.stat().st_blocks * 512 < 8 * _MiB  # sparse, and deleted files gave their blocks back
    assert _mounts_under(full.workspace) == [full.workspace]
    assert await harness.manager.delete("key", "full")
    assert _mounts_under(full.workspace) == [] and not image.exists() and not full.workspace.exists()


async def test_kernel_start_failure_names_the_limit(tmp_path: Path) -> None:
    tight = Limits(cpu_seconds=None, address_space_bytes=8 << 30, nproc=3)
    h = Harness(tmp_path / "sessions", SandboxConfig(kernel_limits=tight, session_disk_bytes=None))
    try:
        text, is_error = await h.py(await h.session("tight"), "1")
    finally:
        await h.close()
    assert is_error
    assert "failed to start" in text and "process/thread limit (3" in text
    assert "ipykernel" not in text.split("Kernel log:")[0]  # not the wrong advice


@pytest.fixture
def no_ipykernel_python() -> Iterator[Path]:
    """A python3 without site-packages (so without ipykernel), in a directory the sandbox can bind."""
    directory = Path(tempfile.mkdtemp(prefix="toolstudio-nokernel-"))
    directory.chmod(0o755)
    script = directory / "python"
    script.write_text('#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n')
    script.chmod(0o755)
    try:
        yield directory
    finally:
        script.unlink()
        directory.rmdir()


async def test_kernel_start_failure_names_missing_ipykernel(tmp_path: Path, no_ipykernel_python: Path) -> None:
    h = Harness(tmp_path / "sessions", SandboxConfig(session_disk_bytes=None))
    tool = PythonTool(h.runner, interpreter="/opt/nokernel/python", ro_binds=[(no_ipykernel_python, "/opt/nokernel")])
    try:
        out = await tool.run({"code": "1"}, _context(await h.session("bare")))
    finally:
        await h.close()
    assert out.is_error
    assert "lacks ipykernel" in out.text and "process/thread limit" not in out.text


def test_isolation_off_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.sandbox"):
        runner = SandboxRunner(SandboxConfig(isolate_sessions=False))
    assert "session isolation is off" in caplog.text
    assert runner.disk_quota is None
    assert runner.uid_for(Path("/nonexistent/a")) == runner.uid_for(Path("/nonexistent/b"))


async def test_disks_left_by_a_crashed_server_are_unmounted_at_start(tmp_path: Path) -> None:
    config = SandboxConfig(session_disk_bytes=16 * _MiB)
    crashed = Harness(tmp_path / "sessions", config)
    try:
        if crashed.runner.disk_quota is None:
            pytest.skip(f"no session disks here: {crashed.runner.disk_quota_problem}")
        left = await crashed.session("left")
        assert _mounts_under(crashed.root) == [left.workspace]
        restarted = Harness(tmp_path / "sessions", config)  # a new server on the same data dir
        restarted.manager.start()
        assert _mounts_under(crashed.root) == []
        # The named session's files are kept (its image, unmounted) for its next call.
        assert left.workspace.with_name(left.workspace.name + ".img").exists()
        await restarted.manager.delete("key", "left")
        await restarted.close()
        assert not left.workspace.exists() and not left.workspace.with_name(left.workspace.name + ".img").exists()
    finally:
        await crashed.close()


async def test_files_survive_a_restart_and_the_first_call_says_state_was_lost(tmp_path: Path) -> None:
    from runtime.agent import execute_tool
    from runtime.plugins import load_plugins

    config = SandboxConfig(default_timeout=20, session_disk_bytes=32 * _MiB)
    before = Harness(tmp_path / "sessions", config)
    try:
        session = await before.session("analysis")
        assert await before.py(session, "x = 41\nopen('/workspace/notes.txt', 'w').write('kept')") == ("4", False)
    finally:
        await before.close()  # a graceful shutdown: the kernel goes, the files stay
    after = Harness(tmp_path / "sessions", config)
    after.manager.start()
    registry = load_plugins([], load_entry_points=False, search_provider=None)
    python = registry.get("python")
    assert python is not None
    try:
        session = await after.session("analysis")
        assert session.restored
        first = await execute_tool(
            python, '{"code": "print(open(\'/workspace/notes.txt\').read())"}', registry, session, 30
        )
        assert first.session_restored and not first.is_error
        assert "kept" in first.text and "state" in first.text and "lost" in first.text
        second = await execute_tool(python, '{"code": "x"}', registry, session, 30)
        assert not second.session_restored and "NameError" in second.text  # the variable did not survive
        assert await after.sh(session, "cat notes.txt") == ("kept\n[exit code: 0]", False)
    finally:
        await after.close()
