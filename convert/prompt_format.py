"""Decide once, at conversion, which Synatra prompt format a checkpoint expects, and record it in the GGUF."""

from __future__ import annotations

import sys

from synatra_local.core.model_meta import CHATML_TOKENS, FALLBACK_FORMAT, synatra_version_format

from .checkpoint import Checkpoint


def resolve_prompt_format(checkpoint: Checkpoint, chat_template: object, override: str | None) -> str:
    """The override, else the checkpoint's own template (`jinja`), else its Synatra version, else its added tokens.

    A checkpoint's own template is the ground truth, so it is recorded as `jinja` whatever it looks like: the
    runtime renders it as transformers would, or with a built-in renderer only where that renders identically.
    """
    if override:
        return override
    if isinstance(chat_template, str) and chat_template:
        return "jinja"
    for name in (checkpoint.repo_id, checkpoint.folder.name, checkpoint.config.get("_name_or_path")):
        fmt = synatra_version_format(name if isinstance(name, str) else None)
        if fmt is not None:
            return fmt
    added = checkpoint.folder / "added_tokens.json"
    if added.is_file() and all(token in added.read_text(encoding="utf-8") for token in CHATML_TOKENS):
        return "chatml"
    print(
        f"warning: {checkpoint.folder} names no Synatra version and has no chat_template; "
        "assuming Mistral's [INST] … [/INST] format (pass --prompt-format to choose)",
        file=sys.stderr,
    )
    return FALLBACK_FORMAT
