"""What per-session isolation costs: warm python and bash tool calls, and opening/closing a
session, with isolation on (a uid per session, a loop-mounted disk image per session) and off
(`SandboxConfig(isolate_sessions=False)`: one shared uid, no disk image), in the same run.

Each mode gets its own session manager wired like `build_runtime` does (on_create /
on_remove), real bwrap sandboxes and a real Jupyter kernel. Warm call: the median of N calls
after one warm-up call (which starts the kernel). Needs root for the "on" mode to differ.

Usage: python bench/bench_isolation.py [--runs 40] [--sessions 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.bash_tool import BashTool
from plugins.python_tool import PythonTool
from runtime.sandbox import SandboxConfig, SandboxRunner
from runtime.sessions import Session, SessionManager
from runtime.tools import ToolContext


async def _median_ms(call: Callable[[], Awaitable[object]], runs: int) -> float:
    await call()  # warm-up (starts the kernel)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(isolate: bool, runs: int, sessions: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-isolation-")) / "sessions"
    runner = SandboxRunner(SandboxConfig(isolate_sessions=isolate))
    manager = SessionManager(
        root,
        idle_seconds=3600,
        max_sessions=sessions + 1,
        on_create=runner.open_workspace,
        on_remove=runner.close_workspace,
    )
    python, bash = PythonTool(runner), BashTool(runner)
    try:
        session = await manager.get("key", "bench")

        def context(s: Session) -> ToolContext:
            return ToolContext(session=s, deadline=time.monotonic() + 60)

        async def py() -> None:
            out = await python.run({"code": "1 + 1"}, context(session))
            assert out.text == "2", out.text

        async def sh() -> None:
            out = await bash.run({"command": "true"}, context(session))
            assert not out.is_error, out.text

        result = {"python": await _median_ms(py, runs), "bash": await _median_ms(sh, runs)}
        opens, closes = [], []
        for i in range(sessions):
            started = time.perf_counter()
            extra = await manager.get("key", f"s{i}")
            opens.append((time.perf_counter() - started) * 1000)
            await manager.release(extra)
            started = time.perf_counter()
            await manager.delete("key", f"s{i}")
            closes.append((time.perf_counter() - started) * 1000)
        result["open"], result["close"] = statistics.median(opens), statistics.median(closes)
        result["disk"] = 1.0 if runner.disk_quota else 0.0
        return result
    finally:
        await manager.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    off = await measure(False, args.runs, args.sessions)
    on = await measure(True, args.runs, args.sessions)
    print(f"per-session disk image: {'yes' if on['disk'] else 'no'} (isolation on)\n")
    print("| median, ms | isolation off | isolation on | on - off |")
    print("|---|---|---|---|")
    rows = [
        ("warm python call", "python"),
        ("warm bash call", "bash"),
        ("open a session", "open"),
        ("close a session", "close"),
    ]
    for label, key in rows:
        print(f"| {label} | {off[key]:.1f} | {on[key]:.1f} | {on[key] - off[key]:+.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
