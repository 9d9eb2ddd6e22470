"""From messages to prompt tokens: the template the model expects, BOS exactly once, KV-friendly reuse.

Only the template's own markup becomes special tokens; message text stays text (see text_only.py).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo
from synatra_local.core.llama_backend import LlamaModel
from synatra_local.core.model_meta import FormatDecision, decide_prompt_format

from .templates import (
    BUILTIN_FORMATS,
    JINJA,
    ChatTemplateError,
    Message,
    PromptTemplate,
    builtin_stand_in,
    builtin_template,
    jinja_template,
)
from .text_only import TextOnly


@dataclass(frozen=True)
class TemplateChoice:
    """The template a model is prompted with, and the decision (rule, reason, warnings) that chose it."""

    template: PromptTemplate
    decision: FormatDecision


def choose_template(
    info: ModelInfo, *, bos_token: str, eos_token: str, override: str | None = None
) -> TemplateChoice:
    """`override` (the user's --template: a format name, `jinja`, or a .jinja file), else the format rules.

    When the rules pick the GGUF's own chat template, a built-in renderer stands in for it only if it renders
    the same text on the probe conversations, system turn included; otherwise the template is rendered as is.
    """
    if override:
        return TemplateChoice(
            _override_template(info, override, bos_token, eos_token),
            FormatDecision(override, "override", f"--template {override}"),
        )
    decision = decide_prompt_format(
        recorded=info.prompt_format,
        chat_template=info.chat_template,
        names=info.names,
        special_tokens=info.special_tokens,
    )
    if decision.format != JINJA:
        return TemplateChoice(builtin_template(decision.format, bos_token=bos_token, eos_token=eos_token), decision)
    assert info.chat_template is not None
    own = jinja_template(info.chat_template, bos_token=bos_token, eos_token=eos_token)
    stand_in = builtin_stand_in(own, bos_token=bos_token, eos_token=eos_token)
    if stand_in is None:
        return TemplateChoice(own, decision)
    return TemplateChoice(
        builtin_template(stand_in, bos_token=bos_token, eos_token=eos_token),
        replace(decision, format=stand_in, reason=f"{decision.reason}, which built-in {stand_in} renders identically"),
    )


def describe_prompt_format(info: ModelInfo) -> FormatDecision:
    """The decision loading `info` would take, from its header alone (for `inspect` and `list`)."""
    try:
        return choose_template(info, bos_token=info.bos_token or "", eos_token=info.eos_token or "").decision
    except ChatTemplateError as exc:
        return FormatDecision(JINJA, "chat_template", "its own tokenizer.chat_template", (exc.message,))


def model_template(info: ModelInfo, model: LlamaModel, override: str | None = None) -> TemplateChoice:
    """The template `model` (loaded from `info`) is prompted with, with its BOS/EOS; see `choose_template`."""
    bos, eos = model.token_text(model.bos_id), model.token_text(_eos_id(model))
    return choose_template(info, bos_token=bos, eos_token=eos, override=override)


def select_template(info: ModelInfo, model: LlamaModel, override: str | None = None) -> PromptTemplate:
    return model_template(info, model, override).template


def _override_template(info: ModelInfo, name: str, bos: str, eos: str) -> PromptTemplate:
    """The user's --template; only the user may name a file to read, never a GGUF's metadata."""
    if name in BUILTIN_FORMATS:
        return builtin_template(name, bos_token=bos, eos_token=eos)
    if name == JINJA:
        if not info.chat_template:
            raise SynatraError(
                f"{info.path} has no chat_template", fix=f"choose --template {', '.join(BUILTIN_FORMATS)}"
            )
        return jinja_template(info.chat_template, bos_token=bos, eos_token=eos)
    path = Path(name)
    if path.suffix == ".jinja" and path.is_file():
        source = path.read_text(encoding="utf-8")
        return jinja_template(source, bos_token=bos, eos_token=eos, origin=f"the template {path}")
    raise SynatraError(
        f"unknown template {name!r}",
        fix=f"choose one of {', '.join(BUILTIN_FORMATS + (JINJA,))} or a .jinja file",
    )


def _eos_id(model: LlamaModel) -> int:
    return model.eos_id


@dataclass
class _Remembered:
    messages: list[Message]
    text: str
    tokens: list[int]
    ends_special: bool


def _is_one_special_token(model: LlamaModel, text: str) -> bool:
    ids = model.tokenize(text, add_bos=False, special=True)
    return len(ids) == 1 and not model.token_bytes(ids[0])


class PromptBuilder:
    """Renders and tokenizes conversations, extending an earlier turn's exact tokens when it can.

    After a reply that ended at the model's end-of-turn token, the next prompt of the same conversation is
    the previous prompt, the model's own reply tokens, that end token, and only the new text tokenized: so
    turn N evaluates only its new tokens. The end token is special, so tokenizing the new text on its own
    gives the same ids as tokenizing the whole rendered prompt.
    """

    def __init__(self, model: LlamaModel, template: PromptTemplate, *, remember: int = 4) -> None:
        self._model = model
        self._template = template
        self._text_only = TextOnly(model, eos_id=_eos_id(model))
        self._remembered: deque[_Remembered] = deque(maxlen=remember)  # the latest turns, newest last
        self._lock = threading.Lock()
        candidates = {model.token_text(model.bos_id), model.token_text(_eos_id(model)), *template.stop_markers}
        self._special_texts = tuple(t for t in candidates if t and _is_one_special_token(model, t))

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text, as the model sees it."""
        return self._template.render(messages, add_generation_prompt=True)

    def build(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        """The escaped rendering (what `remember` takes back) and the prompt's tokens."""
        text = self._template.render(self._text_only.escape_messages(messages), add_generation_prompt=True)
        with self._lock:
            remembered = sorted(self._remembered, key=lambda known: -len(known.tokens))
        for known in remembered:  # the longest earlier turn this prompt continues
            if (
                len(messages) > len(known.messages)
                and list(messages[: len(known.messages)]) == known.messages
                and text.startswith(known.text)
                and self._starts_fresh(known, text[len(known.text) :])
            ):
                return text, known.tokens + self._text_only.tokenize(text[len(known.text) :], add_bos=False)
        add_bos = self._model.adds_bos and not self._template.bos_in_text
        return text, self._text_only.tokenize(text, add_bos=add_bos)

    def tokens(self, messages: Sequence[Message]) -> list[int]:
        return self.build(messages)[1]

    def remember(
        self, messages: Sequence[Message], prompt_text: str, reply: str, tokens: list[int], end_token: int | None
    ) -> list[int]:
        """Record a finished turn: the prompt tokens, the reply's own tokens and its end token, if it had one.

        `prompt_text` is what `build` returned. Returns the whole turn's tokens, as the next turn will start
        from them.
        """
        end_text = self._model.token_text(end_token) if end_token is not None else ""
        known = _Remembered(
            list(messages) + [{"role": "assistant", "content": reply}],
            prompt_text + self._text_only.escape(reply) + end_text,
            tokens + ([end_token] if end_token is not None else []),
            end_token is not None,
        )
        with self._lock:
            self._remembered.append(known)
        return known.tokens

    def _starts_fresh(self, known: _Remembered, new_text: str) -> bool:
        """New text may be tokenized on its own only at a special-token boundary, where ids cannot merge."""
        return known.ends_special or new_text.startswith(self._special_texts)
