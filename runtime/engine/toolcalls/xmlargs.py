"""XML-parameter tool calls: argument values as tags, turned into a JSON arguments object.

Qwen3-Coder (`<parameter=K>\\nV\\n</parameter>`), GLM 4.5+ (`<arg_key>K</arg_key><arg_value>V</arg_value>`)
and MiniMax M2 (`<parameter name="K">V</parameter>`) write each argument as raw text between
tags. The value's type comes from the tool's parameter schema, as in llama.cpp
(common/parsers/qwen3-coder.cpp, common/chat-auto-parser-generator.cpp
`build_tool_parser_tag_tagged`): a string-typed parameter is the raw text; any other is
parsed as JSON, falling back to the raw text when it does not parse (or, for a type union
with string, when it parses to a type the schema does not allow).

Streaming (the `SnapshotParser` contract, snapshot.py): a string value grows as a JSON
string while it is written, holding back a tail that may be its closing tag (and, for
Qwen, the newline before it, which is layout); any other value appears once complete.
The family modules parse the call envelopes; `scan_args` parses the arguments inside one,
`arguments_json` writes them, `args_rule` is their grammar.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from runtime.engine.grammar import GrammarBuilder, literal
from runtime.engine.toolcalls.formats import MAX_PARALLEL_CALLS, ToolFormat
from runtime.engine.toolcalls.snapshot import CallSnapshot, Content, Item, SnapshotParser, held_suffix_of
from runtime.ir import ToolChoice, ToolSpec

Types = frozenset[str] | None  # JSON types a parameter takes; None: unknown (any)
_PY_TYPES: dict[type, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
PERMUTED_REQUIRED = 3  # up to this many required parameters may come in any order (grammar)


@dataclass(frozen=True, slots=True)
class ArgSyntax:
    """The tags around one argument, and the tag that ends the call's arguments."""

    key_open: str  # `<parameter=`
    key_close: str  # `>`
    value_open: str  # `` (GLM: `<arg_value>`, after optional whitespace)
    value_close: str  # `</parameter>`
    body_close: str  # `</function>`
    wrapped: bool = False  # the value sits between newlines (`>\nV\n</`): Qwen3-Coder
    key_gap: str = ""  # GBNF between the key's tags and `value_open`
    after_value: str = ""  # GBNF after `value_close`


@dataclass(frozen=True, slots=True)
class Arg:
    key: str
    value: str  # the raw text (so far, with held-back tail removed, when not complete)
    complete: bool


# -- schemas ---------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return _PY_TYPES.get(type(value), "string")


def value_types(schema: Any, root: dict[str, Any] | None = None) -> Types:
    """The JSON types a (sub)schema allows; None when it does not say."""
    if not isinstance(schema, dict):
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and root is not None:
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                return value_types(root.get(prefix[2:-1], {}).get(ref[len(prefix) :]), root)
        return None
    kind = schema.get("type")
    if isinstance(kind, str):
        return frozenset([kind])
    if isinstance(kind, list):
        return frozenset(k for k in kind if isinstance(k, str))
    if "const" in schema:
        return frozenset([_json_type(schema["const"])])
    if isinstance(schema.get("enum"), list):
        return frozenset(_json_type(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            parts = [value_types(s, root) for s in schema[key]]
            return None if any(p is None for p in parts) else frozenset().union(*parts)  # type: ignore[arg-type]
    if "properties" in schema:
        return frozenset(["object"])
    if "items" in schema:
        return frozenset(["array"])
    return None


def param_types(tool: ToolSpec) -> dict[str, Types]:
    """Each declared parameter's JSON types."""
    params = tool.parameters if isinstance(tool.parameters, dict) else {}
    props = params.get("properties")
    return {k: value_types(v, params) for k, v in props.items()} if isinstance(props, dict) else {}


def tool_param_types(tools: Sequence[ToolSpec]) -> dict[str, dict[str, Types]]:
    return {t.name: param_types(t) for t in tools}


def string_only(types: Types) -> bool:
    return types == frozenset(["string"])


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON


def convert(raw: str, types: Types) -> Any:
    """A complete raw value as the schema types it (llama.cpp: string, else JSON, else string)."""
    if string_only(types):
        return raw
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except ValueError:
        return raw
    if types is None or "string" not in types:
        return value
    kind = _json_type(value)
    allowed = kind in types or (kind == "integer" and "number" in types)
    return value if allowed else raw


def arguments_json(args: Sequence[Arg], types: dict[str, Types], done: bool) -> str:
    """The arguments object as far as it can be written: only ever grows as `args` do."""
    parts: list[str] = []
    for arg in args:
        key = json.dumps(arg.key, ensure_ascii=False)
        kind = types.get(arg.key)
        if arg.complete:
            parts.append(f"{key}: {json.dumps(convert(arg.value, kind), ensure_ascii=False)}")
            continue
        if string_only(kind):
            parts.append(f"{key}: {json.dumps(arg.value, ensure_ascii=False)[:-1]}")
        break  # nothing is written after an unfinished value
    if not parts:
        return "{}" if done else ""
    return "{" + ", ".join(parts) + ("}" if done else "")


# -- parsing ---------------------------------------------------------------------------------


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def is_prefix(rest: str, *tags: str) -> bool:
    """`rest` (the end of the text) could still become one of `tags`."""
    return any(tag.startswith(rest) for tag in tags)


def _finished(raw: str, syn: ArgSyntax) -> str:
    if syn.wrapped:
        raw = raw[1:] if raw.startswith("\n") else raw
        raw = raw[:-1] if raw.endswith("\n") else raw
    return raw


def _partial(raw: str, syn: ArgSyntax, final: bool) -> str:
    if syn.wrapped and raw.startswith("\n"):
        raw = raw[1:]
    if final:
        return raw
    return raw[: len(raw) - held_suffix_of(raw, ["\n" + syn.value_close, syn.value_close])]


def scan_args(text: str, i: int, syn: ArgSyntax, final: bool) -> tuple[list[Arg], int | None]:
    """The arguments from `i` (just after the call's name) on, and the index after
    `syn.body_close` (None while the call is still being written). Text between tags
    that is none of them is skipped."""
    args: list[Arg] = []
    while True:
        i = skip_ws(text, i)
        if text.startswith(syn.body_close, i):
            return args, i + len(syn.body_close)
        if text.startswith(syn.key_open, i):
            start = i + len(syn.key_open)
            end = text.find(syn.key_close, start)
            if end < 0:
                return args, None  # the key is still being written
            key, j = text[start:end].strip(), end + len(syn.key_close)
            if syn.value_open:
                j = skip_ws(text, j)
                if not text.startswith(syn.value_open, j):
                    if is_prefix(text[j:], syn.value_open):
                        return args, None
                    i = j
                    continue  # a key without a value: skip it
                j += len(syn.value_open)
            close = text.find(syn.value_close, j)
            if close < 0:
                args.append(Arg(key, _partial(text[j:], syn, final), complete=False))
                return args, None
            args.append(Arg(key, _finished(text[j:close], syn), complete=True))
            i = close + len(syn.value_close)
            continue
        if is_prefix(text[i:], syn.body_close, syn.key_open):
            return args, None
        found = [p for p in (text.find(syn.key_open, i), text.find(syn.body_close, i)) if p >= 0]
        if not found:
            return args, None  # stray text inside the call: wait for the next tag
        i = min(found)


# -- the output around the calls -------------------------------------------------------------

MALFORMED = None  # what a block parser returns when the marker turns out not to open a call


@dataclass(frozen=True, slots=True)
class Block:
    """Calls parsed from one marker on; `end` is None while the block is still open."""

    calls: list[CallSnapshot]
    end: int | None


BlockParser = Callable[[str, int, str, bool], Block | None]


def split_output(text: str, final: bool, openers: Sequence[str], block: BlockParser) -> list[Item]:
    """Content and calls: `block(text, at, marker, final)` parses the calls that start at
    each opener; text between calls that is only whitespace is layout, dropped."""
    items: list[Item] = []
    i, after_call = 0, False
    while True:
        found = [(p, m) for m in openers if (p := text.find(m, i)) >= 0]
        if not found:
            rest = text[i:].lstrip() if after_call else text[i:]
            keep = 0 if final else held_suffix_of(rest, openers)
            items.append(Content(rest[: len(rest) - keep]))
            return items
        at, marker = min(found)
        before = text[i:at].lstrip() if after_call else text[i:at]
        result = block(text, at, marker, final)
        if result is MALFORMED:
            items.append(Content(before + marker))
            i, after_call = at + len(marker), False
            continue
        items.append(Content(before))
        items += result.calls
        if result.end is None:
            return items
        i, after_call = result.end, True


def call_snapshot(name: str, args: list[Arg], end: int | None, types: dict[str, dict[str, Types]]) -> CallSnapshot:
    return CallSnapshot(name, arguments_json(args, types.get(name, {}), end is not None), end is not None)


def plausible_name(name: str) -> bool:
    """A tool name, not prose or JSON that happens to follow a marker."""
    return bool(name) and not any(c.isspace() or c in '<>{}"' for c in name)


# -- grammar ---------------------------------------------------------------------------------


def args_rule(b: GrammarBuilder, tool: ToolSpec, index: int, syn: ArgSyntax) -> str:
    """GBNF for one tool's arguments in `syn`'s tags: the required ones (in any order when
    there are few), then optional ones in any order. String-typed values are raw text up to
    the closing tag; others follow their JSON Schema (llama.cpp's qwen3-coder.cpp does the same)."""
    params = tool.parameters if isinstance(tool.parameters, dict) else {}
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = [k for k in params.get("required", []) if k in props]
    rules: dict[str, str] = {}
    for k, schema in props.items():
        value = _value_rule(b, tool, index, k, schema, params, syn)
        rules[k] = b.rule(f"{tool.name}-arg-{k}", _arg_body(literal(k), value, syn))
    optional = [rules[k] for k in props if k not in required]
    if not props and params.get("additionalProperties") is not False:
        value = b.excluding(("\n" if syn.wrapped else "") + syn.value_close, _rule_name(f"{tool.name}-any-value"))
        optional.append(b.rule(f"{tool.name}-arg-any", _arg_body('[^<>"\\n]+', value, syn)))
    seqs = [" ".join(rules[k] for k in order) for order in _orders(required)]
    parts = []
    if seqs:
        parts.append(seqs[0] if len(seqs) == 1 else "( " + " | ".join(seqs) + " )")
    if optional:
        parts.append("( " + " | ".join(optional) + " )*")
    return b.rule(f"{tool.name}-args", " ".join(parts)) if parts else ""


def _rule_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]+", "-", text)  # GBNF rule names (`b.excluding` takes them as given)


def _orders(required: list[str]) -> list[tuple[str, ...]]:
    if not required:
        return []
    if len(required) > PERMUTED_REQUIRED:
        return [tuple(required)]
    return list(itertools.permutations(required))


def _arg_body(key: str, value: str, syn: ArgSyntax) -> str:
    parts = [literal(syn.key_open), key, literal(syn.key_close), syn.key_gap]
    parts += [literal(syn.value_open) if syn.value_open else "", '"\\n"' if syn.wrapped else "", value]
    parts += ['"\\n"' if syn.wrapped else "", literal(syn.value_close), syn.after_value]
    return " ".join(p for p in parts if p)


def _value_rule(
    b: GrammarBuilder, tool: ToolSpec, index: int, key: str, schema: Any, params: dict[str, Any], syn: ArgSyntax
) -> str:
    types = value_types(schema, params)
    if string_only(types) and isinstance(schema, dict) and isinstance(schema.get("enum"), list):
        return "( " + " | ".join(literal(v) for v in schema["enum"]) + " )"
    if types is None or "string" in types:
        # Raw text up to the closing tag (for a union with string, as llama.cpp: any text).
        return b.excluding(("\n" if syn.wrapped else "") + syn.value_close, _rule_name(f"{tool.name}-{key}-text"))
    sub = dict(schema)
    for defs in ("$defs", "definitions"):
        if defs in params and defs not in sub:
            sub[defs] = params[defs]  # `$ref`s in a property point at the tool's definitions
    return b.schema(sub, f"{tool.name}-{key}", param=f"tools[{index}].parameters.properties.{key}", strict=tool.strict)


# -- the family classes' shared part ---------------------------------------------------------


class XmlCallParser(SnapshotParser):
    """A `SnapshotParser` that knows the tools' parameter schemas (to type the values)."""

    def __init__(self, *, tools: Sequence[ToolSpec] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.types = tool_param_types(tools)


class XmlArgsFormat(ToolFormat):
    """A family whose parser types argument values from the tools' schemas."""

    parser_class: ClassVar[type[XmlCallParser]]

    def parser(self, tools: list[ToolSpec], choice: ToolChoice, parallel: bool) -> XmlCallParser:
        single = choice.mode == "function" or not parallel
        names = [choice.name] if choice.mode == "function" and choice.name else [t.name for t in tools]
        return self.parser_class(names=names, max_calls=1 if single else MAX_PARALLEL_CALLS, tools=tools)
