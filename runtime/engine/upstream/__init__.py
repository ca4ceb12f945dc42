"""The upstream engine: toolstudio on an OpenAI-compatible serving cluster (vLLM, SGLang, a
llama-server fleet, another toolstudio) instead of a local GGUF. See docs/scale-out.md."""

from runtime.engine.upstream.engine import UpstreamEngine

__all__ = ["UpstreamEngine"]
