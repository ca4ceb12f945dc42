"""One live MCP client session with one server instance: a sandboxed stdio process, or a
streamable-HTTP session.

The SDK's transports and `ClientSession` are anyio context managers that must be entered and
left in one task, while calls come from whichever request runs the tool: so each instance lives
in a task of its own (`McpConnection._run`), and callers use its `ClientSession`, which accepts
requests from any task. The stdio transport is ours rather than `mcp.client.stdio.stdio_client`
because the connection must see the process: its exit (a crash mid-call is told apart from a
protocol error), its stderr (the last lines explain a failed start) and its process group
(killed at once when a call times out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from subprocess import PIPE
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from plugins.mcp.config import HttpServer
from plugins.mcp.launch import Launch, McpStartError

log = logging.getLogger(__name__)

CLIENT_INFO = types.Implementation(name="toolstudio", version="0.1.0")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # one JSON-RPC line; a server that never ends a line is cut off
STOP_GRACE = 0.5  # seconds a server gets to exit after its stdin closes, before SIGKILL

Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


class ConnectionLost(RuntimeError):
    """The instance ended (exited, or was stopped) while a call waited for its answer."""


class StderrTail:
    """The last `cap` bytes a server wrote to stderr (and stray non-MCP stdout lines)."""

    def __init__(self, cap: int = 4096) -> None:
        self.cap = cap
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk
        del self.data[: max(0, len(self.data) - self.cap)]

    def text(self, limit: int = 1500) -> str:
        return self.data[-limit:].decode("utf-8", errors="replace").strip()


@dataclass(eq=False)
class Instance:
    """What one started instance left behind: its process (stdio) and how it ended."""

    stderr: StderrTail = field(default_factory=StderrTail)
    pid: int | None = None
    returncode: int | None = None
    on_exit: Callable[[], None] = lambda: None


class McpConnection:
    """A client session with one instance of an MCP server, started on demand.

    `label` names it in logs (`counter for session s1`). `open_transport(instance)` enters the
    transport (stdio or HTTP) and yields its streams. After a crash or a `stop`, the next
    `ensure_started` starts a fresh instance and returns a note saying the old one's state is gone.
    """

    def __init__(self, label: str, open_transport: Callable[[Instance], AbstractAsyncContextManager[Streams]]) -> None:
        self.label = label
        self.log_label = label  # may say more (which session) than the model is told
        self._open_transport = open_transport
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None  # made in the loop that uses it
        self.instance = Instance()
        self.ended: str | None = None  # why the last instance ended badly, for the next call's note
        self.starts = 0
        self.start_seconds: float | None = None

    @property
    def alive(self) -> bool:
        return (
            self._session is not None
            and self._task is not None
            and not self._task.done()
            and self._stop is not None
            and not self._stop.is_set()
        )

    async def ensure_started(self, timeout: float) -> str | None:
        """Start an instance unless one runs; a note for the model when this replaces one that
        crashed or was stopped. Raises `McpStartError` (with the server's last stderr lines)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.alive:
                return None
            if self._task is not None:  # it died: collect what it left
                await self.stop()
            note = None
            if self.ended is not None:
                note = f"The MCP server {self.label} had {self.ended} and was restarted: whatever it kept in memory is gone."
            await self._start(timeout)
            self.ended = None
            return note

    async def _start(self, timeout: float) -> None:
        self.instance = Instance()
        self._stop = asyncio.Event()
        self.instance.on_exit = self._stop.set
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        self._task = asyncio.create_task(self._run(ready), name=f"mcp {self.label}")
        # The task may still fail `ready` after we gave up on it: mark that failure as seen.
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except TimeoutError:
            await self.stop(kill=True)
            raise McpStartError(
                f"The MCP server {self.label} did not start within {timeout:g} s.{self._tail()}"
            ) from None
        except McpStartError as exc:
            await self.stop(kill=True)
            raise McpStartError(f"{exc}{self._tail()}") from exc
        except Exception as exc:
            await self.stop(kill=True)
            raise McpStartError(f"The MCP server {self.label} failed to start: {describe(exc)}.{self._tail()}") from exc
        self.starts += 1
        self.start_seconds = time.monotonic() - started
        log.info("MCP server %s started in %.2f s", self.log_label, self.start_seconds)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        """The instance's own task: enter the transport and the session, wait for `stop`."""
        assert self._stop is not None
        stop = self._stop
        session: ClientSession | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._open_transport(self.instance))
                session = await stack.enter_async_context(
                    ClientSession(read, write, client_info=CLIENT_INFO, logging_callback=self._log)
                )
                await session.initialize()
                self._session = session
                ready.set_result(None)
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:  # the transport broke (an HTTP request failed): say so to the call that waits
                log.warning("MCP server %s: the connection failed: %s", self.log_label, describe(exc))
                self.instance.stderr.write(f"[toolstudio: the connection failed: {describe(exc)}]\n".encode())
        finally:
            if self._session is session:  # (not a newer instance's)
                self._session = None
            stop.set()  # a call still waiting sees the instance gone (ConnectionLost)
            if not ready.done():
                ready.set_exception(McpStartError(f"The MCP server {self.label} ended before it was ready."))

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        log.debug("MCP server %s logs (%s): %s", self.log_label, params.level, params.data)

    async def call_tool(self, name: str, arguments: dict[str, Any], timeout: float) -> types.CallToolResult:
        """`tools/call` on the running instance. Raises `TimeoutError` after `timeout` seconds,
        `ConnectionLost` when the instance ends first (a crash: the SDK would otherwise leave the
        call waiting, since the session is torn down as the process exits), `McpError` for a
        JSON-RPC error, and whatever else the SDK raises."""
        session, ended = self.session(), self._stop
        assert ended is not None
        call = asyncio.ensure_future(session.call_tool(name, arguments))
        gone = asyncio.ensure_future(ended.wait())
        try:
            done, _ = await asyncio.wait({call, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if gone in done and not call.done():  # an answer may still be in the pipe
                await asyncio.wait({call}, timeout=0.2)
            if call.done():
                return call.result()
            if gone in done:
                raise ConnectionLost(f"The MCP server {self.label} ended during the call.")
            raise TimeoutError
        finally:
            for task in (call, gone):
                if not task.done():
                    task.cancel()
            await asyncio.gather(call, gone, return_exceptions=True)

    def session(self) -> ClientSession:
        """The running instance's session; raises `McpStartError` when none runs."""
        if self._session is None or not self.alive:
            raise McpStartError(f"The MCP server {self.label} is not running.")
        return self._session

    async def stop(self, *, kill: bool = False, reason: str | None = None) -> None:
        """End the instance (if any). `kill`: SIGKILL its process group at once instead of
        closing stdin first (it hangs, or is being replaced). `reason` is remembered for the
        next start's note. Idempotent; never raises."""
        if reason is not None:
            self.ended = reason
        task, self._task, self._session = self._task, None, None
        if task is None:
            return
        if kill:
            kill_group(self.instance.pid)
        if self._stop is not None:
            self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except Exception:
            log.debug("MCP server %s: stopping raised", self.log_label, exc_info=True)

    def crashed(self) -> str | None:
        """'exited with code N' / 'was killed by SIGX' once the process has ended, else None."""
        code = self.instance.returncode
        if code is None:
            return None
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        if code > 128:  # bwrap reports a child killed by signal N as 128+N
            with contextlib.suppress(ValueError):
                return f"exited with code {code} (killed by {signal.Signals(code - 128).name})"
        return f"exited with code {code}"

    async def wait_exit(self, timeout: float) -> None:
        """Give a process that broke the connection a moment to be reaped (to read its code)."""
        deadline = time.monotonic() + timeout
        while self.instance.returncode is None and self.instance.pid is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _tail(self) -> str:
        tail = self.instance.stderr.text()
        return f"\nIts last output on stderr:\n{tail}" if tail else ""


def describe(exc: BaseException) -> str:
    """An exception in words (`McpError: Connection closed`), for results and logs."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def kill_group(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# -- transports ------------------------------------------------------------------------------


@asynccontextmanager
async def stdio_transport(launch: Launch, instance: Instance, label: str) -> AsyncIterator[Streams]:
    """Run `launch` (the sandbox command line) and speak MCP over its stdin/stdout: one JSON-RPC
    message per line. On exit: stdin closed, `STOP_GRACE` seconds to leave, then SIGKILL to
    its process group (bwrap's `--die-with-parent` takes the sandbox down with it)."""
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        process = await anyio.open_process(
            launch.argv,
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
            cwd=str(launch.cwd),
            env=launch.env,
            start_new_session=True,  # its own process group: killed as a whole
        )
    except OSError as exc:
        raise McpStartError(f"The MCP server {label} could not be run: {describe(exc)}") from exc
    instance.pid = process.pid

    async def read_stdout() -> None:
        assert process.stdout is not None
        buffer = LineBuffer()
        async with read_writer:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                async for chunk in process.stdout:
                    for line in buffer.feed(chunk):
                        await _forward(line, read_writer, instance, label)
                    if buffer.pending > MAX_MESSAGE_BYTES:
                        log.warning("MCP server %s sent a line over %d bytes: disconnecting", label, MAX_MESSAGE_BYTES)
                        instance.stderr.write(b"\n[toolstudio: a message over the size limit; disconnected]\n")
                        kill_group(process.pid)
                        return

    async def write_stdin() -> None:
        assert process.stdin is not None
        async with write_reader:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                async for message in write_reader:
                    line = message.message.model_dump_json(by_alias=True, exclude_none=True) + "\n"
                    await process.stdin.send(line.encode())

    async def read_stderr() -> None:
        assert process.stderr is not None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            async for chunk in process.stderr:
                instance.stderr.write(chunk)

    async def watch_exit() -> None:
        instance.returncode = await process.wait()
        instance.on_exit()

    try:
        async with anyio.create_task_group() as group:
            for job in (read_stdout, write_stdin, read_stderr, watch_exit):
                group.start_soon(job)
            try:
                yield read_stream, write_stream
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(Exception):
                    assert process.stdin is not None
                    await process.stdin.aclose()
                with anyio.move_on_after(STOP_GRACE):
                    await process.wait()
            kill_group(process.pid)  # stragglers in its group, even after a clean exit
            with anyio.move_on_after(5.0):
                instance.returncode = await process.wait()
            for stream in (read_stream, write_stream, read_writer, write_reader):
                await stream.aclose()


class LineBuffer:
    """Splits a byte stream into lines in time linear in its length: a long message (a large
    result, an image) arrives in many 64 KiB chunks, and joining each to all that came before
    would copy it over and over on the event loop (6 s of CPU for a 32 MB result)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.pending = 0  # bytes of the line not yet ended

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines `chunk` ends (without their newline); the rest waits for the next chunk."""
        lines: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._parts.append(chunk[start:end])
            lines.append(b"".join(self._parts))
            self._parts.clear()
            start = end + 1
        if lines:
            self.pending = 0
        if start < len(chunk):
            self._parts.append(chunk[start:])
            self.pending += len(chunk) - start
        return lines


async def _forward(
    line: bytes, sink: MemoryObjectSendStream[SessionMessage | Exception], instance: Instance, label: str
) -> None:
    """Pass one stdout line on as a message; anything else (a stray print) goes to the stderr
    tail, since the stdio transport reserves stdout for MCP."""
    if not line.strip():
        return
    try:
        message = types.JSONRPCMessage.model_validate_json(line)
    except ValidationError:
        log.debug("MCP server %s wrote a non-MCP line on stdout: %r", label, line[:200])
        instance.stderr.write(b"[stdout, not MCP] " + line[:500] + b"\n")
        return
    await sink.send(SessionMessage(message))


@asynccontextmanager
async def http_transport(spec: HttpServer) -> AsyncIterator[Streams]:
    """A streamable-HTTP MCP session with `spec.url`, from the host, with `spec.headers`."""
    timeout = httpx.Timeout(30.0, read=300.0)  # a response stream may stay open while a tool runs
    async with (
        create_mcp_http_client(headers=dict(spec.headers), timeout=timeout) as client,
        streamable_http_client(spec.url, http_client=client) as (read, write, _),
    ):
        yield read, write


def open_http(spec: HttpServer) -> Callable[[Instance], AbstractAsyncContextManager[Streams]]:
    def open_transport(instance: Instance) -> AbstractAsyncContextManager[Streams]:
        return http_transport(spec)

    return open_transport


def open_stdio(launch: Callable[[], Launch], label: str) -> Callable[[Instance], AbstractAsyncContextManager[Streams]]:
    """`launch` is called at each start (a restart rebuilds the command line)."""

    def open_transport(instance: Instance) -> AbstractAsyncContextManager[Streams]:
        return stdio_transport(launch(), instance, label)

    return open_transport
