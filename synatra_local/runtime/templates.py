"""Prompt formats of the Synatra versions, rendered byte-exactly as the models were trained.

Formats:

* ``synatra-v0.1``: ``<s>[INST] q1 [\\INST] a1</s>[INST] q2 [\\INST] `` -- the training data had a typo
  (a backslash, and a trailing space after ``[\\INST]``), so the model only behaves with the typo.
* ``synatra-v0.2``: the Mistral-Instruct form ``<s>[INST] q1 [/INST]a1</s>[INST] q2 [/INST]``.
* ``chatml`` (v0.3): ``<|im_start|>role\\ncontent<|im_end|>\\n`` turns; BOS is added by the tokenizer as a
  token, not by the template, so ``bos_in_text`` is False.
* ``jinja``: a checkpoint's own ``chat_template``, rendered exactly as transformers renders it; it is the
  ground truth whenever a checkpoint ships one.

v0.1 and v0.2 have no system role: a system prompt is merged into the FIRST user message as
``system + "\\n\\n" + user``. ChatML has a native system turn. After the optional leading system message,
roles must alternate user/assistant, starting with user.

The built-in renderers are append-only: rendering ``history + [reply, next_user]`` starts with
``render(history) + reply``, so a runtime can keep the KV cache of the previous turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

import jinja2

from synatra_local.core.errors import SynatraError
from synatra_local.core.model_meta import detect_prompt_format as detect_format

from . import jinja_sandbox

V01 = "synatra-v0.1"
V02 = "synatra-v0.2"
CHATML = "chatml"
JINJA = "jinja"
BUILTIN_FORMATS = (V01, V02, CHATML)

INST_MARKERS = ("[INST]", "[\\INST]", "[/INST]")
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")



class Message(TypedDict):
    role: str
    content: str


class ChatTemplateError(SynatraError, ValueError):
    """A conversation the template cannot render, or a chat template that does not compile."""


class ChatTemplateLimitError(ChatTemplateError):
    """A chat template that went past the time or size a render may take (see jinja_sandbox)."""


TEMPLATE_FIX = "prompt with a built-in format instead: --template synatra-v0.1, synatra-v0.2 or chatml"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt format: how to render a conversation and which turn markers must never reach the user.

    ``bos_in_text`` tells the caller that the rendered text already starts with the BOS string, so it must
    not add a BOS token again (BOS exactly once).
    """

    name: str
    stop_markers: tuple[str, ...]
    bos_in_text: bool
    _renderer: Callable[[Sequence[Message], bool], str] = field(repr=False, compare=False)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render the conversation; with ``add_generation_prompt`` the text ends where the reply begins."""
        return self._renderer(messages, add_generation_prompt)


def _split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    """Validate roles and return (system prompt, alternating user/assistant turns)."""
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ChatTemplateError(
                f"message {index} has unknown role {role!r}", fix="use 'system', 'user' or 'assistant'"
            )
        if not isinstance(message.get("content"), str):
            raise ChatTemplateError(f"message {index} ({role}) has no text content")
    system = None
    turns = list(messages)
    if turns and turns[0]["role"] == "system":
        system = turns.pop(0)["content"]
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = index + (system is not None)
            raise ChatTemplateError(
                f"message {position} is {message['role']!r} but {expected!r} was expected",
                fix="after an optional leading system message, roles must alternate user/assistant",
            )
    return system, turns


def _render_inst(messages: Sequence[Message], closing: str, bos: str, eos: str) -> str:
    """Mistral-style turns; ``closing`` is ' [\\INST] ' for v0.1 and ' [/INST]' for v0.2."""
    system, turns = _split_system(messages)
    if system is not None and not turns:
        raise ChatTemplateError(
            "a system prompt needs a user message to merge into", fix="add a user message after it"
        )
    parts = [bos]
    for index, message in enumerate(turns):
        if message["role"] == "user":
            content = message["content"]
            if index == 0 and system is not None:
                content = system + "\n\n" + content
            parts.append("[INST] " + content + closing)
        else:
            parts.append(message["content"] + eos)
    return "".join(parts)


def _render_chatml(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    _split_system(messages)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def builtin_template(name: str, *, bos_token: str = "<s>", eos_token: str = "</s>") -> PromptTemplate:
    """The hand-written renderer of one Synatra format, for checkpoints that ship no chat template."""
    if name in (V01, V02):
        closing = " [\\INST] " if name == V01 else " [/INST]"
        return PromptTemplate(
            name=name,
            stop_markers=(*INST_MARKERS, eos_token),
            bos_in_text=True,
            _renderer=lambda messages, _gen: _render_inst(messages, closing, bos_token, eos_token),
        )
    if name == CHATML:
        return PromptTemplate(
            name=name, stop_markers=CHATML_MARKERS, bos_in_text=False, _renderer=_render_chatml
        )
    raise ChatTemplateError(f"unknown prompt format {name!r}", fix=f"use one of {', '.join(BUILTIN_FORMATS)}")


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _compile(source: str, origin: str) -> jinja2.Template:
    """Compile like transformers does, so a checkpoint's template renders exactly as it does there (bounded)."""
    env = jinja_sandbox.BoundedEnvironment()
    env.add_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.compile_source(source)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"{origin} does not compile: {error.message} (line {error.lineno})",
            fix="fix chat_template in tokenizer_config.json or choose a built-in format",
        ) from error
    except jinja_sandbox.RenderLimit as error:
        raise ChatTemplateLimitError(f"{origin} is refused: {error}", fix=TEMPLATE_FIX) from error
    except (RecursionError, MemoryError) as error:
        raise ChatTemplateLimitError(f"{origin} is too deeply nested to compile", fix=TEMPLATE_FIX) from error


def _jinja_markers(source: str, eos_token: str) -> tuple[str, ...]:
    """Turn markers the template uses (by detection), plus the EOS text."""
    detected = detect_format(source)
    markers: list[str] = []
    if detected in (V01, V02):
        markers += INST_MARKERS
    elif detected == CHATML:
        markers += CHATML_MARKERS
    else:
        markers += [m for m in (*INST_MARKERS, *CHATML_MARKERS) if m in source]
    if eos_token and eos_token not in markers:
        markers.append(eos_token)
    return tuple(markers)


def jinja_template(
    source: str, *, bos_token: str, eos_token: str, origin: str = "the model's chat template"
) -> PromptTemplate:
    """A checkpoint's own Jinja ``chat_template``, the ground truth for its prompt format.

    Rendering is bounded in time and size (`jinja_sandbox`); `origin` names the template in errors.
    """
    compiled = _compile(source, origin)

    def render(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        variables = {
            "messages": list(messages),
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return jinja_sandbox.render(compiled, variables)
        except ChatTemplateError:
            raise
        except jinja_sandbox.RenderLimit as error:
            raise ChatTemplateLimitError(f"{origin} was stopped: {error}", fix=TEMPLATE_FIX) from error
        except (RecursionError, MemoryError) as error:
            raise ChatTemplateLimitError(f"{origin} was stopped: it ran out of {type(error).__name__[:-5].lower()}",
                                         fix=TEMPLATE_FIX) from error
        except Exception as error:
            raise ChatTemplateError(f"{origin} failed to render: {error}") from error

    try:
        probe = render([{"role": "user", "content": "x"}], True)
        bos_in_text = bool(bos_token) and probe.startswith(bos_token)
    except ChatTemplateLimitError:
        raise  # a template that cannot render one short message in bounds is refused at load
    except ChatTemplateError:
        bos_in_text = bool(bos_token) and "bos_token" in source
    return PromptTemplate(
        name=JINJA, stop_markers=_jinja_markers(source, eos_token), bos_in_text=bos_in_text, _renderer=render
    )


# Conversations on which a built-in renderer must render a GGUF's own template identically to stand in for it:
# with and without a system turn, one and two turns, Korean, a newline, and whitespace a template might trim.
PROBE_CONVERSATIONS: tuple[tuple[Message, ...], ...] = (
    ({"role": "user", "content": "안녕하세요?"},),
    ({"role": "system", "content": "간결하게 답하세요."}, {"role": "user", "content": "서울은 어디에 있나요?"}),
    (
        {"role": "user", "content": " 첫 질문\n두 줄 "},
        {"role": "assistant", "content": "첫 답입니다."},
        {"role": "user", "content": "둘째 질문"},
    ),
    (
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": " a1 "},
        {"role": "user", "content": "q2"},
    ),
)


def builtin_stand_in(template: PromptTemplate, *, bos_token: str, eos_token: str) -> str | None:
    """The built-in format that renders exactly what `template` (a GGUF's own) renders on every probe, if one does.

    Only such a format may replace the model's own template: the built-ins are append-only, which lets the
    runtime reuse the previous turn's KV cache, and their turn markers are known. It must also agree on whether
    the text carries BOS (a model whose BOS is `<|im_start|>` would otherwise get it twice).
    """
    expected = [_render_or_none(template, list(messages)) for messages in PROBE_CONVERSATIONS]
    if None in expected:
        return None
    for name in BUILTIN_FORMATS:
        builtin = builtin_template(name, bos_token=bos_token, eos_token=eos_token)
        if builtin.bos_in_text == template.bos_in_text and all(
            builtin.render(list(m)) == text for m, text in zip(PROBE_CONVERSATIONS, expected, strict=True)
        ):
            return name
    return None


def _render_or_none(template: PromptTemplate, messages: list[Message]) -> str | None:
    try:
        return template.render(messages)
    except ChatTemplateLimitError:
        raise  # a template that cannot render a probe conversation within bounds is refused at load
    except ChatTemplateError:
        return None
