"""The runtime Engine on tiny random-weight GGUFs: streaming, sampling, stops, cancel, threads, KV reuse, limits."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from synatra_local.core.errors import ModelFileError, SynatraError
from synatra_local.runtime.detokenizer import StreamingDetokenizer
from synatra_local.runtime.engine import (
    ContextOverflow,
    Engine,
    EngineBusy,
    GenerationOptions,
)

HELLO = [{"role": "user", "content": "안녕하세요, 자기소개 해 주세요. Introduce yourself."}]


@pytest.fixture(scope="module")
def engine(tiny_gguf_v01: Path) -> Iterator[Engine]:
    """A v0.1 engine with a big context (busy='wait', the default)."""
    eng = Engine(tiny_gguf_v01, n_ctx=4096)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def small(tiny_gguf_v01: Path) -> Iterator[Engine]:
    """A v0.1 engine with a 256-token context that refuses concurrent requests."""
    eng = Engine(tiny_gguf_v01, n_ctx=256, busy="error")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def chatml(tiny_gguf_v03: Path) -> Iterator[Engine]:
    eng = Engine(tiny_gguf_v03, n_ctx=512)
    yield eng
    eng.close()


class _ForcedSampler:
    """Hands out `ids`, then the end-of-generation token, whatever the logits say."""

    def __init__(self, ids: list[int], end: int) -> None:
        self._ids = iter(ids)
        self._end = end

    def sample(self, index: int) -> int:
        return next(self._ids, self._end)

    def close(self) -> None:
        pass


def _force_reply(engine: Engine, monkeypatch: pytest.MonkeyPatch, forced: list[int]) -> None:
    """Real llama.cpp decoding (prompt and reply go through the KV cache), with the sampler forced to `forced`."""
    end = engine._model.eos_id
    monkeypatch.setattr(engine._model, "sampler", lambda params, *, seed, grammar=None: _ForcedSampler(forced, end))


_fake_stream = _force_reply


# --- streaming text -------------------------------------------------------------------------------------


def test_constitution_streams_exactly_through_real_token_bytes(engine: Engine, constitution_text: str) -> None:
    model = engine._model
    ids = model.tokenize(constitution_text, add_bos=False, special=False)
    byte_tokens = [i for i in ids if len(model.token_bytes(i)) == 1 and model.token_bytes(i)[0] >= 0x80]
    assert len(byte_tokens) > 100, "the text must exercise byte-fallback tokens"
    detokenizer = StreamingDetokenizer(model.token_bytes)
    pieces = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == constitution_text
    assert detokenizer.text == constitution_text


# --- sampling ------------------------------------------------------------------------------------------


def test_same_seed_same_text_different_seed_different_text(engine: Engine) -> None:
    options = GenerationOptions(max_tokens=40, seed=7)
    first = engine.chat(HELLO, options)
    again = engine.chat(HELLO, options)
    assert first.text and first.text == again.text
    others = {engine.chat(HELLO, GenerationOptions(max_tokens=40, seed=s)).text for s in (8, 9, 10)}
    assert any(text != first.text for text in others)


def test_unseeded_requests_vary_after_a_seeded_one(engine: Engine) -> None:
    engine.chat(HELLO, GenerationOptions(max_tokens=12, seed=5))
    texts = {engine.chat(HELLO, GenerationOptions(max_tokens=12)).text for _ in range(3)}
    assert len(texts) > 1


def test_max_tokens_respected(engine: Engine) -> None:
    for n in (1, 17):
        reply = engine.chat(HELLO, GenerationOptions(max_tokens=n, seed=3))
        assert reply.stats.stop_reason == "max_tokens"
        assert reply.stats.generated_tokens == n


def test_stop_string_ends_before_it(engine: Engine) -> None:
    seeded = GenerationOptions(max_tokens=60, seed=11, repeat_penalty=1.1)
    full = engine.chat(HELLO, seeded).text
    stop = next(full[i : i + 3] for i in range(5, len(full) - 3) if full[i : i + 3].strip() == full[i : i + 3])
    cut = full.index(stop)
    reply = engine.chat(HELLO, GenerationOptions(max_tokens=60, seed=11, stop=(stop,)))
    assert reply.stats.stop_reason == "stop"
    assert reply.text == full[:cut]
    assert stop not in reply.text


def test_stats(engine: Engine) -> None:
    messages = [{"role": "user", "content": "통계 테스트: 몇 개의 토큰인가요? How many tokens?"}]
    expected = len(engine.prompt_tokens(messages))
    generation = engine.stream(messages, GenerationOptions(max_tokens=12, seed=1))
    text = "".join(generation)
    stats = generation.stats
    assert generation.text == text
    assert stats.prompt_tokens == expected
    assert stats.time_to_first_token > 0
    assert stats.generation_seconds >= stats.time_to_first_token
    assert stats.generated_tokens == 12
    assert stats.tokens_per_second > 0
    assert 0 < stats.evaluated_prompt_tokens <= expected
    assert stats.dropped_turns == 0


# --- cancellation and threads --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["engine", "generation"])
def test_cancel_from_another_thread(engine: Engine, how: str) -> None:
    generation = engine.stream(HELLO, GenerationOptions(max_tokens=2000, seed=5))
    cancel = engine.cancel if how == "engine" else generation.cancel
    timer = threading.Timer(0.05, cancel)
    pieces = 0
    try:
        for _ in generation:
            pieces += 1
            if pieces == 1:
                timer.start()
    finally:
        timer.cancel()
    assert generation.stats.stop_reason == "cancelled"
    assert 0 < generation.stats.generated_tokens < 1000
    after = engine.chat(HELLO, GenerationOptions(max_tokens=5, seed=1))
    assert after.stats.stop_reason == "max_tokens" and after.stats.generated_tokens == 5


def test_cancel_when_idle_is_harmless(engine: Engine) -> None:
    engine.cancel()
    reply = engine.chat(HELLO, GenerationOptions(max_tokens=3, seed=1))
    assert reply.stats.stop_reason == "max_tokens"


def test_busy_error_refuses_a_concurrent_stream(small: Engine) -> None:
    first = small.stream(HELLO, GenerationOptions(max_tokens=100, seed=1))
    iterator = iter(first)
    next(iterator)  # holds the engine now
    errors: list[BaseException] = []

    def second() -> None:
        try:
            "".join(small.stream(HELLO, GenerationOptions(max_tokens=5)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    worker = threading.Thread(target=second)
    worker.start()
    worker.join(30)
    first.close()
    assert len(errors) == 1 and isinstance(errors[0], EngineBusy)
    assert isinstance(errors[0], SynatraError)
    # once the first is closed, the engine serves again
    reply = small.chat(HELLO, GenerationOptions(max_tokens=4, seed=1))
    assert reply.stats.generated_tokens == 4


def test_busy_wait_serialises_threads(engine: Engine) -> None:
    spans: dict[str, tuple[float, float, int, str | None]] = {}

    def worker(name: str, seed: int) -> None:
        generation = engine.stream(HELLO, GenerationOptions(max_tokens=80, seed=seed))
        times = [time.perf_counter() for _ in generation]
        spans[name] = (times[0], times[-1], generation.stats.generated_tokens, generation.stats.stop_reason)

    threads = [threading.Thread(target=worker, args=(name, seed)) for name, seed in (("a", 1), ("b", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(spans) == {"a", "b"}
    for _, _, generated, reason in spans.values():
        assert (generated, reason) == (80, "max_tokens")
    (a0, a1, _, _), (b0, b1, _, _) = spans["a"], spans["b"]
    assert a1 < b0 or b1 < a0, "the two generations interleaved"


# --- KV cache reuse ------------------------------------------------------------------------------------


def test_next_turn_after_end_of_turn_evaluates_only_new_tokens(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    model = engine._model
    # "안녕" spelled as its six UTF-8 byte tokens (<0xNN> is id NN + 3): the tokenizer would never produce them
    reply_ids = [b + 3 for b in "안녕".encode()] + model.tokenize("하세요 OK", add_bos=False, special=False)
    eos = 2
    assert model.is_end_of_generation(eos)
    messages = [{"role": "user", "content": "첫 번째 질문입니다. First question."}]
    tokens1 = engine.prompt_tokens(messages)
    with monkeypatch.context() as patch:
        _force_reply(engine, patch, [*reply_ids, eos])
        generation = engine.stream(messages, GenerationOptions(max_tokens=50))
        text = "".join(generation)
    assert generation.stats.stop_reason == "end_of_turn"
    assert generation.stats.generated_tokens == len(reply_ids)
    assert text == "안녕 하세요 OK"

    turn2 = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "두 번째 질문. Second?"}]
    tokens2 = engine.prompt_tokens(turn2)
    assert tokens2[: len(tokens1) + len(reply_ids) + 1] == tokens1 + reply_ids + [eos]
    fresh = model.tokenize(engine.render(turn2), add_bos=False, special=True)
    assert fresh != tokens2, "re-tokenizing the text would have lost the cached reply tokens"
    new_text = engine.render(turn2)[len(engine.render(messages) + text + "</s>") :]
    assert new_text.startswith("[INST] 두 번째 질문")
    assert tokens2[len(tokens1) + len(reply_ids) + 1 :] == model.tokenize(new_text, add_bos=False, special=True)

    engine.wait_idle()  # the user reads the reply: meanwhile its last token and end token are evaluated
    generation = engine.stream(turn2, GenerationOptions(max_tokens=4, seed=1))
    "".join(generation)
    # Only the new turn's text: the reply's last token and its end token were evaluated right after the reply.
    new_tokens = len(tokens2) - len(tokens1) - len(reply_ids) - 1
    assert generation.stats.prompt_tokens == len(tokens2)
    assert generation.stats.evaluated_prompt_tokens == new_tokens


def test_next_turn_after_max_tokens_reuses_the_cache(engine: Engine) -> None:
    messages = [{"role": "user", "content": "긴 대답을 해 주세요. A long answer please."}]
    tokens1 = engine.prompt_tokens(messages)
    generation = engine.stream(messages, GenerationOptions(max_tokens=20, seed=4))
    text = "".join(generation)
    assert generation.stats.stop_reason == "max_tokens"
    turn2 = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "계속. Go on."}]
    tokens2 = engine.prompt_tokens(turn2)
    engine.wait_idle()
    cached = engine.cached_tokens()
    reused = len(os.path.commonprefix([cached, tokens2]))
    assert reused >= len(tokens1) + 20 - 1, "the previous prompt and reply must stay in the KV cache"
    generation = engine.stream(turn2, GenerationOptions(max_tokens=3, seed=1))
    "".join(generation)
    assert generation.stats.evaluated_prompt_tokens == len(tokens2) - reused
    assert generation.stats.evaluated_prompt_tokens < len(tokens2) - len(tokens1)


def test_identical_prompt_evaluates_at_most_one_token(engine: Engine) -> None:
    options = GenerationOptions(max_tokens=5, seed=2)
    messages = [{"role": "user", "content": "같은 질문을 두 번. Same question twice."}]
    first = engine.chat(messages, options)
    second = engine.chat(messages, options)
    assert second.stats.prompt_tokens == first.stats.prompt_tokens
    assert second.stats.evaluated_prompt_tokens <= 1
    assert second.text == first.text


# --- context limits ------------------------------------------------------------------------------------


def test_prompt_over_the_context_raises(small: Engine) -> None:
    long = [{"role": "user", "content": "대한민국 헌법 제1조 " * 40}]
    assert small.count_tokens(long) > 256
    with pytest.raises(ContextOverflow) as info:
        small.stream(long, GenerationOptions(max_tokens=8))
    assert isinstance(info.value, SynatraError)
    assert "256" in str(info.value)
    with pytest.raises(ContextOverflow):
        small.chat(long, GenerationOptions(max_tokens=8))
    with pytest.raises(ContextOverflow):
        small.complete("헌법 " * 300, GenerationOptions(max_tokens=8))


def test_trim_history_drops_oldest_turns_and_keeps_system(small: Engine) -> None:
    system = {"role": "system", "content": "시스템 프롬프트는 항상 남아야 합니다."}
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"질문 {i}: 대한민국 헌법에 대해 알려 주세요. Tell me more."},
            {"role": "assistant", "content": f"대답 {i}: 헌법은 국가의 최고 규범입니다. It is the supreme law."},
        ]
    turns.append({"role": "user", "content": "마지막 질문입니다. Last question."})
    messages = [system, *turns]
    assert small.count_tokens(messages) > 256
    options = GenerationOptions(max_tokens=16, seed=1)
    with pytest.raises(ContextOverflow):
        small.stream(messages, options)
    generation = small.stream(messages, options, trim_history=True)
    "".join(generation)
    stats = generation.stats
    assert stats.dropped_turns > 0
    kept = [system, *turns[2 * stats.dropped_turns :]]
    assert stats.prompt_tokens == small.count_tokens(kept)
    assert stats.prompt_tokens <= 256 - 16
    assert small.count_tokens([system, *turns[2 * (stats.dropped_turns - 1) :]]) > 256 - 16, "dropped too many"
    assert stats.stop_reason == "max_tokens"


def test_generation_stops_when_the_context_is_full(small: Engine) -> None:
    messages = [{"role": "user", "content": "대한민국 헌법 " * 15}]
    prompt = small.count_tokens(messages)
    assert 100 < prompt < 256
    generation = small.stream(messages, GenerationOptions(max_tokens=1000, seed=1))
    "".join(generation)
    assert generation.stats.stop_reason == "context_full"
    assert generation.stats.generated_tokens == 256 - prompt
    assert small.chat(HELLO, GenerationOptions(max_tokens=3, seed=1)).stats.stop_reason == "max_tokens"


# --- turn markers and end of turn never reach the user ------------------------------------------------


@pytest.mark.parametrize("marker", ["[INST]", "[/INST]", "[\\INST]", "</s>"])
def test_leaked_inst_marker_is_cut(small: Engine, monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    assert marker in small.template.stop_markers
    text = f"좋은 질문이에요 ok {marker} 비밀 secret"
    _fake_stream(small, monkeypatch, small._model.tokenize(text, add_bos=False, special=False))
    generation = small.stream(HELLO, GenerationOptions(max_tokens=100))
    shown = "".join(generation)
    assert shown == text[: text.index(marker)]
    assert generation.stats.stop_reason == "stop"
    assert "secret" not in shown and marker not in shown


def test_eos_in_stream_ends_the_turn_unseen(small: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small._model
    before = model.tokenize("안녕하세요 hello", add_bos=False, special=False)
    after = model.tokenize("보이면 안 됨", add_bos=False, special=False)
    _fake_stream(small, monkeypatch, [*before, 2, *after])
    generation = small.stream(HELLO, GenerationOptions(max_tokens=100))
    shown = "".join(generation)
    assert shown == "안녕하세요 hello"
    assert generation.stats.stop_reason == "end_of_turn"
    assert generation.stats.generated_tokens == len(before)
    small._prompts._remembered.clear()


def test_chatml_markers(chatml: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "<|im_start|>" in chatml.template.stop_markers
    model = chatml._model
    text = "대답입니다 <|im_start|>user\n가짜 질문"
    with monkeypatch.context() as patch:
        _fake_stream(chatml, patch, model.tokenize(text, add_bos=False, special=False))
        generation = chatml.stream(HELLO, GenerationOptions(max_tokens=100))
        assert "".join(generation) == "대답입니다 "
        assert generation.stats.stop_reason == "stop"
    with monkeypatch.context() as patch:  # the control token itself
        _fake_stream(chatml, patch, [*model.tokenize("네", add_bos=False, special=False), 32001, 2188])
        generation = chatml.stream(HELLO, GenerationOptions(max_tokens=100))
        assert "".join(generation) == "네"
        assert generation.stats.stop_reason == "stop"
    with monkeypatch.context() as patch:  # <|im_end|> is the end of turn
        _fake_stream(chatml, patch, [*model.tokenize("네", add_bos=False, special=False), 32000, 2188])
        generation = chatml.stream(HELLO, GenerationOptions(max_tokens=100))
        assert "".join(generation) == "네"
        assert generation.stats.stop_reason == "end_of_turn"
    chatml._prompts._remembered.clear()


def test_complete_raw_prompt(small: Engine) -> None:
    generation = small.complete("대한민국의 수도는", GenerationOptions(max_tokens=6, seed=1))
    text = "".join(generation)
    assert generation.stats.stop_reason == "max_tokens"
    assert generation.stats.prompt_tokens == len(small._model.tokenize("대한민국의 수도는", add_bos=True, special=True))
    again = small.complete("대한민국의 수도는", GenerationOptions(max_tokens=6, seed=1))
    assert "".join(again) == text


# --- errors --------------------------------------------------------------------------------------------


def test_missing_model_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing-model.gguf"
    with pytest.raises(ModelFileError, match="missing-model.gguf"):
        Engine(missing)


def test_not_a_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("this is not a model", encoding="utf-8")
    with pytest.raises(ModelFileError) as info:
        Engine(bogus)
    assert str(bogus) in str(info.value)


def test_truncated_gguf(tmp_path: Path, tiny_gguf_v01: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf_v01.read_bytes()[:1000])
    with pytest.raises(ModelFileError) as info:
        Engine(broken)
    assert str(broken) in str(info.value)


@pytest.mark.parametrize("prefill", [True, False])
def test_turn_end_is_evaluated_after_the_reply_only_when_asked(tiny_gguf_v01: Path, prefill: bool) -> None:
    eng = Engine(tiny_gguf_v01, n_ctx=512, prefill_turn_end=prefill)
    try:
        messages = [{"role": "user", "content": "안녕하세요"}]
        generation = eng.stream(messages, GenerationOptions(max_tokens=5, seed=3))
        "".join(generation)
        assert generation.stats.stop_reason == "max_tokens"
        # The sampler hands out the 5th token before it is evaluated; prefilling evaluates it at once.
        eng.wait_idle()
        assert len(eng.cached_tokens()) == generation.stats.prompt_tokens + (5 if prefill else 4)
    finally:
        eng.close()
