"""Runtime benchmark: this engine against llama.cpp driven directly, and time to first token across turns.

In one run, on one GGUF (the 7B-shaped Q4_K_M that bench_convert.py makes, or a tiny model if absent):
  1. prompt tokens/s and decode tokens/s through `Engine.stream` vs the binding's low-level loop
     (`llama_decode` on a batch, greedy `llama_sampler`), same threads, same prompt, same number of tokens;
     then decode again, alternated on one loaded model: the engine vs a bare loop on the engine's own context;
  2. time to first token at turn 1 and turn 10 of a conversation whose new messages have equal length.
Targets: decode and prompt ≥ 0.98× llama.cpp; turn-10 TTFT ≤ 1.2× turn-1 TTFT.
Usage: python benchmarks/bench_runtime.py [--model PATH] [--threads N] [--prompt-tokens N] [--tokens N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

DEFAULT_7B = Path(__file__).parent / "work" / "7b" / "out" / "model-Q4_K_M.gguf"


def tiny_model(folder: Path) -> Path:
    from synatra_local.convert import quantize
    from synatra_local.convert.tiny import build_checkpoint

    checkpoint = build_checkpoint(folder / "Synatra-V0.1-tiny", version="v0.1")
    return quantize(checkpoint, ["Q4_K_M"], output_dir=folder)[0]


def greedy_decode(ctx: object, n_decode: int) -> float:
    """Tokens/s of llama.cpp's own greedy loop on `ctx`, whose prompt has just been decoded."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_greedy()
    token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
    one = (llama_cpp.llama_token * 1)()
    start = time.perf_counter()
    for _ in range(n_decode - 1):
        one[0] = token
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1))
        token = llama_cpp.llama_sampler_sample(sampler, ctx, -1)
    seconds = time.perf_counter() - start
    llama_cpp.llama_sampler_free(sampler)
    return (n_decode - 1) / seconds


def reference(path: Path, prompt: list[int], n_decode: int, threads: int, n_ctx: int) -> tuple[float, float]:
    """Prompt and decode tokens/s of llama.cpp through the binding's C API, with no Python layer of ours."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, 512, 512
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    start = time.perf_counter()
    for i in range(0, len(prompt), 512):
        chunk = (llama_cpp.llama_token * len(prompt[i : i + 512]))(*prompt[i : i + 512])
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(chunk, len(prompt[i : i + 512])))
    prompt_s = time.perf_counter() - start
    decode_tps = greedy_decode(ctx, n_decode)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return len(prompt) / prompt_s, decode_tps


def reference_context_cost(
    path: Path, ids: list[int], n_new: int, n_past: int, threads: int
) -> tuple[float, float]:
    """llama.cpp alone: seconds to evaluate `n_new` tokens after no cached tokens, and after `n_past`.

    Attention over a longer context costs more per token; this is the part of a later turn's TTFT that no
    runtime can save, measured with the same tokens and positions as the conversation's turn 10.
    """
    import llama_cpp

    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 4096, 512, 512
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    memory = llama_cpp.llama_get_memory(ctx)

    def decode(tokens: list[int]) -> float:
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        start = time.perf_counter()
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
        return time.perf_counter() - start

    new = ids[:n_new]
    decode(new)  # warm-up
    llama_cpp.llama_memory_clear(memory, True)
    fresh = decode(new)
    llama_cpp.llama_memory_clear(memory, True)
    for i in range(0, n_past, 512):
        decode(ids[i : min(i + 512, n_past)])
    late = decode(new)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return fresh, late


def ours(path: Path, text: str, n_decode: int, threads: int, n_ctx: int) -> tuple[float, float, int]:
    from synatra_local.runtime.engine import Engine, GenerationOptions

    engine = Engine(path, n_ctx=n_ctx, threads=threads, gpu_layers=0)
    tokens = engine._model.tokenize(text, add_bos=True, special=False)
    generation = engine.complete(text, GenerationOptions(max_tokens=n_decode, temperature=0.0, repeat_penalty=1.0))
    for _ in generation:
        pass
    s = generation.stats
    engine.close()
    return s.prompt_tokens / s.time_to_first_token, s.tokens_per_second, len(tokens)


def same_context(
    path: Path, text: str, n_decode: int, threads: int | None, repeats: int, gpu_layers: str = "0"
) -> tuple[float, float]:
    """Decode tok/s of `Engine.complete` and of a bare `llama_decode` loop on the engine's own context, alternated.

    Same process, same loaded weights, same context: what is left between the two is our per-token work,
    without the drift between two separately loaded models that the first comparison also sees.
    """
    import llama_cpp

    from synatra_local.runtime.engine import Engine, GenerationOptions

    engine = Engine(path, n_ctx=4096, threads=threads, gpu_layers=gpu_layers)
    model = engine._model
    ctx = model._ctx.ctx
    memory = llama_cpp.llama_get_memory(ctx)

    def bare() -> float:
        engine.forget_cache()
        ids = model.tokenize(text, add_bos=True, special=True)
        prompt = (llama_cpp.llama_token * len(ids))(*ids)  # kept alive: the batch only points at it
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt, len(ids)))
        tokens_per_second = greedy_decode(ctx, n_decode)
        llama_cpp.llama_memory_clear(memory, True)
        return tokens_per_second

    def engine_decode() -> float:
        generation = engine.complete(text, GenerationOptions(max_tokens=n_decode, temperature=0.0, repeat_penalty=1.0))
        for _ in generation:
            pass
        return generation.stats.tokens_per_second

    pairs = [(bare(), engine_decode()) for _ in range(repeats)]
    engine.close()
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def ttft_turns(path: Path, threads: int, turns: int = 10) -> tuple[list[float], list[int], list[int]]:
    from synatra_local.runtime.engine import Engine, GenerationOptions

    engine = Engine(path, n_ctx=4096, threads=threads, gpu_layers=0)
    "".join(engine.complete("Warm-up text that shares nothing with the chat but BOS.", GenerationOptions(max_tokens=2)))
    messages: list[dict[str, str]] = []
    firsts, evaluated, positions = [], [], []
    for i in range(turns):
        question = f"질문 {i % 10}: 대한민국 헌법 제{i % 10}조는 무엇을 정하고 있나요?"
        messages.append({"role": "user", "content": question})
        generation = engine.stream(messages, GenerationOptions(max_tokens=16, seed=i))
        reply = "".join(generation)
        firsts.append(generation.stats.time_to_first_token)
        evaluated.append(generation.stats.evaluated_prompt_tokens)
        positions.append(generation.stats.prompt_tokens - generation.stats.evaluated_prompt_tokens)
        messages.append({"role": "assistant", "content": reply})
    engine.close()
    return firsts, evaluated, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; medians are reported")
    args = parser.parse_args()

    from synatra_local.core import llama_backend

    llama_backend.set_verbose(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or (DEFAULT_7B if DEFAULT_7B.is_file() else tiny_model(Path(tmp)))
        text = (Path(__file__).parent.parent / "tests" / "data" / "constitution_ko.txt").read_text(encoding="utf-8")
        from synatra_local.core.llama_backend import LlamaModel

        n_ctx = 4096
        model = LlamaModel(path, n_ctx=n_ctx)
        chars = len(text) * args.prompt_tokens // len(model.tokenize(text, add_bos=True, special=False))
        prompt_text = text[:chars]
        prompt_ids = model.tokenize(prompt_text, add_bos=True, special=False)
        model.close()
        runs = []
        for _ in range(args.repeats):  # alternate, so that a busy moment does not favour one side
            runs.append(ours(path, prompt_text, args.tokens, args.threads, n_ctx) + reference(
                path, prompt_ids, args.tokens, args.threads, n_ctx
            ))
        medians = [statistics.median(col) for col in zip(*runs, strict=True)]
        our_prompt, our_decode, n_prompt, ref_prompt, ref_decode = medians
        bare_decode, engine_decode = same_context(path, prompt_text, args.tokens, args.threads, args.repeats)
        conversations = [ttft_turns(path, args.threads) for _ in range(args.repeats)]
        firsts = [statistics.median(col) for col in zip(*(c[0] for c in conversations), strict=True)]
        evaluated, positions = conversations[0][1], conversations[0][2]
        fresh_s, late_s = reference_context_cost(path, prompt_ids, evaluated[-1], positions[-1], args.threads)

    print(f"\nmachine: {machine()}; model {path.name}; threads {args.threads}")
    print(f"{'measure':<30}{'llama.cpp':>12}{'synatra-local':>15}{'ratio':>8}")
    print(f"{'prompt tok/s (' + str(int(n_prompt)) + ' tokens)':<30}{ref_prompt:>12.1f}{our_prompt:>15.1f}"
          f"{our_prompt / ref_prompt:>8.2f}")
    print(f"{'decode tok/s (' + str(args.tokens) + ' tokens)':<30}{ref_decode:>12.1f}{our_decode:>15.1f}"
          f"{our_decode / ref_decode:>8.2f}")
    print(f"{'decode, same context':<30}{bare_decode:>12.1f}{engine_decode:>15.1f}{engine_decode / bare_decode:>8.2f}"
          "  (bare llama_decode loop on the engine's own context, alternated)")
    print(f"TTFT turn 1: {firsts[0] * 1000:.0f} ms ({evaluated[0]} tokens evaluated); turn {len(firsts)}: "
          f"{firsts[-1] * 1000:.0f} ms ({evaluated[-1]} evaluated after {positions[-1]} cached); "
          f"ratio {firsts[-1] / firsts[0]:.2f} (target ≤ 1.2)")
    print(f"llama.cpp alone evaluates those {evaluated[-1]} tokens in {fresh_s * 1000:.0f} ms after none cached, "
          f"{late_s * 1000:.0f} ms after {positions[-1]} ({late_s / fresh_s:.2f}×: attending to a longer context); "
          f"our turn-{len(firsts)} TTFT is {firsts[-1] / late_s:.2f}× that")


if __name__ == "__main__":
    main()
