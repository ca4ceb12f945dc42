"""The bubblewrap sandbox, with real bwrap: containment, limits, timeouts, output caps, reaping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path

import pytest

from runtime.sandbox import (
    Limits,
    SandboxConfig,
    SandboxRunner,
    SandboxUnavailable,
    bwrap_available,
    reap_orphans,
)

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
]


@pytest.fixture
def runner() -> SandboxRunner:
    return SandboxRunner(SandboxConfig(default_timeout=10))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"  # under /tmp/pytest-of-root (0700): exercises the door as root


def processes_with(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(f"{cmdline.parent.name}: {text}")
    return found


async def test_runs_unprivileged_in_workspace(runner: SandboxRunner, workspace: Path) -> None:
    result = await runner.run("id -u; pwd; hostname; echo oops >&2; exit 3", workspace)
    uid, cwd, host = result.stdout.split()
    assert int(uid) == runner.uid_for(workspace)[0]
    if os.geteuid() == 0:
        assert runner.uid != 0
    assert (cwd, host) == ("/workspace", "sandbox")
    assert result.stderr == "oops\n"
    assert result.exit_code == 3
    assert not result.timed_out and not result.truncated


async def test_no_network(runner: SandboxRunner, workspace: Path) -> None:
    # A server on the host's loopback must be unreachable from the sandbox's own loopback.
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"host\n")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        host_side = await runner.run(f"exec 3<>/dev/tcp/127.0.0.1/{port} && cat <&3", workspace, timeout=5)
        interfaces = await runner.run("tail -n +3 /proc/net/dev | cut -d: -f1", workspace)
        dns = await runner.run("getent hosts pypi.org", workspace, timeout=5)
    assert host_side.exit_code != 0 and "host" not in host_side.stdout
    assert "refused" in host_side.stderr.lower()
    assert interfaces.stdout.split() == ["lo"]
    assert dns.exit_code != 0


async def test_cannot_write_outside_workspace(runner: SandboxRunner, workspace: Path) -> None:
    marker = f"escape-{uuid.uuid4().hex}"
    command = (
        f"for p in /usr /etc /bin /var /root /; do touch $p/{marker} 2>/dev/null && echo WROTE $p; done; "
        f"mount -o remount,rw /usr 2>/dev/null && echo REMOUNTED; "
        f"echo in-box > /tmp/{marker}; echo kept > /workspace/{marker}; ls /tmp"
    )
    result = await runner.run(command, workspace)
    assert "WROTE" not in result.stdout and "REMOUNTED" not in result.stdout
    assert marker in result.stdout  # /tmp inside is writable...
    assert not Path("/tmp", marker).exists()  # ...but it is a private tmpfs
    assert (workspace / marker).read_text() == "kept\n"
    for parent in ("/usr", "/etc", "/bin", "/var", "/root", "/"):
        assert not Path(parent, marker).exists()


async def test_cannot_read_shadow(runner: SandboxRunner, workspace: Path) -> None:
    result = await runner.run("cat /etc/shadow", workspace)
    assert result.exit_code != 0
    assert "Permission denied" in result.stderr
    assert "root:" not in result.stdout


async def test_cannot_see_host_processes(runner: SandboxRunner, workspace: Path) -> None:
    result = await runner.run(
        "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/[0-9]*/cmdline | tr '\\0' ' '", workspace
    )
    count, _, cmdlines = result.stdout.partition("\n")
    assert int(count) <= 5  # bwrap's init, bash and the pipeline: not the host's processes
    assert "pytest" not in cmdlines


async def test_fork_bomb_is_contained(runner: SandboxRunner, workspace: Path) -> None:
    bomber = SandboxRunner(SandboxConfig(limits=Limits(nproc=64)))
    marker = f"bomb-{uuid.uuid4().hex}"  # every forked copy of bash keeps this command line
    started = time.monotonic()
    result = await bomber.run(f": {marker}; :(){{ :|:& }};:", workspace, timeout=3)
    assert time.monotonic() - started < 8
    assert result.timed_out or result.exit_code is not None
    await asyncio.sleep(0.3)
    assert processes_with(marker) == []
    after = await runner.run("echo alive", workspace)  # the sandbox uid can start processes again
    assert after.stdout == "alive\n"


async def test_timeout_kills_every_process(runner: SandboxRunner, workspace: Path) -> None:
    seconds = 900000 + os.getpid() % 1000  # a sleep length no one else uses
    started = time.monotonic()
    result = await runner.run(
        f"sleep {seconds} & setsid nohup sleep {seconds} & echo started; while :; do :; done", workspace, timeout=1.5
    )
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.stdout == "started\n"
    assert 1.4 < elapsed < 4
    await asyncio.sleep(0.2)
    assert processes_with(f"sleep {seconds}") == []


async def test_cancelled_run_kills_the_sandbox(runner: SandboxRunner, workspace: Path) -> None:
    seconds = 800000 + os.getpid() % 1000
    call = asyncio.ensure_future(runner.run(f"sleep {seconds}", workspace, timeout=60))
    await asyncio.sleep(0.5)
    assert processes_with(f"sleep {seconds}")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.3)
    assert processes_with(f"sleep {seconds}") == []


async def test_cpu_limit(workspace: Path) -> None:
    runner = SandboxRunner(SandboxConfig(limits=Limits(cpu_seconds=1)))
    result = await runner.run("while :; do :; done", workspace, timeout=10)
    assert not result.timed_out
    assert result.exit_code is not None and result.exit_code > 128  # SIGXCPU/SIGKILL at the CPU limit


async def test_memory_limit(runner: SandboxRunner, workspace: Path) -> None:
    limited = SandboxRunner(SandboxConfig(limits=Limits(address_space_bytes=512 * 1024 * 1024)))
    result = await limited.run("python3 -c 'x = bytearray(1024 ** 3)'", workspace)
    assert "MemoryError" in result.stderr


async def test_output_is_capped_with_marker(workspace: Path) -> None:
    runner = SandboxRunner(SandboxConfig(output_cap_bytes=1000))
    result = await runner.run("seq 1 100000; echo LAST", workspace)
    assert result.truncated
    assert result.stdout.startswith("1\n2\n3\n")
    assert result.stdout.endswith("LAST\n")  # the tail is kept: errors usually come last
    assert "output truncated" in result.stdout
    assert len(result.stdout) < 1200
    assert result.exit_code == 0


async def test_stdin(runner: SandboxRunner, workspace: Path) -> None:
    result = await runner.run("tr a-z A-Z", workspace, stdin="hello\n")
    assert result.stdout == "HELLO\n"


async def test_workspace_is_owned_by_sandbox_uid(runner: SandboxRunner, workspace: Path) -> None:
    await runner.run("echo hi > note.txt", workspace)
    st = workspace.stat()
    assert (st.st_uid, st.st_gid) == runner.uid_for(workspace)
    assert st.st_mode & 0o077 == 0
    assert (workspace / "note.txt").stat().st_uid == runner.uid_for(workspace)[0]


async def test_an_unreachable_workspace_gets_a_door_else_the_mount_hop(runner: SandboxRunner, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("doors and the mount hop are only used when launching as root")
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    # A uid of its own: the workspace is bound once at a door the uid can reach, no hop per call.
    runner.prepare_workspace(hidden / "ws")
    argv = runner.argv(["true"], hidden / "ws")
    doors = [Path(a) for a in argv if "/doors/" in a]
    assert "unshare" not in argv and doors
    result = await runner.run("echo through-the-door > f; cat f", hidden / "ws")
    assert result.stdout == "through-the-door\n" and (hidden / "ws" / "f").read_text() == "through-the-door\n"
    runner.close_workspace(hidden / "ws")
    assert not doors[0].exists()  # removed with the session's box
    # A shared uid gets no door (its lease is not the session's alone): the mount hop then.
    assert SandboxRunner(SandboxConfig(isolate_sessions=False)).argv(["true"], hidden / "ws2")[0] == "unshare"
    open_ws = Path("/tmp") / f"toolstudio-test-{uuid.uuid4().hex}"
    try:
        runner.prepare_workspace(open_ws)
        argv = runner.argv(["true"], open_ws)
        assert argv[0] == "setpriv" and "unshare" not in argv
        result = await runner.run("echo direct > f; cat f", open_ws)
        assert result.stdout == "direct\n"
    finally:
        for child in open_ws.iterdir():
            child.unlink()
        open_ws.rmdir()


def zombie_children() -> set[str]:
    zombies = set()
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                    zombies.add(pid)
    return zombies


async def test_sandbox_inits_are_reaped(runner: SandboxRunner, workspace: Path) -> None:
    before = zombie_children()  # other tests in this process may leave theirs (not ours to judge)
    for _ in range(3):
        await runner.run("true", workspace)
    await asyncio.sleep(1.5)  # the delayed reap has run
    reap_orphans()
    assert zombie_children() - before == set()


async def test_missing_bwrap_is_a_clear_error(workspace: Path) -> None:
    runner = SandboxRunner(SandboxConfig(bwrap="/nonexistent/bwrap"))
    with pytest.raises(SandboxUnavailable) as info:
        await runner.run("true", workspace)
    assert "apt-get install bubblewrap" in str(info.value)
    assert "--unsafe-no-sandbox" in str(info.value)


async def test_unsafe_mode_runs_without_bwrap(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.sandbox"):
        runner = SandboxRunner(SandboxConfig(unsafe_no_sandbox=True, bwrap="/nonexistent/bwrap"))
    assert "SANDBOX DISABLED" in caplog.text
    result = await runner.run("pwd; echo $HOME", workspace)
    assert result.stdout.split() == [str(workspace), str(workspace)]
