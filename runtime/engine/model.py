"""Loading a GGUF with llama.cpp's C API and the vocabulary helpers built on it."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import llama_cpp

from runtime.engine.base import check_loading, loading_stopped
from runtime.errors import EngineFailure

log = logging.getLogger(__name__)
llama_log = logging.getLogger("toolstudio.llama_cpp")

# ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT (a continuation: logged at DEBUG).
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


@llama_cpp.llama_log_callback
def forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp is chatty at INFO; everything goes to DEBUG except real warnings/errors.
    py_level = _LEVELS.get(level, logging.DEBUG)
    if llama_log.isEnabledFor(py_level):
        llama_log.log(py_level, "%s", text.decode("utf-8", "replace").rstrip())


llama_cpp.llama_log_set(forward_llama_log, ctypes.c_void_p(0))
llama_cpp.llama_backend_init()


def tokenize(vocab: llama_cpp.llama_vocab_p, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
    data = text.encode("utf-8")
    capacity = len(data) + 8
    buf = (llama_cpp.llama_token * capacity)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
    if n < 0:  # buffer too small: n is minus the size needed
        capacity = -n
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
    return list(buf[:n])


def token_piece(vocab: llama_cpp.llama_vocab_p, token: int, buf: ctypes.Array[ctypes.c_char] | None = None) -> bytes:
    """The bytes one token contributes to the output (may be part of a UTF-8 character)."""
    buf = buf if buf is not None else ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n]


class ModelLoadError(EngineFailure):
    pass


class LlamaModel:
    """An owned `llama_model*` plus its vocabulary. Thread-safe for read-only calls.

    `n_gpu_layers`: layers whose weights go to the GPU when llama.cpp was built with one
    (CUDA, Metal, Vulkan): -1 all, 0 none. A CPU-only build ignores it. llama.cpp's own fitting
    to free GPU memory lives in its `common` library, which the bindings do not expose, so with
    -1 a model larger than the GPU fails to load (ModelLoadError) and needs an explicit N.
    """

    def __init__(self, path: Path, *, n_gpu_layers: int = -1) -> None:
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        log.info(
            "loading %s with n_gpu_layers=%d (%s)",
            path.name,
            n_gpu_layers,
            "this llama.cpp build can offload to a GPU" if self.gpu_offload else "CPU-only llama.cpp build",
        )
        last_decile = [-1]

        @llama_cpp.llama_progress_callback
        def progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
            decile = int(fraction * 10)
            if decile != last_decile[0]:
                last_decile[0] = decile
                log.info("loading %s: %d%%", path.name, decile * 10)
            return not loading_stopped()  # False makes llama.cpp abandon the load

        params.progress_callback = progress
        self._progress = progress  # keep the callback alive while llama.cpp may call it
        check_loading()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            check_loading()
            hint = " or too big for the GPU: try a smaller --n-gpu-layers" if self.gpu_offload and n_gpu_layers else ""
            raise ModelLoadError(f"llama.cpp could not load {path} (not a valid GGUF file?{hint})")
        self.path = path
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def close(self) -> None:
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):  # chat templates can be long
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", "replace") if raw else None

    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.model, buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocabulary entry of a token (for BOS/EOS strings in templates)."""
        if token < 0:
            return ""
        raw = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    @property
    def bos_token(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos_token(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_eos(self.vocab))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        return tokenize(self.vocab, text, add_special=add_special, parse_special=parse_special)

    def piece(self, token: int, buf: ctypes.Array[ctypes.c_char] | None = None) -> bytes:
        """The bytes one token contributes to the output (may be part of a UTF-8 character)."""
        return token_piece(self.vocab, token, buf)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
