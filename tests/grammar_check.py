"""Checking text against a GBNF grammar with a real llama.cpp vocabulary.

`accepts(vocab, gbnf, text)` runs llama.cpp's own grammar engine over the tokens of `text`,
as the sampler would see them (special tokens parsed as such), and asks whether the text is
a complete sentence of the grammar. `real_vocab(name)` loads one of llama.cpp's
`ggml-vocab-<name>.gguf` files (vocabulary only, no weights) from tests/upstream.py.
"""

from __future__ import annotations

from functools import cache

import llama_cpp

from runtime.engine.model import tokenize
from runtime.engine.sampler import GrammarMatcher
from tests.upstream import vocab_path


class Vocab:
    def __init__(self, model: llama_cpp.llama_model_p) -> None:
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)


@cache
def real_vocab(name: str) -> Vocab:
    """llama.cpp's `ggml-vocab-<name>.gguf`, loaded vocabulary-only (kept for the session)."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(vocab_path(name)).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load the {name} vocabulary")
    return Vocab(model)


def accepts(vocab: Vocab, gbnf: str, text: str, *, parse_special: bool = True) -> bool:
    """Does the compiled grammar take `text` as a complete output?"""
    matcher = GrammarMatcher(vocab.vocab, gbnf)
    try:
        for token in tokenize(vocab.vocab, text, add_special=False, parse_special=parse_special):
            if not matcher.allows(token):
                return False
            matcher.accept(token)
        return matcher.allows(llama_cpp.llama_vocab_eos(vocab.vocab))  # complete, may end here
    finally:
        matcher.close()
