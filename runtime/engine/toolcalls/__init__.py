"""Client-side tool calling inside the engine: formats, grammars and streaming parsers.

Dialects never see any of this: they put `tools`, `tool_choice` and `parallel_tool_calls`
in the `ChatRequest` and render the `ToolCallStart/Delta/End` events the engine emits.

- `formats`: `ToolFormat`, the interface of a family, and the JSON-object families.
- `mistral`: Mistral's v3 (JSON list) and v11 (`[TOOL_CALLS]name[ARGS]{...}`) formats.
- `registry`: the ordered table of families and `detect_format`.
- `parser`: the character state machine the JSON-object families share.
- `snapshot`: `SnapshotParser`, parse-the-whole-text-and-diff, for the other families.
"""

from runtime.engine.toolcalls.formats import (
    CallGrammar,
    GenericFormat,
    HermesFormat,
    JsonCallsFormat,
    Llama3Format,
    ToolFormat,
)
from runtime.engine.toolcalls.mistral import MistralFormat, MistralToolsFormat, MistralToolsParser
from runtime.engine.toolcalls.parser import ToolCallParser, new_call_id
from runtime.engine.toolcalls.parsers import GenericParser, HermesParser, Llama3Parser, MistralParser
from runtime.engine.toolcalls.registry import FORMAT_NAMES, FORMATS, detect_format, format_named
from runtime.engine.toolcalls.snapshot import CallSnapshot, Content, Reasoning, SnapshotParser

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "CallGrammar",
    "CallSnapshot",
    "Content",
    "GenericFormat",
    "GenericParser",
    "HermesFormat",
    "HermesParser",
    "JsonCallsFormat",
    "Llama3Format",
    "Llama3Parser",
    "MistralFormat",
    "MistralParser",
    "MistralToolsFormat",
    "MistralToolsParser",
    "Reasoning",
    "SnapshotParser",
    "ToolCallParser",
    "ToolFormat",
    "detect_format",
    "format_named",
    "new_call_id",
]
