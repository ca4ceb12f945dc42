"""Native llama.cpp sampler chains, one per sequence."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp

from runtime.errors import InvalidRequest

RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
PENALTY_LAST_N = 64


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


class SamplerChain:
    """Owns a `llama_sampler*` chain. Order follows llama.cpp's common sampler:
    grammar, penalties, top-k, top-p, min-p, temperature, then the final pick."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, params: SamplerParams) -> None:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(chain_params)
        add = lambda s: llama_cpp.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if params.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.close()
                raise InvalidRequest("the output grammar could not be compiled", param="response_format")
            add(grammar)
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
        return llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
