"""`run`/`chat` `--json` and `--json-schema FILE`: a schema file that cannot be used is one `error:` line naming the
file and a `fix:` line, exit 1, before any model is looked for; the options reach GenerationOptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synatra_local.commands import _engine, chat_cmd, run_cmd
from synatra_local.runtime.engine import GenerationOptions
from synatra_local.runtime.structured import StructuredOutputError

GOOD = {"type": "object", "properties": {"도시": {"enum": ["서울", "부산"]}}, "required": ["도시"]}


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


CASES = {
    "missing": (None, "cannot read the JSON schema file", "readable UTF-8 .json file"),
    "not-json": ('{"type": "object",', "is not valid JSON: ", "fix the JSON"),
    "not-utf8": (b"\xff\xfe{}", "cannot read the JSON schema file", "readable UTF-8"),
    "invalid-schema": ('{"type": "strin"}', ": invalid JSON schema at $.type", "valid JSON Schema"),
    "unsupported": ('{"type": "object", "patternProperties": {"a": {}}}',
                    ': schema feature "patternProperties" at $ is not supported', "remove it"),
    "not-an-object": ("[1, 2]", "a JSON schema must be a JSON object", "give the schema as an object"),
}


@pytest.mark.parametrize("command", [run_cmd, chat_cmd], ids=["run", "chat"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_schema_files_are_one_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: object, case: str
) -> None:
    content, message, fix = CASES[case]
    path = tmp_path / "schema.json" if content is None else _write(tmp_path, "schema.json", content)
    # the model does not exist either: the schema is checked first, before any model is looked for
    argv = ["no-such-model", "안녕"] if command is run_cmd else ["no-such-model"]
    rc = command.main([*argv, "--json-schema", str(path)])  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("fix: "), err
    assert str(path) in lines[0] and message in lines[0], err
    assert fix in lines[1], err
    assert "Traceback" not in err and "no-such-model" not in err


def test_a_good_schema_file_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path, "schema.json", json.dumps(GOOD, ensure_ascii=False))
    assert _engine.read_json_schema(path) == GOOD
    assert _engine.read_json_schema(None) is None


def test_options_carry_json_and_schema() -> None:
    common = dict(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0, seed=1, stop=None)
    plain = _engine.generation_options(**common)
    assert (plain.json, plain.json_schema) == (False, None)
    asked = _engine.generation_options(**common, json=True)
    assert (asked.json, asked.json_schema) == (True, None)
    schema = _engine.generation_options(**common, json_schema=GOOD)
    assert (schema.json, schema.json_schema) == (True, GOOD)  # a schema implies --json


def test_generation_options_refuse_a_bad_schema_when_made() -> None:
    with pytest.raises(StructuredOutputError, match='"uniqueItems" at \\$'):
        GenerationOptions(json_schema={"type": "array", "uniqueItems": True})
    with pytest.raises(ValueError, match="invalid JSON schema"):
        GenerationOptions(json=True, json_schema={"type": 3})
    assert GenerationOptions(json=True).json_schema is None


@pytest.mark.parametrize("seed", [3, 4])
def test_run_replies_with_json_valid_against_the_schema(tmp_path: Path, smollm2_gguf: Path, seed: int) -> None:
    """End to end through the engine: `run --json-schema` on real weights prints JSON the schema accepts."""
    import subprocess
    import sys

    from structured_cases import SCHEMA, validate

    path = _write(tmp_path, "schema.json", json.dumps(SCHEMA, ensure_ascii=False))
    cli = str(Path(sys.executable).with_name("synatra-local"))
    done = subprocess.run(
        [cli, "run", str(smollm2_gguf), "서울 사람 한 명을 JSON으로 소개해 줘", "--json-schema", str(path),
         "--seed", str(seed), "--max-tokens", "400", "--threads", "1"],
        capture_output=True, text=True, encoding="utf-8", timeout=300,
    )
    assert done.returncode == 0, done.stderr
    validate(done.stdout, SCHEMA)
