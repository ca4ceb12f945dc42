"""One configured MCP server: its tools (discovered once at start-up) and its instances.

A stdio server runs one instance per session (in `session.state["mcp"]`, started on the
session's first call, stopped with the session like its kernel), or one for all sessions with
`"shared": true`. An HTTP server likewise gets one MCP session per toolstudio session, or one
shared. Every failure of a call — the server crashed, did not answer in time, broke the
protocol — is an `is_error` result the model can read, and the next call starts a fresh instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp import types
from mcp.shared.exceptions import McpError

from plugins.mcp.config import HttpServer, McpServerSpec, StdioServer
from plugins.mcp.connection import ConnectionLost, McpConnection, describe, open_http, open_stdio
from plugins.mcp.launch import McpStartError, stdio_launch
from plugins.mcp.results import to_output
from runtime.sandbox import SESSION_STATE_KEY, SandboxConfig, SandboxRunner, SandboxUnavailable, claim_box
from runtime.tools import ToolContext, ToolOutput

if TYPE_CHECKING:
    from runtime.sessions import Session

log = logging.getLogger(__name__)

STATE_KEY = "mcp"  # session.state["mcp"]: server name -> that session's McpConnection
_TOOL_CHARS = re.compile(r"[^A-Za-z0-9_-]")
MAX_TOOL_NAME = 64


class McpServer:
    """A configured server. `runner` is the operator's sandbox (None: a default one is made
    when a stdio server first needs it; a session's own `state["sandbox"]` wins)."""

    def __init__(self, spec: McpServerSpec, runner: SandboxRunner | None = None) -> None:
        self.spec = spec
        self._runner = runner
        self._shared: McpConnection | None = None
        self._shared_workspace: Path | None = None
        self._shared_runner: SandboxRunner | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """`stdio, one per session` / `http, shared`: for logs."""
        return f"{self.spec.kind}, {'shared by all sessions' if self.spec.shared else 'one per session'}"

    def runner_for(self, state: dict[str, Any] | None = None) -> SandboxRunner:
        shared = (state or {}).get(SESSION_STATE_KEY)
        if isinstance(shared, SandboxRunner):
            return shared
        if self._runner is None:
            self._runner = SandboxRunner(SandboxConfig())
        return self._runner

    # -- instances ---------------------------------------------------------------------------

    def connection_for(self, session: Session) -> McpConnection:
        """The instance `session` talks to (created, not started, on first use)."""
        if self.spec.shared:
            if self._shared is None:
                self._shared = self._connection(repr(self.name), None)
            return self._shared
        connections = session.state.setdefault(STATE_KEY, {})
        connection = connections.get(self.name)
        if not isinstance(connection, McpConnection):
            runner = self.runner_for(session.state) if isinstance(self.spec, StdioServer) else None
            if runner is not None:
                claim_box(runner, session)  # before our cleanup: the box closes after the server stops
            connection = self._connection(f"{self.name!r}", (runner, session.workspace) if runner else None)
            connection.log_label = f"{self.name!r} (session {session.session_id})"
            connections[self.name] = connection
            session.add_cleanup(connection.stop)
        return connection

    def _connection(self, label: str, place: tuple[SandboxRunner, Path] | None) -> McpConnection:
        spec = self.spec
        if isinstance(spec, HttpServer):
            return McpConnection(label, open_http(spec))
        if place is not None:
            runner, workspace = place
            return McpConnection(label, open_stdio(lambda: stdio_launch(spec, runner, workspace), label))
        # Shared: one scratch workspace of its own, made at the first start, kept across restarts.
        return McpConnection(label, open_stdio(lambda: stdio_launch(spec, *self._shared_place()), label))

    def _shared_place(self) -> tuple[SandboxRunner, Path]:
        if self._shared_workspace is None:
            self._shared_runner = self.runner_for()
            self._shared_workspace = scratch_workspace(self._shared_runner, self.name)
        assert self._shared_runner is not None
        return self._shared_runner, self._shared_workspace

    async def aclose(self) -> None:
        """Stop the shared instance and remove its workspace (server shutdown). Idempotent."""
        if self._shared is not None:
            await self._shared.stop()
        workspace, runner = self._shared_workspace, self._shared_runner
        self._shared_workspace = None
        if workspace is not None and runner is not None:
            await asyncio.to_thread(remove_workspace, runner, workspace)

    # -- calls -------------------------------------------------------------------------------

    async def call(self, remote: str, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        """Run tool `remote` of this server for `context.session`; never raises for the
        server's failures (they are `is_error` outputs)."""
        connection = self.connection_for(context.session)
        try:
            note = await connection.ensure_started(max(1.0, min(self.spec.startup_timeout, context.seconds_left)))
        except (McpStartError, SandboxUnavailable) as exc:
            log.warning("MCP server %s did not start: %s", self.name, exc)
            return ToolOutput(str(exc), is_error=True)
        output = await self._call(connection, remote, arguments, context)
        if note:  # this call started a fresh instance after a crash or a timeout: say so first
            output = dataclasses.replace(output, text=f"{note}\n{output.text}")
        return output

    async def _call(
        self, connection: McpConnection, remote: str, arguments: dict[str, Any], context: ToolContext
    ) -> ToolOutput:
        timeout = max(0.1, min(self.spec.timeout or context.seconds_left, context.seconds_left))
        label = connection.label
        try:
            result = await connection.call_tool(remote, arguments, timeout)
        except TimeoutError:
            log.warning(
                "MCP server %s: %s did not answer within %g s: stopping it", connection.log_label, remote, timeout
            )
            await connection.stop(kill=True, reason=f"been stopped after {remote} did not answer within {timeout:g} s")
            return ToolOutput(
                f"{remote} did not answer within {timeout:g} s: the MCP server {label} was stopped and starts "
                "again on the next call (whatever it kept in memory is lost).",
                is_error=True,
            )
        except McpError as exc:
            if connection.alive and exc.error.code != types.CONNECTION_CLOSED:
                # The server answered with a JSON-RPC error (unknown tool, bad params): it is fine.
                return ToolOutput(
                    f"The MCP server {label} refused the call: {exc.error.message} (error {exc.error.code})",
                    is_error=True,
                )
            return await self._broken(connection, remote, exc)
        except (ConnectionLost, McpStartError) as exc:  # it crashed (or ended before the call)
            return await self._broken(connection, remote, exc)
        except Exception as exc:
            await connection.wait_exit(0.5)
            if connection.alive and connection.crashed() is None and isinstance(exc, RuntimeError | ValueError):
                # E.g. structured content that breaks the tool's own outputSchema: the server is fine.
                return ToolOutput(f"The MCP server {label} returned an invalid result: {describe(exc)}", is_error=True)
            return await self._broken(connection, remote, exc)
        output = to_output(result)
        if output.is_error:
            log.info("MCP server %s: %s answered with isError", connection.log_label, remote)
        return output

    async def _broken(self, connection: McpConnection, remote: str, exc: BaseException) -> ToolOutput:
        """The connection failed mid-call: say how (crash, exit code, stderr), stop what is left."""
        await connection.wait_exit(1.0)
        crashed = connection.crashed()
        lost = "lost the connection" if isinstance(exc, ConnectionLost) else f"failed ({describe(exc)})"
        how = crashed or lost
        tail = connection.instance.stderr.text()
        await connection.stop(kill=True, reason=f"crashed ({how})" if crashed else how)
        log.warning("MCP server %s %s during %s", connection.log_label, how, remote)
        text = (
            f"The MCP server {connection.label} {how} during the call to {remote}, which did not complete. "
            "It starts again on the next call (whatever it kept in memory is lost)."
        )
        if tail:
            where = "Its last output on stderr" if isinstance(self.spec, StdioServer) else "What failed"
            text += f"\n{where}:\n{tail}"
        return ToolOutput(text, is_error=True)

    # -- start-up discovery --------------------------------------------------------------------

    async def discover(self) -> tuple[list[types.Tool], float]:
        """(its tools, seconds taken): a throwaway instance (in a scratch workspace for stdio)
        started, asked for every page of `tools/list`, and stopped, within `startup_timeout`.
        Raises `McpStartError`, `SandboxUnavailable` or `TimeoutError`."""
        started = time.monotonic()
        place = None
        if isinstance(self.spec, StdioServer):
            runner = self.runner_for()
            place = (runner, await asyncio.to_thread(scratch_workspace, runner, self.name))
        connection = self._connection(repr(self.name), place)
        timed_out = False
        try:
            async with asyncio.timeout(self.spec.startup_timeout):
                await connection.ensure_started(self.spec.startup_timeout)
                tools: list[types.Tool] = []
                cursor: str | None = None
                while True:
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await connection.session().list_tools(params=params)
                    tools += page.tools
                    cursor = page.nextCursor
                    if not cursor:
                        break
        except TimeoutError:
            timed_out = True
            raise McpStartError(
                f"it did not start and list its tools within {self.spec.startup_timeout:g} s"
                + (f"; its stderr: {connection.instance.stderr.text(400)}" if connection.instance.stderr.text() else "")
            ) from None
        finally:
            # One that did not answer in time is killed: asked to stop, it would not be heard
            # (it is stuck before reading `stop`) and would cost 5 s more of the server's start.
            await connection.stop(kill=timed_out)
            if place is not None:
                await asyncio.to_thread(remove_workspace, *place)
        return tools, time.monotonic() - started


class McpTool:
    """One tool of an MCP server, registered as `SERVER__TOOL`."""

    def __init__(self, server: McpServer, remote: types.Tool, name: str) -> None:
        self.server = server
        self.remote_name = remote.name
        self.name = name
        self.toolset = server.name  # `enabled_tools: ["SERVER"]` enables all of a server's tools
        title = remote.title or (remote.annotations.title if remote.annotations else None)
        self.description = (remote.description or title or "").strip() or (
            f"The {remote.name} tool of the MCP server {server.name}."
        )
        schema = dict(remote.inputSchema or {})
        schema.setdefault("type", "object")
        self.parameters: dict[str, Any] = schema

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return await self.server.call(self.remote_name, arguments, context)

    async def aclose(self) -> None:
        await self.server.aclose()


def tool_name(server: str, remote: str) -> str:
    """`SERVER__TOOL`, with characters a tool name may not have replaced by `_` and, past 64
    characters, cut with a hash of the original name (so two long names stay apart)."""
    name = f"{server}__{_TOOL_CHARS.sub('_', remote)}"
    if len(name) <= MAX_TOOL_NAME:
        return name
    digest = hashlib.sha256(remote.encode()).hexdigest()[:8]
    return f"{name[: MAX_TOOL_NAME - 9]}_{digest}"


def scratch_workspace(runner: SandboxRunner, name: str) -> Path:
    """A workspace for an instance no session owns (discovery, a shared server), owned by a
    sandbox uid of its own like a session's."""
    base = runner.config.state_dir / "mcp"
    try:
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o711)
    except OSError:
        base = Path(tempfile.gettempdir())
    workspace = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    runner.prepare_workspace(workspace)
    return workspace


def remove_workspace(runner: SandboxRunner, workspace: Path) -> None:
    runner.close_workspace(workspace)  # kills what its uid still runs, frees the uid
    with contextlib.suppress(OSError):
        shutil.rmtree(workspace)
