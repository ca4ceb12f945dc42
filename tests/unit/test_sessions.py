"""SessionManager: isolation between keys, throwaway sessions, eviction, delete and list."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import Overloaded
from runtime.sessions import Session, SessionManager


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    manager = SessionManager(tmp_path / "sessions", idle_seconds=3600, max_sessions=8)
    try:
        yield manager
    finally:
        await manager.close()


def track_cleanup(session: Session, closed: list[str]) -> None:
    async def cleanup() -> None:
        closed.append(session.session_id)

    session.add_cleanup(cleanup)


async def test_keys_never_share_a_session_even_with_the_same_session_id(manager: SessionManager) -> None:
    alice = await manager.get("key-alice", "shared")
    bob = await manager.get("key-bob", "shared")
    assert alice is not bob
    assert alice.workspace != bob.workspace
    (alice.workspace / "secret.txt").write_text("alice's")
    assert not (bob.workspace / "secret.txt").exists()
    alice.state["python"] = "alice's kernel"
    assert "python" not in bob.state
    assert await manager.get("key-alice", "shared") is alice
    assert [i.session_id for i in await manager.list("key-bob")] == ["shared"]
    assert not await manager.delete("key-bob", "other")
    assert await manager.delete("key-bob", "shared")
    assert (alice.workspace / "secret.txt").read_text() == "alice's"  # bob's delete never reaches alice


@pytest.mark.parametrize("session_id", ["../../etc", "a/b", ".", "..", "", "é ☃", "x" * 1000, "/abs", "\x00nul"])
async def test_any_session_id_maps_to_one_private_directory(manager: SessionManager, session_id: str) -> None:
    session = await manager.get("key", session_id)
    key_dir = manager.root / hashlib.sha256(b"key").hexdigest()[:16]
    assert session.workspace.parent == key_dir
    assert session.workspace.is_dir()
    assert len(session.workspace.name) <= 64
    assert stat.S_IMODE(session.workspace.stat().st_mode) == 0o700
    assert (await manager.get("key", session_id)) is session


async def test_similar_session_ids_get_different_workspaces(manager: SessionManager) -> None:
    first = await manager.get("key", "a/b")
    second = await manager.get("key", "ab")
    assert first.workspace != second.workspace


async def test_on_create_gets_each_new_workspace(tmp_path: Path) -> None:
    created: list[Path] = []
    async with SessionManager(tmp_path, idle_seconds=60, max_sessions=4, on_create=created.append) as manager:
        session = await manager.get("key", "s")
        await manager.get("key", "s")
        assert created == [session.workspace]


async def test_concurrent_requests_for_a_new_session_share_it(manager: SessionManager) -> None:
    first, second = await asyncio.gather(manager.get("key", "new"), manager.get("key", "new"))
    assert first is second


async def test_throwaway_sessions_are_private_unlisted_and_closed_on_release(manager: SessionManager) -> None:
    closed: list[str] = []
    first = await manager.get("key", None)
    second = await manager.get("key", None)
    assert first is not second
    assert first.workspace != second.workspace
    assert first.throwaway
    assert await manager.list("key") == []
    track_cleanup(first, closed)
    (first.workspace / "scratch").write_text("x")
    await manager.release(first)
    assert closed == [first.session_id]
    assert first.closed
    assert not first.workspace.exists()
    assert second.workspace.exists()


async def test_named_sessions_survive_release(manager: SessionManager) -> None:
    async with manager.session("key", "keep") as session:
        (session.workspace / "data.csv").write_text("1,2\n")
    again = await manager.get("key", "keep")
    assert again is session
    assert (again.workspace / "data.csv").exists()


async def test_idle_sessions_are_evicted_but_sessions_in_use_are_not(tmp_path: Path) -> None:
    closed: list[str] = []
    async with SessionManager(tmp_path, idle_seconds=0.2, max_sessions=4) as manager:
        idle = await manager.get("key", "idle")
        busy = await manager.get("key", "busy")  # never released: a request still holds it
        track_cleanup(idle, closed)
        track_cleanup(busy, closed)
        await manager.release(idle)
        for _ in range(100):  # the background sweep, not a direct call
            if closed:
                break
            await asyncio.sleep(0.05)
        assert closed == ["idle"]
        listed = {i.session_id: i.live for i in await manager.list("key")}
        assert listed == {"busy": True, "idle": False}  # closed, its files kept
        fresh = await manager.get("key", "idle")
        assert fresh is not idle and fresh.restored and not busy.restored
        assert fresh.workspace.is_dir()


async def test_a_session_running_a_tool_is_not_idle(tmp_path: Path) -> None:
    manager = SessionManager(tmp_path, idle_seconds=0, max_sessions=4)
    session = await manager.get("key", "s")
    await manager.release(session)
    async with session.lock:
        assert await manager.evict_idle() == 0
    assert await manager.evict_idle() == 1
    await manager.close()


async def test_when_full_the_oldest_idle_session_is_evicted_and_cleaned_up(tmp_path: Path) -> None:
    closed: list[str] = []
    async with SessionManager(tmp_path, idle_seconds=3600, max_sessions=2) as manager:
        for name in ("oldest", "newer"):
            session = await manager.get("key", name)
            track_cleanup(session, closed)
            await manager.release(session)
            await asyncio.sleep(0.01)
        await manager.get("key", "newer")  # touch: now "oldest" is still the least recently used
        third = await manager.get("other-key", "third")
        assert closed == ["oldest"]
        assert manager.live_count == 2
        assert third.workspace.is_dir()
        assert [(i.session_id, i.live) for i in await manager.list("key")] == [("oldest", False), ("newer", True)]


async def test_when_full_of_sessions_in_use_get_raises_overloaded(tmp_path: Path) -> None:
    async with SessionManager(tmp_path, idle_seconds=3600, max_sessions=1) as manager:
        held = await manager.get("key", "held")
        with pytest.raises(Overloaded):
            await manager.get("key", "another")
        with pytest.raises(Overloaded):
            await manager.get("key", None)
        assert await manager.get("key", "held") is held  # an existing session is always reachable


async def test_delete_closes_and_removes_the_workspace(manager: SessionManager) -> None:
    closed: list[str] = []
    session = await manager.get("key", "s")
    track_cleanup(session, closed)
    (session.workspace / "f").write_text("x")
    await manager.release(session)
    assert await manager.delete("key", "s")
    assert closed == ["s"]
    assert session.closed
    assert not session.workspace.exists()
    assert await manager.list("key") == []
    assert not await manager.delete("key", "s")


async def test_delete_marks_closed_at_once_and_a_new_session_waits_for_the_delete(
    manager: SessionManager,
) -> None:
    session = await manager.get("key", "s")
    await session.lock.acquire()  # something holds the session (a running call is cancelled: test_python_tool)
    deleting = asyncio.create_task(manager.delete("key", "s"))
    await asyncio.sleep(0.05)
    assert not deleting.done()
    assert session.closed  # no new call starts in it
    reopening = asyncio.create_task(manager.get("key", "s"))
    await asyncio.sleep(0.05)
    assert not reopening.done()  # else the delete would remove the new session's workspace
    session.lock.release()
    assert await deleting
    fresh = await reopening
    assert fresh is not session
    assert session.closed
    assert fresh.workspace == session.workspace
    assert fresh.workspace.is_dir()


async def test_list_reports_times_and_workspace_usage(manager: SessionManager) -> None:
    session = await manager.get("key", "s")
    (session.workspace / "a.txt").write_bytes(b"12345")
    (session.workspace / "sub").mkdir()
    (session.workspace / "sub" / "b.bin").write_bytes(b"x" * 100)
    await manager.get("key", "t")
    await manager.get("someone-else", "u")
    infos = await manager.list("key")
    assert [i.session_id for i in infos] == ["s", "t"]
    info = infos[0]
    assert (info.file_count, info.size_bytes) == (2, 105)
    assert info.created <= info.last_used
    assert abs(info.last_used - session.created) < 5  # both unix times


async def test_close_closes_every_session(tmp_path: Path) -> None:
    closed: list[str] = []
    manager = SessionManager(tmp_path, idle_seconds=3600, max_sessions=4)
    manager.start()
    named = await manager.get("key", "named")
    throwaway = await manager.get("key", None)
    track_cleanup(named, closed)
    track_cleanup(throwaway, closed)
    await manager.close()
    assert sorted(closed) == sorted(["named", throwaway.session_id])
    assert manager.live_count == 0


async def test_start_removes_unrecorded_workspaces_left_by_an_earlier_process(tmp_path: Path) -> None:
    stale = tmp_path / "0123456789abcdef" / "old-session"  # no session record: a throwaway's
    stale.mkdir(parents=True)
    (stale / "file").write_text("x")
    unrelated = tmp_path / "not-ours"
    unrelated.mkdir()
    async with SessionManager(tmp_path, idle_seconds=60, max_sessions=2):
        assert not stale.exists()
        assert unrelated.exists()


async def test_files_survive_restart_and_eviction_until_delete(tmp_path: Path) -> None:
    async with SessionManager(tmp_path, idle_seconds=3600, max_sessions=4) as manager:
        session = await manager.get("key", "notebook")
        (session.workspace / "data.csv").write_text("a,b\n1,2\n")
        await manager.release(session)
        throwaway = await manager.get("key", None)
        (throwaway.workspace / "tmp.txt").write_text("x")
    # A new server process on the same data directory.
    async with SessionManager(tmp_path, idle_seconds=3600, max_sessions=4) as manager:
        [info] = await manager.list("key")
        assert (info.session_id, info.live) == ("notebook", False) and info.size_bytes > 0
        assert await manager.list("other-key") == []
        back = await manager.get("key", "notebook")
        assert back.restored and (back.workspace / "data.csv").read_text() == "a,b\n1,2\n"
        assert abs(back.created - session.created) < 1  # the same session, not a new one
        assert not throwaway.workspace.exists()
        await manager.release(back)
        assert await manager.delete("key", "notebook")
    async with SessionManager(tmp_path, idle_seconds=3600, max_sessions=4) as manager:
        assert await manager.list("key") == []
        fresh = await manager.get("key", "notebook")
        assert not fresh.restored and not (fresh.workspace / "data.csv").exists()


async def test_kept_files_expire_after_the_ttl_and_can_be_deleted_while_closed(tmp_path: Path) -> None:
    async with SessionManager(tmp_path, idle_seconds=0.1, max_sessions=4, ttl_seconds=0.5) as manager:
        for name in ("expires", "deleted"):
            session = await manager.get("key", name)
            (session.workspace / "f").write_text(name)
            await manager.release(session)
        for _ in range(100):
            if all(not i.live for i in await manager.list("key")):
                break
            await asyncio.sleep(0.05)
        assert {i.session_id for i in await manager.list("key")} == {"expires", "deleted"}
        assert await manager.delete("key", "deleted")  # closed, but its files go now
        assert not await manager.delete("key", "deleted")
        await asyncio.sleep(0.8)
        await manager.evict_idle()  # the sweep also expires kept files
        assert await manager.list("key") == []
        assert not manager.workspace_for("key", "expires").exists()


async def test_cleanup_failures_are_logged_not_raised(
    manager: SessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    session = await manager.get("key", "s")

    async def broken() -> None:
        raise RuntimeError("kernel already gone")

    session.add_cleanup(broken)
    assert await manager.delete("key", "s")
    assert "cleanup of session s failed" in caplog.text
