"""`--n-gpu-layers N` reaches the parameters llama.cpp loads the model with.

The CI machine's llama.cpp is CPU-only, where the value has no visible effect, so the tests
watch the real `llama_model_load_from_file` call (wrapped, not replaced: the model still loads)
and the server's own log of what it asked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from runtime.cli import build_parser
from runtime.engine import model as model_module
from runtime.engine.model import LlamaModel
from runtime.model_source import embedded_model
from tests.servers import cli, free_port


def run_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *extra])


def test_default_is_every_layer_and_values_below_minus_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_args().n_gpu_layers == -1
    assert run_args("--n-gpu-layers", "0").n_gpu_layers == 0
    assert run_args("-ngl", "12").n_gpu_layers == 12
    with pytest.raises(SystemExit) as exited:
        run_args("--n-gpu-layers", "-2")
    assert exited.value.code == 2
    assert "--n-gpu-layers" in capsys.readouterr().err


@pytest.mark.parametrize("layers", [0, 7, -1])
def test_the_value_is_in_the_params_llama_cpp_loads_with(monkeypatch: pytest.MonkeyPatch, layers: int) -> None:
    seen: list[int] = []
    real_load = llama_cpp.llama_model_load_from_file

    def load(path: bytes, params: Any) -> Any:
        seen.append(params.n_gpu_layers)
        return real_load(path, params)

    monkeypatch.setattr(model_module.llama_cpp, "llama_model_load_from_file", load)
    loaded = LlamaModel(embedded_model(), n_gpu_layers=layers)
    try:
        assert seen == [layers]
        assert loaded.n_vocab > 0  # really loaded
    finally:
        loaded.close()


def test_the_cli_flag_reaches_the_model_load(tmp_path: Path) -> None:
    # A truncated model: `run` goes all the way to loading it (and fails there, quickly),
    # logging the layer count it asked llama.cpp for on the way.
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(embedded_model().read_bytes()[:5_000_000])
    done = cli(
        "run", "--model", str(truncated), "-p", str(free_port()), "--n-gpu-layers", "3", "--log-level", "debug",
        home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "n_gpu_layers=3" in done.stderr, done.stderr
