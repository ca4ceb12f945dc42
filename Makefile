# The two commands in the README: `make run` and `make test`. Both set up everything
# they need on a fresh machine (a virtualenv with the project, and the sandbox packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint bench setup system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python compiles llama.cpp on first install (about 6 minutes on 2 cores);
# pip caches the wheel, so later installs take seconds.
$(VENV)/.installed: pyproject.toml tests/plugins/toolstudio_example_plugin/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --progress-bar off -e ".[test]" -e tests/plugins/toolstudio_example_plugin
	touch $@

setup: $(VENV)/.installed

# bubblewrap sandboxes the bash and python tools; the sandboxed Jupyter kernel runs on
# Debian's python3 with ipykernel (a venv under /root is not visible inside the sandbox);
# e2fsprogs' mkfs.ext4 makes each session's disk image (the per-session disk quota).
system-deps:
	@if ! command -v bwrap >/dev/null || ! command -v mkfs.ext4 >/dev/null || ! /usr/bin/python3 -c "import ipykernel" 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap python3-ipykernel e2fsprogs; \
		else \
			echo "note: install bubblewrap, python3-ipykernel and e2fsprogs (as root) for the sandboxed tools"; \
		fi; \
	fi

run: setup
	$(BIN)/toolstudio run $(ARGS)

test: setup system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q $(ARGS)

bench: setup
	$(BIN)/python bench/bench_decode.py
	$(BIN)/python bench/bench_grammar.py
