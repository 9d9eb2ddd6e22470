"""Small JSON files of a checkpoint folder, read with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from synatra_local.core.errors import CheckpointError


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})", fix="re-download it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object", fix="re-download it")
    return data
