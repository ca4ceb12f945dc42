"""Probing a backend: is it up, what kind of server is it, what model and context does it serve.

One `GET /v1/models` (with the upstream key) answers most of it; llama-server also gets a
`GET /props` for its context size and whether its model takes images. Synchronous on purpose:
it runs in the engine loader's thread at start-up and in a worker thread afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from runtime.engine.upstream.profiles import PROFILES, Profile, context_from_models, kind_from_models, model_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Probe:
    profile: Profile
    model: str | None
    context_length: int | None
    vision: bool
    tools: bool | None = None  # the chat template can offer tools (llama-server's /props; None: unknown)


def probe_backend(url: str, api_key: str | None, *, timeout: float) -> Probe | None:
    """What `url` serves, or None when it does not answer (or refuses the key)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            response = client.get(f"{url}/v1/models")
            if response.status_code in (401, 403):
                log.error("upstream %s refuses the key (HTTP %d): check --upstream-key", url, response.status_code)
                return None
            response.raise_for_status()
            models = response.json()
            kind = kind_from_models(models)
            ids = model_ids(models)
            context = context_from_models(models)
            vision = False
            tools: bool | None = None
            if kind == "llama-server":
                props = client.get(f"{url}/props")
                if props.status_code == 200:
                    body = props.json()
                    settings = body.get("default_generation_settings") or {}
                    context = settings.get("n_ctx") or body.get("n_ctx") or context
                    vision = bool((body.get("modalities") or {}).get("vision"))
                    caps = body.get("chat_template_caps")
                    if isinstance(caps, dict) and isinstance(caps.get("supports_tools"), bool):
                        tools = caps["supports_tools"]
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("probing upstream %s failed: %s", url, exc)
        return None
    return Probe(PROFILES[kind], ids[0] if ids else None, int(context) if context else None, vision, tools)


def discover_model(urls: list[str], api_key: str | None, *, timeout: float = 3.0) -> str | None:
    """A display name for the served model: the first model the first reachable backend
    lists (a file path, as llama-cpp-python lists it, becomes its file name)."""
    for url in urls:
        probe = probe_backend(url, api_key, timeout=timeout)
        if probe is not None and probe.model:
            name = probe.model.rstrip("/").rsplit("/", 1)[-1]
            return name.removesuffix(".gguf") or probe.model
    return None


def base_url(url: str) -> str:
    """`url` as a base URL without a trailing `/v1`; ValueError when it is not http(s)."""
    parsed = httpx.URL(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"--upstream {url!r} is not an http:// or https:// URL")
    text = str(parsed).rstrip("/")
    return text.removesuffix("/v1")
