"""Jump-forward decoding: the text a grammar forces, decoded as a draft instead of token by token.

Where a grammar leaves one way to go on (the `{"tool_calls": [{"name": "python", "arguments":
{` of a forced call, a schema's property names, closing brackets), the next characters are
known before the model computes them. SGLang decodes such text in one step ("jump-forward
decoding": Zheng et al. 2024, *SGLang: Efficient Execution of Structured Language Model
Programs*, §4.2). Here the forced text becomes a draft for the verification the scheduler
already does for speculative decoding (speculative.py): the sequence's next token and the
draft are decoded in one batched `llama_decode`, and draft tokens are kept while each equals
what the sequence's own sampler picks at its row. The output stays the model's own: where the
model spells the text with other tokens (SmolLM2 writes `{"` as `{` `"`), the draft is cut
there and the next step drafts again from where the model went.

Forced text is found one character at a time: the grammar's state is probed with the
vocabulary's single-character tokens (printable ASCII, tab, CR, LF) in one
`llama_sampler_apply`, and while exactly one of them is allowed that character is forced. (A
grammar that allows one ASCII character and also some non-ASCII one is taken to force the ASCII
one; verification makes that harmless.) The text is then tokenized; where it ends at a branch
of the grammar its last token is dropped, since the model may merge it with what follows
(`"` and `:` as `":`).

(Ending a sequence whose grammar allows only an end token without decoding its last token
would save one step per call here, but the KV would then lack that token, and the agent
loop's next round relies on the KV holding every token sampled. It is not done.)
"""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp
import numpy as np

from runtime.engine.model import LlamaModel, token_piece, tokenize
from runtime.engine.sampler import Candidates, GrammarMatcher

# Most tokens one forced draft may hold. Forced runs are short (a call envelope is ~16 tokens
# of SmolLM2's vocabulary); the cap bounds the verification batch.
FORCED_MAX = 32
# Shorter forced text is left to plain decoding: on a CPU a 2-row llama_decode costs about 2.2x
# a 1-row one (llama.cpp leaves its matrix-vector kernels), so a 1-token draft loses even when
# kept (a forced python call on SmolLM2-135M: 6.4 ms a token with 1, 6.0 with 2, 7.8 without).
FORCED_MIN_TOKENS = 2
CHARS_PER_TOKEN = 4  # forced text probed per wanted token (JSON keys and markup: ~3 a token)
# What one more row adds to a llama_decode, as a share of a 1-row decode: on 2 CPU cores with
# SmolLM2-135M, 4 rows cost 2.8x, 9 rows 4.9x, 17 rows 7.6x, 33 rows 13.5x (about 0.4 a row);
# on a GPU a few more rows cost next to nothing. A fixed model, not the measured times, so
# that whether a step drafts depends only on the tokens (see `forced_draft_pays`).
ROW_COST_CPU, ROW_COST_GPU = 0.4, 0.05
SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
FORCED_PRIOR = 0.9  # expected share of a forced draft kept, before a sequence has drafted any
FORCED_MEMORY = 0.4  # weight of the earlier drafts in that share, per draft: one wasted draft stops it


@dataclass(slots=True)
class ForcedAcceptance:
    """The share of its forced draft tokens a sequence keeps (a moving average per draft).
    Where the model spells forced text its own way (`{` `"` for `{"`), drafts are cut early
    and the share falls until drafting no longer pays."""

    kept: float = FORCED_PRIOR

    def update(self, drafted: int, kept: int) -> None:
        if drafted > 0:
            self.kept = FORCED_MEMORY * self.kept + (1 - FORCED_MEMORY) * kept / drafted


def forced_draft_pays(kept_share: float, streams: int, row_cost: float) -> bool:
    """Does a draft of which `kept_share` is kept raise the tokens per unit of decode time of
    a step that decodes `streams` rows without it? With a step of r rows costing
    (1 - row_cost) + row_cost * r, the step yields streams + share * k tokens for
    row_cost * k more; that beats streams / cost(streams) when
    share * cost(streams) > streams * row_cost, whatever k. On a CPU (0.4): one stream
    needs 40 % of a draft kept, four streams 73 %, eight 84 %."""
    return kept_share * ((1 - row_cost) + row_cost * streams) > streams * row_cost


class ForcedText:
    """Finds the text a grammar state forces, for one model's vocabulary. Not thread-safe:
    the scheduler's decode thread owns it."""

    def __init__(self, model: LlamaModel) -> None:
        self.vocab = model.vocab
        self.is_eog = model.is_eog
        eos = int(llama_cpp.llama_vocab_eos(model.vocab))
        self.eos = eos if eos >= 0 else int(llama_cpp.llama_vocab_eot(model.vocab))  # -1: neither
        chars, ids = bytearray(), []
        for code in (9, 10, 13, *range(32, 127)):
            tokens = model.tokenize(chr(code), add_special=False, parse_special=False)
            if len(tokens) == 1 and model.piece(tokens[0]) == bytes([code]):
                chars.append(code)
                ids.append(tokens[0])
        self.char_of = dict(zip(ids, chars, strict=True))
        self._chars = Candidates(model.n_vocab, np.array(ids, dtype=np.int32))

    def draft(self, grammar: GrammarMatcher, max_tokens: int) -> list[int]:
        """The forced continuation of `grammar`'s state as at most `max_tokens` tokens (none
        when max_tokens <= 0 or nothing is forced). The grammar's state does not move."""
        if max_tokens <= 0:
            return []
        allowed = self._chars.allowed(grammar)
        if len(allowed) != 1:
            return []
        text = bytearray()
        limit = max_tokens * CHARS_PER_TOKEN
        probe = grammar.copy()
        try:
            while len(allowed) == 1 and len(text) < limit:
                token = int(allowed[0])
                text.append(self.char_of[token])
                probe.accept(token)
                allowed = self._chars.allowed(probe)
            # Where no single character follows, the grammar either ends (an end token is
            # allowed) or goes on with a character outside ASCII, which the last token may
            # merge with (`caf` + `é` as `café`).
            at_end = len(allowed) == 0 and self.eos >= 0 and probe.allows(self.eos)
        finally:
            probe.close()
        # Markers such as `<|tool_call_begin|>` become the control token a model writes, not
        # the pieces `<`, `|`, ... (the grammar accepts either).
        tokens = tokenize(self.vocab, text.decode("ascii"), add_special=False, parse_special=True)
        if b"".join(token_piece(self.vocab, t) for t in tokens) != bytes(text):
            return []  # a tokenizer that adds a prefix space: no clean draft
        if not at_end and tokens and not self._special(tokens[-1]):
            tokens = tokens[:-1]  # ends at a branch (or the limit): the last token may merge on
        ends = next((i for i, t in enumerate(tokens) if self.is_eog(t)), len(tokens))
        return tokens[: min(ends, max_tokens)]  # an end token is never drafted: it ends the output

    def _special(self, token: int) -> bool:
        """A control or user-defined token: the tokenizer never merges it with what follows."""
        return bool(llama_cpp.llama_vocab_get_attr(self.vocab, token) & SPECIAL)
