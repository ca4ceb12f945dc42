"""Fixtures shared by the integration tests that drive llama.cpp in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runtime.engine.model import LlamaModel
from runtime.model_source import embedded_model


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    """The packaged SmolLM2, loaded once per test module."""
    loaded = LlamaModel(embedded_model())
    yield loaded
    loaded.close()
