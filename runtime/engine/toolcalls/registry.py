"""The table of tool-call families, in detection order, and the choice among them.

A chat template is matched against each family's `detect` (markers the template renders)
in this order; the first match wins, so a family whose markers are a superset of another's
comes first (Qwen3-Coder's `<tool_call><function=` before Hermes' `<tool_call>`). The
generic format matches every template and comes last. Adding a family is one module under
`runtime/engine/toolcalls/` and one row here (see docs/tool-formats.md).
"""

from __future__ import annotations

from runtime.engine.toolcalls.command_r import CommandR7BFormat
from runtime.engine.toolcalls.deepseek import DeepSeekR1DistillFormat, DeepSeekR1Format, DeepSeekV31Format
from runtime.engine.toolcalls.formats import GenericFormat, HermesFormat, Llama3Format, ToolFormat
from runtime.engine.toolcalls.gemma4 import Gemma4Format
from runtime.engine.toolcalls.glm import GlmFormat
from runtime.engine.toolcalls.harmony import HarmonyFormat
from runtime.engine.toolcalls.kimi import KimiK2Format
from runtime.engine.toolcalls.minimax import MiniMaxFormat
from runtime.engine.toolcalls.mistral import MistralFormat, MistralToolsFormat
from runtime.engine.toolcalls.qwen3_coder import Qwen3CoderFormat

FORMATS: tuple[type[ToolFormat], ...] = (
    # -- families with their own special markers (most specific first) --
    HarmonyFormat,  # gpt-oss: `<|channel|>` (llama.cpp checks it second, after Ministral 3)
    Gemma4Format,  # `'<|tool_call>call:'`
    KimiK2Format,  # `<|tool_calls_section_begin|>` + `<|tool_call_begin|>`
    CommandR7BFormat,  # `<|START_ACTION|>` without Cohere2 MoE's `<|START_TEXT|>`
    DeepSeekR1DistillFormat,  # R1's markers, no `tools`: before R1, before V3.1
    DeepSeekR1Format,  # DeepSeek's `tool▁calls▁begin` + "```json": before V3.1
    DeepSeekV31Format,  # DeepSeek's `tool▁calls▁begin` token
    MiniMaxFormat,  # `<minimax:tool_call>` + `<invoke name="`
    GlmFormat,  # `<tool_call>` + `<arg_key>`: before Hermes' bare `<tool_call>`
    Qwen3CoderFormat,  # `<tool_call>` + `<function=` + `<parameter=`: before Hermes
    # -- JSON-in-tags families --
    HermesFormat,
    MistralToolsFormat,  # `[TOOL_CALLS]name[ARGS]`: before v3's bare `[TOOL_CALLS]`
    MistralFormat,
    Llama3Format,
    # -- the fallback --
    GenericFormat,
)

FORMAT_NAMES: dict[str, type[ToolFormat]] = {f.name: f for f in FORMATS}


def detect_format(template_source: str | None) -> ToolFormat:
    """The tool-call family a chat template was written for (generic when unknown)."""
    src = template_source or ""
    return next(f for f in FORMATS if f.detect(src))()


def format_named(name: str) -> ToolFormat:
    """The family called `name` (`--tool-format`); `ValueError` listing the names otherwise."""
    try:
        return FORMAT_NAMES[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call format {name!r}; choose one of: {', '.join(FORMAT_NAMES)}") from None
