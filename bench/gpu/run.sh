#!/usr/bin/env bash
# The GPU benchmark, in one go on a machine with an NVIDIA GPU and no network (bench/README.md, "GPU"):
#   1. installs the carried wheels into a --target directory for the image's python3 (it keeps
#      its own numpy and pillow) plus llama-cpp-python's Python package, and makes random-weight
#      models of real shapes on the SmolLM2 vocabulary (make_model.py), in the background while
#   2. llama.cpp is built with CUDA from the source vendored in llama-cpp-python (libllama for
#      toolstudio through LLAMA_CPP_LIB_PATH, llama-server for the comparison: one build for both);
#   3. runs bench/bench_concurrency.py against both servers for each model shape.
# Needs bench/gpu/.carry, filled by bench/gpu/prepare.sh. Writes to $OUT (default /tmp/gpu-out):
#   run.log (everything, with timings), build.log, results.md (the tables), logs-<shape>/ (servers).
# Settings (environment): GPU=cuda|cpu (cpu: a rehearsal without CUDA), CUDA_ARCH (90-real),
# FA_HEADS (64), SHAPES, CLIENTS, TOKENS, ROUNDS, SLOTS, NGL, JOBS, WORK, BUILD, PYTHON, DEADLINE
# (seconds: later shapes are skipped when less than 150 s would be left).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/gpu-out}
CARRY=${CARRY:-$HERE/.carry}
WORK=${WORK:-/tmp/toolstudio-gpu}
BUILD=${BUILD:-$WORK/build}
GPU=${GPU:-cuda}
CUDA_ARCH=${CUDA_ARCH:-90-real}
JOBS=${JOBS:-$(nproc)}
PY=${PYTHON:-python3}
SHAPES=${SHAPES:-smollm2-135m llama-1b}
CLIENTS=${CLIENTS:-1,4,16}
SLOTS=${SLOTS:-16}
TOKENS=${TOKENS:-128}
ROUNDS=${ROUNDS:-2}
NGL=${NGL:--1}
FA_HEADS=${FA_HEADS-64}  # head sizes whose FlashAttention kernels are compiled (empty: all)
DEADLINE=${DEADLINE:-540}
MIN_LEFT=${MIN_LEFT:-150}  # seconds a shape needs: later shapes are skipped with less
START=$(date +%s)

mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1
elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[$(elapsed)s] $*"; }
fail() { say "FAILED: $*"; exit 1; }

say "host: $(nproc) cores, $(uname -m); python: $($PY --version 2>&1); cmake: $(cmake --version | head -1)"
if [ "$GPU" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || say "nvidia-smi failed"
fi

# -- 1. Python and the models, in the background while llama.cpp builds -------------------------

site=$WORK/site
export PYTHONPATH=$site${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}
prepare() {
    if [ ! -d "$site/llama_cpp" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$CARRY"/wheels/*.whl \
            || return 1
        cp -r "$CARRY/llama_cpp" "$site/llama_cpp"
        # The checkout is used in place, not installed: `toolstudio --version` still reads this.
        mkdir -p "$site/toolstudio-0.dist-info"
        printf 'Metadata-Version: 2.1\nName: toolstudio\nVersion: %s\n' \
            "$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")" >"$site/toolstudio-0.dist-info/METADATA"
    fi
    say "wheels installed"
    for shape in $SHAPES; do
        [ -f "$WORK/$shape.gguf" ] && continue
        "$PY" "$REPO/bench/gpu/make_model.py" --vocab "$CARRY/smollm2-vocab.gguf" --shape "$shape" \
            --out "$WORK/$shape.gguf.part" && mv "$WORK/$shape.gguf.part" "$WORK/$shape.gguf" || return 1
    done
}
prepare &
prepared=$!

# -- 2. llama.cpp -----------------------------------------------------------------------------

cuda_flags() {
    # nvcc, and cuBLAS: from the toolkit, else from the nvidia-cublas wheel PyTorch brought along
    # (its lib/ and include/ sit side by side under site-packages/nvidia/...).
    local root=${CUDA_HOME:-/usr/local/cuda} nvcc lib lt dirs driver
    # a host compiler newer than this nvcc knows is fine for ggml (the check would stop the build)
    local cuda_cflags="-allow-unsupported-compiler"
    nvcc=$(command -v nvcc || echo "$root/bin/nvcc")
    [ -x "$nvcc" ] || fail "no nvcc"
    say "nvcc: $("$nvcc" --version | tail -1)"
    flags=(-DGGML_CUDA=ON "-DCMAKE_CUDA_COMPILER=$nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH"
        # compile time: FlashAttention vector kernels for f16 K/V only (the KV cache's type),
        # no fatbin compression, no NCCL (one GPU)
        -DGGML_CUDA_FA_QUANTS=f16-f16 -DGGML_CUDA_COMPRESSION_MODE=none -DGGML_CUDA_NCCL=OFF)
    if ! compgen -G "$root/lib*/libcublas.so*" >/dev/null && ! compgen -G "$root/targets/*/lib/libcublas.so*" >/dev/null; then
        dirs=$("$PY" -c "import site, sys; print(' '.join(p for p in site.getsitepackages() + sys.path if p))")
        lib=$(find ${CUDA_LIB_SEARCH:-} $dirs -maxdepth 5 -path '*nvidia*' -name 'libcublas.so*' 2>/dev/null | head -1)
        [ -n "$lib" ] || fail "no cuBLAS in $root or the Python packages"
        lt=$(find "$(dirname "$lib")" -maxdepth 1 -name 'libcublasLt.so*' | head -1)
        say "cuBLAS from $lib"
        flags+=("-DCUDA_cublas_LIBRARY=$lib" "-DCUDA_cublasLt_LIBRARY=$lt")
        cuda_cflags+=" -I$(dirname "$(dirname "$lib")")/include"
        export LD_LIBRARY_PATH=$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
    # The driver library, for CUDA's virtual memory management in ggml's pool; without it the
    # pool uses plain cudaMalloc'ed blocks (GGML_CUDA_NO_VMM), the same after warm-up.
    driver=$(compgen -G "$root/lib*/stubs/libcuda.so" || ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? /{print $NF; exit}')
    [ -z "$driver" ] && driver=$(compgen -G "/usr/local/nvidia/lib*/libcuda.so*" | head -1)
    if [ -n "$driver" ]; then flags+=("-DCUDA_cuda_driver_LIBRARY=$driver"); else flags+=(-DGGML_CUDA_NO_VMM=ON); fi
    say "libcuda: ${driver:-none (GGML_CUDA_NO_VMM)}"
    flags+=("-DCMAKE_CUDA_FLAGS=$cuda_cflags")
}

trim_fa() {
    # Compile time: FlashAttention's template instances are most of it, one per head size (and
    # tile shape). Those of the head sizes in FA_HEADS are compiled as usual; the others move to
    # `*-others.cu` files that define GGML_CUDA_NO_FA first, so their kernels compile to a trap
    # (as in a GGML_CUDA_FA=OFF build) while every symbol still exists. A model whose head size
    # is not in FA_HEADS would abort at its first attention; both benchmark shapes use 64.
    local dir=$1/ggml/src/ggml-cuda/template-instances f keep d
    keep="^DECL_FATTN_MMA_F16_CASE\(($(echo "$FA_HEADS" | tr ' ,' '||')),"
    for f in "$dir"/fattn-mma-f16-instance-*.cu; do
        {
            echo "#define GGML_CUDA_NO_FA  // bench/gpu/run.sh: head sizes other than $FA_HEADS, no device code"
            echo '#include "../fattn-mma-f16.cuh"'
            grep '^DECL' "$f" | grep -Ev "$keep" || true
        } >"${f%.cu}-others.cu"
        { echo '#include "../fattn-mma-f16.cuh"'; grep -E "$keep" "$f" || true; } >"$f.new"
        mv "$f.new" "$f"
    done
    for f in "$dir"/fattn-tile-instance-dkq*.cu; do
        d=$(basename "$f" | sed -E 's/.*dkq([0-9]+)-.*/\1/')
        case " $(echo "$FA_HEADS" | tr ',' ' ') " in
            *" $d "*) ;;
            *) sed -i "1i #define GGML_CUDA_NO_FA  // bench/gpu/run.sh: not a head size in $FA_HEADS" "$f" ;;
        esac
    done
}

if [ -f "$BUILD/bin/llama-server" ] && [ -f "$BUILD/bin/libllama.so" ]; then
    say "llama.cpp build found in $BUILD: not rebuilt"
    [ "$GPU" = cuda ] && cuda_flags >/dev/null  # only for LD_LIBRARY_PATH
else
    src=$WORK/llama.cpp
    rm -rf "$src" && mkdir -p "$src" && tar -C "$src" -xJf "$CARRY/llama.cpp.tar.xz" || fail "unpacking llama.cpp"
    flags=(-DGGML_CUDA=OFF)
    if [ "$GPU" = cuda ]; then
        cuda_flags
        [ -n "$FA_HEADS" ] && trim_fa "$src"
    fi
    say "configuring: ${flags[*]}"
    cmake -S "$src" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
        -DGGML_CCACHE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_CURL=OFF "${flags[@]}" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; fail "cmake configure"; }
    say "building llama, mtmd, llama-server with $JOBS jobs"
    ninja -C "$BUILD" -j "$JOBS" llama mtmd llama-server >>"$OUT/build.log" 2>&1 \
        || { grep -A12 "^FAILED" "$OUT/build.log" | head -60; tail -15 "$OUT/build.log"; fail "build"; }
    say "built: $(ls "$BUILD/bin" | tr '\n' ' ')"
fi

wait $prepared || fail "installing the wheels or making the models"
export LLAMA_CPP_LIB_PATH=$BUILD/bin MTMD_CPP_LIB=$BUILD/bin
cd "$REPO" || fail "cd $REPO"
"$PY" -c "import llama_cpp, runtime.app, openai, gguf; print('llama.cpp GPU offload:', llama_cpp.llama_supports_gpu_offload())" \
    || fail "importing the server"
say "python ready"

# A crash while loading is told apart here: llama.cpp's own, or one only off the main thread
# (where the server loads the model). On a crash, cuda-gdb (the image has no gdb) gives the
# native stack.
export PYTHONFAULTHANDLER=1
probe_model=$WORK/${SHAPES%% *}.gguf
probe_status=()
for where in main thread; do
    timeout 90 "$PY" bench/gpu/probe.py "$probe_model" "$where" "$NGL" 2>&1 | grep -v "^llama_model_loader\|^print_info\|^load" | tail -25
    code=${PIPESTATUS[0]}
    probe_status+=("$code")
    say "probe in the $where thread: exit $code"
done
if [ "${probe_status[0]}" = 0 ] && [ "${probe_status[1]}" != 0 ]; then
    export BENCH_THREAD_STACK_MIB=256  # bench_concurrency.py --serve-timed: threading.stack_size
    say "only the worker thread crashed: the server runs with $BENCH_THREAD_STACK_MIB MiB thread stacks"
fi
if [ "${probe_status[0]}" != 0 ] || [ "${probe_status[1]}" != 0 ]; then
    gdb=$(command -v cuda-gdb || echo /usr/local/cuda/bin/cuda-gdb)
    [ "${probe_status[0]}" != 0 ] && where=main || where=thread
    timeout 120 "$gdb" -q -batch -ex run -ex bt -ex "info threads" --args "$PY" bench/gpu/probe.py "$probe_model" "$where" "$NGL" 2>&1 \
        | grep -v "^\[New Thread\|^\[Thread .* exited\|^llama_model_loader\|^print_info\|^load" | tail -60
fi

# -- 3. the benchmark ---------------------------------------------------------------------------

: >"$OUT/results.md"
for shape in $SHAPES; do
    left=$((DEADLINE - $(elapsed)))
    if [ "$left" -lt "$MIN_LEFT" ]; then
        say "skipping $shape: ${left}s left"
        continue
    fi
    model=$WORK/$shape.gguf
    say "benchmarking $shape (${left}s left)"
    label="$shape, random f16 weights (SmolLM2 vocabulary), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo CPU)"
    timeout $((left - 20)) env PYTHONUNBUFFERED=1 "$PY" bench/bench_concurrency.py --model "$model" --label "$label" \
        --llama-server "$BUILD/bin/llama-server" --n-gpu-layers "$NGL" --clients "$CLIENTS" --slots "$SLOTS" \
        --tokens "$TOKENS" --rounds "$ROUNDS" --timeout 120 --logs "$OUT/logs-$shape" --markdown "$WORK/$shape.md"
    status=$?
    if [ -f "$WORK/$shape.md" ]; then cat "$WORK/$shape.md" >>"$OUT/results.md"; echo >>"$OUT/results.md"; fi
    [ $status -eq 0 ] || say "$shape: the benchmark exited with $status (server logs in $OUT/logs-$shape)"
    rm -f "$WORK/$shape.md"
done
say "done"
