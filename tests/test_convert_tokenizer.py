"""A converted GGUF tokenizes exactly like the checkpoint's own sentencepiece model, and records the right vocab.

llama.cpp's SPM tokenizer (llama-cpp-python, `special=False`) is compared token id for token id with
`SentencePieceProcessor.encode` on Korean, English, mixed scripts, emoji, jamo, whitespace edge cases, digits,
long inputs and the whole Korean constitution in one call (no splitting by lines or paragraphs is needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import llama_cpp
import pytest
import sentencepiece as spm

from synatra_local.convert.api import convert
from synatra_local.convert.tiny import CHATML_TOKENS, build_checkpoint
from synatra_local.core.llama_backend import LlamaModel

VERSIONS = {
    # version: (folder name, vocab size, prompt format recorded in the GGUF: its own template)
    "v0.1": ("Synatra-V0.1-tiny", 32000, "jinja"),
    "v0.3": ("Synatra-7B-v0.3-tiny", 32002, "jinja"),
}

TEXTS = {
    "korean": "대한민국은 민주공화국이다. 안녕하세요, 반갑습니다!",
    "korean-rare-syllables": "똠방각하 뷁 쀍 햏 닭볶음탕",
    "english": "The quick brown fox jumps over the lazy dog.",
    "mixed": "Synatra는 Mistral-7B를 fine-tune한 모델입니다 (v0.3). OK?",
    "emoji": "😀🇰🇷👍🏽 좋아요 ❤️‍🔥 🫠",
    "jamo": "ᄀ ㄱ ᅡ ㅏ ᄒᆞᆫ ㄱㄴㄷㄹ ᆨᆫ",
    "leading-space": " 앞에 공백",
    "leading-spaces": "   three leading",
    "trailing-space": "뒤에 공백 ",
    "trailing-spaces": "trailing   ",
    "multiple-spaces": "여러   개의    공백  and   spaces",
    "only-space": " ",
    "only-spaces": "    ",
    "newline": "\n",
    "newlines": "첫 줄\n둘째 줄\n\n넷째 줄\n",
    "only-newlines": "\n\n\n",
    "leading-newline": "\n앞 줄바꿈",
    "crlf": "윈도우\r\n줄바꿈\r\n",
    "tabs": "\t탭\t으로\t구분\t",
    "mixed-whitespace": " \t \n  \t\n ",
    "digits": "0123456789 3.14159 1,000,000원 2024년 12월 31일",
    "fullwidth": "Ｆｕｌｌ　ｗｉｄｔｈ ﾊﾝｶｸ ①②③",
    "special-looking": "<s> </s> <unk> [INST] [\\INST] [/INST] <|im_start|>user<|im_end|>",
    "empty": "",
    "long-korean": "가나다라마바사 아자차카타파하 " * 300 + "끝",
    "long-ascii": "a" * 3000,
    "long-mixed": ("문장 하나, sentence two; 세 번째 😀\n" * 150),
}


@pytest.fixture(scope="session")
def sentencepiece(tokenizer_model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model))


@pytest.fixture(scope="session")
def tokenizer_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """{version: (checkpoint folder, converted F16 GGUF)} for v0.1 and v0.3."""
    root = tmp_path_factory.mktemp("tokenizer")
    built = {}
    for version, (name, _, _) in VERSIONS.items():
        folder = build_checkpoint(root / name, version=version, seed=1)
        built[version] = (folder, convert(folder, root / "out" / f"{name}.gguf"))
    return built


@pytest.fixture(scope="module")
def models(tokenizer_ggufs: dict[str, tuple[Path, Path]]):
    loaded = {v: LlamaModel(gguf_path, n_ctx=64, n_threads=2) for v, (_, gguf_path) in tokenizer_ggufs.items()}
    yield loaded
    for model in loaded.values():
        model.close()


_READERS: dict[Path, gguf.GGUFReader] = {}


def gguf_field(path: Path, key: str) -> object:
    """One field's value; each file is parsed once (GGUFReader takes ~2 s on a 32000-token vocabulary)."""
    if path not in _READERS:
        _READERS[path] = gguf.GGUFReader(path)
    field = _READERS[path].get_field(key)
    assert field is not None, f"{path.name} lacks {key}"
    return field.contents()


@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("label", list(TEXTS))
def test_llama_cpp_tokens_equal_sentencepiece(models, sentencepiece, version: str, label: str) -> None:
    text = TEXTS[label]
    expected = sentencepiece.encode(text)
    got = models[version].tokenize(text, add_bos=False, special=False)
    assert got == expected, f"{label!r}: first difference at {_first_difference(got, expected)}"


@pytest.mark.parametrize("version", list(VERSIONS))
def test_whole_constitution_in_one_call(models, sentencepiece, constitution_text: str, version: str) -> None:
    expected = sentencepiece.encode(constitution_text)
    assert len(expected) > 10_000, "the constitution should be a long input"
    got = models[version].tokenize(constitution_text, add_bos=False, special=False)
    assert got == expected, f"first difference at {_first_difference(got, expected)}"


@pytest.mark.parametrize("version", list(VERSIONS))
def test_bos_is_added_when_asked(models, sentencepiece, version: str) -> None:
    model = models[version]
    assert model.adds_bos
    assert model.bos_id == 1
    assert model.tokenize("안녕", add_bos=True, special=False) == [1, *sentencepiece.encode("안녕")]


def test_v03_chatml_tokens_are_parsed_as_control_tokens(models, sentencepiece) -> None:
    model = models["v0.3"]
    tokens = model.tokenize("<|im_start|>user\n안녕<|im_end|>", add_bos=False, special=True)
    assert tokens[0] == CHATML_TOKENS["<|im_start|>"] == 32001
    assert tokens[-1] == CHATML_TOKENS["<|im_end|>"] == 32000
    assert 32000 not in tokens[1:-1] and 32001 not in tokens[1:-1]
    assert sentencepiece.decode(tokens[1:-1]) == "user\n안녕"
    assert model.n_vocab == 32002
    assert model.is_end_of_generation(32000), "<|im_end|> must end a ChatML turn"
    assert not model.is_end_of_generation(32001)
    vocab = model._vocab
    assert llama_cpp.llama_vocab_is_control(vocab, 32000) and llama_cpp.llama_vocab_is_control(vocab, 32001)
    assert llama_cpp.llama_vocab_eot(vocab) == 32000


def test_v01_has_no_chatml_tokens(models) -> None:
    model = models["v0.1"]
    assert model.n_vocab == 32000
    tokens = model.tokenize("<|im_start|>", add_bos=False, special=True)
    assert len(tokens) > 1 and all(t < 32000 for t in tokens)


def test_v03_gguf_token_types(tokenizer_ggufs) -> None:
    _, path = tokenizer_ggufs["v0.3"]
    types = gguf_field(path, "tokenizer.ggml.token_type")
    tokens = gguf_field(path, "tokenizer.ggml.tokens")
    assert len(types) == len(tokens) == 32002
    assert tokens[32000] == "<|im_end|>" and tokens[32001] == "<|im_start|>"
    assert types[32000] == gguf.TokenType.CONTROL
    assert types[32001] == gguf.TokenType.CONTROL
    # sentencepiece's own specials keep their types: <unk> UNKNOWN, <s> and </s> CONTROL, <0x00> BYTE
    assert types[0] == gguf.TokenType.UNKNOWN
    assert types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[3] == gguf.TokenType.BYTE
    assert gguf_field(path, "tokenizer.ggml.eot_token_id") == 32000


@pytest.mark.parametrize("version", list(VERSIONS))
def test_gguf_tokenizer_metadata(tokenizer_ggufs, version: str) -> None:
    folder, path = tokenizer_ggufs[version]
    _, vocab_size, prompt_format = VERSIONS[version]
    assert gguf_field(path, "tokenizer.ggml.model") == "llama"
    assert gguf_field(path, "tokenizer.ggml.bos_token_id") == 1
    assert gguf_field(path, "tokenizer.ggml.eos_token_id") == 2
    assert gguf_field(path, "tokenizer.ggml.add_bos_token") is True
    assert gguf_field(path, "tokenizer.ggml.add_eos_token") is False
    assert gguf_field(path, "llama.vocab_size") == vocab_size
    assert len(gguf_field(path, "tokenizer.ggml.tokens")) == vocab_size
    template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert gguf_field(path, "tokenizer.chat_template") == template
    assert gguf_field(path, "synatra.prompt_format") == prompt_format
    assert gguf_field(path, "general.license") == "cc-by-nc-4.0"
    assert gguf_field(path, "general.architecture") == "llama"


@pytest.mark.parametrize("version", list(VERSIONS))
def test_gguf_records_unknown_token_id(tokenizer_ggufs, version: str) -> None:
    _, path = tokenizer_ggufs[version]
    assert gguf_field(path, "tokenizer.ggml.unknown_token_id") == 0


def _first_difference(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"index {i}: llama.cpp {a[i : i + 5]} vs sentencepiece {b[i : i + 5]}"
    return f"lengths {len(a)} vs {len(b)}"
