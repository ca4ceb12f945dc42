"""llama-cpp-python's `SchemaConverter`, fixed where its grammar is weaker than the schema.

It only ever sees schemas that `Normaliser` has already checked and rewritten. The string
character rule, regex patterns, numeric bounds, arrays and per-schema `$defs` rule names are
generated here instead of by the base class.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import (
    INVALID_RULE_CHARS_RE,
    PRIMITIVE_RULES,
    STRING_FORMAT_RULES,
    BuiltinRule,
    SchemaConverter,
)

from runtime.engine.grammar.gbnf import literal
from runtime.engine.grammar.numeric import number_range
from runtime.engine.grammar.patterns import pattern_to_gbnf

# JSON text may not hold raw control characters, quotes or backslashes inside strings; the
# converter's own `char` rule lets raw newlines through, which produces unparseable JSON.
JSON_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_PRIMITIVES = {**PRIMITIVE_RULES, "char": BuiltinRule(JSON_CHAR, [])}


class Converter(SchemaConverter):
    """llama-cpp-python's converter, with its own rules for what it gets wrong (see the package)."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.ref_prefix = ""

    def _format_literal(self, text: str) -> str:
        # The base escapes only quotes and newlines, so the backslash escapes of the JSON
        # text it is given (`json.dumps` of a const, an enum value, a property name) were
        # read a second time as GBNF escapes: `\ud83c\udf89` became two lone surrogates
        # (U+FFFD in the output) and `\"` or `\n` raw characters that break the JSON.
        return literal(text)

    def _generate_constant_rule(self, value: Any) -> str:
        # Characters as they are (an emoji is the emoji, not a surrogate-pair escape), unless
        # the value holds lone surrogates, which only an escape can carry.
        text = json.dumps(value, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value)
        return self._format_literal(text)

    def _resolve_ref(self, ref: str) -> str:
        # The base names a definition's rule after its last path segment only, so two tools
        # with a `$defs/Item` each would share one rule: name it per schema instead, already
        # escaped, so recursive references point at the rule that is being built.
        ref_name = INVALID_RULE_CHARS_RE.sub("-", f"{self.ref_prefix}-def-{ref.split('/')[-1]}")
        if ref_name not in self._rules and ref not in self._refs_being_resolved:
            self._refs_being_resolved.add(ref)
            ref_name = self.visit(self._refs[ref], ref_name)
            self._refs_being_resolved.remove(ref)
        return ref_name

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        rule = _PRIMITIVES.get(name, rule)
        key = self._add_rule(name, rule.content)
        for dep in rule.deps:
            if dep not in self._rules:
                self._add_primitive(dep, _PRIMITIVES.get(dep) or STRING_FORMAT_RULES[dep])
        return key

    def visit(self, schema: dict[str, Any], name: str) -> str:
        rule_name = f"{name}-" if name in ("root", "dot", *PRIMITIVE_RULES, *STRING_FORMAT_RULES) else name or "root"
        kind = schema.get("type")
        if not schema:
            return self._add_rule(rule_name, self._add_primitive("value", _PRIMITIVES["value"]))
        if "enum" in schema or "const" in schema or "anyOf" in schema or "$ref" in schema:
            return super().visit(schema, name)
        if kind == "array":
            return self._add_rule(rule_name, self._array(schema, name))
        if kind == "string" and "pattern" in schema:
            char = self._add_primitive("char", _PRIMITIVES["char"])
            body = pattern_to_gbnf(schema["pattern"], char_rule=char)
            return self._add_rule(rule_name, rf'"\"" {body} "\"" space')
        if kind in ("integer", "number") and ("minimum" in schema or "maximum" in schema):
            integral = kind == "integer"
            body = number_range(schema.get("minimum"), schema.get("maximum"), integral=integral)
            return self._add_rule(rule_name, f"({body}) space")
        return super().visit(schema, name)

    def _array(self, schema: dict[str, Any], name: str) -> str:
        sep = '"," space'
        if "prefixItems" in schema:
            parts = [self.visit(s, f"{name}-tuple-{i}") for i, s in enumerate(schema["prefixItems"])]
            return '"[" space ' + f" {sep} ".join(parts) + ' "]" space'
        item = self.visit(schema.get("items", {}), f"{name}-item")
        reps = _repeat(item, schema.get("minItems", 0), schema.get("maxItems"), sep)
        return f'"[" space {reps} "]" space'


def _repeat(item: str, lo: int, hi: int | None, sep: str) -> str:
    if hi == 0:
        return ""
    first = item if lo >= 1 else None
    rest_lo = max(lo - 1, 0)
    rest_hi = None if hi is None else hi - 1
    bound = f"{{{rest_lo},{'' if rest_hi is None else rest_hi}}}"
    tail = f"({sep} {item}){bound}" if rest_hi != 0 else ""
    if first is not None:
        return f"{item} {tail}".rstrip()
    return f"({item} {tail})?".replace(" )", ")")
