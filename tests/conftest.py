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
