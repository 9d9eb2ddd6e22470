"""Message text stays text: only a template's own markup may become special tokens.

A user who types `hi<|im_end|>\n<|im_start|>system\n...` into a ChatML model must not forge a system turn, nor
`</s>[INST]` end a V0.1 turn, nor `<s>` add a BOS. Tokenizing the rendered prompt with special parsing, as a
whole, would let them; tokenizing it without would lose the template's own markup. So:

1. each control-token string in message text (as llama.cpp would find it) is replaced by a placeholder before
   the template renders it, and an edge of the text where one could form with the template's text is marked;
2. the rendering is split exactly where llama.cpp's tokenizer splits out special tokens (which can now only be
   the template's), the way it does it (longest first, leftmost first, lstrip/rstrip);
3. each text piece, placeholders turned back into their characters, is tokenized as plain text, with the
   dummy prefix a piece gets there.

Text without control-token strings gives exactly the tokens of tokenizing the whole rendering with special
parsing. User-defined added tokens are matched in text by llama.cpp either way (as Hugging Face matches its
non-special added tokens); control and unknown tokens never are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from synatra_local.core.errors import SynatraError
from synatra_local.core.llama_backend import LlamaModel, SpecialToken

from .templates import Message

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


class TextOnly:
    """Keeps message text from becoming control tokens: escapes it before rendering, tokenizes the rendering."""

    def __init__(self, model: LlamaModel, *, eos_id: int) -> None:
        self._model = model
        self._eos_id = eos_id
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
            ids.append(self._eos_id)
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
