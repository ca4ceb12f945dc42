# The two commands in the README: `make run` and `make test`. Both set up everything
# they need on a fresh machine (a virtualenv with the project, the sandbox packages as root, and
# the tools' own virtualenv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint bench setup system-deps tool-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python compiles llama.cpp on first install (about 6 minutes on 2 cores);
# pip caches the wheel, so later installs take seconds.
$(VENV)/.installed: pyproject.toml tests/plugins/toolstudio_example_plugin/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --progress-bar off -e ".[test]" -e tests/plugins/toolstudio_example_plugin
	touch $@

setup: $(VENV)/.installed

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

# Without the tool environment the server still starts (and logs which tools are not ready).
run: setup system-deps
	@$(BIN)/toolstudio tools setup || echo "note: the tool environment was not built (see above): the python tool falls back to system Python, without pandas"
	$(BIN)/toolstudio run $(ARGS)

test: setup system-deps tool-env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q $(ARGS)

bench: setup
	$(BIN)/python bench/bench_decode.py
	$(BIN)/python bench/bench_grammar.py
