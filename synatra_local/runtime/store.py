"""The models folder (`./models`, or `$SYNATRA_LOCAL_MODELS`): find, list and remove GGUF files by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from synatra_local.core.errors import ModelFileError
from synatra_local.core.gguf_info import check_gguf_file

MODELS_ENV = "SYNATRA_LOCAL_MODELS"


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV) or "models")


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    size_bytes: int


def list_models(folder: Path | None = None) -> list[StoredModel]:
    folder = folder or models_dir()
    if not folder.is_dir():
        return []
    return [
        StoredModel(p.stem, p, p.stat().st_size)
        for p in sorted(folder.glob("*.gguf"))
        if not p.name.startswith(".")
    ]


def resolve_model(model: str | Path, folder: Path | None = None) -> Path:
    """A path as given if it exists; else a name (with or without `.gguf`) in the models folder."""
    path = Path(model)
    if path.is_file():
        return check_gguf_file(path)
    folder = folder or models_dir()
    for candidate in (folder / str(model), folder / f"{model}.gguf"):
        if candidate.is_file():
            return check_gguf_file(candidate)
    names = ", ".join(m.name for m in list_models(folder)) or "none"
    raise ModelFileError(
        f"no model {model!r}: not a file, and not in {folder} (models there: {names})",
        fix="pass a .gguf path, or make one with `synatra-local quantize SOURCE`",
    )


def remove_model(model: str, folder: Path | None = None) -> Path:
    """Delete one model file of the models folder, and nothing outside it."""
    folder = (folder or models_dir()).resolve()
    path = resolve_model(model, folder).resolve()
    if path.parent != folder:
        raise ModelFileError(
            f"{path} is not in the models folder {folder}", fix="delete files elsewhere by hand"
        )
    path.unlink()
    return path
