"""Write a checkpoint as an unquantized (or Q8_0) GGUF for llama.cpp, one tensor chunk in memory at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synatra_local.core.atomic import atomic_output, ensure_free_space
from synatra_local.core.errors import CheckpointError, SynatraError
from synatra_local.core.gguf_lib import gguf
from synatra_local.core.model_meta import (
    PROMPT_FORMAT_KEY,
    PROMPT_FORMATS,
    SOURCE_REPO_KEY,
    SOURCE_REVISION_KEY,
)
from synatra_local.core.progress import Progress, SilentProgress

from .checkpoint import Checkpoint, HyperParameters
from .file_ranges import Range, SourceFiles
from .gguf_writer import GGUFWriter
from .naming import model_display_name
from .prompt_format import resolve_prompt_format
from .staged_output import StagedOutput
from .tensors import NUMPY_STORAGE, SourceTensor, bf16_bits_to_f32, f32_to_bf16_bits
from .vocab import Vocabulary, load_vocabulary

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")
_GGML = gguf.GGMLQuantizationType
_FILE_TYPES = {
    "f32": (_GGML.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (_GGML.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (_GGML.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (_GGML.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# Checkpoint tensors with no meaning for inference that older transformers versions saved.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where it comes from, how it is laid out and what it becomes."""

    name: str
    source: SourceTensor
    ggml_type: gguf.GGMLQuantizationType
    permute_heads: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.ggml_type)

    @property
    def row_bytes(self) -> int:
        """Bytes of one source row (first axis), as the checkpoint stores it."""
        return math.prod(self.shape[1:]) * NUMPY_STORAGE[self.source.dtype].itemsize

    @property
    def head_rows(self) -> int:
        """Rows per attention head of a q/k tensor whose rows are reordered; 0 for every other tensor."""
        return self.shape[0] // self.permute_heads if self.permute_heads else 0


def resolve_outtype(outtype: str, checkpoint: Checkpoint) -> str:
    """`auto` keeps 16-bit precision as the checkpoint has it: BF16 stays BF16, anything else becomes F16."""
    if outtype not in OUTTYPES:
        raise SynatraError(f"unknown output type {outtype!r}", fix=f"choose one of {', '.join(OUTTYPES)}")
    if outtype != "auto":
        return outtype
    dtypes = checkpoint.source_dtypes
    return "bf16" if "BF16" in dtypes and "F16" not in dtypes else "f16"


def plan_tensors(checkpoint: Checkpoint, outtype: str) -> list[PlannedTensor]:
    """Map every checkpoint tensor to its llama.cpp name and type, refusing unknown or missing tensors.

    The output keeps the checkpoint's own byte order (shard by shard, offset by offset; llama.cpp finds tensors
    by name), so every shard is read once from start to end, as a plain copy reads it.
    """
    hp = checkpoint.hparams
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp.num_layers)
    main_type = _FILE_TYPES[outtype][0]
    planned: list[PlannedTensor] = []
    for source in checkpoint.tensors.values():
        if source.name.endswith(_IGNORED_SUFFIXES):
            continue
        name = names.get_name(source.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(
                f"{source.file}: tensor {source.name} has no llama.cpp counterpart",
                fix="only plain Mistral/Llama checkpoints are supported (no adapters or extra heads)",
            )
        _check_shape(source, name, hp)
        ggml_type = main_type if len(source.shape) >= 2 else _GGML.F32
        if ggml_type == _GGML.Q8_0 and source.shape[-1] % 32:
            ggml_type = _GGML.F16
        permute = 0
        if name.endswith("attn_q.weight"):
            permute = hp.num_heads
        elif name.endswith("attn_k.weight"):
            permute = hp.num_kv_heads
        planned.append(PlannedTensor(name, source, ggml_type, permute))
    _check_complete(checkpoint, planned)
    return sorted(planned, key=lambda t: (str(t.source.file), t.source.offset or 0))


def write_gguf(
    checkpoint: Checkpoint,
    output: Path,
    *,
    outtype: str = "auto",
    prompt_format: str | None = None,
    force: bool = False,
    durable: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Convert `checkpoint` into `output`, atomically; returns the path written.

    `durable=False` skips the closing fsync, for an intermediate file that is deleted once quantized.
    """
    progress = progress or SilentProgress()
    outtype = resolve_outtype(outtype, checkpoint)
    plan = plan_tensors(checkpoint, outtype)
    output = Path(output)
    data_bytes = sum(t.nbytes for t in plan)
    ensure_free_space(output.parent, data_bytes + (64 << 20), what=output.name)
    ranges = [where for t in plan for where in _source_ranges(t)]
    with SourceFiles() as files:
        files.prefetch(ranges)
        vocab = load_vocabulary(checkpoint.folder, checkpoint.hparams.vocab_size)
        fmt = resolve_prompt_format(checkpoint, vocab.special.chat_template, prompt_format)
        if fmt not in PROMPT_FORMATS:
            raise SynatraError(f"unknown prompt format {fmt!r}", fix=f"choose one of {', '.join(PROMPT_FORMATS)}")
        with atomic_output(output, force=force) as partial:
            writer = GGUFWriter(partial, "llama")
            _add_metadata(writer, checkpoint, vocab, outtype, fmt)
            for t in plan:
                writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
            writer.write_header_to_file(partial)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            assert writer.fout is not None
            header_bytes = writer.fout[0].tell()
            writer.close()
            progress.start(f"convert → {output.name}", data_bytes)
            with StagedOutput(partial, header_bytes) as out, closing(files.blocks(ranges)) as blocks:
                for t in plan:
                    out.pad_to(writer.data_alignment)
                    _write_tensor(t, out, blocks, progress)
                out.pad_to(writer.data_alignment)
                out.finish(durable=durable)
            progress.finish()
    return output


def _add_metadata(
    writer: gguf.GGUFWriter, ckpt: Checkpoint, vocab: Vocabulary, outtype: str, prompt_format: str
) -> None:
    hp: HyperParameters = ckpt.hparams
    writer.add_name(model_display_name(ckpt))
    if ckpt.readme_license:
        writer.add_license(ckpt.readme_license)
    if ckpt.repo_id:
        writer.add_source_repo_url(f"https://huggingface.co/{ckpt.repo_id}")
        writer.add_string(SOURCE_REPO_KEY, ckpt.repo_id)
    if ckpt.revision:
        writer.add_string(SOURCE_REVISION_KEY, ckpt.revision)
    writer.add_string(PROMPT_FORMAT_KEY, prompt_format)
    writer.add_file_type(_FILE_TYPES[outtype][1])
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_vocab_size(len(vocab))
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_block_count(hp.num_layers)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.num_heads)
    writer.add_head_count_kv(hp.num_kv_heads)
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim != hp.hidden_size // hp.num_heads:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_layer_norm_rms_eps(hp.rms_norm_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    scaling = hp.rope_scaling or {}
    if scaling.get("type", scaling.get("rope_type")) == "linear" and "factor" in scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    vocab.add_to_gguf(writer)
    im_end = vocab.token_id("<|im_end|>")
    if im_end is not None:
        writer.add_eot_token_id(im_end)


def _write_tensor(t: PlannedTensor, out: StagedOutput, blocks: Iterator[np.ndarray], progress: Progress) -> None:
    """One tensor, a row block at a time: read from the shard (the next block is read meanwhile), converted where
    the type changes and copied into the output's buffer (q/k rows put in llama.cpp's order by that copy)."""
    try:
        for block in _row_blocks(t, blocks):
            order = _interleaved_row_order(len(block), t.head_rows) if t.head_rows else None
            progress.advance(out.write(block, order))
            del block  # the next block's mapping replaces this one's
    except EOFError as exc:
        raise CheckpointError(
            f"{t.source.file}: tensor {t.source.name} is cut short ({exc})",
            fix="re-download this file; it may be truncated",
        ) from None


def _row_steps(t: PlannedTensor) -> list[tuple[int, int]]:
    """(first row, row count) of each block of at most CHUNK_BYTES of source, whole heads for q/k."""
    step = max(1, CHUNK_BYTES // max(t.row_bytes, 1))
    if t.head_rows:
        step = max(t.head_rows, step - step % t.head_rows)
    return [(start, min(step, t.shape[0] - start)) for start in range(0, t.shape[0], step)]


def _source_ranges(t: PlannedTensor) -> list[Range]:
    """The shard bytes of each of the tensor's blocks; none for a strided tensor, which the memory map serves."""
    if t.source.offset is None:
        return []
    offset, row = t.source.offset, t.row_bytes
    return [(t.source.file, offset + start * row, count * row) for start, count in _row_steps(t)]


def _row_blocks(t: PlannedTensor, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Row blocks of the tensor in the output type: views of the mapped shard where the type stays, new arrays
    where it changes. Each is valid until the next is asked for."""
    storage = NUMPY_STORAGE[t.source.dtype]
    strided = None if t.source.offset is not None else _mapped(t)
    for start, count in _row_steps(t):
        if strided is not None:
            yield _convert(strided[start : start + count], t.source.dtype, t.ggml_type)
            continue
        try:
            raw = next(blocks)
        except (OSError, ValueError) as exc:
            raise _unreadable(t, exc) from exc
        block = _convert(raw.view(storage).reshape(count, *t.shape[1:]), t.source.dtype, t.ggml_type)
        del raw  # no view may outlive the mapping: it is unmapped, then dropped from the cache
        yield block
        del block


def _mapped(t: PlannedTensor) -> np.ndarray:
    """A strided tensor's memory-mapped view (torch stores some as views of a larger storage)."""
    try:
        data = t.source.load()
    except (OSError, ValueError) as exc:
        raise _unreadable(t, exc) from exc
    if data.shape != t.shape:
        raise CheckpointError(
            f"{t.source.file}: tensor {t.source.name} has shape {data.shape}, header says {t.shape}",
            fix="re-download this file",
        )
    return data


def _unreadable(t: PlannedTensor, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{t.source.file}: cannot read {t.source.name} ({exc})", fix="re-download it")


def _interleaved_row_order(rows: int, head_rows: int) -> np.ndarray:
    """HF stores each head's q/k rows as [first halves | second halves]; llama.cpp's rope wants the halves
    interleaved. The source row of each output row, for a block of whole heads."""
    return np.arange(rows).reshape(rows // head_rows, 2, head_rows // 2).swapaxes(1, 2).reshape(-1)


def _convert(block: np.ndarray, src: str, dst: gguf.GGMLQuantizationType) -> np.ndarray:
    if dst == _GGML.BF16:
        return block if src == "BF16" else f32_to_bf16_bits(block.astype(np.float32, copy=False))
    values = bf16_bits_to_f32(block) if src == "BF16" else block
    if dst == _GGML.F32:
        return values.astype(np.float32, copy=False)
    if dst == _GGML.F16:
        return values.astype(np.float16, copy=False)
    return gguf.quants.quantize(values.astype(np.float32, copy=False), dst)


def _nbytes(shape: tuple[int, ...], ggml_type: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def _check_complete(checkpoint: Checkpoint, planned: list[PlannedTensor]) -> None:
    hp = checkpoint.hparams
    have = {t.name for t in planned}
    needed = ["token_embd.weight", "output_norm.weight"]
    if not hp.tie_word_embeddings:
        needed.append("output.weight")
    for i in range(hp.num_layers):
        needed += [
            f"blk.{i}.{part}.weight"
            for part in (
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            )
        ]
    missing = [n for n in needed if n not in have]
    if missing:
        raise CheckpointError(
            f"{checkpoint.folder}: the weights lack {len(missing)} tensor(s) the config implies, e.g. {missing[0]}",
            fix="check that every shard is downloaded and belongs to this config.json",
        )


def _expected_shape(name: str, hp: HyperParameters) -> tuple[int, ...] | None:
    q_rows, kv_rows = hp.num_heads * hp.head_dim, hp.num_kv_heads * hp.head_dim
    part = name.split(".")[-2]
    return {
        "token_embd": (hp.vocab_size, hp.hidden_size),
        "output": (hp.vocab_size, hp.hidden_size),
        "output_norm": (hp.hidden_size,),
        "attn_norm": (hp.hidden_size,),
        "ffn_norm": (hp.hidden_size,),
        "attn_q": (q_rows, hp.hidden_size),
        "attn_k": (kv_rows, hp.hidden_size),
        "attn_v": (kv_rows, hp.hidden_size),
        "attn_output": (hp.hidden_size, q_rows),
        "ffn_gate": (hp.intermediate_size, hp.hidden_size),
        "ffn_up": (hp.intermediate_size, hp.hidden_size),
        "ffn_down": (hp.hidden_size, hp.intermediate_size),
    }.get(part)


def _check_shape(source: SourceTensor, name: str, hp: HyperParameters) -> None:
    expected = _expected_shape(name, hp)
    if expected is not None and source.shape != expected:
        raise CheckpointError(
            f"{source.file}: tensor {source.name} has shape {list(source.shape)}, "
            f"config.json implies {list(expected)}",
            fix="use the config.json that belongs to these weights",
        )
