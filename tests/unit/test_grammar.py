"""JSON Schema -> GBNF: what the compiled grammar accepts is exactly what should validate."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engine.grammar import GrammarCache, cache, json_object_grammar, schema_grammar
from runtime.engine.model import LlamaModel
from runtime.engine.sampler import GrammarMatcher, SamplerChain, SamplerParams
from runtime.engine.toolcalls import GenericFormat, HermesFormat
from runtime.errors import UnsupportedFeature
from runtime.ir import ToolChoice, ToolSpec
from runtime.model_source import embedded_model
from tests.examples import COUNTRY_PICK
from tests.grammar_check import accepts as accepts_real
from tests.grammar_check import real_vocab

MODEL = embedded_model()


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(MODEL)  # only the vocabulary is used: the grammar runs on real tokens
    yield m
    m.close()


def accepts(model: LlamaModel, gbnf: str, text: str) -> bool:
    """Does the compiled grammar take `text` as a complete output?"""
    matcher = GrammarMatcher(model.vocab, gbnf)
    try:
        for token in model.tokenize(text, add_special=False, parse_special=False):
            if not matcher.allows(token):
                return False
            matcher.accept(token)
        return matcher.allows(llama_cpp.llama_vocab_eos(model.vocab))  # complete, may end here
    finally:
        matcher.close()


def test_country_pick_grammar_enforces_enum_required_and_no_extra_keys(model: LlamaModel) -> None:
    g = schema_grammar(COUNTRY_PICK, strict=True)
    assert accepts(model, g, '{"country": "Peru", "reason": "Machu Picchu"}')
    assert accepts(model, g, '{"country": "Japan", "reason": "line one\\nline two \\"quoted\\""}')
    for bad in [
        '{"country": "France", "reason": "x"}',  # not in the enum
        '{"country": "Peru"}',  # reason is required
        '{"country": "Peru", "reason": "x", "extra": 1}',  # additionalProperties false
        '{"country": "Peru", "reason": "raw\nnewline"}',  # invalid JSON string
        '```json\n{"country": "Peru", "reason": "x"}\n```',  # never fenced
        '{"country": "Peru", "reason": "x"} trailing',
        '{"country": "Peru", "reason": "x"',  # incomplete
    ]:
        assert not accepts(model, g, bad), bad


NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 5},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
        "size": {"type": "integer", "minimum": -5, "maximum": 120},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "owner": {
            "type": "object",
            "properties": {"id": {"type": "string", "pattern": "^[A-Z]{2}\\d{3}$"}, "admin": {"type": "boolean"}},
            "required": ["id"],
            "additionalProperties": False,
        },
        "note": {"type": ["string", "null"]},
        "when": {"type": "string", "format": "date"},
    },
    "required": ["name", "tags", "size", "owner"],
    "additionalProperties": False,
}

NESTED_CASES = [
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}}',
    '{"name": "ab", "tags": ["a", "b"], "size": -5, "owner": {"id": "ZZ000", "admin": true}, "ratio": 0.25}',
    '{"name": "abcde", "tags": ["b"], "size": 120, "owner": {"id": "AB123"}, "note": null, "when": "2024-02-29"}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}, "ratio": 1.0}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}, "note": "hi"}',
    # each of these breaks one rule
    '{"name": "a", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}}',
    '{"name": "abcdef", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": [], "size": 7, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": ["a", "b", "a"], "size": 7, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": ["c"], "size": 7, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": ["a"], "size": 121, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": ["a"], "size": -6, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": ["a"], "size": 7.5, "owner": {"id": "AB123"}}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "ab123"}}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123", "x": 1}}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {}}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}, "ratio": 1.5}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}, "ratio": -0.1}',
    '{"name": "abc", "tags": ["a"], "size": 7, "owner": {"id": "AB123"}, "when": "2024-13-01"}',
    '{"name": "abc", "tags": ["a"], "size": 7}',
]


@pytest.mark.parametrize("text", NESTED_CASES)
def test_nested_schema_accepts_exactly_what_validates(model: LlamaModel, text: str) -> None:
    valid = jsonschema.Draft202012Validator(NESTED, format_checker=jsonschema.FormatChecker()).is_valid(
        json.loads(text)
    )
    assert accepts(model, schema_grammar(NESTED), text) == valid


@pytest.mark.parametrize(("low", "high"), [(0, 0), (1, 250), (-5, 120), (-130, -7), (7, None), (None, -3), (95, 1005)])
def test_integer_bounds_are_exact(model: LlamaModel, low: int | None, high: int | None) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    g = schema_grammar(schema)
    start = (low if low is not None else high or 0) - 25
    end = (high if high is not None else low or 0) + 25
    for n in range(start, end + 1):
        assert accepts(model, g, str(n)) == ((low is None or n >= low) and (high is None or n <= high)), n
    assert not accepts(model, g, "007")


@pytest.mark.parametrize(
    ("pattern", "samples"),
    [
        ("^\\d{3}-\\d{4}$", ["555-1234", "55-1234", "555-12345", "abc-defg"]),
        ("^(cat|dog)s?$", ["cat", "dogs", "cats", "bird", "catss"]),
        ("^[^x]+$", ["abc", 'a"b', "a\\b", "a\nb", "axb", ""]),
        ("ab", ["xxabyy", "ab", "a", 'q"ab']),
        ("^a.c$", ["abc", 'a"c', "a\nc", "ac"]),
    ],
)
def test_patterns_match_like_json_schema_on_the_decoded_string(
    model: LlamaModel, pattern: str, samples: list[str]
) -> None:
    g = schema_grammar({"type": "string", "pattern": pattern})
    for sample in samples:
        assert accepts(model, g, json.dumps(sample)) == bool(re.search(pattern, sample)), sample


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if"),
        ({"type": "object", "dependentSchemas": {"a": {}}}, "dependentSchemas"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"type": "integer", "multipleOf": 3}, "multipleOf"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames"),
        ({"type": "number", "exclusiveMinimum": 0}, "exclusiveMinimum"),
        ({"type": "string", "pattern": "^(?=a)b$"}, "pattern"),
        ({"type": "string", "format": "email"}, "format"),
    ],
)
def test_unsupported_keywords_are_refused_not_ignored(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        schema_grammar(schema, strict=True)
    assert keyword in caught.value.message
    assert "not supported" in caught.value.message
    assert caught.value.param == "response_format"


def test_definitions_stay_apart_per_tool_and_may_recurse(model: LlamaModel) -> None:
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
    flat = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Item"}},
        "required": ["root"],
        "$defs": {"Item": {"type": "string", "enum": ["x"]}},
    }
    tools = [ToolSpec("tree", parameters=tree), ToolSpec("flat", parameters=flat)]
    g = GenericFormat().grammar(tools, ToolChoice("required"), False).gbnf
    ok_tree = '{"tool_calls": [{"name": "tree", "arguments": {"root": {"v": 1, "kids": [{"v": 2}]}}}]}'
    ok_flat = '{"tool_calls": [{"name": "flat", "arguments": {"root": "x"}}]}'
    assert accepts(model, g, ok_tree) and accepts(model, g, ok_flat)
    assert not accepts(model, g, '{"tool_calls": [{"name": "flat", "arguments": {"root": {"v": 1}}}]}')
    assert not accepts(model, g, '{"tool_calls": [{"name": "tree", "arguments": {"root": "x"}}]}')


def test_unknown_format_is_an_annotation_outside_strict_mode(model: LlamaModel) -> None:
    g = schema_grammar({"type": "string", "format": "email"})
    assert accepts(model, g, '"anything"')


def test_tool_schema_errors_name_the_tool_parameter() -> None:
    tool = ToolSpec("t", parameters={"type": "object", "properties": {"x": {"not": {"type": "string"}}}})
    with pytest.raises(UnsupportedFeature) as caught:
        GenericFormat().grammar([tool], ToolChoice("required"), True)
    assert caught.value.param == "tools[0]"


def test_grammars_are_cached_by_canonical_schema() -> None:
    cache.clear()
    first = schema_grammar(COUNTRY_PICK)
    reordered = dict(reversed(list(COUNTRY_PICK.items())))
    assert schema_grammar(reordered) is first
    assert (cache.hits, cache.misses) == (1, 1)
    schema_grammar({**COUNTRY_PICK, "required": ["country"]})
    assert cache.misses == 2


def test_cache_evicts_least_recently_used() -> None:
    lru = GrammarCache(maxsize=2)
    lru.get("a", lambda: "A")
    lru.get("b", lambda: "B")
    lru.get("a", lambda: "A!")  # refresh a
    lru.get("c", lambda: "C")  # evicts b
    assert lru.get("a", lambda: "new") == "A"
    assert lru.get("b", lambda: "rebuilt") == "rebuilt"


def test_json_object_grammar_accepts_objects_only(model: LlamaModel) -> None:
    g = json_object_grammar()
    assert accepts(model, g, '{"a": [1, {"b": null}], "c": "d"}')
    assert not accepts(model, g, "[1, 2]")
    assert not accepts(model, g, "Sure! {}")


WEATHER = ToolSpec(
    "get_weather",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
)
CLOCK = ToolSpec("get_time", parameters={"type": "object", "properties": {}})


def test_generic_call_grammar_forces_known_tools_and_valid_arguments(model: LlamaModel) -> None:
    g = GenericFormat().grammar([WEATHER, CLOCK], ToolChoice("required"), True).gbnf
    one = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
    two = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, '
        '{"name": "get_time", "arguments": {}}]}'
    )
    assert accepts(model, g, one) and accepts(model, g, two)
    assert not accepts(model, g, '{"tool_calls": [{"name": "launch", "arguments": {}}]}')
    assert not accepts(model, g, '{"tool_calls": [{"name": "get_weather", "arguments": {}}]}')
    assert not accepts(model, g, "I'd rather chat.")
    single = GenericFormat().grammar([WEATHER, CLOCK], ToolChoice("required"), False).gbnf
    assert accepts(model, single, one) and not accepts(model, single, two)
    named = GenericFormat().grammar([WEATHER, CLOCK], ToolChoice("function", "get_time"), True).gbnf
    assert accepts(model, named, '{"tool_calls": [{"name": "get_time", "arguments": {}}]}')
    assert not accepts(model, named, one)


def test_auto_mode_is_lazy_and_json_answers_join_the_grammar(model: LlamaModel) -> None:
    auto = HermesFormat().grammar([WEATHER], ToolChoice("auto"), True)
    assert [t.text for t in auto.triggers] == ["<tool_call>"]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert accepts(model, auto.gbnf, call)
    with_answer = HermesFormat().grammar([WEATHER], ToolChoice("auto"), True, COUNTRY_PICK)
    assert with_answer.triggers == ()
    assert accepts(model, with_answer.gbnf, call)
    assert accepts(model, with_answer.gbnf, '{"country": "Peru", "reason": "x"}')
    assert not accepts(model, with_answer.gbnf, "plain text")


def lazy_chain(model: LlamaModel, gbnf: str, triggers: tuple[Any, ...]) -> SamplerChain:
    params = SamplerParams(0.8, 0.95, 40, 0.05, seed=1, grammar=gbnf, grammar_triggers=triggers)
    return SamplerChain(model.vocab, model.n_vocab, params)


def feed(model: LlamaModel, chain: SamplerChain, text: str) -> bool:
    """Push `text` through the chain as if sampled; False if the grammar refused a token."""
    for token in model.tokenize(text, add_special=False, parse_special=True):
        if chain.grammar is None:
            chain._watch(token)  # what `sample` does with each token while the grammar waits
        elif chain.grammar.allows(token):
            chain.grammar.accept(token)
        else:
            return False
    return True


def test_lazy_grammar_waits_for_its_trigger_then_constrains(model: LlamaModel) -> None:
    auto = GenericFormat().grammar([WEATHER], ToolChoice("auto"), True)
    chain = lazy_chain(model, auto.gbnf, auto.triggers)
    try:
        assert feed(model, chain, "Hello! It is {sunny} today.")
        assert chain.grammar is None  # "{" only triggers the generic envelope at the start
    finally:
        chain.close()
    chain = lazy_chain(model, auto.gbnf, auto.triggers)
    try:
        assert feed(model, chain, '  {"tool_calls": [{"name": "get_weather", ')
        assert chain.grammar is not None
        assert not feed(model, chain, '"arguments": {"town": "Oslo"}}]}')  # not in the schema
    finally:
        chain.close()
    chain = lazy_chain(model, auto.gbnf, auto.triggers)
    try:
        assert feed(model, chain, '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}')
        assert chain.grammar is not None
        assert chain.grammar.allows(llama_cpp.llama_vocab_eos(model.vocab))
    finally:
        chain.close()


def test_lazy_grammar_triggered_mid_text_by_a_marker(model: LlamaModel) -> None:
    auto = HermesFormat().grammar([WEATHER], ToolChoice("auto"), True)
    chain = lazy_chain(model, auto.gbnf, auto.triggers)
    try:
        assert feed(model, chain, "Let me check that for you. <tool_")
        assert chain.grammar is None
        assert feed(model, chain, 'call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}')
        assert chain.grammar is not None
        assert not feed(model, chain, "<tool_call>")  # the open call must close first
    finally:
        chain.close()


def test_trigger_text_the_grammar_rejects_leaves_the_output_unconstrained(model: LlamaModel) -> None:
    auto = GenericFormat().grammar([WEATHER], ToolChoice("auto"), True)
    chain = lazy_chain(model, auto.gbnf, auto.triggers)
    try:
        assert feed(model, chain, "{}")  # "{" triggers, "}" cannot follow: no crash, no grammar
        assert chain.grammar is None
        assert feed(model, chain, ' {"tool_calls": oops')
        assert chain.grammar is None  # and it does not trigger again
    finally:
        chain.close()


# -- literals: any code point, in const, enum and property names --------------------------------

# Any assigned character: astral ones (emoji), controls, quotes and backslashes. (Unassigned
# code points are left out: some real tokenizers drop their bytes before any grammar sees them.)
_ANY_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=6)  # assigned ones


def _spellings(value: Any) -> list[str]:
    return [json.dumps(value, ensure_ascii=False), json.dumps(value)]


@settings(max_examples=60, deadline=None)
@given(value=_ANY_TEXT)
def test_string_literals_of_any_code_point_are_exact(model: LlamaModel, value: str) -> None:
    # Before: `{"const": "🎉"}` produced U+FFFD, and `"` or a newline broke the JSON.
    schemas = {
        "const": {"type": "object", "properties": {"s": {"const": value}}, "required": ["s"]},
        "enum": {"type": "object", "properties": {"s": {"enum": [value, "other"]}}, "required": ["s"]},
    }
    for kind, schema in schemas.items():
        g = schema_grammar(schema, strict=True)
        accepted = [text for text in _spellings({"s": value}) if accepts(model, g, text)]
        assert accepted, (kind, value)
        assert all(json.loads(text) == {"s": value} for text in accepted)
        assert not accepts(model, g, json.dumps({"s": value + "x"}, ensure_ascii=False)), (kind, value)
    g = schema_grammar({"type": "object", "properties": {value: {"type": "integer"}}, "required": [value]}, strict=True)
    assert any(accepts(model, g, text) for text in _spellings({value: 1})), value


@pytest.mark.parametrize("vocab", ["qwen2", "gemma-4", "llama-bpe", "deepseek-llm"])
def test_emoji_const_on_real_tokenizers(vocab: str) -> None:
    g = schema_grammar({"type": "object", "properties": {"s": {"const": "🎉"}}, "required": ["s"]}, strict=True)
    assert accepts_real(real_vocab(vocab), g, '{"s": "🎉"}')
    assert not accepts_real(real_vocab(vocab), g, '{"s": "\ufffd"}')


# -- `not: {}` is the false schema (pydantic, MCP servers) -----------------------------------------


def test_a_false_branch_of_anyof_is_dropped(model: LlamaModel) -> None:
    # pydantic writes an excluded type as `{"not": {}}`; before, every such request was a 400.
    g = schema_grammar({"anyOf": [{"anyOf": [{"not": {}}, {"type": "boolean"}]}, {"type": "null"}]}, strict=True)
    for good in ("true", "false", "null"):
        assert accepts(model, g, good), good
    for bad in ('"x"', "1", "{}"):
        assert not accepts(model, g, bad), bad
    assert accepts(model, schema_grammar({"anyOf": [False, {"type": "integer"}]}, strict=True), "7")


def test_additional_properties_not_empty_is_additional_properties_false(model: LlamaModel) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": {"not": {}}}
    g = schema_grammar(schema, strict=True)
    assert accepts(model, g, '{"a": 1}')
    assert not accepts(model, g, '{"a": 1, "b": 2}')


def test_false_property_schemas_and_a_property_named_not(model: LlamaModel) -> None:
    g = schema_grammar({"type": "object", "properties": {"not": {"type": "integer"}}, "required": ["not"]}, strict=True)
    assert accepts(model, g, '{"not": 5}')  # a property called "not" is data, not the keyword
    absent = {"type": "object", "properties": {"gone": {"not": {}}, "b": {"type": "integer"}}, "required": ["b"]}
    g = schema_grammar(absent, strict=True)
    assert accepts(model, g, '{"b": 1}') and not accepts(model, g, '{"b": 1, "gone": 2}')


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"not": {"type": "string"}}, "'not'"),  # any other `not` is still refused, by name
        ({"not": {}}, "no value satisfies"),
        ({"type": "object", "properties": {"a": {"not": {}}}, "required": ["a"]}, "no value satisfies"),
    ],
)
def test_unsatisfiable_or_unsupported_not_is_a_400(schema: dict[str, Any], needle: str) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        schema_grammar(schema, strict=True)
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    "schema",
    [
        {"oneOf": [{"type": "integer"}, {"type": "number"}]},  # 1 matches both
        {"oneOf": [{"enum": [1, 2]}, {"enum": [2.0]}]},
        {"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 3}]},
        {"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "object"}]},
    ],
)
def test_one_of_with_overlapping_branches_is_refused_not_weakened_to_any_of(schema: dict[str, Any]) -> None:
    # The grammar accepts a value matching any branch; oneOf wants exactly one.
    with pytest.raises(UnsupportedFeature) as caught:
        schema_grammar(schema, strict=True)
    assert "oneOf" in caught.value.message and "not supported" in caught.value.message


PETS = {
    "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
    "discriminator": {"propertyName": "kind"},
    "$defs": {
        "Cat": {
            "type": "object",
            "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
            "required": ["kind", "lives"],
        },
        "Dog": {"type": "object", "properties": {"kind": {"const": "dog"}}, "required": ["kind"]},
    },
}


@pytest.mark.parametrize(
    ("text", "valid"),
    [('{"kind": "cat", "lives": 9}', True), ('{"kind": "dog"}', True), ('{"kind": "cow"}', False)],
)
def test_one_of_with_exclusive_branches_is_enforced(model: LlamaModel, text: str, valid: bool) -> None:
    # A discriminated union as pydantic writes it, and branches of different types, are exact.
    assert accepts(model, schema_grammar(PETS, strict=True), text) is valid
    nullable = schema_grammar({"oneOf": [{"type": "string"}, {"type": "null"}]}, strict=True)
    assert accepts(model, nullable, "null") and accepts(model, nullable, '"x"')


@pytest.mark.parametrize("keyword", ["minProperties", "maxProperties"])
def test_map_size_bounds_are_refused_not_ignored(keyword: str) -> None:
    schema = {"type": "object", "additionalProperties": {"type": "integer"}, keyword: 2}
    with pytest.raises(UnsupportedFeature) as caught:
        schema_grammar(schema, strict=True)
    assert keyword in caught.value.message
