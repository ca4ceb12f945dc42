# The two commands in the README: `make run` and `make test`. Both set up everything
# they need on a fresh machine (a virtualenv with the project, the sandbox packages as root, and
# the tools' own virtualenv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint bench setup system-deps tool-env webui browser-deps postgres-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python compiles llama.cpp on first install (about 6 minutes on 2 cores);
# pip caches the wheel, so later installs take seconds.
# With a CUDA toolkit (nvcc on the PATH or in /usr/local/cuda) and an NVIDIA GPU (nvidia-smi
# lists one) llama.cpp is compiled with CUDA for the GPUs present (GPU=auto; a toolkit alone,
# as on build machines without a GPU, keeps the CPU build). `make setup GPU=cpu` or `GPU=cuda`
# forces one or the other, and rebuilds llama-cpp-python (--no-cache-dir) when the installed
# build is the other kind.
GPU ?= auto
NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
NVIDIA_GPU := $(if $(GPU:auto=),,$(shell nvidia-smi -L 2>/dev/null | grep -m1 '^GPU'))
LLAMA_GPU := $(if $(filter auto,$(GPU)),$(if $(and $(NVCC),$(NVIDIA_GPU)),cuda,cpu),$(GPU))
LLAMA_ENV := $(if $(filter cuda,$(LLAMA_GPU)),CMAKE_ARGS="-DGGML_CUDA=on $$CMAKE_ARGS" $(if $(NVCC),CUDACXX=$(NVCC)),CMAKE_ARGS="-DGGML_CUDA=off $$CMAKE_ARGS")

$(VENV)/.installed: pyproject.toml tests/plugins/toolstudio_example_plugin/pyproject.toml | $(BIN)/python
	$(LLAMA_ENV) $(BIN)/pip install --progress-bar off -e ".[test,postgres]" -e tests/plugins/toolstudio_example_plugin
	touch $@

setup: $(VENV)/.installed
	@case "$(LLAMA_GPU)" in cuda|cpu) ;; *) echo "GPU=$(GPU): expected auto, cuda or cpu" >&2; exit 2;; esac
	@has=$$($(BIN)/python -c "import llama_cpp; print('cuda' if llama_cpp.llama_supports_gpu_offload() else 'cpu')"); \
	if [ "$$has" != "$(LLAMA_GPU)" ]; then \
		version=$$($(BIN)/python -c "import llama_cpp; print(llama_cpp.__version__)"); \
		echo "llama-cpp-python $$version is a $$has build; rebuilding it for $(LLAMA_GPU) (minutes)"; \
		$(LLAMA_ENV) $(BIN)/pip install --progress-bar off --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$$version"; \
	fi

# bubblewrap sandboxes the bash and python tools; e2fsprogs' mkfs.ext4 makes each session's disk
# image (the per-session disk quota); python3-venv lets /usr/bin/python3 (which the sandbox sees at
# the same path) build the tool environment.
system-deps:
	@if ! command -v bwrap >/dev/null || ! command -v mkfs.ext4 >/dev/null || ! /usr/bin/python3 -c "import ensurepip" 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap e2fsprogs python3-venv; \
		else \
			echo "note: the sandboxed tools need bubblewrap, e2fsprogs and python3-venv: as root, run 'apt-get install bubblewrap e2fsprogs python3-venv' (the server says which tools are not ready)"; \
		fi; \
	fi

# The tool environment (runtime/toolenv.py): a virtualenv of /usr/bin/python3 with the pinned
# plugins/python_tool/requirements.txt (numpy, pandas, matplotlib, scipy, sympy, pillow, ipykernel),
# bound read-only into the sandbox. About 30 s and 600 MB the first time; a no-op after that.
tool-env: setup system-deps
	$(BIN)/toolstudio tools setup

# The web page's third-party assets (marked, DOMPurify, highlight.js) from the npm registry, at the
# versions webui/package-lock.json pins, copied into webui/static/vendor/ (not committed). As root,
# npm is installed when missing; without npm the page still works and shows replies as plain text.
WEBUI_VENDOR := webui/static/vendor
$(WEBUI_VENDOR)/.built: webui/package.json webui/package-lock.json
	@if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm || true; \
	fi
	@if command -v npm >/dev/null; then \
		cd webui && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error && \
		rm -rf static/vendor && mkdir -p static/vendor && \
		cp node_modules/marked/lib/marked.esm.js static/vendor/marked.js && \
		cp node_modules/dompurify/dist/purify.es.mjs static/vendor/purify.js && \
		cp node_modules/@highlightjs/cdn-assets/es/highlight.min.js static/vendor/highlight.js && \
		cp node_modules/@highlightjs/cdn-assets/styles/github.min.css node_modules/@highlightjs/cdn-assets/styles/github-dark.min.css static/vendor/ && \
		touch static/vendor/.built; \
	else \
		echo "note: npm not found: the web page shows replies as plain text (install npm, then run 'make webui')"; \
	fi

webui: $(WEBUI_VENDOR)/.built

# The browser tests (tests/browser) drive Debian's chromium with Playwright, and need the page's
# assets, hence npm.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium npm; \
		else \
			echo "note: the browser tests need chromium and npm: as root, run 'apt-get install chromium npm' (they are skipped without chromium)"; \
		fi; \
	fi

# The storage tests run on a real PostgreSQL (tests/postgres.py starts a throwaway cluster with
# Debian's initdb/pg_ctl, which live in /usr/lib/postgresql/<version>/bin). In CI (CI=true) they
# fail rather than skip without it. The package's own cluster service is not used.
postgres-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
		else \
			echo "note: the PostgreSQL storage tests need postgresql: as root, run 'apt-get install postgresql' (they are skipped without it)"; \
		fi; \
	fi

# Without the tool environment the server still starts (and logs which tools are not ready).
run: setup system-deps webui
	@$(BIN)/toolstudio tools setup || echo "note: the tool environment was not built (see above): the python tool falls back to system Python, without pandas"
	$(BIN)/toolstudio run $(ARGS)

test: setup system-deps tool-env browser-deps webui postgres-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q $(ARGS)

bench: setup
	$(BIN)/python bench/bench_decode.py
	$(BIN)/python bench/bench_grammar.py
