"""Decode speed and time to first token: the server (HTTP + SSE + the openai SDK) against
raw llama-cpp-python in the same run, same model, prompt, thread count and token budget.

Two raw baselines:
  raw-lowlevel  the fastest way to drive llama-cpp-python: llama_decode + a native greedy
                sampler, one sequence (what the server's engine is built on)
  raw-highlevel Llama.create_completion(stream=True), what most Python servers use

Usage: python bench/bench_decode.py [--runs 5] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raw import RawSequence
from runtime.engine.template import ChatTemplate
from runtime.ir import Message, TextPart
from runtime.model_source import embedded_model
from tests.servers import CliServer, toolstudio

QUESTION = "Write a long, detailed story about a lighthouse keeper and a storm."


@dataclass
class Run:
    ttft: float  # seconds from request to the first token
    tokens: int
    decode_seconds: float  # first token to last token

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0


def messages(i: int) -> list[dict[str, str]]:
    # A different first line each run, so no run reuses another's KV cache.
    return [{"role": "system", "content": f"Run {i}. You are a storyteller."}, {"role": "user", "content": QUESTION}]


def prompt_text(i: int, model: llama_cpp.Llama) -> str:
    template = ChatTemplate(model.metadata.get("tokenizer.chat_template"))
    return template.render([Message(m["role"], [TextPart(m["content"])]) for m in messages(i)])  # type: ignore[arg-type]


def raw_lowlevel(model: llama_cpp.Llama, prompt: str, n_tokens: int) -> Run:
    tokens = model.tokenize(prompt.encode(), add_bos=False, special=True)
    sequence = RawSequence(model.ctx, llama_cpp.llama_model_get_vocab(model.model))
    try:
        done = sequence.generate(tokens, n_tokens)
    finally:
        sequence.close()
    return Run(done.ttft, done.tokens, done.decode_seconds)


def raw_highlevel(model: llama_cpp.Llama, prompt: str, n_tokens: int) -> Run:
    model.reset()
    started = time.perf_counter()
    first, produced = 0.0, 0
    for _ in model.create_completion(prompt, max_tokens=n_tokens, temperature=0.0, stream=True):
        produced += 1
        if produced == 1:
            first = time.perf_counter()
    return Run(first - started, produced, time.perf_counter() - first)


def server_run(client: openai.OpenAI, i: int, n_tokens: int) -> Run:
    started = time.perf_counter()
    first, produced, last = 0.0, 0, 0.0
    stream = client.chat.completions.create(
        model="default",
        messages=messages(i),
        max_tokens=n_tokens,
        temperature=0.0,
        stream=True,  # type: ignore[arg-type]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            produced += 1  # one chunk per token (a split UTF-8 character would merge two)
            last = time.perf_counter()
            if produced == 1:
                first = last
    return Run(first - started, produced, last - first)


def summarize(name: str, runs: list[Run], base: tuple[float, float] | None) -> tuple[float, float]:
    tps = statistics.median(r.tps for r in runs)
    ttft = statistics.median(r.ttft for r in runs) * 1000
    tokens = statistics.median(r.tokens for r in runs)
    ratio = f"{tps / base[0]:.3f}" if base else "1.000"
    overhead = f"{ttft - base[1]:+.1f}" if base else "+0.0"
    print(f"| {name:<24} | {tokens:>6.0f} | {tps:>8.1f} | {ratio:>9} | {ttft:>9.1f} | {overhead:>13} |")
    return tps, ttft


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    path = embedded_model()
    model = llama_cpp.Llama(str(path), n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    prompts = [prompt_text(i, model) for i in range(args.runs + 1)]
    raw_lowlevel(model, prompts[-1], 8)  # warm-up
    low = [raw_lowlevel(model, prompts[i], args.tokens) for i in range(args.runs)]
    high = [raw_highlevel(model, prompts[i], args.tokens) for i in range(args.runs)]
    del model

    with tempfile.TemporaryDirectory() as home:
        server = CliServer(Path(home), args=("--threads", str(args.threads))).start()
        try:
            key = toolstudio("keys", "create", data_dir=Path(home)).strip()
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key)
            server_run(client, args.runs + 100, 8)  # warm-up
            served = [server_run(client, i, args.tokens) for i in range(args.runs)]
        finally:
            server.stop()

    print(f"\nSmolLM2-135M Q4_1, {args.threads} threads, greedy, {args.tokens} tokens, median of {args.runs} runs\n")
    print("| path                     | tokens | tokens/s | vs raw-ll | TTFT (ms) | TTFT overhead |")
    print("|--------------------------|--------|----------|-----------|-----------|---------------|")
    base = summarize("raw-lowlevel", low, None)
    summarize("raw-highlevel", high, base)
    summarize("toolstudio (HTTP+SDK)", served, base)


if __name__ == "__main__":
    main()
