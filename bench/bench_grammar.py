"""Grammar-constrained vs free decoding on the same engine, model and prompt, plus grammar
compile time (cold and cached).

Decode rows run through `LlamaEngine` (one slot) so they include everything a request pays
for a grammar: the sampler, the grammar checks and the tool-call parser. Ratios are against
free decoding measured in the same run (the machines are shared and noisy).

  free             no grammar
  json_schema      country_pick-like schema, check-first sampling (the engine's default)
  json_schema gf   the same with the grammar applied to the whole vocabulary every step
                   (`grammar_check_first=False`, what a grammar placed first in the chain does)
  long_list        a schema that forces a long array of objects (more tokens per run)
  long_list gf     the same, grammar-first
  json_object      any JSON object
  tool call        generic-format tool call, tool_choice=required

Usage: python bench/bench_grammar.py [--runs 5] [--tokens 160] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.config import EngineConfig, SamplingDefaults
from runtime.engine.grammar import cache, schema_grammar
from runtime.engine.llama import LlamaEngine, PreparedPrompt
from runtime.engine.sampler import GrammarMatcher
from runtime.engine.toolcalls import GenericFormat
from runtime.events import TextDelta, ToolCallDelta, ToolCallStart, Usage
from runtime.ir import ChatRequest, Message, OutputFormat, Sampling, TextPart, ToolChoice, ToolSpec
from runtime.model_source import embedded_model

PROMPT = "You answer in JSON. List some countries worth visiting, each with its capital and a short note."
COUNTRY = {
    "type": "object",
    "properties": {
        "country": {"type": "string", "enum": ["Japan", "Egypt", "Peru"]},
        "capital": {"type": "string"},
        "note": {"type": "string"},
    },
    "required": ["country", "capital", "note"],
    "additionalProperties": False,
}
LONG_LIST = {
    "type": "object",
    "properties": {
        "countries": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "capital": {"type": "string"}},
                "required": ["name", "capital"],
                "additionalProperties": False,
            },
            "minItems": 12,
        }
    },
    "required": ["countries"],
    "additionalProperties": False,
}
WEATHER = ToolSpec(
    "get_weather",
    "Get the current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
BIG_TOOLSET = [
    ToolSpec(
        f"tool_{i}",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 200},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                "mode": {"type": "string", "enum": ["fast", "exact", "fuzzy"]},
                "filters": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+:[a-z0-9]+$"}},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    )
    for i in range(20)
]


@dataclasses.dataclass
class Run:
    tokens: int
    decode_seconds: float

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.decode_seconds > 0 and self.tokens > 1 else 0.0


async def one(engine: LlamaEngine, request: ChatRequest) -> Run:
    first = last = 0.0
    tokens = 0
    async for event in engine.generate(request):
        now = time.perf_counter()
        if isinstance(event, TextDelta | ToolCallStart | ToolCallDelta):
            first = first or now
            last = now
        elif isinstance(event, Usage):
            tokens = event.completion_tokens
    return Run(tokens, last - first)


def grammar_first(engine: LlamaEngine) -> Callable[[], None]:
    """Make the engine apply grammars to the whole vocabulary every step; returns an undo."""
    original = engine._prepare

    def prepare(request: ChatRequest) -> PreparedPrompt:
        p = original(request)
        return dataclasses.replace(p, params=dataclasses.replace(p.params, grammar_check_first=False))

    engine._prepare = prepare  # type: ignore[method-assign]

    def undo() -> None:
        engine._prepare = original  # type: ignore[method-assign]

    return undo


def compile_times(engine: LlamaEngine, label: str, build: Callable[[], str], repeat: int = 50) -> tuple[float, float]:
    """(cold ms, cached ms): schema -> GBNF -> native grammar, then the same again."""
    colds, warms = [], []
    for _ in range(repeat):
        cache.clear()
        t0 = time.perf_counter()
        GrammarMatcher(engine.model.vocab, build()).close()
        t1 = time.perf_counter()
        GrammarMatcher(engine.model.vocab, build()).close()
        t2 = time.perf_counter()
        colds.append(t1 - t0)
        warms.append(t2 - t1)
    cold, warm = statistics.median(colds) * 1000, statistics.median(warms) * 1000
    print(f"| {label:<34} | {cold:>9.3f} | {warm:>10.3f} | {cold / warm:>7.1f}x |")
    return cold, warm


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    engine = LlamaEngine(
        EngineConfig(model_path=embedded_model(), threads=args.threads, parallel=1),
        model_id="smollm2",
        defaults=SamplingDefaults(),
    )
    messages = [Message("user", [TextPart(PROMPT)])]

    def request(seed: int, **kwargs: Any) -> ChatRequest:
        return ChatRequest("smollm2", messages, Sampling(seed=seed, max_tokens=args.tokens), **kwargs)

    rows: list[tuple[str, dict[str, Any], bool]] = [
        ("free", {}, False),
        ("json_schema", {"output_format": OutputFormat("json_schema", COUNTRY)}, False),
        ("json_schema gf", {"output_format": OutputFormat("json_schema", COUNTRY)}, True),
        ("long_list", {"output_format": OutputFormat("json_schema", LONG_LIST)}, False),
        ("long_list gf", {"output_format": OutputFormat("json_schema", LONG_LIST)}, True),
        ("json_object", {"output_format": OutputFormat("json_object")}, False),
        ("tool call (generic, required)", {"tools": [WEATHER], "tool_choice": ToolChoice("required")}, False),
    ]
    try:
        await one(engine, request(0))  # warm-up: loads weights into cache, fills the prefix cache
        results: dict[str, list[Run]] = {name: [] for name, _, _ in rows}
        for i in range(args.runs):  # interleaved, so load changes hit every row alike
            for name, kwargs, gf in rows:
                undo = grammar_first(engine) if gf else None
                try:
                    results[name].append(await one(engine, request(100 + i, **kwargs)))
                finally:
                    if undo:
                        undo()

        print(f"\nSmolLM2-135M Q4_1, {args.threads} threads, temperature 0.8, up to {args.tokens} tokens,")
        print(f"median of {args.runs} runs (seeds differ per run, same across rows)\n")
        print("| decoding                           | tokens | tokens/s | vs free |")
        print("|------------------------------------|--------|----------|---------|")
        base = statistics.median(r.tps for r in results["free"])
        for name, _, _ in rows:
            runs = results[name]
            tps = statistics.median(r.tps for r in runs)
            tokens = statistics.median(r.tokens for r in runs)
            print(f"| {name:<34} | {tokens:>6.0f} | {tps:>8.1f} | {tps / base:>7.2f} |")

        fmt = GenericFormat()
        print("\nGrammar compile: JSON Schema -> GBNF -> llama.cpp grammar, median of 50\n")
        print("| grammar                            | cold (ms) | cached (ms) | speedup |")
        print("|------------------------------------|-----------|-------------|---------|")
        compile_times(engine, "country_pick schema", lambda: schema_grammar(COUNTRY))
        compile_times(engine, "long_list schema", lambda: schema_grammar(LONG_LIST))
        compile_times(
            engine, "1 tool, required (generic)", lambda: fmt.grammar([WEATHER], ToolChoice("required"), True).gbnf
        )
        compile_times(
            engine, "20 tools, auto (generic)", lambda: fmt.grammar(BIG_TOOLSET, ToolChoice("auto"), True).gbnf, 20
        )
    finally:
        await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
