"""Run untrusted commands in a bubblewrap sandbox (see notes/sandbox.md for the measured facts).

A sandboxed command is launched as

    [unshare --mount sh -c 'mount --bind WS HOP ...']   only when WS is not traversable by the uid
    setpriv --reuid U --regid G --clear-groups          drop root: bwrap itself runs unprivileged
    prlimit --cpu --as --fsize --nproc                   rlimits without preexec_fn (not thread-safe)
    bwrap ...read-only system, /workspace writable, no network, private pid namespace...

in its own process group, which is SIGKILLed at the wall-clock timeout. The bash tool runs
commands through `SandboxRunner.run`; the Python tool prefixes `SandboxRunner.argv` to its
Jupyter kernel command.

Per-session isolation (as root): every session gets its own uid/gid from a reserved range
(`SandboxConfig.uid_base`, `uid_count`), leased with an flock so two servers on one host never
share one. RLIMIT_NPROC is counted per uid, so a fork or thread bomb only exhausts its own
session's budget; closing the session SIGKILLs everything that uid still runs. Each session
created through `open_workspace` also gets its own disk: a sparse ext4 image next to the
workspace (`<workspace>.img`), loop-mounted on it, so writes stop at `session_disk_bytes`
(ENOSPC); live sessions together use at most max_sessions x that, and a closed session's image
is kept (unmounted) until the session is deleted or expires. Without root neither
is possible: sessions share one uid and only RLIMIT_FSIZE bounds single files; the runner
logs a warning naming what is missing. Memory and CPU stay per-process rlimits (RLIMIT_AS,
RLIMIT_CPU): this module does not use cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.childproc import WatchedChild
from runtime.toolenv import default_tool_env
from runtime.toolenv import problem as tool_env_problem

if TYPE_CHECKING:
    from runtime.sessions import Session

log = logging.getLogger(__name__)

SANDBOX_USER = "toolstudio-sandbox"
# Where the host may put a shared SandboxRunner in `Session.state`; tools fall back to their own.
SESSION_STATE_KEY = "sandbox"
_BOX_CLAIMED = "sandbox.box"  # session.state flag: the session closes its box when it closes
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
    # RLIMIT_NPROC counts every process *and thread* of the sandbox uid. With a uid per session
    # (as root) that is one session's kernel, its bash calls and whatever they start; without
    # isolation it is every session together.
    nproc: int | None = 256

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
    state_dir: Path = Path("/run/toolstudio-sandbox")  # mount hop, kernel runtime dirs, uid leases
    # A uid (and gid) per session, from [uid_base, uid_base + uid_count): only as root. False: every
    # session shares `uid`/`user` (the old behaviour; the isolation bench compares both).
    isolate_sessions: bool = True
    uid_base: int = 1_900_000_000  # far above login, system and subordinate (newuidmap) ranges
    uid_count: int = 65536
    # Per-session disk quota for workspaces made by `open_workspace` (as root, a loop-mounted ext4
    # image); None or 0: none. Single files are bounded by `limits.file_size_bytes` either way.
    session_disk_bytes: int | None = _GiB
    # The tool environment (runtime/toolenv.py): bound read-only at its own path, its bin/ first on
    # PATH, so the python tool's kernel and `python3` in bash run on it. One that is missing or
    # unusable is left out (`SandboxRunner.tool_env_problem` says why): system Python is used then.
    tool_env: Path | None = field(default_factory=default_tool_env)


@dataclass(frozen=True, slots=True)
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None  # bwrap reports 128+N for a signal; negative if the sandbox was killed
    timed_out: bool
    truncated: bool
    duration: float
    # Why the call ended badly, in words for the model and the log (a limit hit, a timeout, a
    # kill); None when nothing points at the sandbox. See `SandboxRunner.explain`.
    reason: str | None = None
    sandbox_failed: bool = False  # the sandbox itself could not start (the command never ran)


@dataclass(eq=False)
class SessionBox:
    """What one session's sandboxes share: a uid/gid of its own and, if made, its own disk."""

    workspace: Path
    uid: int
    gid: int
    own_uid: bool  # leased for this session alone (so everything it runs may be killed at close)
    lease_fd: int | None = None  # holds the flock on the uid's lease file
    image: Path | None = None  # the disk image, once mounted on `workspace`
    disk_bytes: int | None = None
    door: Path | None = None  # a bind of `workspace` its uid can reach (see SandboxRunner._door)
    lock: threading.Lock = field(default_factory=threading.Lock)


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


def reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid`/`gid` can traverse every directory down to `path`: bwrap (run as that uid)
    can bind it only then; otherwise the caller needs a mount hop, as `argv` does for workspaces."""
    return _traversable_by(path, uid, gid)


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
        self._boxes: dict[Path, SessionBox] = {}
        self._boxes_lock = threading.Lock()  # open/close run in worker threads
        self.per_session_uids = self.sandboxed and self._root and self.config.isolate_sessions
        self.disk_quota_problem: str | None = None  # why per-session disks are off, if they are
        # The tool environment every sandbox gets (None: none usable, and why not).
        self.tool_env, self.tool_env_problem = self._usable_tool_env()
        if self.config.unsafe_no_sandbox:
            msg = "!!! SANDBOX DISABLED (--unsafe-no-sandbox): tools run on this host as uid %d, unisolated !!!"
            log.warning(msg, os.getuid())
        else:
            self._warn_about_isolation()
        if self.per_session_uids:
            _sweep_doors(self.config.state_dir)
        _enable_subreaper()

    @property
    def disk_quota(self) -> int | None:
        """Bytes per session workspace if per-session disks are enforced here, else None."""
        return self.config.session_disk_bytes if self.disk_quota_problem is None else None

    def _warn_about_isolation(self) -> None:
        """Say once, at start-up, which per-session limits this host cannot enforce, and why."""
        if not self.config.isolate_sessions:
            self.disk_quota_problem = "session isolation is turned off"
            log.warning(
                "session isolation is off: all sessions run as uid %d and share one process limit "
                "(RLIMIT_NPROC %s) and the data directory's disk",
                self.uid,
                self.config.limits.nproc,
            )
            return
        if not self._root:
            self.disk_quota_problem = "not running as root (loop mounts need it)"
            log.warning(
                "per-session isolation unavailable (not running as root): every session runs as uid %d, "
                "so one session can use up the shared process limit (RLIMIT_NPROC %s) for all; the "
                "per-session disk quota is NOT enforced, only single files are bounded (RLIMIT_FSIZE %s bytes). "
                "Run as root for a uid and a disk image per session.",
                self.uid,
                self.config.limits.nproc,
                self.config.limits.file_size_bytes,
            )
            return
        if self.config.session_disk_bytes:
            self.disk_quota_problem = _probe_loop_disk(self.config.state_dir)
            if self.disk_quota_problem:
                log.warning(
                    "per-session disk quota NOT enforced (%s): single files are still bounded "
                    "(RLIMIT_FSIZE %s bytes), a session's total is not. Install e2fsprogs "
                    "(mkfs.ext4) and allow loop devices.",
                    self.disk_quota_problem,
                    self.config.limits.file_size_bytes,
                )
        else:
            self.disk_quota_problem = "no session disk size configured"
        log.info(
            "sandbox: a uid per session from %d, RLIMIT_NPROC %s per session, disk %s per session; "
            "memory and CPU are limited per process (RLIMIT_AS, RLIMIT_CPU), not per session",
            self.config.uid_base,
            self.config.limits.nproc,
            f"{self.disk_quota // _MiB} MiB" if self.disk_quota else "not bounded",
        )

    def _usable_tool_env(self) -> tuple[Path | None, str | None]:
        env = self.config.tool_env
        if env is None:
            return None, "no tool environment configured"
        env = Path(os.path.abspath(env))
        if why := tool_env_problem(env):
            return None, why
        if self._root and self.sandboxed:
            # bwrap resolves bind sources as the sandbox uid (a session's own one: "other" bits).
            uid = self.config.uid_base if self.per_session_uids else self.uid
            gid = self.config.uid_base if self.per_session_uids else self.gid
            if not _traversable_by(env / "bin", uid, gid):
                return None, (
                    f"the sandbox user (uid {uid}) cannot reach {env}: put the tool environment on a path "
                    "every user can traverse (e.g. /opt/toolstudio/tool-env)"
                )
        return env, None

    @property
    def tool_python(self) -> str | None:
        """The tool environment's interpreter, if there is a usable tool environment."""
        return str(self.tool_env / "bin" / "python") if self.tool_env is not None else None

    def _path(self, system: str) -> str:
        """PATH for sandboxed commands: the tool environment's bin/ first, then `system`."""
        return f"{self.tool_env}/bin:{system}" if self.tool_env is not None else system

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

    # -- per-session boxes -----------------------------------------------------------------

    def open_workspace(self, workspace: Path) -> None:
        """A new session's workspace (the session manager's on_create): its uid and, where
        enforced, its disk image. Blocking (mkfs + mount, about 30 ms); idempotent."""
        box = self.prepare_workspace(workspace)
        quota = self.disk_quota
        if not quota or box.image is not None or not box.own_uid:
            return
        with box.lock:
            if box.image is None:
                try:
                    box.image = _mount_disk(workspace, quota, box.uid, box.gid)
                    box.disk_bytes = quota
                    _close_door(box)  # it showed the directory under the disk
                except (OSError, subprocess.SubprocessError) as exc:
                    log.warning("session disk for %s not created (%s): its total size is not bounded", workspace, exc)

    def adopt_workspace(self, spare: Path, workspace: Path) -> None:
        """Make the box of `spare` (a workspace made by `open_workspace`, perhaps with sandboxes
        already running in it) the box of `workspace`: its uid lease, its disk and its files
        move over, and sandboxes bound to `spare` now write to `workspace`. `workspace` must be
        an empty directory (it is replaced), on the same filesystem as `spare`. A mounted disk
        moves as a bind mount of it, a plain directory by rename; both keep the bind sources of
        running sandboxes valid. Blocking, but only a few system calls (it runs on the event
        loop when a session is created). Raises OSError; then `spare` keeps its box."""
        with self._boxes_lock:
            box = self._boxes.get(spare)
            if box is None or workspace in self._boxes:
                raise FileExistsError(f"{spare} has no box, or {workspace} has one already")
        with box.lock:
            if box.image is not None:
                image = workspace.with_name(workspace.name + ".img")
                _bind_mount(spare, workspace)
                try:
                    os.rename(box.image, image)  # the loop device holds the file open, not its name
                except OSError:
                    _detach(workspace)
                    raise
                box.image = image
                _detach(spare)  # the disk stays mounted at `workspace` (and in running sandboxes)
                with contextlib.suppress(OSError):
                    spare.rmdir()
            else:
                workspace.rmdir()
                os.rename(spare, workspace)
            box.workspace = workspace
        with self._boxes_lock:
            del self._boxes[spare]
            self._boxes[workspace] = box

    def check_disk_budget(self, root: Path, max_sessions: int) -> None:
        """Warn when `max_sessions` full session disks would not fit on the disk holding `root`
        (the images are sparse: space is taken as sessions write, not reserved up front)."""
        quota = self.disk_quota
        if not quota:
            return
        probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
        free = shutil.disk_usage(probe).free
        if max_sessions * quota > free:
            log.warning(
                "%d sessions x %d MiB of session disk = %d MiB, but only %d MiB are free under %s: "
                "sessions may hit 'no space left' before their quota (lower --session-disk or --max-sessions)",
                max_sessions,
                quota // _MiB,
                max_sessions * quota // _MiB,
                free // _MiB,
                probe,
            )

    def close_workspace(self, workspace: Path, *, keep_files: bool = False) -> None:
        """The session is over (on_remove / on_close / a session cleanup): SIGKILL whatever its
        uid still runs, unmount its disk, free its uid, and delete the disk image unless
        `keep_files` (the session's files outlive it until deleted or expired). Blocking;
        idempotent. Also unmounts stale session disks under `workspace` (left by a crashed
        server)."""
        with self._boxes_lock:
            box = self._boxes.pop(workspace, None)
        if box is not None:
            with box.lock:
                _close_door(box)
                if box.own_uid:
                    _kill_uid(box.uid)
                if box.image is not None:
                    _unmount(workspace)
                    if not keep_files:
                        with contextlib.suppress(FileNotFoundError):
                            box.image.unlink()
                    box.image = None
                if box.lease_fd is not None:
                    os.close(box.lease_fd)  # the lease file stays: flock, not existence, is the lease
                    box.lease_fd = None
        if self._root:
            for mounted in _mounts_under(workspace):
                log.info("unmounting stale session disk %s", mounted)
                _unmount(mounted)
            if not keep_files:
                with contextlib.suppress(OSError):  # a crashed server's image (purged key dirs go whole)
                    workspace.with_name(workspace.name + ".img").unlink()

    def prepare_workspace(self, workspace: Path) -> SessionBox:
        """Create `workspace` owned by its session's uid (the only path a sandbox may write)."""
        box = self.box_for(workspace)
        workspace.mkdir(parents=True, exist_ok=True)
        if self._root and self.sandboxed:
            st = workspace.stat()
            if (st.st_uid, st.st_gid) != (box.uid, box.gid):
                _own_tree(workspace, box.uid, box.gid)  # a kept workspace may hold an earlier uid's files
            if st.st_mode & 0o777 != 0o700:
                workspace.chmod(0o700)
        return box

    def box_for(self, workspace: Path) -> SessionBox:
        """The session box of `workspace`, leasing a uid for it on first use."""
        with self._boxes_lock:
            box = self._boxes.get(workspace)
            if box is None:
                box = self._boxes[workspace] = self._new_box(workspace)
            return box

    def uid_for(self, workspace: Path) -> tuple[int, int]:
        """(uid, gid) the sandboxes of `workspace` run as."""
        box = self.box_for(workspace)
        return box.uid, box.gid

    def _new_box(self, workspace: Path) -> SessionBox:
        if not self.per_session_uids:
            return SessionBox(workspace, self.uid, self.gid, own_uid=False)
        leases = self.config.state_dir / "uids"
        with contextlib.suppress(OSError):
            leases.mkdir(parents=True, exist_ok=True, mode=0o700)
        taken = {b.uid for b in self._boxes.values()}
        count = self.config.uid_count
        # The same workspace asks for the same uid first, so a kept session that comes back
        # (after eviction or a restart) usually finds its files already its own.
        start = int.from_bytes(hashlib.sha256(str(workspace).encode()).digest()[:8], "big") % count
        for step in range(count):
            uid = self.config.uid_base + (start + step) % count
            if uid in taken:
                continue
            fd = _lease(leases / str(uid))
            if fd == -1:
                continue  # another server on this host holds it
            return SessionBox(workspace, uid, uid, own_uid=True, lease_fd=fd)
        raise SandboxUnavailable(f"all {count} sandbox uids from {self.config.uid_base} are in use")

    def make_private_dir(self, prefix: str, owner: tuple[int, int] | None = None) -> Path:
        """A fresh directory owned by, and reachable for, the sandbox uid (`owner`, default the
        shared one): for a kernel's connection file and ipc sockets, which must have the same
        path inside the sandbox and outside."""
        base = self.config.state_dir / "run"
        uid, gid = owner or (self.uid, self.gid)
        try:
            base.mkdir(parents=True, exist_ok=True, mode=0o755)
            if not _traversable_by(base, uid, gid):
                raise PermissionError(base)
        except OSError:
            base = Path("/tmp")  # sticky and world-traversable everywhere
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        if self._root and self.sandboxed:
            os.chown(path, uid, gid)
        return path

    def tasks_of(self, workspace: Path) -> int | None:
        """Processes + threads now running as the session's uid (what RLIMIT_NPROC counts); None
        where the uid is shared or not ours to count."""
        box = self._boxes.get(workspace)
        return _count_tasks(box.uid) if box is not None and box.own_uid else None

    def explain(
        self,
        text: str,
        workspace: Path,
        *,
        exit_code: int | None = None,
        file_limit: bool = True,
        limits: Limits | None = None,
    ) -> str | None:
        """Why a call failed, if a sandbox limit is the likely cause: text for the model and the log.

        `text` is what the call printed (stderr, a traceback, a kernel log); `exit_code` a bash
        exit status (128+N for signal N); `limits` the ones the call ran under (default: bash's).
        Returns None when nothing points at a limit.
        """
        limits = limits or self.config.limits
        lowered = text.lower()
        if "resource temporarily unavailable" in lowered or "can't start new thread" in lowered:
            tasks = self.tasks_of(workspace)
            now = f"; {tasks} running now" if tasks is not None else ""
            scope = "this session's" if self.per_session_uids else "the sandbox's shared (all sessions)"
            return (
                f"{scope} process/thread limit ({limits.nproc}{now}) was reached: a process or thread "
                "could not be created; end background processes or use fewer threads"
            )
        if "no space left on device" in lowered or "disk quota exceeded" in lowered:
            box = self._boxes.get(workspace)
            if box is not None and box.disk_bytes:
                size = f"{box.disk_bytes / _MiB:g} MiB"
                return f"this session's disk quota ({size}) is full: delete files under /workspace to free space"
            return "the disk is full: delete files under /workspace to free space"
        if exit_code == 128 + signal.SIGXFSZ or (file_limit and "file too large" in lowered):
            return f"a file reached the size limit ({limits.file_size_bytes} bytes per file)"
        if exit_code == 128 + signal.SIGXCPU:
            return f"the CPU time limit ({limits.cpu_seconds} s) was reached"
        if "memoryerror" in lowered or "cannot allocate memory" in lowered:
            return f"the memory limit ({limits.address_space_bytes} bytes of address space per process) was reached"
        if exit_code == 128 + signal.SIGKILL:
            return "killed by SIGKILL"
        return None

    def _privilege_drop(self, owner: tuple[int, int] | None = None) -> list[str]:
        if not self._root:
            return []
        uid, gid = owner or (self.uid, self.gid)
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]

    def argv(
        self,
        inner_argv: Sequence[str],
        workspace: Path,
        *,
        extra_binds: Sequence[tuple[Path, str]] = (),
        ro_binds: Sequence[tuple[Path, str]] = (),
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        share_net: bool = False,
    ) -> list[str]:
        """The full command line that runs `inner_argv` sandboxed, cwd /workspace.

        `extra_binds` are (host path, inside path) pairs mounted writable, `ro_binds` read-only;
        `env` is the complete environment besides PATH/HOME/LANG. `share_net` keeps the host's
        network (an MCP server the operator marked `"network": true`); everything else stays
        unshared. In unsafe mode the command runs directly (cwd must then be set by the caller
        to `workspace`).
        """
        prlimit = ["prlimit", *(limits or self.config.limits).prlimit_args(), "--"]
        if not self.sandboxed:
            return [*prlimit, *inner_argv]
        self.ensure_available()  # probed once; also learns whether the mount hop is allowed
        owner = self.uid_for(workspace)
        hop: list[str] = []
        source = workspace
        if self._root and not _traversable_by(workspace, *owner):
            # bwrap (0.8) resolves bind sources as the unprivileged uid, and the default data dir
            # is under /root: bind the workspace at a traversable path, once per session (a
            # door), else for each call in a private mount namespace (a hop: three more execs).
            door = self._door(self.box_for(workspace))
            if door is not None:
                source = door
            elif not self._hop_ok:
                raise SandboxUnavailable(
                    f"The sandbox user (uid {owner[0]}) cannot reach the workspace {workspace}, and "
                    "`unshare --mount` is not permitted here: put the data directory on a path every "
                    "user can traverse (e.g. TOOLSTUDIO_HOME=/var/lib/toolstudio)."
                )
            else:
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
        if self.tool_env is not None:  # only this directory: never the server's venv or data dir
            box += ["--ro-bind", str(self.tool_env), str(self.tool_env)]
        box += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.config.tmp_size_bytes), "--tmpfs", "/dev/shm"]
        # bwrap's root and /dev are tmpfs in RAM: make them read-only, the mounts above stay as set.
        box += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", INSIDE_WORKSPACE]
        # --disable-userns: no nested user namespaces inside, so the kernel's user-namespace
        # attack surface stays closed to sandboxed code (`unshare -r` fails).
        box += ["--unshare-all", "--unshare-user", "--disable-userns"]
        if share_net:
            box += ["--share-net"]
        box += ["--hostname", "sandbox", "--die-with-parent", "--new-session"]
        box += ["--cap-drop", "ALL", "--clearenv"]
        base_env = {"PATH": self._path("/usr/local/bin:/usr/bin:/bin"), "HOME": INSIDE_WORKSPACE, "LANG": "C.UTF-8"}
        for key, value in {**base_env, **(env or {})}.items():
            box += ["--setenv", key, value]
        return [*hop, *self._privilege_drop(owner), *prlimit, *box, "--", *inner_argv]

    def _door(self, box: SessionBox) -> Path | None:
        """A path the box's uid can reach that shows its workspace: a bind mount of it at
        `<state dir>/doors/<uid>` (as root), made on first use and removed with the box, so that
        no call needs the mount hop. Only for a uid leased to this box alone (the lease makes a
        door left by a crashed server ours to replace). None where it cannot be made."""
        if not box.own_uid:
            return None
        with box.lock:
            if box.door is None:
                doors = self.config.state_dir / "doors"
                door = doors / str(box.uid)
                try:
                    doors.mkdir(parents=True, exist_ok=True)
                    os.chmod(doors, 0o711)  # traversable, not listable
                    if not _traversable_by(doors, box.uid, box.gid):
                        return None
                    _detach_all(door)  # a crashed server's (the uid's lease is ours now)
                    door.mkdir(mode=0o700, exist_ok=True)
                    _bind_mount(box.workspace, door)
                except OSError as exc:
                    log.debug("no door for %s (%s): the mount hop is used", box.workspace, exc)
                    return None
                box.door = door
            return box.door

    def unsafe_env(self, workspace: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for unsafe-mode children: minimal, like inside the sandbox."""
        path = self._path(os.environ.get("PATH", "/usr/bin:/bin"))
        base = {"PATH": path, "HOME": str(workspace), "LANG": "C.UTF-8"}
        return {**base, **(env or {})}

    async def run(
        self,
        command: str,
        workspace: Path,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> RunResult:
        """Run `bash -c command` sandboxed in `workspace`; never raises for the command's own failure.

        The child is watched on the event loop itself (runtime/childproc.py: a pidfd and the
        pipes, no thread, no task), and orphans are reaped off the call's path: a short
        command costs little more than the sandbox's own start-up (bench/bench_tools.py)."""
        timeout = min(timeout or self.config.default_timeout, self.config.max_timeout)
        self.prepare_workspace(workspace)
        argv = self.argv(["bash", "-c", command], workspace)
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(workspace),
            env=self.unsafe_env(workspace) if not self.sandboxed else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            # Its own process group, killed as a whole at the timeout. Not a new session: setsid
            # made each call about 5 ms slower here (bench/bench_tools.py), and the command
            # inside gets a session of its own from bwrap's --new-session anyway.
            process_group=0,
        )
        loop = asyncio.get_running_loop()
        loop.call_soon(reap_orphans)  # earlier sandboxes' inits, while this one starts
        out, err = OutputBuffer(self.config.output_cap_bytes), OutputBuffer(self.config.output_cap_bytes)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        child = WatchedChild(loop, proc, out, err, data)
        timed_out = False
        try:
            if not await child.wait_exit(timeout):
                timed_out = True
                _kill_group(proc.pid)
                await child.wait_exit(10.0)
            # Pipes close when the sandbox's pid namespace dies; bound the wait anyway.
            await child.wait_output(2.0)
        finally:
            if proc.returncode is None:  # cancelled: never leave a sandbox behind
                _kill_group(proc.pid)
            child.close()
        duration = time.monotonic() - started
        loop.call_later(1.0, reap_orphans)  # this sandbox's init exits a moment later
        truncated = bool(out.dropped or err.dropped)
        stderr = err.text()
        reason = self.explain(stderr, workspace, exit_code=proc.returncode)  # `cmd; echo` exits 0 too
        if timed_out:
            reason = f"timed out after {timeout:g} s: the command and every process it started were killed"
        # bwrap's own complaints come before the command ever ran (exit 1, "bwrap: ..." on stderr).
        failed = self.sandboxed and proc.returncode == 1 and stderr.startswith("bwrap: ")
        return RunResult(out.text(), stderr, proc.returncode, timed_out, truncated, duration, reason, failed)


def _probe(argv: list[str]) -> str:
    """'' if `argv` runs successfully, else why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{argv[0]} failed: {exc}"
    return "" if done.returncode == 0 else f"{argv[0]} failed: {done.stderr.strip()}"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# -- per-session uids and disks --------------------------------------------------------------


def _lease(path: Path) -> int:
    """An fd holding an exclusive flock on `path` (the uid's lease), -1 if another process holds
    it. Where no lease file can be made (no writable state dir) the uid is taken unlocked (None
    would be ambiguous, so the caller gets a dup of /dev/null)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return -1
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return fd


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (a session's own uid, never a shared one).

    kill(-1) sent *as* that uid reaches exactly its processes, atomically in the kernel, so a
    fork bomb cannot outrun it; a /proc sweep is the fallback where setpriv or kill is missing.
    """
    setpriv, kill = shutil.which("setpriv"), shutil.which("kill")
    if setpriv and kill:
        cmd = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", kill, "-KILL", "-1"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    deadline = time.monotonic() + 2.0  # dying takes a moment; zombies are their parents' to reap
    while time.monotonic() < deadline:
        pids = [pid for pid, owner in _processes() if owner == uid and not _is_zombie(pid)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    reap_orphans()


def _is_zombie(pid: int) -> bool:
    stat_line = _read(f"/proc/{pid}/stat")
    return not stat_line or stat_line.rpartition(")")[2].split()[:1] == ["Z"]


def _processes() -> list[tuple[int, int]]:
    """(pid, real uid) of every live process; zombies included (they still count for NPROC)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((int(entry.name), os.stat(entry.path).st_uid))
    return found


def _count_tasks(uid: int) -> int:
    """Processes + threads whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    for pid, owner in _processes():
        if owner != uid:
            continue
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("Threads:"):
                total += int(line.split()[1])
                break
    return total


_MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-O", "^has_journal")  # scratch space: no journal, no reserve


def _system_tool(name: str) -> str | None:
    """`name` on PATH, or in the sbin directories a service's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _mount_disk(workspace: Path, size: int, uid: int, gid: int) -> Path:
    """Make a sparse ext4 image `<workspace>.img` of `size` bytes and mount it on `workspace`.

    The image lies next to the workspace (root-only, 0600), so a session's files stay in one
    place. `discard` gives deleted blocks back to the host; nosuid/nodev as for any user mount.
    Raises OSError or CalledProcessError; nothing is left mounted then.
    """
    image = workspace.with_name(workspace.name + ".img")
    if image.exists():  # kept from an earlier life of the session: mount it again
        mount = ["mount", "-o", "loop,nosuid,nodev,discard", str(image), str(workspace)]
        subprocess.run(mount, capture_output=True, timeout=60, check=True)
        _own_tree(workspace, uid, gid)  # the session may have another uid this time
        return image
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    try:
        mkfs = [_system_tool("mkfs.ext4") or "mkfs.ext4", *_MKFS_OPTIONS, "-E", f"root_owner={uid}:{gid}", str(image)]
        subprocess.run(mkfs, capture_output=True, timeout=60, check=True)
        mount = ["mount", "-o", "loop,nosuid,nodev,discard", str(image), str(workspace)]
        subprocess.run(mount, capture_output=True, timeout=60, check=True)
    except BaseException:
        with contextlib.suppress(OSError):
            image.unlink()
        raise
    with contextlib.suppress(OSError):
        (workspace / "lost+found").rmdir()  # mkfs's; e2fsck makes it again if ever needed
    workspace.chmod(0o700)
    return image


def _sweep_doors(state_dir: Path) -> None:
    """Remove the doors of crashed servers: those whose uid no process holds a lease on."""
    for door in (state_dir / "doors").glob("[0-9]*"):
        fd = _lease(state_dir / "uids" / door.name)
        if fd == -1:
            continue  # leased now (a live server): its door
        try:
            _detach_all(door)
            with contextlib.suppress(OSError):
                door.rmdir()
        finally:
            os.close(fd)


def _detach_all(path: Path) -> None:
    """Detach every mount stacked on `path` (none: nothing happens). os.path.ismount cannot
    tell a bind mount from the same filesystem, so this just tries until the kernel refuses."""
    for _ in range(16):
        try:
            _detach(path)
        except OSError:
            return


def _close_door(box: SessionBox) -> None:
    """Remove the box's door (`SandboxRunner._door`), if it has one; the caller holds box.lock."""
    if box.door is not None:
        with contextlib.suppress(OSError):
            _detach(box.door)
            box.door.rmdir()
        box.door = None


_MS_BIND = 4096
_MNT_DETACH = 2


def _libc_call(name: str, *args: object) -> None:
    """Call a libc mount function; OSError with its errno on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _bind_mount(source: Path, target: Path) -> None:
    """`mount --bind source target` without a child process (mount(2)); keeps nosuid/nodev."""
    _libc_call("mount", os.fsencode(source), os.fsencode(target), None, ctypes.c_ulong(_MS_BIND), None)


def _detach(path: Path) -> None:
    """`umount --lazy path` without a child process (umount2(2) with MNT_DETACH)."""
    _libc_call("umount2", os.fsencode(path), _MNT_DETACH)


def _own_tree(root: Path, uid: int, gid: int) -> None:
    """Give every file under `root` to (uid, gid) if the root is not theirs already (a kept
    workspace whose session got another uid); symlinks themselves, never their targets."""
    if root.stat().st_uid == uid:
        return
    os.lchown(root, uid, gid)
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(directory, name), uid, gid)


def _unmount(path: Path) -> None:
    """Unmount `path`; lazily if busy, so closing a session never hangs on a straggler."""
    for cmd in (["umount", str(path)], ["umount", "--lazy", str(path)]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("%s failed: %s", " ".join(cmd), exc)
            continue
        if done.returncode == 0:
            return
        log.warning("%s failed: %s", " ".join(cmd), done.stderr.strip())


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` in our mount namespace, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _probe_loop_disk(state_dir: Path) -> str | None:
    """None if a session disk can be made here (mkfs.ext4 and a loop mount work), else why not."""
    if _system_tool("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed (apt-get install e2fsprogs)"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        probe = Path(tempfile.mkdtemp(prefix="disk-probe-", dir=state_dir))
    except OSError as exc:
        return f"cannot write {state_dir}: {exc}"
    try:
        (probe / "ws").mkdir()
        _mount_disk(probe / "ws", 8 * _MiB, 0, 0)
        _unmount(probe / "ws")
        return None
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc.stderr, bytes) else str(exc)
        return f"a loop-mounted disk image could not be made: {detail or exc}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"a loop-mounted disk image could not be made: {exc}"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def claim_box(runner: SandboxRunner, session: Session) -> None:
    """Make `session` close its sandbox box (kill its uid's processes, unmount its disk, free its
    uid) when it closes. Tools call this before registering their own cleanups, so it runs after
    them (cleanups run last-in first-out). Idempotent; harmless with the session manager's
    `on_remove`, which closes the same box."""
    if session.state.get(_BOX_CLAIMED) is runner:
        return
    session.state[_BOX_CLAIMED] = runner
    workspace = session.workspace

    async def close() -> None:
        # The files stay: a closed session keeps them until it is deleted or expires (the
        # session manager's on_remove deletes the disk image then).
        await asyncio.to_thread(functools.partial(runner.close_workspace, workspace, keep_files=True))

    session.add_cleanup(close)
