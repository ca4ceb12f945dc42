"""One persistent Jupyter kernel per session, running inside the bubblewrap sandbox.

Why it is built this way (see notes/sandbox.md):
- `transport="ipc"`: Unix sockets in a private runtime directory cross `--unshare-net`, TCP does not.
  That directory is bound at the *same path* inside, because the socket paths in the connection
  file must mean the same thing on both sides.
- `interrupt_mode="message"`: a SIGINT to the process jupyter_client launched would hit bwrap's
  process group, not the kernel; an `interrupt_request` makes ipykernel signal itself.
- The interpreter must be visible inside the sandbox: the tool environment's (runtime/toolenv.py:
  a virtualenv of /usr/bin/python3 with the pinned scientific stack, bound read-only at its own
  path) when the runner has one, else Debian's /usr/bin/python3 (with `python3-ipykernel`). The
  server's own virtualenv is never used: it is not visible inside.
- The kernel runs as its session's own uid (`SandboxRunner.uid_for`), so its processes and
  threads count against that session's RLIMIT_NPROC only.
- A reaper thread in the kernel (`BOOT`) waits for children that have been zombies for over a
  second and that no live `subprocess.Popen` or `multiprocessing` process tracks: code that
  forks without waiting would otherwise pile zombies up against the process limit. (Code that
  forks and calls `os.waitpid` on the pid more than a second after the child exits gets
  ChildProcessError.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from plugins.python_tool.messages import Execution, collect
from runtime.sandbox import SandboxRunner, reap_orphans

log = logging.getLogger(__name__)

DEFAULT_INTERPRETER = "/usr/bin/python3"
INTERPRETER_ENV = "TOOLSTUDIO_KERNEL_PYTHON"  # operator override without code changes
LOST_STATE = "all variables, imports and definitions from earlier calls are gone"
AUTOGROUP_WATCH = 30.0  # seconds a booting kernel's new processes are watched (see _hold_autogroup_nice)

# `python -c BOOT -f CONNECTION_FILE ...`: start the zombie reaper, then do what
# `python -m ipykernel_launcher` does. Nothing lands in the user's namespace.
BOOT = """
import sys, threading

def _reap_untracked_zombies():
    import gc, os, time
    seen = set()
    while True:
        time.sleep(1.0)
        try:
            zombies = set()
            for task in os.listdir('/proc/self/task'):
                try:
                    with open(f'/proc/self/task/{task}/children') as f:
                        children = f.read().split()
                except OSError:
                    continue
                for child in children:
                    try:
                        with open(f'/proc/{child}/stat') as f:
                            if f.read().rpartition(')')[2].split()[0] == 'Z':
                                zombies.add(int(child))
                    except (OSError, IndexError):
                        continue
            old, seen = zombies & seen, zombies
            if not old:
                continue
            tracked = set()
            sp = sys.modules.get('subprocess')
            if sp is not None:
                tracked.update(o.pid for o in gc.get_objects() if isinstance(o, sp.Popen) and o.returncode is None)
            mp = sys.modules.get('multiprocessing.process')
            for proc in list(getattr(mp, '_children', ())):
                popen = getattr(proc, '_popen', None)
                if popen is not None and popen.returncode is None:
                    tracked.add(popen.pid)
            for pid in old - tracked:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        except Exception:
            pass

threading.Thread(target=_reap_untracked_zombies, name='toolstudio-reaper', daemon=True).start()
del _reap_untracked_zombies
if sys.path and sys.path[0] == '':
    del sys.path[0]
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


class KernelStartError(RuntimeError):
    """The kernel did not come up; the message says why and what the operator can do."""


class SandboxedKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernel command is wrapped in the sandbox command line."""

    def __init__(self, *, prefix: Sequence[str], owner: tuple[int, int] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sandbox_prefix = list(prefix)
        self._owner = owner

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return [*self._sandbox_prefix, *super().format_kernel_cmd(extra_arguments)]

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        if self._owner is not None:  # written 0600 by root; the kernel runs as the sandbox uid
            os.chown(self.connection_file, *self._owner)


class SessionKernel:
    """A session's kernel: started on first use, restarted when it dies, shut down with the session."""

    def __init__(
        self,
        runner: SandboxRunner,
        workspace: Path,
        *,
        interpreter: str | None = None,
        ro_binds: Sequence[tuple[Path, str]] = (),
        startup_timeout: float = 30.0,
        interrupt_grace: float = 5.0,
        nice: int = 0,
    ) -> None:
        """`nice` > 0 starts the kernel's processes at that niceness (a kernel started ahead, so
        its boot does not take CPU from decoding); `renice` sets it back once it is needed."""
        self.runner = runner
        self.workspace = workspace
        # An explicit interpreter wins, then the operator's variable, then the tool environment.
        self.interpreter = interpreter or os.environ.get(INTERPRETER_ENV) or runner.tool_python or DEFAULT_INTERPRETER
        self.ro_binds = list(ro_binds)
        self.startup_timeout = startup_timeout
        self.interrupt_grace = interrupt_grace
        self._km: SandboxedKernelManager | None = None
        self._kc: Any = None  # AsyncKernelClient (untyped in jupyter_client)
        self._runtime_dir: Path | None = None
        self._lock = asyncio.Lock()  # one execution at a time; parallel tool calls queue here
        self.start_seconds: float | None = None  # last start + ready time, for logs and metrics
        self.ready_at: float | None = None  # unix time the kernel last became ready
        self.nice = nice

    @property
    def started(self) -> bool:
        return self._km is not None

    @property
    def runtime_dir(self) -> Path | None:
        """The running kernel's private directory (connection file, sockets, log), if any."""
        return self._runtime_dir

    async def start(self) -> None:
        """Start the kernel now unless it runs (else the first `execute` starts it).
        Raises KernelStartError."""
        async with self._lock:
            if self._km is None:
                await self._start()

    def renice(self, value: int = 0) -> int:
        """Set the niceness of every thread of the kernel's processes (the sandbox launcher
        and all it started) to `value`; returns how many threads were changed. Lowering it
        needs root: elsewhere nothing changes (0). Blocking (reads /proc)."""
        km = self._km
        process = getattr(getattr(km, "provisioner", None), "process", None)
        if process is None or os.geteuid() != 0:
            return 0
        changed = 0
        pids = [process.pid, *_descendants(process.pid)]
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
                with contextlib.suppress(OSError):  # gone meanwhile
                    os.setpriority(os.PRIO_PROCESS, int(task.name), value)
                    changed += 1
        _set_autogroup_nice(pids, value)
        self.nice = value  # a restart after a crash starts at normal priority
        return changed

    async def execute(self, code: str, timeout: float) -> Execution:
        """Run `code`; on timeout interrupt (state kept); on a crash restart (state lost)."""
        async with self._lock:
            notes: list[str] = []
            if self._km is not None and not await self._km.is_alive():
                await self._stop()
                notes.append(f"The Python kernel had died since the last call and was restarted: {LOST_STATE}.")
            if self._km is None:
                await self._start()
            assert self._km is not None
            try:
                result = await collect(self._km, self._kc, code, timeout, self.interrupt_grace)
            except asyncio.CancelledError:  # the request went away: do not leave the cell running
                with contextlib.suppress(Exception):
                    await self._km.interrupt_kernel()
                raise
            if result.error_name is not None or result.kernel_died:
                self._explain_limit(result)
            if result.timed_out or result.kernel_died:  # the log says why the call ended badly
                what = "the kernel died" if result.kernel_died else f"timed out after {timeout:g} s"
                stuck = " and ignored the interrupt (killed)" if result.stuck else ""
                log.warning("python in %s: %s%s", self.workspace.name, what, stuck)
            if result.kernel_died or result.stuck:
                await self._stop()
                with contextlib.suppress(KernelStartError):  # the next call retries and reports
                    await self._start()
                cause = "died (crashed or exited)" if result.kernel_died else "did not stop when interrupted"
                notes.append(f"The Python kernel {cause} and was restarted: {LOST_STATE}.")
            result.notes[:0] = notes
            return result

    def _explain_limit(self, result: Execution) -> None:
        """Add a note (and a log line) when a sandbox limit is the likely cause of the failure."""
        text = result.output.text()
        if result.kernel_died and self._runtime_dir is not None:
            text += _tail(self._runtime_dir / "kernel.log")
        reason = self.runner.explain(text, self.workspace, limits=self.runner.config.kernel_limits)
        if reason is not None:
            result.notes.append(reason[0].upper() + reason[1:] + ".")
            log.warning("python in %s: %s", self.workspace.name, reason)

    async def shutdown(self) -> None:
        async with self._lock:
            await self._stop()

    def _kernel_spec(self) -> KernelSpec:
        argv = [self.interpreter, "-c", BOOT, "-f", "{connection_file}"]
        # No history database: nothing to write, one thread fewer, faster start.
        argv.append("--HistoryManager.enabled=False")
        return KernelSpec(argv=argv, display_name="toolstudio", language="python", interrupt_mode="message")

    def _manager(self, runtime_dir: Path) -> tuple[SandboxedKernelManager, dict[str, str]]:
        """The kernel manager for a kernel living in `runtime_dir`, and the environment to launch it with."""
        runner = self.runner
        owner: tuple[int, int] | None = None
        if runner.sandboxed:
            if os.geteuid() == 0:
                owner = runner.uid_for(self.workspace)
            env = {"MPLCONFIGDIR": "/tmp/matplotlib", "IPYTHONDIR": "/tmp/ipython", "PYTHONUNBUFFERED": "1"}
            prefix = runner.argv(
                [],
                self.workspace,
                extra_binds=[(runtime_dir, str(runtime_dir))],
                ro_binds=self.ro_binds,
                env=env,
                limits=runner.config.kernel_limits,
            )
            launch_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # for setpriv/prlimit/bwrap; bwrap clears it
        else:
            prefix = runner.argv([], self.workspace, limits=runner.config.kernel_limits)
            private = {"MPLCONFIGDIR": str(runtime_dir / "mpl"), "IPYTHONDIR": str(runtime_dir / "ipy")}
            launch_env = runner.unsafe_env(self.workspace, private)
        if self.nice:  # inherited by every process the launcher starts
            prefix = ["nice", "-n", str(self.nice), *prefix]
        km = SandboxedKernelManager(
            prefix=prefix,
            owner=owner,
            transport="ipc",
            ip=str(runtime_dir / "zmq"),
            connection_file=str(runtime_dir / "kernel.json"),
        )
        km._kernel_spec = self._kernel_spec()  # ours, not one looked up in the host's kernelspecs
        return km, launch_env

    async def _start(self) -> None:
        self.runner.ensure_available()
        self.runner.prepare_workspace(self.workspace)
        await asyncio.to_thread(_purge_stale_runtime_dirs, self.runner.config.state_dir / "run")
        owner = self.runner.uid_for(self.workspace) if self.runner.sandboxed else None
        self._runtime_dir = runtime_dir = self.runner.make_private_dir("kernel-", owner)
        log_path = runtime_dir / "kernel.log"
        started = time.monotonic()
        try:
            km, launch_env = self._manager(runtime_dir)
        except BaseException:
            await self._stop()  # removes the runtime dir
            raise
        self._km = km
        try:
            # Sandboxed, bwrap puts the kernel in /workspace itself; the launcher on the host
            # stays out of the workspace, so that its mount can move (see SandboxRunner.adopt_workspace).
            cwd = "/" if self.runner.sandboxed else str(self.workspace)
            with log_path.open("ab") as kernel_log:  # the child keeps its own copy of the fd
                await km.start_kernel(
                    cwd=cwd,
                    env=launch_env,
                    stdin=subprocess.DEVNULL,
                    stdout=kernel_log,
                    stderr=kernel_log,
                )
            booted = threading.Event()
            if self.nice:
                process = getattr(getattr(km, "provisioner", None), "process", None)
                if process is not None:
                    threading.Thread(
                        target=_hold_autogroup_nice, args=(process.pid, self.nice, booted), daemon=True
                    ).start()
            self._kc = km.client()
            self._kc.start_channels()
            try:
                await self._kc.wait_for_ready(timeout=self.startup_timeout)
            finally:
                booted.set()
        except Exception as exc:
            detail = _tail(log_path)
            why = self._why_not_started(detail)  # before _stop: the count needs the live box
            await self._stop()
            log.warning("python kernel for %s did not start: %s", self.workspace.name, why)
            raise KernelStartError(
                f"The Python kernel failed to start ({type(exc).__name__}: {exc}): {why}.{detail}"
            ) from exc
        self.start_seconds = time.monotonic() - started
        self.ready_at = time.time()
        log.info("python kernel started for %s in %.2f s", self.workspace, self.start_seconds)

    def _why_not_started(self, kernel_log: str) -> str:
        """The likely cause of a failed start, from the kernel's log: a limit, or the interpreter."""
        limits = self.runner.config.kernel_limits
        if limit := self.runner.explain(kernel_log, self.workspace, file_limit=False, limits=limits):
            return limit
        missing = ("No module named", "execvp", "No such file or directory", "ModuleNotFoundError")
        if not kernel_log:
            return f"it did not answer within {self.startup_timeout:g} s and wrote nothing to its log"
        if any(sign in kernel_log for sign in missing):
            why = f"the interpreter {self.interpreter} is missing or lacks ipykernel"
            if self.runner.tool_env is None:  # the likely fix: build the tool environment
                why += f" ({self.runner.tool_env_problem}; or `apt-get install python3-ipykernel`)"
            return f"{why}; set {INTERPRETER_ENV} to use another interpreter"
        return "see the kernel log below"

    async def _stop(self) -> None:
        km, kc, runtime_dir = self._km, self._kc, self._runtime_dir
        self._km = self._kc = self._runtime_dir = None
        if kc is not None:
            with contextlib.suppress(Exception):
                kc.stop_channels()
        if km is not None:
            try:
                await km.shutdown_kernel(now=True)  # killpg of bwrap: its namespace dies with it
            except Exception:
                log.exception("kernel shutdown failed for %s", self.workspace)
        if runtime_dir is not None:
            await asyncio.to_thread(shutil.rmtree, runtime_dir, True)
        reap_orphans()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(1.0, reap_orphans)


@functools.cache  # once per directory and process: later ones are ours and cleaned up by _stop
def _purge_stale_runtime_dirs(base: Path) -> None:
    """Remove kernel directories a crashed server left behind (no live process names them)."""
    stale = [d for d in base.glob("kernel-*") if time.time() - _mtime(d) > 60]
    if not stale:
        return
    cmdlines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            cmdlines.append(cmdline.read_bytes().decode(errors="replace"))
    live = "\n".join(cmdlines)
    for directory in stale:
        if str(directory) not in live:  # a running kernel's bwrap has it in its --bind arguments
            log.info("removing stale kernel directory %s", directory)
            shutil.rmtree(directory, ignore_errors=True)


def _set_autogroup_nice(pids: Sequence[int], value: int) -> None:
    """Give the scheduler autogroups of `pids` niceness `value` (Linux `/proc/PID/autogroup`).

    bwrap's `--new-session` (setsid) puts a sandbox in an autogroup of its own, and where
    autogroups are on (`kernel.sched_autogroup_enabled`, the default of most distributions)
    the CPU is shared fairly between autogroups first: a process's own niceness then only
    ranks it within its group, and a kernel booting at niceness 19 took half of a 2-core
    machine from decoding (an agent turn's first prefill: 260-300 ms instead of about 100).
    Without autogroups, or without permission (another uid, when not root), nothing changes."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(value))


def _hold_autogroup_nice(root: int, value: int, done: threading.Event) -> None:
    """While a kernel boots (until `done`, at most AUTOGROUP_WATCH seconds), give every process
    that appears below `root` the autogroup niceness `value`: the sandbox's session is made by
    bwrap after launch, so it cannot be set up front."""
    seen: set[int] = set()
    deadline = time.monotonic() + AUTOGROUP_WATCH
    while not done.is_set() and time.monotonic() < deadline:
        new = [pid for pid in _descendants(root) if pid not in seen]
        _set_autogroup_nice(new, value)
        seen.update(new)
        done.wait(0.005)


def _descendants(root: int) -> list[int]:
    """Pids of every live process below `root`, from /proc (children files of every task)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        text = path.read_bytes()[-limit:].decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
    return f"\nKernel log:\n{text}" if text else ""
