"""The parallel engine (runtime/batching.py): sequences decoded together, each request getting exactly its own reply.

Greedy replies decoded together equal the same requests decoded alone, on random weights and on real ones
(SmolLM2-135M-Instruct); seeds repeat under load; a cancelled request leaves the others whole; a new request
reuses the sequence its prompt continues; long prompts are read in chunks while others keep generating.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from synatra_local.core.errors import SynatraError
from synatra_local.core.llama_backend import LlamaModel
from synatra_local.runtime import batching
from synatra_local.runtime.batching import common_prefix
from synatra_local.runtime.engine import Engine, EngineBusy, GenerationOptions, Reply

GREEDY = GenerationOptions(max_tokens=24, temperature=0.0, repeat_penalty=1.0)
QUESTIONS = [
    "대한민국의 수도는 어디인가요?",
    "What is the capital of France?",
    "헌법 제1조를 알려 주세요.",
    "Name three colours.",
    "김치찌개 만드는 법을 알려 줘.",
    "How many legs does a spider have?",
]


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def together(engine: Engine, requests: list[tuple[list[dict[str, str]], GenerationOptions]]) -> list[Reply]:
    """Every request from its own thread, all released at once; also checks that they really overlapped."""
    replies: dict[int, Reply] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(requests))
    most = {"active": 0}

    def ask(i: int) -> None:
        try:
            barrier.wait()
            replies[i] = engine.chat(*requests[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most["active"] = max(most["active"], engine.active)
        time.sleep(0.001)
    assert not errors, errors
    assert most["active"] > 1, "the requests never ran together"
    return [replies[i] for i in range(len(requests))]


@pytest.fixture(scope="module")
def parallel(tiny_gguf_v01: Path) -> Iterator[Engine]:
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=4)
    yield engine
    engine.close()


def test_greedy_replies_together_equal_replies_alone(parallel: Engine) -> None:
    alone = [parallel.chat(_messages(q), GREEDY) for q in QUESTIONS]
    both = together(parallel, [(_messages(q), GREEDY) for q in QUESTIONS])  # six requests, four sequences
    assert [r.text for r in both] == [r.text for r in alone]
    assert [r.tokens for r in both] == [r.tokens for r in alone]
    assert len({r.text for r in alone}) == len(QUESTIONS), "distinct prompts must give distinct replies"


def test_seeded_sampling_repeats_under_load(parallel: Engine) -> None:
    requests = [(_messages(q), GenerationOptions(max_tokens=20, seed=40 + i)) for i, q in enumerate(QUESTIONS[:4])]
    alone = [parallel.chat(*request).text for request in requests]
    assert [r.text for r in together(parallel, requests)] == alone


def test_cancelling_one_leaves_the_others_whole(parallel: Engine) -> None:
    requests = [(_messages(q), GREEDY) for q in QUESTIONS[:3]]
    alone = [parallel.chat(*request).text for request in requests]
    victim = parallel.stream(_messages("끝없이 이야기해 주세요"), GenerationOptions(max_tokens=400, seed=1))
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = parallel.chat(*requests[i]).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    pieces = iter(victim)
    next(pieces)
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    victim.cancel()
    assert "".join(pieces) is not None
    for thread in threads:
        thread.join(60)
    assert victim.stats.stop_reason == "cancelled" and victim.stats.generated_tokens < 400
    assert [results[i] for i in range(3)] == alone


def test_a_reader_that_stops_early_frees_its_sequence(tiny_gguf_v01: Path) -> None:
    engine = Engine(tiny_gguf_v01, n_ctx=256, busy="error")
    try:
        generation = engine.stream(_messages("하나"), GenerationOptions(max_tokens=200, seed=1))
        for _ in generation:
            break  # the iterator is dropped without close()
        assert engine.wait_idle(10)
        assert generation.stats.stop_reason == "cancelled"
        assert engine.chat(_messages("둘"), GenerationOptions(max_tokens=3, seed=1)).stats.generated_tokens == 3
    finally:
        engine.close()


def test_busy_error_refuses_only_when_every_sequence_is_taken(tiny_gguf_v01: Path) -> None:
    engine = Engine(tiny_gguf_v01, n_ctx=256, parallel=2, busy="error")
    try:
        first = engine.stream(_messages("하나"), GenerationOptions(max_tokens=200, seed=1))
        second = engine.stream(_messages("둘"), GenerationOptions(max_tokens=200, seed=2))
        running = [iter(first), iter(second)]
        for pieces in running:
            next(pieces)
        with pytest.raises(EngineBusy):
            "".join(engine.stream(_messages("셋"), GenerationOptions(max_tokens=5)))
        first.close()
        assert first.stats.stop_reason == "cancelled"
        reply = engine.chat(_messages("셋"), GenerationOptions(max_tokens=5, seed=3))
        assert reply.stats.generated_tokens == 5
        second.close()
    finally:
        engine.close()


def test_each_conversation_continues_in_its_own_sequence(tiny_gguf_v01: Path) -> None:
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=2)
    try:
        options = GenerationOptions(max_tokens=12, seed=5)
        first = {name: _messages(f"{name}: 첫 질문입니다. First question from {name}.") for name in ("a", "b")}
        replies = {name: engine.chat(messages, options) for name, messages in first.items()}
        engine.wait_idle()
        for name, messages in first.items():  # the second turns, interleaved: each finds its own cache
            turn2 = [*messages, {"role": "assistant", "content": replies[name].text},
                     {"role": "user", "content": "둘째 질문. Second?"}]
            tokens = engine.prompt_tokens(turn2)
            cached = max(common_prefix(engine.cached_tokens(seq), tokens) for seq in range(2))
            assert cached >= replies[name].stats.prompt_tokens + replies[name].stats.generated_tokens
            reply = engine.chat(turn2, options)
            assert reply.stats.evaluated_prompt_tokens == len(tokens) - cached
            engine.wait_idle()
    finally:
        engine.close()


def test_a_long_prompt_is_read_in_chunks_while_another_reply_goes_on(tiny_gguf_v01: Path) -> None:
    engine = Engine(tiny_gguf_v01, n_ctx=1024, parallel=2, batch=16)
    try:
        talker = engine.stream(_messages("이야기"), GenerationOptions(max_tokens=300, seed=1))
        stamps: list[float] = []
        pieces = iter(talker)
        next(pieces)
        reader: dict[str, float] = {}

        def read_long() -> None:
            long = _messages("대한민국 헌법 제1조 대한민국은 민주공화국이다. " * 12)
            reader["start"] = time.perf_counter()
            generation = engine.stream(long, GenerationOptions(max_tokens=2, seed=2))
            next(iter(generation))
            reader["first"] = time.perf_counter()
            generation.close()
            reader["prompt"] = generation.stats.evaluated_prompt_tokens

        thread = threading.Thread(target=read_long)
        thread.start()
        for _ in pieces:
            stamps.append(time.perf_counter())
        thread.join(60)
        assert reader["prompt"] > 10 * 16  # more than ten batches' worth
        during = [t for t in stamps if reader["start"] < t < reader["first"]]
        assert len(during) >= 5, "the other reply stalled while the long prompt was read"
    finally:
        engine.close()


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_quantized_kv_cache(tiny_gguf_v01: Path, kv_type: str) -> None:
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=2, kv_type=kv_type)
    plain = Engine(tiny_gguf_v01, n_ctx=512, parallel=2)
    try:
        assert engine.kv_bytes < plain.kv_bytes
        assert engine.kv_bytes / plain.kv_bytes == pytest.approx({"q8_0": 34 / 64, "q4_0": 18 / 64}[kv_type])
        reply = engine.chat(_messages("안녕하세요"), GenerationOptions(max_tokens=8, seed=1))
        assert reply.stats.generated_tokens == 8
    finally:
        engine.close()
        plain.close()


def test_kv_bytes_counts_every_sequence(tiny_gguf_v01: Path) -> None:
    one, four = Engine(tiny_gguf_v01, n_ctx=512), Engine(tiny_gguf_v01, n_ctx=512, parallel=4)
    try:
        assert four.n_ctx == one.n_ctx == 512
        assert four.kv_bytes == 4 * one.kv_bytes
    finally:
        one.close()
        four.close()


def test_unknown_kv_type_and_parallel_out_of_range(tiny_gguf_v01: Path) -> None:
    with pytest.raises(SynatraError, match="q8_0"):
        Engine(tiny_gguf_v01, n_ctx=256, kv_type="q5_1")  # type: ignore[arg-type]
    with pytest.raises(SynatraError, match="parallel"):
        Engine(tiny_gguf_v01, n_ctx=256, parallel=0)


# --- logprobs ----------------------------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("fixture", ["tiny_gguf_v01", "smollm2_gguf"])
def test_logprobs_are_the_models_own_distribution(request: pytest.FixtureRequest, fixture: str) -> None:
    path = request.getfixturevalue(fixture)
    engine = Engine(path, n_ctx=512, parallel=2)
    try:
        messages = _messages("What is the capital of Japan? 일본의 수도는?")
        reply = engine.chat(messages, GenerationOptions(max_tokens=16, temperature=0, repeat_penalty=1.0, logprobs=5))
        prompt = engine.prompt_tokens(messages)
    finally:
        engine.close()
    assert len(reply.logprobs) == reply.stats.generated_tokens == len(reply.tokens)
    assert b"".join(entry.bytes for entry in reply.logprobs).decode("utf-8") == reply.text
    for token, entry in zip(reply.tokens, reply.logprobs, strict=True):
        assert entry.id == token and len(entry.top) == 5
        assert entry.top[0][0] == token, "a greedy token is the most likely one"
        assert [value for _, _, value in entry.top] == sorted((value for _, _, value in entry.top), reverse=True)
    # independently: every position's logits of the same tokens, evaluated in one go
    reference = LlamaModel(path, n_ctx=512, logits_all=True)
    try:
        reference.evaluate(prompt + reply.tokens)
        expected = _log_softmax(reference.logits()[len(prompt) - 1 : len(prompt) - 1 + len(reply.tokens)])
    finally:
        reference.close()
    for row, entry in zip(expected, reply.logprobs, strict=True):
        assert entry.logprob == pytest.approx(row[entry.id], abs=2e-3)
        for token, _, value in entry.top:
            assert value == pytest.approx(row[token], abs=2e-3)


def test_real_weights_greedy_replies_together_equal_replies_alone(smollm2_gguf: Path) -> None:
    """On real weights the logits depend a little on how the batch was made up and where the KV cells lie
    (llama.cpp's CPU flash attention accumulates in f16): measured here, the two most likely tokens' logprobs moved
    by up to 0.22 nats between a lone and a batched run of the same tokens. So greedy replies are equal token for
    token except where the lone run faced a near tie: there the two most likely tokens were within 0.5 nats (a
    probability ratio under 1.65) and the batched run picked the other of those two."""
    engine = Engine(smollm2_gguf, n_ctx=512, parallel=4)
    options = GenerationOptions(max_tokens=24, temperature=0.0, repeat_penalty=1.0, logprobs=2)
    try:
        alone = [engine.chat(_messages(q), options) for q in QUESTIONS]
        both = together(engine, [(_messages(q), options) for q in QUESTIONS])
    finally:
        engine.close()
    identical = 0
    for lone, batched in zip(alone, both, strict=True):
        if lone.tokens == batched.tokens:
            identical += 1
            continue
        k = common_prefix(lone.tokens, batched.tokens)
        (first, _, first_value), (second, _, second_value) = lone.logprobs[k].top
        assert first_value - second_value < 0.5, f"not a near tie: {lone.text!r} vs {batched.text!r}"
        assert {lone.tokens[k], batched.tokens[k]} == {first, second}
    # every difference is a near tie (above); how many ties flip depends on how the steps were batched
    assert identical >= len(QUESTIONS) // 2


def test_requests_sent_together_are_read_in_one_step_on_consecutive_sequences(
    tiny_gguf_v01: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle engine waits a moment for requests arriving together, so their prompts share the first step; and
    sequences are chosen next to busy ones, since llama.cpp (one KV cache per sequence) decodes only runs of
    consecutive sequence ids in one pass over the weights."""
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=4)
    steps: list[list[int]] = []
    real_decode = LlamaModel.decode

    def decode(model: LlamaModel, entries: list) -> None:
        steps.append([entry.seq for entry in entries])
        real_decode(model, entries)

    monkeypatch.setattr(LlamaModel, "decode", decode)
    # the mechanism, not this machine's timing: a wide window, so a loaded test machine cannot split the arrivals
    monkeypatch.setattr(batching, "ARRIVAL_QUIET", 0.2)
    monkeypatch.setattr(batching, "ARRIVAL_MAX", 1.0)
    try:
        for round_ in range(3):  # later rounds start from used, non-empty sequences
            steps.clear()
            together(engine, [(_messages(f"{round_}-{i}. {q}"), GREEDY) for i, q in enumerate(QUESTIONS[:3])])
            engine.wait_idle()
            first = sorted(set(steps[0]))
            assert len(first) == 3, f"round {round_}: the first step read {first}"
            assert first == list(range(first[0], first[0] + 3)), f"round {round_}: not consecutive: {first}"
            assert steps[0] == sorted(steps[0]), "the batch lists its entries in sequence order"
    finally:
        engine.close()


def test_a_shared_system_prompt_is_copied_from_another_sequence_not_read_again(tiny_gguf_v01: Path) -> None:
    """A new request on an empty sequence takes the long prefix another sequence already holds (a copy of that
    sequence's KV cache) and reads only the rest; its reply is the one a fresh engine gives."""
    system = {"role": "system", "content": "당신은 친절한 한국어 도우미입니다. " * 3}
    # a first conversation that goes on well past the shared prompt, so it keeps its own sequence
    first = [system, {"role": "user", "content": "첫 번째 질문입니다. 아주 긴 이야기를 합니다. " * 6}]
    second = [system, {"role": "user", "content": "What is the second question?"}]
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=2)
    try:
        engine.chat(first, GREEDY)
        engine.wait_idle()
        tokens = engine.prompt_tokens(second)
        shared = common_prefix(engine.cached_tokens(0), tokens)
        assert shared >= batching.copy_threshold(engine._model)
        copied = engine.chat(second, GREEDY)
        assert engine.cached_tokens(0)[:shared] == engine.cached_tokens(1)[:shared], "the first sequence is kept"
        assert copied.stats.evaluated_prompt_tokens == len(tokens) - shared
    finally:
        engine.close()
    fresh = Engine(tiny_gguf_v01, n_ctx=512, parallel=2)
    try:
        alone = fresh.chat(second, GREEDY)
    finally:
        fresh.close()
    assert alone.stats.evaluated_prompt_tokens == len(tokens)
    assert copied.tokens == alone.tokens


def test_a_finished_turns_end_waits_until_no_request_runs(tiny_gguf_v01: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last tokens of a finished turn are evaluated for that conversation's next turn, but not beside a running
    request: in one batch with another sequence they would cost llama.cpp a pass over the weights of their own."""
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=2)
    steps: list[set[int]] = []
    real_decode = LlamaModel.decode

    def decode(model: LlamaModel, entries: list) -> None:
        steps.append({entry.seq for entry in entries})
        real_decode(model, entries)

    monkeypatch.setattr(LlamaModel, "decode", decode)
    try:
        talker = engine.stream(_messages("이야기를 길게 해 주세요."), GenerationOptions(max_tokens=80, seed=1))
        pieces = iter(talker)
        next(pieces)
        short = engine.chat(_messages("짧게 답해 주세요."), GenerationOptions(max_tokens=2, seed=2))
        short_done = len(steps)
        rest = "".join(pieces)
        assert talker.stats.generated_tokens > 10, f"the talker ended too soon to overlap: {rest!r}"
        engine.wait_idle()
        tokens = engine.prompt_tokens(_messages("짧게 답해 주세요."))
        short_seq = next(seq for seq in range(2) if engine.cached_tokens(seq)[: len(tokens)] == tokens)
        # the short turn's end is read only in the last step: with the talker's own end, once nothing runs
        later = [i for i, step in enumerate(steps) if short_seq in step and i >= short_done]
        assert later == [len(steps) - 1], (later, len(steps))
        assert len(engine.cached_tokens(short_seq)) > len(tokens) + short.stats.generated_tokens - 1
    finally:
        engine.close()


def test_a_request_sent_just_after_a_reply_does_not_wait_behind_its_end(
    tiny_gguf_v01: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished turn's end is read only once no request comes for a moment: a request sent right after a reply
    is read in the next step (the end waits until it is done), not a whole step later."""
    engine = Engine(tiny_gguf_v01, n_ctx=512, parallel=2)
    steps: list[set[int]] = []
    real_decode = LlamaModel.decode

    def decode(model: LlamaModel, entries: list) -> None:
        steps.append({entry.seq for entry in entries})
        real_decode(model, entries)

    monkeypatch.setattr(LlamaModel, "decode", decode)
    monkeypatch.setattr(batching, "TAIL_DELAY", 1.0)  # the mechanism, not this machine's timing
    try:
        engine.chat(_messages("첫 질문입니다."), GenerationOptions(max_tokens=3, seed=1))
        first_done = len(steps)
        second = engine.chat(_messages("Another question, please."), GenerationOptions(max_tokens=3, seed=2))
        tokens = engine.prompt_tokens(_messages("Another question, please."))
        engine.wait_idle()
        second_seq = next(seq for seq in range(2) if engine.cached_tokens(seq)[: len(tokens)] == tokens)
        assert second_seq in steps[first_done], "the second prompt was not read in the first step after the reply"
        assert len(steps) == first_done + second.stats.generated_tokens + 1, "the ends are read once, at the end"
        first_seq = 1 - second_seq
        assert first_seq in steps[-1] and all(first_seq not in step for step in steps[first_done:-1])
    finally:
        engine.close()


@pytest.mark.parametrize("spread", [0.5, 3.0, 40.0])
def test_token_logprob_finds_the_true_top_alternatives(spread: float) -> None:
    """The top alternatives are looked for near the best logit first: whether many, few or none of the others lie
    there (a flat, an ordinary and a peaked row), they are the row's true best, in order, with float64 values."""

    class Bytes:
        @staticmethod
        def token_bytes(token: int) -> bytes:
            return str(token).encode()

    rng = np.random.default_rng(7)
    row = (rng.standard_normal(49152) * spread).astype(np.float32)
    exact = row.astype(np.float64) - row.max()
    exact -= np.log(np.exp(exact).sum())
    for top in (1, 5, 20):
        entry = batching.token_logprob(Bytes(), row, 123, top)  # type: ignore[arg-type]
        assert entry.logprob == pytest.approx(exact[123], abs=1e-5)
        assert [t for t, _, _ in entry.top] == list(np.argsort(-exact, kind="stable")[:top])
        assert [v for _, _, v in entry.top] == pytest.approx(sorted(exact, reverse=True)[:top], abs=1e-5)
    whole = batching.token_logprob(Bytes(), row[:8], 0, 20)  # type: ignore[arg-type]
    assert len(whole.top) == 8
