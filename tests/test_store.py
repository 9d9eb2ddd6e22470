"""The models folder: list, resolve by name, remove only inside it, refuse files that are not GGUF."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from synatra_local.core.errors import ModelFileError
from synatra_local.runtime.store import MODELS_ENV, list_models, models_dir, remove_model, resolve_model


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$SYNATRA_LOCAL_MODELS pointing at a fresh folder with two small files that start like GGUF."""
    models = tmp_path / "store"
    models.mkdir()
    header = b"GGUF" + bytes(4092)  # only the magic is checked when resolving
    (models / "synatra-a-Q4_K_M.gguf").write_bytes(header)
    (models / "synatra-b-Q8_0.gguf").write_bytes(header * 2)
    (models / ".partial.gguf").write_bytes(header)
    (models / "README.md").write_text("not a model", encoding="utf-8")
    monkeypatch.setenv(MODELS_ENV, str(models))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return models


def test_models_dir_from_env(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert models_dir() == folder
    monkeypatch.delenv(MODELS_ENV)
    assert models_dir() == Path("models")
    monkeypatch.setenv(MODELS_ENV, "")
    assert models_dir() == Path("models")


def test_list_models(folder: Path) -> None:
    models = list_models()
    assert [m.name for m in models] == ["synatra-a-Q4_K_M", "synatra-b-Q8_0"]
    assert [m.path for m in models] == [folder / "synatra-a-Q4_K_M.gguf", folder / "synatra-b-Q8_0.gguf"]
    assert [m.size_bytes for m in models] == [4096, 8192]


def test_list_models_missing_or_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "does-not-exist"))
    assert list_models() == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert list_models(empty) == []


def test_resolve_by_name_with_and_without_suffix(folder: Path) -> None:
    expected = folder / "synatra-a-Q4_K_M.gguf"
    assert resolve_model("synatra-a-Q4_K_M") == expected
    assert resolve_model("synatra-a-Q4_K_M.gguf") == expected


def test_resolve_a_path(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.gguf"
    shutil.copyfile(folder / "synatra-a-Q4_K_M.gguf", elsewhere)
    assert resolve_model(elsewhere) == elsewhere
    assert resolve_model(str(elsewhere)) == elsewhere
    assert resolve_model(str(folder / "synatra-b-Q8_0.gguf")) == folder / "synatra-b-Q8_0.gguf"


def test_missing_name_lists_available_models(folder: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        resolve_model("synatra-zzz")
    message = str(info.value)
    assert "synatra-zzz" in message
    assert "synatra-a-Q4_K_M" in message and "synatra-b-Q8_0" in message
    assert str(folder) in message
    assert ".partial" not in message


def test_missing_name_in_empty_folder_says_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "nothing"))
    with pytest.raises(ModelFileError, match="none"):
        resolve_model("anything")


def test_non_gguf_file_is_refused(folder: Path) -> None:
    (folder / "fake.gguf").write_text("I am text, not GGUF", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        resolve_model("fake")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        resolve_model(folder / "README.md")


def test_remove_by_name(folder: Path) -> None:
    removed = remove_model("synatra-a-Q4_K_M")
    assert removed == (folder / "synatra-a-Q4_K_M.gguf").resolve()
    assert not removed.exists()
    assert [m.name for m in list_models()] == ["synatra-b-Q8_0"]
    removed = remove_model("synatra-b-Q8_0.gguf")
    assert list_models() == []
    with pytest.raises(ModelFileError):
        remove_model("synatra-b-Q8_0")


def test_remove_refuses_paths_outside_the_folder(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.gguf"
    shutil.copyfile(folder / "synatra-a-Q4_K_M.gguf", outside)
    with pytest.raises(ModelFileError, match="not in the models folder"):
        remove_model(str(outside))
    assert outside.exists()
    with pytest.raises(ModelFileError):
        remove_model("../elsewhere")
    assert outside.exists()
    nested = folder / "sub"
    nested.mkdir()
    shutil.copyfile(outside, nested / "deep.gguf")
    with pytest.raises(ModelFileError, match="not in the models folder"):
        remove_model(str(nested / "deep.gguf"))
    assert (nested / "deep.gguf").exists()


def test_directory_in_cwd_does_not_shadow_a_stored_model(folder: Path) -> None:
    Path("synatra-a-Q4_K_M").mkdir()
    assert resolve_model("synatra-a-Q4_K_M") == folder / "synatra-a-Q4_K_M.gguf"
