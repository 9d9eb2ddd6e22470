"""What a GGUF file is, read from its header alone (no weights are loaded)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from synatra_local.core.gguf_lib import gguf

from .errors import ModelFileError
from .model_meta import PROMPT_FORMAT_KEY, SOURCE_REPO_KEY, SOURCE_REVISION_KEY, name_sources

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorEntry:
    name: str
    type_name: str
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    file_bytes: int
    architecture: str
    name: str | None
    file_type: str | None
    parameters: int
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    prompt_format: str | None
    chat_template: str | None
    license: str | None
    source_repo: str | None
    source_revision: str | None
    tensors: list[TensorEntry] = field(repr=False, default_factory=list)
    # What format detection reads: the names the file gives itself (general.name, ..., the file name) in the
    # order the name rule reads them, the vocabulary's special tokens, and the BOS/EOS texts.
    names: list[tuple[str, str]] = field(repr=False, default_factory=list)
    special_tokens: frozenset[str] = field(repr=False, default_factory=frozenset)
    bos_token: str | None = None
    eos_token: str | None = None

    @property
    def tensor_types(self) -> dict[str, int]:
        return dict(Counter(t.type_name for t in self.tensors).most_common())


def check_gguf_file(path: Path) -> Path:
    """Fail early, with a clear message, for a path that is missing or is not a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path} does not exist", fix="pass a .gguf file or a name from `synatra-local list`"
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path} is not a GGUF file", fix="convert the checkpoint first: synatra-local quantize SOURCE"
        )
    return path


def read_model_info(path: Path) -> ModelInfo:
    from .llama_backend import read_gguf_header  # here: `convert` imports this module and never needs llama_cpp

    path = check_gguf_file(path)
    header = read_gguf_header(path)
    if header is None:
        raise ModelFileError(f"{path} is damaged or truncated", fix="re-convert or re-download it")
    value = header.values.get
    arch = str(value("general.architecture") or "unknown")
    tensors = [_tensor_entry(name, type_id, size) for name, type_id, size in header.tensors]
    return ModelInfo(
        path=path,
        file_bytes=path.stat().st_size,
        architecture=arch,
        name=_str(value("general.name")),
        file_type=_file_type_name(value("general.file_type")),
        parameters=sum(t.n_elements for t in tensors),
        context_length=_int(value(f"{arch}.context_length")),
        block_count=_int(value(f"{arch}.block_count")),
        embedding_length=_int(value(f"{arch}.embedding_length")),
        head_count=_int(value(f"{arch}.attention.head_count")),
        head_count_kv=_int(value(f"{arch}.attention.head_count_kv")),
        prompt_format=_str(value(PROMPT_FORMAT_KEY)),
        chat_template=_str(value("tokenizer.chat_template")),
        license=_str(value("general.license")),
        source_repo=_str(value(SOURCE_REPO_KEY)),
        source_revision=_str(value(SOURCE_REVISION_KEY)),
        tensors=tensors,
        names=name_sources(header.values, path.name),
        special_tokens=frozenset(header.special_tokens.values()),
        bos_token=_token(header.special_tokens, value("tokenizer.ggml.bos_token_id")),
        eos_token=_token(header.special_tokens, value("tokenizer.ggml.eos_token_id")),
    )


def _token(tokens: dict[int, str], token_id: object | None) -> str | None:
    return tokens.get(token_id) if isinstance(token_id, int) else None


def _tensor_entry(name: str, type_id: int, size: int) -> TensorEntry:
    ggml_type = gguf.GGMLQuantizationType(type_id)
    block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    return TensorEntry(name, ggml_type.name, size // type_size * block, size)


def _file_type_name(value: object | None) -> str | None:
    if value is None:
        return None
    try:
        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)


def _int(value: object | None) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
