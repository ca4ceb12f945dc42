"""The built-in `bash` tool: one sandboxed `bash -c` per call, in the session's workspace.

Which sandbox it runs in: `session.state["sandbox"]` if the host put a `SandboxRunner` there (so
operator settings such as --unsafe-no-sandbox apply), else a default `SandboxRunner()` built once
per tool. Files persist in /workspace between calls (and are shared with the python tool);
processes do not: every process a call started is killed when it returns or times out.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from runtime.hookspecs import hookimpl
from runtime.sandbox import (
    SESSION_STATE_KEY,
    RunResult,
    SandboxConfig,
    SandboxRunner,
    SandboxUnavailable,
    claim_box,
)
from runtime.tools import Tool, ToolContext, ToolOutput

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Run a bash command in a sandboxed Linux shell. The working directory is /workspace, which "
    "persists between calls and is shared with the python tool; nothing else is writable. There "
    "is no network access. Returns stdout, stderr and the exit code. Background processes do not "
    "outlive the call."
)


class BashTool:
    name = "bash"
    description = DESCRIPTION
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command line, run with `bash -c`."},
            "timeout": {
                "type": "number",
                "minimum": 1,
                "maximum": 600,
                "description": "Seconds before the command and all its processes are killed (default 30).",
            },
        },
        "required": ["command"],
    }

    def __init__(self, runner: SandboxRunner | None = None) -> None:
        self._runner = runner

    def runner_for(self, state: dict[str, Any]) -> SandboxRunner:
        shared = state.get(SESSION_STATE_KEY)
        if isinstance(shared, SandboxRunner):
            return shared
        if self._runner is None:
            self._runner = SandboxRunner(SandboxConfig())
        return self._runner

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        try:
            runner = self.runner_for(context.session.state)
            requested = arguments.get("timeout") or runner.config.default_timeout
            timeout = max(1.0, min(float(requested), runner.config.max_timeout, context.seconds_left))
            claim_box(runner, context.session)
            result = await runner.run(str(arguments["command"]), context.session.workspace, timeout=timeout)
        except SandboxUnavailable as exc:
            return ToolOutput(str(exc), is_error=True)
        except Exception as exc:  # a tool reports, it never takes the request down
            log.exception("bash tool failed")
            return ToolOutput(f"The bash tool failed: {type(exc).__name__}: {exc}", is_error=True)
        if result.reason is not None:  # the log says why, whatever the model does with it
            log.warning("bash in session %s: %s", context.session.session_id, result.reason)
        if result.sandbox_failed:  # the command never ran: the tool failed, not the command
            why = f": {result.reason}" if result.reason else ""
            return ToolOutput(f"The bash sandbox could not start{why}.\n{result.stderr.strip()}", is_error=True)
        # A non-zero exit is the command's answer, not a failure of the tool.
        return ToolOutput(format_result(result, timeout))


def format_result(result: RunResult, timeout: float) -> str:
    parts: list[str] = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.timed_out:
        parts.append(f"[timed out after {timeout:g} s: the command and every process it started were killed]")
    else:
        parts.append(f"[exit code: {result.exit_code}{_signal_note(result.exit_code)}]")
        if result.reason is not None and not result.reason.startswith("killed by"):  # a limit: say which
            parts.append(f"[{result.reason}]")
    return "\n".join(parts)


def _signal_note(code: int | None) -> str:
    # bwrap reports a child killed by signal N as 128+N (e.g. 137 = SIGKILL, 152 = SIGXCPU).
    if code is None or not 128 < code < 128 + 65:
        return ""
    try:
        return f", which usually means killed by {signal.Signals(code - 128).name}"
    except ValueError:
        return ""


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    register(BashTool())
