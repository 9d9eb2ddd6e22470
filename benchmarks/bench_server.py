"""Server benchmark: one streamed request through `synatra-local serve` vs the engine called directly, and 8 clients.

In one run, with the same model, prompt, seed and thread count:
  1. the engine called directly in this process (`engine.stream`), tokens/s;
  2. the same request streamed through the HTTP server (`synatra-local serve` in a child process, as deployed),
     read as server-sent events by a plain httpx client here, tokens/s; the ratio to (1) is the server's cost
     (target ≥ 0.95×);
  3. 8 clients streaming at once (threads here): total tokens/s, and that every request was answered.
Tokens/s is end to end (request to last token; the prompt is short and cached after the warm-up) and decode-only
(first to last token); CPU/token is the CPU time spent per token (for the server: its process and the client's),
which machine load disturbs less than wall-clock rates. The two single-request series alternate, run by run.
Without --model, a random Synatra-v0.1-shaped model is built in a temporary folder: `--shape tiny` (18M
parameters, well over 1000 tokens/s: the server's fixed per-token cost weighs far more than with a 7B model) or
`--shape small` (156M parameters, about 100 tokens/s on 2 cores).
Usage: python benchmarks/bench_server.py [--model PATH | --shape tiny|small] [--tokens N] [--threads N]
                                         [--clients N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

PROMPT = [{"role": "user", "content": "서울에 대해 길게 이야기해 주세요."}]


@dataclass
class Run:
    tokens: int
    seconds: float  # request to last token
    decode_seconds: float  # first to last token
    cpu_seconds: float = 0.0  # CPU time used for it: the engine's process, plus the client's for the server

    @property
    def cpu_per_token(self) -> float:
        return self.cpu_seconds / self.tokens if self.tokens else 0.0

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0


SHAPES = {"tiny": (), "small": (1024, 2816, 8, 16, 4, 4096)}


def build_model(folder: Path, shape: str) -> Path:
    from synatra_local.convert import quantize
    from synatra_local.convert.tiny import ModelShape, build_checkpoint

    checkpoint = build_checkpoint(folder / f"Synatra-V0.1-{shape}", version="v0.1", shape=ModelShape(*SHAPES[shape]))
    (path,) = quantize(checkpoint, ["Q8_0"], output_dir=folder / "models")
    return path


def direct_run(engine, tokens: int, seed: int) -> Run:
    from synatra_local.runtime.engine import GenerationOptions

    options = GenerationOptions(max_tokens=tokens, seed=seed)
    cpu = time.process_time()
    start = time.perf_counter()
    first = last = start
    with engine.stream(PROMPT, options) as generation:
        for _ in generation:
            last = time.perf_counter()
            if first == start:
                first = last
    return Run(generation.stats.generated_tokens, last - start, last - first, time.process_time() - cpu)


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_server_run(client, url: str, tokens: int, seed: int, server_pid: int) -> Run:
    """One request, with the CPU time of the server process and of this (client) process."""
    cpu = process_cpu(server_pid) + time.process_time()
    run = server_run(client, url, tokens, seed)
    run.cpu_seconds = process_cpu(server_pid) + time.process_time() - cpu
    return run


def server_run(client, url: str, tokens: int, seed: int) -> Run:
    body = {"messages": PROMPT, "max_tokens": tokens, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = start
    generated = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                if first == start:
                    first = last
    return Run(generated, last - start, last - first)


def start_server(model: Path, threads: int | None, ctx: int, interval_ms: float) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "synatra_local", "serve", str(model), "--port", "0", "--ctx", str(ctx),
            "--max-tokens-cap", str(ctx), "--stream-interval-ms", str(interval_ms)]
    if threads:
        argv += ["--threads", str(threads)]
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert child.stderr is not None
    for line in child.stderr:
        if found := re.search(r" on (http://\S+?:\d+)", line):
            threading.Thread(target=child.stderr.read, daemon=True).start()  # keep draining its log
            return child, found.group(1)
    sys.exit(f"the server did not start (exit code {child.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a .gguf (default: build a random model of --shape)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="the model built without --model")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per reply")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: llama.cpp's)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--stream-interval-ms", type=float, default=20, help="the server's --stream-interval-ms")
    parser.add_argument("--repeats", type=int, default=9, help="runs of each single-request measurement")
    args = parser.parse_args()

    import httpx

    from synatra_local.runtime.engine import Engine

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        model = args.model or build_model(Path(tmp), args.shape)
        ctx = max(1024, args.tokens * 2 + 128)
        engine = Engine(model, n_ctx=ctx, threads=args.threads)
        direct_run(engine, args.tokens, seed=1)  # warm-up (and a cached prompt, as the server will have)
        child, url = start_server(model, args.threads, ctx, args.stream_interval_ms)
        http = httpx.Client()  # one connection, kept alive, as a real client would
        try:
            server_run(http, url, args.tokens, seed=1)  # warm-up
            # alternate the two, so that drift in the machine's load weighs on both alike
            direct: list[Run] = []
            served: list[Run] = []
            for _ in range(args.repeats):
                direct.append(direct_run(engine, args.tokens, seed=1))
                served.append(measured_server_run(http, url, args.tokens, seed=1, server_pid=child.pid))

            results: list[Run | BaseException] = [RuntimeError("not run")] * args.clients

            def client(i: int) -> None:
                try:
                    with httpx.Client() as own:
                        results[i] = server_run(own, url, args.tokens, seed=100 + i)
                except BaseException as exc:
                    results[i] = exc

            workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            start = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            wall = time.perf_counter() - start
        finally:
            http.close()
            child.terminate()
            child.wait(timeout=30)
        engine.close()

    failures = [r for r in results if not isinstance(r, Run)]
    runs = [r for r in results if isinstance(r, Run)]
    total_tokens = sum(r.tokens for r in runs)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    d_tps, s_tps = median([r.tps for r in direct]), median([r.tps for r in served])
    d_dec, s_dec = median([r.decode_tps for r in direct]), median([r.decode_tps for r in served])
    paired = median([s.tps / d.tps for d, s in zip(direct, served, strict=True)])
    best = max(r.tps for r in served) / max(r.tps for r in direct)
    print(f"machine: {machine()}; {platform.platform()}; os.cpu_count() = {os.cpu_count()}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"model: {Path(model).name}; {args.tokens} tokens per reply; threads: {args.threads or 'default'}; "
          f"stream interval {args.stream_interval_ms:g} ms; median of {len(direct)} alternating runs; "
          f"load average {load}")
    print()
    d_cpu, s_cpu = median([r.cpu_per_token for r in direct]), median([r.cpu_per_token for r in served])
    print(f"{'measurement':<44} {'tokens/s':>10} {'decode tok/s':>13} {'CPU/token':>10} {'vs direct':>10}")
    print(f"{'engine called directly':<44} {d_tps:>10.1f} {d_dec:>13.1f} {d_cpu * 1e3:>8.2f}ms {'1.00×':>10}")
    print(f"{'one streamed request through the server':<44} {s_tps:>10.1f} {s_dec:>13.1f} {s_cpu * 1e3:>8.2f}ms "
          f"{paired:>9.2f}×  (median of paired runs; best/best {best:.2f}×, decode {s_dec / d_dec:.2f}×, "
          f"CPU cost {d_cpu / s_cpu:.2f}×; target ≥ 0.95×)")
    total_tps = total_tokens / wall
    print(f"{f'{args.clients} concurrent streamed clients, total':<44} {total_tps:>10.1f} {'':>13} {'':>10} "
          f"{total_tps / d_tps:>9.2f}×  ({len(runs)}/{args.clients} answered, {total_tokens} tokens "
          f"in {wall:.2f} s)")
    if failures:
        print(f"failures: {failures}")
        sys.exit(1)


if __name__ == "__main__":
    main()
