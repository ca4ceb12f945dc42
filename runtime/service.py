"""The per-process runtime the HTTP handlers talk to: engine, keys, and the request path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from runtime.config import ServerConfig
from runtime.engine.base import Engine
from runtime.errors import ModelNotReady
from runtime.events import Event
from runtime.ir import ChatRequest
from runtime.keys import KeyRecord, KeyStore

log = logging.getLogger(__name__)

EngineFactory = Callable[[], Engine]


@dataclass(eq=False)
class Runtime:
    config: ServerConfig
    keys: KeyStore
    engine_factory: EngineFactory
    engine: Engine | None = None
    load_error: str | None = None
    on_load_failure: Callable[[], None] | None = None  # the CLI stops the server: nothing to serve
    _loading: asyncio.Task[None] | None = field(default=None, repr=False)

    # -- lifecycle ------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load the model off the event loop, so /health can say "loading" meanwhile."""
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            self.engine = await asyncio.to_thread(self.engine_factory)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("the model failed to load: %s", exc)
            if self.on_load_failure is not None:
                self.on_load_failure()

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await self._loading

    async def close(self) -> None:
        if self._loading is not None:
            await self._loading
        if self.engine is not None:
            await self.engine.close()
        self.keys.close()

    # -- requests ---------------------------------------------------------------------------

    def ready_engine(self) -> Engine:
        if self.engine is None:
            detail = f"failed to load: {self.load_error}" if self.load_error else "is still loading"
            raise ModelNotReady(f"the model {detail}")
        return self.engine

    @property
    def model_names(self) -> list[str]:
        return [self.config.model_id, *self.config.aliases]

    def run(self, request: ChatRequest, key: KeyRecord) -> AsyncIterator[Event]:
        """The event stream for one request (the agent loop will wrap this)."""
        return self.ready_engine().generate(request)
