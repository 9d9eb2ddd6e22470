"""The models folder (`./models`, or `$SYNATRA_LOCAL_MODELS`): find, list and remove GGUF files by name.

A model pulled from the hub has a sidecar `NAME.gguf.origin.json` beside it saying where it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from synatra_local.core.atomic import atomic_output
from synatra_local.core.errors import ModelFileError
from synatra_local.core.gguf_info import check_gguf_file
from synatra_local.core.hub import DEFAULT_QUANT, HubRef, parse_hub_ref, quant_of

MODELS_ENV = "SYNATRA_LOCAL_MODELS"
ORIGIN_SUFFIX = ".origin.json"


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
    """A path as given if it exists; else a name (with or without `.gguf`) in the models folder; else a hub
    reference (`owner/repo:QUANT`, `owner/repo/FILE.gguf`) that was pulled into the models folder."""
    path = Path(model)
    if path.is_file():
        return check_gguf_file(path)
    folder = folder or models_dir()
    for candidate in (folder / str(model), folder / f"{model}.gguf"):
        if candidate.is_file():
            return check_gguf_file(candidate)
    ref = parse_hub_ref(str(model))
    if ref is not None and (pulled := find_pulled(ref, folder)) is not None:
        return check_gguf_file(pulled)
    names = ", ".join(m.name for m in list_models(folder)) or "none"
    raise ModelFileError(
        f"no model {model!r}: not a file, and not in {folder} (models there: {names})",
        fix=f"pull it first: synatra-local pull {model}"
        if ref is not None
        else "pass a .gguf path, or make one with `synatra-local quantize SOURCE`",
    )


def find_pulled(ref: HubRef, folder: Path | None = None) -> Path | None:
    """The model of the models folder pulled for `ref`, without asking the hub (None if there is none)."""
    matches = []
    for model in list_models(folder or models_dir()):
        origin = pulled_from(model.path)
        if origin is None or origin.repo_id.lower() != ref.repo_id.lower():
            continue
        if ref.revision and not origin.revision.startswith(ref.revision):
            continue
        if ref.filename:
            if origin.filename == ref.filename:
                return model.path
        elif quant_of(origin.filename) == (ref.quant or DEFAULT_QUANT) or ref.quant is None:
            matches.append((quant_of(origin.filename) == (ref.quant or DEFAULT_QUANT), model.path))
    exact = [path for is_exact, path in matches if is_exact]
    if len(exact) == 1:
        return exact[0]
    return matches[0][1] if len(matches) == 1 and not exact else None


def remove_model(model: str, folder: Path | None = None) -> Path:
    """Delete one model of the models folder (a pulled model's link, not the hub cache's bytes), nothing outside it."""
    folder = (folder or models_dir()).resolve()
    found = resolve_model(model, folder)
    path = found.parent.resolve() / found.name
    if path.parent != folder:
        raise ModelFileError(
            f"{path} is not in the models folder {folder}", fix="delete files elsewhere by hand"
        )
    path.unlink()
    with contextlib.suppress(FileNotFoundError):
        origin_file(path).unlink()
    return path


@dataclass(frozen=True)
class Origin:
    """Where a pulled model came from: the hub repo, the commit, the file and its verified sha256."""

    repo_id: str
    revision: str
    filename: str
    sha256: str | None
    size: int
    link: str  # how the models folder holds it: hardlink, symlink (to the hub cache's blob) or copy

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision[:12]}/{self.filename}"


def origin_file(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ORIGIN_SUFFIX)


def pulled_from(model_path: Path) -> Origin | None:
    """The origin recorded beside a model when it was pulled; None for models made here (or unreadable records)."""
    try:
        data = json.loads(origin_file(model_path).read_text(encoding="utf-8"))
        return Origin(**{key: data[key] for key in Origin.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_origin(model_path: Path, origin: Origin) -> None:
    with atomic_output(origin_file(model_path), force=True) as partial:
        partial.write_text(json.dumps(asdict(origin), indent=2) + "\n", encoding="utf-8")
