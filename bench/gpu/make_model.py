"""Random-weight GGUF models with real dimensions and a real vocabulary, for GPU benchmarks.

The packaged SmolLM2 GGUF (98 MB) does not fit in what travels to the benchmark machine, so
the model is made there: llama-architecture f16 weights of a real model's shape, drawn at
random (numpy), with every `tokenizer.*` key (tokens, merges, chat template) copied from a real
GGUF. Decoding costs the same with random weights as with trained ones (the same matrix
products over the same shapes); only the text is meaningless.

The end-of-generation tokens (every CONTROL token) get a zero output row, so their logit is 0
while the others spread about 0 with a standard deviation near 1: a top-k/min-p sampler then
never stops early, and every stream produces exactly `max_tokens` tokens on both servers.

    python bench/gpu/make_model.py --extract-vocab VOCAB.gguf --vocab SmolLM2.gguf  # small: ~2 MB
    python bench/gpu/make_model.py --vocab VOCAB.gguf --shape smollm2-135m --out model.gguf
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class Shape:
    """A model's dimensions (llama architecture; the vocabulary comes from the vocab file)."""

    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    context: int = 8192
    rope_base: float = 100000.0


SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct: the packaged default model
    "smollm2-135m": Shape(n_embd=576, n_layer=30, n_head=9, n_head_kv=3, n_ff=1536),
    # HuggingFaceTB/SmolLM2-360M-Instruct
    "smollm2-360m": Shape(n_embd=960, n_layer=32, n_head=15, n_head_kv=5, n_ff=2560),
    # meta-llama/Llama-3.2-1B's layers (on the SmolLM2 vocabulary: 1.07 B parameters)
    "llama-1b": Shape(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, rope_base=500000.0),
}


def read_vocab(path: Path) -> gguf.GGUFReader:
    reader = gguf.GGUFReader(str(path))
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise SystemExit(f"{path} has no tokenizer.ggml.tokens: not a vocabulary")
    return reader


def copy_tokenizer(writer: gguf.GGUFWriter, reader: gguf.GGUFReader) -> list[int]:
    """Copy every `tokenizer.*` key; returns the token types."""
    types: list[int] = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        if name == "tokenizer.ggml.tokens":
            writer.add_token_list(field.contents())
        elif name == "tokenizer.ggml.token_type":
            types = field.contents()
            writer.add_token_types(types)
        else:
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    return types


def extract_vocab(source: Path, out: Path) -> None:
    """A GGUF holding only `source`'s tokenizer keys (no tensors)."""
    reader = read_vocab(source)
    writer = gguf.GGUFWriter(str(out), arch="llama")
    copy_tokenizer(writer, reader)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model(vocab: Path, shape_name: str, out: Path, seed: int = 0) -> None:
    shape = SHAPES[shape_name]
    reader = read_vocab(vocab)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    head_dim = shape.n_embd // shape.n_head
    rng = np.random.default_rng(seed)

    def normal(rows: int, cols: int, std: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)

    e, kv = shape.n_embd, shape.n_head_kv * head_dim
    # One layer's weights, written for every layer: the same shapes cost the same compute,
    # and drawing 1 B normals would take longer than the benchmark.
    layer = {
        "attn_q.weight": normal(e, e, e**-0.5),
        "attn_k.weight": normal(kv, e, e**-0.5),
        "attn_v.weight": normal(kv, e, e**-0.5),
        "attn_output.weight": normal(e, e, 0.02),
        "ffn_gate.weight": normal(shape.n_ff, e, e**-0.5),
        "ffn_up.weight": normal(shape.n_ff, e, e**-0.5),
        "ffn_down.weight": normal(e, shape.n_ff, 0.02),
    }
    ones = np.ones(e, dtype=np.float32)
    # Tied output (as SmolLM2): logit = normalised state (norm ~ sqrt(e)) . embedding row.
    embd = normal(n_vocab, e, e**-0.5)

    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_name(f"random-{shape_name}")
    writer.add_description("random weights with a real model's shape and vocabulary, for benchmarks")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(e)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    types = copy_tokenizer(writer, reader)
    for token, kind in enumerate(types):
        if kind == gguf.TokenType.CONTROL:
            embd[token] = 0.0  # end-of-generation tokens score 0: never among the top few
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones)
    for i in range(shape.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        for name, data in layer.items():
            writer.add_tensor(f"blk.{i}.{name}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=Path, required=True, help="a GGUF whose tokenizer keys to copy")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--out", type=Path, help="the model to write")
    parser.add_argument("--extract-vocab", type=Path, metavar="OUT", help="write only --vocab's tokenizer keys")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.extract_vocab:
        extract_vocab(args.vocab, args.extract_vocab)
        written = args.extract_vocab
    elif args.out:
        write_model(args.vocab, args.shape, args.out, args.seed)
        written = args.out
    else:
        parser.error("give --out or --extract-vocab")
    size = written.stat().st_size / 2**20
    print(f"wrote {written} ({size:.0f} MiB) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
