"""Kernels started ahead (`--kernel-pool N`), so a new session's first python call is warm.

A kernel is started in a sandbox, and a sandbox belongs to one session: its workspace, its uid
and its disk. So the pool does not keep bare kernels but whole *spares*: a workspace made with
`SandboxRunner.open_workspace` under `<sessions root>/.pool/` (its own uid lease and disk image)
with a kernel already running in it. When the session manager creates a session whose workspace
is fresh, `adopt` hands one ready spare over: `SandboxRunner.adopt_workspace` moves the disk (or
directory) to the session's workspace path, the running kernel keeps it as /workspace, and the
kernel becomes the session's (`session.state["python"]`, shut down by the session's cleanup).
A spare is handed to exactly one session and never comes back; a new one is made in the
background to replace it.

Cost control (2 cores shared with decoding): spares are made one at a time, their kernels start
at niceness 19 (so booting one takes CPU only when decoding leaves some), and a handed-over
kernel is set back to niceness 0 (as root; without root it keeps niceness 10, the lowest it was
started at). The niceness is also that of the sandbox's scheduler autogroup (kernel.py,
`_set_autogroup_nice`): bwrap makes each sandbox a session of its own, and Linux shares the CPU
fairly between sessions' autogroups before niceness counts, so a spare booting at niceness 19
alone still took half the CPU (an agent turn's first prefill took 260-300 ms instead of ~110).
Each spare holds an idle kernel (about 50 MiB) and a disk image (sparse) until used.

Not handed a spare: a restored session (its files are back, so its kernel starts on first use
as before), any session while no spare is ready, and every session in unsafe mode (no sandbox).
With the pool, every new session gets a kernel at creation, whether it calls python or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.python_tool.kernel import KernelStartError, SessionKernel
from runtime.sandbox import SESSION_STATE_KEY, SandboxRunner, SandboxUnavailable, claim_box

if TYPE_CHECKING:
    from runtime.sessions import Session

log = logging.getLogger(__name__)

STATE_KEY = "python"  # where a session keeps its kernel (plugins.python_tool re-exports it)
SPARE_PREFIX = "spare-"
BOOT_NICE = 19 if os.geteuid() == 0 else 10  # root can set a kernel back to 0; others cannot
MAX_RETRY_SECONDS = 300.0


@dataclass(eq=False)
class Spare:
    path: Path  # its workspace, under the pool's directory until handed over
    kernel: SessionKernel


class KernelPool:
    """`size` spares (workspace + uid + disk + started kernel) for new sessions; implements
    `runtime.sessions.SessionSpares`. `root` is a directory on the same filesystem as the
    session workspaces (the sessions root's `.pool`), owned by this pool."""

    def __init__(
        self,
        runner: SandboxRunner,
        root: Path,
        size: int,
        *,
        interpreter: str | None = None,
        ro_binds: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.runner = runner
        self.root = root
        self.size = max(0, size)
        self.interpreter = interpreter
        self.ro_binds = list(ro_binds)
        self.handed_over = 0  # spares given to sessions so far
        self.misses = 0  # fresh sessions that found no ready spare
        self._ready: list[Spare] = []
        self._wake = asyncio.Event()
        self._filler: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()

    @property
    def ready(self) -> int:
        """Spares ready to hand over now."""
        return len(self._ready)

    def start(self) -> None:
        if self.size == 0 or self._filler is not None:
            return
        if not self.runner.sandboxed:
            log.info("kernel pool off: tools run without a sandbox (--unsafe-no-sandbox)")
            return
        self._filler = asyncio.get_running_loop().create_task(self._fill_forever(), name="kernel-pool")

    def adopt(self, session: Session) -> bool:
        """Give `session` a ready spare (its workspace, uid, disk and running kernel); False
        when none is ready or the workspace is not fresh. Runs on the event loop: a bind
        mount and an unmount, or a rename."""
        if not self._ready or self._filler is None:
            if self._filler is not None:
                self.misses += 1
                log.info("kernel pool empty: session %s starts its kernel on first use", session.session_id)
            return False
        workspace = session.workspace
        if workspace.with_name(workspace.name + ".img").exists() or any(workspace.iterdir()):
            return False  # files from an earlier life: they stay, with a kernel started for them
        spare = self._ready.pop(0)
        try:
            self.runner.adopt_workspace(spare.path, workspace)
        except OSError as exc:
            log.warning("kernel pool: could not hand %s over (%s); discarding it", spare.path.name, exc)
            self._spawn(self._discard(spare))
            self._wake.set()
            return False
        kernel = spare.kernel
        kernel.workspace = workspace
        session.state.setdefault(SESSION_STATE_KEY, self.runner)
        claim_box(self.runner, session)  # registered first, so it runs after the kernel's shutdown
        session.state[STATE_KEY] = kernel
        session.add_cleanup(kernel.shutdown)
        self.handed_over += 1
        age = time.time() - kernel.ready_at if kernel.ready_at is not None else 0.0
        log.info(
            "kernel pool: session %s got a kernel started %.1f s ago (%d handed over, %d left)",
            session.session_id,
            age,
            self.handed_over,
            len(self._ready),
        )
        self._spawn(asyncio.to_thread(kernel.renice, 0))
        self._wake.set()
        return True

    async def close(self) -> None:
        """Stop refilling; shut down the spares nobody took and remove their workspaces."""
        filler, self._filler = self._filler, None
        if filler is not None:
            filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await filler
        spares, self._ready = self._ready, []
        await asyncio.gather(*(self._discard(spare) for spare in spares))
        for task in list(self._background):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    # -- making spares ------------------------------------------------------------------------

    async def _fill_forever(self) -> None:
        await asyncio.to_thread(self._purge_stale)
        failures = 0
        while True:
            while True:  # until a spare is missing
                self._wake.clear()
                if len(self._ready) < self.size:
                    break
                await self._wake.wait()
            started = time.monotonic()
            try:
                spare = await self._make_spare()
            except SandboxUnavailable as exc:  # no bwrap: nothing to pre-start; each call says why
                log.warning("kernel pool off: %s", exc)
                return
            except (KernelStartError, OSError) as exc:
                failures += 1
                delay = min(MAX_RETRY_SECONDS, 5.0 * 2 ** (failures - 1))
                log.warning("kernel pool: a spare kernel did not start (retry in %.0f s): %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._ready.append(spare)
            log.info(
                "kernel pool: a spare kernel is ready in %.2f s (%d/%d)",
                time.monotonic() - started,
                len(self._ready),
                self.size,
            )

    async def _make_spare(self) -> Spare:
        path = self.root / f"{SPARE_PREFIX}{secrets.token_hex(8)}"
        await asyncio.to_thread(self._make_dir, path)
        kernel = SessionKernel(self.runner, path, interpreter=self.interpreter, ro_binds=self.ro_binds, nice=BOOT_NICE)
        try:
            await asyncio.to_thread(self.runner.open_workspace, path)  # uid lease, disk image
            await kernel.start()
        except BaseException:  # also cancelled (shutdown): leave nothing behind
            await self._discard(Spare(path, kernel))
            raise
        return Spare(path, kernel)

    def _make_dir(self, path: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # traversable (the sandbox uid binds its spare), not listable
        path.mkdir(mode=0o700)

    async def _discard(self, spare: Spare) -> None:
        with contextlib.suppress(Exception):
            await spare.kernel.shutdown()
        await asyncio.to_thread(self._remove, spare.path)

    def _remove(self, path: Path) -> None:
        """Kill what runs in a spare, unmount and delete its disk, remove its directory."""
        self.runner.close_workspace(path)
        shutil.rmtree(path, ignore_errors=True)

    def _purge_stale(self) -> None:
        """Spares a crashed server left: unmounted and removed (their kernels died with it)."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name.startswith(SPARE_PREFIX) and entry.is_dir() and not entry.is_symlink():
                log.info("kernel pool: removing a stale spare %s", entry.name)
                self._remove(entry)
        for image in self.root.glob(f"{SPARE_PREFIX}*.img"):
            with contextlib.suppress(OSError):
                image.unlink()

    def _spawn(self, work: Awaitable[object]) -> None:
        """Run `work` in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
