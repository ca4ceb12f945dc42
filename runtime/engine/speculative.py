"""Speculative decoding: cheap drafts that one batched `llama_decode` of the real model verifies.

A drafter proposes up to k tokens that likely follow a sequence. The scheduler decodes the
sequence's next token and the draft in the same step, then samples the positions in order with
the sequence's own sampler chain, keeping draft tokens while each equals what was sampled
(llama.cpp's `common_sampler_sample_and_accept_n`). Every token kept is the one the sampler
picked from the real model's logits at its position, with penalties, grammar and the seeded RNG
advanced exactly as without a draft: the output is the real model's, and the draft only decides
how many tokens one step yields.

Drafters (llama-server's names in brackets):
- `NgramDrafter` [`--spec-type ngram-simple`, prompt lookup decoding]: the tokens that followed
  the latest earlier occurrence of the sequence's last n tokens (n = 4, 3, 2). Free; pays on
  output that repeats its input (editing code or JSON, quoting, summarising with names).
- `DraftModel` [`-md`]: a small model with the same vocabulary decodes greedily, stopping where
  it is unsure (top probability under `P_MIN`, as `--draft-p-min`).

Text a grammar forces is drafted by jumpforward.py through the same verification, without
a drafter or a flag.

`DraftLength` picks each sequence's k per step from the measured cost of decoding 1 + k rows
(`measure_row_costs`, plus k steps of a draft model) and the acceptance the sequence has shown
so far (`Acceptance`): k = 0, plain decoding, whenever no k is expected to yield more tokens
per second.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import llama_cpp
import numpy as np

from runtime.config import EngineConfig
from runtime.engine.base import check_loading
from runtime.engine.kvcache import common_prefix
from runtime.engine.model import LlamaModel, ModelLoadError
from runtime.errors import EngineFailure

log = logging.getLogger(__name__)

NGRAM_SIZES = (4, 3, 2)  # longest first: a longer match predicts better
P_MIN = 0.75  # a draft model stops drafting below this top probability (llama-server's default)
# Acceptance before a sequence has shown any: worth 4 kept tokens and 1 rejection (0.8).
PRIOR_KEPT, PRIOR_REJECTED = 4.0, 1.0
ACCEPTANCE_MEMORY = 0.8  # weight of what was seen before, per verified draft
# A sequence whose drafts stopped paying drafts again after this many steps without one, as if
# its acceptance were PROBE_ACCEPTANCE: output changes character (prose, then a quoted block).
# The most such probes can cost a sequence that never gains is (cost[k] - 1) / PROBE_EVERY.
PROBE_EVERY = 64
PROBE_ACCEPTANCE = 0.9
MEASURE_REPEATS = 5
# Most draft tokens a step (`--draft-max`). Measuring the costs of 1..k + 1 rows at start takes
# time quadratic in k (53 s for k = 64 on one thread of this machine, about an hour for 511),
# and a longer draft cannot pay: even at acceptance 0.95 a 33rd draft token is kept 18 % of the time.
DRAFT_MAX_LIMIT = 32


@dataclass(frozen=True, slots=True)
class DraftWant:
    """One sequence's drafting request: `history` is every token its KV will hold once its next
    token is decoded (prompt, output so far, the next token); at most `k` tokens are wanted."""

    seq_id: int
    owner: object  # the job: a new owner of the sequence starts a fresh draft state
    history: list[int]
    k: int


class Drafter(Protocol):
    def propose(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        """One draft (maybe empty, at most `want.k` tokens) per want, in order."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _NgramIndex:
    owner: object
    indexed: int = 0  # history[:indexed] is in `follows`
    # n-gram → the position right after its latest occurrence that has a token after it
    follows: dict[tuple[int, ...], int] = field(default_factory=dict)


class NgramDrafter:
    """Prompt lookup: continue the sequence the way it continued the last time its final
    n tokens appeared. The index grows with each step's accepted tokens (O(new tokens))."""

    def __init__(self) -> None:
        self._indexes: dict[int, _NgramIndex] = {}

    def propose(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        return [self._propose(want) for want in wants]

    def _propose(self, want: DraftWant) -> list[int]:
        history = want.history
        index = self._indexes.get(want.seq_id)
        if index is None or index.owner is not want.owner or index.indexed > len(history):
            index = self._indexes[want.seq_id] = _NgramIndex(want.owner)
        # Index every n-gram that now has a token after it (the last one has none yet).
        for end in range(max(index.indexed, 1), len(history)):
            for n in NGRAM_SIZES:
                if end >= n:
                    index.follows[tuple(history[end - n : end])] = end
        index.indexed = max(index.indexed, len(history) - 1)
        if want.k <= 0:
            return []
        for n in NGRAM_SIZES:
            if len(history) > n and (at := index.follows.get(tuple(history[-n:]))) is not None:
                return history[at : at + want.k]
        return []

    def close(self) -> None:
        self._indexes.clear()


class DraftModel:
    """A second, smaller GGUF with the same vocabulary, decoding greedily in its own context
    (one KV sequence per slot of the real model, kept in step by common prefix)."""

    def __init__(self, path: Path, target: LlamaModel, config: EngineConfig) -> None:
        self.model = LlamaModel(path, n_gpu_layers=config.n_gpu_layers)
        if (why := _vocab_mismatch(self.model, target)) is not None:
            self.model.close()
            raise ModelLoadError(f"--model-draft {path}: {why}; a draft model must share the vocabulary")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.ctx_size * config.parallel
        params.n_batch = params.n_ubatch = config.batch_size
        params.n_seq_max = config.parallel
        params.n_threads = params.n_threads_batch = config.thread_count
        params.kv_unified = False
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, params)
        if not self.ctx:
            self.model.close()
            raise EngineFailure("llama.cpp could not create the draft model's context (out of memory?)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch_size = config.batch_size
        self.batch = llama_cpp.llama_batch_init(config.batch_size, 0, 1)
        self.n_vocab = self.model.n_vocab
        self.tokens: dict[int, list[int]] = {}  # what each sequence's KV holds
        # One draft token costs about one decode of one row of the draft model.
        self.row_seconds = measure_row_costs(self.ctx, self.memory, self.batch, 0, 1, min(64, config.batch_size))[0]

    def propose(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in wants]
        live = [i for i, want in enumerate(wants) if want.k > 0 and want.history]
        # Bring each sequence's KV up to its history but the last token, which is decoded with
        # logits below (together with the other sequences' pending tokens).
        pending: dict[int, list[int]] = {}
        for i in live:
            want = wants[i]
            held = self.tokens.get(want.seq_id, [])
            keep = min(common_prefix(held, want.history), len(want.history) - 1)
            if keep < len(held) and not llama_cpp.llama_memory_seq_rm(self.memory, want.seq_id, keep, -1):
                llama_cpp.llama_memory_seq_rm(self.memory, want.seq_id, -1, -1)
                keep = 0
            self.tokens[want.seq_id] = want.history[:keep]
            pending[i] = want.history[keep:]
        while live:
            rows = self._decode(wants, pending)
            pending = {}
            for i in list(live):
                want, draft = wants[i], drafts[i]
                token, p = self._top(rows[i])
                if p < P_MIN or self.model.is_eog(token):
                    live.remove(i)
                    continue
                draft.append(token)
                if len(draft) >= want.k:
                    live.remove(i)
                else:
                    pending[i] = [token]
        return drafts

    def _decode(self, wants: Sequence[DraftWant], pending: dict[int, list[int]]) -> dict[int, int]:
        """Decode every pending token (in batches of `batch_size`), logits only for each
        sequence's last; returns the batch row of each sequence's logits in the last decode."""
        rows: dict[int, int] = {}
        # Every sequence's last token goes in the final decode (logits are only readable for
        # the latest one); the tokens before them, in position order, in the decodes before it.
        earlier = [(i, t, False) for i, tokens in pending.items() for t in tokens[:-1]]
        chunks = [earlier[s : s + self.batch_size] for s in range(0, len(earlier), self.batch_size)]
        chunks.append([(i, tokens[-1], True) for i, tokens in pending.items()])
        for chunk in chunks:
            for n, (i, token, last) in enumerate(chunk):
                seq, held = wants[i].seq_id, self.tokens[wants[i].seq_id]
                self.batch.token[n], self.batch.pos[n], self.batch.n_seq_id[n] = token, len(held), 1
                self.batch.seq_id[n][0], self.batch.logits[n] = seq, last
                held.append(token)
                if last:
                    rows[i] = n
            self.batch.n_tokens = len(chunk)
            if llama_cpp.llama_decode(self.ctx, self.batch) != 0:
                for seq in self.tokens:  # start the next proposal from a clean draft KV
                    llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
                self.tokens.clear()
                raise EngineFailure("the draft model failed to decode")
        return rows

    def _top(self, row: int) -> tuple[int, float]:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        best = int(np.argmax(logits))
        return best, 1.0 / float(np.exp(logits - logits[best]).sum())

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        self.model.close()


def _vocab_mismatch(draft: LlamaModel, target: LlamaModel) -> str | None:
    if draft.n_vocab != target.n_vocab:
        return f"{draft.n_vocab} tokens in its vocabulary, {target.n_vocab} in the model's"
    for name in ("bos", "eos"):
        a, b = (
            getattr(llama_cpp, f"llama_vocab_{name}")(draft.vocab),
            getattr(llama_cpp, f"llama_vocab_{name}")(target.vocab),
        )
        if a != b:
            return f"its {name.upper()} token is {a}, the model's {b}"
    buf = ctypes.create_string_buffer(64)
    for token in range(0, target.n_vocab, max(1, target.n_vocab // 64)):
        if draft.piece(token, buf) != target.piece(token, buf):
            return f"token {token} differs"
    return None


def measure_row_costs(
    ctx: llama_cpp.llama_context_p, memory: object, batch: object, seq_id: int, rows: int, context: int = 64
) -> list[float]:
    """Seconds for one `llama_decode` of r = 1..`rows` rows of one sequence (best of
    MEASURE_REPEATS, after a `context`-token prompt, both at most the batch's size; the KV is
    removed afterwards): times[k] for 1 + k rows, made non-decreasing from the right: a k
    measured dearer than a longer draft is noise (a preempted run), since the longer draft
    could always be sent instead."""
    _fill(batch, list(range(context)), 0, seq_id, logits=False)
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise EngineFailure("llama_decode failed while measuring draft costs")
    times = []
    for r in range(1, rows + 1):
        check_loading()  # up to a minute in all at --draft-max 32 on a slow CPU
        best = math.inf
        for _ in range(MEASURE_REPEATS):
            _fill(batch, list(range(r)), context, seq_id, logits=True)
            started = time.perf_counter()
            status = llama_cpp.llama_decode(ctx, batch)
            best = min(best, time.perf_counter() - started)
            llama_cpp.llama_memory_seq_rm(memory, seq_id, context, -1)
            if status != 0:
                raise EngineFailure("llama_decode failed while measuring draft costs")
        times.append(best)
    llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
    for k in range(len(times) - 2, -1, -1):
        times[k] = min(times[k], times[k + 1])
    return times


def _fill(batch: object, tokens: list[int], pos: int, seq_id: int, *, logits: bool) -> None:
    for n, token in enumerate(tokens):
        batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos + n, 1  # type: ignore[attr-defined]
        batch.seq_id[n][0], batch.logits[n] = seq_id, logits  # type: ignore[attr-defined]
    batch.n_tokens = len(tokens)  # type: ignore[attr-defined]


class DraftLength:
    """Each step's draft length: the k (0..max) that maximises expected tokens per unit of
    decode time, E(k) / cost[k], where E(k) = 1 + a + … + a^k for acceptance rate a (each draft
    token is kept only if every one before it was) and cost[k] the time of a step with k draft
    tokens over that of a plain step. k = 0 when no draft pays.

    A step's time is its `llama_decode` of 1 + k rows (`decode_seconds[k]`), k tokens of a draft
    model (`draft_token_seconds` each) and the rest of the step (`overhead`: sampling, delivering
    tokens, the Python around them). The decode times measured at start (back to back, one
    shape at a time) are replaced by what the scheduler's real single-stream steps take
    (`observe`): llama.cpp reuses its compute graph while the batch shape stays the same, so a
    stream that drafts pays more for its 1-row steps than a stream that never does (6.6 vs 10.5
    ms on SmolLM2-135M here), which a table measured in isolation cannot show. With
    `learn=False` the table stays as given (tests, benchmarks that force a draft length)."""

    def __init__(
        self, decode_seconds: Sequence[float], draft_token_seconds: float = 0.0, *, learn: bool = True
    ) -> None:
        self.decode_seconds = list(decode_seconds)
        self.draft_token_seconds = draft_token_seconds
        self.learn = learn
        self.max = len(self.decode_seconds) - 1
        self.overhead = 0.0
        self.cost = self._cost()

    def observe(
        self, rows: int, decode_seconds: float, overhead_seconds: float, drafted: int = 0, drafting_seconds: float = 0.0
    ) -> None:
        """One real single-stream decode step: `rows` rows took `decode_seconds` in
        `llama_decode`, drafting `drafted` tokens took `drafting_seconds`, and the rest of the
        step `overhead_seconds`. Moving averages."""
        if not self.learn:
            return
        if 1 <= rows <= self.max + 1:
            self.decode_seconds[rows - 1] += 0.1 * (decode_seconds - self.decode_seconds[rows - 1])
        if drafted > 0:  # a draft model's real cost: its decodes, reading its logits, catching up
            self.draft_token_seconds += 0.1 * (drafting_seconds / drafted - self.draft_token_seconds)
        self.overhead = (
            overhead_seconds if self.overhead == 0.0 else self.overhead + 0.05 * (overhead_seconds - self.overhead)
        )
        self.cost = self._cost()

    def _cost(self) -> list[float]:
        base = self.overhead + self.decode_seconds[0]
        return [(self.overhead + t + k * self.draft_token_seconds) / base for k, t in enumerate(self.decode_seconds)]

    def choose(self, acceptance: float, idle_steps: int = 0) -> int:
        """k for a sequence with this acceptance rate that has gone `idle_steps` steps without
        a draft (a probe once it reaches PROBE_EVERY)."""
        k = self._best(acceptance)
        return self._best(PROBE_ACCEPTANCE) if k == 0 and idle_steps >= PROBE_EVERY else k

    def _best(self, acceptance: float) -> int:
        best, best_rate = 0, 1.0
        expected = 1.0
        for k in range(1, self.max + 1):
            expected += acceptance**k
            rate = expected / self.cost[k]
            if rate > best_rate * 1.02:  # a draft must pay a little more than its noise
                best, best_rate = k, rate
        return best


@dataclass(slots=True)
class Acceptance:
    """A sequence's chance that a draft token is kept given the one before it was: the `a` of
    `DraftLength`. Each kept token counts as a success and a draft cut short as one failure;
    the tokens after the cut were never tried, so they count as nothing. (Kept over drafted
    would be wrong for n-gram drafts, which are right or wrong as a whole: a draft that is
    kept 5 tokens deep and cut at the 6th of 8 says 5/6 about the next token, not 5/8.)
    Old drafts fade by ACCEPTANCE_MEMORY per draft, so the rate follows the output."""

    kept: float = PRIOR_KEPT
    rejected: float = PRIOR_REJECTED

    @property
    def rate(self) -> float:
        return self.kept / (self.kept + self.rejected)

    def update(self, drafted: int, kept: int) -> None:
        if drafted <= 0:
            return
        self.kept = ACCEPTANCE_MEMORY * self.kept + kept
        self.rejected = ACCEPTANCE_MEMORY * self.rejected + (1 if kept < drafted else 0)
