"""The baseline the benchmarks compare against: one sequence driven straight through
llama.cpp's `llama_decode` and a native greedy sampler, no server in between."""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import llama_cpp

BATCH = 512


def new_context(model: llama_cpp.llama_model_p, threads: int, n_ctx: int = 4096) -> llama_cpp.llama_context_p:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.no_perf = n_ctx, BATCH, BATCH, True
    params.n_threads = params.n_threads_batch = threads
    return llama_cpp.llama_init_from_model(model, params)


@dataclass
class Generated:
    ttft: float  # seconds from the start of the prefill to the first token
    tokens: int
    decode_seconds: float  # first token to last token


class RawSequence:
    """Sequence 0 of a context: prefill in batch-size chunks, then greedy decoding."""

    def __init__(self, ctx: llama_cpp.llama_context_p, vocab: llama_cpp.llama_vocab_p) -> None:
        self.ctx, self.vocab = ctx, vocab
        self.batch = llama_cpp.llama_batch_init(BATCH, 0, 1)

    def reset(self) -> None:
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), 0, -1, -1)

    def decode(self, tokens: list[int], start: int) -> None:
        """Decode `tokens` at positions from `start`; logits for the last one only."""
        batch = self.batch
        for offset in range(0, len(tokens), BATCH):
            chunk = tokens[offset : offset + BATCH]
            for i, token in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + offset + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, offset + i == len(tokens) - 1
            batch.n_tokens = len(chunk)
            assert llama_cpp.llama_decode(self.ctx, batch) == 0

    def generate(self, prompt: list[int], n_tokens: int) -> Generated:
        """Prefill `prompt` and decode up to `n_tokens` greedily, turning each into its text
        piece as a server must."""
        self.reset()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        buf = ctypes.create_string_buffer(64)
        started = time.perf_counter()
        self.decode(prompt, 0)
        pos, produced, first = len(prompt), 0, 0.0
        while produced < n_tokens:
            token = llama_cpp.llama_sampler_sample(chain, self.ctx, -1)
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            produced += 1
            if produced == 1:
                first = time.perf_counter()
            self.decode([token], pos)
            pos += 1
        ended = time.perf_counter()
        llama_cpp.llama_sampler_free(chain)
        return Generated(first - started, produced, ended - first)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
