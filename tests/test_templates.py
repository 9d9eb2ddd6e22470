"""Built-in prompt formats must match the reference Jinja templates, as text and token for token."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest
import sentencepiece as spm

from synatra_local.convert.reference_chat_templates import CHAT_TEMPLATES
from synatra_local.core.errors import SynatraError
from synatra_local.runtime.templates import (
    Message,
    builtin_stand_in,
    builtin_template,
    detect_format,
    jinja_template,
)

FORMATS = ("synatra-v0.1", "synatra-v0.2", "chatml")
BOS, EOS = "<s>", "</s>"
SPECIAL_IDS = {"<s>": 1, "</s>": 2, "<|im_end|>": 32000, "<|im_start|>": 32001}

SYSTEM = "당신은 친절한 한국어 비서입니다. 간결하게 답하세요."
Q1 = "대한민국의 수도는 어디인가요?"
A1 = "대한민국의 수도는 서울입니다."
Q2 = "그럼 인구는 얼마나 되나요? Answer in English, too."
A2 = "약 940만 명입니다 (about 9.4 million)."
Q3 = "고마워요 ᄀ ㄱ 😀\n줄바꿈도 있어요."

CONVERSATIONS: dict[str, list[Message]] = {
    "single": [{"role": "user", "content": Q1}],
    "single+system": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}],
    "multi": [
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2},
        {"role": "assistant", "content": A2},
        {"role": "user", "content": Q3},
    ],
    "multi+system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": A1},
        {"role": "user", "content": Q2},
    ],
    "ends-with-assistant": [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}],
}


def _reference_raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def render_reference(name: str, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """Render CHAT_TEMPLATES[name] with a plain jinja2 environment set up like transformers does."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = _reference_raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(CHAT_TEMPLATES[name]).render(
        messages=messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=add_generation_prompt
    )


@pytest.fixture(scope="module")
def sp(tokenizer_model: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model))


def hf_legacy_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    """Tokenize like HF's legacy Llama tokenizer: special strings become ids, other text gets sp.encode."""
    pattern = "(" + "|".join(re.escape(s) for s in SPECIAL_IDS) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, text):
        if piece in SPECIAL_IDS:
            ids.append(SPECIAL_IDS[piece])
        elif piece:
            ids.extend(sp.encode(piece))
    return ids


def prompt_ids(sp: spm.SentencePieceProcessor, text: str, bos_in_text: bool) -> list[int]:
    """What the runtime feeds the model: BOS added by the tokenizer only when the text lacks it."""
    return ([] if bos_in_text else [1]) + hf_legacy_ids(sp, text)


def assembled_ids(sp: spm.SentencePieceProcessor, name: str, messages: list[Message]) -> list[int]:
    """The expected prompt built turn by turn from token ids, without rendering a whole string."""
    turns = list(messages)
    system = turns.pop(0)["content"] if turns[0]["role"] == "system" else None
    ids = [1]
    if name == "chatml":
        if system is not None:
            ids += [32001, *sp.encode("system\n" + system), 32000, *sp.encode("\n")]
        for m in turns:
            ids += [32001, *sp.encode(m["role"] + "\n" + m["content"]), 32000, *sp.encode("\n")]
        return ids + [32001, *sp.encode("assistant\n")]
    closing = " [\\INST] " if name == "synatra-v0.1" else " [/INST]"
    for index in range(0, len(turns), 2):
        content = turns[index]["content"]
        if index == 0 and system is not None:
            content = system + "\n\n" + content
        if index + 1 < len(turns):  # a user turn and its reply are one text span, then the EOS token
            ids += [*sp.encode("[INST] " + content + closing + turns[index + 1]["content"]), 2]
        else:
            ids += sp.encode("[INST] " + content + closing)
    return ids


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", FORMATS)
def test_builtin_matches_reference_text(name: str, conversation: str) -> None:
    messages = CONVERSATIONS[conversation]
    for gen in (True, False):
        assert builtin_template(name).render(messages, gen) == render_reference(name, messages, gen)


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", FORMATS)
def test_builtin_matches_reference_tokens(
    sp: spm.SentencePieceProcessor, name: str, conversation: str
) -> None:
    messages = CONVERSATIONS[conversation]
    template = builtin_template(name)
    ids = prompt_ids(sp, template.render(messages), template.bos_in_text)
    reference_bos_in_text = render_reference(name, messages).startswith(BOS)
    assert ids == prompt_ids(sp, render_reference(name, messages), reference_bos_in_text)
    assert ids.count(1) == 1 and ids[0] == 1, "BOS exactly once, at the start"
    assert ids == assembled_ids(sp, name, messages)


def test_known_renderings() -> None:
    conversation: list[Message] = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert (
        builtin_template("synatra-v0.1").render(conversation)
        == "<s>[INST] q1 [\\INST] a1</s>[INST] q2 [\\INST] "
    )
    assert (
        builtin_template("synatra-v0.2").render(conversation) == "<s>[INST] q1 [/INST]a1</s>[INST] q2 [/INST]"
    )
    with_system: list[Message] = [{"role": "system", "content": "sys"}, *conversation]
    assert builtin_template("chatml").render(with_system) == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        builtin_template("chatml").render(with_system, add_generation_prompt=False).endswith("q2<|im_end|>\n")
    )
    assert (
        builtin_template("synatra-v0.2").render(with_system).startswith("<s>[INST] sys\n\nq1 [/INST]a1</s>")
    )


def test_v01_tokens_keep_the_typo(sp: spm.SentencePieceProcessor) -> None:
    text = builtin_template("synatra-v0.1").render([{"role": "user", "content": "q"}])
    assert hf_legacy_ids(sp, text) == [1, *sp.encode("[INST] q [\\INST] ")]
    assert sp.id_to_piece(hf_legacy_ids(sp, text)[-1]) == "▁", "the trailing space is its own token"


def test_custom_bos_eos() -> None:
    template = builtin_template("synatra-v0.2", bos_token="<BOS>", eos_token="<EOS>")
    conversation: list[Message] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert template.render(conversation) == "<BOS>[INST] q [/INST]a<EOS>"
    assert "<EOS>" in template.stop_markers


def test_stop_markers_and_bos() -> None:
    v01, v02, chatml = (builtin_template(name) for name in FORMATS)
    assert set(v01.stop_markers) == {"[INST]", "[\\INST]", "[/INST]", "</s>"}
    assert set(v02.stop_markers) == {"[INST]", "[\\INST]", "[/INST]", "</s>"}
    assert set(chatml.stop_markers) == {"<|im_start|>", "<|im_end|>"}
    assert (v01.bos_in_text, v02.bos_in_text, chatml.bos_in_text) == (True, True, False)
    assert [t.name for t in (v01, v02, chatml)] == list(FORMATS)


def _next_turns(messages: list[Message]) -> tuple[list[Message], str]:
    reply = "네, 알겠습니다. 😀 OK"
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "다음 질문"},
    ], reply


@pytest.mark.parametrize("name", FORMATS)
def test_append_only(name: str) -> None:
    templates = [builtin_template(name), jinja_template(CHAT_TEMPLATES[name], bos_token=BOS, eos_token=EOS)]
    for template in templates:
        for conversation in ("single", "single+system", "multi", "multi+system"):
            history = CONVERSATIONS[conversation]
            extended, reply = _next_turns(history)
            assert template.render(extended).startswith(template.render(history) + reply)


@pytest.mark.parametrize("name", FORMATS)
def test_jinja_template_matches_builtin(name: str) -> None:
    template = jinja_template(CHAT_TEMPLATES[name], bos_token=BOS, eos_token=EOS)
    builtin = builtin_template(name)
    assert template.name == "jinja"
    assert template.bos_in_text == builtin.bos_in_text
    assert set(builtin.stop_markers) <= set(template.stop_markers)
    assert EOS in template.stop_markers
    for messages in CONVERSATIONS.values():
        assert template.render(messages) == builtin.render(messages)


def test_jinja_transformers_features() -> None:
    source = (
        "{% for m in messages %}{% if m['role'] == 'skip' %}{% continue %}{% endif %}"
        "{{ m | tojson }}\n{% endfor %}{{ strftime_now('%Y') }}"
    )
    template = jinja_template(source, bos_token=BOS, eos_token=EOS)
    text = template.render([{"role": "user", "content": "안녕"}, {"role": "skip", "content": "x"}])
    assert text == '{"role": "user", "content": "안녕"}\n' + str(datetime.now().year)
    assert template.stop_markers == (EOS,)
    assert template.bos_in_text is False


def test_jinja_trim_and_lstrip_blocks() -> None:
    source = (
        "{% for m in messages %}\n    {% if m.role == 'user' %}{{ m.content }}{% endif %}\n{% endfor %}\n"
    )
    template = jinja_template(source, bos_token=BOS, eos_token=EOS)
    assert template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "ab"


BAD_CONVERSATIONS: dict[str, list[Message]] = {
    "two users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "assistant first": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
    "unknown role": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
    "late system": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "c"},
    ],
    "system after system": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}],
}


@pytest.mark.parametrize("case", sorted(BAD_CONVERSATIONS))
@pytest.mark.parametrize("name", FORMATS)
def test_bad_roles_raise(name: str, case: str) -> None:
    messages = BAD_CONVERSATIONS[case]
    with pytest.raises(SynatraError, match="role|alternate|system"):
        builtin_template(name).render(messages)
    with pytest.raises(ValueError):
        jinja_template(CHAT_TEMPLATES[name], bos_token=BOS, eos_token=EOS).render(messages)
    with pytest.raises(jinja2.exceptions.TemplateError):
        render_reference(name, messages)


@pytest.mark.parametrize("name", ["synatra-v0.1", "synatra-v0.2"])
def test_system_without_user_raises(name: str) -> None:
    messages: list[Message] = [{"role": "system", "content": "s"}]
    with pytest.raises(SynatraError, match="system"):
        builtin_template(name).render(messages)
    with pytest.raises(jinja2.exceptions.TemplateError):
        render_reference(name, messages)


def test_non_text_content_raises() -> None:
    with pytest.raises(SynatraError, match="content"):
        builtin_template("chatml").render([{"role": "user", "content": None}])  # type: ignore[typeddict-item]


def test_unknown_format_raises() -> None:
    with pytest.raises(SynatraError, match="unknown prompt format"):
        builtin_template("alpaca")


def test_bad_template_syntax_raises() -> None:
    with pytest.raises(SynatraError, match="does not compile"):
        jinja_template("{% for m in messages %}{{ m['content'] }", bos_token=BOS, eos_token=EOS)


def test_template_runtime_error_is_wrapped() -> None:
    template = jinja_template("{{ messages[0]['content'] + 1 }}", bos_token=BOS, eos_token=EOS)
    with pytest.raises(SynatraError, match="failed to render"):
        template.render([{"role": "user", "content": "a"}])


def test_raise_exception_message_is_kept() -> None:
    template = jinja_template("{{ raise_exception('no tools here') }}", bos_token=BOS, eos_token=EOS)
    with pytest.raises(ValueError, match="no tools here"):
        template.render([{"role": "user", "content": "a"}])


def test_detect_format() -> None:
    for name in FORMATS:
        assert detect_format(CHAT_TEMPLATES[name]) == name
    assert detect_format("{{ '[INST] ' + m + ' [\\INST] ' }}") == "synatra-v0.1"
    assert detect_format("{{ '[INST] ' + m + ' [/INST]' }}") == "synatra-v0.2"
    assert detect_format("{{ '<|im_start|>' + role }}") == "chatml"
    assert detect_format("{{ '### User:' + m }}") is None
    assert detect_format("") is None
    assert detect_format(None) is None


def test_jinja_markers_without_known_format() -> None:
    template = jinja_template("{{ '<|im_end|>' }}{{ eos_token }}", bos_token=BOS, eos_token="<|end|>")
    assert template.stop_markers == ("<|im_end|>", "<|end|>")


# --- a built-in renderer stands in for a GGUF's own template only where it renders identically --------------

_DEFAULT_SYSTEM_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TRIMMING_CHATML = CHAT_TEMPLATES["chatml"].replace("message['content']", "message['content'] | trim")
_NO_SYSTEM_MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('no system role') }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.mark.parametrize("name", FORMATS)
def test_builtin_stands_in_for_the_template_it_mirrors(name: str) -> None:
    own = jinja_template(CHAT_TEMPLATES[name], bos_token=BOS, eos_token=EOS)
    assert builtin_stand_in(own, bos_token=BOS, eos_token=EOS) == name


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (_DEFAULT_SYSTEM_CHATML, "a default system turn when there is none"),
        (_TRIMMING_CHATML, "content trimmed of its surrounding spaces"),
        (_NO_SYSTEM_MISTRAL, "a system turn refused"),
        (CHAT_TEMPLATES["synatra-v0.1"].replace("\\n\\n", "\\n"), "another system separator"),
    ],
)
def test_no_builtin_stands_in_where_any_probe_differs(source: str, why: str) -> None:
    assert source not in CHAT_TEMPLATES.values()
    own = jinja_template(source, bos_token=BOS, eos_token=EOS)
    assert builtin_stand_in(own, bos_token=BOS, eos_token=EOS) is None, why


def test_no_builtin_stands_in_where_bos_handling_differs() -> None:
    """A ChatML model whose BOS is <|im_start|>: its template's text starts with BOS, the built-in's does not."""
    own = jinja_template(CHAT_TEMPLATES["chatml"], bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert own.bos_in_text
    assert builtin_stand_in(own, bos_token="<|im_start|>", eos_token="<|im_end|>") is None
