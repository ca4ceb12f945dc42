"""runtime/childproc.py: a child watched on the event loop (pidfd + pipes), with real processes."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

from runtime.childproc import WatchedChild
from runtime.sandbox import OutputBuffer


def spawn(argv: list[str], stdin: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def run(argv: list[str], data: bytes | None = None, cap: int = 1 << 22) -> tuple[int | None, str, str]:
    proc = spawn(argv, stdin=data is not None)
    out, err = OutputBuffer(cap), OutputBuffer(cap)
    child = WatchedChild(asyncio.get_running_loop(), proc, out, err, data)
    try:
        assert await child.wait_exit(30)
        await child.wait_output(5)
    finally:
        child.close()
    return proc.returncode, out.text(), err.text()


async def test_output_exit_status_and_both_streams() -> None:
    code, out, err = await run(["bash", "-c", "echo out; echo err >&2; exit 3"])
    assert (code, out, err) == (3, "out\n", "err\n")


async def test_stdin_larger_than_a_pipe_buffer_goes_through() -> None:
    data = b"0123456789abcdef" * 65536  # 1 MiB: far over the 64 KiB pipe buffer both ways
    code, out, _ = await run(["cat"], data)
    assert code == 0 and out.encode() == data


async def test_a_child_that_stops_reading_stdin_does_not_hang_us() -> None:
    code, out, _ = await run(["head", "-c", "5"], b"x" * (4 << 20))
    assert code == 0 and out == "xxxxx"


async def test_output_over_the_cap_is_drained_so_the_child_exits() -> None:
    code, out, _ = await run(["bash", "-c", "head -c 3000000 /dev/zero | tr '\\0' a"], cap=1000)
    assert code == 0 and "output truncated" in out


async def test_the_exit_is_seen_without_a_thread_and_the_child_is_reaped() -> None:
    threads = threading.active_count()
    proc = spawn(["sleep", "0.2"])
    child = WatchedChild(asyncio.get_running_loop(), proc, OutputBuffer(100), OutputBuffer(100))
    assert threading.active_count() == threads  # a pidfd on the selector, no watcher thread
    assert not await child.wait_exit(0.01)
    assert await child.wait_exit(10)
    child.close()
    assert proc.returncode == 0
    assert not Path(f"/proc/{proc.pid}").exists()  # reaped, not a zombie
