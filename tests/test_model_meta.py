"""The prompt-format rules on metadata alone: recorded format, own template, names, vocabulary, fallback, in order."""

from __future__ import annotations

import pytest

from synatra_local.core.model_meta import (
    FALLBACK_FORMAT,
    PROMPT_FORMAT_KEY,
    decide_prompt_format,
    name_sources,
    synatra_version_format,
)

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
CHATML_VOCAB = frozenset({"<s>", "</s>", "<|im_start|>", "<|im_end|>"})
PLAIN_VOCAB = frozenset({"<unk>", "<s>", "</s>"})


def decide(recorded=None, template=None, names=(), vocab=PLAIN_VOCAB):  # type: ignore[no-untyped-def]
    return decide_prompt_format(recorded=recorded, chat_template=template, names=list(names), special_tokens=vocab)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # TheBloke's repos and files, and what llama.cpp's converter writes into general.name
        ("maywell_synatra-v0.1-7b-instruct", "synatra-v0.1"),
        ("synatra-v0.1-7b-instruct.Q4_K_M.gguf", "synatra-v0.1"),
        ("Synatra-V0.1-7B-Instruct-GGUF", "synatra-v0.1"),
        ("synatra-7b-v0.3-dpo.Q4_K_M.gguf", "chatml"),
        ("maywell_synatra-7b-v0.3-dpo", "chatml"),
        ("Synatra 7B v0.3 Dpo", "chatml"),
        ("Synatra-7B-v0.3-RP.Q5_K_S.gguf", "chatml"),
        ("synatra-7b-instruct-v0.2.Q8_0.gguf", "synatra-v0.2"),
        ("Synatra_V0_2", "synatra-v0.2"),
        ("Synatra v0.3", "chatml"),
        # no Synatra, no version, or a version that is not one of Synatra's
        ("Mistral-7B-Instruct-v0.1", None),
        ("Synatra-7B", None),
        ("Synatra-7B-v0.4", None),
        ("Synatra-7B-v0.31", None),
        ("synatra-42dot-1.3B", None),
        ("", None),
        (None, None),
    ],
)
def test_synatra_version_in_names(name: str | None, expected: str | None) -> None:
    assert synatra_version_format(name) == expected


def test_recorded_format_comes_first() -> None:
    decision = decide("synatra-v0.1", TEMPLATE, [("file name", "synatra-7b-v0.3.gguf")], CHATML_VOCAB)
    assert (decision.format, decision.rule) == ("synatra-v0.1", "recorded")
    assert PROMPT_FORMAT_KEY in decision.reason and not decision.warnings


def test_own_template_comes_before_names_and_vocabulary() -> None:
    decision = decide(None, TEMPLATE, [("general.name", "Synatra-7B-v0.3-dpo")], CHATML_VOCAB)
    assert (decision.format, decision.rule) == ("jinja", "chat_template")
    recorded_jinja = decide("jinja", TEMPLATE)
    assert (recorded_jinja.format, recorded_jinja.rule) == ("jinja", "recorded")


def test_names_in_order_and_the_first_that_decides_is_named() -> None:
    names = [
        ("general.name", "Some Model"),
        ("general.basename", "Synatra v0.1"),
        ("file name", "synatra-7b-v0.3-dpo.Q4_K_M.gguf"),
    ]
    decision = decide(names=names, vocab=CHATML_VOCAB)
    assert (decision.format, decision.rule) == ("synatra-v0.1", "name")
    assert "general.basename" in decision.reason and "'Synatra v0.1'" in decision.reason
    only_file = decide(names=[("general.name", "llama"), ("file name", "synatra-7b-v0.3-dpo.Q4_K_M.gguf")])
    assert (only_file.format, only_file.rule) == ("chatml", "name")
    assert "file name" in only_file.reason


def test_vocabulary_decides_chatml_only_with_both_tokens() -> None:
    decision = decide(names=[("file name", "model.gguf")], vocab=CHATML_VOCAB)
    assert (decision.format, decision.rule) == ("chatml", "vocabulary")
    half = decide(names=[("file name", "model.gguf")], vocab=PLAIN_VOCAB | {"<|im_end|>"})
    assert half.rule == "fallback"


def test_fallback_is_mistral_inst_with_one_warning_naming_template() -> None:
    decision = decide(names=[("file name", "model.gguf")])
    assert (decision.format, decision.rule) == (FALLBACK_FORMAT, "fallback") == ("synatra-v0.2", "fallback")
    assert len(decision.warnings) == 1
    (warning,) = decision.warnings
    assert "--template" in warning and "\n" not in warning and "[INST]" in warning


@pytest.mark.parametrize("recorded", ["/etc/passwd", "evil.jinja", "../../x.jinja", "alpaca", "CHATML", ""])
def test_metadata_never_names_a_file_unknown_values_are_ignored_with_a_warning(recorded: str) -> None:
    decision = decide(recorded, None, [("file name", "synatra-7b-v0.3-dpo.Q4_K_M.gguf")])
    assert (decision.format, decision.rule) == ("chatml", "name"), "detection goes on with the next rules"
    assert len(decision.warnings) == 1
    assert PROMPT_FORMAT_KEY in decision.warnings[0] and "not a known format" in decision.warnings[0]


def test_recorded_jinja_without_a_template_is_ignored_with_a_warning() -> None:
    decision = decide("jinja", None, [("file name", "synatra-v0.1.gguf")])
    assert (decision.format, decision.rule) == ("synatra-v0.1", "name")
    assert any("no tokenizer.chat_template" in w for w in decision.warnings)


def test_name_sources_order() -> None:
    values = {
        "general.name": "Synatra 7B v0.3 Dpo",
        "general.basename": "Synatra",
        "general.version": "v0.3",
        "general.source.url": "https://example.invalid/maywell/Synatra-7B-v0.3-dpo",
        "general.source.huggingface.repository": "maywell/Synatra-7B-v0.3-dpo",
        "general.base_model.0.name": "Mistral 7B Instruct v0.1",
        "general.file_type": 7,
    }
    assert name_sources(values, "x.gguf") == [
        ("general.name", "Synatra 7B v0.3 Dpo"),
        ("general.basename", "Synatra v0.3"),
        ("general.source.huggingface.repository", "maywell/Synatra-7B-v0.3-dpo"),
        ("general.source.url", "https://example.invalid/maywell/Synatra-7B-v0.3-dpo"),
        ("file name", "x.gguf"),
    ], "the base model's name is not the model's own"
