"""The built-in `python` tool: a persistent, sandboxed Jupyter kernel per session.

A worked example of a tool plugin: `register_tools` hands the host one `PythonTool`. The kernel
starts on a session's first call, lives in `session.state["python"]` and is shut down by the
session's cleanup. With a kernel pool (`PythonTool.kernel_pool`, plugins/python_tool/pool.py) a
new session is instead handed a kernel already running in a sandbox made for it. Which sandbox it runs in: `session.state["sandbox"]` if the host put a
`SandboxRunner` there (so operator settings such as --unsafe-no-sandbox apply), else a default
`SandboxRunner()` built once per tool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from plugins.python_tool.kernel import KernelStartError, SessionKernel
from plugins.python_tool.pool import STATE_KEY, KernelPool
from runtime.hookspecs import hookimpl
from runtime.sandbox import SESSION_STATE_KEY, SandboxConfig, SandboxRunner, SandboxUnavailable, claim_box
from runtime.tools import Tool, ToolContext, ToolOutput

log = logging.getLogger(__name__)


DESCRIPTION = (
    "Run Python code in a persistent Jupyter kernel. Variables, imports and definitions persist "
    "between calls in the same session. The working directory is /workspace, shared with the bash "
    "tool. There is no network access. Printed output, the value of the last expression and "
    "tracebacks are returned; images you display (e.g. IPython.display.Image or matplotlib "
    "figures) are attached."
)


class PythonTool:
    name = "python"
    description = DESCRIPTION
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "Python source to execute (several lines allowed)."},
            "timeout": {
                "type": "number",
                "minimum": 1,
                "maximum": 600,
                "description": "Seconds before execution is interrupted (default 30). State is kept.",
            },
        },
        "required": ["code"],
    }

    def __init__(
        self,
        runner: SandboxRunner | None = None,
        *,
        interpreter: str | None = None,
        ro_binds: Sequence[tuple[Path, str]] = (),
    ) -> None:
        """`interpreter` runs the kernel (default /usr/bin/python3 or $TOOLSTUDIO_KERNEL_PYTHON);
        if it lives outside /usr, bind its directories read-only with `ro_binds`."""
        self._runner = runner
        self.interpreter = interpreter
        self.ro_binds = list(ro_binds)

    def kernel_pool(self, runner: SandboxRunner, root: Path, size: int) -> KernelPool:
        """A pool of `size` kernels started ahead for new sessions (the session manager's
        `spares`), with this tool's interpreter and binds, in `runner`'s sandboxes; `root` is
        the pool's directory, on the filesystem of the session workspaces."""
        return KernelPool(runner, root, size, interpreter=self.interpreter, ro_binds=self.ro_binds)

    def runner_for(self, state: dict[str, Any]) -> SandboxRunner:
        shared = state.get(SESSION_STATE_KEY)
        if isinstance(shared, SandboxRunner):
            return shared
        if self._runner is None:
            self._runner = SandboxRunner(SandboxConfig())
        return self._runner

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        session = context.session
        try:
            runner = self.runner_for(session.state)
            runner.ensure_available()
            claim_box(runner, session)
            kernel = session.state.get(STATE_KEY)
            if not isinstance(kernel, SessionKernel):
                kernel = SessionKernel(runner, session.workspace, interpreter=self.interpreter, ro_binds=self.ro_binds)
                session.state[STATE_KEY] = kernel
                session.add_cleanup(kernel.shutdown)
            requested = arguments.get("timeout") or runner.config.default_timeout
            timeout = max(1.0, min(float(requested), runner.config.max_timeout, context.seconds_left))
            result = await kernel.execute(str(arguments["code"]), timeout)
        except (SandboxUnavailable, KernelStartError) as exc:
            return ToolOutput(str(exc), is_error=True)
        except Exception as exc:  # a tool reports, it never takes the request down
            log.exception("python tool failed")
            return ToolOutput(f"The python tool failed: {type(exc).__name__}: {exc}", is_error=True)
        # A cell that raised (the traceback is in the text), timed out or crashed the kernel is
        # an error result, as a failed cell is in a notebook; what it printed before is kept.
        return ToolOutput(result.text(), is_error=result.failed, attachments=result.attachments)


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    register(PythonTool())
