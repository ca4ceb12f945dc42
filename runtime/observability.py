"""Metrics (Prometheus), request ids on every response and log line, structured logs."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime.events import Event, ReasoningDelta, TextDelta, ToolCallStart, ToolResult, Usage

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Warnings for the client about this request, sent as `x-toolstudio-warning` headers.
warnings_var: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("warnings", default=None)


def warn_client(message: str) -> None:
    """Tell the caller something it should know (e.g. "the image was not seen")."""
    warnings = warnings_var.get()
    if warnings is not None and message not in warnings:
        warnings.append(message)


_INCOMING_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def dialect_of(path: str) -> str:
    if path.startswith("/v1/chat/"):
        return "chat"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/responses"):
        return "responses"
    if path == "/mcp" or path.startswith("/mcp/"):
        return "mcp"
    if path.startswith("/v1/"):
        return "other"
    return "none"


class Metrics:
    """One registry per app (no module-global state, so tests can run several apps)."""

    def __init__(self, live: Callable[[], list[tuple[str, str, float]]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "toolstudio_requests", "HTTP requests by dialect and status", ["dialect", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter("toolstudio_prompt_tokens", "prompt tokens processed", registry=self.registry)
        self.generated_tokens = Counter("toolstudio_generated_tokens", "tokens generated", registry=self.registry)
        self.ttft = Histogram(
            "toolstudio_time_to_first_token_seconds",
            "request start to first generated output",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tool_runs = Counter(
            "toolstudio_tool_runs",
            "server-side tool runs by tool and outcome",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_LiveGauges(live))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def record_tool(self, result: ToolResult) -> None:
        self.tool_runs.labels(result.name, "error" if result.is_error else "ok").inc()

    async def observe(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass events through, timing the first output and counting tokens and tool runs."""
        started = time.perf_counter()
        first = True
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if first and isinstance(event, TextDelta | ReasoningDelta | ToolCallStart):
                    self.ttft.observe(time.perf_counter() - started)
                    first = False
                elif isinstance(event, Usage):
                    self.prompt_tokens.inc(event.prompt_tokens)
                    self.generated_tokens.inc(event.completion_tokens)
                elif isinstance(event, ToolResult):
                    self.record_tool(event)
                yield event


class _LiveGauges(Collector):
    """Read at scrape time: queue depth, active sequences, live sessions, engine state."""

    def __init__(self, live: Callable[[], list[tuple[str, str, float]]]) -> None:
        self.live = live

    def collect(self) -> Any:
        for name, doc, value in self.live():
            yield GaugeMetricFamily(name, doc, value=value)


class RequestContext:
    """Pure ASGI middleware: a request id (the caller's `x-request-id` if sane) on the
    response and in every log line, and the request counter by dialect and status."""

    def __init__(self, app: Any, metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _INCOMING_ID.match(incoming) else "req_" + secrets.token_hex(8)
        token = request_id_var.set(request_id)
        warnings: list[str] = []
        warnings_token = warnings_var.set(warnings)
        status = [500]

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                extra += [(b"x-toolstudio-warning", w.encode("latin-1", "replace")) for w in warnings]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics = self.metrics()
            if metrics is not None and scope["path"] not in ("/metrics", "/health"):
                metrics.requests.labels(dialect_of(scope["path"]), str(status[0])).inc()
            request_id_var.reset(token)
            warnings_var.reset(warnings_token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO (the upstream engine's, web search's, MCP's HTTP
    # servers'): one line per generated request would drown ours; its warnings still show.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
