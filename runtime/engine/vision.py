"""Images the model really sees: a multimodal projector (`--mmproj`) through llama.cpp's libmtmd.

llama-cpp-python's multimodal chat handlers drive the high-level `Llama` object one request
at a time, which would bypass the batching scheduler. So the engine uses the same libmtmd
bindings directly: `Projector.tokenize` turns a rendered prompt (images marked with
`marker`) into text tokens plus `MediaChunk`s, and the scheduler's decode thread calls
`Projector.evaluate` to encode an image and write its embeddings into a slot's KV cache.

In the flat token list a prompt becomes, an image occupies its `n_pos` KV positions with a
negative placeholder id derived from the image bytes. Prefix reuse therefore keeps working:
the same image at the same place matches, a different image does not.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import logging
import weakref
from pathlib import Path

import llama_cpp
from llama_cpp import mtmd_cpp
from PIL import Image

from runtime.engine.model import LlamaModel, ModelLoadError, forward_llama_log
from runtime.errors import EngineFailure, InvalidRequest

log = logging.getLogger(__name__)

# libmtmd prints its own chatter (tokenizer dumps, timings) to stderr unless given a logger.
mtmd_cpp.mtmd_log_set(forward_llama_log, ctypes.c_void_p(0))
mtmd_cpp.mtmd_helper_log_set(forward_llama_log, ctypes.c_void_p(0))


class MediaChunk:
    """One image of a tokenized prompt, preprocessed and ready to encode. Owns its C chunk."""

    __slots__ = ("__weakref__", "_ptr", "n_pos", "placeholder")

    def __init__(self, ptr: mtmd_cpp.mtmd_input_chunk_p, placeholder: int) -> None:
        self._ptr = ptr
        self.n_pos: int = mtmd_cpp.mtmd_input_chunk_get_n_pos(ptr)
        self.placeholder = placeholder
        # Freed when the last reference goes: the decode thread holds one while it evaluates.
        weakref.finalize(self, mtmd_cpp.mtmd_input_chunk_free, ptr)


def placeholder_id(image: bytes) -> int:
    """A negative id that stands for this image in token lists (never a real token)."""
    return -1 - int.from_bytes(hashlib.sha256(image).digest()[:7], "big")


def is_placeholder(token: int) -> bool:
    return token < 0


class Projector:
    """An mtmd context: a projector GGUF bound to the loaded text model."""

    def __init__(self, path: Path, model: LlamaModel, *, threads: int) -> None:
        if not path.is_file():
            raise ModelLoadError(f"mmproj file not found: {path}")
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = threads
        log.info("loading multimodal projector %s", path.name)
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model.model, params)
        if not self.ctx:
            raise ModelLoadError(
                f"llama.cpp could not load the projector {path} "
                "(not an mmproj GGUF, or made for a model with another embedding size?)"
            )
        if not mtmd_cpp.mtmd_support_vision(self.ctx):
            self.close()
            raise ModelLoadError(f"the projector {path} has no vision encoder")
        self.marker = mtmd_cpp.mtmd_default_marker().decode()

    def close(self) -> None:
        if self.ctx:
            mtmd_cpp.mtmd_free(self.ctx)
            self.ctx = None

    def tokenize(self, prompt: str, images: list[bytes], *, add_special: bool) -> tuple[list[int], list[MediaChunk]]:
        """The prompt as a flat token list (each image a run of placeholders) plus its images in order."""
        if prompt.count(self.marker) != len(images):
            raise InvalidRequest(f"the conversation text contains the reserved image marker {self.marker!r}")
        bitmaps: list[mtmd_cpp.mtmd_bitmap_p] = []
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            bitmaps += (_bitmap(image) for image in images)  # freed below even if a later one fails
            data = prompt.encode()
            text = mtmd_cpp.mtmd_input_text(data, len(data), add_special, True)
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
            status = mtmd_cpp.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), array, len(bitmaps))
            if status != 0:
                raise InvalidRequest(f"the images could not be prepared for the model (mtmd_tokenize: {status})")
            return self._flatten(chunks, images)
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)

    def _flatten(self, chunks: mtmd_cpp.mtmd_input_chunks_p, images: list[bytes]) -> tuple[list[int], list[MediaChunk]]:
        tokens: list[int] = []
        media: list[MediaChunk] = []
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            kind = mtmd_cpp.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ids = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens += ids[: n.value]
            elif kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                item = MediaChunk(mtmd_cpp.mtmd_input_chunk_copy(chunk), placeholder_id(images[len(media)]))
                tokens += [item.placeholder] * item.n_pos
                media.append(item)
            else:
                raise InvalidRequest("only image inputs are supported")
        if tokens and is_placeholder(tokens[-1]):
            raise InvalidRequest("the prompt cannot end with an image")  # nothing to sample from
        return tokens, media

    def evaluate(
        self, lctx: llama_cpp.llama_context_p, media: MediaChunk, n_past: int, seq_id: int, n_batch: int
    ) -> None:
        """Encode one image and decode its embeddings into `seq_id` at `n_past` (decode thread only)."""
        new_n_past = llama_cpp.llama_pos(n_past)  # in/out: text chunks add to it, images overwrite it
        status = mtmd_cpp.mtmd_helper_eval_chunk_single(
            self.ctx, lctx, media._ptr, n_past, seq_id, n_batch, False, ctypes.byref(new_n_past)
        )
        if status != 0:
            raise EngineFailure(f"evaluating an image failed (mtmd status {status})")
        if new_n_past.value != n_past + media.n_pos:
            raise EngineFailure(f"an image took {new_n_past.value - n_past} positions, expected {media.n_pos}")


def _bitmap(image: bytes) -> mtmd_cpp.mtmd_bitmap_p:
    # Pillow already validated the bytes (runtime/images.py) and reads more formats than
    # libmtmd's stb_image (webp, tiff), so it decodes here too and hands over raw RGB.
    with Image.open(io.BytesIO(image)) as decoded:
        rgb = decoded.convert("RGB")
    raw = rgb.tobytes()
    bitmap = mtmd_cpp.mtmd_bitmap_init(rgb.width, rgb.height, (ctypes.c_uint8 * len(raw)).from_buffer_copy(raw))
    if not bitmap:
        raise InvalidRequest("an image could not be handed to the model")
    return bitmap
