"""`synatra-local serve --parallel 4` on real weights (SmolLM2-135M-Instruct), driven by the official openai client:
many streamed chats at once, each its own reply; seeds under load; a dropped stream; logprobs in OpenAI's shapes.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

QUESTIONS = [
    "What is the capital of France?", "Name three colours.", "How many legs does a spider have?",
    "What is 2 + 2?", "Say hello in Korean.", "What is the largest ocean?", "Who wrote Hamlet?",
    "What colour is the sky?",
]
NEAR_TIE = 0.5  # nats between the two most likely tokens where a batch may round the other way (test_batching)


@pytest.fixture(scope="module")
def server(smollm2_gguf: Path) -> Iterator[tuple[str, str]]:
    """The real command, as a user starts it; yields (base URL, what it printed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "synatra_local", "serve", str(smollm2_gguf), "--port", "0", "--ctx", "512",
            "--parallel", "4", "--model-id", "smol"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
                               cwd=smollm2_gguf.parent)
    printed, url = "", None
    try:
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            printed += line
            if found := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
                url = found.group(1)
        assert url, printed
        yield url, printed
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, question: str, **kwargs: object) -> tuple[str, list]:
    """A streamed chat: the text and each chunk's logprob entries."""
    text, entries = "", []
    for chunk in client.chat.completions.create(model="smol", messages=[{"role": "user", "content": question}],
                                                stream=True, **kwargs):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                entries += chunk.choices[0].logprobs.content
    return text, entries


def all_at_once(server_url: str, calls: list[dict]) -> list[tuple[str, list]]:
    results: dict[int, tuple[str, list]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        try:
            own = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)
            barrier.wait()
            results[i] = ask(own, **calls[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    return [results[i] for i in range(len(calls))]


def test_the_command_prints_what_the_kv_cache_costs(server: tuple[str, str]) -> None:
    found = re.search(r"KV cache: 4 sequences × 512 tokens, f16, (\d+) MiB", server[1])
    assert found, server[1]
    # SmolLM2-135M: 30 layers, K and V of 3 heads × 64 each, 2 bytes, 4 × 512 cells
    assert int(found.group(1)) == round(30 * 2 * 3 * 64 * 2 * 4 * 512 / 2**20)


def test_eight_streamed_chats_on_four_sequences_each_get_their_own_reply(server, client) -> None:
    greedy = {"max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 2,
              "extra_body": {"repeat_penalty": 1.0}}
    alone = [ask(client, q, **greedy) for q in QUESTIONS]
    together = all_at_once(server[0], [{"question": q, **greedy} for q in QUESTIONS])
    identical = 0
    for (lone_text, lone), (text, batched) in zip(alone, together, strict=True):
        if text == lone_text:
            identical += 1
            continue
        k = next(i for i, (a, b) in enumerate(zip(lone, batched, strict=False)) if a.token != b.token)
        first, second = lone[k].top_logprobs[:2]
        assert first.logprob - second.logprob < NEAR_TIE, (lone_text, text)
    # every difference is a near tie (above); how many ties flip depends on how the steps were batched
    assert identical >= len(QUESTIONS) // 2
    health = httpx.get(f"{server[0]}/health").json()
    assert health["parallel"] == 4 and health["active"] == 0 and health["waiting"] == 0


def test_seeds_repeat_under_load(server, client) -> None:
    calls = [{"question": q, "max_tokens": 16, "seed": 7 + i, "temperature": 0.8} for i, q in enumerate(QUESTIONS)]
    alone = [ask(client, **call)[0] for call in calls]
    assert [text for text, _ in all_at_once(server[0], calls)] == alone


def test_a_dropped_stream_leaves_the_others_whole(server, client) -> None:
    calls = [{"question": q, "max_tokens": 20, "temperature": 0} for q in QUESTIONS[:3]]
    alone = [ask(client, **call)[0] for call in calls]
    body = {"model": "smol", "stream": True, "max_tokens": 400,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}
    cancelled = httpx.get(f"{server[0]}/health").json()["cancelled"]
    results: list[list[str]] = []
    with httpx.Client(timeout=60) as raw, raw.stream("POST", f"{server[0]}/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        worker = threading.Thread(target=lambda: results.append([t for t, _ in all_at_once(server[0], calls)]))
        worker.start()
        time.sleep(0.2)
    worker.join(180)
    assert results == [alone]
    health = httpx.get(f"{server[0]}/health").json()
    assert health["cancelled"] == cancelled + 1 and health["status"] == "ok"


def test_chat_logprobs_in_openai_shape(client) -> None:
    messages = [{"role": "user", "content": "Say hello in Korean."}]
    reply = client.chat.completions.create(model="smol", messages=messages, max_tokens=12, temperature=0,
                                           logprobs=True, top_logprobs=3, extra_body={"repeat_penalty": 1.0})
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    # a reply cut by max_tokens may end inside a character: the text shows U+FFFD for it, as decoding the bytes does
    data = bytes(b for entry in content for b in entry.bytes)
    assert data.decode("utf-8", errors="replace") == reply.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob <= 0 and math.isclose(entry.logprob, entry.top_logprobs[0].logprob)
    streamed_text, streamed = ask(client, "Say hello in Korean.", max_tokens=12, temperature=0, logprobs=True,
                                  top_logprobs=3, extra_body={"repeat_penalty": 1.0})
    assert streamed_text == reply.choices[0].message.content
    assert [e.token for e in streamed] == [e.token for e in content]
    without = client.chat.completions.create(model="smol", messages=messages, max_tokens=4)
    assert without.choices[0].logprobs is None


def test_completion_logprobs_in_the_legacy_shape(client) -> None:
    reply = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=6, temperature=0,
                                      logprobs=2, extra_body={"repeat_penalty": 1.0})
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert max(top, key=top.get) == token and math.isclose(top[token], value)


def test_logprob_requests_out_of_range_are_400(server) -> None:
    url = f"{server[0]}/v1/chat/completions"
    body = {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for extra, param in (({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                         ({"top_logprobs": 2}, "top_logprobs")):
        response = httpx.post(url, json={**body, **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == param
