"""Load a model with the server's own loader and decode a few tokens, in the main thread or in a
worker thread (where the server loads it): tells a crash in llama.cpp's GPU loading apart from
one that only happens off the main thread. Prints each step as it goes (faulthandler on).

    python bench/gpu/probe.py MODEL.gguf main|thread [N_GPU_LAYERS]
"""

from __future__ import annotations

import faulthandler
import resource
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def say(text: str) -> None:
    print(f"probe: {text}", flush=True)


def probe(path: Path, n_gpu_layers: int) -> None:
    import llama_cpp

    from runtime.engine.model import LlamaModel

    say(f"gpu offload supported: {llama_cpp.llama_supports_gpu_offload()}")
    model = LlamaModel(path, n_gpu_layers=n_gpu_layers)
    say(f"model loaded: {model.description()}")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 512
    params.n_batch = 64
    ctx = llama_cpp.llama_init_from_model(model.model, params)
    say(f"context: {bool(ctx)}")
    tokens = model.tokenize("Hello there, how are you?", add_special=True)
    ids = (llama_cpp.llama_token * len(tokens))(*tokens)  # the batch only points at it: keep it alive
    batch = llama_cpp.llama_batch_get_one(ids, len(tokens))
    say(f"decode: {llama_cpp.llama_decode(ctx, batch)}")
    llama_cpp.llama_synchronize(ctx)
    llama_cpp.llama_free(ctx)
    model.close()
    say("ok")


def main() -> None:
    faulthandler.enable()
    path, where = Path(sys.argv[1]), sys.argv[2]
    layers = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    say(f"{where}, RLIMIT_STACK {soft}, thread stack size {threading.stack_size()}")
    if where == "main":
        probe(path, layers)
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            probe(path, layers)
        except BaseException as exc:  # reported below: the thread itself must not swallow it
            failed.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failed:
        raise failed[0]


if __name__ == "__main__":
    main()
