"""Shared fixtures: the real Mistral v1 sentencepiece model and Korean test text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def mistral_v1_tokenizer_path() -> Path:
    """The real Mistral v1 `tokenizer.model`, shipped as data by the mistral-common package."""
    spec = importlib.util.find_spec("mistral_common")
    assert spec is not None and spec.submodule_search_locations, "mistral-common is a dev dependency"
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.model.v1"


@pytest.fixture(scope="session")
def tokenizer_model() -> Path:
    return mistral_v1_tokenizer_path()


@pytest.fixture(scope="session")
def constitution_text() -> str:
    return (DATA / "constitution_ko.txt").read_text(encoding="utf-8")


def _tiny_gguf(tmp_path_factory: pytest.TempPathFactory, version: str, qtype: str) -> Path:
    from synatra_local.convert import quantize
    from synatra_local.convert.tiny import build_checkpoint

    root = tmp_path_factory.mktemp(f"tiny-{version}")
    folder = build_checkpoint(root / f"Synatra-{version.upper()}-tiny", version=version, tokenizer_model=None)
    (path,) = quantize(folder, [qtype], output_dir=root / "models")
    return path


@pytest.fixture(scope="session")
def tiny_gguf_v01(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Synatra-V0.1-shaped model, Q8_0, made by our own converter."""
    return _tiny_gguf(tmp_path_factory, "v0.1", "Q8_0")


@pytest.fixture(scope="session")
def tiny_gguf_v03(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Synatra-v0.3-shaped (ChatML, added tokens) model, Q8_0."""
    return _tiny_gguf(tmp_path_factory, "v0.3", "Q8_0")
