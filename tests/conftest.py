from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from runtime.app import create_app
from runtime.config import EngineConfig, ServerConfig, ToolsConfig
from runtime.engine.fake import FakeEngine
from runtime.keys import KeyStore
from runtime.plugins import ToolRegistry
from tests.servers import CliServer, ThreadedServer, toolstudio

# -- the real server: `toolstudio run` with the packaged model --------------------------------


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    data_dir = tmp_path_factory.mktemp("toolstudio-home")
    # Greedy by default: the seed examples send no temperature, and a 135M model sampled at
    # 0.8 makes their outcomes a coin toss. Tests that want sampling ask for it.
    server = CliServer(data_dir, args=("--threads", "2", "--parallel", "4", "--temp", "0")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_key(real_server: CliServer) -> str:
    return toolstudio("keys", "create", "--name", "tests", data_dir=real_server.data_dir).strip()


@pytest.fixture
def oai(real_server: CliServer, real_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{real_server.base_url}/v1", api_key=real_key, max_retries=0, timeout=120)


@pytest.fixture
def claude(real_server: CliServer, real_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=real_server.base_url, api_key=real_key, max_retries=0, timeout=120)


# -- a server around the scripted FakeEngine ----------------------------------------------------


class FakeServer:
    def __init__(self, engine: FakeEngine, server: ThreadedServer, key: str, keys: KeyStore) -> None:
        self.engine = engine
        self.server = server
        self.key = key
        self.keys = keys
        self.base_url = server.base_url

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key or self.key, max_retries=0, timeout=30)

    def anthropic(self, key: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.base_url, api_key=key or self.key, max_retries=0, timeout=30)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@contextmanager
def serve_fake(
    tmp_path: Path,
    engine: FakeEngine,
    *,
    tools: ToolRegistry | None = None,
    tools_config: ToolsConfig | None = None,
    **config_overrides: Any,
) -> Iterator[FakeServer]:
    config = ServerConfig(
        engine=EngineConfig(model_path=tmp_path / "unused.gguf"),
        model_id="fake-model",
        aliases=("fake-alias",),
        data_dir=tmp_path,
        tools=tools_config or ToolsConfig(),
        **config_overrides,
    )
    keys = KeyStore(config.keys_db)
    _, key = keys.create("test")
    app = create_app(config, engine_factory=lambda: engine, keys=keys, tools=tools)
    with ThreadedServer(app) as server:
        yield FakeServer(engine, server, key, keys)


@pytest.fixture
def fake_server(tmp_path: Path, fake_engine: FakeEngine) -> Iterator[FakeServer]:
    with serve_fake(tmp_path, fake_engine) as server:
        yield server
