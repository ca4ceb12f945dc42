"""Client-side tool calling inside the engine: formats, grammars and streaming parsers.

Dialects never see any of this: they put `tools`, `tool_choice` and `parallel_tool_calls`
in the `ChatRequest` and render the `ToolCallStart/Delta/End` events the engine emits.
"""

from runtime.engine.toolcalls.formats import (
    FORMATS,
    CallGrammar,
    GenericFormat,
    HermesFormat,
    Llama3Format,
    MistralFormat,
    ToolFormat,
    detect_format,
)
from runtime.engine.toolcalls.parser import ToolCallParser, new_call_id
from runtime.engine.toolcalls.parsers import GenericParser, HermesParser, Llama3Parser, MistralParser

__all__ = [
    "FORMATS",
    "CallGrammar",
    "GenericFormat",
    "GenericParser",
    "HermesFormat",
    "HermesParser",
    "Llama3Format",
    "Llama3Parser",
    "MistralFormat",
    "MistralParser",
    "ToolCallParser",
    "ToolFormat",
    "detect_format",
    "new_call_id",
]
