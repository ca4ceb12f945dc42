"""Run untrusted commands in a bubblewrap sandbox (see notes/sandbox.md for the measured facts).

A sandboxed command is launched as

    [unshare --mount sh -c 'mount --bind WS HOP ...']   only when WS is not traversable by the uid
    setpriv --reuid U --regid G --clear-groups          drop root: bwrap itself runs unprivileged
    prlimit --cpu --as --fsize --nproc                   rlimits without preexec_fn (not thread-safe)
    bwrap ...read-only system, /workspace writable, no network, private pid namespace...

in its own process group, which is SIGKILLed at the wall-clock timeout. The bash tool runs
commands through `SandboxRunner.run`; the Python tool prefixes `SandboxRunner.argv` to its
Jupyter kernel command.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import glob
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SANDBOX_USER = "toolstudio-sandbox"
# Where the host may put a shared SandboxRunner in `Session.state`; tools fall back to their own.
SESSION_STATE_KEY = "sandbox"
INSIDE_WORKSPACE = "/workspace"
_MiB = 1024 * 1024
_GiB = 1024 * _MiB
_PR_SET_CHILD_SUBREAPER = 36


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces on this host."""


@dataclass(frozen=True, slots=True)
class Limits:
    """rlimits for everything inside one sandbox. None leaves the limit as inherited."""

    cpu_seconds: int | None = 60
    address_space_bytes: int | None = 2 * _GiB
    file_size_bytes: int | None = 256 * _MiB
    # RLIMIT_NPROC counts every process *and thread* of the sandbox uid, all sessions together:
    # it must leave room for several idle kernels (~10 threads each) while still stopping a fork bomb.
    nproc: int | None = 512

    def prlimit_args(self) -> list[str]:
        pairs = [("--cpu", self.cpu_seconds), ("--as", self.address_space_bytes)]
        pairs += [("--fsize", self.file_size_bytes), ("--nproc", self.nproc)]
        return [f"{flag}={value}" for flag, value in pairs if value is not None]


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    unsafe_no_sandbox: bool = False  # operator opt-out: commands run on the host, unisolated
    user: str = SANDBOX_USER  # created with `useradd --system` when missing (else `nobody`)
    uid: int | None = None  # explicit uid/gid win over `user`
    gid: int | None = None
    limits: Limits = field(default_factory=Limits)  # for bash commands
    # A persistent kernel accumulates CPU time over its whole life, so it gets no CPU limit
    # (the per-call timeout interrupts it instead) and more address space for numeric libraries.
    kernel_limits: Limits = field(default_factory=lambda: Limits(cpu_seconds=None, address_space_bytes=8 * _GiB))
    tmp_size_bytes: int = 256 * _MiB  # the sandbox's /tmp and /dev/shm are RAM: bound them
    output_cap_bytes: int = 64 * 1024  # per stream; the middle is cut out beyond this
    default_timeout: float = 30.0
    max_timeout: float = 600.0
    bwrap: str = "bwrap"
    state_dir: Path = Path("/run/toolstudio-sandbox")  # mount hop and kernel runtime dirs


@dataclass(frozen=True, slots=True)
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None  # bwrap reports 128+N for a signal; negative if the sandbox was killed
    timed_out: bool
    truncated: bool
    duration: float


def bwrap_available(bwrap: str = "bwrap") -> bool:
    return shutil.which(bwrap) is not None


def resolve_sandbox_user(name: str = SANDBOX_USER) -> tuple[int, int]:
    """(uid, gid) to run sandboxes as; creates the system user `name` when running as root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()  # already unprivileged: cannot (and need not) switch
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd += ["--shell", "/usr/sbin/nologin", name]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            if done.returncode != 0:
                log.warning("useradd %s failed (%s); falling back to nobody", name, done.stderr.strip())
            entry = pwd.getpwnam(name)
        except (OSError, subprocess.SubprocessError, KeyError):
            entry = pwd.getpwnam("nobody")  # shared with other daemons: NPROC is shared too
    return entry.pw_uid, entry.pw_gid


@functools.cache  # once per process
def _enable_subreaper() -> None:
    """Make orphaned sandbox inits our children, so they can be reaped even when we are not PID 1."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.debug("PR_SET_CHILD_SUBREAPER failed: errno %d", ctypes.get_errno())


def reap_orphans() -> int:
    """Reap zombie children that are the pid-1 of a finished sandbox; returns how many.

    bwrap's outer process exits without waiting for its namespace's init, which is then
    reparented to us (the subreaper). Only zombies living in a *nested* pid namespace are
    reaped: any other child belongs to asyncio or subprocess, which must see its exit status.
    """
    reaped = 0
    for children in glob.glob(f"/proc/{os.getpid()}/task/*/children"):  # every thread's children
        for pid in _read(children).split():
            status = _read(f"/proc/{pid}/status")
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("State", "").startswith("Z") and len(fields.get("NSpid", "").split()) > 1:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(pid), os.WNOHANG)
                    reaped += 1
    return reaped


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:  # the process is gone already
        return ""


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid` can reach `path` (bwrap resolves bind sources with the caller's permissions)."""
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except OSError:
            return False
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class OutputBuffer:
    """Keeps the first and last `cap // 2` bytes of a stream; the middle is counted, not kept."""

    def __init__(self, cap: int) -> None:
        self.half = max(1, cap // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def write(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.half:
            excess = len(self.tail) - self.half
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        if self.dropped:
            return f"{head}\n[... output truncated: {self.dropped} bytes omitted ...]\n{tail}"
        return head + tail


async def _pump(stream: asyncio.StreamReader | None, sink: OutputBuffer) -> None:
    # Keep draining after the cap: a child blocked on a full pipe would never exit.
    while stream is not None and (chunk := await stream.read(65536)):
        sink.write(chunk)


class SandboxRunner:
    """Builds sandbox command lines and runs commands in them. One instance serves all sessions."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._root = os.geteuid() == 0
        if self.config.uid is not None:
            self.uid, self.gid = self.config.uid, self.config.uid if self.config.gid is None else self.config.gid
        else:
            self.uid, self.gid = resolve_sandbox_user(self.config.user)
        self._probed: str | None = None  # None: not probed yet; "" = works; else bwrap's complaint
        self._hop_ok = False  # whether root may `unshare --mount` (see argv)
        if self.config.unsafe_no_sandbox:
            msg = "!!! SANDBOX DISABLED (--unsafe-no-sandbox): tools run on this host as uid %d, unisolated !!!"
            log.warning(msg, os.getuid())
        _enable_subreaper()

    @property
    def sandboxed(self) -> bool:
        return not self.config.unsafe_no_sandbox

    def ensure_available(self) -> None:
        """Raise SandboxUnavailable unless bwrap can actually build a sandbox here (probed once)."""
        if not self.sandboxed:
            return
        if self._probed is None:
            if not bwrap_available(self.config.bwrap):
                self._probed = f"bubblewrap ({self.config.bwrap}) is not installed"
            else:
                probe = [*self._privilege_drop(), self.config.bwrap, "--ro-bind", "/", "/", "--unshare-all", "true"]
                self._probed = _probe(probe)
                self._hop_ok = self._root and not _probe(["unshare", "--mount", "--", "true"])
        if self._probed:
            raise SandboxUnavailable(
                f"The tool sandbox is unavailable: {self._probed}. Install bubblewrap "
                "(`apt-get install bubblewrap`) and allow unprivileged user namespaces, or start the "
                "server with --unsafe-no-sandbox to run tools unisolated on the host."
            )

    def prepare_workspace(self, workspace: Path) -> None:
        """Create `workspace` owned by the sandbox uid (the only path a sandbox may write)."""
        workspace.mkdir(parents=True, exist_ok=True)
        if self._root and self.sandboxed:
            os.chown(workspace, self.uid, self.gid)
            workspace.chmod(0o700)

    def make_private_dir(self, prefix: str) -> Path:
        """A fresh directory owned by, and reachable for, the sandbox uid: for a kernel's connection
        file and ipc sockets, which must have the same path inside the sandbox and outside."""
        base = self.config.state_dir / "run"
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o755)
            if not _traversable_by(base, self.uid, self.gid):
                raise PermissionError(base)
        except OSError:
            base = Path("/tmp")  # sticky and world-traversable everywhere
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        if self._root and self.sandboxed:
            os.chown(path, self.uid, self.gid)
        return path

    def _privilege_drop(self) -> list[str]:
        if not self._root:
            return []
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def argv(
        self,
        inner_argv: Sequence[str],
        workspace: Path,
        *,
        extra_binds: Sequence[tuple[Path, str]] = (),
        ro_binds: Sequence[tuple[Path, str]] = (),
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
    ) -> list[str]:
        """The full command line that runs `inner_argv` sandboxed, cwd /workspace.

        `extra_binds` are (host path, inside path) pairs mounted writable, `ro_binds` read-only;
        `env` is the complete environment besides PATH/HOME/LANG. In unsafe mode the command runs
        directly (cwd must then be set by the caller to `workspace`).
        """
        prlimit = ["prlimit", *(limits or self.config.limits).prlimit_args(), "--"]
        if not self.sandboxed:
            return [*prlimit, *inner_argv]
        self.ensure_available()  # probed once; also learns whether the mount hop is allowed
        hop: list[str] = []
        source = workspace
        if self._root and not _traversable_by(workspace, self.uid, self.gid):
            # bwrap (0.8) resolves bind sources as the unprivileged uid, and the default data dir
            # is under /root: bind the workspace at a traversable path in a private mount namespace.
            if not self._hop_ok:
                raise SandboxUnavailable(
                    f"The sandbox user (uid {self.uid}) cannot reach the workspace {workspace}, and "
                    "`unshare --mount` is not permitted here: put the data directory on a path every "
                    "user can traverse (e.g. TOOLSTUDIO_HOME=/var/lib/toolstudio)."
                )
            source = self.config.state_dir / "workspace"
            source.mkdir(parents=True, exist_ok=True, mode=0o755)
            script = 'mount --bind -- "$1" "$2" && shift 2 && exec "$@"'
            hop = ["unshare", "--mount", "--", "/bin/sh", "-c", script, "sh", str(workspace), str(source)]
        box = [self.config.bwrap, "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "sbin"):
            box += ["--symlink", f"usr/{name}", f"/{name}"]
        box += ["--ro-bind", "/etc", "/etc", "--size", str(self.config.tmp_size_bytes), "--tmpfs", "/tmp"]
        # Binds come after --tmpfs /tmp: a later tmpfs would hide a bind below it.
        box += ["--bind", str(source), INSIDE_WORKSPACE]
        for host, inside in extra_binds:
            box += ["--bind", str(host), inside]
        for host, inside in ro_binds:
            box += ["--ro-bind", str(host), inside]
        box += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.config.tmp_size_bytes), "--tmpfs", "/dev/shm"]
        # bwrap's root and /dev are tmpfs in RAM: make them read-only, the mounts above stay as set.
        box += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", INSIDE_WORKSPACE]
        # --disable-userns: no nested user namespaces inside, so the kernel's user-namespace
        # attack surface stays closed to sandboxed code (`unshare -r` fails).
        box += ["--unshare-all", "--unshare-user", "--disable-userns"]
        box += ["--hostname", "sandbox", "--die-with-parent", "--new-session"]
        box += ["--cap-drop", "ALL", "--clearenv"]
        base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": INSIDE_WORKSPACE, "LANG": "C.UTF-8"}
        for key, value in {**base_env, **(env or {})}.items():
            box += ["--setenv", key, value]
        return [*hop, *self._privilege_drop(), *prlimit, *box, "--", *inner_argv]

    def unsafe_env(self, workspace: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for unsafe-mode children: minimal, like inside the sandbox."""
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workspace), "LANG": "C.UTF-8"}
        return {**base, **(env or {})}

    async def run(
        self,
        command: str,
        workspace: Path,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> RunResult:
        """Run `bash -c command` sandboxed in `workspace`; never raises for the command's own failure."""
        reap_orphans()
        timeout = min(timeout or self.config.default_timeout, self.config.max_timeout)
        self.prepare_workspace(workspace)
        argv = self.argv(["bash", "-c", command], workspace)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(workspace),
            env=self.unsafe_env(workspace) if not self.sandboxed else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,  # its own process group, killed as a whole at the timeout
        )
        out, err = OutputBuffer(self.config.output_cap_bytes), OutputBuffer(self.config.output_cap_bytes)
        pumps = [asyncio.ensure_future(_pump(proc.stdout, out)), asyncio.ensure_future(_pump(proc.stderr, err))]
        if stdin is not None:
            pumps.append(asyncio.ensure_future(_feed(proc, stdin)))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: never leave a sandbox behind
                _kill_group(proc.pid)
                for task in pumps:
                    task.cancel()
        # Pipes close when the sandbox's pid namespace dies; bound the wait anyway.
        _, pending = await asyncio.wait(pumps, timeout=2.0)
        for task in pending:
            task.cancel()
        duration = time.monotonic() - started
        reap_orphans()
        asyncio.get_running_loop().call_later(1.0, reap_orphans)  # the inner init exits a moment later
        truncated = bool(out.dropped or err.dropped)
        return RunResult(out.text(), err.text(), proc.returncode, timed_out, truncated, duration)


def _probe(argv: list[str]) -> str:
    """'' if `argv` runs successfully, else why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{argv[0]} failed: {exc}"
    return "" if done.returncode == 0 else f"{argv[0]} failed: {done.stderr.strip()}"


async def _feed(proc: asyncio.subprocess.Process, data: str | bytes) -> None:
    if proc.stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data.encode() if isinstance(data, str) else data)
        await proc.stdin.drain()
        proc.stdin.close()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
