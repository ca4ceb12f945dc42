"""Tiny random-weight GGUF language models on llama.cpp's real vocabularies, for end-to-end tests.

A family's tool-call markers (`<tool_call>`, `<|python_tag|>`, `<|tool_call>`...) are special
tokens of its own vocabulary; a test model on another vocabulary would spell them in pieces and
test nothing real. `build_tiny_model("qwen2", path)` writes a ~20-70 MB "llama" architecture model
(2 layers, n_embd 64, f16) that carries every `tokenizer.*` key of llama.cpp's
`models/ggml-vocab-<name>.gguf` (see tests/upstream.py), so llama.cpp tokenizes, detokenizes and
stops exactly as it would for the real model, while the weights are random (numpy, fixed seed).

llama.cpp's vocabulary files are snapshots of a family's base tokenizer: ggml-vocab-qwen2 has
`[PAD151657]` where Qwen2.5 has `<tool_call>`, ggml-vocab-llama-bpe `<|reserved_special_token_5|>`
where Llama 3.1 has `<|python_tag|>`. `extra_tokens` writes such added tokens over those
placeholders: at the real model's id where `KNOWN_IDS` has it, else at the first free placeholder.

A random model never writes a call marker by itself. `favour=TEXT` builds in a script: the model
writes TEXT's tokens at every opportunity, as a bigram machine wired through the residual stream:

* residual dimension `ANY` is held at `LEVEL` after every token that is not in the script;
  dimension `AFTER + i` after the script's i-th token (the token embeddings set these columns,
  and every layer's output projections have zero rows for them, so no layer can change them);
* the output row of script token 0 points along `ANY`, that of token i + 1 along `AFTER + i`.

The last position's normalised state therefore votes for "the next token of the script" with a
logit of about +60, far over the random part (a few units). Where a grammar forbids it (a lazy
tool grammar has triggered), the random part decides, except for the `settle` tokens (`"`, `}`
by default, the first the most; a family adds its closing marker and end-of-turn token), which
dimension `BIAS` (constant for every token) lifts by about +15: constrained JSON then closes its
strings and objects at once instead of wandering until `max_tokens`, and the turn ends after one
call. Neither a settle token nor any token holding a quote sets `ANY`, so after them the script
does not start again (inside a JSON string, or after a call, the grammar would allow it).
A script ends with an end-of-generation token if the model should stop after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

from tests import upstream

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
CONTEXT = 4096
VERSION = 4  # bump when the weights or layout change: part of the cache key

# reserved residual dimensions (see the module docstring); all others are random
BIAS = 0
ANY = 1
AFTER = 2
LEVEL = 1.0  # value of an active reserved dimension
SCRIPT_WEIGHT = 20.0  # output-row weight of a script token on its predecessor's dimension
SETTLE_WEIGHT = 6.0  # output-row weight of the first settle token on BIAS (the next ones: less)
SETTLE = ('"', "}")
MAX_SCRIPT = 16

# ids of added tokens in the released models whose vocabulary file lacks them: Qwen2.5 / Qwen3
# (tokenizer_config.json "added_tokens_decoder"), Llama 3.1 (its tokenizer.json)
_QWEN = {"<tool_call>": 151657, "</tool_call>": 151658, "<tool_response>": 151665, "</tool_response>": 151666}
KNOWN_IDS: dict[str, dict[str, int]] = {
    "qwen2": _QWEN | {"<think>": 151667, "</think>": 151668},
    "qwen35": _QWEN | {"<think>": 151667, "</think>": 151668},
    "llama-bpe": {"<|eom_id|>": 128008, "<|python_tag|>": 128010},
}
PLACEHOLDER = re.compile(r"\[PAD\d+\]|<\|reserved_special_token_\d+\|>|<unused\d+>")


def build_tiny_model(
    vocab_name: str,
    out_path: Path | str | None = None,
    *,
    favour: str | None = None,
    settle: Sequence[str] = SETTLE,
    extra_tokens: Sequence[str] = (),
    seed: int = 0,
) -> Path:
    """Write the model for `vocab_name` (e.g. "qwen2", "gemma-4") and return its path.

    `favour`: text the model writes whenever it can (tokenized with the vocabulary, special
    tokens parsed: "<tool_call>" is one token on qwen2). `settle`: texts of single tokens the
    model prefers among whatever a grammar allows, once the script cannot go on (only used with
    `favour`). `extra_tokens`: the real model's added special tokens this vocabulary snapshot
    lacks (see the module docstring); texts already in the vocabulary are left alone. The result is cached under `tests.upstream.cache_dir()` by (vocab, options);
    `out_path`, if given, gets a hard link (or copy) of the cached file.
    """
    key = json.dumps([VERSION, vocab_name, favour, list(settle), list(extra_tokens), seed])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cached = upstream.cache_dir() / "tiny-models" / f"{vocab_name}-{digest}.gguf"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        _write(vocab_name, partial, favour=favour, settle=settle, extra_tokens=extra_tokens, seed=seed)
        partial.replace(cached)  # atomic: concurrent builders never see half a file
    if out_path is None:
        return cached
    out = Path(out_path)
    out.unlink(missing_ok=True)
    try:
        out.hardlink_to(cached)
    except OSError:
        out.write_bytes(cached.read_bytes())
    return out


def token_ids(vocab_file: Path, text: str, added: Sequence[str] = ()) -> list[int]:
    """`text` tokenized by llama.cpp with the vocabulary alone (special tokens parsed); the
    `added` texts (not in the file: see `extra_tokens`) are split out first and given as None."""
    import llama_cpp

    from runtime.engine.model import tokenize

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(vocab_file).encode(), params)
    if not model:
        raise ValueError(f"llama.cpp could not load the vocabulary {vocab_file}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        pattern = "(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")"
        ids: list[int] = []
        for piece in re.split(pattern, text) if added else [text]:
            if piece in added:
                ids.append(-1 - list(added).index(piece))  # resolved by the caller
            elif piece:
                ids += tokenize(vocab, piece, add_special=False, parse_special=True)
        return ids
    finally:
        llama_cpp.llama_model_free(model)


def _write(
    vocab_name: str,
    path: Path,
    *,
    favour: str | None,
    settle: Sequence[str],
    extra_tokens: Sequence[str],
    seed: int,
) -> None:
    vocab_file = upstream.vocab_path(vocab_name)
    reader = gguf.GGUFReader(str(vocab_file))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    added = _add_tokens(vocab_name, tokens, types, extra_tokens)
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    embd = normal((n_vocab, N_EMBD), 0.05)
    tensors: dict[str, np.ndarray] = {"output_norm.weight": np.ones(N_EMBD, dtype=np.float32)}
    head_dim = N_EMBD // N_HEAD
    for i in range(N_LAYER):
        down = normal((N_EMBD, N_FF), 0.03)
        attn_out = normal((N_EMBD, N_EMBD), 0.03)
        if favour is not None:
            down[: AFTER + MAX_SCRIPT] = 0.0  # no layer may write to the reserved dimensions
            attn_out[: AFTER + MAX_SCRIPT] = 0.0
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"blk.{i}.attn_q.weight": normal((N_EMBD, N_EMBD), 1 / np.sqrt(N_EMBD)),
            f"blk.{i}.attn_k.weight": normal((N_HEAD_KV * head_dim, N_EMBD), 1 / np.sqrt(N_EMBD)),
            f"blk.{i}.attn_v.weight": normal((N_HEAD_KV * head_dim, N_EMBD), 1 / np.sqrt(N_EMBD)),
            f"blk.{i}.attn_output.weight": attn_out,
            f"blk.{i}.ffn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": normal((N_FF, N_EMBD), 1 / np.sqrt(N_EMBD)),
            f"blk.{i}.ffn_up.weight": normal((N_FF, N_EMBD), 1 / np.sqrt(N_EMBD)),
            f"blk.{i}.ffn_down.weight": down,
        }
    if favour is not None:
        texts = list(added)
        script = [added[texts[-1 - t]] if t < 0 else t for t in token_ids(vocab_file, favour, texts)]
        tensors["output.weight"] = _script_output(embd, script, tokens, favour, settle, rng)
    # llama.cpp ties the output to token_embd when there is no output.weight
    tensors["token_embd.weight"] = embd

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name(f"tiny-random-{vocab_file.stem.removeprefix('ggml-vocab-')}")
    writer.add_description("random weights on a real vocabulary, for tests; its outputs mean nothing")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    for name, field in reader.fields.items():
        if name == "tokenizer.ggml.tokens":
            writer.add_token_list(tokens)
        elif name == "tokenizer.ggml.token_type":
            writer.add_token_types(types)
        elif name.startswith("tokenizer."):
            _copy_field(writer, name, field)
    for name, data in tensors.items():
        # 2-D weights in f16 (they are most of the file); norms stay f32 as llama.cpp expects
        writer.add_tensor(name, data.astype(np.float16) if data.ndim == 2 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokens(vocab_name: str, tokens: list[str], types: list[int], texts: Sequence[str]) -> dict[str, int]:
    """Write `texts` over placeholder entries of `tokens`/`types` (in place); their ids."""
    known = KNOWN_IDS.get(vocab_name, {})
    index = {text: i for i, text in enumerate(tokens)}
    free = (i for i, text in enumerate(tokens) if PLACEHOLDER.fullmatch(text) and i not in known.values())
    added: dict[str, int] = {}
    for text in texts:
        if text in index:
            continue
        at = known.get(text)
        if at is None or not PLACEHOLDER.fullmatch(tokens[at]):
            at = next(free, None)
        if at is None:
            raise ValueError(f"no placeholder left in ggml-vocab-{vocab_name} for {text!r}")
        # `<|...|>` tokens are control tokens in the released models; the others (`<tool_call>`,
        # `<think>`) are user-defined added tokens, as convert_hf_to_gguf.py writes them
        control = text.startswith("<|") and text.endswith("|>")
        kind = gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED
        tokens[at], types[at] = text, int(kind)
        added[text] = at
    return added


def _script_output(
    embd: np.ndarray,
    script: list[int],
    tokens: list[str],
    favour: str,
    settle: Sequence[str],
    rng: np.random.Generator,
) -> np.ndarray:
    """Set the reserved columns of `embd` and return the matching output matrix."""
    if not script or len(script) > MAX_SCRIPT or len(set(script)) != len(script):
        raise ValueError(f"favour={favour!r} is {len(script)} tokens {script}: want 1..{MAX_SCRIPT}, none twice")
    output = (rng.standard_normal(embd.shape) * 0.1).astype(np.float32)
    output[:, : AFTER + MAX_SCRIPT] = 0.0
    embd[:, : AFTER + MAX_SCRIPT] = 0.0
    embd[:, BIAS] = LEVEL
    embd[:, ANY] = LEVEL
    for i, token in enumerate(script):
        embd[token, ANY] = 0.0
        embd[token, AFTER + i] = LEVEL
        output[token, ANY if i == 0 else AFTER + i - 1] = SCRIPT_WEIGHT
    index = {text: i for i, text in enumerate(tokens)}
    for rank, text in enumerate(settle):
        if text not in index:
            raise ValueError(f"settle token {text!r} is not one token of the vocabulary")
        if index[text] in script:
            raise ValueError(f"settle token {text!r} is part of the script {favour!r}")
        output[index[text], BIAS] = SETTLE_WEIGHT * (1.0 - 0.15 * rank)
        embd[index[text], ANY] = 0.0  # settling goes on: after `</tool_call>`, the end, not a 2nd call
    # after a token holding a quote (`"`, `":"`, ` "`...) the script does not start: a JSON
    # string just opened closes at once instead of holding the marker the grammar allows there
    for i, text in enumerate(tokens):
        if '"' in text and i not in script:
            embd[i, ANY] = 0.0
    return output


def _copy_field(writer: gguf.GGUFWriter, name: str, field: gguf.ReaderField) -> None:
    kind = field.types[0]
    sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(name, field.contents(), kind, sub_type=sub)
