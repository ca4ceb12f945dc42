"""`--kernel-pool`: kernels started ahead, each in a sandbox made for the next new session,
through the real server (`toolstudio run`, real bwrap sandboxes and Jupyter kernels).

When a kernel process started is read inside the kernel itself (/proc/self/stat), so "this
session got a pooled kernel" means: its kernel was running before the session existed."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import CliServer, session_tool, toolstudio

pytestmark = [
    pytest.mark.integration,
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

# The kernel's own start time (unix seconds), its uid, and what its workspace holds.
PROBE = """
import json, os, time
_ticks = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19])
_boot = time.time() - float(open('/proc/uptime').read().split()[0])
print(json.dumps({'started': _boot + _ticks / os.sysconf('SC_CLK_TCK'), 'uid': os.getuid(),
                  'files': sorted(os.listdir('.'))}))
"""
READY = "kernel pool: a spare kernel is ready"
HANDED = "got a kernel started"


def start_server(home: Path, pool: int) -> tuple[CliServer, str]:
    server = CliServer(home, args=("--threads", "1", "--parallel", "1", "--kernel-pool", str(pool))).start()
    key = toolstudio("keys", "create", "--name", "pool", data_dir=home).strip()
    return server, key


def wait_ready(server: CliServer, count: int | None = None, timeout: float = 90.0) -> None:
    """Until the log says the pool made its `count`-th spare (default: one more than it handed out)."""
    if count is None:
        count = server.log().count(HANDED) + 1
    deadline = time.monotonic() + timeout
    while server.log().count(READY) < count:
        assert time.monotonic() < deadline, f"the pool did not make spare {count}:\n{server.log()[-3000:]}"
        time.sleep(0.1)


def python(server: CliServer, key: str, session: str, code: str) -> dict[str, Any]:
    return session_tool(server.base_url, key, session, "python", {"code": code}, timeout=120)


def probe(server: CliServer, key: str, session: str) -> dict[str, Any]:
    result = python(server, key, session, PROBE)
    assert not result["is_error"], result["output"]
    return json.loads(result["output"].strip().splitlines()[-1])  # type: ignore[no-any-return]


def uid_processes(uid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if _owner(p) == uid]


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliServer, str]]:
    server, key = start_server(tmp_path_factory.mktemp("pool-home"), pool=1)
    yield server, key
    server.stop()


def test_a_fresh_session_gets_a_kernel_started_before_it_existed(pooled: tuple[CliServer, str]) -> None:
    server, key = pooled
    wait_ready(server)
    asked = time.time()
    first = probe(server, key, "first")
    assert first["started"] < asked - 0.05, (first, asked)
    assert f"session first {HANDED}" in server.log()


def test_sessions_never_share_a_pooled_kernel_and_the_pool_refills(pooled: tuple[CliServer, str]) -> None:
    server, key = pooled
    wait_ready(server)
    before_a = time.time()
    assert not python(server, key, "alice", "secret = 'alice'; open('alice.txt', 'w').write('hers')")["is_error"]
    a = probe(server, key, "alice")
    assert a["started"] < before_a and "alice.txt" in a["files"]
    wait_ready(server)  # refilled after alice took hers
    before_b = time.time()
    seen = python(server, key, "bob", "print(secret)")
    assert seen["is_error"] and "NameError" in seen["output"]
    b = probe(server, key, "bob")
    # Bob's kernel is a new one from the refilled pool: started after Alice took hers, before Bob came.
    assert a["started"] < b["started"] < before_b, (a, b, before_b)
    assert "alice.txt" not in b["files"]
    if os.geteuid() == 0:  # a uid per session (as root)
        assert a["uid"] != b["uid"]
    # The pooled kernel's /workspace is the session's workspace: bash (a new sandbox on the
    # session's path) and the kernel see the same files.
    tool = session_tool(server.base_url, key, "bob", "bash", {"command": "echo from-bash > b.txt; ls"})
    assert "b.txt" in tool["output"]
    assert "from-bash" in python(server, key, "bob", "print(open('b.txt').read())")["output"]


def test_a_pooled_kernel_dies_with_its_session(pooled: tuple[CliServer, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a uid per session (root) to find the session's processes")
    server, key = pooled
    wait_ready(server)
    carol = probe(server, key, "carol")
    assert uid_processes(carol["uid"]), "the kernel should be running as the session's uid"
    response = httpx.delete(f"{server.base_url}/v1/sessions/carol", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10
    while uid_processes(carol["uid"]):
        assert time.monotonic() < deadline, "the session's kernel outlived the session"
        time.sleep(0.1)


AUTOGROUP = """
import os
print(open('/proc/self/autogroup').read().split()[-1], os.getpriority(os.PRIO_PROCESS, 0))
"""


def autogroup_nice(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/proc/sys/kernel/sched_autogroup_enabled").exists(),
    reason="needs root (a kernel set back to niceness 0) and a kernel with scheduler autogroups",
)
def test_a_spare_boots_at_low_priority_and_its_session_runs_at_normal(pooled: tuple[CliServer, str]) -> None:
    # bwrap's --new-session gives each sandbox an autogroup of its own, among which the CPU is
    # shared fairly whatever a process's niceness: a spare is held back through its autogroup.
    server, key = pooled
    wait_ready(server)
    assert server.proc is not None
    spare = [autogroup_nice(pid) for pid in descendants(server.proc.pid)]
    assert 19 in spare, f"no process of the waiting spare runs in an autogroup at niceness 19: {spare}"
    group, nice = python(server, key, "dave", AUTOGROUP)["output"].split()
    assert (group, nice) == ("0", "0")  # handed over: normal priority again


def test_without_a_pool_the_first_call_starts_the_kernel(tmp_path: Path) -> None:
    server, key = start_server(tmp_path, pool=0)
    try:
        asked = time.time()
        result = probe(server, key, "solo")
        assert result["started"] > asked - 0.05  # started for this call
        assert READY not in server.log()
    finally:
        server.stop()


def test_shutdown_removes_the_unused_spares(tmp_path: Path) -> None:
    server, _ = start_server(tmp_path, pool=2)
    wait_ready(server, 2)
    pool_dir = tmp_path / "sessions" / ".pool"
    assert len([p for p in pool_dir.iterdir() if p.is_dir()]) == 2
    server.stop()
    assert not [p.name for p in pool_dir.iterdir()], "spares (or their disk images) were left behind"
    assert str(pool_dir) not in Path("/proc/self/mountinfo").read_text()
