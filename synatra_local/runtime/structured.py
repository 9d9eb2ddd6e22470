"""Structured output: a GBNF grammar for llama.cpp's grammar sampler that admits only JSON objects, or only JSON
valid against a JSON Schema, and the request forms that ask for it (OpenAI `response_format`, Ollama `format`).

The grammar comes from the JSON-schema converter that llama-cpp-python ships (through `core.llama_backend`). That
converter silently ignores what it cannot express (bounds on numbers, `not`, `patternProperties`, unknown formats,
keywords beside an `anyOf` or a `$ref`, …), which would give free JSON where the schema asked for less. So each
schema is first checked against the 2020-12 metaschema, then walked here and rewritten into the subset the converter
really enforces: local `$ref`s inlined, `type` lists turned into `anyOf`, annotations dropped, small integer ranges
turned into an `enum`. Every other validation keyword is a `StructuredOutputError` naming it and where it is.
"""

from __future__ import annotations

import functools
import json
import math
import re
import urllib.parse
from typing import Any

from synatra_local.core import llama_backend
from synatra_local.core.errors import SynatraError


class StructuredOutputError(SynatraError, ValueError):
    """A response format or JSON schema that cannot be enforced; `param` names the request field it came from."""

    def __init__(self, message: str, *, fix: str | None = None, param: str = "response_format") -> None:
        super().__init__(message, fix=fix)
        self.param = param


# Keywords with no effect on validity: dropped before conversion.
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
    "contentEncoding", "contentMediaType", "contentSchema", "$defs", "definitions", "discriminator",
})
ROOT_ONLY = frozenset({"$schema", "$id"})
# Validation keywords the converter cannot enforce, whatever the type.
UNSUPPORTED_ANYWHERE = frozenset({
    "not", "if", "then", "else", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
    "$vocabulary",
})
# Per type: what the converter enforces, and what it would silently ignore.
SUPPORTED = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength", "format", "pattern"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "number": frozenset(),
    "boolean": frozenset(),
    "null": frozenset(),
}
UNSUPPORTED = {
    "object": frozenset({
        "patternProperties", "propertyNames", "minProperties", "maxProperties", "unevaluatedProperties",
        "dependentSchemas", "dependentRequired", "dependencies",
    }),
    "array": frozenset({
        "uniqueItems", "contains", "minContains", "maxContains", "unevaluatedItems", "additionalItems",
    }),
    "string": frozenset(),
    "integer": frozenset(),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
    "boolean": frozenset(),
    "null": frozenset(),
}
FORMATS = frozenset({"date", "time", "date-time", "uuid"})
MAX_INTEGER_CHOICES = 256  # a bounded integer becomes an enum of at most this many values
MAX_REPEAT = 1000  # minItems/maxItems/minLength/maxLength and pattern quantifiers: the converter nests per item
MAX_NODES = 5000  # schema nodes after inlining $refs

# The binding's `char` rule admits raw control characters (invalid inside a JSON string) and lone surrogate escapes
# (which would miscount minLength). Ours is llama.cpp's current rule, minus surrogate escapes and minus the code
# points llama.cpp's grammar decodes from bytes that are not UTF-8 (surrogates, above U+10FFFF).
_BINDING_CHAR_RULE = r'char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_HEX = "[0-9a-fA-F]"
_JSON_CHAR_RULE = (
    r'char ::= [^"\\\x7F\x00-\x1F\uD800-\uDFFF\U00110000-\U003FFFFF] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-Ce-fE-F] '
    f'{_HEX} {_HEX} {_HEX} | [dD] [0-7] {_HEX} {_HEX}))'
)


def json_grammar(schema: dict[str, Any] | None) -> str:
    """GBNF for any JSON object (`schema` None: OpenAI's json_object) or for JSON valid against `schema`."""
    if schema is None:
        return _grammar('{"type": "object"}')
    if not isinstance(schema, dict):
        raise StructuredOutputError(
            f"a JSON schema must be a JSON object, not {_json_type(schema)}", fix="give the schema as an object: {…}"
        )
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StructuredOutputError(f"the JSON schema is not JSON: {exc}", fix="use only JSON values") from exc
    return _grammar(text)


@functools.lru_cache(maxsize=256)
def _grammar(schema_json: str) -> str:
    """Cached per schema text: clients send the same schema with every request."""
    schema = json.loads(schema_json)
    _check_metaschema(schema)
    normalized = _Normalizer(schema).normalize(schema, "$")
    try:
        gbnf = llama_backend.json_schema_to_gbnf(json.dumps(normalized))
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise StructuredOutputError(
            f"the JSON schema could not be turned into a grammar: {exc}", fix="simplify the schema"
        ) from exc
    if "char ::=" in gbnf:
        if _BINDING_CHAR_RULE not in gbnf.splitlines():
            raise AssertionError("the binding's JSON-string `char` rule changed; review structured.py")
        gbnf = gbnf.replace(_BINDING_CHAR_RULE, _JSON_CHAR_RULE)
    return gbnf


def response_format_schema(value: object, *, param: str = "response_format") -> tuple[bool, dict[str, Any] | None]:
    """OpenAI's (and llama-server's) `response_format` → (json, schema): text, json_object, or json_schema."""
    if value is None:
        return False, None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise StructuredOutputError(
            f"{param} must be an object with a string \"type\", not {_short(value)}",
            fix='use {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": '
            '{"name": …, "schema": {…}}}',
            param=param,
        )
    kind = value["type"]
    if kind == "text":
        return False, None
    if kind == "json_object":  # llama-server also takes a "schema" here
        return True, _schema_field(value, "schema", f"{param}.schema", param)
    if kind == "json_schema":
        if "json_schema" in value:
            inner = value["json_schema"]
            if not isinstance(inner, dict):
                raise StructuredOutputError(
                    f"{param}.json_schema must be an object, not {_short(inner)}",
                    fix='give {"name": …, "schema": {…}, "strict": true}', param=param,
                )
            return True, _schema_field(inner, "schema", f"{param}.json_schema.schema", param)
        return True, _schema_field(value, "schema", f"{param}.schema", param)
    raise StructuredOutputError(
        f"{param}.type {kind!r} is not supported", fix='use "text", "json_object" or "json_schema"', param=param
    )


def ollama_format_schema(value: object, *, param: str = "format") -> tuple[bool, dict[str, Any] | None]:
    """Ollama's `format`: "json" for any JSON object, or a JSON schema itself; empty or absent for text."""
    if value is None or value == "":
        return False, None
    if value == "json":
        return True, None
    if isinstance(value, dict):
        _checked(value, param, param)
        return True, value
    raise StructuredOutputError(
        f"{param} must be \"json\" or a JSON schema object, not {_short(value)}", fix='use "json" or {…}', param=param
    )


def _schema_field(container: dict[str, Any], key: str, where: str, param: str) -> dict[str, Any] | None:
    if container.get(key) is None:
        return None  # no schema: any JSON object, as OpenAI and llama-server do
    schema = container[key]
    if not isinstance(schema, dict):
        raise StructuredOutputError(
            f"{where} must be a JSON schema object, not {_short(schema)}", fix="give the schema as an object: {…}",
            param=param,
        )
    _checked(schema, where, param)
    return schema


def _checked(schema: dict[str, Any], where: str, param: str) -> None:
    """Convert now (cached), so that a bad schema is refused where the request names it."""
    try:
        json_grammar(schema)
    except StructuredOutputError as exc:
        raise StructuredOutputError(f"{where}: {exc.message}", fix=exc.fix, param=param) from exc


def _check_metaschema(schema: dict[str, Any]) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(
        jsonschema.Draft202012Validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        raise StructuredOutputError(
            f"invalid JSON schema at {error.json_path}: {error.message}",
            fix="make it a valid JSON Schema (draft 2020-12)",
        )


def _unsupported(keyword: str, path: str, why: str = "") -> StructuredOutputError:
    return StructuredOutputError(
        f'schema feature "{keyword}" at {path} is not supported' + (f" ({why})" if why else ""),
        fix="remove it or express it with supported keywords: type, properties, required, additionalProperties, "
        "items, prefixItems, minItems, maxItems, enum, const, anyOf, local $ref, minLength, maxLength, "
        "format (date, time, date-time, uuid), anchored pattern, integer minimum/maximum",
    )


def _unsatisfiable(path: str, why: str) -> StructuredOutputError:
    return StructuredOutputError(f"the schema at {path} admits no value: {why}", fix="loosen the schema")


class _Normalizer:
    """Rewrites a schema into the subset the binding's converter enforces exactly, refusing everything else."""

    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root
        self._resolving: list[str] = []
        self._nodes = 0

    def normalize(self, node: object, path: str) -> dict[str, Any]:
        if node is True:
            return {}
        if node is False:
            raise _unsatisfiable(path, "the schema `false`")
        assert isinstance(node, dict), "the metaschema admits only objects and booleans"
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise StructuredOutputError(
                f"the JSON schema has more than {MAX_NODES} subschemas once its $refs are inlined",
                fix="simplify the schema",
            )
        for keyword in node:
            if keyword in UNSUPPORTED_ANYWHERE or (keyword in ROOT_ONLY and path != "$"):
                raise _unsupported(keyword, path)
        if "$ref" in node:
            self._only(node, path, "$ref")
            return self._ref(node["$ref"], path)
        if "allOf" in node:
            if len(node["allOf"]) != 1:
                raise _unsupported("allOf", path, "only with a single schema")
            self._only(node, path, "allOf")
            return self.normalize(node["allOf"][0], f"{path}.allOf[0]")
        if "anyOf" in node or "oneOf" in node:
            return self._union(node, path)
        if "const" in node or "enum" in node:
            return self._enum(node, path)
        types = node.get("type")
        if types is None:
            types = self._inferred_types(node, path)
        elif isinstance(types, str):
            types = [types]
        if not types:
            return {}  # any value: the converter writes any JSON object, a valid instance
        if len(types) > 1:
            return {"anyOf": [self._typed(node, kind, f"{path}(type {kind})") for kind in types]}
        return self._typed(node, types[0], path)

    def _only(self, node: dict[str, Any], path: str, keyword: str) -> None:
        """The converter ignores every sibling of `$ref`, `allOf` and `anyOf`: only annotations may stand there."""
        for other in node:
            if other != keyword and other not in ANNOTATIONS and other not in ROOT_ONLY:
                raise _unsupported(other, path, f'beside "{keyword}"')

    def _ref(self, ref: object, path: str) -> dict[str, Any]:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise _unsupported("$ref", path, f"{ref!r} is not a reference inside this schema")
        if ref in self._resolving:
            raise _unsupported("$ref", path, f"{ref} is recursive")
        target: object = self._root
        target_path = "$"
        for part in ref[2:].split("/") if ref != "#" else []:
            key = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            else:
                raise StructuredOutputError(f"$ref {ref} at {path} points to nothing", fix="fix the reference")
            target_path += _path_part(key)
        self._resolving.append(ref)
        try:
            return self.normalize(target, target_path)
        finally:
            self._resolving.pop()

    def _union(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        if "anyOf" in node and "oneOf" in node:
            raise _unsupported("oneOf", path, 'beside "anyOf"')
        keyword = "anyOf" if "anyOf" in node else "oneOf"
        self._only(node, path, keyword)
        alternatives = [self.normalize(alt, f"{path}.{keyword}[{i}]") for i, alt in enumerate(node[keyword])]
        if keyword == "oneOf" and not _mutually_exclusive(alternatives):
            raise _unsupported(
                "oneOf", path, "a reply may match several alternatives; oneOf is supported when they differ by "
                "type or by a required const/enum property; otherwise use anyOf",
            )
        return {"anyOf": alternatives}

    def _enum(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        import jsonschema

        values = [node["const"]] if "const" in node else list(node["enum"])
        if "const" in node and "enum" in node:
            values = [v for v in values if v in node["enum"]]
        rest = {k: v for k, v in node.items() if k not in ("const", "enum")}
        if any(k not in ANNOTATIONS and k not in ROOT_ONLY for k in rest):
            # the converter writes the listed values only: keep those the other keywords accept
            rest.update({k: self._root[k] for k in ("$defs", "definitions") if k in self._root})
            validator = jsonschema.Draft202012Validator(rest)
            values = [v for v in values if validator.is_valid(v)]
        if not values:
            raise _unsatisfiable(path, "no value of its enum/const satisfies its other keywords")
        for value in values:
            _check_literal(value, path)
        return {"enum": values}

    def _inferred_types(self, node: dict[str, Any], path: str) -> list[str]:
        found = [kind for kind in ("object", "array", "string", "integer")
                 if any(k in SUPPORTED[kind] or k in UNSUPPORTED[kind] for k in node)]
        if "integer" in found:
            found[found.index("integer")] = "number"  # bounds without a type: the converter cannot enforce them
        if len(found) > 1:
            raise StructuredOutputError(
                f"the schema at {path} has keywords of several types ({', '.join(found)}) and no \"type\"",
                fix='give it a "type"',
            )
        return found

    def _typed(self, node: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
        for keyword in node:
            if keyword in UNSUPPORTED[kind] and not (keyword == "uniqueItems" and node[keyword] is False):
                raise _unsupported(keyword, path, f"on type {kind}")
        if kind == "object":
            return self._object(node, path)
        if kind == "array":
            return self._array(node, path)
        if kind == "string":
            return self._string(node, path)
        if kind == "integer":
            return self._integer(node, path)
        return {"type": kind}

    def _object(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        properties = node.get("properties", {})
        required = node.get("required", [])
        for name in required:
            if name not in properties:
                raise StructuredOutputError(
                    f'required property "{name}" at {path} is not in its "properties"',
                    fix="describe every required property under properties",
                )
        additional = node.get("additionalProperties")
        if not properties:
            if isinstance(additional, dict):  # a map: string keys, typed values
                values = self.normalize(additional, f"{path}.additionalProperties")
                return {"type": "object", "additionalProperties": values}
            if additional is False:
                return {"type": "object", "additionalProperties": False}
            return {"type": "object"}
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            _check_text(name, f"{path}.properties", "property name")
            out[name] = self.normalize(sub, f"{path}.properties{_path_part(name)}")
        # Extra keys are never written beside declared ones (they could repeat a declared name): stricter, still valid.
        return {"type": "object", "properties": out, "required": list(required)}

    def _array(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        low = int(node.get("minItems", 0))
        high = None if node.get("maxItems") is None else int(node["maxItems"])
        if "prefixItems" in node:
            prefix = node["prefixItems"]
            if node.get("items", False) is not False:
                raise _unsupported("items", path, 'beside "prefixItems" (only "items": false)')
            if not low <= len(prefix) <= (len(prefix) if high is None else high):
                raise _unsupported("minItems", path, f'a reply has exactly the {len(prefix)} "prefixItems"')
            return {"type": "array", "prefixItems": [
                self.normalize(item, f"{path}.prefixItems[{i}]") for i, item in enumerate(prefix)]}
        items = node.get("items", True)
        if items is False:
            if low > 0:
                raise _unsatisfiable(path, '"items": false with minItems above 0')
            high = 0
        _check_count(low, high, "minItems", "maxItems", path)
        item = {} if items is False else self.normalize(items, f"{path}.items")
        out: dict[str, Any] = {"type": "array", "items": item}
        if low:
            out["minItems"] = low
        if high is not None:
            out["maxItems"] = high
        return out

    def _string(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        present = [k for k in ("pattern", "format", "minLength", "maxLength") if k in node]
        if "pattern" in node or "format" in node:
            if len(present) > 1:  # the converter honours only the first of these
                raise _unsupported(present[1], path, f'beside "{present[0]}"')
            if "format" in node:
                if node["format"] not in FORMATS:
                    raise _unsupported(f"format: {node['format']}", path, f"formats: {', '.join(sorted(FORMATS))}")
                return {"type": "string", "format": node["format"]}
            _check_pattern(node["pattern"], path)
            return {"type": "string", "pattern": node["pattern"]}
        low = int(node.get("minLength", 0))
        high = None if node.get("maxLength") is None else int(node["maxLength"])
        _check_count(low, high, "minLength", "maxLength", path)
        out: dict[str, Any] = {"type": "string"}
        if low:
            out["minLength"] = low
        if high is not None:
            out["maxLength"] = high
        return out

    def _integer(self, node: dict[str, Any], path: str) -> dict[str, Any]:
        bounds = [k for k in SUPPORTED["integer"] if k in node]
        if not bounds:
            return {"type": "integer"}
        low = _bound(node, "minimum", "exclusiveMinimum", math.ceil, 1)
        high = _bound(node, "maximum", "exclusiveMaximum", math.floor, -1)
        if low is None or high is None or high - low + 1 > MAX_INTEGER_CHOICES:
            raise _unsupported(
                sorted(bounds)[0], path, "on integers only as a range of at most "
                f"{MAX_INTEGER_CHOICES} values, with both a minimum and a maximum",
            )
        import jsonschema

        validator = jsonschema.Draft202012Validator({"type": "integer", **{k: node[k] for k in bounds}})
        values = [v for v in range(low, high + 1) if validator.is_valid(v)]
        if not values:
            raise _unsatisfiable(path, "no integer is in its range")
        return {"enum": values}


def _bound(node: dict[str, Any], inclusive: str, exclusive: str, rounding: Any, step: int) -> int | None:
    values = []
    if inclusive in node:
        values.append(rounding(node[inclusive]))
    if exclusive in node:
        value = node[exclusive]
        values.append(rounding(value) + step if rounding(value) == value else rounding(value))
    if not values:
        return None
    return max(values) if step > 0 else min(values)


def _check_count(low: int, high: int | None, low_name: str, high_name: str, path: str) -> None:
    for name, value in ((low_name, low), (high_name, high)):
        if value is not None and value > MAX_REPEAT:
            raise _unsupported(name, path, f"above {MAX_REPEAT}")
    if high is not None and low > high:
        raise _unsatisfiable(path, f"{low_name} {low} is above {high_name} {high}")


def _check_text(text: str, path: str, what: str) -> None:
    """The converter writes names and string constants into grammar literals without JSON escaping: a quote, a
    backslash or a control character would break the literal or the JSON, and characters beyond U+FFFF become
    surrogate escapes no reply can match."""
    for char in text:
        if char in '"\\' or ord(char) < 0x20 or ord(char) > 0xFFFF:
            raise _unsupported(
                f"{what} {json.dumps(text, ensure_ascii=False)}", path,
                "quotes, backslashes, control characters and characters beyond U+FFFF in names and constants",
            )


def _check_literal(value: object, path: str) -> None:
    if isinstance(value, str):
        _check_text(value, path, "constant")
    elif isinstance(value, list):
        for item in value:
            _check_literal(item, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path, "constant key")
            _check_literal(item, path)


_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")


def _check_pattern(pattern: str, path: str) -> None:
    """Accept the regular expressions the converter turns into an exact grammar that writes valid JSON strings:
    anchored, literal characters, character classes, groups, alternation and quantifiers. Refused: `.` and negated
    classes (they admit quotes and control characters), escapes, lookarounds and backreferences."""

    def refuse(why: str) -> StructuredOutputError:
        return _unsupported(f"pattern {pattern}", path, why)

    if not (pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")):
        raise refuse("patterns must be anchored: ^…$")
    body, i, depth, quantifiable = pattern[1:-1], 0, 0, False
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 < len(body) and body[i + 1] in "[]()|{}*+?":
                i, quantifiable = i + 2, True
                continue
            raise refuse("escapes other than \\[ \\] \\( \\) \\| \\{ \\} \\* \\+ \\?")
        if char == ".":
            raise refuse('"." admits quotes and control characters; use a character class')
        if char in "^$":
            raise refuse(f'"{char}" inside the pattern')
        if char == "[":
            end = body.find("]", i + 1)
            if end < 0:
                raise refuse("unbalanced [")
            _check_class(body[i + 1:end], refuse)
            i, quantifiable = end + 1, True
            continue
        if char == "(":
            if body[i + 1:i + 2] in ("?", ")"):
                raise refuse("empty groups and (?…) groups")
            depth, quantifiable = depth + 1, False
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise refuse("unbalanced )")
            quantifiable = True
        elif char == "|":
            if i == 0 or body[i - 1] in "(|" or i + 1 == len(body) or body[i + 1] in "|)":
                raise refuse("an empty alternative")
            quantifiable = False
        elif char in "*+?{":
            if not quantifiable:
                raise refuse("a quantifier with nothing to repeat, or after another quantifier")
            if char == "{":
                match = _QUANTIFIER.match(body, i)
                if match is None:
                    raise refuse("a { that is not a {m}, {m,} or {m,n} quantifier")
                numbers = [int(n) for n in (match.group(1), match.group(3)) if n]
                if max(numbers) > MAX_REPEAT or numbers != sorted(numbers):
                    raise refuse(f"a repetition above {MAX_REPEAT} or with its bounds reversed")
                i = match.end()
                quantifiable = False
                continue
            quantifiable = False
        elif char in "]}":
            raise refuse(f'an unescaped "{char}"')
        else:
            _check_pattern_char(char, refuse)
            quantifiable = True
        i += 1
    if depth:
        raise refuse("unbalanced (")


def _check_class(members: str, refuse: Any) -> None:
    if not members or members.startswith("^"):
        raise refuse("empty or negated character classes (a negated class admits quotes and control characters)")
    if "\\" in members or "[" in members:
        raise refuse("escapes or [ inside a character class")
    i = 0
    while i < len(members):
        if i + 2 < len(members) and members[i + 1] == "-":
            low, high = members[i], members[i + 2]
            if ord(low) > ord(high):
                raise refuse(f"the range {low}-{high}")
            if any(ord(low) <= bad <= ord(high) for bad in (0x22, 0x5C)) or ord(low) < 0x20:
                raise refuse(f"the range {low}-{high} includes a quote, a backslash or a control character")
            _check_pattern_char(high, refuse)
            i += 3
        else:
            _check_pattern_char(members[i], refuse)
            i += 1


def _check_pattern_char(char: str, refuse: Any) -> None:
    if char in '"\\' or ord(char) < 0x20:
        raise refuse("quotes, backslashes and control characters")


def _mutually_exclusive(alternatives: list[dict[str, Any]]) -> bool:
    """True when no JSON value the grammar writes can match two alternatives: different single types (integer and
    number overlap), disjoint enums, or objects told apart by a required property with disjoint const/enum values."""
    kinds = [alt.get("type") for alt in alternatives]
    if all(isinstance(kind, str) for kind in kinds) and len(set(kinds)) == len(kinds):
        return not {"integer", "number"} <= set(kinds)
    if all(set(alt) == {"enum"} for alt in alternatives):
        seen: list[object] = []
        for alt in alternatives:
            for value in alt["enum"]:
                if any(_same_json(value, other) for other in seen):
                    return False
            seen.extend(alt["enum"])
        return True
    if not all(alt.get("type") == "object" and "properties" in alt for alt in alternatives):
        return False
    common = set.intersection(*(set(alt["required"]) for alt in alternatives))
    for name in common:
        props = [alt["properties"][name] for alt in alternatives]
        if all(set(p) == {"enum"} for p in props) and _mutually_exclusive(props):
            return True
    return False


def _same_json(a: object, b: object) -> bool:
    return _canonical(a) == _canonical(b)


def _canonical(value: object) -> object:
    """JSON equality as JSON Schema defines it: 1 equals 1.0, true does not equal 1."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    assert isinstance(value, dict)
    return ("object", tuple(sorted((k, _canonical(v)) for k, v in value.items())))


def _path_part(key: str) -> str:
    return f".{key}" if key.replace("$", "_").isidentifier() else f"[{json.dumps(key, ensure_ascii=False)}]"


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _short(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"
