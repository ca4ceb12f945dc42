"""JSON Schema -> GBNF for structured output and tool-call arguments.

The conversion reuses llama-cpp-python's `SchemaConverter`, but that converter silently
ignores what it does not know, and a weaker grammar means output that does not validate.
So every schema is first checked and normalised here: keywords the grammar cannot enforce
raise `UnsupportedFeature` naming the keyword and where it is; shapes the converter gets
wrong (type lists beside `enum`, `allOf`, arrays with bounds but no `items`, `{}`) are
rewritten into ones it gets right; and the pieces it handles badly (the string character
rule, regex patterns, numeric bounds) are generated here instead.

Grammars are cached by the canonical JSON of what produced them.
"""

from __future__ import annotations

import json
import math
import re
import re._constants as _c
import re._parser as _sre_parser
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jsonschema
from llama_cpp.llama_grammar import (
    INVALID_RULE_CHARS_RE,
    PRIMITIVE_RULES,
    STRING_FORMAT_RULES,
    BuiltinRule,
    SchemaConverter,
)

from runtime.errors import UnsupportedFeature

# JSON text may not hold raw control characters, quotes or backslashes inside strings; the
# converter's own `char` rule lets raw newlines through, which produces unparseable JSON.
JSON_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_PRIMITIVES = {**PRIMITIVE_RULES, "char": BuiltinRule(JSON_CHAR, [])}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ANNOTATIONS = _words(
    "title description $comment examples default deprecated readOnly writeOnly $schema $id $anchor"
    " contentMediaType contentEncoding $defs definitions"
)
# Assertions no grammar here enforces: a request using them is refused, not weakened.
REJECTED = _words(
    "not if then else patternProperties propertyNames dependentRequired dependentSchemas dependencies"
    " contains minContains maxContains unevaluatedItems multipleOf $dynamicRef $recursiveRef"
)
KNOWN_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class GrammarCache:
    """A small thread-safe LRU of built grammars, keyed by canonical JSON."""

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any, build: Callable[[], str]) -> str:
        k = canonical(key)
        with self._lock:
            if k in self._items:
                self._items.move_to_end(k)
                self.hits += 1
                return self._items[k]
        grammar = build()  # errors propagate and are not cached
        with self._lock:
            self.misses += 1
            self._items[k] = grammar
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return grammar

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


cache = GrammarCache()


def schema_grammar(schema: dict[str, Any], *, strict: bool = False, param: str = "response_format") -> str:
    """GBNF (root rule `root`) for a JSON value that validates against `schema`."""

    def build() -> str:
        builder = GrammarBuilder()
        return builder.build(builder.schema(schema, "value", param=param, strict=strict))

    return cache.get(["schema", schema, strict], build)


def json_object_grammar() -> str:
    """GBNF for any JSON object (OpenAI's `json_object` mode)."""
    return schema_grammar({"type": "object"})


def literal(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


class GrammarBuilder:
    """One grammar assembled from JSON Schemas and hand-written rules (tool-call envelopes)."""

    def __init__(self) -> None:
        self._converter = _Converter()

    def schema(self, schema: Any, name: str, *, param: str, strict: bool = False) -> str:
        """Add the rules for `schema`; returns the name of its top rule."""
        normalised = Normaliser(schema, param=param, strict=strict).run()
        conv = self._converter
        conv._refs, conv.ref_prefix = {}, name
        normalised = conv.resolve_refs(normalised, "#schema")
        return conv.visit(normalised, name)

    def rule(self, name: str, body: str) -> str:
        return self._converter._add_rule(name, body)

    def build(self, root_body: str) -> str:
        self._converter._rules["root"] = root_body
        return self._converter.format_grammar()


class _Converter(SchemaConverter):
    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.ref_prefix = ""

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


# -- numeric bounds -------------------------------------------------------------------------


def _digit_class(lo: int, hi: int) -> str:
    return f"[{lo}]" if lo == hi else f"[{lo}-{hi}]"


def _digits_between(a: str, b: str) -> str:
    """GBNF for the digit strings of one length from `a` to `b` (inclusive)."""
    if not a:
        return ""
    if a == b:
        return f'"{a}"'
    if a[0] == b[0]:
        return f'"{a[0]}" ' + _digits_between(a[1:], b[1:])
    n = len(a) - 1
    low_full, high_full = a[1:] == "0" * n, b[1:] == "9" * n
    first, last = int(a[0]) + (0 if low_full else 1), int(b[0]) - (0 if high_full else 1)
    alts = []
    if not low_full:
        alts.append(f'"{a[0]}" ' + _digits_between(a[1:], "9" * n))
    if first <= last:
        alts.append(_digit_class(first, last) + (f" [0-9]{{{n}}}" if n else ""))
    if not high_full:
        alts.append(f'"{b[0]}" ' + _digits_between("0" * n, b[1:]))
    return "(" + " | ".join(alts) + ")"


MAX_DIGITS = 16


def _uint_range(lo: int, hi: int | None) -> str:
    """Canonical decimal integers (no leading zeros) from `lo` to `hi` (None: unbounded)."""
    alts = []
    top = len(str(hi)) if hi is not None else len(str(lo))
    for length in range(len(str(lo)), top + 1):
        a = max(lo, 10 ** (length - 1) if length > 1 else 0)
        b = 10**length - 1 if hi is None else min(hi, 10**length - 1)
        if a <= b:
            alts.append(_digits_between(str(a), str(b)))
    if hi is None and len(str(lo)) < MAX_DIGITS:
        alts.append(f"[1-9] [0-9]{{{len(str(lo))},{MAX_DIGITS - 1}}}")
    return "(" + " | ".join(alts) + ")"


def number_range(lo: float | None, hi: float | None, *, integral: bool) -> str:
    """GBNF for integers (or decimals) within inclusive bounds that are whole numbers."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError("minimum is above maximum")
    frac = "" if integral else ' ("." [0-9]{1,15})?'
    zero_frac = "" if integral else ' ("." "0"{1,15})?'

    def magnitudes(m_lo: int, m_hi: int | None) -> str:
        # |x| from m_lo to m_hi: any fraction below the top, only .0 at the top itself.
        if integral or m_hi is None:
            return _uint_range(m_lo, m_hi) + frac
        alts = [f'"{m_hi}"{zero_frac}']
        if m_lo <= m_hi - 1:
            alts.insert(0, _uint_range(m_lo, m_hi - 1) + frac)
        return "(" + " | ".join(alts) + ")"

    ilo = None if lo is None else math.ceil(lo)
    ihi = None if hi is None else math.floor(hi)
    alts = []
    if ihi is None or ihi >= 0:
        alts.append(magnitudes(max(ilo, 0) if ilo is not None else 0, ihi))
    if ilo is None or ilo < 0:
        low_mag = 1 if integral else 0  # "-0.5" is negative; "-0" is not worth allowing
        m_lo = max(-ihi, low_mag) if ihi is not None and ihi < 0 else low_mag
        neg = magnitudes(m_lo, None if ilo is None else -ilo)
        alts.append(f'"-" {neg}' if integral else f'"-" ({neg})')
    return " | ".join(alts)


# -- regex patterns -------------------------------------------------------------------------

_ANY_JSON_CHAR = "__anychar__"


def pattern_to_gbnf(pattern: str, *, char_rule: str) -> str:
    """GBNF for the JSON-encoded strings a regex `pattern` matches (JSON Schema: a search)."""
    try:
        parsed = _sre_parser.parse(pattern)
    except re.error as exc:
        raise ValueError(f"invalid pattern {pattern!r}: {exc}") from exc
    if parsed.state.flags & (re.IGNORECASE | re.VERBOSE | re.DOTALL):
        raise ValueError("pattern flags are not supported")
    items = list(parsed)
    anchored_start = bool(items) and items[0] == (_c.AT, _c.AT_BEGINNING)
    anchored_end = bool(items) and items[-1] == (_c.AT, _c.AT_END)
    items = items[1 if anchored_start else 0 : len(items) - (1 if anchored_end else 0)]
    body = _regex_seq(items).replace(_ANY_JSON_CHAR, char_rule)
    head = "" if anchored_start else f"{char_rule}* "
    tail = "" if anchored_end else f" {char_rule}*"
    return f"{head}({body}){tail}"


def _regex_seq(items: Any) -> str:
    parts = [_regex_item(op, arg) for op, arg in items]
    return " ".join(p for p in parts if p) or '""'


def _regex_item(op: Any, arg: Any) -> str:
    if op is _c.LITERAL:
        return _json_chars([(arg, arg)])
    if op is _c.NOT_LITERAL:
        return _json_chars(_complement([(arg, arg)]))
    if op is _c.ANY:
        return _json_chars(_complement([(10, 10)]))  # "." excludes only the newline
    if op is _c.IN:
        return _json_chars(_class_ranges(arg))
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
        lo, hi, sub = arg
        inner = f"({_regex_seq(sub)})"
        if hi == _c.MAXREPEAT:
            return {0: f"{inner}*", 1: f"{inner}+"}.get(lo, f"{inner}{{{lo},}}")
        return f"{inner}?" if (lo, hi) == (0, 1) else f"{inner}{{{lo},{hi}}}"
    if op is _c.SUBPATTERN:
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise ValueError("inline pattern flags are not supported")
        return f"({_regex_seq(sub)})"
    if op is _c.BRANCH:
        return "(" + " | ".join(_regex_seq(alt) for alt in arg[1]) + ")"
    raise ValueError(f"the pattern construct {str(op).lower()} is not supported")


_CATEGORIES = {
    "CATEGORY_DIGIT": [(48, 57)],
    "CATEGORY_SPACE": [(9, 13), (32, 32)],
    "CATEGORY_WORD": [(48, 57), (65, 90), (95, 95), (97, 122)],
}


def _category(cat: Any) -> list[tuple[int, int]]:
    name = str(cat)
    for base, ranges in _CATEGORIES.items():
        if name == base:
            return ranges
        if name == base.replace("CATEGORY_", "CATEGORY_NOT_"):
            return _complement(ranges)
    raise ValueError(f"the pattern class {name.lower()} is not supported")


def _class_ranges(items: Any) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    negate = False
    for op, arg in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            ranges.append((arg, arg))
        elif op is _c.RANGE:
            ranges.append(arg)
        elif op is _c.CATEGORY:
            ranges += _category(arg)
        else:
            raise ValueError(f"the pattern construct {str(op).lower()} is not supported")
    return _complement(ranges) if negate else ranges


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, at = [], 0
    for lo, hi in sorted(ranges):
        if lo > at:
            out.append((at, lo - 1))
        at = max(at, hi + 1)
    if at <= 0x10FFFF:
        out.append((at, 0x10FFFF))
    return out


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _json_chars(ranges: list[tuple[int, int]]) -> str:
    """One decoded character from `ranges`, as JSON text writes it: raw where JSON allows,
    escaped for quotes, backslashes and control characters."""
    ranges = _merge_ranges(ranges)
    if ranges == [(0, 0x10FFFF)]:
        return _ANY_JSON_CHAR
    raw: list[tuple[int, int]] = []
    escaped: list[int] = []
    for lo, hi in ranges:
        c = lo
        while c <= min(hi, 0x5C):  # every character JSON must escape is below 0x5D
            if c < 0x20 or c in (0x22, 0x5C):
                escaped.append(c)
            else:
                start = c
                while c + 1 <= min(hi, 0x5B) and c + 1 != 0x22:
                    c += 1
                raw.append((start, c))
            c += 1
        if hi > 0x5C:
            raw.append((max(lo, 0x5D), hi))
    alts = [literal(json.dumps(chr(c))[1:-1]) for c in escaped]
    if raw:
        alts.insert(
            0, "[" + "".join(_cls_char(a) if a == b else f"{_cls_char(a)}-{_cls_char(b)}" for a, b in raw) + "]"
        )
    if not alts:
        raise ValueError("the pattern matches no character")
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


def _cls_char(code: int) -> str:
    ch = chr(code)
    if ch in "]-^\\" or code > 0x7E:
        return f"\\x{code:02X}" if code <= 0xFF else (f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}")
    return ch


# -- checking and normalising schemas ---------------------------------------------------------

SUPPORTED = _words(
    "type enum const anyOf oneOf allOf $ref properties required additionalProperties unevaluatedProperties"
    " minProperties maxProperties items prefixItems additionalItems minItems maxItems uniqueItems"
    " minLength maxLength pattern format minimum maximum exclusiveMinimum exclusiveMaximum nullable"
)
_KIND_KEYWORDS = (
    ("object", ("properties", "required", "additionalProperties", "minProperties", "maxProperties")),
    ("array", ("items", "prefixItems", "minItems", "maxItems", "uniqueItems")),
    ("string", ("minLength", "maxLength", "pattern", "format")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")),
)


class _NoValue(Exception):
    """A branch whose enum keeps no value: dropped from a union, an error on its own."""


class Normaliser:
    """Checks a schema against what the grammar enforces and rewrites it for the converter.

    The result only uses shapes `_Converter` turns into exactly-enforcing rules; anything
    else raises `UnsupportedFeature` with `param` set (the request field at fault).
    """

    def __init__(self, schema: Any, *, param: str, strict: bool) -> None:
        self.root = schema
        self.param = param
        self.strict = strict
        self._validator = jsonschema.Draft202012Validator(schema if isinstance(schema, dict) else {})

    def run(self) -> dict[str, Any]:
        try:
            out = self.node(self.root, "#")
        except _NoValue:
            self.fail("#", "no value satisfies the schema's enum/const and its other keywords")
        if isinstance(self.root, dict):
            for key in ("$defs", "definitions"):
                if isinstance(self.root.get(key), dict):
                    out[key] = {k: self.node(v, f"#/{key}/{k}") for k, v in self.root[key].items()}
        return out

    def fail(self, path: str, message: str) -> Any:
        raise UnsupportedFeature(f"JSON Schema at {path}: {message}", param=self.param)

    def node(self, schema: Any, path: str) -> dict[str, Any]:
        if schema is True:
            return {}
        if schema is False:
            self.fail(path, "a false schema can never be satisfied")
        if not isinstance(schema, dict):
            self.fail(path, "a schema must be an object")
        for key in schema:
            if key in REJECTED:
                self.fail(path, f"keyword {key!r} is not supported")
        s = {k: v for k, v in schema.items() if k in SUPPORTED}
        if s.pop("nullable", False) is True and "type" in s:
            s["type"] = [*([s["type"]] if isinstance(s["type"], str) else s["type"]), "null"]
        if "$ref" in s:
            return self._ref(s, path)
        if "allOf" in s:
            return self.node(self._all_of(s, path), path)
        kind = s.get("type")
        if isinstance(kind, list):
            kinds = list(dict.fromkeys(kind))
            if len(kinds) != 1:
                return self._union([{**s, "type": k} for k in kinds], path, "type")
            s["type"] = kind = kinds[0]
        if kind is not None and kind not in TYPES:
            self.fail(path, f"unknown type {kind!r}")
        if "anyOf" in s or "oneOf" in s:
            if "anyOf" in s and "oneOf" in s:
                self.fail(path, "anyOf together with oneOf is not supported")
            key = "anyOf" if "anyOf" in s else "oneOf"
            branches = s.pop(key)
            # A and (B1 or B2) == (A and B1) or (A and B2): siblings go into every branch.
            merged = [self._merge(s, self._deref(b, path), path) if s else b for b in branches]
            return self._union(merged, path, key)
        if "enum" in s or "const" in s:
            return self._enum(s)
        if kind is None:
            kind = next((k for k, words in _KIND_KEYWORDS if any(w in s for w in words)), None)
            if kind is None:
                return {}
        if kind == "object":
            return self._object(s, path)
        if kind == "array":
            return self._array(s, path)
        if kind == "string":
            return self._string(s, path)
        if kind in ("number", "integer"):
            return self._number(s, path, kind)
        return {"type": kind}

    def _union(self, branches: list[Any], path: str, key: str) -> dict[str, Any]:
        out = []
        for i, branch in enumerate(branches):
            try:
                out.append(self.node(branch, f"{path}/{key}/{i}"))
            except _NoValue:
                continue
        if not out:
            raise _NoValue
        if any(b == {} for b in out):
            return {}
        return out[0] if len(out) == 1 else {"anyOf": out}

    def _enum(self, s: dict[str, Any]) -> dict[str, Any]:
        values = [s["const"]] if "const" in s else list(s["enum"])
        if "const" in s and "enum" in s and s["const"] not in s["enum"]:
            raise _NoValue
        rest = {k: v for k, v in s.items() if k not in ("enum", "const")}
        # The converter emits enum values and ignores every other keyword: keep only
        # the values that satisfy the rest of the schema.
        check = self._validator.evolve(schema=rest)
        kept = [v for v in values if check.is_valid(v)]
        if not kept:
            raise _NoValue
        return {"enum": kept}

    def _deref(self, schema: Any, path: str) -> Any:
        for _ in range(32):
            if not (isinstance(schema, dict) and "$ref" in schema):
                return schema
            schema = self._target(schema["$ref"], path)
        self.fail(path, "$ref chain too long")

    def _target(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            self.fail(path, f"$ref {ref!r} is not supported (only local references like #/$defs/name)")
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                self.fail(path, f"$ref {ref!r} points nowhere")
            node = node[part]
        return node

    def _ref(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        if len(s) > 1:
            self.fail(path, "keywords beside $ref are not supported")
        self._target(s["$ref"], path)
        if not s["$ref"].startswith(("#/$defs/", "#/definitions/")):
            self.fail(path, "$ref is only supported into #/$defs or #/definitions")
        return {"$ref": s["$ref"]}

    def _all_of(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        parts = [self._deref(p, path) for p in s.pop("allOf")]
        merged = s
        for part in parts:
            if part is True:
                continue
            if not isinstance(part, dict):
                self.fail(path, "allOf holds a schema that is not an object")
            merged = self._merge(merged, {k: v for k, v in part.items() if k not in ANNOTATIONS}, path)
        names = set(merged.get("properties", {})) | set(merged.get("required", []))
        for part in [s, *parts]:
            closed = isinstance(part, dict) and part.get("additionalProperties") is False
            if closed and not names <= set(part.get("properties", {})):
                self.fail(path, "allOf with additionalProperties false in one part is not supported")
        return merged

    def _merge(self, a: dict[str, Any], b: Any, path: str) -> Any:
        if not isinstance(b, dict):
            return b if b is not True else a
        out = dict(a)
        for k, v in b.items():
            if k in ANNOTATIONS or k not in out or out[k] == v:
                out.setdefault(k, v)
                continue
            have = out[k]
            if k == "required":
                out[k] = list(dict.fromkeys([*have, *v]))
            elif k == "properties":
                props = dict(have)
                for name, sub in v.items():
                    props[name] = {"allOf": [props[name], sub]} if name in props and props[name] != sub else sub
                out[k] = props
            elif k == "type":
                left = {have} if isinstance(have, str) else set(have)
                right = {v} if isinstance(v, str) else set(v)
                both = left & right | ({"integer"} if "integer" in left | right and "number" in left | right else set())
                if not both:
                    raise _NoValue
                out[k] = sorted(both)[0] if len(both) == 1 else sorted(both)
            elif k in ("minimum", "minItems", "minLength", "minProperties"):
                out[k] = max(have, v)
            elif k in ("maximum", "maxItems", "maxLength", "maxProperties"):
                out[k] = min(have, v)
            elif k == "enum":
                out[k] = [x for x in have if x in v]
            else:
                self.fail(path, f"keyword {k!r} in more than one combined subschema is not supported")
        return out

    def _object(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        extra = s.get("additionalProperties")
        if isinstance(s.get("unevaluatedProperties"), dict):
            self.fail(path, "keyword 'unevaluatedProperties' with a schema is not supported")
        extra_schema: Any = (
            None if extra is None else self.node(extra, f"{path}/additionalProperties") if extra is not False else False
        )
        if "properties" not in s and "required" not in s and extra is not False:
            out: dict[str, Any] = {"type": "object"}
            if extra_schema not in (None, {}):
                out["additionalProperties"] = extra_schema
            return out
        props = {k: self.node(v, f"{path}/properties/{k}") for k, v in (s.get("properties") or {}).items()}
        required = list(dict.fromkeys(s.get("required", [])))
        for name in required:
            if name not in props:
                if extra is False:
                    self.fail(path, f"required property {name!r} is not allowed by additionalProperties false")
                props[name] = extra_schema or {}
        low, high = s.get("minProperties", 0), s.get("maxProperties")
        optional = [k for k in props if k not in required]
        if low > len(required):
            if low > len(props):
                self.fail(path, "keyword 'minProperties' beyond the listed properties is not supported")
            required += optional[: low - len(required)]  # ask for enough of the optional ones
        open_extra = extra_schema not in (None, False)
        if high is not None and (high < len(required) or open_extra or len(props) > high):
            self.fail(path, "keyword 'maxProperties' is not supported here")
        out = {"type": "object", "properties": props, "required": required}
        out["additionalProperties"] = (True if extra_schema == {} else extra_schema) if open_extra else False
        return out

    def _array(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        items, prefix = s.get("items"), s.get("prefixItems")
        if isinstance(items, list):  # draft 4 tuples
            prefix, items = items, s.get("additionalItems")
        low, high = s.get("minItems", 0), s.get("maxItems")
        if s.get("uniqueItems") is True and (high is None or high > 1):
            self.fail(path, "keyword 'uniqueItems' is not supported")
        if high is not None and low > high:
            self.fail(path, "minItems is above maxItems")
        if prefix is not None:
            if items not in (None, False):
                self.fail(path, "prefixItems together with items is not supported")
            if low > len(prefix) or (high is not None and high < len(prefix)):
                self.fail(path, "prefixItems with minItems/maxItems other than its length is not supported")
            return {
                "type": "array",
                "prefixItems": [self.node(p, f"{path}/prefixItems/{i}") for i, p in enumerate(prefix)],
            }
        if items is False:
            if low > 0:
                self.fail(path, "items false with minItems can never be satisfied")
            return {"type": "array", "items": {}, "maxItems": 0}
        out = {"type": "array", "items": self.node({} if items is None else items, f"{path}/items"), "minItems": low}
        if high is not None:
            out["maxItems"] = high
        return out

    def _string(self, s: dict[str, Any], path: str) -> dict[str, Any]:
        fmt, pattern = s.get("format"), s.get("pattern")
        if fmt is not None and fmt not in KNOWN_FORMATS:
            if self.strict:
                self.fail(path, f"format {fmt!r} is not supported")
            fmt = None  # outside strict mode `format` is an annotation, as in JSON Schema itself
        lengths = "minLength" in s or "maxLength" in s
        if (fmt is not None) + (pattern is not None) + lengths > 1:
            self.fail(path, "combining format, pattern and minLength/maxLength is not supported")
        out: dict[str, Any] = {"type": "string"}
        if fmt is not None:
            out["format"] = fmt
        if pattern is not None:
            try:
                pattern_to_gbnf(pattern, char_rule="char")
            except ValueError as exc:
                self.fail(path, f"pattern {pattern!r}: {exc}")
            out["pattern"] = pattern
        if lengths:
            low, high = s.get("minLength", 0), s.get("maxLength")
            if high is not None and low > high:
                self.fail(path, "minLength is above maxLength")
            out["minLength"] = low
            if high is not None:
                out["maxLength"] = high
        return out

    def _number(self, s: dict[str, Any], path: str, kind: str) -> dict[str, Any]:
        low, high = s.get("minimum"), s.get("maximum")
        ex_low, ex_high = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        if ex_low is True:  # draft 4: a flag on minimum
            ex_low, low = low, None
        if ex_high is True:
            ex_high, high = high, None
        ex_low = None if ex_low is False else ex_low
        ex_high = None if ex_high is False else ex_high
        if kind == "integer":
            if ex_low is not None:
                low = max(low, math.floor(ex_low) + 1) if low is not None else math.floor(ex_low) + 1
            if ex_high is not None:
                high = min(high, math.ceil(ex_high) - 1) if high is not None else math.ceil(ex_high) - 1
            low = None if low is None else math.ceil(low)
            high = None if high is None else math.floor(high)
        elif ex_low is not None or ex_high is not None:
            self.fail(path, "keyword 'exclusiveMinimum'/'exclusiveMaximum' on numbers is not supported")
        elif any(b is not None and b != int(b) for b in (low, high)):
            self.fail(path, "minimum/maximum that are not whole numbers are not supported on numbers")
        if low is not None and high is not None and low > high:
            self.fail(path, "minimum is above maximum")
        out: dict[str, Any] = {"type": kind}
        if low is not None:
            out["minimum"] = int(low)
        if high is not None:
            out["maximum"] = int(high)
        return out
