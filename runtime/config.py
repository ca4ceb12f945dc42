"""Server configuration: what `toolstudio run` flags become."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime.images import ImagePolicy

ReasoningMode = Literal["on", "off", "auto"]


def default_data_dir() -> Path:
    return Path(os.environ.get("TOOLSTUDIO_HOME") or Path.home() / ".toolstudio")


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """Server-wide sampling defaults; a request's own values win."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int | None = None  # None: until the context window is full


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model_path: Path
    ctx_size: int = 4096  # per request (per slot), not shared
    threads: int | None = None  # None: all cores
    parallel: int = 4  # sequences decoded together
    batch_size: int = 512
    prefill_chunk: int = 64  # prompt tokens per step while other requests decode or wait
    cache_ram_mib: int = 2048  # host RAM for KV of conversations evicted from slots (0: off)
    max_queue: int = 64  # waiting requests beyond the busy slots
    max_n: int = 8  # choices per request (OpenAI's `n`); more than `parallel` run in turns
    reasoning: ReasoningMode = "auto"  # thinking default for templates with a switch
    chat_template_file: Path | None = None  # overrides the template in the GGUF
    tool_format: str | None = None  # a family from toolcalls.registry; None: detect from the template
    mmproj_path: Path | None = None  # a multimodal projector: the model then sees images
    # Layers whose weights go to the GPU in a CUDA/Metal/Vulkan build of llama.cpp: -1 all of them,
    # 0 none. A CPU-only build ignores it. -1 fails to load when the model does not fit: then name N.
    n_gpu_layers: int = -1
    # Speculative decoding (runtime/engine/speculative.py): a draft model sharing the vocabulary
    # (`--model-draft`), or n-gram prompt lookup (`--spec ngram`); at most `draft_max` tokens a step.
    draft_model_path: Path | None = None
    spec_ngram: bool = False
    draft_max: int = 8
    # Jump-forward decoding (runtime/engine/jumpforward.py): text a grammar forces is decoded as
    # a draft, many tokens a step, verified like a speculative one.
    jump_forward: bool = True
    # `--determinism`: how far greedy/seeded output is kept independent of batching and the
    # prompt cache (runtime/engine/scheduler.py, DETERMINISM); None: "prompt" on a CPU-only build.
    determinism: Literal["off", "prompt", "full"] | None = None

    @property
    def thread_count(self) -> int:
        """Decoding threads: `threads`, or all cores."""
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """`--upstream`: an OpenAI-compatible Chat Completions cluster decodes instead of a local GGUF."""

    urls: tuple[str, ...]  # base URLs, without /v1 (several: balanced, see runtime/engine/upstream)
    api_key: str | None = None  # `--upstream-key`, sent as `Authorization: Bearer`
    model: str | None = None  # `--upstream-model`; None: each backend's first listed model
    vision: bool | None = None  # `--upstream-vision`: forward images; None: what the upstream reports
    connect_timeout: float = 5.0  # seconds to connect (a backend that cannot is taken out)
    read_timeout: float = 300.0  # `--upstream-timeout`: seconds without a byte before a 504


@dataclass(frozen=True, slots=True)
class ToolsConfig:
    """Server-side tools: defaults and bounds."""

    enable_by_default: bool = False  # `--enable-tools`: requests that don't say get tools
    max_iterations: int = 8  # tool rounds per request (a request may ask for fewer)
    tool_timeout: float = 60.0  # seconds per tool call
    session_idle_seconds: float = 1800.0
    session_ttl_seconds: float = 7 * 24 * 3600.0  # `--session-ttl`: a closed session's files are kept this long
    max_sessions: int = 32
    unsafe_no_sandbox: bool = False
    search_provider: str = "ddgs"
    session_disk_mib: int = 1024  # `--session-disk`: each workspace's disk quota (0: none)
    # `--kernel-pool` (the CLI's default is 1): python kernels started ahead, each in a sandbox
    # made for the next new session, so its first call is warm. 0 here: embedders opt in.
    kernel_pool: int = 0
    tool_env: Path | None = None  # `--tool-env`: the python tool's virtualenv (None: toolenv.default_tool_env())
    mcp_config: Path | None = None  # `--mcp-config`: MCP servers whose tools become server tools (docs/mcp.md)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    engine: EngineConfig
    model_id: str
    aliases: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8888
    data_dir: Path = field(default_factory=default_data_dir)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    max_body_bytes: int = 32 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are named
    images: ImagePolicy = field(default_factory=lambda: ImagePolicy())
    tools: ToolsConfig = field(default_factory=lambda: ToolsConfig())
    upstream: UpstreamConfig | None = None  # set: no GGUF is loaded, the upstream engine runs
    # `--database-url`: keys and stored Responses in this PostgreSQL database, shared by every
    # front-end given the same URL; None: SQLite files under `data_dir` (runtime/storage)
    database_url: str | None = None

    @property
    def keys_db(self) -> Path:
        return self.data_dir / "keys.sqlite3"
