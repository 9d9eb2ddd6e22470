"""The converter's public calls: `convert` (checkpoint → GGUF) and `quantize` (checkpoint or GGUF → quantized)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from synatra_local.core.atomic import refuse_existing
from synatra_local.core.errors import SynatraError
from synatra_local.core.progress import Progress

from .checkpoint import open_checkpoint
from .gguf_export import resolve_outtype, write_gguf
from .hub import resolve_source
from .naming import model_stem
from .quantizer import DEFAULT_TYPES, check_imatrix_needed, output_name, parse_type, quantize_gguf, stem_of


def convert(
    source: str | Path,
    output: Path,
    *,
    outtype: str = "auto",
    revision: str | None = None,
    prompt_format: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Convert a Hugging Face folder or repo id into one GGUF file; returns its path."""
    resolved = resolve_source(str(source), revision)
    checkpoint = open_checkpoint(resolved.folder, repo_id=resolved.repo_id, revision=resolved.revision)
    return write_gguf(
        checkpoint, Path(output), outtype=outtype, prompt_format=prompt_format, force=force, progress=progress
    )


def quantize(
    source: str | Path,
    types: tuple[str, ...] | list[str] = DEFAULT_TYPES,
    *,
    output_dir: Path = Path("models"),
    threads: int | None = None,
    keep_intermediate: bool = False,
    force: bool = False,
    revision: str | None = None,
    prompt_format: str | None = None,
    imatrix: str | Path | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Quantize a HF folder, repo id or unquantized GGUF into each of `types`; returns the files written.

    A checkpoint is converted once to an unquantized intermediate GGUF that every type is made from;
    the intermediate is removed afterwards unless `keep_intermediate`. `imatrix` is a matrix file or "auto"
    (computed from the intermediate on the shipped Korean calibration text); the i-quants require one.
    """
    names = list(dict.fromkeys(parse_type(t)[0] for t in types))
    if not names:
        raise SynatraError("no quantization type given", fix="pass -q Q4_K_M (or another type)")
    check_imatrix_needed(names, imatrix)
    output_dir = Path(output_dir)
    source_path = Path(str(source))
    if source_path.is_file():
        outputs = {t: output_dir / output_name(stem_of(source_path), t) for t in names}
        return quantize_gguf(
            source_path, outputs, threads=threads, force=force, imatrix=imatrix, progress=progress
        )

    resolved = resolve_source(str(source), revision)
    checkpoint = open_checkpoint(resolved.folder, repo_id=resolved.repo_id, revision=resolved.revision)
    stem = model_stem(checkpoint)
    outputs = {t: output_dir / output_name(stem, t) for t in names}
    refuse_existing(outputs.values(), force=force)
    outtype = resolve_outtype("auto", checkpoint).upper()
    # When the unquantized type is itself asked for, the intermediate is that output.
    keep = keep_intermediate or outtype in outputs
    kept = outputs.pop(outtype, output_dir / output_name(stem, outtype))
    intermediate = kept if keep else output_dir / f".{stem}.intermediate.gguf"
    try:
        write_gguf(
            checkpoint,
            intermediate,
            outtype=outtype.lower(),
            prompt_format=prompt_format,
            force=force or not keep,
            durable=keep,
            progress=progress,
        )
        written = quantize_gguf(
            intermediate, outputs, threads=threads, force=force, imatrix=imatrix, progress=progress
        )
    finally:
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                intermediate.unlink()
    return written + ([kept] if keep else [])
