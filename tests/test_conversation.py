"""Conversation: send/stream/record, reset, save/load, interruption, trimming, cache-friendly turns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from synatra_local.core.errors import SynatraError
from synatra_local.runtime.conversation import Conversation
from synatra_local.runtime.engine import Engine, EngineBusy, GenerationOptions

KOREAN = "안녕하세요! 대한민국의 수도는 어디인가요? 😀 줄바꿈\n포함"


@pytest.fixture(scope="module")
def engine(tiny_gguf_v01: Path) -> Iterator[Engine]:
    eng = Engine(tiny_gguf_v01, n_ctx=256, busy="error")
    yield eng
    eng.close()


def test_send_streams_and_records(engine: Engine) -> None:
    conversation = Conversation(engine, options=GenerationOptions(max_tokens=10, seed=1))
    pieces = list(conversation.send(KOREAN))
    reply = "".join(pieces)
    assert reply
    assert conversation.messages == [
        {"role": "user", "content": KOREAN},
        {"role": "assistant", "content": reply},
    ]
    assert conversation.last_stats is not None
    assert conversation.last_stats.stop_reason == "max_tokens"
    assert conversation.last_stats.generated_tokens == 10
    # the same seed answers the same first message identically
    other = Conversation(engine, options=GenerationOptions(max_tokens=10, seed=1))
    assert "".join(other.send(KOREAN)) == reply


def test_second_turn_evaluates_only_what_is_new(engine: Engine) -> None:
    conversation = Conversation(engine, system="짧게 답하세요.", options=GenerationOptions(max_tokens=8, seed=2))
    "".join(conversation.send("첫 질문"))
    first = conversation.last_stats
    assert first is not None
    request = conversation._with_system([*conversation.messages, {"role": "user", "content": "둘째 질문"}])
    tokens2 = engine.prompt_tokens(request)
    engine.wait_idle()
    reused = len(os.path.commonprefix([engine.cached_tokens(), tokens2]))
    assert reused >= first.prompt_tokens + first.generated_tokens - 1
    "".join(conversation.send("둘째 질문"))
    second = conversation.last_stats
    assert second is not None and second.prompt_tokens == len(tokens2)
    assert second.evaluated_prompt_tokens == len(tokens2) - reused
    assert len(conversation.messages) == 4
    first_turn = engine.render(conversation._with_system(conversation.messages[:1]))
    assert first_turn.startswith("<s>[INST] 짧게 답하세요.\n\n첫 질문")


def test_reset(engine: Engine) -> None:
    conversation = Conversation(engine, system="시스템", options=GenerationOptions(max_tokens=4, seed=1))
    "".join(conversation.send("하나"))
    assert conversation.messages
    conversation.reset()
    assert conversation.messages == []
    assert conversation.system == "시스템"
    "".join(conversation.send("둘"))
    assert [m["content"] for m in conversation.messages][0] == "둘"


def test_save_load_round_trip(engine: Engine, tmp_path: Path) -> None:
    options = GenerationOptions(max_tokens=6, seed=3)
    conversation = Conversation(engine, system="당신은 한국어 비서입니다.", options=options)
    "".join(conversation.send(KOREAN))
    path = conversation.save(tmp_path / "대화.json")
    raw = path.read_text(encoding="utf-8")
    assert KOREAN.split("\n")[0] in raw, "Korean is stored as text, not \\u escapes"
    loaded = Conversation(engine)
    loaded.load(path)
    assert loaded.system == "당신은 한국어 비서입니다."
    assert loaded.messages == conversation.messages
    assert loaded.messages[0]["content"] == KOREAN
    # a loaded conversation can go on
    "".join(loaded.send("계속"))
    assert len(loaded.messages) == 4


@pytest.mark.parametrize(
    "content",
    ["not json at all {", "[]", '{"system": "x"}', '{"messages": [{"role": "user"}]}', '{"messages": ["hi"]}', "null"],
)
def test_load_bad_file(engine: Engine, tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    conversation = Conversation(engine)
    with pytest.raises(SynatraError, match="cannot load"):
        conversation.load(path)
    assert conversation.messages == []


def test_load_missing_file(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(SynatraError, match="cannot load"):
        Conversation(engine).load(tmp_path / "missing.json")


def test_interrupted_send_keeps_partial_reply(engine: Engine) -> None:
    conversation = Conversation(engine, options=GenerationOptions(max_tokens=200, seed=4))
    stream = conversation.send("긴 대답을 해 주세요")
    pieces = [next(stream), next(stream)]
    stream.close()
    assert conversation.messages == [
        {"role": "user", "content": "긴 대답을 해 주세요"},
        {"role": "assistant", "content": "".join(pieces)},
    ]
    assert conversation.last_stats is not None and conversation.last_stats.generated_tokens < 200
    # the engine is free again (a busy="error" engine would refuse otherwise)
    "".join(conversation.send("다음"))
    assert conversation.last_stats.stop_reason in {"max_tokens", "context_full"}
    assert len(conversation.messages) == 4


def test_keyboard_interrupt_mid_reply_leaves_engine_usable(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Ctrl-C in the chat does: KeyboardInterrupt raised inside the generation, mid-reply."""
    real = engine._model.token_bytes
    calls = {"n": 0}

    def token_bytes(token: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt
        return real(token)

    conversation = Conversation(engine, options=GenerationOptions(max_tokens=100, seed=6))
    with monkeypatch.context() as patch:
        patch.setattr(engine._model, "token_bytes", token_bytes)
        shown: list[str] = []
        with pytest.raises(KeyboardInterrupt):
            for piece in conversation.send("멈춰 보세요"):
                shown.append(piece)
    assert conversation.messages == [
        {"role": "user", "content": "멈춰 보세요"},
        {"role": "assistant", "content": "".join(shown)},
    ]
    assert conversation.last_stats is not None and 0 < conversation.last_stats.generated_tokens < 100
    # the lock was released (this engine refuses to wait) and the model still answers
    reply = engine.chat([{"role": "user", "content": "다시"}], GenerationOptions(max_tokens=5, seed=1))
    assert reply.stats.stop_reason == "max_tokens" and reply.stats.generated_tokens == 5
    "".join(conversation.send("계속"))
    assert len(conversation.messages) == 4


def test_ctrl_c_in_the_reading_thread_keeps_the_reply_so_far(engine: Engine) -> None:
    """Ctrl-C as the chat sees it: KeyboardInterrupt in the thread that reads the reply, mid-reply."""
    conversation = Conversation(engine, options=GenerationOptions(max_tokens=200, seed=6))
    shown: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        for piece in conversation.send("멈춰 보세요"):
            shown.append(piece)
            if len(shown) == 5:
                raise KeyboardInterrupt
    assert conversation.messages[-1] == {"role": "assistant", "content": "".join(shown)}
    assert conversation.last_stats is not None and conversation.last_stats.stop_reason == "cancelled"
    reply = engine.chat([{"role": "user", "content": "다시"}], GenerationOptions(max_tokens=5, seed=1))
    assert reply.stats.stop_reason == "max_tokens" and reply.stats.generated_tokens == 5


def test_long_conversation_drops_oldest_turns_keeps_system(engine: Engine) -> None:
    conversation = Conversation(engine, system="시스템 프롬프트", options=GenerationOptions(max_tokens=48, seed=5))
    dropped = 0
    for i in range(6):
        "".join(conversation.send(f"{i}번째 질문입니다. 대한민국 헌법에 대해 알려 주세요."))
        assert conversation.last_stats is not None
        dropped += conversation.last_stats.dropped_turns
        assert conversation.last_stats.prompt_tokens <= 256 - 48
        assert conversation.messages[-2]["content"].startswith(f"{i}번째")
    assert dropped > 0
    assert len(conversation.messages) == 2 * (6 - dropped)
    assert conversation.messages[0]["content"].startswith(f"{dropped}번째")
    assert conversation.system == "시스템 프롬프트"


def test_refused_send_does_not_record_a_phantom_turn(engine: Engine) -> None:
    busy = engine.stream([{"role": "user", "content": "점유"}], GenerationOptions(max_tokens=50, seed=1))
    iterator = iter(busy)
    next(iterator)
    conversation = Conversation(engine, options=GenerationOptions(max_tokens=4))
    try:
        with pytest.raises(EngineBusy):
            "".join(conversation.send("안녕"))
    finally:
        busy.close()
    assert conversation.messages == []


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "message 0 has role 'wizard'"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "'user' was expected"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
         "'assistant' was expected"),
        ({"messages": [{"role": "system", "content": "x"}]}, "message 0 has role 'system'"),
        ({"messages": [{"role": "user", "content": ["parts"]}]}, "no text content"),
        ({"system": 5, "messages": []}, "system prompt is not text"),
        ({"messages": {"role": "user"}}, 'no "messages" list'),
    ],
)
def test_load_refuses_bad_roles_and_keeps_the_conversation(engine: Engine, tmp_path: Path, history: dict,
                                                           reason: str) -> None:
    import json

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(history), encoding="utf-8")
    conversation = Conversation(engine, system="원래", messages=[{"role": "user", "content": "q"},
                                                                {"role": "assistant", "content": "a"}])
    before = (conversation.system, list(conversation.messages))
    with pytest.raises(SynatraError, match=reason):
        conversation.load(path)
    assert (conversation.system, conversation.messages) == before


def test_save_to_an_unwritable_place_is_a_clear_error(engine: Engine, tmp_path: Path) -> None:
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    conversation = Conversation(engine, messages=turn)
    for target in (tmp_path, Path("/proc/no-such-dir/c.json")):
        with pytest.raises(SynatraError, match="cannot save the conversation to"):
            conversation.save(target)
    saved = conversation.save(tmp_path / "c.json")
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"], "written whole, no partial file beside it"
    again = Conversation(engine)
    again.load(saved)
    assert again.messages == conversation.messages
