"""Many conversations, few slots: time to first token when a conversation comes back.

N conversations with a long shared-nothing history take turns on a server with fewer slots
than conversations, so every turn finds its slot taken by another conversation. Measured
with the host-RAM KV cache (`--cache-ram`, the default) and without it (`--cache-ram 0`),
in the same run, plus the raw low-level prefill of the same prompt as the baseline.

Usage: python bench/bench_prompt_cache.py [--conversations 6] [--slots 2] [--turns 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raw import RawSequence, new_context
from runtime.model_source import embedded_model
from tests.servers import CliServer, toolstudio

TOPICS = ["gardening", "sailing", "baking", "astronomy", "chess", "pottery", "cycling", "jazz"]


def history(i: int) -> list[dict[str, Any]]:
    topic = TOPICS[i % len(TOPICS)]
    notes = " ".join(f"Note {n} about {topic}: keep practising and write down what you learn." for n in range(30))
    return [{"role": "system", "content": f"You are an expert in {topic}. Conversation {i}. {notes}"}]


def run_server(flags: tuple[str, ...], conversations: int, slots: int, turns: int) -> tuple[list[float], int, int]:
    home = Path(tempfile.mkdtemp())
    server = CliServer(home, args=("--temp", "0", "--parallel", str(slots), *flags)).start()
    try:
        key = toolstudio("keys", "create", data_dir=home).strip()
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=300)
        chats = [history(i) for i in range(conversations)]
        ttfts: list[float] = []
        prompt_tokens = cached = 0
        for turn in range(turns):
            for messages in chats:
                messages.append({"role": "user", "content": f"Question {turn}: what should I try next?"})
                started = time.perf_counter()
                stream = client.chat.completions.create(
                    model="default",
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                first: float | None = None
                text = ""
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter() - started
                        text += chunk.choices[0].delta.content
                    if chunk.usage is not None and turn > 0:
                        prompt_tokens += chunk.usage.prompt_tokens
                        details = chunk.usage.prompt_tokens_details
                        cached += details.cached_tokens or 0 if details else 0
                messages.append({"role": "assistant", "content": text})
                if turn > 0 and first is not None:  # the first turn is cold for everyone
                    ttfts.append(first)
        return ttfts, prompt_tokens, cached
    finally:
        server.stop()


def raw_prefill_seconds(n_tokens: int) -> float:
    from runtime.engine.model import LlamaModel

    model = LlamaModel(embedded_model())
    sequence = RawSequence(new_context(model.model, os.cpu_count() or 1), model.vocab)
    tokens = model.tokenize(history(0)[0]["content"] * 4, add_special=False)[:n_tokens]
    runs = []
    for _ in range(3):
        sequence.reset()
        started = time.perf_counter()
        sequence.decode(tokens, 0)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for name, flags in (("host cache on (default)", ()), ("--cache-ram 0", ("--cache-ram", "0"))):
        ttfts, prompt_tokens, cached = run_server(flags, args.conversations, args.slots, args.turns)
        rows.append((name, statistics.median(ttfts), max(ttfts), cached / max(prompt_tokens, 1)))
        mean_prompt = prompt_tokens // max(len(ttfts), 1)
    raw = raw_prefill_seconds(mean_prompt)

    print(
        f"\n{args.conversations} conversations on {args.slots} slots, turns 2..{args.turns}, "
        f"mean prompt {mean_prompt} tokens; raw low-level prefill of that prompt: {raw * 1000:.0f} ms"
    )
    print("\n| setup | TTFT p50 ms | TTFT max ms | prompt tokens from cache | TTFT p50 / raw prefill |")
    print("|---|---|---|---|---|")
    for name, p50, worst, share in rows:
        print(f"| {name} | {p50 * 1000:.0f} | {worst * 1000:.0f} | {share:.0%} | {p50 / raw:.2f} |")


if __name__ == "__main__":
    main()
