"""`UpstreamEngine`: the engine interface on an OpenAI-compatible Chat Completions cluster.

Every generation is one streaming `POST /v1/chat/completions` to a backend the `Balancer`
picks (several, for `n` choices); its chunks become the same events `LlamaEngine` emits, so
the agent loop and the three dialects run unchanged on top. A backend that fails before any
output was read is taken out and the request goes to the next one, unseen by the client;
one that fails mid-stream ends the stream with an `UpstreamError` (the dialect's in-band
error) and the next request goes elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import EventSource

from runtime.config import SamplingDefaults, UpstreamConfig
from runtime.engine.base import EngineStats, ModelInfo
from runtime.engine.upstream import tokens
from runtime.engine.upstream.balancer import Backend, Balancer
from runtime.engine.upstream.errors import UpstreamError, UpstreamOverloaded, UpstreamTimeout, UpstreamUnavailable
from runtime.engine.upstream.probe import Probe, probe_backend
from runtime.engine.upstream.wire import ChunkReader, check_supported, error_of, request_body, usage_of
from runtime.errors import ContextLengthExceeded, InvalidRequest, PayloadTooLarge, ServerShuttingDown
from runtime.events import ChoiceEvent, Event, Finished, PromptUsage, Usage
from runtime.ir import ChatRequest
from runtime.observability import request_id_var

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5  # seconds between looks for backends whose backoff has ended
# Upstream error types/codes that mean "the prompt is too long" (OpenAI, llama-server).
_CONTEXT_ERRORS = {"context_length_exceeded", "exceed_context_size_error"}
_TOKENIZER_RANK = {"anthropic-count": 0, "apply-template": 0, "messages": 0, "text": 1, "estimate": 2}


class _Retry(Exception):
    """This backend failed before any output: try the next one."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class UpstreamEngine:
    def __init__(self, config: UpstreamConfig, *, model_id: str, defaults: SamplingDefaults, ctx_size: int) -> None:
        self.config = config
        self.defaults = defaults
        self.balancer = Balancer(list(config.urls))
        self.draining = False
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._prober: asyncio.Task[None] | None = None
        self._decoder = msgspec.json.Decoder()
        # Probed here, in the loader thread: the kind, model and context of every backend.
        for backend in self.balancer.backends:
            self._apply(backend, probe_backend(backend.url, config.api_key, timeout=config.connect_timeout))
        known = [b.context_length for b in self.balancer.backends if b.context_length]
        context = min(known) if known else ctx_size
        vision = config.vision if config.vision is not None else any(b.vision for b in self.balancer.backends)
        kinds = sorted({b.profile.kind for b in self.balancer.backends if b.probed}) or ["not reachable yet"]
        up = len(self.balancer.available())
        self._info = ModelInfo(
            id=model_id,
            context_length=context,
            created=int(time.time()),
            description=f"upstream: {len(self.balancer.backends)} backend(s), {up} up ({', '.join(kinds)})",
            vision=vision,
        )
        log.log(
            logging.INFO if up else logging.WARNING,
            "upstream engine: %d of %d backends up (%s); context %d tokens%s",
            up,
            len(self.balancer.backends),
            ", ".join(f"{b.url} {b.profile.kind if b.probed else 'down'}" for b in self.balancer.backends),
            context,
            "" if known else " (not reported by the upstream: --ctx-size)",
        )

    # -- the interface ---------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self._info

    def stats(self) -> EngineStats:
        backends = self.balancer.backends
        return EngineStats(active=sum(b.outstanding for b in backends), waiting=0, slots=len(self.balancer.available()))

    def drain(self) -> None:
        self.draining = True

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._client is not None:
            await self._client.aclose()

    async def count_tokens(self, request: ChatRequest) -> int:
        """Exact on toolstudio, llama-server and vLLM upstreams; otherwise the estimate
        (`runtime.engine.upstream.tokens`). An upstream that fails to count is estimated too."""
        self._ensure_prober()
        client = self._http()
        # The backend that counts best (exact before text before estimate), then the least busy.
        ranked = sorted(self.balancer.available(), key=lambda b: (_TOKENIZER_RANK[b.profile.tokenizer], b.outstanding))
        backend = ranked[0] if ranked else None
        if backend is None or backend.profile.tokenizer == "estimate":
            return tokens.estimate(request)
        tokenizer = backend.profile.tokenizer
        body = self._body(request, backend)
        path, payload = tokens.count_request(tokenizer, request, body)
        try:
            answer = await self._post_json(client, backend, path, payload)
            if tokenizer == "apply-template" and isinstance(answer, dict) and isinstance(answer.get("prompt"), str):
                answer = await self._post_json(client, backend, "/tokenize", {"content": answer["prompt"]})
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("counting tokens on %s failed (%s); using the estimate", backend.url, exc)
            return tokens.estimate(request)
        counted = tokens.count_from(tokenizer, request, answer)
        return counted if counted is not None else tokens.estimate(request)

    async def generate(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Events for one request; with `n > 1`, one upstream stream per choice (seed + i),
        their events wrapped in `ChoiceEvent` and one `Usage` at the end."""
        if self.draining:
            raise ServerShuttingDown()
        session = request.server_tools.session_id
        affinity = f"{request.cache_scope}\x00{session}" if session else None
        if request.n <= 1:
            async with contextlib.aclosing(self._choice(request, affinity, 0)) as events:
                async for event in events:
                    yield event
            return
        async for event in self._choices(request, affinity):
            yield event

    # -- one choice -------------------------------------------------------------------------

    async def _choice(self, request: ChatRequest, affinity: str | None, index: int) -> AsyncIterator[Event]:
        """One upstream stream's events, ending with `Usage` and `Finished`. Backends that
        fail before the first event are skipped over; the caller sees only the one that answered."""
        self._ensure_prober()
        client = self._http()
        tried: set[int] = set()
        last: Exception | None = None
        while True:
            backend = self.balancer.pick(affinity, tried)
            if backend is None:
                if isinstance(last, UpstreamOverloaded):
                    raise last
                if last is not None and self.balancer.available():
                    raise last  # each one answered, and failed this request: not a reason to wait
                raise UpstreamUnavailable(
                    f"no upstream backend is reachable ({len(self.balancer.backends)} configured, all backing off)",
                    retry_after=self.balancer.retry_after(),
                )
            tried.add(self.balancer.index(backend))
            check_supported(request, backend.profile, tools=backend.tools)
            try:
                # Closed with the caller (a client gone): the upstream stream closes, its decoding stops.
                async with contextlib.aclosing(self._stream(client, backend, request, affinity, index)) as events:
                    async for event in events:
                        yield event
                return
            except _Retry as retry:
                last = retry.error
                log.warning("upstream %s failed before any output (%s); trying another backend", backend.url, last)

    async def _stream(
        self, client: httpx.AsyncClient, backend: Backend, request: ChatRequest, affinity: str | None, index: int
    ) -> AsyncIterator[Event]:
        body = self._body(request, backend, seed_offset=index)
        echo = request.prefill if backend.profile.prefill == "final" else ""
        reader = ChunkReader.new(request.sampling.stop, echo=echo)
        usage: Usage | None = None
        emitted = False
        finished = False
        backend.outstanding += 1
        backend.served += 1
        log.info("generation on upstream %s (%s)", backend.url, "session affinity" if affinity else "least outstanding")
        try:
            url = f"{backend.url}/v1/chat/completions"
            async with client.stream("POST", url, json=body, headers=self._headers(backend)) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._refusal(backend, response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(f"the upstream answered a streaming request without a stream ({backend.url})")
                async with contextlib.aclosing(EventSource(response).aiter_sse()) as events:
                    async for sse in events:
                        if self.draining:
                            raise ServerShuttingDown()
                        if sse.data.strip() == "[DONE]":
                            # Only a finish reason means the reply is whole: llama-cpp-python ends a
                            # stream with [DONE] and none when another request interrupts it (measured).
                            finished = reader.finish_reason is not None
                            break
                        if not sse.data.strip():
                            continue
                        chunk = self._decoder.decode(sse.data)
                        if not isinstance(chunk, dict):
                            continue
                        if (error := error_of(chunk)) is not None:
                            raise self._in_band(backend, error, emitted)
                        usage = usage_of(chunk) or usage
                        for choice in chunk.get("choices") or []:
                            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                                continue
                            for event in reader.feed(choice):
                                emitted = True
                                yield event
                            if reader.stop_hit is not None:
                                break
                        if reader.stop_hit is not None:
                            finished = True
                            break  # closing the response stops the upstream's decoding
                if not finished and reader.finish_reason is not None:
                    finished = True  # no [DONE] (some servers), but the choice did finish
            if not finished:
                why = "the stream ended without a finish reason (cut short)"
                raise self._failed(backend, why, emitted, take_out=False)
        except httpx.TimeoutException as exc:
            backend.mark_down(time.monotonic())
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) and not emitted:
                raise _Retry(UpstreamError(f"upstream {backend.url} did not accept the connection")) from exc
            raise UpstreamTimeout(
                f"the upstream did not answer within {self.config.read_timeout:.0f} s ({backend.url})"
            ) from exc
        except httpx.TransportError as exc:
            raise self._failed(backend, f"{type(exc).__name__}: {exc}", emitted) from exc
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the upstream sent a chunk that is not JSON ({backend.url})") from exc
        finally:
            backend.outstanding -= 1
        events, reason = reader.finish()
        for event in events:
            yield event
        if usage is None:
            # No usage chunk (llama-cpp-python never sends one): estimated, see tokens.py.
            usage = Usage(tokens.estimate(request), reader.generated)
        yield usage
        yield Finished(reason, stop_sequence=reader.stop_hit)

    # -- n choices --------------------------------------------------------------------------

    async def _choices(self, request: ChatRequest, affinity: str | None) -> AsyncIterator[Event]:
        queue: asyncio.Queue[tuple[int, Event | BaseException | None]] = asyncio.Queue()

        async def run(i: int) -> None:
            try:
                async with contextlib.aclosing(self._choice(request, affinity, i)) as events:
                    async for event in events:
                        await queue.put((i, event))
                await queue.put((i, None))
            except Exception as exc:
                await queue.put((i, exc))

        tasks = [asyncio.create_task(run(i)) for i in range(request.n)]
        usages: dict[int, Usage] = {}
        try:
            running = request.n
            while running:
                i, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, Usage):
                    usages[i] = item
                elif not isinstance(item, PromptUsage):
                    yield ChoiceEvent(i, item)
            first = usages.get(0, Usage(0, 0))
            yield Usage(first.prompt_tokens, sum(u.completion_tokens for u in usages.values()), first.cached_tokens)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- errors -----------------------------------------------------------------------------

    def _failed(self, backend: Backend, why: str, emitted: bool, *, take_out: bool = True) -> Exception:
        """The backend broke (connection refused or reset, stream cut): out it goes, unless
        `take_out` is False (it answered, but cut this one reply short)."""
        if take_out:
            backoff = backend.mark_down(time.monotonic())
            log.warning("upstream %s failed (%s); out for %.0f s", backend.url, why, backoff)
        else:
            log.warning("upstream %s failed this request (%s)", backend.url, why)
        error = UpstreamError(f"the upstream backend failed: {why}")
        return error if emitted else _Retry(error)

    def _refusal(self, backend: Backend, response: httpx.Response) -> Exception:
        """A non-200 answer, by status: the client's fault (4xx), overload, or the upstream's."""
        status = response.status_code
        error = _error_object(response)
        message = str(error.get("message") or response.text[:500] or f"HTTP {status}")
        if status in (502, 503, 504):
            return self._failed(backend, f"HTTP {status}: {message}", emitted=False)
        if status == 429:
            retry_after = _retry_after(response)
            return _Retry(UpstreamOverloaded(f"the upstream is overloaded: {message}", retry_after=retry_after))
        if status in (401, 403):
            log.error("upstream %s refused this server's key (HTTP %d): check --upstream-key", backend.url, status)
            return UpstreamError(f"the upstream refused this server's credentials (HTTP {status})")
        if status == 404:
            return UpstreamError(f"the upstream has no such model or route ({backend.url}): {message}")
        if status == 413:
            return PayloadTooLarge(f"the upstream refused the request as too large: {message}")
        if status in (400, 422):
            kind = {str(error.get("type")), str(error.get("code"))}
            if kind & _CONTEXT_ERRORS:
                return ContextLengthExceeded(f"the upstream refused the prompt as too long: {message}")
            return InvalidRequest(f"the upstream refused the request: {message}")
        return UpstreamError(f"the upstream failed (HTTP {status}): {message}")

    def _in_band(self, backend: Backend, error: dict[str, Any], emitted: bool) -> Exception:
        """An error chunk inside the stream (llama-server, toolstudio)."""
        message = str(error.get("message") or "no message")
        kind = {str(error.get("type")), str(error.get("code"))}
        if kind & _CONTEXT_ERRORS and not emitted:
            return ContextLengthExceeded(f"the upstream refused the prompt as too long: {message}")
        if "invalid_request_error" in kind and not emitted:
            return InvalidRequest(f"the upstream refused the request: {message}")
        if kind & {"server_shutting_down", "overloaded_error", "rate_limit_error"}:
            return self._failed(backend, f"in-band error: {message}", emitted)
        return UpstreamError(f"the upstream failed mid-stream: {message}")

    # -- plumbing ---------------------------------------------------------------------------

    def _model(self, backend: Backend) -> str:
        return self.config.model or backend.model or self.info.id

    def _body(self, request: ChatRequest, backend: Backend, *, seed_offset: int = 0) -> dict[str, Any]:
        """The Chat Completions body for `request` on `backend` (see `wire.request_body`)."""
        return request_body(
            request,
            model=self._model(backend),
            profile=backend.profile,
            defaults=self.defaults,
            vision=self.info.vision,
            seed_offset=seed_offset,
        )

    def _headers(self, backend: Backend) -> dict[str, str]:
        headers: dict[str, str] = {}
        request_id = request_id_var.get()
        if backend.profile.forward_request_id and request_id != "-":
            headers["x-request-id"] = request_id  # the front-end's and the backend's log lines then match
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _http(self) -> httpx.AsyncClient:
        """One pooled client per event loop (the server runs one)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            timeout = httpx.Timeout(
                connect=self.config.connect_timeout, read=self.config.read_timeout, write=30.0, pool=None
            )
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
            self._client_loop = loop
        return self._client

    async def _post_json(self, client: httpx.AsyncClient, backend: Backend, path: str, body: dict[str, Any]) -> Any:
        response = await client.post(f"{backend.url}{path}", json=body, headers=self._headers(backend))
        response.raise_for_status()
        return response.json()

    def _apply(self, backend: Backend, probe: Probe | None) -> None:
        if probe is None:
            backend.mark_down(time.monotonic())
            return
        backend.profile = probe.profile
        backend.model = probe.model
        backend.context_length = probe.context_length
        backend.vision = probe.vision
        backend.tools = probe.tools
        backend.probed = True
        backend.mark_up()

    def _ensure_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """Puts backends back once their backoff has ended and they answer a probe."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            now = time.monotonic()
            for backend in self.balancer.backends:
                if backend.up or backend.down_until > now:
                    continue
                probe = await asyncio.to_thread(
                    probe_backend, backend.url, self.config.api_key, timeout=self.config.connect_timeout
                )
                if probe is not None:
                    log.info("upstream %s is back (%s)", backend.url, probe.profile.kind)
                self._apply(backend, probe)


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
        if "detail" in body:  # FastAPI's shape (llama-cpp-python)
            return {"message": str(body["detail"])}
    return {}


def _retry_after(response: httpx.Response) -> int:
    try:
        return max(1, int(float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1
