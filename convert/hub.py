"""Fetch a checkpoint from the Hugging Face hub: only the files conversion needs, through huggingface_hub's cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synatra_local.core.errors import SynatraError
from synatra_local.core.hub import REPO_ID, hub_errors, is_offline

METADATA_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "README.md",
]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
PYTORCH_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


@dataclass(frozen=True)
class ResolvedSource:
    folder: Path
    repo_id: str | None = None
    revision: str | None = None


def looks_like_repo_id(source: str) -> bool:
    return bool(REPO_ID.match(source)) and not Path(source).exists()


def resolve_source(source: str, revision: str | None = None) -> ResolvedSource:
    """A local folder as it is; a repo id (`owner/name`, optionally `owner/name@rev`) downloaded or cached."""
    if Path(source).exists():
        return ResolvedSource(Path(source))
    repo_id, _, at_revision = source.partition("@")
    if not REPO_ID.match(repo_id):
        raise SynatraError(
            f"{source} is neither a folder nor a Hugging Face repo id",
            fix="pass a model folder, or a repo id like maywell/Synatra-7B-v0.3-dpo",
        )
    return download_checkpoint(repo_id, revision or at_revision or None)


def allow_patterns(repo_files: list[str] | None) -> list[str]:
    """Metadata plus one weight format: safetensors when the repo has them, else the PyTorch shards."""
    if repo_files is None:
        return METADATA_FILES + SAFETENSORS_FILES + PYTORCH_FILES
    has_safetensors = any(f.endswith(".safetensors") for f in repo_files)
    return METADATA_FILES + (SAFETENSORS_FILES if has_safetensors else PYTORCH_FILES)


def download_checkpoint(repo_id: str, revision: str | None = None) -> ResolvedSource:
    """Download (resumably, into the hub cache) or reuse a snapshot; offline mode uses the cache only."""
    from huggingface_hub import HfApi, snapshot_download

    offline = is_offline()
    with hub_errors(repo_id, revision, offline_fix="download it once while online, or pass a local folder"):
        repo_files = None
        if not offline:
            info = HfApi().model_info(repo_id, revision=revision)
            repo_files = [s.rfilename for s in info.siblings or []]
            revision = info.sha or revision
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=allow_patterns(repo_files),
            local_files_only=offline,
        )
    path = Path(folder)
    # The snapshot folder is named after the commit it holds, whatever branch or tag was asked for.
    return ResolvedSource(path, repo_id=repo_id, revision=path.name)
