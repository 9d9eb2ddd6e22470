"""From messages to prompt tokens: the template the model expects, BOS exactly once, KV-friendly reuse.

Only the template's own markup may become special tokens. Message text (content, system prompts, loaded
histories, replies) is always text: `<|im_start|>` typed by a user is the characters `<`, `|`, `im`, ...,
never the token that starts a turn. The prompt is rendered with each control-token string of the content
replaced by a placeholder; the rendering is split where llama.cpp would find special tokens (now only the
template's), and each text piece, placeholders turned back into their characters, is tokenized as plain text.
Content without control-token strings gives exactly the tokens of tokenizing the whole rendering with special
parsing, as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo
from synatra_local.core.llama_backend import LlamaModel, SpecialToken
from synatra_local.core.model_meta import detect_prompt_format

from .templates import BUILTIN_FORMATS, JINJA, Message, PromptTemplate, builtin_template, jinja_template

# A GGUF that names no format and carries no template: Mistral's own [INST] format is the safest guess.
FALLBACK_FORMAT = "synatra-v0.2"


def select_template(info: ModelInfo, model: LlamaModel, override: str | None = None) -> PromptTemplate:
    """`override` (a format name or a .jinja file), else what the converter recorded, else the GGUF's template."""
    bos, eos = model.token_text(model.bos_id), model.token_text(_eos_id(model))
    name = override or info.prompt_format or detect_prompt_format(info.chat_template)
    if name is None:
        name = JINJA if info.chat_template else FALLBACK_FORMAT
    if name in BUILTIN_FORMATS:
        return builtin_template(name, bos_token=bos, eos_token=eos)
    if name == JINJA:
        if not info.chat_template:
            raise SynatraError(
                f"{info.path} has no chat_template", fix="choose --template synatra-v0.1, ... "
            )
        return jinja_template(info.chat_template, bos_token=bos, eos_token=eos)
    path = Path(name)
    if path.suffix == ".jinja" and path.is_file():
        return jinja_template(path.read_text(encoding="utf-8"), bos_token=bos, eos_token=eos)
    raise SynatraError(
        f"unknown template {name!r}",
        fix=f"choose one of {', '.join(BUILTIN_FORMATS + (JINJA,))} or a .jinja file",
    )


def _eos_id(model: LlamaModel) -> int:
    return int(model.metadata.get("tokenizer.ggml.eos_token_id", 2))


# Placeholders for control-token strings in message text: a Unicode noncharacter (never in interchange text),
# a number, another noncharacter. A third noncharacter marks an edge of message text where a control-token
# string could otherwise form from the text and what the template puts beside it. When text holds these
# characters itself, they are escaped as numbers 0 to 2.
_ESCAPE, _ESCAPE_END, _EDGE = "\ufdd0", "\ufdd1", "\ufdd2"
_OWN = (_ESCAPE, _ESCAPE_END, _EDGE)
_PLACEHOLDER = re.compile(f"{_ESCAPE}(\\d+){_ESCAPE_END}")
_C_WHITESPACE = " \t\n\v\f\r"  # what llama.cpp's isspace() strips beside lstrip/rstrip tokens


class PromptTextError(SynatraError, ValueError):
    """Message text that is no text: a lone surrogate cannot be encoded, so it cannot be tokenized."""


def check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptTextError(
            f"{what} is not valid Unicode text: a lone surrogate at index {exc.start}",
            fix="send text encoded as UTF-8 (surrogates come only in pairs)",
        ) from None


def split_special(text: str, tokens: Sequence[SpecialToken]) -> list[str | SpecialToken]:
    """Split `text` where llama.cpp's tokenizer finds `tokens`, the way it does (tokenizer_st_partition).

    Each token in turn, longest first, is cut out of the text pieces left so far, leftmost occurrence first;
    a token marked lstrip/rstrip takes the whitespace beside it. Text pieces are never empty.
    """
    pieces: list[str | SpecialToken] = [text]
    for token in tokens:
        if token.text not in text:
            continue
        split: list[str | SpecialToken] = []
        for piece in pieces:
            if isinstance(piece, SpecialToken) or token.text not in piece:
                split.append(piece)
                continue
            parts = piece.split(token.text)
            for index, part in enumerate(parts):
                if index:
                    split.append(token)
                    if token.rstrip:
                        part = part.lstrip(_C_WHITESPACE)
                if token.lstrip and index < len(parts) - 1:
                    part = part.rstrip(_C_WHITESPACE)
                if part:
                    split.append(part)
        pieces = split
    return pieces


class _Finder:
    """Which of many special tokens a text holds, fast: only where a text has one of their first characters.

    (Gemma's vocabulary has 6,414 of them, whitespace runs among them; testing each with `in` would cost more
    than tokenizing.) From each such character the text is extended while it is still the start of one.
    """

    def __init__(self, tokens: Sequence[SpecialToken]) -> None:
        self._tokens = tuple(tokens)
        self._by_text = {t.text: t for t in reversed(self._tokens)}
        self._starts = {t.text[:n] for t in self._tokens for n in range(1, len(t.text) + 1)}
        firsts = sorted({t.text[0] for t in self._tokens})
        self._anchor = re.compile("[" + "".join(re.escape(c) for c in firsts) + "]") if firsts else None

    def found_in(self, text: str) -> list[SpecialToken]:
        """The tokens whose text occurs in `text`, in the order llama.cpp tries them."""
        if self._anchor is None:
            return []
        found: set[int] = set()
        for anchor in self._anchor.finditer(text):
            start = end = anchor.start()
            while end < len(text) and (candidate := text[start : end + 1]) in self._starts:
                end += 1
                token = self._by_text.get(candidate)
                if token is not None:
                    found.add(token.id)
        return [t for t in self._tokens if t.id in found] if found else []


class _TextOnly:
    """Keeps message text from becoming control tokens: escapes it before rendering, tokenizes the rendering."""

    def __init__(self, model: LlamaModel) -> None:
        self._model = model
        self._tokens = _Finder(model.special_tokens)
        self._control = tuple(t for t in model.special_tokens if t.control)
        self._controls = _Finder(self._control)
        first = len(_OWN)
        self._placeholder = {t.id: f"{_ESCAPE}{i}{_ESCAPE_END}" for i, t in enumerate(self._control, first)}
        self._own = str.maketrans({c: f"{_ESCAPE}{i}{_ESCAPE_END}" for i, c in enumerate(_OWN)})
        self._literal = [*_OWN, *(t.text for t in self._control)]
        texts = [t.text for t in self._control]
        self._heads = {text[:n] for text in texts for n in range(1, len(text))}
        self._tails = {text[n:] for text in texts for n in range(1, len(text))}
        self._longest = max(map(len, texts), default=0)

    def escape(self, text: str) -> str:
        """`text` with each control-token string (as llama.cpp would find them) replaced by a placeholder."""
        if any(c in text for c in _OWN):
            text = text.translate(self._own)
        if found := self._controls.found_in(text):
            text = "".join(
                piece if isinstance(piece, str) else self._placeholder[piece.id] for piece in split_special(text, found)
            )
        reach = range(1, min(self._longest, len(text) + 1))
        if any(text[-n:] in self._heads for n in reach):
            text += _EDGE
        if any(text[:n] in self._tails for n in reach):
            text = _EDGE + text
        return text

    def escape_messages(self, messages: Sequence[Message]) -> list[Message]:
        escaped = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise PromptTextError(
                    f"message {index} is a {type(message).__name__}, not a mapping",
                    fix='pass messages as {"role": ..., "content": ...}',
                )
            escaped.append(self._escape_value(message, f"message {index}"))
        return escaped

    def tokenize(self, rendered: str, *, add_bos: bool) -> list[int]:
        """Tokens of an escaped rendering: its special-token strings (the template's) as tokens, the rest as text."""
        ids = [self._model.bos_id] if add_bos else []
        for piece in split_special(rendered, self._tokens.found_in(rendered)):
            if isinstance(piece, str):
                text = self._unescape(piece)
                if text:
                    ids += self._model.tokenize(text, add_bos=False, special=False)
            else:
                ids.append(piece.id)
        if add_bos and self._model.adds_eos:  # as llama.cpp's own add_special does
            ids.append(_eos_id(self._model))
        return ids

    def _escape_value(self, value: Any, what: str) -> Any:
        if isinstance(value, str):
            check_text(value, what)
            return self.escape(value)
        if isinstance(value, dict):
            return {key: self._escape_value(item, f"{what} {key}") for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._escape_value(item, what) for item in value]
        return value

    def _unescape(self, text: str) -> str:
        if _ESCAPE not in text and _EDGE not in text:
            return text
        literal = self._literal
        text = text.replace(_EDGE, "")
        return _PLACEHOLDER.sub(lambda m: literal[int(m[1])] if int(m[1]) < len(literal) else m[0], text)


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
    """Renders and tokenizes conversations, extending the previous turn's exact tokens when it can.

    After a reply that ended at the model's end-of-turn token, the next prompt of the same conversation is
    the previous prompt, the model's own reply tokens, that end token, and only the new text tokenized: so
    turn N evaluates only its new tokens. The end token is special, so tokenizing the new text on its own
    gives the same ids as tokenizing the whole rendered prompt.
    """

    def __init__(self, model: LlamaModel, template: PromptTemplate) -> None:
        self._model = model
        self._template = template
        self._text_only = _TextOnly(model)
        self._remembered: _Remembered | None = None
        candidates = {model.token_text(model.bos_id), model.token_text(_eos_id(model)), *template.stop_markers}
        self._special_texts = tuple(t for t in candidates if t and _is_one_special_token(model, t))

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text, as the model sees it."""
        return self._template.render(messages, add_generation_prompt=True)

    def build(self, messages: Sequence[Message]) -> tuple[str, list[int]]:
        """The escaped rendering (what `remember` takes back) and the prompt's tokens."""
        text = self._template.render(self._text_only.escape_messages(messages), add_generation_prompt=True)
        known = self._remembered
        if (
            known is not None
            and len(messages) > len(known.messages)
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
        self._remembered = _Remembered(
            list(messages) + [{"role": "assistant", "content": reply}],
            prompt_text + self._text_only.escape(reply) + end_text,
            tokens + ([end_token] if end_token is not None else []),
            end_token is not None,
        )
        return self._remembered.tokens

    def _starts_fresh(self, known: _Remembered, new_text: str) -> bool:
        """New text may be tokenized on its own only at a special-token boundary, where ids cannot merge."""
        return known.ends_special or new_text.startswith(self._special_texts)
