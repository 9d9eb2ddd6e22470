"""Message text stays text: our split of a rendering equals llama.cpp's own special-token split, and what is no
text is refused. (That injected strings in messages stay text, against sentencepiece, is in test_prompts.py.)"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from synatra_local.core.llama_backend import LlamaModel
from synatra_local.runtime.engine import Engine
from synatra_local.runtime.text_only import PromptTextError, TextOnly, split_special


@pytest.mark.parametrize("model_fixture", ["tiny_gguf_v01", "tiny_gguf_v03", "smollm2_gguf", "gemma3_gguf"])
def test_split_special_is_llama_cpp_s_own_split(model_fixture: str, request: pytest.FixtureRequest) -> None:
    """Without message text to protect, our tokenizing equals llama.cpp's own special parsing, token for token:
    SentencePiece (with and without the dummy prefix), BPE, a vocabulary with 6,414 special tokens."""
    model = LlamaModel(request.getfixturevalue(model_fixture), n_ctx=256)
    text_only = TextOnly(model, eos_id=2)
    texts = [t.text for t in model.special_tokens]  # longest first: Gemma's whitespace runs, then the rest
    specials = texts[:20] + texts[:: max(1, len(texts) // 25)] + ["<", "|>", "</", "[INST]", "<|im_"]
    words = ["안녕", " 하세요", "Hello", " world", "\n", "\n\n", "  ", "\t", "😀", "ᄀ", "x", " ", "."]
    rng = random.Random(8)
    for _ in range(150):
        text = "".join(rng.choice(specials if rng.random() < 0.3 else words) for _ in range(rng.randint(1, 14)))
        for add_bos in (False, model.adds_bos):
            expected = model.tokenize(text, add_bos=add_bos, special=True)
            assert text_only.tokenize(text, add_bos=add_bos) == expected, repr(text)
    model.close()


def test_lone_surrogates_are_a_clear_error(tiny_gguf_v03: Path) -> None:
    engine = Engine(tiny_gguf_v03, n_ctx=256)
    with pytest.raises(PromptTextError, match="message 1 content is not valid Unicode text"):
        engine.prompt_tokens([{"role": "system", "content": "ok"}, {"role": "user", "content": "bad \ud800"}])
    with pytest.raises(PromptTextError, match="the prompt is not valid Unicode text"):
        engine.complete("\udfff")
    engine.close()


def test_split_special_cuts_longest_first_then_leftmost(tiny_gguf_v03: Path) -> None:
    model = LlamaModel(tiny_gguf_v03, n_ctx=256)
    tokens = model.special_tokens
    assert [t.text for t in tokens][:2] == ["<|im_start|>", "<|im_end|>"], "longest text first, as llama.cpp sorts"
    pieces = split_special("a<|im_start|><s></s>b<|im_end|>", tokens)
    assert [p if isinstance(p, str) else p.id for p in pieces] == ["a", 32001, 1, 2, "b", 32000]
    assert split_special("no specials here", tokens) == ["no specials here"]
    model.close()
