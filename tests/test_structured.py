"""Structured output: schemas become GBNF that llama.cpp's own parser accepts and that really constrains sampling
(20 seeded replies on random and on real weights, each validated by the `jsonschema` package); every schema feature
the binding's converter would silently ignore is refused by name and place; the request forms are parsed."""

from __future__ import annotations

import copy
import ctypes
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structured_cases import PROMPT, SCHEMA, LowLevelModel, chatml, synatra_v01, validate

from synatra_local.core import llama_backend
from synatra_local.runtime.structured import (
    StructuredOutputError,
    json_grammar,
    ollama_format_schema,
    response_format_schema,
)

SEEDS = range(20)


@pytest.fixture(scope="module")
def tiny(tiny_gguf_v01: Path) -> Iterator[LowLevelModel]:
    model = LowLevelModel(tiny_gguf_v01)
    yield model
    model.close()


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> Iterator[LowLevelModel]:
    model = LowLevelModel(smollm2_gguf)
    yield model
    model.close()


# --- llama.cpp accepts the grammars --------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["schema", "json_object"])
def test_llama_cpp_parses_the_grammar(tiny: LowLevelModel, schema: dict[str, Any] | None) -> None:
    import llama_cpp

    sampler = tiny.grammar_sampler(json_grammar(schema))
    assert sampler is not None
    llama_cpp.llama_sampler_free(sampler)


def test_llama_cpp_rejects_a_broken_grammar(tiny: LowLevelModel) -> None:
    """The negative control of the check above: llama.cpp's parser does say no."""
    assert tiny.grammar_sampler('root ::= "{" (') is None
    assert tiny.grammar_sampler("root ::= undefined-rule") is None


# --- the grammar constrains sampling ------------------------------------------------------------------------------


def test_random_weights_follow_the_schema(tiny: LowLevelModel) -> None:
    gbnf = json_grammar(SCHEMA)
    for seed in SEEDS:
        reply = tiny.generate(synatra_v01(PROMPT), gbnf, seed=seed)
        assert reply.ended, f"seed {seed}: no end within {reply.tokens} tokens: {reply.text!r}"
        validate(reply.text, SCHEMA)


def test_random_weights_without_a_grammar_write_no_json(tiny: LowLevelModel) -> None:
    """Negative control: the same loop without the grammar gives noise, so the check above tests the grammar."""
    for seed in range(3):
        reply = tiny.generate(synatra_v01(PROMPT), None, seed=seed, max_tokens=40)
        with pytest.raises(ValueError):
            json.loads(reply.text)


def test_real_weights_follow_the_schema(smollm2: LowLevelModel) -> None:
    gbnf = json_grammar(SCHEMA)
    prompt = chatml(PROMPT + " JSON schema: " + json.dumps(SCHEMA["properties"], ensure_ascii=False))
    cities = set()
    for seed in SEEDS:
        reply = smollm2.generate(prompt, gbnf, seed=seed)
        assert reply.ended, f"seed {seed}: no end within {reply.tokens} tokens: {reply.text!r}"
        value = validate(reply.text, SCHEMA)
        cities.add(value["city"])
    assert cities <= {"서울", "부산", "대구", "인천"}


def test_real_weights_json_object(smollm2: LowLevelModel) -> None:
    """Any JSON object: strings and keys are unbounded, so a small model may run on until max_tokens (a reply the
    engine reports as cut by length); every reply that ends is an object."""
    gbnf = json_grammar(None)
    replies = [smollm2.generate(chatml("Describe Seoul as a JSON object with two fields."), gbnf, seed=seed,
                                max_tokens=200) for seed in range(3)]
    assert any(reply.ended for reply in replies)
    for reply in replies:
        if reply.ended:
            validate(reply.text, None)


# --- what is refused, by name and place ---------------------------------------------------------------------------


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


UNSUPPORTED = [
    (_obj(x={"type": "string", "not": {"const": "a"}}), "not", "$.properties.x"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if", "$"),
    (_obj(x={"type": "object", "patternProperties": {"^a": {"type": "string"}}}), "patternProperties",
     "$.properties.x"),
    ({"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}, "dependentSchemas", "$"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired", "$"),
    ({"type": "object", "minProperties": 1}, "minProperties", "$"),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames", "$"),
    (_obj(tags={"type": "array", "items": {"type": "string"}, "uniqueItems": True}), "uniqueItems",
     "$.properties.tags"),
    (_obj(xs={"type": "array", "contains": {"const": 1}}), "contains", "$.properties.xs"),
    (_obj(n={"type": "number", "multipleOf": 0.5}), "multipleOf", "$.properties.n"),
    (_obj(n={"type": "number", "minimum": 0}), "minimum", "$.properties.n"),
    (_obj(n={"type": "integer", "minimum": 0}), "minimum", "$.properties.n"),  # a range needs both ends
    (_obj(n={"type": "integer", "minimum": 0, "maximum": 100000}), "maximum", "$.properties.n"),
    (_obj(e={"type": "string", "format": "email"}), "format: email", "$.properties.e"),
    (_obj(d={"type": "string", "format": "date", "maxLength": 10}), "maxLength", "$.properties.d"),
    (_obj(r={"$ref": "https://example.com/schema.json"}), "$ref", "$.properties.r"),
    (_obj(r={"$ref": "#/$defs/a", "maxLength": 3}), "maxLength", "$.properties.r"),
    ({"$defs": {"n": _obj(next={"$ref": "#/$defs/n"})}, "$ref": "#/$defs/n"}, "$ref", "$.$defs.n.properties.next"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}]}, "type", "$"),
    (_obj(x={"oneOf": [{"type": "integer"}, {"type": "number"}]}), "oneOf", "$.properties.x"),
    ({"allOf": [_obj(a={"type": "string"}), _obj(b={"type": "string"})]}, "allOf", "$"),
    (_obj(s={"type": "string", "pattern": "[a-z]+"}), "pattern [a-z]+", "$.properties.s"),  # not anchored
    (_obj(s={"type": "string", "pattern": "^.{3}$"}), "pattern ^.{3}$", "$.properties.s"),
    (_obj(s={"type": "string", "pattern": "^\\d+$"}), "pattern", "$.properties.s"),
    (_obj(s={"type": "string", "pattern": "^[^a]+$"}), "pattern", "$.properties.s"),
    (_obj(s={"type": "string", "pattern": "^(?=a)a$"}), "pattern", "$.properties.s"),
    (_obj(s={"enum": ['say "hi"', "ok"]}), "constant", "$.properties.s"),
    (_obj(s={"const": "a\\b"}), "constant", "$.properties.s"),
    (_obj(**{'a"b': {"type": "string"}}), "property name", "$.properties"),
    (_obj(s={"const": "😀"}), "constant", "$.properties.s"),
    (_obj(s={"type": "string", "maxLength": 100000}), "maxLength", "$.properties.s"),
    (_obj(x={"type": "string", "$id": "x"}), "$id", "$.properties.x"),
]


@pytest.mark.parametrize(("schema", "keyword", "path"), UNSUPPORTED, ids=[f"{k}@{p}" for _, k, p in UNSUPPORTED])
def test_unsupported_features_are_named(schema: dict[str, Any], keyword: str, path: str) -> None:
    with pytest.raises(StructuredOutputError) as caught:
        json_grammar(schema)
    message = caught.value.message
    assert f'"{keyword}' in message and f" at {path} " in message, message
    assert caught.value.fix


def test_the_binding_converter_would_ignore_them() -> None:
    """Why the refusals exist: the binding's converter writes the same grammar with or without these keywords."""
    def raw(schema: dict[str, Any]) -> str:
        return llama_backend.json_schema_to_gbnf(json.dumps(schema))

    assert raw({"type": "number", "minimum": 5}) == raw({"type": "number"})
    assert raw({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}) == raw(
        {"type": "array", "items": {"type": "integer"}})
    assert raw({"type": "string", "format": "email"}) == raw({"type": "string"})
    assert raw({"type": "string", "not": {"const": "x"}}) == raw({"type": "string"})


INVALID = [
    ({"type": "strin"}, "$.type"),
    (_obj(s={"type": "string", "minLength": -1}), "$.properties.s.minLength"),
    ({"type": "object", "required": "a"}, "$.required"),
    ({"type": "object", "properties": []}, "$.properties"),
    (_obj(a={"type": "array", "items": [{"type": "string"}]}), "$.properties.a.items"),
]


@pytest.mark.parametrize(("schema", "path"), INVALID, ids=[p for _, p in INVALID])
def test_invalid_schemas_are_refused_with_their_place(schema: dict[str, Any], path: str) -> None:
    with pytest.raises(StructuredOutputError, match=r"invalid JSON schema at " + path.replace("$", r"\$")):
        json_grammar(schema)


@pytest.mark.parametrize("schema", [[], "object", 3, {"type": "number", "const": float("nan")}])
def test_a_schema_that_is_not_a_json_object_is_refused(schema: Any) -> None:
    with pytest.raises(StructuredOutputError):
        json_grammar(schema)


UNSATISFIABLE = [
    _obj(s={"type": "string", "minLength": 5, "maxLength": 2}),
    _obj(a={"type": "array", "minItems": 3, "maxItems": 1}),
    _obj(c={"enum": ["a", 1], "type": "boolean"}),
    _obj(n={"type": "integer", "minimum": 5, "maximum": 4}),
    _obj(f=False),
]


@pytest.mark.parametrize("schema", UNSATISFIABLE)
def test_schemas_no_value_satisfies_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(StructuredOutputError, match="admits no value"):
        json_grammar(schema)


def test_a_required_property_must_be_described() -> None:
    with pytest.raises(StructuredOutputError, match='required property "b" at \\$ is not in its "properties"'):
        json_grammar({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]})


# --- what is accepted, and how it is rewritten --------------------------------------------------------------------


MAP = {"type": "object", "additionalProperties": {"type": "integer"}}  # a map: keys are free strings
ACCEPTED = [
    # Pydantic's Optional, nested model behind $ref and allOf of one, discriminated union
    {"type": "object", "title": "M", "properties": {
        "name": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}], "default": None, "title": "Name"},
        "pet": {"allOf": [{"$ref": "#/$defs/Pet"}], "description": "the pet"},
        "shape": {"oneOf": [{"$ref": "#/$defs/Circle"}, {"$ref": "#/$defs/Square"}],
                  "discriminator": {"propertyName": "kind"}},
    }, "required": ["pet", "shape"], "$defs": {
        "Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]},
        "Circle": {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                   "required": ["kind", "r"]},
        "Square": {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
                   "required": ["kind", "side"]},
    }},
    {"type": "array", "prefixItems": [{"type": "string", "maxLength": 4}, {"type": "integer"}], "items": False},
    {"type": ["string", "null"], "maxLength": 3},
    {"type": "string", "pattern": "^[가-힣]{2,4}(님|씨)?$"},
    {"type": "string", "format": "date-time"},
    {"oneOf": [{"type": "string", "maxLength": 4}, {"type": "integer"}]},
    {"type": "integer", "exclusiveMinimum": -5, "maximum": 5},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4},
]


@pytest.mark.parametrize("schema", [*ACCEPTED, MAP, {}])
def test_supported_schemas_convert(tiny: LowLevelModel, schema: dict[str, Any]) -> None:
    import llama_cpp

    sampler = tiny.grammar_sampler(json_grammar(schema))
    assert sampler is not None
    llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize("schema", ACCEPTED)
def test_supported_schemas_constrain(tiny: LowLevelModel, schema: dict[str, Any]) -> None:
    gbnf = json_grammar(schema)
    for seed in range(5):
        reply = tiny.generate(synatra_v01("JSON"), gbnf, seed=seed)
        assert reply.ended, f"seed {seed}: {reply.text!r}"
        validate(reply.text, schema)


def test_bounded_integers_become_the_values_in_range() -> None:
    grammar = json_grammar({"type": "integer", "minimum": -2, "exclusiveMaximum": 7, "multipleOf": 3})
    assert grammar.startswith('root ::= "0" | "3" | "6"') or 'root ::= "0" | "3" | "6"' in grammar
    assert '"-2"' not in grammar and '"9"' not in grammar


def _allowed_after(model: LowLevelModel, gbnf: str, prefix: list[int], candidates: list[int]) -> list[bool]:
    """Feed `prefix` to llama.cpp's grammar sampler, then ask which `candidates` it still allows."""
    import llama_cpp

    sampler = model.grammar_sampler(gbnf)
    assert sampler is not None
    try:
        for token in prefix:
            llama_cpp.llama_sampler_accept(sampler, token)
        data = (llama_cpp.llama_token_data * len(candidates))(
            *[llama_cpp.llama_token_data(token, 1.0, 0.0) for token in candidates])
        array = llama_cpp.llama_token_data_array(data, len(candidates), -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return [math.isfinite(data[i].logit) for i in range(len(candidates))]
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_json_strings_admit_no_raw_control_characters(tiny: LowLevelModel) -> None:
    """The binding's own `char` rule lets a raw newline into a JSON string (invalid JSON); ours does not."""
    token = tiny.token_for
    newline, letter = token("\n"), token("a")
    binding = llama_backend.json_schema_to_gbnf('{"type": "object"}')
    assert _allowed_after(tiny, binding, [token("{"), token('"')], [newline, letter]) == [True, True]
    assert _allowed_after(tiny, json_grammar(None), [token("{"), token('"')], [newline, letter]) == [False, True]
    keyed = json_grammar({"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]})
    prefix = [token("{"), token('"'), token("s"), token('"'), token(":"), token('"')]
    assert _allowed_after(tiny, keyed, prefix, [newline, letter]) == [False, True]


def test_grammars_are_cached_per_schema() -> None:
    assert json_grammar(SCHEMA) is json_grammar(copy.deepcopy(SCHEMA))


# --- request forms ------------------------------------------------------------------------------------------------

TINY = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(("value", "expected"), [
    (None, (False, None)),
    ({"type": "text"}, (False, None)),
    ({"type": "json_object"}, (True, None)),
    ({"type": "json_object", "schema": TINY}, (True, TINY)),  # llama-server
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": TINY, "strict": True}}, (True, TINY)),  # OpenAI
    ({"type": "json_schema", "json_schema": {"name": "t"}}, (True, None)),
    ({"type": "json_schema", "schema": TINY}, (True, TINY)),  # llama-server's flat form
])
def test_response_format_forms(value: object, expected: tuple[bool, Any]) -> None:
    assert response_format_schema(value) == expected


@pytest.mark.parametrize(("value", "named"), [
    ("json", "response_format must be an object"),
    ({"kind": "json_object"}, 'with a string "type"'),
    ({"type": "xml"}, "response_format.type 'xml' is not supported"),
    ({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": []}}, "response_format.json_schema.schema must be a JSON"),
    ({"type": "json_schema", "json_schema": {"schema": _obj(x={"not": {}})}},
     'response_format.json_schema.schema: schema feature "not" at $.properties.x'),
    ({"type": "json_schema", "schema": {"type": "strin"}}, "response_format.schema: invalid JSON schema at $.type"),
])
def test_response_format_errors_name_the_field(value: object, named: str) -> None:
    with pytest.raises(StructuredOutputError) as caught:
        response_format_schema(value)
    assert named in caught.value.message
    assert caught.value.param == "response_format"


def test_ollama_format() -> None:
    assert ollama_format_schema(None) == (False, None)
    assert ollama_format_schema("") == (False, None)
    assert ollama_format_schema("json") == (True, None)
    assert ollama_format_schema(TINY) == (True, TINY)
    with pytest.raises(StructuredOutputError, match='format must be "json"'):
        ollama_format_schema("yaml")
    with pytest.raises(StructuredOutputError, match='format: schema feature "uniqueItems"') as caught:
        ollama_format_schema({"type": "array", "uniqueItems": True})
    assert caught.value.param == "format"
