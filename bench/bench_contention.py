"""Decode speed when another process wants the CPU (a sandboxed tool computing, say).

Measures single-stream tokens/s with the machine quiet and with N busy-looping processes,
for toolstudio with the default (adaptive) thread count, toolstudio with `--threads` fixed
at all cores, and the raw low-level llama-cpp-python loop at all cores and at one thread
fewer, in the same run.

Usage: python bench/bench_contention.py [--tokens 128] [--busy 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raw import RawSequence, new_context
from runtime.model_source import embedded_model
from tests.servers import CliServer, toolstudio

PROMPT = "Write a long story about a lighthouse keeper."


def busy(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(run: Callable[[], float], reps: int, hogs: int) -> float:
    procs = busy(hogs)
    try:
        time.sleep(1.5 if hogs else 0.2)  # the governor looks at the last half second
        return statistics.median(run() for _ in range(reps))
    finally:
        for p in procs:
            p.kill()
            p.wait()


def server_run(args: tuple[str, ...], tokens: int) -> tuple[CliServer, Callable[[], float]]:
    home = Path(tempfile.mkdtemp())
    server = CliServer(home, args=("--temp", "0", *args)).start()
    key = toolstudio("keys", "create", data_dir=home).strip()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=300)

    def run() -> float:
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        produced = 0
        for chunk in stream:
            if chunk.usage is not None:
                produced = chunk.usage.completion_tokens
        return produced / (time.perf_counter() - started)

    run()  # warm-up
    return server, run


def raw_run(threads: int, tokens: int) -> Callable[[], float]:
    from runtime.engine.model import LlamaModel

    model = LlamaModel(embedded_model())
    sequence = RawSequence(new_context(model.model, threads, n_ctx=1024), model.vocab)
    prompt = model.tokenize(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n", add_special=False)

    def run() -> float:
        done = sequence.generate(prompt, tokens)
        return done.tokens / (done.ttft + done.decode_seconds)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--busy", type=int, default=1, help="busy-looping processes in the contended run")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows: list[tuple[str, float, float]] = []

    for name, flags in (
        ("toolstudio, default threads (adaptive)", ()),
        (f"toolstudio, --threads {cores}", ("--threads", str(cores))),
    ):
        server, run = server_run(flags, args.tokens)
        try:
            rows.append((name, measure(run, args.reps, 0), measure(run, args.reps, args.busy)))
        finally:
            server.stop()
    for threads in (cores, max(1, cores - 1)):
        run = raw_run(threads, args.tokens)
        rows.append(
            (f"raw low-level loop, {threads} threads", measure(run, args.reps, 0), measure(run, args.reps, args.busy))
        )

    print(
        f"\nSmolLM2-135M, {cores} cores, {args.tokens} tokens, median of {args.reps}; contended = {args.busy} busy process(es)"
    )
    print("\n| setup | quiet tok/s | contended tok/s | contended / quiet |")
    print("|---|---|---|---|")
    for name, quiet, contended in rows:
        print(f"| {name} | {quiet:.1f} | {contended:.1f} | {contended / quiet:.2f} |")


if __name__ == "__main__":
    main()
