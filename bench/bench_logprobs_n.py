"""What logprobs and `n > 1` cost, through the real server (HTTP + the openai SDK), against
the plain request measured in the same run on the same server.

  logprobs off      one greedy stream, no logprobs (nothing computed)
  top_logprobs=5    the same with `logprobs: true, top_logprobs: 5` (a log-softmax over the
                    whole vocabulary and a top-5 per token)
  4 requests        four concurrent requests with one fresh prompt (seeds 0-3): four prefills
  n=4               one request with `n: 4` and the same prompt: one prefill, copied

Prompts differ per run (a run-number prefix), so no run reuses another's cached prompt.
Aggregate tokens/s = completion tokens / wall time of the whole request(s).

Usage: python bench/bench_logprobs_n.py [--runs 5] [--tokens 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import CliServer, toolstudio

STORY = "Write a long, detailed story about a lighthouse keeper and a storm."
CONTEXT = "The keeper's log, day by day, before the storm: " + "wind from the west, calm sea, lamp cleaned. " * 25


def messages(i: int, long: bool = False) -> list[dict[str, str]]:
    text = f"Run {i}. {CONTEXT if long else ''}{STORY}"
    return [{"role": "user", "content": text}]


def timed(call: Any) -> tuple[float, int]:
    """(seconds, completion tokens) of one call returning a ChatCompletion or a list of them."""
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    results = result if isinstance(result, list) else [result]
    return seconds, sum(r.usage.completion_tokens for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    rows: dict[str, list[tuple[float, int]]] = {k: [] for k in ("off", "lp5", "four", "n4")}
    with tempfile.TemporaryDirectory() as home:
        server = CliServer(Path(home), args=("--threads", str(args.threads), "--parallel", "4")).start()
        try:
            key = toolstudio("keys", "create", data_dir=Path(home)).strip()
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, timeout=600)
            base = {"model": "default", "max_tokens": args.tokens}

            def single(i: int, **extra: Any) -> Any:
                return client.chat.completions.create(messages=messages(i), temperature=0.0, **base, **extra)

            def separate(i: int) -> list[Any]:
                def one(seed: int) -> Any:
                    return client.chat.completions.create(
                        messages=messages(i, long=True), temperature=0.8, seed=seed, **base
                    )

                with ThreadPoolExecutor(4) as pool:
                    return list(pool.map(one, range(4)))

            def together(i: int) -> Any:
                return client.chat.completions.create(
                    messages=messages(i, long=True), temperature=0.8, seed=0, n=4, **base
                )

            single(10_000, logprobs=True, top_logprobs=5)  # warm-up
            # Interleaved, so drift on a shared machine hits both sides of each ratio alike.
            for run in range(args.runs):
                rows["off"].append(timed(lambda r=run: single(2 * r)))
                rows["lp5"].append(timed(lambda r=run: single(2 * r + 1, logprobs=True, top_logprobs=5)))
                rows["four"].append(timed(lambda r=run: separate(1000 + 2 * r)))
                rows["n4"].append(timed(lambda r=run: together(1000 + 2 * r + 1)))
        finally:
            server.stop()

    def tps(name: str) -> float:
        return statistics.median(tokens / seconds for seconds, tokens in rows[name])

    def tokens(name: str) -> float:
        return statistics.median(t for _, t in rows[name])

    print(
        f"\nSmolLM2-135M Q4_1, {args.threads} threads, --parallel 4, max {args.tokens} tokens, median of {args.runs}\n"
    )
    print("| run                               | tokens | tokens/s | ratio |")
    print("|-----------------------------------|--------|----------|-------|")
    table = [
        ("logprobs off (greedy)", "off", "off"),
        ("top_logprobs=5", "lp5", "off"),
        ("4 separate requests (long prompt)", "four", "four"),
        ("n=4, one request (long prompt)", "n4", "four"),
    ]
    for label, name, base in table:
        print(f"| {label:<33} | {tokens(name):>6.0f} | {tps(name):>8.1f} | {tps(name) / tps(base):.3f} |")


if __name__ == "__main__":
    main()
