"""Structured output end to end: the engine's grammar sampler (several sequences at once), the server's
`response_format` in OpenAI's and llama-server's forms, and `run --json-schema`, on random and real weights.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structured_cases import PROMPT, SCHEMA, validate

from synatra_local.core.errors import SynatraError
from synatra_local.runtime.engine import Engine, GenerationOptions, Reply
from synatra_local.runtime.structured import StructuredOutputError

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from synatra_local.server.app import create_app  # noqa: E402
from synatra_local.server.run import BackgroundServer  # noqa: E402

HANGUL = re.compile("[\uac00-\ud7a3]")
ASK = [{"role": "user", "content": PROMPT + " JSON schema: " + json.dumps(SCHEMA["properties"], ensure_ascii=False)}]


def all_at_once(engine: Engine, options: list[GenerationOptions]) -> list[Reply]:
    replies: dict[int, Reply] = {}

    def ask(i: int) -> None:
        replies[i] = engine.chat(ASK, options[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(options))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return [replies[i] for i in range(len(options))]


@pytest.mark.parametrize("fixture", ["tiny_gguf_v01", "smollm2_gguf"])
def test_seeded_replies_follow_the_schema(request: pytest.FixtureRequest, fixture: str) -> None:
    engine = Engine(request.getfixturevalue(fixture), n_ctx=1024, parallel=4)
    try:
        seeds = range(20 if fixture == "tiny_gguf_v01" else 8)  # test_structured.py runs 20 on SmolLM2 too
        options = [GenerationOptions(max_tokens=500, seed=seed, json_schema=SCHEMA) for seed in seeds]
        replies = all_at_once(engine, options)
    finally:
        engine.close()
    for reply in replies:
        assert reply.stats.stop_reason == "end_of_turn", reply.text
        validate(reply.text, SCHEMA)
    assert any(HANGUL.search(reply.text) for reply in replies)


def test_a_grammar_llama_cpp_refuses_is_an_error_before_anything_runs(tiny_gguf_v01: Path) -> None:
    engine = Engine(tiny_gguf_v01, n_ctx=1024)
    try:
        with pytest.raises(SynatraError, match="refused the grammar"):
            engine.stream(ASK, GenerationOptions(grammar='root ::= "unclosed'))
        assert engine.chat(ASK, GenerationOptions(max_tokens=3, seed=1)).stats.generated_tokens == 3
    finally:
        engine.close()


def test_unsupported_schema_fails_when_the_options_are_made() -> None:
    with pytest.raises(StructuredOutputError, match="uniqueItems"):
        GenerationOptions(json_schema={"type": "array", "uniqueItems": True})


# --- the server ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(smollm2_gguf: Path) -> Iterator[BackgroundServer]:
    engine = Engine(smollm2_gguf, n_ctx=1024, parallel=2)
    with BackgroundServer(create_app(engine, model_id="smol", stream_interval=0)) as server:
        yield server
    engine.close()


@pytest.fixture(scope="module")
def client(served: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_openai_json_schema_form(client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        reply = client.chat.completions.create(model="smol", messages=ASK, max_tokens=500, seed=seed,
                                               response_format=response_format)
        assert reply.choices[0].finish_reason == "stop"
        validate(reply.choices[0].message.content, SCHEMA)


def test_flat_form_streamed_keeps_korean_whole(served: BackgroundServer) -> None:
    body = {"messages": ASK, "max_tokens": 500, "seed": 4, "stream": True,
            "response_format": {"type": "json_schema", "schema": SCHEMA}}
    pieces = []
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    pieces.append(choices[0]["delta"]["content"])
    text = "".join(pieces)
    assert all("\ufffd" not in piece for piece in pieces)
    validate(text, SCHEMA)


def test_json_object_and_completions(client: openai.OpenAI, served: BackgroundServer) -> None:
    reply = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Give the capital of France as JSON."}], max_tokens=300,
        seed=1, response_format={"type": "json_object"})
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # an unbounded string can run on: then it says so
        assert reply.choices[0].finish_reason == "length"
    body = {"prompt": "A person as JSON:", "max_tokens": 500, "seed": 2,
            "response_format": {"type": "json_schema", "schema": {"type": "object", "properties": {
                "age": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["age"],
                "additionalProperties": False}}}
    completion = httpx.post(f"{served.url}/v1/completions", json=body, timeout=300).json()
    assert 0 <= json.loads(completion["choices"][0]["text"])["age"] <= 99


def test_cut_replies_say_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smol", messages=ASK, max_tokens=5, seed=1,
                                           response_format={"type": "json_schema", "json_schema": {
                                               "name": "p", "schema": SCHEMA}})
    assert reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize("response_format, named", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
     "uniqueItems"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}, "$.type"),
    ({"type": "xml"}, "xml"),
])
def test_schemas_that_cannot_be_enforced_are_400(served: BackgroundServer, response_format: dict, named: str) -> None:
    for path, body in (("/v1/chat/completions", {"messages": ASK}), ("/v1/completions", {"prompt": "hi"})):
        response = httpx.post(f"{served.url}{path}", json={**body, "max_tokens": 4, "response_format": response_format})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "response_format" and named in error["message"]


# --- the command line ----------------------------------------------------------------------------------------


def test_run_json_schema_prints_valid_json(smollm2_gguf: Path, tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "synatra_local", "run", str(smollm2_gguf), ASK[0]["content"], "--json-schema",
         str(schema), "--seed", "3", "--max-tokens", "500", "--ctx", "1024"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    validate(done.stdout.strip(), SCHEMA)
