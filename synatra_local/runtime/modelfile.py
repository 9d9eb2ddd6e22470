"""An Ollama Modelfile for a GGUF, so that Ollama prompts it exactly as synatra-local does.

Ollama renders TEMPLATE with Go's text/template, given `.System` (the system messages, joined) and `.Messages`
(every message, system ones included), then tokenizes the text adding the model's BOS token itself. So each
template below renders our prompt text without its leading BOS text; the Modelfile parser keeps what is
between triple quotes byte for byte (no escapes), which keeps V0.1's `[\\INST] ` and its trailing space.
"""

from __future__ import annotations

from pathlib import Path

from synatra_local.core.errors import SynatraError
from synatra_local.core.gguf_info import ModelInfo

from .prompts import choose_template
from .templates import BUILTIN_FORMATS, CHATML, V01, V02


def _inst_template(closing: str, eos: str) -> str:
    """[INST] turns; the system prompt goes into the first user message with a blank line, as our renderer does."""
    return (
        "{{ $system := .System }}{{ range .Messages }}"
        '{{ if eq .Role "user" }}[INST] {{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}'
        "{{ .Content }}" + closing + '{{ else if eq .Role "assistant" }}{{ .Content }}' + eos + "{{ end }}"
        "{{ end }}"
    )


def go_template(fmt: str, *, eos_token: str = "</s>") -> str:
    """Ollama's TEMPLATE for one built-in format."""
    if fmt == V01:
        return _inst_template(" [\\INST] ", eos_token)
    if fmt == V02:
        return _inst_template(" [/INST]", eos_token)
    if fmt == CHATML:
        return (
            "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n"
        )
    raise SynatraError(f"no Ollama template for {fmt!r}", fix=f"choose one of {', '.join(BUILTIN_FORMATS)}")


def ollama_modelfile(info: ModelInfo, *, template: str | None = None) -> str:
    """The Modelfile text: FROM the file, its TEMPLATE, PARAMETER stop for end and turn markers, its LICENSE."""
    choice = choose_template(
        info, bos_token=info.bos_token or "<s>", eos_token=info.eos_token or "</s>", override=template
    )
    fmt = choice.template.name
    if fmt not in BUILTIN_FORMATS:
        raise SynatraError(
            f"{info.path} is prompted with its own chat template, which no built-in format renders identically, "
            "and a Jinja template cannot be translated into Ollama's Go template",
            fix=f"if you know its format, choose it with --template ({', '.join(BUILTIN_FORMATS)})",
        )
    eos = info.eos_token or "</s>"
    stops = dict.fromkeys((*choice.template.stop_markers, eos))
    body = go_template(fmt, eos_token=eos)
    lines = [
        f"# Ollama Modelfile for {Path(info.path).name}, written by synatra-local.",
        f"# Prompt format {fmt} (chosen by: {choice.decision.rule}); the template renders synatra-local's prompt",
        "# byte for byte, without the BOS token, which Ollama adds when it tokenizes.",
        f"FROM {Path(info.path).absolute()}",
        f'TEMPLATE """{body}"""',
        *(f'PARAMETER stop "{marker}"' for marker in stops),
    ]
    if info.license:
        lines.append(f'LICENSE """{info.license}"""')
    return "\n".join(lines) + "\n"
