"""Hub sources up to the network boundary, with no network: repo-id parsing, download patterns, and offline runs
against a fake Hugging Face cache (`models--owner--name/{blobs,refs,snapshots}` laid out as huggingface_hub does).

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when it is imported, so the offline runs happen in a
subprocess whose environment is set with monkeypatch.setenv. HF_ENDPOINT points at a closed local port as well,
so a run that tried the network would fail rather than reach the real hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from synatra_local.convert.hub import (
    METADATA_FILES,
    PYTORCH_FILES,
    SAFETENSORS_FILES,
    ResolvedSource,
    allow_patterns,
    looks_like_repo_id,
    resolve_source,
)
from synatra_local.convert.tiny import build_checkpoint
from synatra_local.core.errors import SynatraError

REPO = "maywell/Synatra-V0.1-tiny"
SHA = "5e1f0c3b9a7d4e2f8c6b1a0d9e8f7c6b5a4d3e2f"
CLOSED_PORT = "http://127.0.0.1:9"

# Runs in a fresh interpreter: convert a source, print what the GGUF records (or the SynatraError) as JSON.
CONVERT_SCRIPT = """
import json, sys
from pathlib import Path
from synatra_local.convert.api import convert
from synatra_local.core.errors import SynatraError
from synatra_local.core.llama_backend import LlamaModel
try:
    path = convert(sys.argv[1], Path(sys.argv[2]))
except SynatraError as exc:
    print(json.dumps({"error": exc.message, "fix": exc.fix}))
    sys.exit(3)
model = LlamaModel(path, n_ctx=32, n_threads=1)
print(json.dumps({"path": str(path), **model.metadata}))
"""


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("maywell/Synatra-7B-v0.3-dpo", True),
        ("maywell/Synatra-V0.1-tiny", True),
        ("owner/name.with.dots_and-dashes", True),
        ("Synatra-7B", False),  # no owner
        ("/abs/path/model", False),
        ("./maywell/Synatra", False),
        ("a/b/c", False),
        ("maywell/", False),
        ("maywell/Synatra 7B", False),
        ("", False),
    ],
)
def test_looks_like_repo_id(source: str, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert looks_like_repo_id(source) is expected


def test_existing_folder_is_not_a_repo_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maywell" / "Synatra-7B").mkdir(parents=True)
    assert not looks_like_repo_id("maywell/Synatra-7B")
    assert looks_like_repo_id("maywell/Synatra-8B")


def test_allow_patterns_prefers_safetensors() -> None:
    files = [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
        "tokenizer.model",
    ]
    patterns = allow_patterns(files)
    assert set(SAFETENSORS_FILES) <= set(patterns)
    assert not any(p.endswith(".bin") or ".bin." in p for p in patterns), "PyTorch shards must not be fetched too"
    _assert_metadata(patterns)


def test_allow_patterns_falls_back_to_pytorch_shards() -> None:
    files = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json", "tokenizer.model"]
    patterns = allow_patterns(files)
    assert set(PYTORCH_FILES) <= set(patterns)
    assert not any("safetensors" in p for p in patterns)
    _assert_metadata(patterns)


def test_allow_patterns_without_a_file_list_allows_both() -> None:
    patterns = allow_patterns(None)
    assert set(SAFETENSORS_FILES) <= set(patterns) and set(PYTORCH_FILES) <= set(patterns)
    _assert_metadata(patterns)


def test_allow_patterns_match_real_file_names() -> None:
    from fnmatch import fnmatch

    for name in ["model-00001-of-00003.safetensors", "model.safetensors", "model.safetensors.index.json"]:
        assert any(fnmatch(name, p) for p in SAFETENSORS_FILES), name
    for name in ["pytorch_model-00002-of-00002.bin", "pytorch_model.bin", "pytorch_model.bin.index.json"]:
        assert any(fnmatch(name, p) for p in PYTORCH_FILES), name
    for name in ["training_args.bin", "optimizer.pt", "consolidated.00.pth", "adapter_model.safetensors"]:
        assert not any(fnmatch(name, p) for p in allow_patterns(None)), name


def _assert_metadata(patterns: list[str]) -> None:
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert name in patterns
    assert "added_tokens.json" in patterns and "README.md" in patterns
    assert set(METADATA_FILES) <= set(patterns)


def test_local_folder_resolves_without_the_hub(tmp_path: Path) -> None:
    folder = tmp_path / "maywell" / "Synatra-V0.1-tiny"
    folder.mkdir(parents=True)
    assert resolve_source(str(folder)) == ResolvedSource(folder)


@pytest.mark.parametrize("source", ["no/such/thing/here", "not a repo", "/no/such/folder"])
def test_neither_folder_nor_repo_id(tmp_path: Path, source: str) -> None:
    with pytest.raises(SynatraError, match="neither a folder nor a Hugging Face repo id"):
        resolve_source(source)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding one snapshot of REPO at SHA: files are symlinks into blobs/, refs/main names SHA."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / f"models--{REPO.replace('/', '--')}"
    staging = build_checkpoint(tmp_path_factory.mktemp("staging") / "Synatra-V0.1-tiny", seed=4)
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    for file in staging.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return cache


def _offline_env(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    monkeypatch.delenv("HF_HOME", raising=False)


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CONVERT_SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd=tempfile.gettempdir(),  # not the checkout, whose source tree would shadow an installed package
    )


def test_fake_cache_is_laid_out_like_huggingface_hub(hub_cache: Path) -> None:
    repo = hub_cache / "models--maywell--Synatra-V0.1-tiny"
    snapshot = repo / "snapshots" / SHA
    assert (repo / "refs" / "main").read_text() == SHA
    assert (snapshot / "config.json").is_symlink() and (snapshot / "config.json").is_file()
    assert (snapshot / "pytorch_model.bin").resolve().parent == (repo / "blobs").resolve()


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param("", id="default"),
        pytest.param(f"@{SHA}", id="at-sha"),
        pytest.param("@main", id="at-branch"),
    ],
)
def test_offline_repo_id_converts_from_the_cache(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    _offline_env(monkeypatch, hub_cache)
    out = tmp_path / "hub.gguf"
    result = _run(REPO + suffix, out)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = json.loads(result.stdout)
    assert recorded["path"] == str(out) and out.is_file()
    assert recorded["synatra.source.repo_id"] == REPO
    assert recorded["synatra.source.revision"] == SHA
    assert recorded["general.name"] == "Synatra-V0.1-tiny"
    assert recorded["synatra.prompt_format"] == "jinja"
    assert recorded["general.license"] == "cc-by-nc-4.0"
    assert os.listdir(tmp_path) == ["hub.gguf"]


def test_offline_miss_says_it_is_not_in_the_local_cache(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_env(monkeypatch, hub_cache)
    result = _run("maywell/Synatra-7B-v0.3-dpo", tmp_path / "miss.gguf")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 3, result.stdout + result.stderr
    error = json.loads(result.stdout)
    assert "maywell/Synatra-7B-v0.3-dpo is not in the local hub cache" in error["error"]
    assert "HF_HUB_OFFLINE" in error["error"]
    assert error["fix"]
    assert os.listdir(tmp_path) == []


def test_unreachable_hub_is_a_synatra_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = _run(REPO, tmp_path / "x.gguf")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"could not download {REPO}" in json.loads(result.stdout)["error"]
    assert not (tmp_path / "x.gguf").exists()
