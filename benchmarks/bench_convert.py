"""Converter benchmark: copy floor vs `convert` (F16), peak memory, and quantize vs llama.cpp's quantizer.

Builds (or reuses) a Synatra-7B-shaped fp16 PyTorch checkpoint with random weights in 2 shards, then in one run:
  1. the floor: a plain copy of the same bytes (read + write + fsync), cold cache where the kernel allows;
  2. `synatra-local convert --outtype f16` in a child process: wall time and peak anonymous memory;
  3. `quantize` to Q4_K_M and Q8_0 through our code, and Q4_K_M through llama.cpp's quantizer called
     directly (`llama_model_quantize` with the same threads), as the reference.
Targets: convert ≤ 1.15× copy, peak anonymous memory ≤ 512 MiB, quantize ≈ llama.cpp's own speed.
Usage: python benchmarks/bench_convert.py [--shape 7b|tiny] [--work DIR] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import drop_caches, machine, run_measured  # noqa: E402

MIB = 1 << 20


def copy_floor(files: list[Path], target: Path) -> float:
    start = time.perf_counter()
    with target.open("wb") as out:
        for path in files:
            with path.open("rb") as src:
                shutil.copyfileobj(src, out, 64 * MIB)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from synatra_local.convert.tiny import MISTRAL_7B, TINY, build_checkpoint

    work = args.work / args.shape
    folder = work / "Synatra-7B-v0.1-random"
    if not (folder / "pytorch_model.bin.index.json").is_file():
        print(f"building a {args.shape} fp16 checkpoint with random weights in {folder} …", flush=True)
        start = time.perf_counter()
        build_checkpoint(folder, version="v0.1", weights="bin", dtype="F16", shards=2,
                         shape=MISTRAL_7B if args.shape == "7b" else TINY)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    shards = sorted(folder.glob("pytorch_model-*.bin"))
    size = sum(p.stat().st_size for p in shards)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    cold = drop_caches()
    copy_s = copy_floor(shards, out / "copy.bin")
    (out / "copy.bin").unlink()

    drop_caches()
    cli = [sys.executable, "-m", "synatra_local"]
    f16 = out / "model-F16.gguf"
    convert_argv = cli + ["convert", str(folder), "-o", str(f16), "--outtype", "f16", "--quiet"]
    convert_s, convert_peak = run_measured(convert_argv)

    ours: dict[str, tuple[float, int]] = {}
    for qtype in ("Q4_K_M", "Q8_0"):
        ours[qtype] = run_measured(
            cli + ["quantize", str(f16), "-q", qtype, "-o", str(out), "--threads", str(args.threads), "--quiet"]
        )
    reference = (
        "import ctypes, sys, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        f"p.nthread = {args.threads}; p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    reference_s, _ = run_measured([sys.executable, "-c", reference, str(f16), str(out / "reference-Q4_K_M.gguf")])

    print(f"\nmachine: {machine()}; shape {args.shape}; cache {'cold' if cold else 'warm (cannot drop caches)'}")
    print(f"checkpoint: {len(shards)} shards, {size / 1e9:.2f} GB fp16")
    print(f"{'step':<34}{'seconds':>9}{'ratio':>9}{'peak anon MiB':>15}")
    print(f"{'copy floor (read+write+fsync)':<34}{copy_s:>9.1f}{1.0:>9.2f}{'':>15}")
    print(f"{'convert → F16 GGUF':<34}{convert_s:>9.1f}{convert_s / copy_s:>9.2f}{convert_peak / MIB:>15.0f}")
    print(f"{'llama.cpp quantize → Q4_K_M (ref)':<34}{reference_s:>9.1f}{1.0:>9.2f}{'':>15}")
    q4_s, q4_peak = ours["Q4_K_M"]
    print(f"{'synatra-local quantize → Q4_K_M':<34}{q4_s:>9.1f}{q4_s / reference_s:>9.2f}{q4_peak / MIB:>15.0f}")
    q8_s, q8_peak = ours["Q8_0"]
    print(f"{'synatra-local quantize → Q8_0':<34}{q8_s:>9.1f}{'':>9}{q8_peak / MIB:>15.0f}")
    for path in sorted(out.glob("*.gguf")):
        print(f"  {path.name}: {path.stat().st_size / 1e9:.2f} GB")
    print(f"targets: convert ≤ 1.15× copy: {'met' if convert_s <= 1.15 * copy_s else 'NOT met'}; "
          f"peak ≤ 512 MiB: {'met' if convert_peak <= 512 * MIB else 'NOT met'}; "
          f"quantize vs llama.cpp: {q4_s / reference_s:.2f}×")


if __name__ == "__main__":
    main()
