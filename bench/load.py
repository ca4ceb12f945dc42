"""Load test: N concurrent streaming clients for a bounded time against a real `toolstudio run`.

Every client loops until the time is up, each request drawn at random (seeded) from:
- a streamed OpenAI chat completion, Anthropic message or OpenAI response (the three dialects);
- the same, but the client hangs up after a few chunks (the server must free the slot);
- a server-side python tool call in the client's own session: forced through `tool_choice`
  naming `python` where the server accepts that, else through `POST /v1/sessions/{id}/tools/python`.

Then it checks what an operator would: the engine is idle again (/health active == 0, /metrics
queue depth 0), deleting the sessions stops every kernel, stopping the server leaves no process
behind, and how far the server's RSS grew over its warmed-up baseline. Loopback only.

Usage: python bench/load.py [--clients 8] [--duration 60] [--max-tokens 64] [--seed 0]
       [--disconnect-rate 0.15] [--tool-rate 0.15] [--busy-tool SECONDS] [--threads N]
       [--parallel 4] [--model PATH]

The exit status is 1 when anything an operator would call a failure happened (errors, hung
clients, a busy engine afterwards, processes left behind), so CI can run it as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import CliServer, alive, descendants, toolstudio

TOPICS = ["a lighthouse", "a dragon", "the ocean", "a robot", "a forest", "a city", "a comet", "a violin"]
DIALECTS = ("chat", "anthropic", "responses")
CODE = ["sum(range({n}))", "import math\nmath.factorial({n}) % 1000", "x = [i * i for i in range({n})]\nlen(x)"]


@dataclass
class Outcome:
    kind: str  # chat | anthropic | responses | tool
    started: float
    ttft: float | None = None  # seconds to the first generated text (or tool output)
    tokens: int = 0  # output tokens the client received
    disconnected: bool = False  # the client hung up on purpose
    error: str | None = None
    duration: float = 0.0


@dataclass
class Settings:
    base_url: str
    key: str
    deadline: float
    max_tokens: int
    disconnect_rate: float
    tool_rate: float
    forced_tool: bool  # whether `tool_choice` may name the server's python tool
    busy_tool: float = 0.0  # > 0: tool calls spin the CPU this long (a user's heavy code)


# -- one request per dialect, parsed just enough (a light client leaves the CPU to the server) ---


def sse_data(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                yield json.loads(data)


def stream_request(
    client: httpx.Client, s: Settings, kind: str, rng: random.Random, hang_up_after: int | None
) -> Outcome:
    out = Outcome(kind, time.perf_counter())
    prompt = f"Write a story about {rng.choice(TOPICS)}."
    max_tokens = rng.randint(max(8, s.max_tokens // 2), s.max_tokens)
    if kind == "chat":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
        }
    elif kind == "anthropic":
        path = "/v1/messages"
        body = {"model": "default", "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}
    else:
        path = "/v1/responses"
        body = {"model": "default", "input": prompt, "max_output_tokens": max_tokens, "store": False}
    body["stream"] = True
    chunks = 0
    with client.stream("POST", path, json=body, headers={"x-api-key": s.key}) as response:
        if response.status_code != 200:
            response.read()
            out.error = f"{kind} HTTP {response.status_code}: {response.text[:120]}"
            return out
        for event in sse_data(response):
            text, usage = _text_and_usage(kind, event)
            if text:
                chunks += 1
                if out.ttft is None:
                    out.ttft = time.perf_counter() - out.started
            if usage is not None:
                out.tokens = usage
            if kind == "anthropic" and event.get("type") == "error":
                out.error = f"anthropic error event: {event['error']}"
            if hang_up_after is not None and chunks >= hang_up_after:
                out.disconnected = True
                break  # leaving the `with` closes the connection mid-stream
    if out.disconnected or not out.tokens:
        out.tokens = chunks  # one text delta per token: what the client got before leaving
    return out


def _text_and_usage(kind: str, event: dict[str, Any]) -> tuple[str, int | None]:
    if kind == "chat":
        usage = event.get("usage")
        text = "".join((c.get("delta") or {}).get("content") or "" for c in event.get("choices") or [])
        return text, usage["completion_tokens"] if usage else None
    kind_of = event.get("type", "")
    if kind == "anthropic":
        if kind_of == "content_block_delta":
            return event["delta"].get("text", ""), None
        if kind_of == "message_delta":
            return "", event.get("usage", {}).get("output_tokens")
        return "", None
    if kind_of == "response.output_text.delta":
        return event["delta"], None
    if kind_of in ("response.completed", "response.incomplete"):
        return "", (event["response"].get("usage") or {}).get("output_tokens")
    return "", None


def tool_request(client: httpx.Client, s: Settings, rng: random.Random, session: str) -> Outcome:
    """A python tool run in the client's own session (a kernel per session, kept between calls)."""
    out = Outcome("tool", time.perf_counter())
    code = rng.choice(CODE).format(n=rng.randint(10, 10_000))
    if s.busy_tool > 0:
        code = f"import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s.busy_tool}:\n    pass"
    headers = {"x-api-key": s.key}
    if s.forced_tool:
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": f"Run this Python code:\n{code}"}],
            "max_tokens": s.max_tokens,
            "tool_choice": {"type": "function", "function": {"name": "python"}},
            "enable_tools": True,
            "enabled_tools": ["python"],
            "session_id": session,
            "max_tool_calls_per_message": 1,
        }
        response = client.post("/v1/chat/completions", json=body, headers=headers)
        ok = response.status_code == 200 and response.json().get("tool_results")
    else:
        response = client.post(f"/v1/sessions/{session}/tools/python", json={"code": code}, headers=headers)
        ok = response.status_code == 200 and not response.json()["is_error"]
    out.ttft = time.perf_counter() - out.started
    if not ok:
        out.error = f"tool HTTP {response.status_code}: {response.text[:160]}"
    return out


def client_loop(index: int, s: Settings, seed: int, results: list[Outcome], lock: threading.Lock) -> None:
    rng = random.Random(seed * 1000 + index)
    session = f"load-{index}"
    with httpx.Client(base_url=s.base_url, timeout=httpx.Timeout(120, connect=10)) as client:
        while time.monotonic() < s.deadline:
            roll = rng.random()
            try:
                if roll < s.tool_rate:
                    outcome = tool_request(client, s, rng, session)
                else:
                    hang_up = rng.randint(1, 6) if roll < s.tool_rate + s.disconnect_rate else None
                    outcome = stream_request(client, s, rng.choice(DIALECTS), rng, hang_up)
            except httpx.HTTPError as exc:
                outcome = Outcome("transport", time.perf_counter(), error=f"{type(exc).__name__}: {exc}")
            outcome.duration = time.perf_counter() - outcome.started
            with lock:
                results.append(outcome)


# -- the server, from outside ------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _kernels_cpu(pid: int) -> float:
    """CPU time of the server's live children (kernels, sandboxes), which the server has not waited for."""
    total = 0.0
    for child in descendants(pid):
        try:
            total += cpu_seconds(child)
        except (OSError, IndexError):
            continue
    return total


def kernels_among(pids: set[int]) -> set[int]:
    found = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ipykernel_launcher" in argv and b"python" in Path(argv[0].decode()).name.encode():
            found.add(pid)
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its waited-for children (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def host_cpu_seconds() -> float:
    """CPU time every process on the host has used (non-idle), from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def wait_idle(client: httpx.Client, timeout: float = 30.0) -> tuple[float, int, float]:
    """Seconds until /health says no sequence is active and the queue is empty; and the last values."""
    started = time.monotonic()
    active, queue = -1, float("nan")
    while time.monotonic() - started < timeout:
        active = client.get("/health").json()["active"]
        queue = metric(client.get("/metrics").text, "toolstudio_queue_depth")
        if active == 0 and queue == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - started, active, queue


def accepts_forced_server_tool(client: httpx.Client, key: str) -> bool:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Compute 2 + 2 with Python."}],
        "max_tokens": 48,
        "tool_choice": {"type": "function", "function": {"name": "python"}},
        "enable_tools": True,
        "enabled_tools": ["python"],
        "session_id": "probe",
        "max_tool_calls_per_message": 1,
    }
    response = client.post("/v1/chat/completions", json=body, headers={"x-api-key": key})
    client.delete("/v1/sessions/probe", headers={"x-api-key": key})
    return response.status_code == 200


# -- the run -------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--disconnect-rate", type=float, default=0.15)
    parser.add_argument("--tool-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--busy-tool", type=float, default=0.0, help="tool calls spin the CPU this many seconds (heavy user code)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    if args.clients < 1 or not 0 < args.duration <= 3600:
        parser.error("--clients must be >= 1 and --duration in (0, 3600]")

    home = Path(tempfile.mkdtemp(prefix="toolstudio-load-"))
    server_args = ["--parallel", str(args.parallel), "--tool-timeout", "20"]
    server_args += ["--threads", str(args.threads)] if args.threads else []
    server_args += ["--model", args.model] if args.model else []
    server = CliServer(home, args=tuple(server_args)).start()
    assert server.proc is not None
    pid = server.proc.pid
    key = toolstudio("keys", "create", "--name", "load", data_dir=home).strip()
    report: list[str] = []
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as admin:
            forced = accepts_forced_server_tool(admin, key)
            # Warm up (first decode, one kernel start) so the RSS baseline is a serving server's.
            settings = Settings(server.base_url, key, time.monotonic() + 1e9, 16, 0.0, 0.0, forced)
            with httpx.Client(base_url=server.base_url, timeout=120) as warm:
                for kind in DIALECTS:
                    stream_request(warm, settings, kind, random.Random(0), None)
                tool_request(warm, settings, random.Random(0), "warmup")
            admin.delete("/v1/sessions/warmup", headers={"x-api-key": key})
            wait_idle(admin)
            baseline_rss = rss_mib(pid)
            generated_before = metric(admin.get("/metrics").text, "toolstudio_generated_tokens_total")

            settings = Settings(
                server.base_url,
                key,
                time.monotonic() + args.duration,
                args.max_tokens,
                args.disconnect_rate,
                args.tool_rate,
                forced,
                args.busy_tool,
            )
            results: list[Outcome] = []
            lock = threading.Lock()
            workers = [
                threading.Thread(target=client_loop, args=(i, settings, args.seed, results, lock), daemon=True)
                for i in range(args.clients)
            ]
            started = time.monotonic()
            # The machine may be shared: how much CPU others took during the run goes in the report.
            cpu_before = (host_cpu_seconds(), cpu_seconds(pid) + _kernels_cpu(pid), cpu_seconds(os.getpid()))
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=args.duration + 180)  # a request in flight at the deadline finishes
            wall = time.monotonic() - started
            hung = sum(w.is_alive() for w in workers)
            cpu_after = (host_cpu_seconds(), cpu_seconds(pid) + _kernels_cpu(pid), cpu_seconds(os.getpid()))
            server_cores = (cpu_after[1] - cpu_before[1]) / wall
            client_cores = (cpu_after[2] - cpu_before[2]) / wall
            others_cores = max(0.0, (cpu_after[0] - cpu_before[0]) / wall - server_cores - client_cores)

            idle_after, active, queue = wait_idle(admin)
            generated = metric(admin.get("/metrics").text, "toolstudio_generated_tokens_total") - generated_before
            live_sessions = metric(admin.get("/metrics").text, "toolstudio_live_sessions")
            kernels_live = len(kernels_among(descendants(pid)))
            for i in range(args.clients):
                admin.delete(f"/v1/sessions/load-{i}", headers={"x-api-key": key})
            time.sleep(1.5)  # kernels get SIGKILL at once; their sandbox inits are reaped a moment later
            kernels_after_delete = len(kernels_among(descendants(pid)))
            left_after_delete = len(descendants(pid))
            load_rss = rss_mib(pid)
    finally:
        family = descendants(pid)
        stop_started = time.monotonic()
        server.stop()
        stop_seconds = time.monotonic() - stop_started
        time.sleep(1.0)
        orphans = [p for p in family if alive(p)]

    streams = [r for r in results if r.kind in DIALECTS]
    ttfts = [r.ttft for r in streams if r.ttft is not None and not r.error]
    tool_runs = [r for r in results if r.kind == "tool"]
    errors = Counter((r.error or "").split(":")[0] for r in results if r.error)
    tokens = sum(r.tokens for r in streams)
    by_kind = Counter(r.kind for r in results)
    report += [
        f"toolstudio load: {args.clients} clients x {args.duration:.0f} s, max_tokens {args.max_tokens}, "
        f"--parallel {args.parallel}, --threads {args.threads or 'default (all cores)'}, seed {args.seed}; "
        + (f"tool calls spin the CPU {args.busy_tool:g} s; " if args.busy_tool else "")
        + "tool calls via "
        + ("a forced tool_choice" if forced else "POST /v1/sessions/{id}/tools/python (tool_choice cannot name it)"),
        f"CPU during the run ({os.cpu_count()} cores): server + its kernels {server_cores:.2f} cores, "
        f"these clients {client_cores:.2f}, other processes on the host {others_cores:.2f}",
        "",
        "| clients | duration s | requests | chat / anthropic / responses / tool | disconnects | "
        "tokens (client) | tokens/s | server tokens/s | TTFT p50 ms | TTFT p99 ms | tool p50 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.clients} | {wall:.1f} | {len(results)} | {by_kind['chat']} / {by_kind['anthropic']} / "
        f"{by_kind['responses']} / {by_kind['tool']} | {sum(r.disconnected for r in results)} | {tokens} | "
        f"{tokens / wall:.1f} | {generated / wall:.1f} | {statistics.median(ttfts) * 1000 if ttfts else float('nan'):.0f} | "
        f"{percentile(ttfts, 0.99) * 1000:.0f} | "
        f"{statistics.median(r.duration for r in tool_runs) * 1000 if tool_runs else float('nan'):.0f} | "
        f"{sum(errors.values())} |",
        "",
        "| after the load | value |",
        "|---|---|",
        f"| clients still running at the end (hung) | {hung} |",
        f"| engine idle (/health active, /metrics queue depth) | {active}, {queue:.0f} after {idle_after:.1f} s |",
        f"| live sessions / kernels while sessions live | {live_sessions:.0f} / {kernels_live} |",
        f"| kernels / server child processes after deleting the sessions | {kernels_after_delete} / {left_after_delete} |",
        f"| server stop (SIGTERM) took | {stop_seconds:.1f} s |",
        f"| processes left after the server stopped | {len(orphans)} |",
        f"| server RSS: warmed-up baseline -> after load | {baseline_rss:.0f} MiB -> {load_rss:.0f} MiB "
        f"({load_rss - baseline_rss:+.0f} MiB) |",
    ]
    if errors:
        report += ["", "errors by kind: " + ", ".join(f"{kind} x{n}" for kind, n in errors.most_common())]
        examples = {(r.error or "")[:200] for r in results if r.error}
        report += [f"  e.g. {e}" for e in sorted(examples)[:5]]
    print("\n".join(report))
    healthy = not errors and not hung and active == 0 and queue == 0 and not orphans and kernels_after_delete == 0
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
