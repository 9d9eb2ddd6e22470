"""Decide once, at conversion, which Synatra prompt format a checkpoint expects, so the runtime never guesses."""

from __future__ import annotations

import re
import sys

from synatra_local.core.model_meta import detect_prompt_format

from .checkpoint import Checkpoint

_VERSION_FORMATS = {"0.1": "synatra-v0.1", "0.2": "synatra-v0.2", "0.3": "chatml"}


def resolve_prompt_format(checkpoint: Checkpoint, chat_template: object, override: str | None) -> str:
    """The override, else the checkpoint's own template, else its Synatra version, else its added tokens.

    A template we do not recognise is kept as `jinja`: the runtime renders it as transformers would.
    """
    if override:
        return override
    if isinstance(chat_template, str) and chat_template:
        return detect_prompt_format(chat_template) or "jinja"
    name = " ".join(
        filter(None, [checkpoint.repo_id, checkpoint.folder.name, checkpoint.config.get("_name_or_path")])
    )
    version = re.search(r"v(0\.[123])", name, re.I)
    if version:
        return _VERSION_FORMATS[version.group(1)]
    if (checkpoint.folder / "added_tokens.json").is_file() and "<|im_start|>" in (
        checkpoint.folder / "added_tokens.json"
    ).read_text(encoding="utf-8"):
        return "chatml"
    print(
        f"warning: {checkpoint.folder} names no Synatra version and has no chat_template; "
        "assuming Mistral's [INST] … [/INST] format (pass --prompt-format to choose)",
        file=sys.stderr,
    )
    return "synatra-v0.2"
