"""Native llama.cpp sampler chains, one per sequence, with an optional GBNF grammar.

The grammar is kept outside the chain so that it can be applied the way llama.cpp's own
common sampler does: sample from the unconstrained chain, check only that one token against
the grammar, and run the grammar over the whole vocabulary only when the token is rejected.
That gives the same distribution as grammar-first sampling (a rejected draw is redrawn from
the constrained one) at a fraction of the cost.

A lazy grammar (tool calls in `auto` mode) waits for a trigger text in the output. The
trigger is watched here in Python rather than with `llama_sampler_init_grammar_lazy_patterns`:
when the token that completes a trigger carries text the grammar rejects, the native lazy
sampler throws a C++ exception through the C API, which aborts the process. Here the text
from the trigger on is re-fed token by token, each checked first, and an output that does not
fit simply stays unconstrained (the tool-call parser then treats it as text).
"""

from __future__ import annotations

import ctypes
import logging
import math
from dataclasses import dataclass

import llama_cpp
import numpy as np

from runtime.engine.model import token_piece, tokenize
from runtime.errors import InvalidRequest

log = logging.getLogger(__name__)

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
PENALTY_LAST_N = 64
WHITESPACE = b" \t\r\n"

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


@dataclass(frozen=True, slots=True)
class GrammarTrigger:
    """Where a lazy grammar starts: the first `text` in the output or, with `at_start`,
    `text` as the first thing after leading whitespace (or after the thinking block, see
    `SamplerParams.thinking_close`). The grammar's root matches from the start of `text` on."""

    text: str
    at_start: bool = False


@dataclass(frozen=True, slots=True)
class SamplerParams:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None  # GBNF, root rule `root`
    grammar_triggers: tuple[GrammarTrigger, ...] = ()  # non-empty: the grammar is lazy
    thinking_close: str | None = None  # `at_start` triggers also fire right after this tag
    grammar_check_first: bool = True  # False: apply the grammar to every candidate, every step


class GrammarMatcher:
    """A compiled grammar and its parse state; checks and accepts single tokens safely."""

    def __init__(
        self, vocab: llama_cpp.llama_vocab_p, gbnf: str | None, *, state: llama_cpp.llama_sampler_p = None
    ) -> None:
        # `state`: an existing grammar sampler to own instead of compiling `gbnf` (see `copy`).
        self.sampler = state or llama_cpp.llama_sampler_init_grammar(vocab, (gbnf or "").encode(), b"root")
        if not self.sampler:
            raise InvalidRequest("the output grammar could not be compiled", param="response_format")
        self.vocab = vocab
        self._one = llama_cpp.llama_token_data(0, 0.0, 0.0)
        self._one_array = llama_cpp.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)

    def allows(self, token: int) -> bool:
        self._one.id, self._one.logit, self._one.p = token, 0.0, 0.0
        self._one_array.data = ctypes.pointer(self._one)
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self._one_array))
        return self._one_array.data[0].logit != -math.inf

    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same parse state (to try tokens without moving this one)."""
        return GrammarMatcher(self.vocab, None, state=llama_cpp.llama_sampler_clone(self.sampler))

    def accept(self, token: int) -> None:
        # Only ever called with a token `allows` approved: accepting anything else makes
        # llama.cpp throw (or abort on an end-of-generation token).
        llama_cpp.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        if self.sampler:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


class Candidates:
    """A reusable `llama_token_data_array` over the whole vocabulary, or over the tokens `ids`
    (numpy-backed)."""

    def __init__(self, n_vocab: int, ids: np.ndarray | None = None) -> None:
        self._ids = np.arange(n_vocab, dtype=np.int32) if ids is None else ids.astype(np.int32)
        self.n_vocab = len(self._ids)
        self.data = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self._ptr = self.data.ctypes.data_as(llama_cpp.llama_token_data_p)
        self.array = llama_cpp.llama_token_data_array(self._ptr, self.n_vocab, -1, False)
        self.ref = ctypes.byref(self.array)

    def load(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> None:
        logits = llama_cpp.llama_get_logits_ith(ctx, batch_index)
        self.reset(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)))

    def reset(self, logits: np.ndarray | float = 0.0) -> None:
        # Samplers sort and truncate in place: every field is set again.
        self.data["id"] = self._ids
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self.array.data, self.array.size, self.array.selected, self.array.sorted = self._ptr, self.n_vocab, -1, False

    def allowed(self, grammar: GrammarMatcher) -> np.ndarray:
        """The ids (in order) that `grammar`'s state allows next; the state does not move."""
        self.reset()
        llama_cpp.llama_sampler_apply(grammar.sampler, self.ref)
        return self._ids[self.data["logit"] != -math.inf]

    def selected(self) -> int:
        return int(self.array.data[self.array.selected].id)


class SamplerChain:
    """Owns a `llama_sampler*` chain (penalties, top-k, top-p, min-p, temperature, final
    pick) and, when asked for, a grammar applied around it."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, params: SamplerParams) -> None:
        self.vocab = vocab
        self.params = params
        self.grammar: GrammarMatcher | None = None
        self._candidates: Candidates | None = None
        self._triggers = params.grammar_triggers if params.grammar else ()
        self._output = b""  # what was generated while a lazy grammar waits
        self._piece_buf = ctypes.create_string_buffer(64)
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(chain_params)
        if params.grammar and not self._triggers:
            try:
                self.grammar = GrammarMatcher(vocab, params.grammar)
            except InvalidRequest:
                self.close()
                raise
        if params.grammar:
            self._candidates = Candidates(n_vocab)
        self._build_chain(params)

    def _build_chain(self, params: SamplerParams) -> None:
        add = lambda s: llama_cpp.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            # The binding declares a leading `n_vocab` the C function no longer has; both
            # integer slots get `last_n` so either reading of the ABI means the same thing.
            add(
                llama_cpp.llama_sampler_init_penalties(
                    PENALTY_LAST_N,
                    PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = RANDOM_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Pick (and accept) the next token from the logits at `batch_index`."""
        if self.grammar is None:
            token = llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)
            if self._triggers:
                self._watch(token)
            return token
        grammar, cand = self.grammar, self._candidates
        assert cand is not None
        cand.load(ctx, batch_index)
        if self.params.grammar_check_first:
            llama_cpp.llama_sampler_apply(self.chain, cand.ref)
            token = cand.selected()
            if grammar.allows(token):
                return self._accept(token)
            cand.load(ctx, batch_index)
        llama_cpp.llama_sampler_apply(grammar.sampler, cand.ref)
        llama_cpp.llama_sampler_apply(self.chain, cand.ref)
        token = cand.selected()
        if not grammar.allows(token):
            # Every candidate was masked (a grammar no token can continue): end the output
            # rather than accept a token llama.cpp would abort on.
            log.warning("the grammar allows no next token; ending the output")
            return llama_cpp.llama_vocab_eos(self.vocab)
        return self._accept(token)

    def grammar_allows(self, tokens: list[int]) -> int:
        """How many of `tokens`, in order, the grammar would accept from its current state (all
        of them without an active grammar). Checked on a copy: the real state does not move."""
        if self.grammar is None:
            return len(tokens)
        probe = self.grammar.copy()
        try:
            for allowed, token in enumerate(tokens):
                if llama_cpp.llama_vocab_is_eog(self.vocab, token) or not probe.allows(token):
                    return allowed
                probe.accept(token)
            return len(tokens)
        finally:
            probe.close()

    def accept_forced(self, token: int) -> None:
        """A token the engine put in the output itself: keep penalties, a lazy grammar's
        trigger watch and an active grammar in step with the text."""
        llama_cpp.llama_sampler_accept(self.chain, token)
        if self.grammar is not None:
            if self.grammar.allows(token):
                self.grammar.accept(token)
        elif self._triggers:
            self._watch(token)

    def _accept(self, token: int) -> int:
        assert self.grammar is not None
        self.grammar.accept(token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def _watch(self, token: int) -> None:
        """Lazy grammar: look for a trigger in the output; start the grammar at it."""
        before = len(self._output)
        self._output += token_piece(self.vocab, token, self._piece_buf)
        starts = []
        for trigger in self._triggers:
            text = trigger.text.encode()
            if trigger.at_start:
                answer = self._output
                close = self.params.thinking_close
                if close and (at := answer.rfind(close.encode())) >= 0:
                    answer = answer[at + len(close.encode()) :]
                rest = answer.lstrip(WHITESPACE)
                if rest.startswith(text):
                    starts.append(len(self._output) - len(rest))
            else:
                at = self._output.find(text, max(0, before - len(text) + 1))
                if at >= 0:
                    starts.append(at)
        if starts:
            self._start_grammar(self._output[min(starts) :])

    def _start_grammar(self, region: bytes) -> None:
        assert self.params.grammar is not None
        self._triggers, self._output = (), b""
        try:
            grammar = GrammarMatcher(self.vocab, self.params.grammar)
        except InvalidRequest:  # the engine compiles every grammar up front; belt and braces
            log.warning("a lazy grammar failed to compile; leaving the output unconstrained")
            return
        try:
            text = region.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        tokens = tokenize(self.vocab, text, add_special=False) if text is not None else None
        for token in tokens or []:
            if not grammar.allows(token):
                tokens = None
                break
            grammar.accept(token)
        if tokens is None:
            log.debug("output after a grammar trigger does not fit the grammar; leaving it unconstrained")
            grammar.close()
            return
        self.grammar = grammar

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar is not None:
            self.grammar.close()
            self.grammar = None


def token_logprobs(
    ctx: llama_cpp.llama_context_p, batch_index: int, n_vocab: int, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` at `batch_index`, and the `top` most likely tokens
    there as (id, logprob), most likely first.

    The distribution is the model's raw one: a log-softmax over the whole vocabulary of the
    logits llama.cpp computed, before temperature, truncation (top-k/top-p/min-p), penalties
    or a grammar: what OpenAI reports, not llama.cpp server's post-sampling probabilities.
    Costs one pass over the vocabulary (tens of microseconds); only called when asked for.
    """
    raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(n_vocab,))
    logits = raw.astype(np.float64)
    peak = logits.max()
    log_total = peak + math.log(float(np.exp(logits - peak).sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        k = min(top, n_vocab)
        ids = np.argpartition(logits, n_vocab - k)[n_vocab - k :]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = [(int(i), float(logits[i] - log_total)) for i in ids]
    return float(logits[token] - log_total), best
