"""The per-process runtime the HTTP handlers talk to: engine, keys, tools, sessions."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from runtime.agent import AgentLimits, run_agent
from runtime.config import ServerConfig
from runtime.engine.base import Engine, EngineStats, LoadStopped, stop_loading
from runtime.errors import ModelNotReady
from runtime.events import Event
from runtime.images import has_images, resolve_images
from runtime.ir import ChatRequest
from runtime.keys import KeyRecord, KeyStore
from runtime.observability import Metrics, warn_client
from runtime.plugins import ToolRegistry
from runtime.sandbox import SandboxRunner
from runtime.sessions import Session, SessionManager
from runtime.tools import DEFAULT_SERVER_TOOLS, Tool

log = logging.getLogger(__name__)

EngineFactory = Callable[[], Engine]


@dataclass(eq=False)
class Runtime:
    config: ServerConfig
    keys: KeyStore
    engine_factory: EngineFactory
    tools: ToolRegistry
    sessions: SessionManager
    sandbox: SandboxRunner
    metrics: Metrics = field(init=False)
    engine: Engine | None = None
    load_error: str | None = None
    on_load_failure: Callable[[], None] | None = None  # the CLI stops the server: nothing to serve
    _loading: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self._live_gauges)

    def _live_gauges(self) -> list[tuple[str, str, float]]:
        stats = self.engine.stats() if self.engine is not None else EngineStats(active=0, waiting=0, slots=0)
        return [
            ("toolstudio_queue_depth", "requests waiting for a decode slot", stats.waiting),
            ("toolstudio_active_sequences", "sequences decoding now", stats.active),
            ("toolstudio_live_sessions", "live tool sessions", self.sessions.live_count),
            ("toolstudio_decode_threads", "threads decoding now (fewer while other processes are busy)", stats.threads),
            ("toolstudio_kv_host_cache_bytes", "KV cache of evicted conversations kept in RAM", stats.host_cache_bytes),
            (
                "toolstudio_draft_tokens",
                "speculative and jump-forward decoding: draft tokens verified since start",
                stats.draft_tokens,
            ),
            (
                "toolstudio_draft_tokens_accepted",
                "speculative and jump-forward decoding: draft tokens kept since start",
                stats.draft_tokens_accepted,
            ),
        ]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model off the event loop, so /health can say "loading" meanwhile."""
        self._loading = asyncio.get_running_loop().create_task(self._load())
        self.sessions.start()

    async def _load(self) -> None:
        try:
            self.engine = await asyncio.to_thread(self.engine_factory)
        except LoadStopped:
            log.info("model loading stopped: the server is shutting down")
        except Exception as exc:
            self.load_error = str(exc)
            log.error("the model failed to load: %s", exc)
            if self.on_load_failure is not None:
                self.on_load_failure()

    def drain(self) -> None:
        """SIGTERM: end in-flight generations now, so streams close quickly. They end in
        `ServerShuttingDown` (each dialect's in-band error), never as a finished answer."""
        if self.engine is not None:
            self.engine.drain()
        elif self._loading is not None and not self._loading.done():
            stop_loading()

    async def close(self) -> None:
        if self._loading is not None:
            await self._loading
        await self.sessions.close()
        await self.tools.aclose()  # tools shared by all sessions (an MCP server with "shared": true)
        if self.engine is not None:
            await self.engine.close()
        self.keys.close()

    # -- requests ---------------------------------------------------------------------------

    def ready_engine(self) -> Engine:
        if self.engine is None:
            detail = f"failed to load: {self.load_error}" if self.load_error else "is still loading"
            raise ModelNotReady(f"the model {detail}")
        return self.engine

    async def count_tokens(self, request: ChatRequest) -> int:
        """Prompt tokens as the engine would see them; a model with vision counts image tokens."""
        engine = self.ready_engine()
        if engine.info.vision and has_images(request):
            request = await resolve_images(request, self.config.images)
        return await engine.count_tokens(request)

    @property
    def model_names(self) -> list[str]:
        return [self.config.model_id, *self.config.aliases]

    @property
    def limits(self) -> AgentLimits:
        return AgentLimits(self.config.tools.max_iterations, self.config.tools.tool_timeout)

    def run(self, request: ChatRequest, key: KeyRecord) -> AsyncIterator[Event]:
        """The event stream for one request: plain generation, or the agent loop when the
        request (or the server default) enables server-side tools. Bad tool names raise here;
        bad images at the first event — both before any response header."""
        engine = self.ready_engine()
        wanted = request.server_tools
        enabled = self.config.tools.enable_by_default if wanted.enabled is None else wanted.enabled
        tools = None
        if enabled:
            tools = self.tools.resolve(wanted.names or [n for n in DEFAULT_SERVER_TOOLS if n in self.tools])
        request = dataclasses.replace(request, cache_scope=f"key:{key.id}")
        return self.metrics.observe(self._generate(engine, request, tools, key))

    async def _generate(
        self, engine: Engine, request: ChatRequest, tools: list[Tool] | None, key: KeyRecord
    ) -> AsyncIterator[Event]:
        if has_images(request):
            request = await resolve_images(request, self.config.images)
            if not engine.info.vision:
                log.warning("image input ignored: %s has no vision projector loaded", engine.info.id)
                warn_client(f"image input ignored: the model {engine.info.id} cannot see images (no --mmproj)")
        if tools is None:
            async with contextlib.aclosing(engine.generate(request)) as stream:
                async for event in stream:
                    yield event
            return
        async with self.open_session(key, request.server_tools.session_id) as session:
            agent = run_agent(engine, request, tools=tools, registry=self.tools, session=session, limits=self.limits)
            async with contextlib.aclosing(agent):
                async for event in agent:
                    yield event

    @contextlib.asynccontextmanager
    async def open_session(self, key: KeyRecord, session_id: str | None) -> AsyncIterator[Session]:
        """The key's session (released afterwards), with the shared sandbox runner in its state."""
        async with self.sessions.session(str(key.id), session_id) as session:
            session.state.setdefault("sandbox", self.sandbox)
            yield session
