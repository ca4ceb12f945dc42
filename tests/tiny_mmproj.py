"""Write a tiny, random-weight multimodal projector ("mmproj") GGUF for tests.

llama.cpp's libmtmd (``llama_cpp.mtmd_cpp``) needs a vision encoder + projector file next to the
text model before it will evaluate images. Real projectors are hundreds of megabytes and must be
downloaded; this module writes a ~0.2 MB one in a few milliseconds, so tests can exercise the real
image path (``mtmd_init_from_file`` -> ``mtmd_tokenize`` -> ``mtmd_helper_eval_chunks``) offline
against the packaged SmolLM2-135M text model.

The file is a LLaVA-1.5 style CLIP projector (``clip.projector_type = "mlp"``), the simplest layout
the loader accepts: every image is padded/resized to ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (no tiling, no
slices, no wrapping tokens), cut into ``PATCH_SIZE`` patches by a conv, given position embeddings,
then mapped to the text model's ``n_embd`` by ``mm.0`` -> GELU -> ``mm.2``. Each image therefore
becomes exactly ``N_IMAGE_TOKENS`` (16) embeddings, with one position per embedding. The loader
requires one transformer block to exist, but LLaVA reads the penultimate layer, so with
``block_count = 1`` no block is executed.

The weights are random (numpy, fixed seed): the model "sees" a deterministic function of the
pixels, not their meaning. Different images give clearly different embeddings, the same image
always gives the same ones, and nothing about the output is semantically meaningful.
"""

from __future__ import annotations

import pathlib

import gguf
import numpy as np

IMAGE_SIZE = 32  # every image is resized (with padding) to this square
PATCH_SIZE = 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 embeddings / positions per image

VISION_EMBD = 32  # width of the (tiny) vision tower
VISION_HEADS = 2
VISION_FF = 64  # must differ from VISION_EMBD, or the loader's "ffn up/down swapped" heuristic fires
PROJ_HIDDEN = 64  # mm.0 output / mm.2 input
# rough scale of the output embeddings: measured std ~0.4 for a noise image, ~1.3 for a saturated solid
# colour (SmolLM2's own token embeddings: ~0.14). Big enough that different images change greedy replies.
OUTPUT_STD = 0.5


def write_tiny_mmproj(path: pathlib.Path, *, n_embd: int = 576, seed: int = 0) -> pathlib.Path:
    """Write the projector to ``path`` and return it.

    ``n_embd`` must equal the text model's embedding size (``llama_model_n_embd``): mtmd refuses a
    projector whose output width differs. The same ``seed`` always gives a byte-identical file.
    """
    path = pathlib.Path(path)
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    n_pos = N_IMAGE_TOKENS
    fan_in_patch = 3 * PATCH_SIZE * PATCH_SIZE
    # numpy shapes are (out, in); ggml sees them reversed. Pixels arrive normalised to [-1, 1].
    tensors: dict[str, np.ndarray] = {
        "v.patch_embd.weight": normal((VISION_EMBD, 3, PATCH_SIZE, PATCH_SIZE), 2.0 / np.sqrt(fan_in_patch)),
        "v.patch_embd.bias": normal((VISION_EMBD,), 0.1),
        "v.position_embd.weight": normal((n_pos, VISION_EMBD), 0.3),
        # the one required block (not executed, see the module docstring)
        "v.blk.0.attn_out.weight": normal((VISION_EMBD, VISION_EMBD), 1.0 / np.sqrt(VISION_EMBD)),
        "v.blk.0.ffn_up.weight": normal((VISION_FF, VISION_EMBD), 1.0 / np.sqrt(VISION_EMBD)),
        "v.blk.0.ffn_down.weight": normal((VISION_EMBD, VISION_FF), 1.0 / np.sqrt(VISION_FF)),
        # the LLaVA MLP projector: mm.0 -> GELU -> mm.2
        "mm.0.weight": normal((PROJ_HIDDEN, VISION_EMBD), 1.5 / np.sqrt(VISION_EMBD)),
        "mm.0.bias": normal((PROJ_HIDDEN,), 0.1),
        "mm.2.weight": normal((n_embd, PROJ_HIDDEN), OUTPUT_STD * 1.5 / np.sqrt(PROJ_HIDDEN)),
        "mm.2.bias": np.zeros((n_embd,), dtype=np.float32),
    }

    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_name("tiny-random-mmproj")
    writer.add_description("random-weight LLaVA-style projector for tests; its outputs mean nothing")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    # the loader reads these with gguf_get_val_u32 / _f32, which abort on any other value type
    writer.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    writer.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    writer.add_uint32("clip.vision.embedding_length", VISION_EMBD)
    writer.add_uint32("clip.vision.feed_forward_length", VISION_FF)
    writer.add_uint32("clip.vision.block_count", 1)
    writer.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
    writer.add_uint32("clip.vision.projection_dim", n_embd)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    for name, data in tensors.items():
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
