"""Checking and normalising JSON Schemas before they become grammars.

Keywords the grammar cannot enforce raise `UnsupportedFeature` (naming the keyword and where
it is); shapes the converter gets wrong are rewritten into ones it gets right.
"""

from __future__ import annotations

import math
from typing import Any

import jsonschema

from runtime.engine.grammar.patterns import pattern_to_gbnf
from runtime.errors import UnsupportedFeature


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


def without_empty_not(schema: Any) -> Any:
    """`schema` with every `{"not": {}}` (and `{"not": true}`) written as `false`, the schema
    it is (pydantic and MCP servers emit it). A `not` with anything else stays, and is refused."""
    if isinstance(schema, list):
        return [without_empty_not(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if set(schema) - ANNOTATIONS == {"not"} and schema["not"] in ({}, True):
        return False
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _LITERAL_KEYWORDS or key in ANNOTATIONS:
            out[key] = value  # data, not schemas
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: without_empty_not(sub) for name, sub in value.items()}  # names are data
        else:
            out[key] = without_empty_not(value)
    return out


_LITERAL_KEYWORDS = frozenset({"enum", "const", "default", "examples", "required"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})


class _NoValue(Exception):
    """A branch whose enum keeps no value: dropped from a union, an error on its own."""


class Normaliser:
    """Checks a schema against what the grammar enforces and rewrites it for the converter.

    The result only uses shapes `Converter` turns into exactly-enforcing rules; anything
    else raises `UnsupportedFeature` with `param` set (the request field at fault).
    """

    def __init__(self, schema: Any, *, param: str, strict: bool) -> None:
        self.root = without_empty_not(schema)
        self.param = param
        self.strict = strict
        self._validator = jsonschema.Draft202012Validator(schema if isinstance(schema, dict) else {})

    def run(self) -> dict[str, Any]:
        try:
            out = self.node(self.root, "#")
        except _NoValue:
            self.fail(
                "#", "no value satisfies the schema (a false schema, or enum/const values its other keywords exclude)"
            )
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
            raise _NoValue  # dropped from a union; on its own, "no value satisfies the schema"
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
            if key == "oneOf":
                self._check_exclusive(merged, path)
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

    def _check_exclusive(self, branches: list[Any], path: str) -> None:
        """The grammar accepts a value that matches any branch; `oneOf` wants exactly one. That
        is the same only when no value can match two branches: branches of different JSON types,
        enums with no common value, or objects told apart by a required `const`/`enum`
        property (a discriminated union, as pydantic writes it). Anything else is refused."""
        views = []
        for i, branch in enumerate(branches):
            try:
                views.append(self.node(self._deref(branch, path), f"{path}/oneOf/{i}"))
            except _NoValue:
                continue
        for i, a in enumerate(views):
            for b in views[i + 1 :]:
                if not _exclusive(a, b):
                    self.fail(
                        path,
                        "oneOf whose branches can match the same value is not supported (use anyOf, or "
                        "branches of different types or with a distinct const property)",
                    )

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
            for k in ("minProperties", "maxProperties"):
                if s.get(k):  # a map's size: the converter has no rule that counts its entries
                    self.fail(path, f"keyword {k!r} on an object without listed properties is not supported")
            out: dict[str, Any] = {"type": "object"}
            if extra_schema not in (None, {}):
                out["additionalProperties"] = extra_schema
            return out
        listed = s.get("properties") or {}
        required = list(dict.fromkeys(s.get("required", [])))
        if any(listed.get(name) is False for name in required):
            raise _NoValue  # a required property that no value satisfies
        # A false property schema only says the property must be absent: leave it out.
        props = {k: self.node(v, f"{path}/properties/{k}") for k, v in listed.items() if v is not False}
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


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "object")


def _kinds(node: dict[str, Any]) -> set[str] | None:
    """The JSON types a normalised node admits ("integer" counted as "number"); None: any."""
    if "anyOf" in node:
        kinds = [_kinds(b) for b in node["anyOf"]]
        return None if any(k is None for k in kinds) else set().union(*kinds)  # type: ignore[arg-type]
    if "enum" in node:
        return {_json_type(v) for v in node["enum"]}
    kind = node.get("type")
    if not isinstance(kind, str):
        return None  # {} or a $ref: could be anything
    return {"number" if kind == "integer" else kind}


def _enums_apart(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if "enum" not in a or "enum" not in b:
        return False
    return not any(_json_type(x) == _json_type(y) and x == y for x in a["enum"] for y in b["enum"])


def _exclusive(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether no value can match both normalised nodes (sound, not complete)."""
    ka, kb = _kinds(a), _kinds(b)
    if ka is None or kb is None:
        return False
    if not ka & kb or _enums_apart(a, b):
        return True
    if a.get("type") == "object" and b.get("type") == "object":
        shared = set(a.get("required", [])) & set(b.get("required", []))
        return any(_enums_apart(a["properties"].get(p, {}), b["properties"].get(p, {})) for p in shared)
    return False
