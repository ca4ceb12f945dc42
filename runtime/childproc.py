"""A child process watched straight on the event loop's selector: its exit through a pidfd,
its stdout/stderr drained into capped buffers, its stdin fed, with no thread and no task.

Why not `asyncio.create_subprocess_exec`: for a short sandboxed command its machinery (a
child-watcher thread per process on Python 3.11, transports, stream readers, one task per pipe)
cost about as much as bubblewrap's own start-up (bench/bench_tools.py); this is three
`add_reader` callbacks. Linux only (pidfd_open: 5.3+); where it is missing a worker thread
waits for the exit instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from typing import Protocol

READ_CHUNK = 65536


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


class WatchedChild:
    """Watch `proc` (a `subprocess.Popen` with stdout and stderr pipes, and a stdin pipe when
    `stdin` is given) on `loop`. `wait_exit` / `wait_output` await its exit and the end of its
    output; `close` stops watching (reading what is left is then skipped). The process is
    always reaped when it exits, whether or not anyone still waits."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        proc: subprocess.Popen[bytes],
        stdout: Sink,
        stderr: Sink,
        stdin: bytes | None = None,
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.loop = loop
        self.proc = proc
        self._exited = loop.create_future()
        self._drained = loop.create_future()
        self._sinks: dict[int, Sink] = {proc.stdout.fileno(): stdout, proc.stderr.fileno(): stderr}
        for fd in self._sinks:
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, fd)
        self._stdin = memoryview(stdin) if stdin is not None else None
        if proc.stdin is not None:
            if self._stdin:
                os.set_blocking(proc.stdin.fileno(), False)
                loop.add_writer(proc.stdin.fileno(), self._write)
            else:
                proc.stdin.close()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(self._pidfd, self._on_exit)
        except (AttributeError, OSError):  # an old kernel: a thread waits instead
            loop.run_in_executor(None, proc.wait).add_done_callback(lambda _: self._on_exit())

    async def wait_exit(self, timeout: float) -> bool:
        """True once the process has exited, False if `timeout` seconds pass first."""
        await asyncio.wait({self._exited}, timeout=timeout)
        return self._exited.done()

    async def wait_output(self, timeout: float) -> None:
        """Until both output pipes are at their end (every writer gone) or `timeout` passes."""
        await asyncio.wait({self._drained}, timeout=timeout)

    def close(self) -> None:
        """Stop reading and writing the pipes and close them (the exit is still reaped)."""
        for fd in list(self._sinks):
            self._finish(fd)
        self._close_stdin()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:  # keep draining past any cap: a child blocked on a full pipe never exits
            self._sinks[fd].write(chunk)
        else:
            self._finish(fd)

    def _finish(self, fd: int) -> None:
        if self._sinks.pop(fd, None) is not None:
            self.loop.remove_reader(fd)
        if not self._sinks and not self._drained.done():
            self._drained.set_result(None)

    def _write(self, *_: object) -> None:
        stdin, data = self.proc.stdin, self._stdin
        if stdin is None or data is None:
            return
        try:
            written = os.write(stdin.fileno(), data)
        except BlockingIOError:
            return
        except OSError:  # the child closed its stdin (or died): the rest is not wanted
            written = len(data)
        self._stdin = data[written:]
        if not self._stdin:
            self._close_stdin()

    def _close_stdin(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            if self._stdin is not None:
                self.loop.remove_writer(stdin.fileno())
            with contextlib.suppress(OSError):
                stdin.close()
        self._stdin = None

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.proc.poll()  # reaps it: the pidfd said it has exited
        if not self._exited.done():
            self._exited.set_result(None)
