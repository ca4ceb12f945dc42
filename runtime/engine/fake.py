"""A scripted engine for unit tests: `FakeEngine.enqueue(...)` what the model will "say".

Each `generate` call pops the next script. A script is a list of events (TextDelta,
ToolCallStart/Delta/End, ReasoningDelta, ...) or a plain string (one TextDelta per word).
`Usage` and `Finished` are added when the script leaves them out. Every request the
engine saw is kept in `requests`, so tests can assert what reached the model.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence

from runtime.engine.base import EngineStats, ModelInfo
from runtime.errors import ServerShuttingDown, ToolstudioError
from runtime.events import Event, Finished, PromptUsage, TextDelta, ToolCallEnd, Usage
from runtime.ir import ChatRequest, ToolResultPart

Script = str | Sequence[Event] | ToolstudioError


class FakeEngine:
    def __init__(self, model_id: str = "fake-model", *, context_length: int = 4096, delay: float = 0.0) -> None:
        self._info = ModelInfo(id=model_id, context_length=context_length, created=0, description="scripted")
        self.scripts: deque[Script] = deque()
        self.requests: list[ChatRequest] = []
        self.delay = delay  # seconds between events, to exercise streaming and disconnects
        self.active = 0
        self.draining = False  # set by drain(): a script in flight ends, as LlamaEngine's, in ServerShuttingDown

    @property
    def info(self) -> ModelInfo:
        return self._info

    def enqueue(self, *scripts: Script) -> FakeEngine:
        self.scripts.extend(scripts)
        return self

    def stats(self) -> EngineStats:
        return EngineStats(active=self.active, waiting=0, slots=1)

    def drain(self) -> None:
        self.draining = True

    async def count_tokens(self, request: ChatRequest) -> int:
        # A word is a token, plus 4 per message; tool results count like text.
        words = (
            p.content if isinstance(p, ToolResultPart) else getattr(p, "text", "")
            for m in request.messages
            for p in m.parts
        )
        return sum(len(w.split()) for w in words) + 4 * len(request.messages)

    async def close(self) -> None:
        self.scripts.clear()

    async def generate(self, request: ChatRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        script = self.scripts.popleft() if self.scripts else "ok"
        if isinstance(script, ToolstudioError):
            raise script
        events: list[Event] = (
            [TextDelta(w) for w in re.findall(r"\s*\S+", script)] if isinstance(script, str) else list(script)
        )
        if not any(isinstance(e, Usage) for e in events):
            prompt = await self.count_tokens(request)
            events.append(Usage(prompt_tokens=prompt, completion_tokens=len(events)))
        if not any(isinstance(e, Finished) for e in events):
            calls = any(isinstance(e, ToolCallEnd) for e in events)
            events.append(Finished("tool_calls" if calls else "stop"))
        if not any(isinstance(e, PromptUsage) for e in events):
            usage = next(e for e in events if isinstance(e, Usage))
            events.insert(0, PromptUsage(usage.prompt_tokens, usage.cached_tokens))
        self.active += 1
        try:
            for event in events:
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.draining:
                    raise ServerShuttingDown()
                yield event
        finally:
            self.active -= 1
