"""Streaming detokenization must equal sentencepiece's whole decode and never show broken characters."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece as spm

from synatra_local.runtime.detokenizer import StreamingDetokenizer

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@pytest.fixture(scope="module")
def sp(tokenizer_model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model))


@pytest.fixture(scope="module")
def token_bytes(sp: spm.SentencePieceProcessor) -> Callable[[int], bytes]:
    """Raw bytes of each piece: ▁ as a space, <0xNN> as that byte, control tokens as nothing."""
    table: list[bytes] = []
    for token_id in range(sp.get_piece_size()):
        piece = sp.id_to_piece(token_id)
        match = BYTE_PIECE.fullmatch(piece)
        if match:
            table.append(bytes([int(match.group(1), 16)]))
        elif sp.is_control(token_id):
            table.append(b"")
        else:
            table.append(piece.replace("▁", " ").encode("utf-8"))
    return table.__getitem__


def stream(detokenizer: StreamingDetokenizer, ids: list[int]) -> list[str]:
    """All chunks, the final flush included; no chunk may hold a replacement or partial character."""
    chunks = [detokenizer.add(token_id) for token_id in ids]
    chunks.append(detokenizer.flush())
    for chunk in chunks:
        assert "\ufffd" not in chunk
        assert chunk.encode("utf-8").decode("utf-8") == chunk
        assert not any(0xD800 <= ord(char) <= 0xDFFF for char in chunk), "lone surrogate"
    return chunks


def test_constitution_streams_exactly(
    sp: spm.SentencePieceProcessor, token_bytes: Callable[[int], bytes], constitution_text: str
) -> None:
    ids = sp.encode(constitution_text)
    byte_tokens = sum(1 for token_id in ids if sp.is_byte(token_id))
    assert len(ids) > 15_000 and byte_tokens > 1_000, "the text must exercise byte fallback"
    detokenizer = StreamingDetokenizer(token_bytes)
    chunks = stream(detokenizer, ids)
    assert "".join(chunks) == constitution_text
    assert "".join(chunks) == sp.decode(ids)
    assert detokenizer.text == constitution_text
    empty_steps = sum(1 for chunk in chunks[:-1] if chunk == "")
    assert empty_steps >= byte_tokens // 3, "byte tokens wait until their character is complete"


def test_split_syllable_is_emitted_once(
    token_bytes: Callable[[int], bytes], sp: spm.SentencePieceProcessor
) -> None:
    ids = [sp.piece_to_id(f"<0x{byte:02X}>") for byte in "갂".encode()]
    detokenizer = StreamingDetokenizer(token_bytes)
    assert [detokenizer.add(token_id) for token_id in ids] == ["", "", "갂"]
    assert detokenizer.flush() == ""


@pytest.mark.parametrize(
    "text",
    [
        "안녕하세요 😀👍🏽 반가워요 🇰🇷",
        "ᄀ ᄁ ᅡ ᆨ ㄱ ㄴ ㅏ 각 힣",
        "Synatra는 Mistral-7B를 fine-tune한 모델입니다. It speaks 한국어 and English.",
        "  leading spaces and trailing  ",
        "\n\n줄바꿈\n으로 시작하고 끝남\n\n",
        " 한 칸",
        "a",
        "\t탭\t",
        "漢字와 かな 섞임 — “따옴표” …",
    ],
)
def test_texts_roundtrip(
    sp: spm.SentencePieceProcessor, token_bytes: Callable[[int], bytes], text: str
) -> None:
    ids = sp.encode(text)
    detokenizer = StreamingDetokenizer(token_bytes)
    joined = "".join(stream(detokenizer, ids))
    assert joined == sp.decode(ids)
    assert joined == text


def test_leading_space_only_stripped_once(
    sp: spm.SentencePieceProcessor, token_bytes: Callable[[int], bytes]
) -> None:
    ids = [1, *sp.encode("안녕"), *sp.encode("하세요")]
    detokenizer = StreamingDetokenizer(token_bytes)
    assert "".join(stream(detokenizer, ids)) == sp.decode(ids) == "안녕 하세요"


def test_keep_leading_space(sp: spm.SentencePieceProcessor, token_bytes: Callable[[int], bytes]) -> None:
    ids = sp.encode("hello 세계")
    detokenizer = StreamingDetokenizer(token_bytes, strip_leading_space=False)
    assert "".join(stream(detokenizer, ids)) == " hello 세계"


def test_incomplete_tail_becomes_replacement_on_flush(
    sp: spm.SentencePieceProcessor, token_bytes: Callable[[int], bytes]
) -> None:
    ids = [*sp.encode("가"), sp.piece_to_id("<0xEA>"), sp.piece_to_id("<0xB0>")]
    detokenizer = StreamingDetokenizer(token_bytes)
    assert [detokenizer.add(token_id) for token_id in ids][-2:] == ["", ""]
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.text == "가\ufffd"


def test_reset_starts_a_new_stream(
    sp: spm.SentencePieceProcessor, token_bytes: Callable[[int], bytes]
) -> None:
    detokenizer = StreamingDetokenizer(token_bytes)
    detokenizer.add(sp.piece_to_id("<0xEA>"))
    detokenizer.reset()
    assert detokenizer.text == ""
    ids = sp.encode("다시")
    assert "".join(stream(detokenizer, ids)) == sp.decode(ids) == "다시"
