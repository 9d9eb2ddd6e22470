"""Memory benchmark: what llama.cpp's CPU weight repacking costs and buys (`--no-repack`).

On CPUs with AVX2/AVX-512 (or ARM dot-product) llama.cpp copies Q4_0/Q4_K/IQ4_NL weights into an
interleaved layout at load. The copy lives in anonymous memory beside the memory-mapped file, so a 7B
Q4_K_M needs about twice its size in RAM while it loads and keeps most of that. Each setting is measured in a
fresh child process, alternated, on the same GGUF: load seconds, anonymous and file-backed resident memory
after load, and prompt/decode tokens/s through the engine.
Usage: python benchmarks/bench_memory.py [--model PATH] [--threads N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402
from bench_runtime import DEFAULT_7B, tiny_model  # noqa: E402

PROMPT = "대한민국 헌법 제1조를 설명해 주세요. " * 12


def _resident() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"RssAnon", "RssFile"}:
            fields[key] = int(value.split()[0]) * 1024
    return fields


def child(model: Path, repack: bool, threads: int, tokens: int) -> None:
    """One measurement, printed as JSON: run in its own process so memory starts clean."""
    from synatra_local.runtime.engine import Engine, GenerationOptions

    start = time.perf_counter()
    engine = Engine(model, n_ctx=2048, threads=threads, gpu_layers=0, repack=repack)
    load_s = time.perf_counter() - start
    memory = _resident()
    options = GenerationOptions(max_tokens=tokens, temperature=0.0, seed=1)
    generation = engine.stream([{"role": "user", "content": PROMPT}], options)
    for _ in generation:
        pass
    stats = generation.stats
    print(
        json.dumps(
            {
                "load_s": load_s,
                "anon": memory["RssAnon"],
                "file": memory["RssFile"],
                "prompt_tps": stats.evaluated_prompt_tokens / stats.time_to_first_token,
                "decode_tps": stats.tokens_per_second,
            }
        )
    )


def measure(model: Path, repack: bool, threads: int, tokens: int) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", str(model), "--threads", str(threads), "--tokens", str(tokens)]
    argv += [] if repack else ["--no-repack"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-repack", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, not args.no_repack, args.threads, args.tokens)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or (DEFAULT_7B if DEFAULT_7B.exists() else tiny_model(Path(tmp)))
        print(f"machine: {machine()}; model: {model} ({model.stat().st_size / 1e9:.2f} GB); threads {args.threads}")
        runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for repack in (True, False):
                runs[repack].append(measure(model, repack, args.threads, args.tokens))
    print(f"{'':14}{'repack (default)':>18}{'--no-repack':>14}{'ratio':>8}")
    for key, label, scale, unit in [
        ("load_s", "load", 1, "s"),
        ("anon", "anon RSS", 1 / (1 << 20), "MiB"),
        ("file", "file RSS", 1 / (1 << 20), "MiB"),
        ("prompt_tps", "prompt", 1, "tok/s"),
        ("decode_tps", "decode", 1, "tok/s"),
    ]:
        on = statistics.median(r[key] for r in runs[True]) * scale
        off = statistics.median(r[key] for r in runs[False]) * scale
        print(f"{label + ' (' + unit + ')':14}{on:18.1f}{off:14.1f}{off / on if on else 0:8.2f}")


if __name__ == "__main__":
    main()
