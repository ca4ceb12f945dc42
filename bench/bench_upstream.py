"""The front-end's cost: tokens/s and time to first token through `toolstudio run --upstream`
against the same upstream called directly, 1 and 8 concurrent streaming clients, same run.

The upstream is a toolstudio on the packaged model (or llama-server with --llama-server PATH:
the same GGUF, slots and threads); the front-end is a second process with no model. Rounds
alternate direct / through the front-end (which goes first alternates too) so that both see the
same machine, each with prompts of its own (no shared prefix cache); each side keeps its best
round (least disturbed by whatever else runs). Also reported: the front-end's own CPU time
per generated token (/proc) next to the upstream's: on a busy machine the timings are noisy, and
the CPU the front-end spends per token decides how many tokens/s one front-end core can relay.

With --paced the upstream is synthetic: it streams --rate tokens/s per stream and computes
nothing, so on a busy machine the difference between the two sides is still the front-end's.

Usage: python bench/bench_upstream.py [--clients 1,8] [--tokens 64] [--rounds 2] [--threads 2]
       [--llama-server PATH | --paced [--rate 50]] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.response import Stream as Streamed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.model_source import embedded_model
from tests.servers import CliServer, free_port, toolstudio, wait_healthy

TOPICS = ["a lighthouse", "a dragon", "the ocean", "a robot", "a forest", "a city", "a comet", "a violin"]


@dataclass
class Stream:
    ttft: float = 0.0  # seconds to the first text
    tokens: int = 0  # completion tokens, from the stream's usage
    failed: bool = False


@dataclass
class Result:
    clients: int
    wall: float
    streams: list[Stream]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall

    def ttft_p50(self) -> float:
        """Milliseconds."""
        return statistics.median(s.ttft for s in self.streams if not s.failed) * 1000

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.streams)


def one_stream(client: openai.OpenAI, i: int, round_no: int, n_tokens: int) -> Stream:
    """One streamed story; the round number makes the prompt (and its cached prefix) its own."""
    out = Stream()
    started = time.perf_counter()
    messages = [
        {"role": "system", "content": f"Round {round_no}, client {i}."},
        {"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."},
    ]
    try:
        stream = client.chat.completions.create(
            model="default",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=n_tokens,
            temperature=0.7,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and out.ttft == 0.0:
                out.ttft = time.perf_counter() - started
            if chunk.usage is not None:
                out.tokens = chunk.usage.completion_tokens
    except openai.APIError:
        out.failed = True
    return out


def load(client: openai.OpenAI, clients: int, round_no: int, n_tokens: int) -> Result:
    """`clients` streams at once, in threads."""
    streams = [Stream() for _ in range(clients)]

    def work(i: int) -> None:
        streams[i] = one_stream(client, i, round_no, n_tokens)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(clients, time.perf_counter() - started, streams)


def start_llama_server(binary: str, slots: int, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = ["-m", str(embedded_model()), "--port", str(port), "-np", str(slots), "-c", str(4096 * slots)]
    args += ["-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--no-webui", "--jinja"]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc=proc)
    return proc, url


def serve_paced(port: int, rate: float) -> None:
    """A Chat Completions server that streams `max_tokens` one-word chunks at `rate` per second
    per stream and computes nothing: through it, every millisecond of difference between
    direct and front-end is the front-end's."""

    @get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": "paced", "owned_by": "paced"}]}

    @post("/v1/chat/completions", status_code=200)
    async def complete(request: Request[object, object, object]) -> Streamed:
        body = await request.json()
        count = int(body.get("max_tokens") or 16)

        async def frames() -> AsyncIterator[bytes]:
            for i in range(count):
                await asyncio.sleep(1 / rate)
                finish = "length" if i == count - 1 else None
                delta = {"choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": finish}]}
                yield f"data: {json.dumps(delta)}\n\n".encode()
            usage = {"prompt_tokens": 20, "completion_tokens": count, "total_tokens": 20 + count}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode()

        return Streamed(frames(), media_type="text/event-stream")

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app = Litestar([models, complete, health], openapi_config=None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_paced(rate: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-paced", str(port), "--rate", str(rate)])
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc=proc)
    return proc, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="the upstream's decode threads")
    parser.add_argument("--llama-server", help="use this llama-server binary as the upstream")
    parser.add_argument(
        "--paced",
        action="store_true",
        help="a synthetic upstream that streams --rate tokens/s per stream and computes nothing "
        "(isolates the front-end's own cost on a busy machine)",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="--paced: tokens/s per stream")
    parser.add_argument("--serve-paced", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.serve_paced:
        serve_paced(args.serve_paced, args.rate)
        return
    counts = [int(c) for c in args.clients.split(",")]
    slots = max(counts)
    home = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    upstream_proc: subprocess.Popen[bytes] | None = None
    upstream_server: CliServer | None = None
    if args.paced:
        upstream_proc, upstream_url = start_paced(args.rate)
        upstream_key, kind = "none", f"paced synthetic ({args.rate:g} tokens/s per stream)"
    elif args.llama_server:
        upstream_proc, upstream_url = start_llama_server(args.llama_server, slots, args.threads)
        upstream_key, kind = "none", "llama-server on the packaged model"
    else:
        upstream_server = CliServer(home / "upstream", args=("--threads", str(args.threads), "--parallel", str(slots)))
        (home / "upstream").mkdir()
        upstream_server.start()
        upstream_url = upstream_server.base_url
        upstream_key = toolstudio("keys", "create", data_dir=upstream_server.data_dir).strip()
        kind = "toolstudio on the packaged model"
    (home / "front").mkdir()
    front = CliServer(home / "front", args=("--upstream", upstream_url, "--upstream-key", upstream_key)).start()
    front_key = toolstudio("keys", "create", data_dir=front.data_dir).strip()
    try:
        sides = {
            "direct": openai.OpenAI(base_url=f"{upstream_url}/v1", api_key=upstream_key, max_retries=0, timeout=600),
            "front-end": openai.OpenAI(base_url=f"{front.base_url}/v1", api_key=front_key, max_retries=0, timeout=600),
        }
        for client in sides.values():
            load(client, 1, 999, 8)  # warm-up: connections, caches
        assert front.proc is not None
        upstream_pid = upstream_proc.pid if upstream_proc is not None else upstream_server.proc.pid  # type: ignore[union-attr]
        best: dict[str, dict[int, Result]] = {"direct": {}, "front-end": {}}
        front_cpu: dict[int, float] = {}
        upstream_cpu: dict[int, float] = {}
        for n in counts:
            for r in range(args.rounds):
                # Each side its own prompts (the round number is in them), so neither finds the
                # other's prefixes in the upstream's cache; the order alternates between rounds.
                order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))
                for side, client in order:
                    before, upstream_before = cpu_seconds(front.proc.pid), cpu_seconds(upstream_pid)
                    result = load(client, n, 2 * r + (side == "front-end"), args.tokens)
                    tokens = max(1, result.tokens)
                    if side == "front-end":
                        per_token = (cpu_seconds(front.proc.pid) - before) / tokens * 1000
                        front_cpu[n] = min(front_cpu.get(n, per_token), per_token)
                    else:
                        per_token = (cpu_seconds(upstream_pid) - upstream_before) / tokens * 1000
                        upstream_cpu[n] = min(upstream_cpu.get(n, per_token), per_token)
                    if result.failed:
                        print(f"  {side}, {n} clients: {result.failed} streams failed", file=sys.stderr)
                    if n not in best[side] or result.tps > best[side][n].tps:
                        best[side][n] = result
                    print(f"  {side:9} {n} clients round {r}: {result.tps:6.1f} tok/s", file=sys.stderr)
        health = httpx.get(f"{front.base_url}/health").json()
    finally:
        front.stop()
        if upstream_server is not None:
            upstream_server.stop()
        if upstream_proc is not None:
            upstream_proc.terminate()
            upstream_proc.wait()
    rows = []
    print(f"\nupstream: {kind}; {args.threads} threads, {slots} slots; {args.tokens} tokens a stream")
    print(
        "| clients | direct tok/s | via front-end tok/s | ratio | TTFT p50 direct / front-end (ms) | TTFT overhead (ms) "
        "| CPU ms/token: upstream / front-end |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        d, f = best["direct"][n], best["front-end"][n]
        row = {
            "clients": n,
            "direct_tps": round(d.tps, 1),
            "front_tps": round(f.tps, 1),
            "ratio": round(f.tps / d.tps, 3),
            "ttft_direct_ms": round(d.ttft_p50(), 1),
            "ttft_front_ms": round(f.ttft_p50(), 1),
            "ttft_overhead_ms": round(f.ttft_p50() - d.ttft_p50(), 1),
            "front_cpu_ms_per_token": round(front_cpu[n], 2),
            "upstream_cpu_ms_per_token": round(upstream_cpu[n], 2),
            "failed": d.failed + f.failed,
        }
        rows.append(row)
        print(
            f"| {n} | {row['direct_tps']} | {row['front_tps']} | {row['ratio']} | "
            f"{row['ttft_direct_ms']} / {row['ttft_front_ms']} | {row['ttft_overhead_ms']:+} | "
            f"{row['upstream_cpu_ms_per_token']} / {row['front_cpu_ms_per_token']} |"
        )
    print(f"front-end health afterwards: {health}; load average: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"upstream": kind, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
