"""The narrow engine interface. Nothing outside `runtime/engine` may import llama_cpp."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from runtime.errors import EngineFailure
from runtime.events import Event
from runtime.ir import ChatRequest


class LoadStopped(EngineFailure):
    """Loading was stopped by `stop_loading` (the server is shutting down)."""


_stop_loading = threading.Event()


def stop_loading() -> None:
    """Shutdown: make model loads in progress (and any later one) stop at llama.cpp's next
    progress report, and the start-up measurements at their next step; they raise LoadStopped.
    A load cannot be interrupted otherwise (it runs in a thread), and a big GGUF takes minutes."""
    _stop_loading.set()


def loading_stopped() -> bool:
    return _stop_loading.is_set()


def check_loading() -> None:
    """Raise LoadStopped once `stop_loading` was called (long start-up work checks between steps)."""
    if _stop_loading.is_set():
        raise LoadStopped("stopped while loading: the server is shutting down")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    context_length: int  # tokens available to one request
    created: int  # unix time the model file was last modified
    owned_by: str = "toolstudio"
    description: str = ""
    vision: bool = False  # can the model see image parts (a multimodal projector is loaded)?


@dataclass(frozen=True, slots=True)
class EngineStats:
    active: int  # sequences decoding now
    waiting: int  # requests queued for a slot
    slots: int
    threads: int = 0  # decode threads in use now
    host_cache_bytes: int = 0  # KV of evicted conversations kept in RAM
    draft_tokens: int = 0  # speculative decoding, since start: draft tokens verified
    draft_tokens_accepted: int = 0  # ... and kept (the same as the model's own next token)


class Engine(Protocol):
    """What the runtime needs from a model backend."""

    @property
    def info(self) -> ModelInfo: ...

    def generate(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Stream events for one generation. Errors in the request (context too long,
        bad grammar) raise before the first event. Closing the iterator early cancels
        decoding within one token."""
        ...

    async def count_tokens(self, request: ChatRequest) -> int:
        """Tokens the rendered prompt of `request` takes."""
        ...

    def stats(self) -> EngineStats: ...

    def drain(self) -> None:
        """Shutdown has begun: finish every generation now and refuse new ones."""
        ...

    async def close(self) -> None: ...
