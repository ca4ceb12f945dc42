"""Tool sessions: one workspace (and whatever plugins keep in it) per (API key, session_id).

`SessionManager` owns them: it creates workspaces, bounds how many sessions live at once,
evicts idle ones (running their cleanups, e.g. kernel shutdown) and never lets one API key
reach another key's session, whatever `session_id` it sends.

Lifecycle: a session's *files* outlive its *process state*. Idle eviction and a server
restart close the session (the kernel and its variables are gone) but keep the workspace on
disk; the same `session_id` later finds its files again (`Session.restored`). Files go when
the session is deleted, or when it has not been used for `ttl_seconds` (`--session-ttl`).
Each workspace has a root-owned `<workspace>.json` beside it (never inside: the sandbox must
not edit it) with the session id and times, so a restarted server can list and expire them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import Overloaded

log = logging.getLogger(__name__)

WORKSPACE_MODE = 0o700
# Key directories (and the root) only need to be traversable, not listable: the sandbox's
# unprivileged uid must reach its own workspace to bind it, but not see which others exist.
PARENT_MODE = 0o711
META_REFRESH_SECONDS = 60.0  # how stale a live session's record of its last use may get
_KEY_DIR = re.compile(r"^[0-9a-f]{16}$")


@dataclass(eq=False)
class Session:
    key_id: str  # the owning API key's id: sessions never cross keys
    session_id: str
    workspace: Path  # shared by the Python kernel and the bash tool; the only writable path
    state: dict[str, Any] = field(default_factory=dict)  # per-plugin state, keyed by plugin/tool name
    last_used: float = field(default_factory=time.monotonic)
    _cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    created: float = field(default_factory=time.time)  # wall clock, for listings
    throwaway: bool = False  # made for a request without session_id; closed when released
    # The workspace was kept from an earlier life of this session (eviction or a restart):
    # its files are back, its process state (kernel variables) is not.
    restored: bool = False
    # Held while a tool runs, so two requests on one session never run tools at the same time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _users: int = field(default=0, init=False, repr=False)  # requests between get() and release()
    _closed: bool = field(default=False, init=False, repr=False)
    running: asyncio.Task[Any] | None = field(default=None, init=False, repr=False)  # the tool call now running
    _meta_written: float = field(default=-math.inf, init=False, repr=False)  # monotonic time of the last record

    def cancel_running(self) -> None:
        """Stop the tool call running in this session (the session is going away): its task
        is cancelled, which kills a bash process group and interrupts the Python kernel."""
        self._closed = True
        if self.running is not None and not self.running.done():
            log.info("session %s: cancelling the running tool call", self.session_id)
            self.running.cancel()

    def add_cleanup(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run `cleanup` when the session closes (e.g. shut a kernel down)."""
        self._cleanups.append(cleanup)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_use(self) -> bool:
        return self._users > 0 or self.lock.locked()

    async def close(self) -> None:
        self._closed = True
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup of session %s failed", self.session_id)


class SessionSpares(Protocol):
    """Ready-made workspaces for new sessions (e.g. the python tool's kernel pool: a sandbox
    with its own uid, disk and a started kernel, made before the session exists).

    `adopt` is called, on the event loop, for each new session whose workspace is fresh (not
    restored); it must be quick. It either moves a spare into `session.workspace` (an empty
    directory it may replace), sets the session up (state, cleanups) and returns True, or
    returns False: the manager's `on_create` then prepares the workspace as usual. A spare is
    handed to one session only.
    """

    def start(self) -> None:
        """Begin making spares in the background (needs a running loop)."""

    def adopt(self, session: Session) -> bool:
        """Hand one spare over to `session`; False if none is ready."""

    async def close(self) -> None:
        """Server shutdown: stop making spares and remove those not handed over."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    created: float  # unix time
    last_used: float  # unix time
    file_count: int  # files in the workspace; -1 when it is closed (its disk is not mounted)
    size_bytes: int  # bytes the workspace takes on disk
    live: bool = True  # False: closed (evicted or from before a restart), files kept until the TTL


class SessionManager:
    """Live sessions, keyed by (key_id, session_id).

    Every `get()` must be paired with a `release()` (or use `async with manager.session(...)`):
    a session in use is never evicted, and a throwaway one is closed on release. A request that
    keeps a session across awaits should check `session.closed` after taking `session.lock`: a
    `delete()` may have closed it meanwhile.
    """

    def __init__(
        self,
        root: Path,
        idle_seconds: float,
        max_sessions: int,
        *,
        on_create: Callable[[Path], None] | None = None,
        on_remove: Callable[[Path], None] | None = None,
        on_close: Callable[[Path], None] | None = None,
        ttl_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.root = Path(root)
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        # Called with each new workspace, e.g. to chown it to the sandbox's uid and mount its disk.
        self.on_create = on_create
        # Called (in a worker thread) before a workspace or a stale key directory is removed,
        # e.g. to kill the session's processes and unmount its disk. Must not raise.
        self.on_remove = on_remove
        # Called (in a worker thread) when a session closes but its files stay (eviction,
        # shutdown, and for every kept workspace at start-up), e.g. to unmount its disk.
        self.on_close = on_close
        self.ttl_seconds = ttl_seconds
        self._sessions: dict[tuple[str, str], Session] = {}
        self._throwaways: set[Session] = set()
        # Sessions being closed, by key: a new session with that key waits, so it never gets a
        # workspace directory that the old one's clean-up is about to remove.
        self._closing: dict[tuple[str, str], asyncio.Event] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Set before `start()`: new sessions take a ready-made workspace from it when it has one.
        self.spares: SessionSpares | None = None

    async def __aenter__(self) -> SessionManager:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Take over the workspaces an earlier process kept, remove the expired ones, and start
        the idle sweep (needs a running loop)."""
        if self._sweeper is not None:
            return
        self._recover()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="session-sweeper")
        if self.spares is not None:
            self.spares.start()

    async def close(self) -> None:
        """Stop the sweep and close every session, in use or not (server shutdown). Named
        sessions keep their files for the next start; throwaway ones are removed."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        named, throwaways = list(self._sessions.values()), list(self._throwaways)
        self._sessions.clear()
        self._throwaways.clear()
        for session in named:
            session.cancel_running()
        await asyncio.gather(
            *(self._dispose(s, keep_files=True) for s in named), *(self._dispose(s) for s in throwaways)
        )
        if self.spares is not None:
            await self.spares.close()

    @property
    def live_count(self) -> int:
        return len(self._sessions) + len(self._throwaways) + len(self._closing)

    async def get(self, key_id: str, session_id: str | None) -> Session:
        """The caller's session, created if new; with `session_id=None` a fresh throwaway one.

        Raises `Overloaded` when the cap is reached and every live session is in use.
        """
        key = (key_id, session_id) if session_id is not None else None
        while True:  # every await below may change the state: look again after it
            if key is not None and (closing := self._closing.get(key)) is not None:
                await closing.wait()
                continue
            session = self._sessions.get(key) if key is not None else None
            if session is not None or self.live_count < self.max_sessions:
                break
            victim = min((s for s in self._sessions.values() if not s.in_use), key=lambda s: s.last_used, default=None)
            if victim is not None:
                log.info(
                    "evicting session %s to make room (cap %d; its files are kept)",
                    victim.session_id,
                    self.max_sessions,
                )
                del self._sessions[(victim.key_id, victim.session_id)]
                await self._retire(victim, keep_files=True)
            elif self._closing:
                await next(iter(self._closing.values())).wait()
            else:
                raise Overloaded(f"all {self.max_sessions} tool sessions are in use; retry shortly")
        # No await from the lookup above to the insert: concurrent requests for one new
        # session_id share one Session.
        if session is None:
            if session_id is None:
                session = self._new_session(key_id, f"throwaway-{secrets.token_hex(8)}", throwaway=True)
                self._throwaways.add(session)
            else:
                session = self._new_session(key_id, session_id, throwaway=False)
                self._sessions[(key_id, session_id)] = session
        session._users += 1
        session.touch()
        return session

    async def release(self, session: Session) -> None:
        """The request is done with `session`; a throwaway one is closed now."""
        session._users = max(0, session._users - 1)
        session.touch()
        # The record's last use only feeds the TTL (days): refreshed at most once a minute here;
        # closing the session (eviction, shutdown) always writes it.
        stale = session.last_used - session._meta_written > META_REFRESH_SECONDS
        if not session.throwaway and not session.closed and stale:
            await asyncio.to_thread(_write_meta, session)
        if session.throwaway and session._users == 0 and session in self._throwaways:
            self._throwaways.discard(session)
            await self._dispose(session)

    @contextlib.asynccontextmanager
    async def session(self, key_id: str, session_id: str | None) -> AsyncIterator[Session]:
        """`get()` and, whatever happens, `release()`."""
        session = await self.get(key_id, session_id)
        try:
            yield session
        finally:
            await self.release(session)

    async def list(self, key_id: str) -> list[SessionInfo]:
        """This key's named sessions, live or closed with files kept (throwaways are not
        listed), oldest first."""
        mine = sorted((s for (owner, _), s in self._sessions.items() if owner == key_id), key=lambda s: s.created)
        to_unix = time.time() - time.monotonic()  # last_used is monotonic; listings show unix time
        infos = []
        for s in mine:
            file_count, size = await asyncio.to_thread(_disk_usage, s.workspace)
            infos.append(SessionInfo(s.session_id, s.created, s.last_used + to_unix, file_count, size))
        live = {s.workspace for s in mine}
        for meta in await asyncio.to_thread(self._kept, key_id):
            workspace = Path(meta["workspace"])
            if workspace not in live:  # closed, or closing now
                size = await asyncio.to_thread(_allocated, workspace)
                infos.append(SessionInfo(meta["session_id"], meta["created"], meta["last_used"], -1, size, live=False))
        return sorted(infos, key=lambda i: i.created)

    async def delete(self, key_id: str, session_id: str) -> bool:
        """Close the session and remove its workspace (kept files too); False if this key has
        no such session, live or kept.

        A tool call running in it is cancelled (its result says so); a request still holding
        the session sees `closed`.
        """
        session = self._sessions.pop((key_id, session_id), None)
        if session is not None:
            await self._retire(session)
            return True
        while (closing := self._closing.get((key_id, session_id))) is not None:
            await closing.wait()  # an eviction is closing it: delete what it keeps after
        workspace = self.workspace_for(key_id, session_id)
        if not _meta_path(workspace).exists() and not workspace.exists():
            return False
        await asyncio.to_thread(self._remove_workspace, workspace)
        return True

    async def evict_idle(self) -> int:
        """Close sessions unused for `idle_seconds`; returns how many. The sweep calls this."""
        cutoff = time.monotonic() - self.idle_seconds
        expired = [s for s in self._sessions.values() if not s.in_use and s.last_used < cutoff]
        for session in expired:
            log.info(
                "session %s idle for over %.0f s: closing (its files are kept)", session.session_id, self.idle_seconds
            )
            self._sessions.pop((session.key_id, session.session_id))
        await asyncio.gather(*(self._retire(s, keep_files=True) for s in expired))
        await asyncio.to_thread(self._expire_kept)
        return len(expired)

    def workspace_for(self, key_id: str, session_id: str) -> Path:
        """Where a session's files live; any session_id string maps to one safe directory name."""
        return self.root / _digest(key_id)[:16] / _safe_name(session_id)

    def _new_session(self, key_id: str, session_id: str, *, throwaway: bool) -> Session:
        workspace = self.workspace_for(key_id, session_id)
        restored = not throwaway and _meta_path(workspace).exists()
        for parent in (self.root, workspace.parent):
            parent.mkdir(parents=True, exist_ok=True)
            os.chmod(parent, PARENT_MODE)  # mkdir's mode is filtered by the umask
        workspace.mkdir(exist_ok=True)
        os.chmod(workspace, WORKSPACE_MODE)
        session = Session(
            key_id=key_id, session_id=session_id, workspace=workspace, throwaway=throwaway, restored=restored
        )
        adopted = not restored and self.spares is not None and self.spares.adopt(session)
        if not adopted and self.on_create is not None:
            self.on_create(workspace)
        if restored:
            session.created = _read_meta(workspace).get("created", session.created)
            log.info("session %s restored: its files were kept, its process state was not", session_id)
        if not throwaway:
            _write_meta(session)
        log.debug("session %s created at %s", session_id, workspace)
        return session

    async def _retire(self, session: Session, *, keep_files: bool = False) -> None:
        """Close a session already removed from `_sessions`, once no tool runs in it (a
        running call is cancelled); its files are removed unless `keep_files`."""
        key = (session.key_id, session.session_id)
        # Registered before the first await, so `live_count` never drops while it closes.
        done = self._closing[key] = asyncio.Event()
        session.cancel_running()
        try:
            async with session.lock:
                await self._dispose(session, keep_files=keep_files)
        finally:
            del self._closing[key]
            done.set()

    async def _sweep_forever(self) -> None:
        interval = min(max(self.idle_seconds / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.evict_idle()
            except Exception:
                log.exception("idle session sweep failed")

    def _recover(self) -> None:
        """At start-up: every workspace an earlier process left is closed (its disk unmounted);
        those with a session record are kept until their TTL, the rest removed. Only
        directories named like ours are touched, in case root points somewhere shared."""
        if not self.root.is_dir():
            return
        kept = 0
        for key_dir in self.root.iterdir():
            if not (_KEY_DIR.match(key_dir.name) and key_dir.is_dir() and not key_dir.is_symlink()):
                continue
            for workspace in key_dir.iterdir():
                if not workspace.is_dir() or workspace.is_symlink():
                    continue
                self._close_workspace(workspace)
                if _meta_path(workspace).exists():
                    kept += 1
                else:
                    self._remove_workspace(workspace)  # a throwaway's, or from before session records
        self._expire_kept()
        if kept:
            log.info("%d closed sessions kept from before; their files are there for their next call", kept)

    def _kept(self, key_id: str | None = None) -> list[dict[str, Any]]:
        """The records of workspaces on disk (all keys, or one), each with its `workspace`."""
        dirs = [self.root / _digest(key_id)[:16]] if key_id is not None else list(self.root.glob("*"))
        out = []
        for key_dir in dirs:
            if not (_KEY_DIR.match(key_dir.name) and key_dir.is_dir()):
                continue
            for path in key_dir.glob("*.json"):
                meta = _read_meta(path.with_suffix(""))
                if meta.get("session_id") is not None:
                    out.append({**meta, "workspace": str(path.with_suffix(""))})
        return out

    def _expire_kept(self) -> None:
        """Remove closed sessions' files unused for `ttl_seconds`."""
        cutoff = time.time() - self.ttl_seconds
        live = {s.workspace for s in self._sessions.values()}
        for meta in self._kept():
            workspace = Path(meta["workspace"])
            if workspace not in live and meta.get("last_used", 0) < cutoff:
                log.info("session %s unused for over %.0f s: removing its files", meta["session_id"], self.ttl_seconds)
                self._remove_workspace(workspace)

    async def _dispose(self, session: Session, *, keep_files: bool = False) -> None:
        await session.close()
        if keep_files and not session.throwaway:
            await asyncio.to_thread(_write_meta, session)
            await asyncio.to_thread(self._close_workspace, session.workspace)
        else:
            await asyncio.to_thread(self._remove_workspace, session.workspace)

    def _close_workspace(self, path: Path) -> None:
        if self.on_close is not None:
            try:
                self.on_close(path)
            except Exception:
                log.exception("on_close hook failed for %s", path)

    def _remove_workspace(self, path: Path) -> None:
        if self.on_remove is not None:
            try:
                self.on_remove(path)
            except Exception:
                log.exception("on_remove hook failed for %s", path)
        _remove_tree(path)
        with contextlib.suppress(FileNotFoundError):
            _meta_path(path).unlink()


def _meta_path(workspace: Path) -> Path:
    return workspace.with_name(workspace.name + ".json")


def _write_meta(session: Session) -> None:
    """Record the session beside its workspace (root-owned, outside every sandbox)."""
    to_unix = time.time() - time.monotonic()
    meta = {"session_id": session.session_id, "created": session.created, "last_used": session.last_used + to_unix}
    path = _meta_path(session.workspace)
    session._meta_written = session.last_used
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(meta))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)


def _read_meta(workspace: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_meta_path(workspace).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _allocated(path: Path) -> int:
    """Bytes a closed workspace takes: its disk image's allocated blocks, or its files'."""
    image = path.with_name(path.name + ".img")
    with contextlib.suppress(OSError):
        return image.stat().st_blocks * 512
    return _disk_usage(path)[1]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _safe_name(session_id: str) -> str:
    # A readable prefix helps operators; the hash of the whole id makes it unique and safe.
    readable = re.sub(r"[^A-Za-z0-9_-]", "", session_id)[:32]
    return f"{readable}-{_digest(session_id)[:24]}" if readable else _digest(session_id)[:24]


def _disk_usage(path: Path) -> tuple[int, int]:
    files = size = 0
    for directory, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(directory, name)).st_size
                files += 1
    return files, size


def _remove_tree(path: Path) -> None:
    def report(_func: object, failed: str, exc: BaseException) -> None:
        log.warning("could not remove %s: %s", failed, exc)

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=report)
    else:  # `onerror` is deprecated from 3.12 on
        shutil.rmtree(path, onerror=lambda func, failed, info: report(func, failed, info[1]))
