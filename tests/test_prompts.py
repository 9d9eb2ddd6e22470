"""The engine's prompt tokens must equal an independent reference, token for token.

The reference renders the checkpoint's own Jinja chat template (``CHAT_TEMPLATES``) with a plain jinja2
sandbox, set up like transformers, and tokenizes the text like HF's legacy slow Llama tokenizer: special
strings become their ids, every other text span is ``sp.encode``d on its own (dummy prefix included), and
BOS is prepended only when the template did not render ``<s>`` itself (``add_bos_token: true``).
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest
import sentencepiece as spm

from synatra_local.convert.reference_chat_templates import CHAT_TEMPLATES
from synatra_local.core.errors import SynatraError
from synatra_local.runtime.engine import Engine
from synatra_local.runtime.prompts import PromptBuilder, select_template

INST_SPECIALS = {"<s>": 1, "</s>": 2}
CHATML_SPECIALS = {"<s>": 1, "</s>": 2, "<|im_end|>": 32000, "<|im_start|>": 32001}

SYSTEM = "당신은 친절한 한국어 비서입니다. Answer briefly."
Q1 = "대한민국의 수도는 어디인가요? What is the capital?"
A1 = "수도는 서울입니다. It is Seoul."
Q2 = "그럼 인구는요? 😀 and the population,\n줄바꿈 포함."

CASES = {
    "single": [{"role": "user", "content": Q1}],
    "single+system": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}],
    "multi": [
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2},
    ],
    "multi+system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2},
    ],
    "english-only": [{"role": "user", "content": "Hello there, how are you?"}],
}


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def reference_text(fmt: str, messages: list[dict[str, str]]) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(CHAT_TEMPLATES[fmt]).render(
        messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=True
    )


def reference_ids(sp: spm.SentencePieceProcessor, fmt: str, messages: list[dict[str, str]]) -> list[int]:
    text = reference_text(fmt, messages)
    specials = CHATML_SPECIALS if fmt == "chatml" else INST_SPECIALS
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, text):
        if piece in specials:
            ids.append(specials[piece])
        elif piece:
            ids.extend(sp.encode(piece))
    if not text.startswith("<s>"):
        ids.insert(0, 1)  # add_bos_token: true
    return ids


@pytest.fixture(scope="module")
def sp(tokenizer_model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model))


@pytest.fixture(scope="module")
def engines(tiny_gguf_v01: Path, tiny_gguf_v03: Path) -> dict[str, Engine]:
    return {
        "synatra-v0.1": Engine(tiny_gguf_v01, n_ctx=512),
        "synatra-v0.2": Engine(tiny_gguf_v01, n_ctx=512, template="synatra-v0.2"),
        "chatml": Engine(tiny_gguf_v03, n_ctx=512),
    }


FORMATS = ("synatra-v0.1", "synatra-v0.2", "chatml")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_prompt_tokens_match_reference(
    engines: dict[str, Engine], sp: spm.SentencePieceProcessor, fmt: str, case: str
) -> None:
    engine = engines[fmt]
    messages = CASES[case]
    assert engine.template.name == fmt
    assert engine.render(messages) == reference_text(fmt, messages)
    ids = engine.prompt_tokens(messages)
    assert ids == reference_ids(sp, fmt, messages)
    assert ids.count(1) == 1 and ids[0] == 1, "BOS exactly once, at the start"
    assert engine.count_tokens(messages) == len(ids)


def test_reference_sanity(sp: spm.SentencePieceProcessor) -> None:
    """The reference itself: v0.1 renders <s> in text, ChatML does not and gets BOS as a token."""
    msgs = CASES["single"]
    assert reference_text("synatra-v0.1", msgs).startswith("<s>[INST] ")
    assert not reference_text("chatml", msgs).startswith("<s>")
    chatml = reference_ids(sp, "chatml", msgs)
    assert chatml[:2] == [1, 32001] and chatml.count(32000) == 1


def test_v01_prompt_ends_with_trailing_space(engines: dict[str, Engine], sp: spm.SentencePieceProcessor) -> None:
    engine = engines["synatra-v0.1"]
    for messages in CASES.values():
        text = engine.render(messages)
        assert text.endswith(" [\\INST] ")
        ids = engine.prompt_tokens(messages)
        assert sp.id_to_piece(ids[-1]) == "▁", "the trailing space after [\\INST] is its own token"


def test_v02_override_differs_from_v01(engines: dict[str, Engine]) -> None:
    v01, v02 = engines["synatra-v0.1"], engines["synatra-v0.2"]
    assert v01.path == v02.path
    messages = CASES["multi"]
    assert v02.render(messages).endswith(" [/INST]")
    assert "[\\INST]" not in v02.render(messages)
    assert v01.prompt_tokens(messages) != v02.prompt_tokens(messages)


def test_jinja_override_uses_the_gguf_template(engines: dict[str, Engine], sp: spm.SentencePieceProcessor) -> None:
    for fmt in ("synatra-v0.1", "chatml"):
        engine = engines[fmt]
        template = select_template(engine.info, engine._model, "jinja")
        assert template.name == "jinja"
        builder = PromptBuilder(engine._model, template)
        for messages in CASES.values():
            assert builder.tokens(messages) == reference_ids(sp, fmt, messages)


def test_jinja_file_override(engines: dict[str, Engine], sp: spm.SentencePieceProcessor, tmp_path: Path) -> None:
    engine = engines["synatra-v0.1"]  # a v0.1 file, prompted as ChatML from a .jinja file
    source = tmp_path / "chatml.jinja"
    source.write_text(CHAT_TEMPLATES["chatml"], encoding="utf-8")
    template = select_template(engine.info, engine._model, str(source))
    builder = PromptBuilder(engine._model, template)
    messages = CASES["multi+system"]
    assert builder.render(messages) == reference_text("chatml", messages)
    ids = builder.tokens(messages)
    assert ids[0] == 1 and ids.count(1) == 1
    # the v0.1 vocabulary has no ChatML tokens, so only the text and BOS can be compared
    assert engine._model.tokenize(builder.render(messages), add_bos=True, special=True) == ids


def test_unknown_template_is_refused(engines: dict[str, Engine]) -> None:
    engine = engines["synatra-v0.1"]
    with pytest.raises(SynatraError, match="unknown template 'alpaca'"):
        select_template(engine.info, engine._model, "alpaca")
