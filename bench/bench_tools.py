"""Where a tool call's time goes: the python and bash tools through HTTP against their floors.

One run measures, on the same machine, one after the other:

- the **bubblewrap floor**: `bwrap ... true` with the argv of notes/sandbox.md (no setpriv, no
  prlimit, no user namespace), and our own sandbox command line for `bash -c true` run
  directly (what `SandboxRunner.argv` adds: setpriv, prlimit, a user namespace, more mounts);
- the **kernel round trip**: a sandboxed kernel (`SessionKernel`) answering `1 + 1` through raw
  jupyter_client calls (execute, iopub until idle, shell reply), and through `SessionKernel.execute`;
- **through HTTP** (`toolstudio run`, the packaged model, an httpx keep-alive client like the
  SDKs'): a warm python call (`1 + 1`), a bash call (`true`), and a session's cold first python
  call with `--kernel-pool 0` and `--kernel-pool 1` (one server each, started in turn; with a
  pool, each cold call waits until the pool has refilled, as a session arriving later would).

The warm measures and their floors run interleaved, in a random order each round, so that load
from other processes on a shared machine hits all of them alike. Medians (and p90) in ms; "over
baseline" is the median minus its baseline's median.
A server without `--kernel-pool` (before issue #16) gives the pool-1 row as n/a.

Usage: python bench/bench_tools.py [--runs 40] [--cold 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.python_tool.kernel import SessionKernel
from runtime.sandbox import SandboxConfig, SandboxRunner, reap_orphans
from tests.servers import CliServer, toolstudio

Times = list[float]  # milliseconds
READY = "kernel pool: a spare kernel is ready"


def stats(times: Times) -> tuple[float, float]:
    """(median, p90) in ms."""
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def bwrap_floor_argv(workspace: Path) -> list[str]:
    """`bwrap ... true` with the notes' argv, run as the caller (no privilege drop, no rlimits)."""
    workspace.mkdir(exist_ok=True)
    argv = ["bwrap", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin"):
        argv += ["--symlink", f"usr/{name}", f"/{name}"]
    argv += ["--ro-bind", "/etc", "/etc", "--tmpfs", "/tmp", "--bind", str(workspace), "/workspace"]
    argv += ["--chdir", "/workspace", "--proc", "/proc", "--dev", "/dev", "--unshare-all"]
    argv += ["--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--", "true"]
    return argv


async def raw_round_trip(kc: Any) -> None:
    """One `1 + 1` through jupyter_client alone: execute, iopub until idle, the shell reply."""
    msg_id = kc.execute("1 + 1", store_history=True, allow_stdin=False)
    while True:
        msg = await kc.get_iopub_msg(timeout=10)
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while (await kc.get_shell_msg(timeout=10))["parent_header"].get("msg_id") != msg_id:
        pass


def has_pool_option() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", "--help"], capture_output=True, text=True, check=False
    )
    return "--kernel-pool" in done.stdout


def start_server(pool: int | None) -> tuple[CliServer, str]:
    home = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    args = ["--threads", "2", "--parallel", "1"]
    if pool is not None:
        args += ["--kernel-pool", str(pool)]
    server = CliServer(home, args=tuple(args)).start()
    return server, toolstudio("keys", "create", "--name", "bench", data_dir=home).strip()


def stop_server(server: CliServer) -> None:
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)


async def done(value: object) -> object:
    return value


async def call(client: httpx.AsyncClient, session: str, tool: str, arguments: dict[str, object]) -> None:
    response = await client.post(f"/v1/sessions/{session}/tools/{tool}", json=arguments)
    response.raise_for_status()
    assert not response.json()["is_error"], response.text


async def cold_calls(server: CliServer, key: str, pooled: bool, sessions: int) -> Times:
    """A fresh session's first python call; with a pool, each session arrives once it refilled."""
    times = []
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        for i in range(sessions):
            if pooled:
                deadline = time.monotonic() + 60
                while server.log().count(READY) < i + 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
            started = time.perf_counter()
            await call(client, f"cold-{i}", "python", {"code": "1 + 1"})
            times.append((time.perf_counter() - started) * 1000)
    return times


async def warm_calls(server: CliServer, key: str, runs: int, scratch: Path) -> dict[str, Times]:
    """The warm measurements and their floors, interleaved in random order in every round, so
    that load from other processes on a shared machine hits all of them alike."""
    runner = SandboxRunner(SandboxConfig(session_disk_bytes=None))
    floor_argv = bwrap_floor_argv(scratch / "floor")
    ours_ws = scratch / "ours"
    runner.prepare_workspace(ours_ws)
    ours_argv = runner.argv(["bash", "-c", "true"], ours_ws)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    kernel = SessionKernel(runner, scratch / "kernel")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        await kernel.execute("1 + 1", 30)  # starts it
        kc = kernel._kc  # the floor is the client itself: the bench looks inside on purpose
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=120) as client:
            measures: dict[str, Callable[[], Awaitable[object]]] = {
                # Run right here (blocking): no thread hop in the floors' times.
                "floor": lambda: done(subprocess.run(floor_argv, check=True)),
                "ours": lambda: done(subprocess.run(ours_argv, check=True, env=env, cwd=ours_ws)),
                "bash": lambda: call(client, "warm", "bash", {"command": "true"}),
                "raw": lambda: raw_round_trip(kc),
                "kernel": lambda: kernel.execute("1 + 1", 30),
                "python": lambda: call(client, "warm", "python", {"code": "1 + 1"}),
            }
            for measure in measures.values():  # warm-up: the session, its kernel, the connection
                await measure()
            times: dict[str, Times] = {name: [] for name in measures}
            for _ in range(runs):
                for name in random.sample(list(measures), len(measures)):
                    started = time.perf_counter()
                    await measures[name]()
                    times[name].append((time.perf_counter() - started) * 1000)
                reap_orphans()
            return times
    finally:
        await kernel.shutdown()
        for workspace in (ours_ws, scratch / "kernel"):
            await asyncio.to_thread(runner.close_workspace, workspace)


async def measure(runs: int, cold: int) -> tuple[dict[str, Times], Times | None]:
    pooled = has_pool_option()
    scratch = Path(tempfile.mkdtemp(prefix="bench-tools-ws-", dir="/tmp"))
    os.chmod(scratch, 0o755)
    server, key = start_server(0 if pooled else None)
    try:
        times = await warm_calls(server, key, runs, scratch)
        times["cold0"] = await cold_calls(server, key, False, cold)
    finally:
        stop_server(server)
        shutil.rmtree(scratch, ignore_errors=True)
    if not pooled:
        return times, None
    server, key = start_server(1)
    try:
        return times, await cold_calls(server, key, True, cold)
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40, help="rounds of warm calls")
    parser.add_argument("--cold", type=int, default=5, help="fresh sessions per cold measurement")
    args = parser.parse_args()
    if shutil.which("bwrap") is None:
        sys.exit("bubblewrap is not installed")
    times, pooled = asyncio.run(measure(args.runs, args.cold))
    floor, raw = times["floor"], times["raw"]
    rows: list[tuple[str, Times | None, Times | None]] = [
        ("bubblewrap floor: `bwrap ... true` (notes' argv)", floor, None),
        ("our sandbox argv, `bash -c true`, run directly", times["ours"], floor),
        ("bash call through HTTP (`true`)", times["bash"], floor),
        ("kernel round trip (raw jupyter_client, `1 + 1`)", raw, None),
        ("SessionKernel.execute (`1 + 1`)", times["kernel"], raw),
        ("warm python call through HTTP (`1 + 1`)", times["python"], raw),
        ("cold first python call, --kernel-pool 0", times["cold0"], raw),
        ("cold first python call, --kernel-pool 1", pooled, raw),
    ]
    print(f"{args.runs} rounds of warm calls (interleaved), {args.cold} cold sessions; ms\n")
    print("| measure | median | p90 | baseline | over baseline (median) | ratio |")
    print("|---|---|---|---|---|---|")
    for label, values, base in rows:
        if values is None:
            print(f"| {label} | n/a | n/a | | | |")
            continue
        median, p90 = stats(values)
        if base is None:
            print(f"| {label} | {median:.1f} | {p90:.1f} | (floor) | | |")
            continue
        base_median = stats(base)[0]
        which = "bwrap floor" if base is floor else "kernel round trip"
        print(
            f"| {label} | {median:.1f} | {p90:.1f} | {which} | {median - base_median:+.1f} | {median / base_median:.2f} |"
        )


if __name__ == "__main__":
    main()
