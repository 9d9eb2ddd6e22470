"""Names for converted models: `synatra-7b-v0.1` for Synatra checkpoints, the folder's name otherwise."""

from __future__ import annotations

import re

from synatra_local.core.gguf_lib import gguf

from .checkpoint import Checkpoint


def parameter_count(checkpoint: Checkpoint) -> int:
    total = 0
    for t in checkpoint.tensors.values():
        n = 1
        for d in t.shape:
            n *= d
        total += n
    return total


def model_stem(checkpoint: Checkpoint) -> str:
    """A lower-case file stem: `synatra-7b-v0.1`, or the repo/folder name when it is no Synatra model."""
    source = checkpoint.repo_id.split("/")[-1] if checkpoint.repo_id else checkpoint.folder.name
    size = gguf.utility.model_weight_count_rounded_notation(parameter_count(checkpoint), min_digits=1).lower()
    version = re.search(r"v(\d+(?:\.\d+)+)", source, re.I)
    if "synatra" in source.lower() and version:
        return f"synatra-{size}-v{version.group(1)}"
    return re.sub(r"[^a-z0-9.]+", "-", source.lower()).strip("-") or "model"


def model_display_name(checkpoint: Checkpoint) -> str:
    return checkpoint.repo_id.split("/")[-1] if checkpoint.repo_id else checkpoint.folder.name
