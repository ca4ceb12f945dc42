"""Constrained decoding speed: our GBNF grammar sampler against llguidance, in the same run.

One low-level decode loop (bench/raw.py: `llama_decode`, one sequence, greedy) over the same
prompt, with the sampling step swapped:

  free        no constraint: argmax over the logits
  ours        the engine's `SamplerChain` with our JSON Schema -> GBNF grammar, check-first
              (greedy pick, checked against the grammar; the grammar runs over the whole
              vocabulary only when the pick is rejected): what the server does today
  ours gf     the same grammar applied to the whole vocabulary every step (`grammar_check_first=False`)
  llg mask    llguidance's JSON Schema grammar: the token mask computed every step, applied to
              the logits (`llama_get_logits_ith` as a numpy view, disallowed -> -inf), argmax
  llg check   llguidance, check-first like `ours`: argmax, `validate_tokens` on that one token,
              the full mask only when it is rejected
  llg/gbnf    llguidance running our own GBNF (its GBNF -> Lark conversion), full mask every step

Reported per schema: median tokens/s and its ratio to free decoding, the median time of the
sampling step per token (µs; everything between the logits and the chosen token, grammar
included), llguidance's mask computation alone, whether the greedy outputs are the same text
as ours, and grammar compile times (schema -> grammar object, median of 20).

Greedy outputs of ours and llguidance can differ even though both grammars allow the same
texts: where the grammar forces the next bytes (the rest of an enum value, a property name),
llguidance's mask keeps only the tokens of the canonical tokenization of those bytes (after
`"E` of `"Egypt"` it allows `gypt` but not `g`), while llama.cpp's grammar allows every token
that fits. `validate_tokens` (llg check) still accepts the others.

Rows run interleaved (every variant once per round, several rounds) under whatever load the
shared machine has; compare ratios, not absolute numbers.

Usage: nice -n 10 python bench/bench_llguidance.py [--rounds 5] [--tokens 100] [--threads 2]
Needs `pip install llguidance` (evaluated, not a project dependency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import llguidance
import llguidance.numpy as llg_numpy
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raw import RawSequence, new_context
from runtime.engine.grammar import cache, schema_grammar
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import Candidates, GrammarMatcher, SamplerChain, SamplerParams
from runtime.engine.template import ChatTemplate
from runtime.ir import Message, TextPart
from runtime.model_source import embedded_model

# llguidance allows any run of JSON whitespace by default (a small model can then emit
# newlines until max_tokens); ours allows at most one space (`space ::= " "?`). Same here,
# so both engines allow the same outputs and greedy decoding can be compared token for token.
LIKE_OURS: dict[str, Any] = {"whitespace_pattern": " "}


def llg_tokenizer(vocab: llama_cpp.llama_vocab_p) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for a llama.cpp vocabulary (its own llama.cpp bridge; ~0.2 s
    for SmolLM2's 49,152 tokens, built once per model)."""
    with warnings.catch_warnings():  # the bridge calls a binding llama-cpp-python marks deprecated, per token
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab)


def llg_schema_grammar(schema: Any) -> str:
    """llguidance's grammar for a JSON Schema, whitespace as ours. `ValueError` when the
    schema is not a JSON object; errors in the schema itself surface in `LLMatcher`."""
    if not isinstance(schema, dict):
        raise ValueError("a schema must be an object")
    return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=LIKE_OURS)  # type: ignore[arg-type]


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
# Every kind of rule the compilers generate: enum, integer and decimal ranges, a pattern,
# a format, length bounds, a bounded array, a nullable field. All required, listed in order,
# so both compilers fix the same property order.
TRIP = {
    "type": "object",
    "properties": {
        "country": {"type": "string", "enum": ["Japan", "Egypt", "Peru", "Chile", "Norway"]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "days": {"type": "integer", "minimum": 1, "maximum": 30},
        "budget": {"type": "number", "minimum": 0, "maximum": 20000},
        "start": {"type": "string", "format": "date"},
        "cities": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 2, "maxItems": 5},
        "guide": {"type": ["string", "null"], "minLength": 1, "maxLength": 40},
        "summary": {"type": "string"},
    },
    "required": ["country", "code", "days", "budget", "start", "cities", "guide", "summary"],
    "additionalProperties": False,
}
SCHEMAS = {"country": COUNTRY, "long_list": LONG_LIST, "trip": TRIP}


@dataclass
class Run:
    tokens: list[int]
    seconds: float  # first sampling step to the last token's decode
    step_us: list[float]  # per token: the sampling step (logits -> chosen token)
    mask_us: list[float] = field(default_factory=list)  # llguidance: computing the full mask
    refused: int = 0  # steps where the unconstrained greedy pick was not allowed

    @property
    def tps(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


class Loop:
    """Sequence 0 of one context: the prompt minus its last token stays in the KV cache;
    each run re-decodes that token and generates from there, so runs start alike."""

    def __init__(self, model: LlamaModel, threads: int, prompt: list[int]) -> None:
        self.model = model
        self.ctx = new_context(model.model, threads)
        self.seq = RawSequence(self.ctx, model.vocab)
        self.prompt = prompt
        self.seq.reset()
        self.seq.decode(prompt[:-1], 0)

    def logits(self) -> np.ndarray:
        """The last position's logits as a writable numpy view of llama.cpp's buffer."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.model.n_vocab,))

    def run(self, pick: Callable[[], int | None], max_tokens: int) -> tuple[list[int], float]:
        """Generate with `pick` (returns the next token, or None to stop) until an
        end-of-generation token or `max_tokens`; returns the tokens and the seconds taken."""
        n = len(self.prompt)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), 0, n - 1, -1)
        self.seq.decode(self.prompt[-1:], n - 1)
        out: list[int] = []
        started = time.perf_counter()
        while len(out) < max_tokens:
            token = pick()
            if token is None or self.model.is_eog(token):
                break
            out.append(token)
            self.seq.decode([token], n + len(out) - 1)
        return out, time.perf_counter() - started

    def close(self) -> None:
        self.seq.close()
        llama_cpp.llama_free(self.ctx)


def free(loop: Loop, max_tokens: int) -> Run:
    steps: list[float] = []

    def pick() -> int:
        t0 = time.perf_counter()
        token = int(np.argmax(loop.logits()))
        steps.append(time.perf_counter() - t0)
        return token

    tokens, seconds = loop.run(pick, max_tokens)
    return Run(tokens, seconds, [s * 1e6 for s in steps])


def ours(loop: Loop, gbnf: str, max_tokens: int, *, check_first: bool) -> Run:
    params = SamplerParams(0.0, 1.0, 0, 0.0, grammar=gbnf, grammar_check_first=check_first)
    chain = SamplerChain(loop.model.vocab, loop.model.n_vocab, params)
    steps: list[float] = []

    refused = 0

    def pick() -> int:
        nonlocal refused
        top = int(np.argmax(loop.logits()))  # outside the timing: only to count refusals
        t0 = time.perf_counter()
        token = chain.sample(loop.ctx, -1)
        steps.append(time.perf_counter() - t0)
        refused += token != top
        return token

    try:
        tokens, seconds = loop.run(pick, max_tokens)
    finally:
        chain.close()
    return Run(tokens, seconds, [s * 1e6 for s in steps], refused=refused)


def llg(loop: Loop, tokenizer: llguidance.LLTokenizer, grammar: str, max_tokens: int, *, check_first: bool) -> Run:
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    n_vocab = loop.model.n_vocab
    mask = llg_numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
    steps: list[float] = []
    masks: list[float] = []

    def masked_argmax(logits: np.ndarray) -> int:
        t0 = time.perf_counter()
        llg_numpy.fill_next_token_bitmask(matcher, mask)
        masks.append(time.perf_counter() - t0)
        allowed = np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab]
        logits[allowed == 0] = -np.inf
        return int(np.argmax(logits))

    refused = 0

    def pick() -> int | None:
        nonlocal refused
        t0 = time.perf_counter()
        logits = loop.logits()
        top = token = int(np.argmax(logits))
        if not check_first or matcher.validate_tokens([token]) != 1:
            token = masked_argmax(logits)
        ok = matcher.consume_token(token)
        steps.append(time.perf_counter() - t0)
        refused += token != top
        return token if ok else None

    tokens, seconds = loop.run(pick, max_tokens)
    return Run(tokens, seconds, [s * 1e6 for s in steps], [m * 1e6 for m in masks], refused)


def replay(
    model: LlamaModel, tokenizer: llguidance.LLTokenizer, gbnf: str, llg_grammar: str, tokens: list[int], repeat: int
) -> dict[str, float]:
    """Median µs per token of each constraint step alone (no decoding), replaying `tokens`
    (an output both grammars accept) `repeat` times:

      ours check     `GrammarMatcher.allows` + `accept` on the token (the check that passes)
      ours full      the grammar over the whole vocabulary (`Candidates` reloaded, llama.cpp's
                     grammar sampler applied), then `accept`: a rejected check, or grammar-first
      llg validate   `validate_tokens([token])` + `consume_token`
      llg mask       the full bitmask (`fill_next_token_bitmask`) + `consume_token`
      llg mask+apply the same plus unpacking it onto the logits (-inf) and the argmax
    """
    n_vocab = model.n_vocab
    logits = np.random.default_rng(0).standard_normal(n_vocab).astype(np.float32)
    cand = Candidates(n_vocab)
    times: dict[str, list[float]] = {
        k: [] for k in ("ours check", "ours full", "llg validate", "llg mask", "llg mask+apply")
    }
    mask = llg_numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
    for _ in range(repeat):
        for name in times:
            if name.startswith("ours"):
                matcher = GrammarMatcher(model.vocab, gbnf)
                for token in tokens:
                    t0 = time.perf_counter()
                    if name == "ours full":
                        cand.data["id"], cand.data["logit"], cand.data["p"] = cand._ids, logits, 0.0
                        cand.array.size, cand.array.selected, cand.array.sorted = n_vocab, -1, False
                        llama_cpp.llama_sampler_apply(matcher.sampler, cand.ref)
                    else:
                        assert matcher.allows(token)
                    matcher.accept(token)
                    times[name].append(time.perf_counter() - t0)
                matcher.close()
                continue
            llg_matcher = llguidance.LLMatcher(tokenizer, llg_grammar, log_level=0)
            for token in tokens:
                t0 = time.perf_counter()
                if name == "llg validate":
                    assert llg_matcher.validate_tokens([token]) == 1
                else:
                    llg_numpy.fill_next_token_bitmask(llg_matcher, mask)
                    if name == "llg mask+apply":
                        view = logits.copy()  # stands for llama.cpp's buffer, which is overwritten each step
                        view[np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab] == 0] = -np.inf
                        int(np.argmax(view))
                assert llg_matcher.consume_token(token)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def spread(values: list[float]) -> str:
    """ "median / 90th percentile" of per-token times."""
    ordered = sorted(values)
    return f"{statistics.median(ordered):.0f} / {ordered[int(0.9 * (len(ordered) - 1))]:.0f}"


def compile_ms(build: Callable[[], object], repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        build()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def ours_compile(vocab: llama_cpp.llama_vocab_p, schema: dict[str, Any]) -> None:
    cache.clear()
    GrammarMatcher(vocab, schema_grammar(schema)).close()


def llg_compile(tokenizer: llguidance.LLTokenizer, grammar: Callable[[], str], first_mask: bool) -> None:
    matcher = llguidance.LLMatcher(tokenizer, grammar(), log_level=0)
    if first_mask:  # parts of the lexer are built lazily, on the first mask
        matcher.compute_bitmask()


def valid(text: str, schema: dict[str, Any]) -> str:
    try:
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())
    except json.JSONDecodeError:
        return "cut" if text else "empty"
    except jsonschema.ValidationError:
        return "INVALID"
    return "valid"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replays", type=int, default=5, help="repetitions of the constraint-only replay")
    parser.add_argument("--show", action="store_true", help="print each variant's output text")
    args = parser.parse_args()

    model = LlamaModel(embedded_model())
    t0 = time.perf_counter()
    tokenizer = llg_tokenizer(model.vocab)
    tokenizer_s = time.perf_counter() - t0
    template = ChatTemplate(model.chat_template(), bos_token=model.bos_token, eos_token=model.eos_token)
    prompt_text = template.render([Message("user", [TextPart(PROMPT)])])
    prompt = model.tokenize(prompt_text, add_special=model.add_bos and not prompt_text.startswith(model.bos_token))
    loop = Loop(model, args.threads, prompt)

    gbnf = {name: schema_grammar(schema) for name, schema in SCHEMAS.items()}
    llg_json = {name: llg_schema_grammar(schema) for name, schema in SCHEMAS.items()}
    llg_gbnf = {name: llguidance.grammar_from("gbnf", g) for name, g in gbnf.items()}
    for name, grammar in list(llg_gbnf.items()):
        if error := llguidance.LLMatcher.validate_grammar(grammar, tokenizer):
            print(f"llg/gbnf cannot run our {name} grammar: {' '.join(error.split())[:100]}")
            del llg_gbnf[name]
    variants: dict[str, Callable[[str], Run]] = {
        "ours": lambda s: ours(loop, gbnf[s], args.tokens, check_first=True),
        "ours gf": lambda s: ours(loop, gbnf[s], args.tokens, check_first=False),
        "llg mask": lambda s: llg(loop, tokenizer, llg_json[s], args.tokens, check_first=False),
        "llg check": lambda s: llg(loop, tokenizer, llg_json[s], args.tokens, check_first=True),
        "llg/gbnf": lambda s: llg(loop, tokenizer, llg_gbnf[s], args.tokens, check_first=False),
    }
    try:
        free(loop, args.tokens)  # warm-up
        frees: list[Run] = []
        results: dict[tuple[str, str], list[Run]] = {(s, v): [] for s in SCHEMAS for v in variants}
        for _ in range(args.rounds):  # interleaved: load changes hit every row alike
            frees.append(free(loop, args.tokens))
            for schema in SCHEMAS:
                for name, variant in variants.items():
                    if name != "llg/gbnf" or schema in llg_gbnf:
                        results[schema, name].append(variant(schema))

        base = statistics.median(r.tps for r in frees)
        print(f"\nSmolLM2-135M Q4_1, {args.threads} threads, greedy, up to {args.tokens} tokens, {args.rounds} rounds")
        print(f"llguidance {llguidance.__version__}; LLTokenizer built in {tokenizer_s:.2f} s (once per model)\n")
        print(
            "| schema | decoding | tokens | tokens/s | vs free | step µs/token (med / p90) | top pick refused "
            "| llg mask µs (med / max) | output |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        free_tokens = statistics.median(len(r.tokens) for r in frees)
        print(
            f"| - | free | {free_tokens:.0f} | {base:.1f} | 1.00 | {spread([s for r in frees for s in r.step_us])} | - | - | - |"
        )
        for schema in SCHEMAS:
            reference = loop.model  # for detokenizing
            ours_text = b"".join(reference.piece(t) for t in results[schema, "ours"][0].tokens).decode(
                "utf-8", "replace"
            )
            for name in variants:
                runs = results[schema, name]
                if not runs:
                    continue
                tps = statistics.median(r.tps for r in runs)
                step = spread([s for r in runs for s in r.step_us])
                refused = sum(r.refused for r in runs) / max(1, sum(len(r.tokens) for r in runs))
                masks = [m for r in runs for m in r.mask_us]
                mask = f"{statistics.median(masks):.0f} / {max(masks):.0f}" if masks else "-"
                text = b"".join(reference.piece(t) for t in runs[0].tokens).decode("utf-8", "replace")
                same = "same as ours" if text == ours_text else "differs from ours"
                print(
                    f"| {schema} | {name} | {len(runs[0].tokens)} | {tps:.1f} | {tps / base:.2f} | {step} "
                    f"| {refused:.0%} | {mask} "
                    f"| {valid(text, SCHEMAS[schema])}, {same} |"
                )
                if args.show:
                    print(f"<!-- {name}: {text!r} -->")

        print("\nConstraint cost per token alone, replaying ours' greedy output, median µs (no decoding)\n")
        labels = ("ours check", "ours full", "llg validate", "llg mask", "llg mask+apply")
        print(f"| schema | tokens | {' | '.join(labels)} |")
        print("|---|---|" + "---|" * len(labels))
        for name in SCHEMAS:
            tokens = results[name, "ours"][0].tokens
            costs = replay(model, tokenizer, gbnf[name], llg_json[name], tokens, args.replays)
            print(f"| {name} | {len(tokens)} | {' | '.join(f'{costs[k]:.0f}' for k in labels)} |")

        print("\nGrammar compile, median of 20 (ms): schema -> grammar object ready to sample\n")
        print(
            "| schema | ours cold (GBNF + llama.cpp) | ours cached GBNF | llg | llg + first mask | llg/gbnf + first mask |"
        )
        print("|---|---|---|---|---|---|")
        vocab = model.vocab
        for name, schema in SCHEMAS.items():
            cold = compile_ms(lambda s=schema: ours_compile(vocab, s))
            warm = compile_ms(lambda g=gbnf[name]: GrammarMatcher(vocab, g).close())
            plain = compile_ms(lambda s=schema: llg_compile(tokenizer, lambda: llg_schema_grammar(s), False))
            first = compile_ms(lambda s=schema: llg_compile(tokenizer, lambda: llg_schema_grammar(s), True))
            via = "-"
            if name in llg_gbnf:
                gbnf_ms = compile_ms(
                    lambda g=gbnf[name]: llg_compile(tokenizer, lambda: llguidance.grammar_from("gbnf", g), True)
                )
                via = f"{gbnf_ms:.2f}"
            print(f"| {name} | {cold:.2f} | {warm:.2f} | {plain:.2f} | {first:.2f} | {via} |")
    finally:
        loop.close()
        model.close()


if __name__ == "__main__":
    main()
