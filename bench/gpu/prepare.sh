#!/usr/bin/env bash
# Fills bench/gpu/.carry with what bench/gpu/run.sh needs on a GPU machine that has no network:
#   llama.cpp.tar.xz  the llama.cpp source vendored in the llama-cpp-python sdist, trimmed to what
#                     the `llama`, `mtmd` and `llama-server` targets need (~5 MB)
#   wheels/           cp312 manylinux wheels of what `toolstudio run` and the benchmark client
#                     import (numpy and pillow excluded: the GPU image has them)
#   llama_cpp/        llama-cpp-python's pure-Python package, without a bundled library: it loads
#                     the CUDA build named by LLAMA_CPP_LIB_PATH
#   smollm2-vocab.gguf  the packaged SmolLM2 model's tokenizer keys, for make_model.py
# Run here (with the registry reachable), once; add `/bench/gpu/.carry/` to .git/info/exclude.
# Then, on the device: `bench/gpu/run.sh` with `bench/gpu/.carry` carried.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CARRY=${CARRY:-$HERE/.carry}
PY=${PYTHON:-$REPO/.venv/bin/python}
VERSION=0.3.36  # llama-cpp-python, as pinned in pyproject.toml
SDIST=${SDIST:-/tmp/sdist/llama_cpp_python-$VERSION}
WHEEL_PY=${WHEEL_PY:-3.12}  # the GPU image's python3

mkdir -p "$CARRY"
if [ ! -d "$SDIST" ]; then
    mkdir -p "$(dirname "$SDIST")"
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$(dirname "$SDIST")"
    tar xzf "$(dirname "$SDIST")/llama_cpp_python-$VERSION.tar.gz" -C "$(dirname "$SDIST")"
fi

# 1. llama.cpp, trimmed: no models, docs, tests, examples, web UI sources or other backends.
# CMake still reads every tools/*/CMakeLists.txt, so the tools stay (they are small).
tar -C "$SDIST/vendor/llama.cpp" -cJf "$CARRY/llama.cpp.tar.xz" \
    --exclude=./.git --exclude=./.github --exclude=./.devops --exclude=./models --exclude=./docs \
    --exclude=./media --exclude=./examples --exclude=./tests --exclude=./pocs --exclude=./benches \
    --exclude=./conversion --exclude=./gguf-py --exclude=./skills --exclude=./tools/ui/src \
    --exclude=./tools/ui/tests --exclude=./tools/ui/package-lock.json --exclude=./tools/server/tests \
    --exclude=./ggml/src/ggml-vulkan --exclude=./ggml/src/ggml-sycl --exclude=./ggml/src/ggml-opencl \
    --exclude=./ggml/src/ggml-metal --exclude=./ggml/src/ggml-hexagon --exclude=./ggml/src/ggml-et \
    --exclude=./ggml/src/ggml-cann --exclude=./ggml/src/ggml-musa --exclude=./ggml/src/ggml-webgpu \
    --exclude=./ggml/src/ggml-zdnn --exclude=./ggml/src/ggml-virtgpu --exclude=./ggml/src/ggml-hip \
    --exclude=./ggml/src/ggml-openvino --exclude=./ggml/src/ggml-zendnn .

# 2. llama-cpp-python's Python package (its shared libraries come from the CUDA build).
rm -rf "$CARRY/llama_cpp"
cp -r "$SDIST/llama_cpp" "$CARRY/llama_cpp"
rm -rf "$CARRY/llama_cpp/lib" "$CARRY/llama_cpp/server"
find "$CARRY/llama_cpp" -name __pycache__ -prune -exec rm -rf {} +

# 3. Wheels: the serving path's imports (runtime/, dialects/, plugins/ at start-up), llama_cpp's
# (diskcache), the benchmark client's (openai) and make_model.py's (gguf), with their
# dependencies, pinned to what the project's virtualenv runs.
pins=()
for name in litestar uvicorn msgspec jinja2 jsonschema pluggy jupyter_client httpx prometheus_client \
    mcp openai gguf diskcache typing_extensions; do
    version=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")
    pins+=("$name==$version")
done
rm -rf "$CARRY/wheels"
"$PY" -m pip download -q --only-binary=:all: --python-version "$WHEEL_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" "${pins[@]}" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
rm -f "$CARRY"/wheels/numpy-*.whl "$CARRY"/wheels/pillow-*.whl

# 4. The vocabulary (tokens, merges, chat template) of the packaged model.
if [ ! -f "$CARRY/smollm2-vocab.gguf" ]; then
    model=$("$PY" -c "from runtime.model_source import embedded_model; print(embedded_model())")
    (cd "$REPO" && "$PY" bench/gpu/make_model.py --vocab "$model" --extract-vocab "$CARRY/smollm2-vocab.gguf")
fi
du -sh "$CARRY" "$CARRY"/*
