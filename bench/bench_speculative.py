"""Speculative decoding: decode tokens/s and acceptance, with and without drafts, in one run.

The engine's scheduler in-process (no HTTP), greedy, one request at a time, against the same
scheduler without speculation and against raw llama.cpp (bench/raw.py) on the same prompts:

  plain             no drafts (the baseline the ratios divide by)
  ngram             --spec ngram, draft length chosen from this machine's measured costs
  ngram-always      n-gram drafts of up to --draft-max tokens at every step (cost table
                    flattened): what adaptivity saves where drafting cannot pay
  draft-self        --model-draft with the packaged model as its own draft (drafting costs
                    as much as decoding, so the measured costs should choose no drafts)
  draft-self-always the same, drafting at every step: acceptance ~1, so the row shows what
                    verification and drafting cost

Workloads: "edit" (print code again with a rename: output repeats the prompt), "json" (repeat a
JSON record with one change) and "prose" (a story: little to look up).

Usage: python bench/bench_speculative.py [--runs 3] [--tokens 160] [--threads 2] [--draft-max 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raw import RawSequence, new_context
from runtime.config import EngineConfig
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import SamplerParams
from runtime.engine.scheduler import Done, Scheduler, SequenceJob, Token
from runtime.engine.speculative import DraftLength
from runtime.model_source import embedded_model

GREEDY = SamplerParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
CODE = """def area(width, height):
    total = width * height
    return total


def perimeter(width, height):
    total = 2 * (width + height)
    return total


def describe(width, height):
    total = area(width, height)
    return f"{width} x {height} = {total}"
"""
RECORD = {
    "name": "Ada Lovelace",
    "born": 1815,
    "died": 1852,
    "languages": ["English", "French", "Italian"],
    "field": "mathematics",
    "known_for": ["Analytical Engine notes", "first published algorithm"],
}
WORKLOADS = {
    "edit": f"Rename the variable total to result in this code and print the whole code again:\n\n{CODE}",
    "json": f"Repeat this JSON record exactly, but with the died field set to 1853:\n{json.dumps(RECORD, indent=2)}",
    "prose": "Write a long, detailed story about a lighthouse keeper and a storm.",
}


def prompt(model: LlamaModel, text: str, run: int) -> list[int]:
    # A different first line each run: no run reuses another's KV cache.
    chat = f"<|im_start|>system\nRun {run}.<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return model.tokenize(chat, add_special=False)


def decode_speed(sched: Scheduler, tokens: list[int], n_tokens: int) -> tuple[float, int]:
    """(tokens/s from the first token to the last, tokens)"""
    items: queue.Queue[Token | Done] = queue.Queue()
    sched.submit(SequenceJob(tokens, GREEDY, n_tokens, items.put))
    stamps = []
    while not isinstance(items.get(timeout=600), Done):
        stamps.append(time.perf_counter())
    return ((len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0), len(stamps)


def raw_speed(model: LlamaModel, threads: int, tokens: list[int], n_tokens: int) -> float:
    ctx = new_context(model.model, threads)
    sequence = RawSequence(ctx, model.vocab)
    try:
        done = sequence.generate(tokens, n_tokens)
    finally:
        sequence.close()
        llama_cpp.llama_free(ctx)
    return (done.tokens - 1) / done.decode_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--draft-max", type=int, default=8)
    args = parser.parse_args()

    model = LlamaModel(embedded_model())
    base = EngineConfig(
        model_path=model.path, ctx_size=2048, threads=args.threads, parallel=1, draft_max=args.draft_max
    )
    configs = {
        "plain": base,
        "ngram": dataclasses.replace(base, spec_ngram=True),
        "ngram-always": dataclasses.replace(base, spec_ngram=True),
        "draft-self": dataclasses.replace(base, draft_model_path=model.path),
        "draft-self-always": dataclasses.replace(base, draft_model_path=model.path),
    }
    results: dict[tuple[str, str], list[float]] = {}
    accepted: dict[tuple[str, str], tuple[int, int, int]] = {}  # drafted, kept, tokens
    costs: dict[str, str] = {}
    schedulers = {}
    for name, config in configs.items():
        sched = Scheduler(model, config)
        if sched.draft_length is not None and name.endswith("-always"):
            sched.draft_length = DraftLength([1.0] * len(sched.draft_length.cost), learn=False)
        schedulers[name] = sched
    raw: dict[str, list[float]] = {w: [] for w in WORKLOADS}
    try:
        for run in range(args.runs):
            for workload, text in WORKLOADS.items():
                tokens = prompt(model, text, run)
                raw[workload].append(raw_speed(model, args.threads, tokens, args.tokens))
                for name, sched in schedulers.items():  # interleaved: load changes hit every row alike
                    drafted, kept = sched.drafted, sched.accepted
                    tps, produced = decode_speed(sched, tokens, args.tokens)
                    results.setdefault((workload, name), []).append(tps)
                    d, k, t = accepted.get((workload, name), (0, 0, 0))
                    accepted[(workload, name)] = (d + sched.drafted - drafted, k + sched.accepted - kept, t + produced)
        for name in ("ngram", "draft-self"):
            length = schedulers[name].draft_length
            assert length is not None
            costs[name] = f"{' '.join(f'{c:.2f}' for c in length.cost)} (step overhead {length.overhead * 1000:.1f} ms)"
    finally:
        for sched in schedulers.values():
            sched.close()

    print(
        f"\nSmolLM2-135M, {args.threads} threads, greedy, {args.tokens} tokens, one request at a time, "
        f"median of {args.runs} runs; draft-max {args.draft_max}"
    )
    for name, cost in costs.items():
        print(f"{name}: cost of a step with k = 0..{args.draft_max} draft tokens, as the scheduler learnt it: {cost}")
    print()
    print("| workload | path              | tokens/s | vs plain | vs raw | drafted | kept | acceptance | tokens/step |")
    print("|----------|-------------------|----------|----------|--------|---------|------|------------|-------------|")
    for workload in WORKLOADS:
        raw_tps = statistics.median(raw[workload])
        plain = statistics.median(results[(workload, "plain")])
        for name in configs:
            tps = statistics.median(results[(workload, name)])
            drafted, kept, produced = accepted[(workload, name)]
            rate = f"{kept / drafted:.2f}" if drafted else "-"
            steps = produced - kept  # each step yields one sampled token plus the draft tokens kept
            per_step = f"{produced / steps:.2f}" if steps else "-"
            print(
                f"| {workload:<8} | {name:<17} | {tps:>8.1f} | {tps / plain:>8.2f} | {tps / raw_tps:>6.2f} "
                f"| {drafted:>7} | {kept:>4} | {rate:>10} | {per_step:>11} |"
            )
        print(f"| {workload:<8} | raw llama.cpp     | {raw_tps:>7.1f} | {raw_tps / plain:>8.2f} | {1:>6.2f} | | | | |")


if __name__ == "__main__":
    main()
