"""llama.cpp's public chat templates and vocabularies, fetched at test time.

The llama-cpp-python source distribution of the installed version carries llama.cpp's
`models/templates/*.jinja` (the real chat templates of ~70 model families) and
`models/ggml-vocab-*.gguf` (real tokenizers). Tests use them instead of templates written
here, so a family is tested against what its authors ship. They are downloaded once with
pip (from the package index, or pip's own cache) and kept under
`$TOOLSTUDIO_TEST_CACHE` (default `~/.cache/toolstudio-tests`); never copied into the repo.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from functools import cache
from pathlib import Path

import pytest

WANTED = ("vendor/llama.cpp/models/templates/", "vendor/llama.cpp/models/ggml-vocab-")


def cache_dir() -> Path:
    root = os.environ.get("TOOLSTUDIO_TEST_CACHE") or Path.home() / ".cache" / "toolstudio-tests"
    return Path(root)


@cache
def llama_cpp_models() -> Path:
    """`vendor/llama.cpp/models` of the installed llama-cpp-python's sdist (downloaded once).

    Skips the calling test (with the reason) if the sdist cannot be had.
    """
    version = importlib.metadata.version("llama-cpp-python")
    target = cache_dir() / f"llama-cpp-python-{version}"
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            command += ["--dest", tmp, f"llama-cpp-python=={version}"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=900)
            archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if result.returncode != 0 or not archives:
                pytest.skip(f"could not download the llama-cpp-python {version} sdist: {result.stderr[-500:]}")
            with tarfile.open(archives[0]) as tar:
                for member in tar.getmembers():
                    name = member.name.split("/", 1)[-1]
                    if member.isfile() and name.startswith(WANTED):
                        member.name = name
                        tar.extract(member, target, filter="data")
        done.touch()
    return target / "vendor" / "llama.cpp" / "models"


def template(name: str) -> str:
    """The source of `models/templates/<name>.jinja`."""
    return (llama_cpp_models() / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


def template_path(name: str) -> Path:
    return llama_cpp_models() / "templates" / f"{name}.jinja"


def vocab_path(name: str) -> Path:
    """`models/ggml-vocab-<name>.gguf`: a real tokenizer, no weights."""
    return llama_cpp_models() / f"ggml-vocab-{name}.gguf"
