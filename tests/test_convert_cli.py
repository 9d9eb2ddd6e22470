"""The `synatra-local` convert / quantize / inspect commands, run as a user runs them (subprocesses).

stdout carries only the paths written (so `$(synatra-local convert ...)` works); progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synatra_local.convert.tiny import build_checkpoint

CLI = Path(sys.executable).parent / "synatra-local"
STEM = "synatra-18m-v0.1"


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("cli") / "Synatra-V0.1-tiny", seed=5)


@pytest.fixture(scope="session")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cli-convert") / "nested" / "tiny.gguf"
    return out, run_cli("convert", checkpoint, "-o", out)


@pytest.fixture(scope="session")
def quantized(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cli-quantize")
    args = ["-q", "Q4_K_M", "-q", "q8_0", "-o", out, "--threads", "2", "--keep-intermediate"]
    return out, run_cli("quantize", checkpoint, *args)


def test_convert_prints_exactly_the_output_path(converted) -> None:
    out, result = converted
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    assert sorted(os.listdir(out.parent)) == ["tiny.gguf"]


def test_convert_progress_goes_to_stderr(converted) -> None:
    out, result = converted
    assert "convert" in result.stderr and out.name in result.stderr
    assert "MiB" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [str(out)], "no progress on stdout"


def test_convert_quiet_has_no_progress(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "quiet.gguf"
    result = run_cli("convert", checkpoint, "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert result.stderr == ""


def test_quantize_prints_one_path_per_type_then_the_kept_intermediate(quantized) -> None:
    out, result = quantized
    assert result.returncode == 0, result.stderr
    expected = [out / f"{STEM}-Q4_K_M.gguf", out / f"{STEM}-Q8_0.gguf", out / f"{STEM}-F16.gguf"]
    assert result.stdout.splitlines() == [str(p) for p in expected]
    assert all(p.is_file() and p.read_bytes()[:4] == b"GGUF" for p in expected)
    assert sorted(os.listdir(out)) == sorted(p.name for p in expected)


def test_quantize_progress_goes_to_stderr(quantized) -> None:
    _, result = quantized
    for step in (f"convert → {STEM}-F16.gguf", f"quantize → {STEM}-Q4_K_M.gguf", f"quantize → {STEM}-Q8_0.gguf"):
        assert step in result.stderr
    assert "→" not in result.stdout
    assert "Traceback" not in result.stderr


def test_inspect_shows_architecture_format_license_and_tensor_types(quantized) -> None:
    out, _ = quantized
    result = run_cli("inspect", out / f"{STEM}-Q4_K_M.gguf")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition("  ")
        if value:
            rows[key.strip()] = value.strip()
    assert rows["architecture"] == "llama"
    assert rows["prompt format"] == "synatra-v0.1"
    assert rows["format chosen by"].startswith("recorded: synatra.prompt_format = jinja")
    assert rows["license"] == "cc-by-nc-4.0"
    assert rows["file type"] == "Q4_K_M"
    assert rows["layers / heads / kv heads"] == "2 / 4 / 2"
    # llama.cpp's Q4_K_M recipe for TINY (see test_convert_quantize.py): 13 Q4_K, 3 Q6_K, 5 F32 norms
    assert sorted(rows["tensor types"].split(", ")) == ["F32×5", "Q4_K×13", "Q6_K×3"]
    assert rows["chat template"].startswith("{% if messages and messages[0]['role'] == 'system' %}")


def test_inspect_json(quantized, checkpoint: Path) -> None:
    out, _ = quantized
    path = out / f"{STEM}-Q8_0.gguf"
    result = run_cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    template = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    expected = {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "architecture": "llama",
        "name": "Synatra-V0.1-tiny",
        "file_type": "Q8_0",
        "parameters": 17_564_928,
        "context_length": 4096,
        "block_count": 2,
        "embedding_length": 256,
        "head_count": 4,
        "head_count_kv": 2,
        "prompt_format": "jinja",
        "chat_template": template,
        "license": "cc-by-nc-4.0",
        "source_repo": None,
        "source_revision": None,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "tensor_types": {"Q8_0": 16, "F32": 5},
        "format": {
            "format": "synatra-v0.1",
            "rule": "recorded",
            "reason": "synatra.prompt_format = jinja: its own chat template, which built-in synatra-v0.1 renders "
            "identically",
            "warnings": [],
        },
        "pulled_from": None,
    }
    assert data == expected


def test_inspect_of_a_non_gguf_file_is_a_clean_error(checkpoint: Path) -> None:
    result = run_cli("inspect", checkpoint / "config.json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "not a GGUF file" in result.stderr and "\nfix:" in result.stderr
    assert result.stdout == ""


def test_unknown_outtype_is_a_clean_error(checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("convert", checkpoint, "-o", tmp_path / "x.gguf", "--outtype", "q4_k_m")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: unknown output type 'q4_k_m'" in result.stderr
    assert "fix: choose one of f32, f16, bf16, q8_0, auto" in result.stderr
    assert os.listdir(tmp_path) == []


def test_unknown_quantization_type_is_a_clean_error(checkpoint: Path, tmp_path: Path) -> None:
    result = run_cli("quantize", checkpoint, "-q", "Q3_X", "-o", tmp_path / "m")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error: unknown quantization type 'Q3_X'" in result.stderr
    assert "Q4_K_M" in result.stderr and "Q8_0" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args", [[], ["-o", "x.gguf", "--bogus"]], ids=["missing-output", "unknown-option"])
def test_usage_errors_exit_2_without_traceback(checkpoint: Path, tmp_path: Path, args: list[str]) -> None:
    result = run_cli("convert", checkpoint, *args, cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert "--output" in result.stderr or "--bogus" in result.stderr
    assert result.stdout == ""
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("convert", ["--output", "--outtype", "--force", "--revision", "--prompt-format", "--quiet"]),
        ("quantize", ["--type", "--output-dir", "--threads", "--keep-intermediate", "--force", "--quiet"]),
        ("inspect", ["--json"]),
    ],
)
def test_command_help(command: str, options: list[str]) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"synatra-local {command}" in result.stdout
    for option in options:
        assert option in result.stdout
    assert "Traceback" not in result.stderr


def test_top_level_help_lists_the_converter_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("convert", "quantize", "inspect"):
        assert f"\n  {command} " in result.stdout


def test_unknown_command_exits_2() -> None:
    result = run_cli("convret", "x")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: unknown command 'convret'")
    assert "Traceback" not in result.stderr


def test_python_dash_m_entry_point(checkpoint: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synatra_local", "inspect", "--help"], capture_output=True, text=True, timeout=60,
        cwd=checkpoint.parent,  # not the checkout, whose source tree would shadow an installed package
    )
    assert result.returncode == 0 and "--json" in result.stdout


# --- SIGTERM and SIGHUP clean up as Ctrl-C does -------------------------------------------------------------

# Runs the CLI with one step made slow, after it has written a partial output, and says so on stderr.
_SLOW_STEP = """
import sys, time
from synatra_local.cli import main
from synatra_local.convert import gguf_export
from synatra_local.core import llama_backend
step = sys.argv[1]
if step == "quantize":
    real = llama_backend.quantize
    def slow(*args, **kwargs):
        real(*args, **kwargs)
        print("WRITING", file=sys.stderr, flush=True)
        time.sleep(60)
    llama_backend.quantize = slow
else:
    real_write, calls = gguf_export._write_tensor, []
    def slow(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            print("WRITING", file=sys.stderr, flush=True)
            time.sleep(60)
        return real_write(*args, **kwargs)
    gguf_export._write_tensor = slow
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("step", ["quantize", "convert"])
def test_termination_leaves_no_partial_or_intermediate_file(checkpoint: Path, tmp_path: Path, step: str,
                                                           signum: str) -> None:
    import signal

    out = tmp_path / "out"
    args = (["quantize", str(checkpoint), "-q", "Q8_0", "-q", "Q4_K_M", "-o", str(out), "--quiet"] if step == "quantize"
            else ["convert", str(checkpoint), "-o", str(out / "tiny.gguf"), "--quiet"])
    process = subprocess.Popen([sys.executable, "-c", _SLOW_STEP, step, *args], stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    try:
        assert process.stderr.readline().strip() == "WRITING"
        before = sorted(os.listdir(out))
        assert any(name.endswith(".part") for name in before), before
        if step == "quantize":
            assert any(".intermediate." in name for name in before), before
        process.send_signal(getattr(signal, signum))
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + getattr(signal, signum), err
    assert f"stopped by {signum}" in err and "Traceback" not in err
    assert os.listdir(out) == [], "no partial output, no intermediate GGUF"


def test_progress_prints_markup_looking_names_literally(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "x[" / "]y" / "[bold]y[server] [model].gguf"  # the path holds [/] too
    result = run_cli("convert", checkpoint, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "convert → [bold]y[server] [model].gguf" in result.stderr
    assert result.stdout == f"{out}\n"
