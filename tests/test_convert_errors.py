"""Broken inputs fail with one clear error (library: SynatraError; CLI: `error:` + `fix:`, exit 1, no traceback),
and no failure, interruption or full disk leaves a GGUF or a partial file behind."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from collections import namedtuple
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

import gguf
import numpy as np
import pytest

from synatra_local.convert import gguf_export
from synatra_local.convert.api import convert, quantize
from synatra_local.convert.checkpoint import open_checkpoint
from synatra_local.convert.gguf_export import plan_tensors
from synatra_local.convert.tiny import build_checkpoint
from synatra_local.core import atomic, llama_backend
from synatra_local.core.atomic import format_bytes
from synatra_local.core.errors import SynatraError

CLI = Path(sys.executable).parent / "synatra-local"


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid checkpoints that each case copies and then breaks."""
    root = tmp_path_factory.mktemp("pristine")
    return {
        "bin": build_checkpoint(root / "Synatra-V0.1-bin", weights="bin"),
        "safetensors": build_checkpoint(root / "Synatra-V0.1-st", weights="safetensors"),
        "bin-2": build_checkpoint(root / "Synatra-V0.1-bin2", weights="bin", shards=2),
        "safetensors-2": build_checkpoint(root / "Synatra-V0.1-st2", weights="safetensors", shards=2),
    }


def _copy(pristine: dict[str, Path], kind: str, tmp: Path) -> Path:
    return Path(shutil.copytree(pristine[kind], tmp / "Synatra-V0.1-broken"))


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _RunsShell:
    """Unpickling this calls os.system: the classic malicious-checkpoint payload."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (self.command,))


class _RunsPython:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (exec, (self.code,))


def malicious_pickle(marker: Path, how: str) -> bytes:
    payload = _RunsShell(f"touch {marker}") if how == "os.system" else _RunsPython(f"open({str(marker)!r}, 'w')")
    return pickle.dumps({"model.embed_tokens.weight": payload}, protocol=2)


def _write_malicious_bin(path: Path, marker: Path, how: str) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", malicious_pickle(marker, how))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def _malicious(how: str) -> Callable[[dict[str, Path], Path], Path]:
    def make(pristine: dict[str, Path], tmp: Path) -> Path:
        folder = _copy(pristine, "bin", tmp)
        _write_malicious_bin(folder / "pytorch_model.bin", tmp / "PWNED", how)
        return folder

    return make


def _missing_folder(pristine: dict[str, Path], tmp: Path) -> Path:
    return tmp / "no-such-model"


def _no_config(pristine: dict[str, Path], tmp: Path) -> Path:
    folder = _copy(pristine, "bin", tmp)
    (folder / "config.json").unlink()
    return folder


def _gpt2(pristine: dict[str, Path], tmp: Path) -> Path:
    folder = _copy(pristine, "bin", tmp)
    _edit_config(folder, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    return folder


def _missing_shard(pristine: dict[str, Path], tmp: Path) -> Path:
    folder = _copy(pristine, "bin-2", tmp)
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    return folder


def _truncated(kind: str, name: str) -> Callable[[dict[str, Path], Path], Path]:
    def make(pristine: dict[str, Path], tmp: Path) -> Path:
        folder = _copy(pristine, kind, tmp)
        _truncate(folder / name)
        return folder

    return make


def _hidden_size(pristine: dict[str, Path], tmp: Path) -> Path:
    folder = _copy(pristine, "safetensors", tmp)
    _edit_config(folder, hidden_size=512)
    return folder


def _vocab_size(pristine: dict[str, Path], tmp: Path) -> Path:
    folder = _copy(pristine, "bin", tmp)
    _edit_config(folder, vocab_size=32002)
    return folder


def _no_tokenizer(pristine: dict[str, Path], tmp: Path) -> Path:
    folder = _copy(pristine, "bin", tmp)
    (folder / "tokenizer.model").unlink()
    return folder


# case: (make broken source, regex the error message must match)
CASES: dict[str, tuple[Callable[[dict[str, Path], Path], Path], str]] = {
    "missing-folder": (_missing_folder, r"no-such-model is neither a folder nor a Hugging Face repo id"),
    "no-config": (_no_config, r"config\.json is missing"),
    "unsupported-architecture": (_gpt2, r"architecture GPT2LMHeadModel is not supported"),
    "missing-shard": (_missing_shard, r"shard pytorch_model-00002-of-00002\.bin named in .*index\.json is missing"),
    "truncated-bin": (_truncated("bin", "pytorch_model.bin"), r"pytorch_model\.bin: .*truncated"),
    "truncated-safetensors": (_truncated("safetensors", "model.safetensors"), r"model\.safetensors: .*truncated"),
    "truncated-bin-shard": (
        _truncated("bin-2", "pytorch_model-00002-of-00002.bin"),
        r"pytorch_model-00002-of-00002\.bin: .*truncated",
    ),
    "truncated-safetensors-shard": (
        _truncated("safetensors-2", "model-00001-of-00002.safetensors"),
        r"model-00001-of-00002\.safetensors: .*truncated",
    ),
    "hidden-size-mismatch": (_hidden_size, r"has shape \[32000, 256\], config\.json implies \[32000, 512\]"),
    "vocab-size-mismatch": (_vocab_size, r"has shape \[32000, 256\], config\.json implies \[32002, 256\]"),
    "missing-tokenizer": (_no_tokenizer, r"tokenizer\.model is missing"),
    "pickle-os-system": (_malicious("os.system"), r"pickle refers to (posix|os|nt)\.system.*refusing to load"),
    "pickle-builtins-exec": (_malicious("exec"), r"pickle refers to (__builtin__|builtins)\.exec.*refusing to load"),
}


# One CLI run per kind of failure (the library test above covers every case); each run costs a process start.
CLI_CASES = [
    "missing-folder",
    "no-config",
    "unsupported-architecture",
    "missing-shard",
    "truncated-safetensors",
    "truncated-bin-shard",
    "vocab-size-mismatch",
    "missing-tokenizer",
    "pickle-os-system",
]


def leftovers(folder: Path) -> list[str]:
    """GGUF files and partial/temporary files anywhere under `folder`."""
    if not folder.exists():
        return []
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.suffix == ".gguf" or ".part" in p.name or p.name.startswith(".")
    ]


@pytest.mark.parametrize("case", list(CASES))
def test_library_refuses_with_synatra_error(pristine, tmp_path: Path, case: str) -> None:
    make, pattern = CASES[case]
    source = make(pristine, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SynatraError, match=pattern) as caught:
        convert(source, out / "model.gguf")
    assert caught.value.fix, "every expected error says how to fix it"
    assert os.listdir(out) == []
    assert not (tmp_path / "PWNED").exists()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
    )


def assert_clean_cli_error(result: subprocess.CompletedProcess[str], pattern: str | None = None) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    fixes = [line for line in lines if line.startswith("fix:")]
    assert len(errors) == 1 and len(fixes) == 1, result.stderr
    assert lines == [errors[0], fixes[0]], f"unexpected stderr lines: {result.stderr!r}"
    if pattern:
        assert re.search(pattern, errors[0]), errors[0]


@pytest.fixture(scope="module")
def cli_results(pristine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, CompletedProcess]]:
    """`synatra-local convert` on each CLI case, two processes at a time (the machine has two cores)."""
    prepared = {}
    for case in CLI_CASES:
        make = CASES[case][0]
        tmp = tmp_path_factory.mktemp(f"cli-{case}")
        source = make(pristine, tmp)
        (tmp / "out").mkdir()
        prepared[case] = (tmp, source)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            case: pool.submit(run_cli, "convert", source, "-o", tmp / "out" / "model.gguf")
            for case, (tmp, source) in prepared.items()
        }
        return {case: (prepared[case][0], future.result()) for case, future in futures.items()}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_prints_one_error_and_fix(cli_results, case: str) -> None:
    tmp, result = cli_results[case]
    assert_clean_cli_error(result, CASES[case][1])
    assert os.listdir(tmp / "out") == []
    assert not (tmp / "PWNED").exists()


@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_malicious_payload_is_live(tmp_path: Path, how: str) -> None:
    """Sanity check of the fixture: plain pickle really runs the payload that the converter refuses."""
    marker = tmp_path / "PWNED-by-plain-pickle"
    pickle.loads(malicious_pickle(marker, how))  # noqa: S301 - the point of the check
    assert marker.exists()


def test_quantize_cli_refuses_broken_checkpoint_without_leftovers(pristine, tmp_path: Path) -> None:
    source = _truncated("safetensors", "model.safetensors")(pristine, tmp_path)
    out = tmp_path / "models"
    result = run_cli("quantize", source, "-q", "Q4_K_M", "-o", out, "--quiet")
    assert_clean_cli_error(result, r"truncated")
    assert leftovers(out) == []


def test_existing_output_is_untouched_without_force(pristine, tmp_path: Path) -> None:
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    out.write_bytes(b"precious older conversion")
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(SynatraError, match="already exists") as caught:
        convert(pristine["bin"], out)
    assert "--force" in (caught.value.fix or "")
    result = run_cli("convert", pristine["bin"], "-o", out)
    assert_clean_cli_error(result, r"already exists")
    assert out.read_bytes() == b"precious older conversion"
    assert out.stat().st_mtime_ns == 1_000_000_000
    assert os.listdir(out.parent) == ["model.gguf"]


@pytest.fixture
def ctrl_c_on_fifth_tensor(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Ctrl-C while the fifth tensor is written; the list counts the tensors started."""
    calls: list[int] = []
    real = gguf_export._write_tensor

    def interrupt_on_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_export, "_write_tensor", interrupt_on_fifth)
    return calls


def test_interrupted_conversion_leaves_nothing(pristine, tmp_path: Path, ctrl_c_on_fifth_tensor: list[int]) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(pristine["bin"], out / "model.gguf")
    assert len(ctrl_c_on_fifth_tensor) == 5
    assert os.listdir(out) == [], "no output and no partial file"


def test_interrupted_forced_conversion_keeps_the_old_output(
    pristine, tmp_path: Path, ctrl_c_on_fifth_tensor: list[int]
) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        convert(pristine["safetensors"], out, force=True)
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.gguf"]


def test_interrupted_quantization_leaves_nothing(pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after llama.cpp wrote the first partial output: partial and intermediate are both removed."""
    real = llama_backend.quantize
    seen: list[tuple[bool, bool]] = []

    def quantize_then_interrupt(source: Path, output: Path, ftype: int, threads: int, **kwargs: object) -> None:
        real(source, output, ftype, threads, **kwargs)
        seen.append((Path(source).exists(), Path(output).exists()))
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_backend, "quantize", quantize_then_interrupt)
    out = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        quantize(pristine["bin"], ["Q8_0", "Q4_K_M"], output_dir=out, threads=2)
    assert seen == [(True, True)], "the interruption came after a partial output was written"
    assert os.listdir(out) == []


def _little_free_space(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(1 << 40, (1 << 40) - (1 << 20), 1 << 20))


def test_disk_full_conversion_is_refused_before_writing(
    pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needed = sum(t.nbytes for t in plan_tensors(open_checkpoint(pristine["bin"]), "f16")) + (64 << 20)
    _little_free_space(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(SynatraError, match="not enough disk space") as caught:
        convert(pristine["bin"], out / "model.gguf")
    assert f"needs {format_bytes(needed)}" in caught.value.message
    assert "1.00 MiB free" in caught.value.message
    assert leftovers(tmp_path) == [] and not out.exists()


def test_disk_full_quantization_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "in" / "small-F16.gguf"
    source.parent.mkdir()
    writer = gguf.GGUFWriter(source, "llama")
    writer.add_name("small")
    writer.add_tensor("token_embd.weight", np.zeros((64, 256), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(1 << 40, 1 << 40, 0))
    out = tmp_path / "models"
    with pytest.raises(SynatraError, match=r"not enough disk space .* for the quantized files: needs \d.*, 0 B free"):
        quantize(source, ["Q4_K_M", "Q8_0"], output_dir=out, threads=2)
    assert leftovers(out) == []
