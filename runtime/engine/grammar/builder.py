"""`GrammarBuilder`: one grammar from checked JSON Schemas and hand-written rules."""

from __future__ import annotations

from typing import Any

from llama_cpp.llama_grammar import INVALID_RULE_CHARS_RE

from runtime.engine.grammar.converter import Converter
from runtime.engine.grammar.gbnf import excluding
from runtime.engine.grammar.normaliser import Normaliser


class GrammarBuilder:
    """One grammar assembled from JSON Schemas and hand-written rules (tool-call envelopes)."""

    def __init__(self) -> None:
        self._converter = Converter()

    def schema(self, schema: Any, name: str, *, param: str, strict: bool = False) -> str:
        """Add the rules for `schema`; returns the name of its top rule."""
        normalised = Normaliser(schema, param=param, strict=strict).run()
        conv = self._converter
        conv._refs, conv.ref_prefix = {}, name
        normalised = conv.resolve_refs(normalised, "#schema")
        return conv.visit(normalised, name)

    def rule(self, name: str, body: str) -> str:
        return self._converter._add_rule(name, body)

    def excluding(self, stop: str, name: str) -> str:
        """Add rules for any text without `stop` in it (see `gbnf.excluding`); returns the top rule."""
        name = INVALID_RULE_CHARS_RE.sub("-", name)  # rule names: letters, digits and "-"
        base, i = name, 1
        while f"{name}-0" in self._converter._rules:
            i += 1
            name = f"{base}{i}"
        top, rules = excluding(stop, name)
        for rule_name, body in rules.items():
            self._converter._rules[rule_name] = body
        return top

    def build(self, root_body: str) -> str:
        self._converter._rules["root"] = root_body
        return self._converter.format_grammar()
