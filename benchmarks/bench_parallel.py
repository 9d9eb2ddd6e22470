"""Many clients at once: `synatra-local serve --parallel 8` against llama-server `-np 8` and `serve --parallel 1`.

In one run, with the same GGUF, the same threads and the same context per sequence, each server is started as a
child process and, for 1, 2, 4 and 8 concurrent clients (distinct prompts, streamed, greedy, `--tokens` new tokens
each), measured for total generated tokens/s (all tokens over the wall time from the first request to the last
token) and the median time to first token a client sees (each run's prompts are new to every server's cache).
llama-server is built from the pinned binding's vendored llama.cpp (tests/llama_cpp_tools.py); it runs with
`--kv-unified` off and a context of 8 × `--ctx`, so each of its slots gets the same context as each of our
sequences. All servers run at once; every cell is measured on each in turn, the order reversed each of the
`--rounds` rounds, so drift in the machine's speed hits all of them alike; each cell reports the median over the
rounds, each ratio the median of the rounds' ratios, and every round's ratios are printed too. Ours streams with
its default event interval (20 ms; the first event is never held) unless `--stream-interval-ms` says otherwise.

Also: single-stream decode through the engine against a bare llama_decode loop (bench_runtime's same-context
comparison), JSON-schema decode against unconstrained, and the cost of logprobs.
Usage: python benchmarks/bench_parallel.py [--model PATH | --shape tiny|small] [--tokens N] [--threads N] [--ctx N]
                                           [--clients 1,2,4,8] [--parallel 8] [--rounds 3] [--skip-single]
                                           [--stream-interval-ms MS] [--skip-costs | --skip-servers]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _measure import machine  # noqa: E402
from bench_server import build_model  # noqa: E402

QUESTIONS = [
    "서울에 대해 이야기해 주세요.", "Tell me about the sea.", "한국의 사계절을 설명해 주세요.",
    "Describe a forest.", "김치에 대해 알려 주세요.", "Explain how rain forms.", "대한민국 헌법에 대해 말해 주세요.",
    "Describe a city at night.",
]
COST_ROUNDS = 9
# between two servers' turns, so that nothing the last one does after its replies falls into the next one's
# measurement: its compute threads stop polling, and it reads its finished turns' ends (ours waits TAIL_DELAY,
# then one step)
SETTLE_SECONDS = 2.0
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
    "required": ["name", "age", "tags"],
}


def wait_for(process: subprocess.Popen, url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ours(
    model: Path, parallel: int, threads: int, ctx: int, interval_ms: float | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "synatra_local", "serve", str(model), "--port", str(port), "--ctx", str(ctx),
            "--parallel", str(parallel), "--threads", str(threads)]
    if interval_ms is not None:
        argv += ["--stream-interval-ms", str(interval_ms)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(process, url)
    return process, url


def start_llama_server(model: Path, parallel: int, threads: int, ctx: int) -> tuple[subprocess.Popen, str]:
    from llama_cpp_tools import tool

    port = free_port()
    argv = [str(tool("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(parallel), "-c", str(ctx * parallel), "-t", str(threads), "-tb", str(threads), "-b", "512",
            "-ub", "512", "-fa", "on", "--no-kv-unified", "--no-webui", "--no-warmup"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(process, url)
    return process, url


def one_client(url: str, question: str, tokens: int, ready: threading.Barrier, out: list) -> None:
    """One streamed chat; the HTTP client is made before the barrier, so every request leaves at once (an httpx
    client takes tens of milliseconds of this process's CPU to make)."""
    import httpx

    body = {"model": "m", "stream": True, "max_tokens": tokens, "temperature": 0, "repeat_penalty": 1.0,
            "messages": [{"role": "user", "content": question}],
            "stream_options": {"include_usage": True}}
    first = None
    generated = prompt = 0
    with httpx.Client(timeout=600) as client:
        ready.wait()
        sent = time.perf_counter()
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    generated, prompt = data["usage"]["completion_tokens"], data["usage"]["prompt_tokens"]
                if data.get("choices") and data["choices"][0]["delta"].get("content") and first is None:
                    first = time.perf_counter()
    out.append((first - sent if first else float("nan"), generated, prompt, sent, time.perf_counter()))


def clients_run(url: str, clients: int, tokens: int, tag: int) -> tuple[float, float, int, int]:
    """Total generated tokens/s, median time to first token, generated and prompt tokens for `clients` streams sent
    at once (prompt tokens as each server counts them: both must read the same prompts for TTFT to compare).

    Each prompt starts with the run's `tag`, so no run's prompts continue an earlier run's cached ones: the time to
    first token is the whole prompt's evaluation, on both servers alike."""
    results: list = []
    ready = threading.Barrier(clients)
    threads = [threading.Thread(target=one_client,
                                args=(url, f"{tag}-{i}. {QUESTIONS[i % len(QUESTIONS)]}", tokens, ready, results))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    start = min(r[3] for r in results)
    end = max(r[4] for r in results)
    generated = sum(r[1] for r in results)
    return generated / (end - start), statistics.median(r[0] for r in results), generated, sum(r[2] for r in results)


def engine_costs(model: Path, threads: int, tokens: int) -> dict[str, float]:
    """Decode tok/s: unconstrained vs JSON schema vs logprobs (20 alternatives), alternated, one engine; the median
    of COST_ROUNDS replies each (one short reply swings by ±10% on this shared machine)."""
    from synatra_local.runtime.engine import Engine, GenerationOptions

    engine = Engine(model, n_ctx=2048, threads=threads, gpu_layers=0)
    prompt = [{"role": "user", "content": "Describe a person as JSON. 사람을 JSON으로 설명해 주세요."}]
    kinds = {
        "plain": GenerationOptions(max_tokens=tokens, temperature=0, repeat_penalty=1.0),
        "json_schema": GenerationOptions(max_tokens=tokens, temperature=0, repeat_penalty=1.0, json_schema=SCHEMA),
        "logprobs": GenerationOptions(max_tokens=tokens, temperature=0, repeat_penalty=1.0, logprobs=20),
    }
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(COST_ROUNDS):
        for kind, options in kinds.items():
            engine.forget_cache()
            generation = engine.stream(prompt, options)
            "".join(generation)
            rates[kind].append(generation.stats.tokens_per_second)
    engine.close()
    return {kind: statistics.median(values) for kind, values in rates.items()}


def compare_servers(model: Path, args: argparse.Namespace, counts: list[int]) -> None:
    """Every server running at once; each cell (client count) measured on each server in turn, the order reversed
    every round, so the machine's drift hits all of them alike. Cells are medians over the rounds; a ratio is the
    median of the rounds' ratios (each from back-to-back measurements)."""
    n, threads, ctx = args.parallel, args.threads, args.ctx
    starts = {
        f"llama-server -np {n}": lambda: start_llama_server(model, n, threads, ctx),
        f"serve --parallel {n}": lambda: start_ours(model, n, threads, ctx, args.stream_interval_ms),
    }
    if not args.skip_single:
        starts["serve --parallel 1"] = lambda: start_ours(model, 1, threads, ctx, args.stream_interval_ms)
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    rounds: list[dict[str, dict[int, tuple[float, float, int, int]]]] = []
    try:
        for name, start in starts.items():
            try:
                running[name] = start()
            except Exception as exc:  # noqa: BLE001 - llama-server may be unavailable: say so and go on
                print(f"{name}: unavailable ({exc})")
        for _, url in running.values():
            clients_run(url, 1, 4, tag=0)  # warm-up
        tag = 0
        for number in range(args.rounds):
            table: dict[str, dict[int, tuple[float, float, int, int]]] = {name: {} for name in running}
            order = list(running) if number % 2 == 0 else list(reversed(running))
            for count in counts:
                for name in order:
                    time.sleep(SETTLE_SECONDS)
                    tag += 1  # every run's prompts are new to every server's cache
                    table[name][count] = clients_run(running[name][1], count, args.tokens, tag=tag)
            rounds.append(table)
    finally:
        for process, _ in running.values():
            process.terminate()
            process.wait(30)
    if not rounds:
        return
    print(f"\n{'server (median of rounds)':<26}" + "".join(f"{f'{c} clients':>26}" for c in counts))
    for name in running:
        cells = [(statistics.median(r[name][c][0] for r in rounds), statistics.median(r[name][c][1] for r in rounds))
                 for c in counts]
        print(f"{name:<26}" + "".join(f"{f'{rate:.1f} tok/s, TTFT {ttft:.2f} s':>26}" for rate, ttft in cells))
    print("tokens generated / prompt tokens read (round 1): " + "; ".join(
        f"{name}: " + ", ".join(f"{rounds[0][name][c][2]}/{rounds[0][name][c][3]}" for c in counts)
        for name in running))
    reference, ours = f"llama-server -np {n}", f"serve --parallel {n}"
    if reference not in running or ours not in running:
        return

    def ratios(c: int) -> tuple[list[float], list[float]]:
        each = [(r[ours][c][0] / r[reference][c][0], r[ours][c][1] / r[reference][c][1]) for r in rounds]
        return [x[0] for x in each], [x[1] for x in each]

    print("ours / llama-server, median of rounds: " + ", ".join(
        f"{c} clients {statistics.median(ratios(c)[0]):.2f}× tok/s, {statistics.median(ratios(c)[1]):.2f}× TTFT"
        for c in counts))
    for c in counts:
        throughput, ttft = ratios(c)
        print(f"  {c} clients, each round: tok/s " + " ".join(f"{x:.2f}×" for x in throughput)
              + "; TTFT " + " ".join(f"{x:.2f}×" for x in ttft))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--shape", choices=["tiny", "small"], default="small")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--stream-interval-ms", type=float, default=None,
                        help="ours: shortest time between events (default: serve's own, 20 ms; 0 sends an event "
                             "per token, as llama-server streams)")
    parser.add_argument("--rounds", type=int, default=3, help="times every cell is measured on every server")
    parser.add_argument("--skip-single", action="store_true", help="leave out `serve --parallel 1`")
    parser.add_argument("--skip-costs", action="store_true", help="only the servers")
    parser.add_argument("--skip-servers", action="store_true", help="only one stream's costs (JSON schema, logprobs)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    from synatra_local.server.app import DEFAULT_STREAM_INTERVAL

    default_ms = f"{DEFAULT_STREAM_INTERVAL * 1000:g} (serve's default)"
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        model = args.model or build_model(Path(tmp), args.shape)
        print(f"machine: {machine()}\nmodel: {model.name}, {args.threads} threads, {args.tokens} tokens per client, "
              f"ctx {args.ctx} per sequence; ours streams at most one event per "
              f"{args.stream_interval_ms if args.stream_interval_ms is not None else default_ms} ms")
        if not args.skip_servers:
            compare_servers(model, args, counts)
        if args.skip_costs:
            return
        costs = engine_costs(model, args.threads, args.tokens)
        print(f"\nengine decode, one stream: plain {costs['plain']:.1f} tok/s, JSON schema {costs['json_schema']:.1f} "
              f"({costs['json_schema'] / costs['plain']:.2f}×), logprobs (20) {costs['logprobs']:.1f} "
              f"({costs['logprobs'] / costs['plain']:.2f}×)")
        from bench_runtime import same_context

        bare, engine = same_context(model, QUESTIONS[0] * 4, args.tokens, args.threads, COST_ROUNDS)
        print(f"engine vs a bare llama_decode loop on its own context: {engine:.1f} vs {bare:.1f} tok/s "
              f"({engine / bare:.2f}×, median of {COST_ROUNDS} alternated pairs)")


if __name__ == "__main__":
    main()
