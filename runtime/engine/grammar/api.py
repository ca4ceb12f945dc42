"""The entry points: a cached GBNF grammar for a JSON Schema or for any JSON object."""

from __future__ import annotations

from typing import Any

from runtime.engine.grammar.builder import GrammarBuilder
from runtime.engine.grammar.caching import cache


def schema_grammar(schema: dict[str, Any], *, strict: bool = False, param: str = "response_format") -> str:
    """GBNF (root rule `root`) for a JSON value that validates against `schema`."""

    def build() -> str:
        builder = GrammarBuilder()
        return builder.build(builder.schema(schema, "value", param=param, strict=strict))

    return cache.get(["schema", schema, strict], build)


def json_object_grammar() -> str:
    """GBNF for any JSON object (OpenAI's `json_object` mode)."""
    return schema_grammar({"type": "object"})
