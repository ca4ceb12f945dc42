"""JSON Schema -> GBNF for structured output and tool-call arguments.

The conversion reuses llama-cpp-python's `SchemaConverter`, but that converter silently
ignores what it does not know, and a weaker grammar means output that does not validate.
So every schema is first checked and normalised here: keywords the grammar cannot enforce
raise `UnsupportedFeature` naming the keyword and where it is; shapes the converter gets
wrong (type lists beside `enum`, `allOf`, arrays with bounds but no `items`, `{}`) are
rewritten into ones it gets right; and the pieces it handles badly (the string character
rule, regex patterns, numeric bounds) are generated here instead.

Grammars are cached by the canonical JSON of what produced them.

The package, by concern:

- `api`: `schema_grammar` and `json_object_grammar`, the cached entry points.
- `builder`: `GrammarBuilder`, one grammar from schemas and hand-written rules.
- `normaliser`: `Normaliser`, which checks a schema and rewrites it for the converter.
- `converter`: `Converter`, llama-cpp-python's converter with the fixes above.
- `patterns`: regex `pattern` -> GBNF.
- `numeric`: integer and decimal ranges -> GBNF.
- `caching`: `GrammarCache` and the shared `cache`.
- `gbnf`: `literal`, GBNF string literals.
"""

from runtime.engine.grammar.api import json_object_grammar, schema_grammar
from runtime.engine.grammar.builder import GrammarBuilder
from runtime.engine.grammar.caching import GrammarCache, cache, canonical
from runtime.engine.grammar.converter import JSON_CHAR, Converter
from runtime.engine.grammar.gbnf import after_thinking, char_class, excluding, literal
from runtime.engine.grammar.normaliser import ANNOTATIONS, KNOWN_FORMATS, REJECTED, SUPPORTED, TYPES, Normaliser
from runtime.engine.grammar.numeric import MAX_DIGITS, number_range
from runtime.engine.grammar.patterns import pattern_to_gbnf

__all__ = [
    "ANNOTATIONS",
    "JSON_CHAR",
    "KNOWN_FORMATS",
    "MAX_DIGITS",
    "REJECTED",
    "SUPPORTED",
    "TYPES",
    "Converter",
    "GrammarBuilder",
    "GrammarCache",
    "Normaliser",
    "after_thinking",
    "cache",
    "canonical",
    "char_class",
    "excluding",
    "json_object_grammar",
    "literal",
    "number_range",
    "pattern_to_gbnf",
    "schema_grammar",
]
