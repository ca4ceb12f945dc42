"""The table of tool-call families, in detection order, and the choice among them.

A chat template is matched against each family's `detect` (markers the template renders)
in this order; the first match wins, so a family whose markers are a superset of another's
comes first (Qwen3-Coder's `<tool_call><function=` before Hermes' `<tool_call>`). The
generic format matches every template and comes last. Adding a family is one module under
`runtime/engine/toolcalls/` and one row here (see docs/tool-formats.md).
"""

from __future__ import annotations

from runtime.engine.toolcalls.formats import GenericFormat, HermesFormat, Llama3Format, MistralFormat, ToolFormat

FORMATS: tuple[type[ToolFormat], ...] = (
    # -- families with their own special markers (most specific first) --
    # -- JSON-in-tags families --
    HermesFormat,
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
