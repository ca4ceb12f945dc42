"""`create_app(config)`: assembles the Litestar app. The engine loads in the lifespan and
lives on `app.state.runtime`, never in a module global."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

from litestar import Litestar, Request, Response, Router

import dialects.anthropic.errors as anthropic_errors
import dialects.openai_errors as openai_errors
from dialects import models
from dialects.openai_chat.routes import chat_completions
from runtime.config import ServerConfig
from runtime.http import ClientGone, error_response, require_api_key
from runtime.keys import KeyStore
from runtime.service import EngineFactory, Runtime

log = logging.getLogger(__name__)

ANTHROPIC_PATHS = ("/v1/messages",)


def default_engine_factory(config: ServerConfig) -> EngineFactory:
    def load() -> Any:
        from runtime.engine.llama import LlamaEngine  # imported lazily: llama.cpp loads a shared library

        return LlamaEngine(config.engine, model_id=config.model_id, defaults=config.sampling)

    return load


def _dialect_for(path: str) -> ModuleType:
    return anthropic_errors if path.startswith(ANTHROPIC_PATHS) else openai_errors


def handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, ClientGone):
        return Response(None, status_code=499)  # nobody is listening; uvicorn drops it
    return error_response(exc, _dialect_for(request.url.path))  # type: ignore[arg-type]


def create_app(
    config: ServerConfig, *, engine_factory: EngineFactory | None = None, keys: KeyStore | None = None
) -> Litestar:
    runtime = Runtime(
        config=config,
        keys=keys or KeyStore(config.keys_db),
        engine_factory=engine_factory or default_engine_factory(config),
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime.start_loading()
        try:
            yield
        finally:
            await runtime.close()

    api = Router(
        path="/",
        route_handlers=[chat_completions, models.list_models, models.get_model],
        guards=[require_api_key],
    )
    app = Litestar(
        route_handlers=[api, models.health],
        lifespan=[lifespan],
        exception_handlers={Exception: handle_error},
        request_max_body_size=config.max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )
    app.state.runtime = runtime
    return app
