"""`create_app(config)`: assembles the Litestar app. The engine loads in the lifespan and
lives on `app.state.runtime`, never in a module global."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.config.cors import CORSConfig

import dialects.anthropic.errors as anthropic_errors
import dialects.mcp.errors as mcp_errors
import dialects.openai_errors as openai_errors
import webui
from dialects import keys as key_routes
from dialects import models, session_files, sessions
from dialects.anthropic.routes import count_message_tokens, create_message
from dialects.mcp.routes import McpEndpoint, is_mcp_request, mcp_endpoint
from dialects.openai_chat.routes import chat_completions
from dialects.openai_responses import routes as responses
from dialects.openai_responses.store import ResponseStore
from runtime import toolenv
from runtime.config import ServerConfig
from runtime.http import ClientGone, error_response, require_api_key
from runtime.keys import KeyStore
from runtime.observability import RequestContext
from runtime.plugins import ToolRegistry, load_plugins
from runtime.sandbox import SandboxConfig, SandboxRunner
from runtime.service import EngineFactory, Runtime
from runtime.sessions import SessionManager
from runtime.storage import Storage, open_storage

log = logging.getLogger(__name__)

ANTHROPIC_PATHS = ("/v1/messages",)


def default_engine_factory(config: ServerConfig) -> EngineFactory:
    def load() -> Any:
        if config.upstream is not None:  # an OpenAI-compatible cluster decodes: no GGUF is loaded
            from runtime.engine.upstream import UpstreamEngine

            return UpstreamEngine(
                config.upstream, model_id=config.model_id, defaults=config.sampling, ctx_size=config.engine.ctx_size
            )
        from runtime.engine.llama import LlamaEngine  # imported lazily: llama.cpp loads a shared library

        return LlamaEngine(config.engine, model_id=config.model_id, defaults=config.sampling)

    return load


def _dialect_for(path: str) -> ModuleType:
    return anthropic_errors if path.startswith(ANTHROPIC_PATHS) else openai_errors


def handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, ClientGone):
        return Response(None, status_code=499)  # nobody is listening; uvicorn drops it
    # A mount sees its own sub-path in scope["path"]: /mcp is told by its handler instead.
    dialect = mcp_errors if is_mcp_request(request.scope) else _dialect_for(request.url.path)
    return error_response(exc, dialect)  # type: ignore[arg-type]


def build_runtime(
    config: ServerConfig,
    *,
    engine_factory: EngineFactory | None = None,
    keys: KeyStore | None = None,
    tools: ToolRegistry | None = None,
) -> Runtime:
    disk = config.tools.session_disk_mib * 1024 * 1024
    sandbox_config = SandboxConfig(unsafe_no_sandbox=config.tools.unsafe_no_sandbox, session_disk_bytes=disk)
    if config.tools.tool_env is not None:
        sandbox_config = dataclasses.replace(sandbox_config, tool_env=config.tools.tool_env)
    sandbox = SandboxRunner(sandbox_config)
    sessions = SessionManager(
        config.data_dir / "sessions",
        idle_seconds=config.tools.session_idle_seconds,
        max_sessions=config.tools.max_sessions,
        on_create=sandbox.open_workspace,
        on_remove=sandbox.close_workspace,
        on_close=functools.partial(sandbox.close_workspace, keep_files=True),
        ttl_seconds=config.tools.session_ttl_seconds,
    )
    sandbox.check_disk_budget(sessions.root, config.tools.max_sessions)  # all sessions: at most this much
    if tools is None:
        tools = load_plugins(
            search_provider=config.tools.search_provider, mcp_config=config.tools.mcp_config, sandbox=sandbox
        )
    # `--kernel-pool`: kernels started ahead, each with a sandbox made for one new session.
    if config.tools.kernel_pool and (make_pool := getattr(tools.get("python"), "kernel_pool", None)):
        sessions.spares = make_pool(sandbox, sessions.root / ".pool", config.tools.kernel_pool)
    ready = toolenv.readiness(sandbox, tools.names(), getattr(tools.search_provider, "name", None))
    degraded = ready.not_ready or ("python" in tools and sandbox.tool_env is None)  # no pandas & co.
    log.log(logging.WARNING if degraded else logging.INFO, "%s", ready.line())
    return Runtime(
        config=config,
        keys=keys or KeyStore(config.keys_db),
        engine_factory=engine_factory or default_engine_factory(config),
        tools=tools,
        sessions=sessions,
        sandbox=sandbox,
    )


def create_app(
    config: ServerConfig,
    *,
    engine_factory: EngineFactory | None = None,
    keys: KeyStore | None = None,
    tools: ToolRegistry | None = None,
    storage: Storage | None = None,
) -> Litestar:
    """The app. `storage` (keys and stored Responses) defaults to what `config.database_url`
    names; `keys`, when given, is used instead of the storage's key backend. The app closes
    the storage when it stops."""
    storage = storage or open_storage(config.database_url, config.data_dir)
    keys = keys or KeyStore(storage.keys)
    runtime = build_runtime(config, engine_factory=engine_factory, keys=keys, tools=tools)
    mcp = McpEndpoint(runtime)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime.start()
        try:
            async with mcp.run():  # MCP sessions end (and delete their tool sessions) first
                yield
        finally:
            await runtime.close()
            storage.close()

    api = Router(
        path="/",
        route_handlers=[
            chat_completions,
            create_message,
            count_message_tokens,
            models.list_models,
            models.get_model,
            *responses.route_handlers,
            sessions.list_sessions,
            sessions.delete_session,
            sessions.run_session_tool,
            sessions.list_tools,
            *session_files.route_handlers,
            *key_routes.route_handlers,
            mcp_endpoint,
        ],
        guards=[require_api_key],
    )
    cors = CORSConfig(allow_origins=list(config.cors_origins)) if config.cors_origins else None
    app = Litestar(
        route_handlers=[api, models.health, models.metrics, *webui.route_handlers()],  # the page needs no key
        middleware=[lambda app: RequestContext(app, lambda: runtime.metrics)],
        cors_config=cors,
        lifespan=[lifespan],
        exception_handlers={Exception: handle_error},
        request_max_body_size=config.max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )
    app.state.runtime = runtime
    app.state.responses = ResponseStore(storage.responses)
    app.state.mcp = mcp
    return app
