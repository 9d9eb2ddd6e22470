"""A local Hugging Face checkpoint folder: its config, its weight files and their tensors, read lazily."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from synatra_local.core.errors import CheckpointError

from .files import read_json
from .safetensors_file import read_safetensors
from .tensors import SourceTensor
from .torch_zip import read_torch_checkpoint

SUPPORTED_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")

# (single file, index of shards) in the order we prefer them; the first present wins.
WEIGHT_LAYOUTS = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


@dataclass(frozen=True)
class HyperParameters:
    """What llama.cpp needs to know about a Mistral/Llama network."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: dict, path: Path) -> HyperParameters:
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                context_length=int(config.get("max_position_embeddings", 4096)),
                rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
                rope_theta=float(config.get("rope_theta") or 10000.0),
                rope_scaling=config.get("rope_scaling"),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path} lacks a usable {exc} entry", fix="use the config.json that came with the checkpoint"
            ) from exc


@dataclass
class Checkpoint:
    """A checkpoint folder opened for conversion; no tensor bytes are read until a tensor is loaded."""

    folder: Path
    config: dict
    architecture: str
    hparams: HyperParameters
    tensors: dict[str, SourceTensor]
    weight_files: list[Path]
    repo_id: str | None = None
    revision: str | None = None
    readme_license: str | None = field(default=None)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def source_dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values()}


def open_checkpoint(folder: Path, *, repo_id: str | None = None, revision: str | None = None) -> Checkpoint:
    """Open a Hugging Face folder: check the architecture, find every shard and index its tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a folder", fix="pass a Hugging Face model folder or a repo id"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{config_path} is missing", fix="a Hugging Face model folder needs its config.json"
        )
    config = read_json(config_path)
    architectures = config.get("architectures") or []
    architecture = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
    if architecture is None:
        raise CheckpointError(
            f"{config_path}: architecture {', '.join(architectures) or 'unknown'} is not supported",
            fix=f"synatra-local converts {' and '.join(SUPPORTED_ARCHITECTURES)} checkpoints",
        )
    weight_files = _find_weight_files(folder)
    tensors: dict[str, SourceTensor] = {}
    for path in weight_files:
        reader = read_safetensors if path.suffix == ".safetensors" else read_torch_checkpoint
        for name, tensor in reader(path).items():
            tensors.setdefault(name, tensor)
    _check_index(folder, tensors)
    return Checkpoint(
        folder=folder,
        config=config,
        architecture=architecture,
        hparams=HyperParameters.from_config(config, config_path),
        tensors=tensors,
        weight_files=weight_files,
        repo_id=repo_id,
        revision=revision,
        readme_license=_readme_license(folder / "README.md"),
    )


def _find_weight_files(folder: Path) -> list[Path]:
    for single, index in WEIGHT_LAYOUTS:
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map") or {}
            shards = sorted(set(weight_map.values()))
            if not shards:
                raise CheckpointError(f"{folder / index} lists no shards", fix="re-download the index file")
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{folder}: shard {missing[0]} named in {index} is missing"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    fix="download every shard listed in the index",
                )
            return [folder / s for s in shards]
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(
        f"{folder} holds no weights (model.safetensors, pytorch_model.bin or their sharded indexes)",
        fix="download the weight files into this folder",
    )


def _check_index(folder: Path, tensors: dict[str, SourceTensor]) -> None:
    """Every tensor an index promises must be in the shard it names; a truncated download fails here."""
    for _, index in WEIGHT_LAYOUTS:
        if not (folder / index).is_file():
            continue
        for name, shard in (read_json(folder / index).get("weight_map") or {}).items():
            found = tensors.get(name)
            if found is None or found.file.name != shard:
                raise CheckpointError(
                    f"{folder / shard} lacks tensor {name} that {index} places there",
                    fix="re-download that shard; it may be truncated or from another revision",
                )
        return


def _readme_license(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = re.match(r"^---\n(.*?)\n---", text, re.S)
    found = re.search(r"^license:\s*(\S+)", front.group(1), re.M) if front else None
    return found.group(1).strip("'\"") if found else None
