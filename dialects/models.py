"""GET /v1/models and /v1/models/{id} (OpenAI shape), and GET /health."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath

from runtime.engine.base import ModelInfo
from runtime.errors import NotFound
from runtime.http import runtime_of

DEFAULT_MODEL_NAME = "default"


def _model_object(name: str, created: int, info: ModelInfo | None = None) -> dict[str, Any]:
    """OpenAI's model object; with the model loaded, also `context_length` (tokens one request
    may use) and `vision` (it sees images), as llama-server and OpenRouter list them."""
    body: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "toolstudio"}
    if info is not None:
        body.update(context_length=info.context_length, vision=info.vision)
    return body


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    runtime = runtime_of(request)
    created = runtime.engine.info.created if runtime.engine else 0
    info = runtime.engine.info if runtime.engine else None
    return {"object": "list", "data": [_model_object(name, created, info) for name in runtime.model_names]}


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> dict[str, Any]:
    runtime = runtime_of(request)
    model_id = model_id.lstrip("/")
    if model_id != DEFAULT_MODEL_NAME and model_id not in runtime.model_names:
        raise NotFound(f"no model named {model_id!r}; this server serves {', '.join(runtime.model_names)}")
    created = runtime.engine.info.created if runtime.engine else 0
    # `default` resolves to the loaded model and reports its real id.
    name = runtime.config.model_id if model_id == DEFAULT_MODEL_NAME else model_id
    return _model_object(name, created, runtime.engine.info if runtime.engine else None)


@get("/metrics", media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    """Prometheus exposition, open like /health (scrapers send no API key)."""
    return runtime_of(request).metrics.render()


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    runtime = runtime_of(request)
    if runtime.engine is not None:
        stats = runtime.engine.stats()
        body = {"status": "ok", "model": runtime.config.model_id, "slots": stats.slots, "active": stats.active}
        return Response(body, status_code=200)
    if runtime.load_error:
        return Response({"status": "error", "error": runtime.load_error}, status_code=503)
    return Response({"status": "loading", "model": runtime.config.model_id}, status_code=503)
