"""CUDA proof for a lent GPU: offload correctness, the `auto` layer estimate against real VRAM use, and speed.

Run on the GPU machine by benchmarks/device/cuda_check.sh (which installs the CUDA build of the binding).
Each check is a line of the report, marked ok / FAIL / info, and the whole report is written as JSON:
  logits      all layers on the GPU, F32 GGUF: logits vs the independent numpy forward pass (tests/), at every
              position; the same prompt's Q8_0 logits on the GPU vs on the CPU;
  auto        `--gpu-layers auto` with the card's real free VRAM takes every layer;
  vram        for several layer counts, VRAM llama.cpp really took (free before load - free after one reply)
              vs our estimate for that count (layers + KV cache + compute buffer): short by no more than the
              512 MiB that `auto` always leaves free on top of it;
  budget      a small VRAM budget: the count `auto` picks for it loads, and what it takes fits the budget;
  speed       prompt and decode tok/s with every layer on the GPU vs the CPU (all cores), same GGUF, greedy.
Each load runs in a child process, so VRAM and memory start clean.
Usage: python benchmarks/cuda_check.py [--out DIR] [--sizes tiny,medium,7b] [--allow-cpu]
(--allow-cpu runs the same steps on a build without offload, to check this script itself.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))

from _measure import machine  # noqa: E402

from synatra_local.convert.tiny import MISTRAL_7B, TINY, ModelShape  # noqa: E402
from synatra_local.runtime.offload import MIB, MIN_HEADROOM  # noqa: E402

PROMPT = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
SHAPES = {
    "tiny": TINY,
    "medium": ModelShape(hidden_size=2048, intermediate_size=5632, num_layers=16, num_heads=16, num_kv_heads=4),
    "7b": MISTRAL_7B,
}
report: list[dict[str, object]] = []


def record(check: str, ok: bool | None, detail: str, **figures: object) -> None:
    mark = "info" if ok is None else ("ok" if ok else "FAIL")
    report.append({"check": check, "result": mark, "detail": detail, **figures})
    print(f"[{mark:>4}] {check}: {detail}", flush=True)


def gpu_free_bytes() -> int:
    from synatra_local.core import llama_backend

    return max((d.free_bytes for d in llama_backend.devices() if d.kind in {"gpu", "igpu"}), default=0)


# --- children: one load each ------------------------------------------------------------------------


def child_logits(path: Path, layers: int, tokens: list[int], flash_attn: bool) -> None:
    from synatra_local.core.llama_backend import LlamaModel

    model = LlamaModel(path, n_ctx=128, n_gpu_layers=layers, logits_all=True, flash_attn=flash_attn)
    model.evaluate(tokens)
    np.save(sys.stdout.buffer, np.array(model.logits(), dtype=np.float64))


def child_run(path: Path, gpu_layers: str, tokens: int, threads: int | None, repack: bool) -> None:
    """Load, answer one prompt greedily, and print what it took: VRAM, tokens, speeds."""
    from synatra_local.runtime.engine import Engine, GenerationOptions

    free_before = gpu_free_bytes()
    start = time.perf_counter()
    engine = Engine(path, n_ctx=4096, threads=threads, gpu_layers=gpu_layers, repack=repack)
    load_s = time.perf_counter() - start
    generation = engine.stream(
        [{"role": "user", "content": PROMPT * 4}], GenerationOptions(max_tokens=tokens, temperature=0.0, seed=1)
    )
    text = "".join(generation)
    stats = generation.stats
    print(
        json.dumps(
            {
                "layers": engine.offload.layers,
                "total_layers": engine.offload.total_layers,
                "reason": engine.offload.reason,
                "vram_used": free_before - gpu_free_bytes(),
                "load_s": load_s,
                "prompt_tps": stats.evaluated_prompt_tokens / max(stats.time_to_first_token, 1e-9),
                "decode_tps": stats.tokens_per_second,
                "generated": stats.generated_tokens,
                "text": text,
                "replacement_chars": text.count("\ufffd"),
            }
        )
    )


def child_overhead(path: Path) -> None:
    """Decode through the engine vs a bare llama_decode loop on its own context, every layer on the GPU."""
    from bench_runtime import same_context

    bare, ours = same_context(path, PROMPT * 4, 128, None, 3, gpu_layers="all")
    print(json.dumps({"bare": bare, "engine": ours}))


def spawn(*args: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True)
    if done.returncode:
        sys.stderr.write(done.stderr.decode(errors="replace")[-4000:])
        raise RuntimeError(f"child {args[:2]} failed with exit code {done.returncode}")
    return done


def run(path: Path, gpu_layers: str, tokens: int = 32, threads: int | None = None, repack: bool = True) -> dict:
    out = spawn("run", str(path), gpu_layers, str(tokens), str(threads or 0), str(int(repack))).stdout.decode()
    return json.loads(out.strip().splitlines()[-1])


def logits(path: Path, layers: int, tokens: list[int], flash_attn: bool = False) -> np.ndarray:
    import io

    out = spawn("logits", str(path), str(layers), json.dumps(tokens), str(int(flash_attn))).stdout
    return np.load(io.BytesIO(out))


# --- checks --------------------------------------------------------------------------------------------


def build(work: Path, size: str, outtypes: list[str]) -> dict[str, Path]:
    from synatra_local.convert import convert, quantize
    from synatra_local.convert.tiny import build_checkpoint

    start = time.perf_counter()
    shards = 2 if size == "7b" else 1
    folder = build_checkpoint(work / f"Synatra-V0.1-{size}", shape=replace(SHAPES[size]), shards=shards)
    built = {"F32": convert(folder, work / f"{size}-F32.gguf", outtype="f32")} if "F32" in outtypes else {}
    quantized = [t for t in outtypes if t != "F32"]
    built |= dict(zip(quantized, quantize(folder, quantized, output_dir=work / size), strict=True))
    record(f"build {size}", None, f"{', '.join(outtypes)} in {time.perf_counter() - start:.0f} s")
    return {"folder": folder, **built}


def check_logits(files: dict[str, Path], all_layers: int) -> None:
    import sentencepiece as spm
    from test_convert_logits import agreement, reference_logits

    tokenizer = spm.SentencePieceProcessor(model_file=str(files["folder"] / "tokenizer.model"))
    tokens = [1, *tokenizer.encode(PROMPT)]
    expected = reference_logits(files["folder"], tokens)
    for flash_attn in (False, True):
        top1, rel = agreement(logits(files["F32"], all_layers, tokens, flash_attn), expected)
        record(
            f"logits F32 on GPU vs numpy reference (flash attention {'on' if flash_attn else 'off'})",
            top1 == 1.0 and rel < 1e-2,
            f"top-1 agreement {top1:.3f}, rel err {rel:.1e} (CPU proof in tests: 1.0, < 1e-2)",
            top1=top1, rel_err=rel,
        )
    gpu = logits(files["Q8_0"], all_layers, tokens)
    cpu = logits(files["Q8_0"], 0, tokens)
    top1, rel = agreement(gpu, cpu)
    record("logits Q8_0 GPU vs CPU", top1 >= 0.9 and rel < 5e-2, f"top-1 {top1:.3f}, rel err {rel:.1e}",
           top1=top1, rel_err=rel)


def check_auto(path: Path) -> None:
    result = run(path, "auto")
    record("auto takes every layer when VRAM is plentiful", result["layers"] == result["total_layers"],
           result["reason"])
    record("Korean stream on the GPU has no U+FFFD", result["replacement_chars"] == 0,
           f"{result['generated']} tokens, {len(result['text'])} characters")


def estimate(path: Path, layers: int) -> int:
    """Our estimate for `layers` on the GPU, the way `auto` adds it up (without its headroom)."""
    from synatra_local.core.gguf_info import read_model_info
    from synatra_local.runtime.offload import footprint

    fp = footprint(read_model_info(path), n_ctx=4096)
    return fp.offloaded_bytes(layers) + fp.compute_bytes


def check_vram(path: Path, size: str) -> None:
    from synatra_local.core.gguf_info import read_model_info

    total = (read_model_info(path).block_count or 0) + 1
    for layers in sorted({total, total // 2, 1}):
        result = run(path, str(layers), tokens=8)
        guess = estimate(path, layers)
        record(
            f"vram {size} {layers}/{total} layers: used vs estimate",
            result["vram_used"] <= guess + MIN_HEADROOM,
            f"used {result['vram_used'] / MIB:.0f} MiB, estimated {guess / MIB:.0f} MiB "
            f"({result['vram_used'] / guess:.2f}×; `auto` keeps at least {MIN_HEADROOM // MIB} MiB more free)",
            layers=layers, used=result["vram_used"], estimated=guess,
        )


def check_budget(path: Path, size: str) -> None:
    """A card with little free VRAM: the count `auto` picks for it loads and stays inside it."""
    from synatra_local.core.gguf_info import read_model_info
    from synatra_local.runtime.offload import choose_layers, footprint

    fp = footprint(read_model_info(path), n_ctx=4096)
    budget = 512 * MIB + fp.compute_bytes + fp.total // 2
    plan = choose_layers(fp, "auto", can_offload=True, free_vram=budget)
    result = run(path, str(plan.layers), tokens=32)
    record(
        f"budget {size}: {budget / MIB:.0f} MiB free → {plan.layers}/{plan.total_layers} layers",
        0 < plan.layers < plan.total_layers and result["vram_used"] <= budget,
        f"loaded and answered; took {result['vram_used'] / MIB:.0f} MiB of the {budget / MIB:.0f} MiB budget",
        budget=budget, layers=plan.layers, used=result["vram_used"],
    )
    plain = run(path, str(plan.layers), tokens=32, repack=False)
    record(
        f"split {size} {plan.layers}/{plan.total_layers} layers: CPU repack on vs off",
        None,
        f"prompt {result['prompt_tps']:.0f} vs {plain['prompt_tps']:.0f} tok/s, "
        f"decode {result['decode_tps']:.1f} vs {plain['decode_tps']:.1f} tok/s",
        repack=result | {"text": None}, no_repack=plain | {"text": None},
    )


def check_speed(path: Path, size: str) -> None:
    threads = os.cpu_count() or 1
    gpu = run(path, "all", tokens=64)
    cpu = run(path, "0", tokens=64, threads=threads)
    record(
        f"speed {size} {path.name}",
        None,
        f"GPU prompt {gpu['prompt_tps']:.0f} tok/s, decode {gpu['decode_tps']:.1f} tok/s; "
        f"CPU ({threads} threads) prompt {cpu['prompt_tps']:.0f}, decode {cpu['decode_tps']:.1f} "
        f"(decode {gpu['decode_tps'] / max(cpu['decode_tps'], 1e-9):.1f}× the CPU); "
        f"load {gpu['load_s']:.1f} s GPU / {cpu['load_s']:.1f} s CPU",
        gpu=gpu | {"text": None}, cpu=cpu | {"text": None},
    )
    pairs = zip(gpu["text"], cpu["text"], strict=False)
    out = spawn("overhead", str(path)).stdout.decode()
    same = json.loads(out.strip().splitlines()[-1])
    record(
        f"per-token overhead {size} on the GPU",
        None,
        f"engine {same['engine']:.1f} tok/s vs a bare llama_decode loop on its own context {same['bare']:.1f} "
        f"({same['engine'] / same['bare']:.2f}×)",
        **same,
    )
    prefix = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(gpu["text"]), len(cpu["text"])))
    record(f"greedy text {size}, GPU vs CPU", None, f"identical for the first {prefix} of {len(cpu['text'])} chars")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--sizes", default="tiny,medium")
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, *rest = args.child
        if kind == "overhead":
            child_overhead(Path(path))
        elif kind == "logits":
            child_logits(Path(path), int(rest[0]), json.loads(rest[1]), bool(int(rest[2])))
        else:
            child_run(Path(path), rest[0], int(rest[1]), int(rest[2]) or None, bool(int(rest[3])))
        return 0

    from synatra_local.core import llama_backend

    gpus = [d for d in llama_backend.devices() if d.kind in {"gpu", "igpu"}]
    can = llama_backend.supports_gpu_offload()
    record("build offloads", can and bool(gpus), f"binding {llama_backend.binding_version()}; devices: "
           + "; ".join(f"{d.name} {d.description} {d.free_bytes / MIB:.0f}/{d.total_bytes / MIB:.0f} MiB free"
                       for d in llama_backend.devices()))
    if not (can and gpus) and not args.allow_cpu:
        print("this build cannot offload to a GPU: nothing to prove here (--allow-cpu checks the script itself)")
        return 2
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in args.sizes.split(","):
            files = build(work, size, ["F32", "Q8_0", "Q4_K_M"] if size == "tiny" else ["Q4_K_M"])
            q4 = files["Q4_K_M"]
            if size == "tiny":
                check_logits(files, SHAPES["tiny"].num_layers + 1)
                check_auto(q4)
            check_vram(q4, size)
            check_budget(q4, size)
            check_speed(q4, size)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    failed = [r["check"] for r in report if r["result"] == "FAIL"]
    print(f"{len(report)} checks, {len(failed)} failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
