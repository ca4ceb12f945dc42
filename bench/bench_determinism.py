"""Greedy determinism: does the same request give the same tokens however its prompt reached
the KV cache and whatever else is decoded alongside? And what does each remedy cost?

For each of N prompts (greedy, `--tokens` tokens), through the engine itself (LlamaEngine, the
server's scheduler and prompt cache; no HTTP):

  cold        a fresh cache scope: the whole prompt is prefilled
  warm        the same request again: all but its last token come from the slot's KV
  shared      a sibling request (same system prompt, another question) ran first in the same
              scope: the shared prefix comes from its KV, the rest is prefilled
  follow-up   the next turn (the cold reply and a new question appended): after the first turn
              in the same scope (its reply's KV reused) versus sent cold
  chunked     prefilled while another request decodes: in 64-token pieces, batched with the
              other request's tokens, and decoded beside it
  concurrent  decoded together with three other requests, in the same batches

Each mode's output is compared with cold, token for token, under each setting of
`runtime.engine.scheduler.DETERMINISM` ("off": llama.cpp's defaults, flash attention on;
"prompt": the server's default on a CPU-only build; "full"), in the same run. So is the cost:
prefill tokens/s of a long cold prompt, decode tokens/s of one stream and of four together.
`--threads 1` (the default) keeps the timings steady on a busy machine.

Usage: python bench/bench_determinism.py [--prompts 8] [--tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine import scheduler
from runtime.engine.llama import LlamaEngine
from runtime.events import TextDelta, Usage
from runtime.ir import ChatRequest, Message, Sampling, TextPart
from runtime.model_source import embedded_model

SYSTEM = "You are a patient teacher. " + "Explain every step, use short sentences, and give one example. " * 8
QUESTIONS = [
    "What is photosynthesis?",
    "How do tides work?",
    "Why is the sky blue?",
    "What is a prime number?",
    "How does a bicycle stay upright?",
    "What causes the seasons?",
    "How do vaccines work?",
    "What is inflation in economics?",
    "How does a rainbow form?",
    "What is the water cycle?",
    "Why do cats purr?",
    "How do airplanes fly?",
    "What is gravity?",
    "How do bees make honey?",
    "What is a black hole?",
    "How does the heart pump blood?",
]
FILLER = "Here is some background you may use. " * 60  # long prompts: several prefill chunks


def request(question: str, *, long: bool, tokens: int, scope: str) -> ChatRequest:
    user = f"{FILLER}{question}" if long else question
    messages = [Message("system", [TextPart(SYSTEM)]), Message("user", [TextPart(user)])]
    return ChatRequest(
        model="m",
        messages=messages,
        sampling=Sampling(temperature=0.0, max_tokens=tokens),
        cache_scope=scope,
    )


def next_turn(chat: ChatRequest, reply: str) -> ChatRequest:
    """The conversation's next request: the reply, and a new question."""
    more = [Message("assistant", [TextPart(reply)]), Message("user", [TextPart("Why is that?")])]
    return dataclasses.replace(chat, messages=[*chat.messages, *more])


async def run(engine: LlamaEngine, chat: ChatRequest) -> tuple[str, Usage]:
    text, usage = "", Usage(0, 0)
    async for event in engine.generate(chat):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Usage):
            usage = event
    return text, usage


async def modes(engine: LlamaEngine, prompts: int, tokens: int) -> dict[str, int]:
    """Outputs that differ from cold, per mode, over `prompts` prompts."""
    differ = {"warm": 0, "shared": 0, "follow-up": 0, "chunked": 0, "concurrent": 0}
    for i in range(prompts):
        question, sibling = QUESTIONS[i % len(QUESTIONS)], QUESTIONS[(i + 1) % len(QUESTIONS)]
        long = i % 2 == 1
        cold, _ = await run(engine, request(question, long=long, tokens=tokens, scope=uuid.uuid4().hex))

        scope = uuid.uuid4().hex
        await run(engine, request(question, long=long, tokens=tokens, scope=scope))
        warm, usage = await run(engine, request(question, long=long, tokens=tokens, scope=scope))
        assert usage.cached_tokens == usage.prompt_tokens - 1, usage
        differ["warm"] += warm != cold

        scope = uuid.uuid4().hex
        await run(engine, request(sibling, long=long, tokens=tokens, scope=scope))
        shared, usage = await run(engine, request(question, long=long, tokens=tokens, scope=scope))
        assert 0 < usage.cached_tokens < usage.prompt_tokens - 1, usage
        differ["shared"] += shared != cold

        scope = uuid.uuid4().hex
        await run(engine, request(question, long=long, tokens=tokens, scope=scope))
        after, usage = await run(engine, next_turn(request(question, long=long, tokens=tokens, scope=scope), cold))
        assert usage.cached_tokens > 0, usage
        fresh, _ = await run(engine, next_turn(request(question, long=long, tokens=tokens, scope="f" + scope), cold))
        differ["follow-up"] += after != fresh

        # Another request decodes while this one is prefilled (so in --prefill-chunk pieces).
        busy = asyncio.ensure_future(run(engine, request(sibling, long=False, tokens=tokens * 2, scope="busy")))
        await asyncio.sleep(0.3)
        chunked, _ = await run(engine, request(question, long=long, tokens=tokens, scope=uuid.uuid4().hex))
        await busy
        differ["chunked"] += chunked != cold

        others = [request(QUESTIONS[(i + k) % len(QUESTIONS)], long=False, tokens=tokens, scope="x") for k in (2, 3, 4)]
        together = await asyncio.gather(
            run(engine, request(question, long=long, tokens=tokens, scope=uuid.uuid4().hex)),
            *(run(engine, other) for other in others),
        )
        differ["concurrent"] += together[0][0] != cold
    return differ


async def cost(engine: LlamaEngine, tokens: int) -> dict[str, float]:
    """Prefill tokens/s of a long cold prompt; decode tokens/s of one stream and of four."""
    chat = request("Summarise the background.", long=True, tokens=1, scope=uuid.uuid4().hex)
    started = time.perf_counter()
    _, usage = await run(engine, chat)
    prefill = usage.prompt_tokens / (time.perf_counter() - started)

    async def decode(n: int) -> float:
        chats = [request(QUESTIONS[k], long=False, tokens=tokens * 2, scope=uuid.uuid4().hex) for k in range(n)]
        for chat in chats:  # prompts cached first: the timing below is decoding only
            await run(engine, dataclasses.replace(chat, sampling=Sampling(temperature=0.0, max_tokens=1)))
        started = time.perf_counter()
        results = await asyncio.gather(*(run(engine, chat) for chat in chats))
        return sum(u.completion_tokens for _, u in results) / (time.perf_counter() - started)

    return {"prefill_tps": prefill, "decode_tps_1": await decode(1), "decode_tps_4": await decode(4)}


async def measure(mode: scheduler.Determinism, args: argparse.Namespace) -> tuple[dict[str, int], dict[str, float]]:
    scheduler.DETERMINISM = mode
    config = EngineConfig(
        model_path=embedded_model(), threads=args.threads, parallel=4, cache_ram_mib=0, prefill_chunk=64
    )
    engine = LlamaEngine(config, model_id="m", defaults=SamplingDefaults(temperature=0.0))
    try:
        differ = await modes(engine, args.prompts, args.tokens)
        print(f"{mode}: outputs differing: {differ}", flush=True)
        speed = await cost(engine, args.tokens)
        print(f"{mode}: {speed}", flush=True)
        return differ, speed
    finally:
        await engine.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    modes_: tuple[scheduler.Determinism, ...] = ("off", "prompt", "full")
    for mode in modes_:
        differ, speed = asyncio.run(measure(mode, args))
        rows.append((mode, differ, speed))
    print(f"\n{args.prompts} prompts, {args.tokens} greedy tokens each, {args.threads} thread(s); outputs differing:")
    print(
        "| DETERMINISM | warm | shared prefix | follow-up | chunked | concurrent | prefill tok/s | decode tok/s 1 / 4 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, differ, speed in rows:
        counts = " | ".join(str(differ[k]) for k in ("warm", "shared", "follow-up", "chunked", "concurrent"))
        print(
            f"| {mode} | {counts} | {speed['prefill_tps']:.0f} | {speed['decode_tps_1']:.0f} / {speed['decode_tps_4']:.0f} |"
        )


if __name__ == "__main__":
    main()
