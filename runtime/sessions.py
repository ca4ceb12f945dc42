"""Tool sessions: one workspace (and whatever plugins keep in it) per (API key, session_id).

`SessionManager` owns them: it creates workspaces, bounds how many sessions live at once,
evicts idle ones (running their cleanups, e.g. kernel shutdown) and never lets one API key
reach another key's session, whatever `session_id` it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import Overloaded

log = logging.getLogger(__name__)

WORKSPACE_MODE = 0o700
# Key directories (and the root) only need to be traversable, not listable: the sandbox's
# unprivileged uid must reach its own workspace to bind it, but not see which others exist.
PARENT_MODE = 0o711
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
    # Held while a tool runs, so two requests on one session never run tools at the same time.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _users: int = field(default=0, init=False, repr=False)  # requests between get() and release()
    _closed: bool = field(default=False, init=False, repr=False)
    running: asyncio.Task[Any] | None = field(default=None, init=False, repr=False)  # the tool call now running

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


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    created: float  # unix time
    last_used: float  # unix time
    file_count: int
    size_bytes: int


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
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.root = Path(root)
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        # Called with each new workspace, e.g. to chown it to the sandbox's uid.
        self.on_create = on_create
        self._sessions: dict[tuple[str, str], Session] = {}
        self._throwaways: set[Session] = set()
        # Sessions being closed, by key: a new session with that key waits, so it never gets a
        # workspace directory that the old one's clean-up is about to remove.
        self._closing: dict[tuple[str, str], asyncio.Event] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SessionManager:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Remove workspaces left by an earlier process and start the idle sweep (needs a running loop)."""
        if self._sweeper is not None:
            return
        self._purge_stale()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="session-sweeper")

    async def close(self) -> None:
        """Stop the sweep and close every session, in use or not (server shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        sessions = [*self._sessions.values(), *self._throwaways]
        self._sessions.clear()
        self._throwaways.clear()
        await asyncio.gather(*(_dispose(s) for s in sessions))

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
                log.info("evicting session %s to make room (cap %d)", victim.session_id, self.max_sessions)
                del self._sessions[(victim.key_id, victim.session_id)]
                await self._retire(victim)
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
        if session.throwaway and session._users == 0 and session in self._throwaways:
            self._throwaways.discard(session)
            await _dispose(session)

    @contextlib.asynccontextmanager
    async def session(self, key_id: str, session_id: str | None) -> AsyncIterator[Session]:
        """`get()` and, whatever happens, `release()`."""
        session = await self.get(key_id, session_id)
        try:
            yield session
        finally:
            await self.release(session)

    async def list(self, key_id: str) -> list[SessionInfo]:
        """This key's named sessions (throwaways are not listed), oldest first."""
        mine = sorted((s for (owner, _), s in self._sessions.items() if owner == key_id), key=lambda s: s.created)
        to_unix = time.time() - time.monotonic()  # last_used is monotonic; listings show unix time
        infos = []
        for s in mine:
            file_count, size = await asyncio.to_thread(_disk_usage, s.workspace)
            infos.append(SessionInfo(s.session_id, s.created, s.last_used + to_unix, file_count, size))
        return infos

    async def delete(self, key_id: str, session_id: str) -> bool:
        """Close the session and remove its workspace; False if this key has no such session.

        A tool call running in it is cancelled (its result says so); a request still holding
        the session sees `closed`.
        """
        session = self._sessions.pop((key_id, session_id), None)
        if session is None:
            return False
        await self._retire(session)
        return True

    async def evict_idle(self) -> int:
        """Close sessions unused for `idle_seconds`; returns how many. The sweep calls this."""
        cutoff = time.monotonic() - self.idle_seconds
        expired = [s for s in self._sessions.values() if not s.in_use and s.last_used < cutoff]
        for session in expired:
            log.info("session %s idle for over %.0f s: closing", session.session_id, self.idle_seconds)
            self._sessions.pop((session.key_id, session.session_id))
        await asyncio.gather(*(self._retire(s) for s in expired))
        return len(expired)

    def workspace_for(self, key_id: str, session_id: str) -> Path:
        """Where a session's files live; any session_id string maps to one safe directory name."""
        return self.root / _digest(key_id)[:16] / _safe_name(session_id)

    def _new_session(self, key_id: str, session_id: str, *, throwaway: bool) -> Session:
        workspace = self.workspace_for(key_id, session_id)
        for parent in (self.root, workspace.parent):
            parent.mkdir(parents=True, exist_ok=True)
            os.chmod(parent, PARENT_MODE)  # mkdir's mode is filtered by the umask
        workspace.mkdir(exist_ok=True)
        os.chmod(workspace, WORKSPACE_MODE)
        if self.on_create is not None:
            self.on_create(workspace)
        log.debug("session %s created at %s", session_id, workspace)
        return Session(key_id=key_id, session_id=session_id, workspace=workspace, throwaway=throwaway)

    async def _retire(self, session: Session) -> None:
        """Close a session already removed from `_sessions`, once no tool runs in it."""
        key = (session.key_id, session.session_id)
        # Registered before the first await, so `live_count` never drops while it closes.
        done = self._closing[key] = asyncio.Event()
        session.cancel_running()
        try:
            async with session.lock:
                await _dispose(session)
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

    def _purge_stale(self) -> None:
        # Sessions live in memory, so workspaces found at start-up belong to no one. Only
        # directories named like ours are touched, in case root points somewhere shared.
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if _KEY_DIR.match(child.name) and child.is_dir() and not child.is_symlink():
                log.info("removing stale session workspaces in %s", child)
                _remove_tree(child)


async def _dispose(session: Session) -> None:
    await session.close()
    await asyncio.to_thread(_remove_tree, session.workspace)


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
