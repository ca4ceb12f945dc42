"""Which JSON Schemas compile, and how exactly they are enforced: our JSON Schema -> GBNF
compiler (llama.cpp's grammar engine) against llguidance, on the packaged model's real tokens.

Three engines per schema:

  ours      `schema_grammar(schema, strict=True)` run by llama.cpp's grammar sampler (the server today)
  llg       llguidance's own JSON Schema compiler (`LLMatcher.grammar_from_json_schema`), with
            whitespace limited like ours (see `bench_llguidance.LIKE_OURS`)
  llg/gbnf  our GBNF, converted by llguidance (`grammar_from("gbnf", ...)`) and run by it

Each case has sample outputs; an engine "accepts" a sample when the sample's tokens are all
allowed and the grammar may end there. The truth is `jsonschema` (Draft 2020-12 with format
checks) unless the case states it (formats jsonschema cannot check here, `\\p{L}`, which
Python's `re` lacks). A cell reads `agree/total`, then `+k` for k samples accepted that are
invalid (a weaker grammar: output that does not validate) and `-k` for k valid samples refused
(stricter than the schema). Refused valid samples are retried in the property order each
compiler fixes (`o`: accepted then) and with non-ASCII characters written as `\\u` escapes
(`e`: accepted only so; the same JSON value, a spelling the model must then produce).
`refused` means the engine gives an error for the schema (a 400 for us).

Then every tool-call family's grammars (required, auto, no-calls) and the thinking-block
wrapper are run through llguidance's GBNF conversion.

The schemas of tests/unit/test_grammar.py are imported from it (module constants and the
`parametrize` lists), so this script follows the tests as they change; the extra cases below
them probe what the tests do not (issue #14: code points, `not`, `\\p{L}`, `$ref`, formats,
lengths, number ranges).

Usage: python bench/llguidance_coverage.py [--details] | [--shadow-tests [PATH ...]]
Needs `pip install llguidance` (evaluated, not a project dependency).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import llguidance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_llguidance import llg_schema_grammar, llg_tokenizer
from runtime.engine.grammar import after_thinking, cache, schema_grammar
from runtime.engine.model import LlamaModel, tokenize
from runtime.engine.sampler import GrammarMatcher
from runtime.engine.toolcalls.registry import FORMATS
from runtime.errors import InvalidRequest, UnsupportedFeature
from runtime.ir import ToolChoice, ToolSpec
from runtime.model_source import embedded_model
from tests.examples import COUNTRY_PICK
from tests.unit import test_grammar as tg

Sample = str | tuple[str, bool]  # an output, or an output and whether it is valid


@dataclass
class Case:
    name: str
    schema: Any
    samples: list[Sample] = field(default_factory=list)
    strict: bool = True  # ours: strict mode (unknown formats refused, as OpenAI's strict)


def _param_list(test: Callable[..., Any]) -> list[Any]:
    """The argument values of a test's `@pytest.mark.parametrize`."""
    return list(test.pytestmark[0].args[1])  # type: ignore[attr-defined]


def _from_tests() -> Iterator[Case]:
    yield Case(
        "test: country_pick",
        COUNTRY_PICK,
        [
            '{"country": "Peru", "reason": "Machu Picchu"}',
            '{"country": "Japan", "reason": "line one\\nline two \\"quoted\\""}',
            '{"country": "France", "reason": "x"}',
            '{"country": "Peru"}',
            '{"country": "Peru", "reason": "x", "extra": 1}',
            ('{"country": "Peru", "reason": "raw\nnewline"}', False),
            ('```json\n{"country": "Peru", "reason": "x"}\n```', False),
            ('{"country": "Peru", "reason": "x"} trailing', False),
            ('{"country": "Peru", "reason": "x"', False),
        ],
    )
    yield Case("test: nested (lengths, enum items, ranges, pattern, date)", tg.NESTED, list(tg.NESTED_CASES))
    for low, high in _param_list(tg.test_integer_bounds_are_exact):
        schema: dict[str, Any] = {"type": "integer"}
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        start = (low if low is not None else high or 0) - 25
        end = (high if high is not None else low or 0) + 25
        yield Case(f"test: integer [{low}, {high}]", schema, [str(n) for n in range(start, end + 1)] + [("007", False)])
    for pattern, texts in _param_list(tg.test_patterns_match_like_json_schema_on_the_decoded_string):
        yield Case(f"test: pattern {pattern}", {"type": "string", "pattern": pattern}, [json.dumps(t) for t in texts])
    for schema, keyword in _param_list(tg.test_unsupported_keywords_are_refused_not_ignored):
        yield Case(f"test: refused by us: {keyword}", schema, _KEYWORD_SAMPLES.get(keyword, []))
    tree = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Item"}},
        "required": ["root"],
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
                "required": ["v"],
                "additionalProperties": False,
            }
        },
    }
    yield Case(
        "test: recursive $defs",
        tree,
        [
            '{"root": {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}}',
            '{"root": {"v": 1, "kids": [{}]}}',
            '{"root": "x"}',
        ],
    )
    yield Case("test: format email, not strict", {"type": "string", "format": "email"}, [('"anything"', True)], False)
    yield Case(
        "test: json_object",
        {"type": "object"},
        ['{"a": [1, {"b": null}], "c": "d"}', "[1, 2]", ("Sure! {}", False)],
    )
    for value in ["🎉", 'q"uo\\te', "line\nbreak\ttab", "\x00\x1f", "é中😀\U0001d518", "\u2028"]:
        obj = {"type": "object", "properties": {"s": {"const": value}}, "required": ["s"]}
        yield Case(
            f"test: const {value!r}",
            obj,
            [json.dumps({"s": value}, ensure_ascii=False), json.dumps({"s": value + "x"}, ensure_ascii=False)],
        )
        enum = {"type": "object", "properties": {"s": {"enum": [value, "other"]}}, "required": ["s"]}
        yield Case(f"test: enum {value!r}", enum, [json.dumps({"s": value}, ensure_ascii=False), '{"s": "oth"}'])
        name = {"type": "object", "properties": {value: {"type": "integer"}}, "required": [value]}
        yield Case(f"test: property name {value!r}", name, [json.dumps({value: 1}, ensure_ascii=False), '{"x": 1}'])
    yield Case(
        "test: anyOf [anyOf [not {}, boolean], null] (pydantic)",
        {"anyOf": [{"anyOf": [{"not": {}}, {"type": "boolean"}]}, {"type": "null"}]},
        ["true", "false", "null", '"x"', "1", "{}"],
    )
    yield Case("test: anyOf [false, integer]", {"anyOf": [False, {"type": "integer"}]}, ["7", '"7"'])
    yield Case(
        "test: additionalProperties {not: {}}",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"not": {}}},
        ['{"a": 1}', '{"a": 1, "b": 2}'],
    )
    yield Case(
        "test: property {not: {}} must be absent",
        {"type": "object", "properties": {"gone": {"not": {}}, "b": {"type": "integer"}}, "required": ["b"]},
        ['{"b": 1}', '{"b": 1, "gone": 2}'],
    )
    yield Case("test: not {type: string}", {"not": {"type": "string"}}, ["1", '"x"'])


# Samples for the schemas of `test_unsupported_keywords_are_refused_not_ignored`, by keyword.
_KEYWORD_SAMPLES: dict[str, list[Sample]] = {
    "not": ['{"a": 1}', '{"a": "s"}'],
    "patternProperties": ['{"x1": 1}', '{"y": 1}'],
    "if": ['"ab"', '"a"', "3"],
    "dependentSchemas": ['{"a": 1}', "{}"],
    "uniqueItems": ["[1, 2]", "[1, 1]"],
    "contains": ["[1, 2]", '["a"]'],
    "multipleOf": ["9", "10", "0"],
    "$ref": ["1"],
    "propertyNames": ['{"abc": 1}', '{"abcd": 1}'],
    "exclusiveMinimum": ["0.5", "0", "-1"],
    "pattern": ['"b"'],
    "format": ['"a@b.co"', ('"not an email"', False)],
}


def _extra() -> Iterator[Case]:
    """What the tests do not cover: the rest of issue #14's list and everyday schema shapes."""
    yield Case(
        "\\p{L}+ (Unicode letters)",
        {"type": "string", "pattern": "^\\p{L}+$"},
        [('"héllo"', True), ('"中文"', True), ('"abc1"', False), ('""', False)],
    )
    yield Case(
        "\\w+ (ASCII in JSON Schema's ECMA regex)", {"type": "string", "pattern": "^\\w+$"}, ['"ab_1"', ('"é"', False)]
    )
    yield Case(
        "pattern + minLength",
        {"type": "string", "pattern": "^[a-z]+$", "minLength": 3},
        ['"abc"', '"ab"', '"abC"'],
    )
    yield Case(
        "maxLength 3 counts code points",
        {"type": "string", "maxLength": 3},
        ['"🎉🎉🎉"', ('"🎉🎉🎉🎉"', False), '"a\\nb"'],
    )
    formats: dict[str, list[Sample]] = {
        "date-time": [('"2024-02-29T12:30:00Z"', True), ('"2024-02-29 12:30"', False)],
        "time": [('"12:30:00Z"', True), ('"25:00:00Z"', False)],
        "uuid": ['"123e4567-e89b-12d3-a456-426614174000"', '"123e4567"'],
        "email": ['"a@b.co"', ('"no-at-sign"', False)],
        "ipv4": ['"10.0.0.1"', '"10.0.0.256"'],
        "hostname": [('"example.com"', True), ('"-bad-.com"', False)],
        "uri": [('"https://example.com/x?y=1"', True), ('"not a uri"', False)],
        "duration": [('"P3DT4H"', True), ('"3 days"', False)],
    }
    for fmt, samples in formats.items():
        yield Case(f"format {fmt}", {"type": "string", "format": fmt}, samples)
    yield Case("number exclusiveMinimum 0", {"type": "number", "exclusiveMinimum": 0}, ["0.5", "0", "-1", "3"])
    yield Case("number minimum 0.5", {"type": "number", "minimum": 0.5}, ["0.5", "0.49", "2"])
    yield Case("number multipleOf 0.5", {"type": "number", "multipleOf": 0.5}, ["1.5", "1.25", "2"])
    yield Case(
        "integer [-1e12, 1e12]",
        {"type": "integer", "minimum": -(10**12), "maximum": 10**12},
        ["-1000000000000", "1000000000001", "42"],
    )
    yield Case("number [-2.5, 2.5]", {"type": "number", "minimum": -2.5, "maximum": 2.5}, ["-2.5", "2.6", "0"])
    yield Case(
        "oneOf overlapping [integer, number]",
        {"oneOf": [{"type": "integer"}, {"type": "number"}]},
        ["1.5", "1", '"x"'],
    )
    yield Case(
        "oneOf disjoint objects",
        {
            "oneOf": [
                {"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"]},
                {"type": "object", "properties": {"k": {"const": "b"}, "n": {"type": "integer"}}, "required": ["k"]},
            ]
        },
        ['{"k": "a"}', '{"k": "b", "n": 1}', '{"k": "c"}'],
    )
    yield Case(
        "allOf merge",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "string"}}, "required": ["b"]},
            ]
        },
        ['{"a": 1, "b": "x"}', '{"a": 1}'],
    )
    yield Case(
        "open object (no additionalProperties)",
        {"type": "object", "properties": {"a": {"type": "integer"}}},
        ['{"a": 1}', '{"a": 1, "b": 2}', "{}"],
    )
    yield Case(
        "$ref into #/properties",
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"$ref": "#/properties/a"}}},
        ['{"a": 1, "b": 2}', '{"a": 1, "b": "x"}'],
    )
    yield Case(
        "$ref with sibling keywords",
        {"$defs": {"S": {"type": "string"}}, "$ref": "#/$defs/S", "maxLength": 2},
        ['"ab"', '"abc"'],
    )
    yield Case(
        "prefixItems tuple",
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
        ['[1, "a"]', '[1, "a", 2]', '["a", 1]'],
    )
    yield Case(
        "minProperties 1 (all optional)",
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "minProperties": 1},
        ['{"a": 1}', '{"b": 2}', "{}"],
    )
    yield Case(
        "map: additionalProperties integer, maxProperties 2",
        {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2},
        ['{"x": 1}', '{"x": 1, "y": 2, "z": 3}', '{"x": "s"}'],
    )
    yield Case(
        "dependentRequired", {"type": "object", "dependentRequired": {"a": ["b"]}}, ['{"a": 1, "b": 2}', '{"a": 1}']
    )
    yield Case("enum of mixed values", {"enum": [1, "a", None, {"x": [1]}]}, ["1", '"a"', "null", '{"x": [1]}', "2"])
    yield Case(
        "type list with enum",
        {"type": ["string", "integer"], "enum": ["a", 1, True]},
        ['"a"', "1", "true"],
    )
    yield Case(
        "uniqueItems with maxItems 1",
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 1},
        ["[1]", "[]", "[1, 2]"],
    )
    yield _pydantic_case()
    yield Case(
        "remote $ref",
        {"$ref": "https://example.com/schema.json"},
        [],
    )


def _pydantic_case() -> Case:
    """A typical pydantic tool schema: $defs, Optional (anyOf with null), Literal, enum,
    date-time, bounded integer, constrained string, a dict, defaults."""
    import datetime
    import enum
    from typing import Annotated, Literal

    from pydantic import BaseModel, Field

    class Priority(enum.Enum):
        low = "low"
        high = "high"

    class Item(BaseModel):
        sku: Annotated[str, Field(pattern=r"^[A-Z]{3}-\d{4}$")]
        quantity: Annotated[int, Field(ge=1, le=99)]

    class Order(BaseModel):
        customer: Annotated[str, Field(min_length=1, max_length=40)]
        items: Annotated[list[Item], Field(min_length=1)]
        priority: Priority = Priority.low
        channel: Literal["web", "phone"]
        note: str | None = None
        due: datetime.datetime
        tags: dict[str, int] = {}

    good = Order(
        customer="Ana",
        items=[Item(sku="ABC-1234", quantity=2)],
        channel="web",
        due=datetime.datetime(2025, 5, 1, 12, 0, tzinfo=datetime.UTC),
    )
    text = good.model_dump_json()
    bad = text.replace('"quantity":2', '"quantity":100')
    return Case("pydantic Order model", Order.model_json_schema(), [text, bad, text.replace('"web"', '"fax"')])


# -- the engines ---------------------------------------------------------------------------------


class Engine:
    """A way to compile a schema and check outputs against it."""

    name = ""

    def compile(self, case: Case) -> Callable[[list[int]], bool]:
        """A checker of token lists (complete outputs); raises `Refused` when the schema is refused."""
        raise NotImplementedError


class Refused(Exception):
    pass


class Ours(Engine):
    name = "ours"

    def __init__(self, model: LlamaModel) -> None:
        self.model = model

    def gbnf(self, case: Case) -> str:
        try:
            return schema_grammar(case.schema, strict=case.strict)
        except UnsupportedFeature as exc:
            raise Refused(exc.message) from exc

    def compile(self, case: Case) -> Callable[[list[int]], bool]:
        gbnf = self.gbnf(case)
        try:
            GrammarMatcher(self.model.vocab, gbnf).close()  # llama.cpp parses it, as the engine does up front
        except InvalidRequest as exc:
            raise Refused(exc.message) from exc
        return gbnf_checker(self.model, gbnf)


def gbnf_checker(model: LlamaModel, gbnf: str) -> Callable[[list[int]], bool]:
    """Does llama.cpp's grammar engine take these tokens as a complete output of `gbnf`?"""
    eos = llama_cpp.llama_vocab_eos(model.vocab)

    def check(tokens: list[int]) -> bool:
        matcher = GrammarMatcher(model.vocab, gbnf)
        try:
            for token in tokens:
                if not matcher.allows(token):
                    return False
                matcher.accept(token)
            return matcher.allows(eos)
        finally:
            matcher.close()

    return check


class Llg(Engine):
    name = "llg"

    def __init__(self, tokenizer: llguidance.LLTokenizer) -> None:
        self.tokenizer = tokenizer

    def grammar(self, case: Case) -> str:
        try:
            return llg_schema_grammar(case.schema)
        except ValueError as exc:
            raise Refused(str(exc)) from exc

    def compile(self, case: Case) -> Callable[[list[int]], bool]:
        matcher = llguidance.LLMatcher(self.tokenizer, self.grammar(case), log_level=0)
        if matcher.is_error():
            raise Refused(matcher.get_error())

        def check(tokens: list[int]) -> bool:
            matcher.reset()
            ok = matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
            return ok

        return check


class LlgOnOurGbnf(Llg):
    name = "llg/gbnf"

    def __init__(self, tokenizer: llguidance.LLTokenizer, ours: Ours) -> None:
        super().__init__(tokenizer)
        self.ours = ours

    def grammar(self, case: Case) -> str:
        try:
            return llguidance.grammar_from("gbnf", self.ours.gbnf(case))
        except ValueError as exc:
            raise Refused(str(exc)) from exc


# -- checking ------------------------------------------------------------------------------------


def truth(case: Case, sample: Sample) -> tuple[str, bool]:
    if isinstance(sample, tuple):
        return sample
    try:
        value = json.loads(sample)
    except json.JSONDecodeError:
        return sample, False
    checker = jsonschema.Draft202012Validator(case.schema, format_checker=jsonschema.FormatChecker())
    return sample, checker.is_valid(value)


def reordered(sample: str, schema: Any) -> list[str]:
    """`sample` with its object keys in schema order and in required-first order (the two
    orders the compilers emit), when they differ from the sample's own."""
    try:
        value = json.loads(sample)
    except json.JSONDecodeError:
        return []
    if not isinstance(value, dict) or not isinstance(schema, dict):
        return []
    listed = list(schema.get("properties", {}))
    required = list(schema.get("required", []))
    out = []
    for order in (listed, required + [k for k in listed if k not in required]):
        keys = [k for k in order if k in value] + [k for k in value if k not in order]
        if keys != list(value):
            out.append(json.dumps({k: value[k] for k in keys}, ensure_ascii=False))
    return out


def escaped(sample: str) -> list[str]:
    """`sample` with every non-ASCII character written as a `\\u` escape (the same JSON value),
    when that differs from the sample."""
    try:
        text = json.dumps(json.loads(sample))
    except json.JSONDecodeError:
        return []
    return [text] if text != json.dumps(json.loads(sample), ensure_ascii=False) else []


@dataclass
class Cell:
    refused: str | None = None
    agree: int = 0
    total: int = 0
    weaker: list[str] = field(default_factory=list)
    stricter: list[str] = field(default_factory=list)
    escapes: list[str] = field(default_factory=list)
    order_only: int = 0  # valid samples refused as written, accepted in the order the compiler fixes
    escape_only: int = 0  # ... accepted only with non-ASCII characters written as \u escapes
    compile_ms: float = 0.0

    def text(self) -> str:
        if self.refused is not None:
            return "refused"
        out = f"{self.agree}/{self.total}"
        if self.weaker:
            out += f" +{len(self.weaker)}"
        if self.stricter:
            out += f" -{len(self.stricter)}"
        if self.order_only:
            out += f" {self.order_only}o"
        if self.escape_only:
            out += f" {self.escape_only}e"
        return out


def run_case(engine: Engine, case: Case, model: LlamaModel) -> Cell:
    cell = Cell()
    times = []
    try:
        for _ in range(3):
            cache.clear()
            t0 = time.perf_counter()
            check = engine.compile(case)
            times.append(time.perf_counter() - t0)
    except Refused as exc:
        cell.refused = " ".join(str(exc).split())[:160]
        return cell
    cell.compile_ms = statistics.median(times) * 1000
    tokens = lambda text: model.tokenize(text, add_special=False, parse_special=False)  # noqa: E731
    for sample in case.samples:
        text, valid = truth(case, sample)
        got = check(tokens(text))
        cell.total += 1
        if got == valid:
            cell.agree += 1
        elif got:
            cell.weaker.append(text)
        elif any(check(tokens(alt)) for alt in reordered(text, case.schema)):
            cell.agree += 1
            cell.order_only += 1
        elif any(check(tokens(alt)) for alt in escaped(text)):
            cell.agree += 1
            cell.escape_only += 1
            cell.escapes.append(text)
        else:
            cell.stricter.append(text)
    return cell


def tool_grammars(tokenizer: llguidance.LLTokenizer) -> list[tuple[str, str]]:
    """(family and mode, "ok" or llguidance's error) for every tool-call family's grammars."""
    weather = ToolSpec(
        "get_weather",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    )
    grammars: list[tuple[str, str]] = []
    for fmt_class in FORMATS:
        fmt = fmt_class()
        for mode in ("required", "auto"):
            grammars.append((f"{fmt.name} {mode}", fmt.grammar([weather], ToolChoice(mode), True).gbnf))
        if (no_calls := fmt.no_calls_grammar()) is not None:
            grammars.append((f"{fmt.name} no-calls", no_calls))
    grammars.append(
        (
            "after_thinking(country_pick)",
            after_thinking(schema_grammar(COUNTRY_PICK), "<think>", "</think>", opened=False),
        )
    )
    out = []
    for name, gbnf in grammars:
        try:
            message = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("gbnf", gbnf), tokenizer)
        except ValueError as exc:
            message = str(exc)
        out.append((name, " ".join(message.split())[:160] or "ok"))
    return out


def thinking_samples(model: LlamaModel, tokenizer: llguidance.LLTokenizer) -> list[tuple[str, bool, bool]]:
    """(sample, ours, llg/gbnf) for the thinking-block wrapper around country_pick."""
    gbnf = after_thinking(schema_grammar(COUNTRY_PICK), "<think>", "</think>", opened=False)
    check_ours = gbnf_checker(model, gbnf)
    matcher = llguidance.LLMatcher(tokenizer, llguidance.grammar_from("gbnf", gbnf), log_level=0)
    out = []
    for text in [
        '<think>Peru is nice. {"a"}</think>\n{"country": "Peru", "reason": "x"}',
        '{"country": "Peru", "reason": "x"}',
        '<think>unfinished {"country": "Peru", "reason": "x"}',
        '<think>a</think> b</think>{"country": "Peru", "reason": "x"}',
    ]:
        tokens = model.tokenize(text, add_special=False, parse_special=False)
        matcher.reset()
        llg_ok = matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
        out.append((text, check_ours(tokens), llg_ok))
    return out


class ShadowAccepts:
    """A pytest plugin: every `accepts(vocab_or_model, gbnf, text)` check of the grammar tests
    also runs the same tokens through llguidance (our GBNF via its GBNF conversion) and records
    where the two engines disagree. The tests keep llama.cpp's answers and pass or fail as usual.
    """

    NAMES = ("accepts", "accepts_real")  # test_grammar's own helper, and tests.grammar_check's

    def __init__(self) -> None:
        self.checks = 0
        self.disagree: list[tuple[str, str, bool, bool]] = []  # test, text, llama.cpp, llguidance
        self.unconverted: dict[str, str] = {}  # test -> llguidance's error for the grammar
        self._tokenizers: dict[int, llguidance.LLTokenizer] = {}
        self._matchers: dict[tuple[int, str], llguidance.LLMatcher | str] = {}
        self._test = ""

    def pytest_runtest_setup(self, item: Any) -> None:
        self._test = item.nodeid.split("::", 1)[-1]
        module = getattr(item, "module", None)
        for name in self.NAMES:
            check = getattr(module, name, None)
            if check is not None and not getattr(check, "shadowed", False):
                setattr(module, name, self._wrap(check))

    def _wrap(self, check: Callable[..., bool]) -> Callable[..., bool]:
        def shadowed(owner: Any, gbnf: str, text: str, **kwargs: Any) -> bool:
            ours = check(owner, gbnf, text, **kwargs)
            parse_special = False if isinstance(owner, LlamaModel) else kwargs.get("parse_special", True)
            tokens = tokenize(owner.vocab, text, add_special=False, parse_special=parse_special)
            matcher = self._matcher(owner.vocab, gbnf)
            if isinstance(matcher, str):
                self.unconverted.setdefault(self._test, matcher)
                return ours
            matcher.reset()
            theirs = matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
            self.checks += 1
            if theirs != ours:
                self.disagree.append((self._test, text, ours, theirs))
            return ours

        shadowed.shadowed = True  # type: ignore[attr-defined]
        return shadowed

    def _matcher(self, vocab: Any, gbnf: str) -> llguidance.LLMatcher | str:
        key = int(ctypes.cast(vocab, ctypes.c_void_p).value or 0)
        if key not in self._tokenizers:
            self._tokenizers[key] = llg_tokenizer(vocab)
        if (key, gbnf) not in self._matchers:
            try:
                matcher = llguidance.LLMatcher(
                    self._tokenizers[key], llguidance.grammar_from("gbnf", gbnf), log_level=0
                )
                found: llguidance.LLMatcher | str = " ".join(matcher.get_error().split())[:120] or matcher
            except ValueError as exc:
                found = " ".join(str(exc).split())[:120]
            self._matchers[key, gbnf] = found
        return self._matchers[key, gbnf]


def shadow_tests(paths: list[str]) -> None:
    """Run our grammar tests with llguidance shadowing every grammar check (see `ShadowAccepts`)."""
    import pytest

    plugin = ShadowAccepts()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-x", *paths], plugins=[plugin])
    print(f"\npytest exit code {code}; {plugin.checks} grammar checks shadowed by llguidance (llg/gbnf)")
    print(f"- llama.cpp and llguidance disagree on {len(plugin.disagree)}:")
    for test, text, ours, theirs in plugin.disagree:
        print(f"  - {test}: llama.cpp {ours}, llguidance {theirs}: {text[:110]!r}")
    print(f"- tests whose grammar llguidance could not convert or compile: {len(plugin.unconverted)}")
    for test, error in plugin.unconverted.items():
        print(f"  - {test}: {error}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--details", action="store_true", help="list every disagreement and refusal reason")
    parser.add_argument(
        "--shadow-tests",
        nargs="*",
        metavar="PATH",
        help="instead: run these test files (default: test_grammar and every test_family_*) with llguidance "
        "shadowing each grammar check",
    )
    args = parser.parse_args()
    if args.shadow_tests is not None:
        root = Path(__file__).resolve().parents[1]
        default = [
            str(root / "tests/unit/test_grammar.py"),
            *map(str, sorted(root.glob("tests/unit/test_family_*.py"))),
        ]
        shadow_tests(args.shadow_tests or default)
        return

    model = LlamaModel(embedded_model())
    t0 = time.perf_counter()
    tokenizer = llg_tokenizer(model.vocab)
    print(
        f"llguidance {llguidance.__version__}: LLTokenizer from the SmolLM2 vocab in {time.perf_counter() - t0:.2f} s"
    )
    ours = Ours(model)
    engines: list[Engine] = [ours, Llg(tokenizer), LlgOnOurGbnf(tokenizer, ours)]
    cases = [*_from_tests(), *_extra()]

    print("\n| case | ours | llg | llg/gbnf | compile ms ours / llg |")
    print("|---|---|---|---|---|")
    details: list[str] = []
    totals = {e.name: [0, 0, 0, 0, 0] for e in engines}  # compiled, refused, agree, weaker, stricter
    for case in cases:
        cells = [run_case(e, case, model) for e in engines]
        for engine, cell in zip(engines, cells, strict=True):
            t = totals[engine.name]
            t[0 if cell.refused is None else 1] += 1
            t[2] += cell.agree
            t[3] += len(cell.weaker)
            t[4] += len(cell.stricter)
            if cell.refused is not None:
                details.append(f"- {case.name} / {engine.name}: refused: {cell.refused}")
            details += [f"- {case.name} / {engine.name}: accepts invalid {s!r}" for s in cell.weaker]
            details += [f"- {case.name} / {engine.name}: refuses valid {s!r}" for s in cell.stricter]
            details += [f"- {case.name} / {engine.name}: takes {s!r} only \\u-escaped" for s in cell.escapes]
        ms = " / ".join("-" if c.refused is not None else f"{c.compile_ms:.2f}" for c in cells[:2])
        label = case.name.replace("|", "\\|")
        print(f"| {label} | {' | '.join(c.text() for c in cells)} | {ms} |")
    print(f"\n{len(cases)} schemas. Per engine: compiled, refused, samples agreeing, accepted-invalid, refused-valid")
    for name, (ok, refused, agree, weaker, stricter) in totals.items():
        print(f"- {name}: {ok} compiled, {refused} refused; {agree} agree, +{weaker} weaker, -{stricter} stricter")
    if args.details:
        print("\nDisagreements and refusals:")
        print("\n".join(details))

    print("\nTool-call family grammars (GBNF) through llguidance's GBNF conversion:")
    results = tool_grammars(tokenizer)
    failed = [(n, m) for n, m in results if m != "ok"]
    print(f"- {len(results) - len(failed)}/{len(results)} compile (compiling is not agreeing: see --shadow-tests)")
    for name, message in failed:
        print(f"  - {name}: {message}")
    print("\nThinking-block wrapper (after_thinking around country_pick): sample | ours | llg/gbnf")
    for text, a, b in thinking_samples(model, tokenizer):
        print(f"- {text!r} | {a} | {b}")
    model.close()


if __name__ == "__main__":
    main()
